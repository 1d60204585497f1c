//! BERT's WordPiece tokenizer, as Hugging Face tokenizers runs it for `bert-base-uncased` style models
//! (all-MiniLM-L6-v2 among them): `BertNormalizer` (clean text, pad CJK ideographs with spaces, strip
//! accents by NFD and dropping Mn marks, lower-case), `BertPreTokenizer` (split on whitespace, every
//! punctuation character a word of its own), greedy longest-match-first WordPiece with `##` continuations
//! (a word with an unknown part, or over 100 characters, is `[UNK]`), then `[CLS] … [SEP]` truncated to a
//! maximum length. No heap: one word at a time in a fixed buffer, ids straight into the caller's slice.
//!
//! The vocabulary is the one the decoder's [`Tokenizer`] stores (pieces, offsets, sorted index); its
//! header's `bos` is `[CLS]`, `eos` is `[SEP]`, `pad` is `[PAD]`.

use crate::tokenizer::Tokenizer;
use crate::wordpiece_tables::{DECOMP, MARKS, OTHER, PUNCT};
use crate::{EnigmaFile, Error, Result};

/// Hugging Face's `max_input_chars_per_word`: longer words are `[UNK]`.
pub const MAX_WORD_CHARS: usize = 100;
const WORD_BYTES: usize = 4 * MAX_WORD_CHARS;

/// A WordPiece tokenizer over a stored vocabulary.
#[derive(Clone, Debug)]
pub struct WordPiece<'a> {
    vocab: Tokenizer<'a>,
    unk: u32,
    cls: u32,
    sep: u32,
}

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                core::cmp::Ordering::Less
            } else if lo > c {
                core::cmp::Ordering::Greater
            } else {
                core::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(&OTHER, c)
}

fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation() || in_ranges(&PUNCT, c)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// NFD of `c` less its Mn marks (up to 3 characters; Hangul syllables by rule).
fn strip_accents(c: char, mut f: impl FnMut(char)) {
    let cp = c as u32;
    if (0xAC00..=0xD7A3).contains(&cp) {
        let s = cp - 0xAC00;
        let parts = [0x1100 + s / 588, 0x1161 + (s % 588) / 28, 0x11A7 + s % 28];
        let n = if s.is_multiple_of(28) { 2 } else { 3 };
        parts[..n]
            .iter()
            .filter_map(|&p| char::from_u32(p))
            .for_each(f);
        return;
    }
    match DECOMP.binary_search_by_key(&cp, |&(k, _)| k) {
        Ok(i) => DECOMP[i]
            .1
            .iter()
            .filter(|&&p| p != 0)
            .filter_map(|&p| char::from_u32(p))
            .for_each(f),
        Err(_) if in_ranges(&MARKS, c) => {}
        Err(_) => f(c),
    }
}

/// What the normalizer and pre-tokenizer make of each character of the text.
enum Piece {
    /// Ends the current word.
    Break,
    /// A word of its own (punctuation, a CJK ideograph).
    Alone(char),
    /// Part of the current word.
    Char(char),
}

/// Normalizes and pre-tokenizes one character of the input.
fn normalize(c: char, mut f: impl FnMut(Piece)) {
    if c == '\0' || c == '\u{FFFD}' || is_control(c) {
        return;
    }
    if is_whitespace(c) {
        return f(Piece::Break);
    }
    let cjk = is_cjk(c);
    strip_accents(c, |d| {
        for l in d.to_lowercase() {
            if cjk || is_punct(l) {
                f(Piece::Alone(l));
            } else if is_whitespace(l) {
                f(Piece::Break);
            } else {
                f(Piece::Char(l));
            }
        }
    });
}

/// Ids written so far, with room for the closing `[SEP]`.
struct Out<'o> {
    ids: &'o mut [u32],
    n: usize,
    /// Most ids before `[SEP]`.
    cap: usize,
}

impl Out<'_> {
    fn full(&self) -> bool {
        self.n >= self.cap
    }
    fn push(&mut self, id: u32) {
        if self.n < self.cap {
            self.ids[self.n] = id;
            self.n += 1;
        }
    }
}

impl<'a> WordPiece<'a> {
    /// The tokenizer of an encoder `.enigma` file: its vocabulary must hold `[UNK]`.
    pub fn from_file(file: &EnigmaFile<'a>) -> Result<Self> {
        Self::new(Tokenizer::from_file(file)?)
    }

    /// Over `vocab`, whose `bos` is `[CLS]` and `eos` is `[SEP]`.
    pub fn new(vocab: Tokenizer<'a>) -> Result<Self> {
        let unk = vocab
            .lookup(b"[UNK]")
            .ok_or(Error::BadTokenizer("a WordPiece vocabulary needs [UNK]"))?;
        Ok(WordPiece {
            cls: vocab.bos(),
            sep: vocab.eos(),
            unk,
            vocab,
        })
    }

    pub fn vocab(&self) -> &Tokenizer<'a> {
        &self.vocab
    }

    pub fn pad(&self) -> u32 {
        self.vocab.meta().pad.unwrap_or(0)
    }

    /// `[CLS] ids… [SEP]` of `text` into `out`, at most `max_len` ids (and at most `out.len()`): longer
    /// texts lose their tail, as Hugging Face's truncation does. Returns the count.
    pub fn encode(&self, text: &str, max_len: usize, out: &mut [u32]) -> Result<usize> {
        let max_len = max_len.min(out.len());
        if max_len < 2 {
            return Err(Error::BufferTooSmall {
                what: "token ids ([CLS] and [SEP] at least)",
                needed: 2,
                found: max_len,
            });
        }
        out[0] = self.cls;
        let mut o = Out {
            ids: out,
            n: 1,
            cap: max_len - 1,
        };
        // `chars` counts past the buffer, so overlong words become [UNK].
        let mut word = [0u8; WORD_BYTES];
        let mut len = 0;
        let mut chars = 0;
        for c in text.chars() {
            if o.full() {
                break;
            }
            normalize(c, |p| {
                let alone = match p {
                    Piece::Char(ch) => {
                        chars += 1;
                        if chars <= MAX_WORD_CHARS {
                            len += ch.encode_utf8(&mut word[len..]).len();
                        }
                        return;
                    }
                    Piece::Break => None,
                    Piece::Alone(ch) => Some(ch),
                };
                self.word(&word[..len], chars, &mut o);
                (len, chars) = (0, 0);
                if let Some(ch) = alone {
                    let mut b = [0u8; 4];
                    self.word(ch.encode_utf8(&mut b).as_bytes(), 1, &mut o);
                }
            });
        }
        self.word(&word[..len], chars, &mut o);
        let n = o.n;
        out[n] = self.sep;
        Ok(n + 1)
    }

    /// The WordPiece ids of one word of `chars` characters (its bytes `w`, without `##`).
    fn word(&self, w: &[u8], chars: usize, o: &mut Out<'_>) {
        if chars == 0 {
            return;
        }
        if chars > MAX_WORD_CHARS {
            return o.push(self.unk);
        }
        let first = o.n;
        let mut start = 0;
        while start < w.len() {
            let mut end = w.len();
            let id = loop {
                let id = if start == 0 {
                    self.vocab.lookup(&w[..end])
                } else {
                    self.continuation(&w[start..end])
                };
                if id.is_some() {
                    break id;
                }
                end -= 1;
                while end > start && !is_char_start(w[end]) {
                    end -= 1;
                }
                if end == start {
                    break None;
                }
            };
            match id {
                Some(id) => o.push(id),
                // One unknown part makes the whole word [UNK].
                None => {
                    o.n = first;
                    return o.push(self.unk);
                }
            }
            start = end;
        }
    }

    /// `"##" + s`, looked up without building it.
    fn continuation(&self, s: &[u8]) -> Option<u32> {
        let mut b = [0u8; WORD_BYTES + 2];
        let n = s.len().min(WORD_BYTES);
        b[..2].copy_from_slice(b"##");
        b[2..2 + n].copy_from_slice(&s[..n]);
        self.vocab.lookup(&b[..2 + n])
    }
}

fn is_char_start(b: u8) -> bool {
    b & 0xC0 != 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TokenizerMeta;

    const VOCAB: [&str; 14] = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "cafe", "!", "中", "a", "##b",
        "ᄒ", "##ᅡ",
    ];

    /// Encodes `text` over [`VOCAB`] with at most `max` ids.
    fn enc(text: &str, max: usize) -> heapless::Vec<u32, 64> {
        let mut bytes = [0u8; 128];
        let mut offsets = [0u32; VOCAB.len() + 1];
        let mut at = 0;
        for (i, p) in VOCAB.iter().enumerate() {
            bytes[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
            offsets[i + 1] = at as u32;
        }
        let mut sorted: [u32; VOCAB.len()] = core::array::from_fn(|i| i as u32);
        sorted.sort_unstable_by_key(|&i| VOCAB[i as usize].as_bytes());
        let scores = [0.0f32; VOCAB.len()];
        let meta = TokenizerMeta {
            bos: 2,
            eos: 3,
            pad: Some(0),
            max_token_len: 8,
            add_dummy_prefix: false,
            byte_fallback: None,
            chat: None,
        };
        let vocab = Tokenizer::new(meta, &bytes[..at], &offsets, &scores, &sorted).unwrap();
        let wp = WordPiece::new(vocab).unwrap();
        let mut out = [0u32; 64];
        let n = wp.encode(text, max, &mut out).unwrap();
        heapless::Vec::from_slice(&out[..n]).unwrap()
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        assert_eq!(enc("unaffable", 64), [2, 4, 5, 6, 3]);
        // One unknown part makes the whole word [UNK], not a partial spelling.
        assert_eq!(enc("unaffablex a", 64), [2, 1, 10, 3]);
        assert_eq!(enc("abbb", 64), [2, 10, 11, 11, 11, 3]);
        assert_eq!(enc("", 64), [2, 3]);
        assert_eq!(enc(" \t\n ", 64), [2, 3]);
    }

    #[test]
    fn normalizes_as_bert_does() {
        // Lower-cased, accents stripped (é is e + U+0301 under NFD), punctuation split off.
        assert_eq!(enc("CAFÉ!", 64), [2, 7, 8, 3]);
        assert_eq!(enc("Cafe\u{301}!!", 64), [2, 7, 8, 8, 3]);
        // CJK ideographs are words of their own even inside a word; a control is dropped, joining its
        // neighbours into one word.
        assert_eq!(enc("a中a\u{7}b", 64), [2, 10, 9, 10, 11, 3]);
        // A Hangul syllable decomposes to its jamo (하 = ᄒ + ᅡ).
        assert_eq!(enc("하", 64), [2, 12, 13, 3]);
        // Over 100 characters is [UNK] whatever its pieces.
        let mut long = heapless::String::<128>::new();
        for _ in 0..101 {
            long.push('a').unwrap();
        }
        assert_eq!(enc(&long, 64), [2, 1, 3]);
    }

    #[test]
    fn truncates_keeping_cls_and_sep() {
        assert_eq!(enc("a a a a a", 4), [2, 10, 10, 3]);
        // A word cut by the limit keeps its first pieces.
        assert_eq!(enc("unaffable", 4), [2, 4, 5, 3]);
        let mut out = [0u32; 1];
        let wp_err = {
            let bytes = b"[UNK]";
            let offsets = [0u32, 5];
            let meta = TokenizerMeta {
                bos: 0,
                eos: 0,
                pad: None,
                max_token_len: 5,
                add_dummy_prefix: false,
                byte_fallback: None,
                chat: None,
            };
            let vocab = Tokenizer::new(meta, bytes, &offsets, &[0.0], &[0]).unwrap();
            WordPiece::new(vocab).unwrap().encode("a", 8, &mut out)
        };
        assert!(matches!(wp_err, Err(Error::BufferTooSmall { .. })));
    }
}
