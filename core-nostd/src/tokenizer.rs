//! Byte-level BPE with merge scores, in llama2.c's style (SentencePiece-compatible for Llama vocabularies).
//!
//! Encoding: optional BOS, the dummy-prefix piece `" "` before non-empty text, one token per UTF-8 character
//! (bytes without a piece fall back to `<0xNN>` tokens), then repeatedly merge the adjacent pair whose merged
//! piece has the highest score (leftmost on ties) until no pair merges; optional EOS.
//! Decoding strips the leading space of the first piece after BOS and turns `<0xNN>` into that byte.
//! A byte-level vocabulary may carry a regex pre-tokenizer ([`Split`]): the characters are then merged chunk
//! by chunk, and no merge crosses a chunk's edge.

use crate::format::{
    EnigmaFile, TokenizerMeta, TOK_ADDED, TOK_NO_BOS, TOK_OFFSETS, TOK_PIECES,
    TOK_PREFIX_IF_UNSPACED, TOK_SCORES, TOK_SORTED, TOK_SPLIT,
};
use crate::pretok::{self, Split};
use crate::{Error, Result};
use core::cmp::Ordering;

/// The longest piece any tokenizer loader accepts, in bytes. Real vocabularies stay far below it; without a
/// cap, merges that each double a piece reach gigabytes within a few dozen lines of a tokenizer file.
pub const MAX_PIECE_LEN: usize = 1024;
/// The most tokens a vocabulary may have.
pub const MAX_VOCAB: usize = 1 << 22;
/// The most bytes all pieces of a vocabulary may take together.
pub const MAX_PIECE_BYTES: usize = 64 << 20;

/// Counts a vocabulary while a loader builds it, and refuses it at the first limit it crosses, before the
/// piece that crosses it is allocated.
#[derive(Clone, Copy, Debug, Default)]
pub struct VocabBudget {
    pieces: usize,
    bytes: usize,
}

impl VocabBudget {
    /// Accounts for one more piece of `len` bytes.
    pub fn add(&mut self, len: usize) -> Result<()> {
        let over = |what, found: usize, limit: usize| {
            Err(Error::TokenizerLimit {
                what,
                found: found as u64,
                limit: limit as u64,
            })
        };
        if len > MAX_PIECE_LEN {
            return over("the length of a piece (bytes)", len, MAX_PIECE_LEN);
        }
        self.pieces += 1;
        if self.pieces > MAX_VOCAB {
            return over("the vocabulary size (tokens)", self.pieces, MAX_VOCAB);
        }
        self.bytes += len;
        if self.bytes > MAX_PIECE_BYTES {
            return over("the bytes of all pieces", self.bytes, MAX_PIECE_BYTES);
        }
        Ok(())
    }
}

/// A tokenizer viewing its vocabulary in place.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer<'a> {
    /// All pieces concatenated.
    pieces: &'a [u8],
    /// (V + 1): piece `i` is `pieces[offsets[i]..offsets[i + 1]]`.
    offsets: &'a [u32],
    /// (V) merge scores
    scores: &'a [f32],
    /// (V) token ids ordered by their piece's bytes, for binary search.
    sorted: &'a [u32],
    meta: TokenizerMeta,
    /// The longest piece, in bytes (at least 1): how much text one token can cover at most.
    longest: usize,
    split: Split,
    /// Ids whose piece, spelled in the text, encodes to that id whole (a Hugging Face tokenizer's added
    /// tokens: `<|begin_of_text|>`, `<s>`).
    added: &'a [u32],
    /// Whether `encode(.., bos: true, ..)` puts BOS first ([`TOK_NO_BOS`]).
    adds_bos: bool,
    /// Whether text starting with a space goes without the dummy prefix ([`TOK_PREFIX_IF_UNSPACED`]).
    prefix_if_unspaced: bool,
}

static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// Parses a byte-fallback piece `<0xNN>`.
fn byte_piece(p: &[u8]) -> Option<u8> {
    if p.len() != 6 || &p[..3] != b"<0x" || p[5] != b'>' {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(hex(p[3])? << 4 | hex(p[4])?)
}

/// Orders `cand` against the concatenation `a ++ b` without building it.
fn cmp_concat(cand: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    let n = cand.len().min(a.len());
    match cand[..n].cmp(&a[..n]) {
        Ordering::Equal if cand.len() < a.len() => Ordering::Less,
        Ordering::Equal => cand[a.len()..].cmp(b),
        o => o,
    }
}

impl<'a> Tokenizer<'a> {
    /// Views the tokenizer stored in a `.enigma` file.
    pub fn from_file(file: &EnigmaFile<'a>) -> Result<Self> {
        let v = file.config().vocab_size as u64;
        let tok = Self::new(
            file.header().tokenizer,
            file.raw_u8(TOK_PIECES)?,
            file.u32s(TOK_OFFSETS, &[v + 1])?,
            file.f32s(TOK_SCORES, &[v])?,
            file.u32s(TOK_SORTED, &[v])?,
        )?;
        // Optional: files without it (all before the Hugging Face import) merge the text as one run.
        let split = if file.tensor(TOK_SPLIT).is_none() {
            Split::None
        } else {
            match file.raw_u8(TOK_SPLIT)? {
                [kind] => Split::from_u8(*kind)
                    .ok_or(Error::BadTokenizer("unknown pre-tokenizer split"))?,
                _ => return Err(Error::BadTokenizer("the split tensor is not one byte")),
            }
        };
        let added = match file.tensor(TOK_ADDED) {
            None => &[][..],
            Some(t) => file.u32s(TOK_ADDED, &[t.shape[0]])?,
        };
        if (split != Split::None || !added.is_empty()) && !cfg!(feature = "pretok") {
            return Err(Error::BadTokenizer(
                "it splits text by a regex or matches added tokens before merging, which this build leaves out (enigma-core's `pretok` feature)",
            ));
        }
        let adds_bos = !Self::flag(file, TOK_NO_BOS)?;
        Ok(tok
            .with_split(split)
            .with_added(added)?
            .with_bos(adds_bos)
            .with_prefix_if_unspaced(Self::flag(file, TOK_PREFIX_IF_UNSPACED)?))
    }

    /// An optional one-byte flag tensor: absent is false, one byte of 1 is true, anything else an error.
    fn flag(file: &EnigmaFile<'a>, name: &'static str) -> Result<bool> {
        match file.tensor(name) {
            None => Ok(false),
            Some(_) => match file.raw_u8(name)? {
                [1] => Ok(true),
                _ => Err(Error::BadTokenizer("a flag tensor is not one byte of 1")),
            },
        }
    }

    /// Whether encoding `text` starts with the dummy prefix.
    fn prefixes(&self, text: &str) -> bool {
        self.meta.add_dummy_prefix
            && !text.is_empty()
            && !(self.prefix_if_unspaced && text.starts_with(' '))
    }

    /// Whether text is encoded with BOS in front when the caller asks for it (the vocabulary's own rule).
    pub fn with_bos(mut self, adds_bos: bool) -> Self {
        self.adds_bos = adds_bos;
        self
    }

    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Whether text already starting with a space goes without the dummy prefix ([`TOK_PREFIX_IF_UNSPACED`]).
    pub fn with_prefix_if_unspaced(self, yes: bool) -> Self {
        Tokenizer {
            prefix_if_unspaced: yes,
            ..self
        }
    }

    /// The same vocabulary, encoding the pieces of `added` spelled in the text as those ids.
    pub fn with_added(self, added: &'a [u32]) -> Result<Self> {
        if added
            .iter()
            .any(|&id| id as usize >= self.vocab_size() || self.piece(id).is_empty())
        {
            return Err(Error::BadTokenizer(
                "an added token is outside the vocabulary or has no bytes",
            ));
        }
        Ok(Tokenizer { added, ..self })
    }

    pub fn added(&self) -> &'a [u32] {
        self.added
    }

    /// The first added token spelled in `text`: (its byte offset, id, length); the longest at the
    /// earliest offset.
    fn find_added(&self, text: &str) -> Option<(usize, u32, usize)> {
        // Without `pretok` (the firmware) no file with added tokens loads, and this code stays out of flash.
        if !cfg!(feature = "pretok") || self.added.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        // Only whole characters: a piece of a hostile file need not be UTF-8, and the text is cut there.
        (0..bytes.len())
            .filter(|&at| text.is_char_boundary(at))
            .find_map(|at| {
                let rest = &bytes[at..];
                self.added
                    .iter()
                    .map(|&id| (id, self.piece(id)))
                    .filter(|(_, p)| rest.starts_with(p) && text.is_char_boundary(at + p.len()))
                    .max_by_key(|(_, p)| p.len())
                    .map(|(id, p)| (at, id, p.len()))
            })
    }

    /// The same vocabulary, cutting text as `split` says before merging.
    pub fn with_split(self, split: Split) -> Self {
        Tokenizer { split, ..self }
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// Checks that the arrays describe a vocabulary every lookup stays inside.
    pub fn new(
        meta: TokenizerMeta,
        pieces: &'a [u8],
        offsets: &'a [u32],
        scores: &'a [f32],
        sorted: &'a [u32],
    ) -> Result<Self> {
        let bad = |why| Err(Error::BadTokenizer(why));
        let v = scores.len();
        if v == 0 || offsets.len() != v + 1 || sorted.len() != v {
            return bad("offsets, scores and sorted index disagree on the vocabulary size");
        }
        if offsets[0] != 0
            || offsets[v] as usize != pieces.len()
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return bad("piece offsets are not increasing within the piece bytes");
        }
        let specials = [
            Some(meta.bos),
            Some(meta.eos),
            meta.pad,
            meta.byte_fallback.map(|b| b.saturating_add(255)),
            meta.chat.map(|c| c.user),
            meta.chat.map(|c| c.assistant),
        ];
        if specials.into_iter().flatten().any(|id| id as usize >= v) {
            return bad("a special token id is outside the vocabulary");
        }
        let mut budget = VocabBudget::default();
        let mut longest = 1;
        for w in offsets.windows(2) {
            let len = (w[1] - w[0]) as usize;
            budget.add(len)?;
            longest = longest.max(len);
        }
        let tok = Tokenizer {
            pieces,
            offsets,
            scores,
            sorted,
            meta,
            longest,
            split: Split::None,
            added: &[],
            adds_bos: true,
            prefix_if_unspaced: false,
        };
        if sorted.iter().any(|&id| id as usize >= v) {
            return bad("the sorted index names a token outside the vocabulary");
        }
        if sorted.windows(2).any(|w| tok.piece(w[0]) > tok.piece(w[1])) {
            return bad("the sorted index is not in byte order");
        }
        Ok(tok)
    }

    pub fn meta(&self) -> &TokenizerMeta {
        &self.meta
    }
    pub fn vocab_size(&self) -> usize {
        self.scores.len()
    }
    pub fn bos(&self) -> u32 {
        self.meta.bos
    }
    pub fn eos(&self) -> u32 {
        self.meta.eos
    }

    /// The bytes of token `id` (empty for an id outside the vocabulary).
    pub fn piece(&self, id: u32) -> &'a [u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.pieces[a as usize..b as usize],
            _ => &[],
        }
    }

    pub fn score(&self, id: u32) -> f32 {
        self.scores
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY)
    }

    /// The id whose piece is exactly `s`.
    pub fn lookup(&self, s: &[u8]) -> Option<u32> {
        self.find(|cand| cand.cmp(s))
    }

    fn find(&self, cmp: impl Fn(&[u8]) -> Ordering) -> Option<u32> {
        self.sorted
            .binary_search_by(|&id| cmp(self.piece(id)))
            .ok()
            .map(|i| self.sorted[i])
    }

    fn byte_token(&self, b: u8) -> Result<u32> {
        match self.meta.byte_fallback {
            Some(base) => Ok(base + b as u32),
            None => self
                .lookup(&BYTES[b as usize..b as usize + 1])
                .ok_or(Error::Unencodable { byte: b }),
        }
    }

    /// The most tokens encoding `text_len` bytes can produce (with BOS, dummy prefix and EOS).
    pub fn max_tokens(text_len: usize) -> usize {
        text_len + 3
    }

    /// The fewest tokens `text_len` bytes can encode to (with BOS and EOS when asked): no token covers more
    /// text than the longest piece. Lets a caller refuse a text too long for its context before encoding it.
    pub fn min_tokens(&self, text_len: usize, bos: bool, eos: bool) -> usize {
        // Not counted where text starting with a space goes without it: this must stay a lower bound.
        let prefix =
            usize::from(self.meta.add_dummy_prefix && !self.prefix_if_unspaced && text_len > 0);
        (text_len + prefix).div_ceil(self.longest)
            + usize::from(bos && self.adds_bos)
            + usize::from(eos)
    }

    /// Encodes `text` into `out`, returning the token count. `out` needs [`Tokenizer::max_tokens`] slots
    /// at most. `bos` asks for BOS first, which a vocabulary without one ([`Tokenizer::adds_bos`]) leaves out.
    pub fn encode(&self, text: &str, bos: bool, eos: bool, out: &mut [u32]) -> Result<usize> {
        self.encode_by(text, bos, eos, out, &mut |t, len| self.merge(t, len))
    }

    /// [`Tokenizer::encode`] with another merge loop (`merge(tokens, len)` returns the merged length), so a
    /// host can use a faster one that gives the same ids. Each chunk of the split is merged alone; the first
    /// with BOS and the dummy prefix before it, as one run.
    pub fn encode_by(
        &self,
        text: &str,
        bos: bool,
        eos: bool,
        out: &mut [u32],
        merge: &mut dyn FnMut(&mut [u32], usize) -> usize,
    ) -> Result<usize> {
        let need = Self::max_tokens(text.len());
        let mut found = self.find_added(text);
        // As `tokenizers`' Metaspace "first": no prefix when the text starts with an added token.
        let prefixed = if found.is_some_and(|(at, _, _)| at == 0) {
            ""
        } else {
            text
        };
        let mut n = self.begin(prefixed, bos, need, out)?;
        let mut run = 0;
        let mut rest = text;
        loop {
            let plain = found.map_or(rest, |(at, _, _)| &rest[..at]);
            for chunk in pretok::chunks(plain, self.split) {
                n = self.push_chars(chunk, need, out, n)?;
                n = run + merge(&mut out[run..n], n - run);
                run = n;
            }
            let Some((at, id, len)) = found else { break };
            Self::push(out, &mut n, id, need)?;
            run = n;
            rest = &rest[at + len..];
            found = self.find_added(rest);
        }
        if eos {
            let found = out.len();
            *out.get_mut(n).ok_or(Error::BufferTooSmall {
                what: "token",
                needed: n + 1,
                found,
            })? = self.meta.eos;
            n += 1;
        }
        Ok(n)
    }

    /// The first phase of [`Tokenizer::encode`]: optional BOS, the dummy prefix, then one token per UTF-8
    /// character (byte tokens where no piece covers it), unmerged. Returns the count written to `out`.
    pub fn pre_tokenize(&self, text: &str, bos: bool, out: &mut [u32]) -> Result<usize> {
        let need = Self::max_tokens(text.len());
        let n = self.begin(text, bos, need, out)?;
        self.push_chars(text, need, out, n)
    }

    /// Writes `id` at `out[*n]`; `need` is what the error reports as the buffer's needed size.
    fn push(out: &mut [u32], n: &mut usize, id: u32, need: usize) -> Result<()> {
        match out.get_mut(*n) {
            Some(slot) => {
                *slot = id;
                *n += 1;
                Ok(())
            }
            None => Err(Error::BufferTooSmall {
                what: "token",
                needed: need,
                found: out.len(),
            }),
        }
    }

    /// BOS (when asked for and the vocabulary uses it) and the dummy prefix of non-empty `text`; returns the
    /// count written.
    fn begin(&self, text: &str, bos: bool, need: usize, out: &mut [u32]) -> Result<usize> {
        let mut n = 0;
        if bos && self.adds_bos {
            Self::push(out, &mut n, self.meta.bos, need)?;
        }
        if self.prefixes(text) {
            if let Some(space) = self.lookup(b" ") {
                Self::push(out, &mut n, space, need)?;
            }
        }
        Ok(n)
    }

    /// One token per character of `text` (byte tokens where no piece covers it) from `out[n]` on; returns
    /// the new count.
    fn push_chars(&self, text: &str, need: usize, out: &mut [u32], mut n: usize) -> Result<usize> {
        let mut utf8 = [0u8; 4];
        for ch in text.chars() {
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            match self.lookup(bytes) {
                Some(id) => Self::push(out, &mut n, id, need)?,
                None => {
                    for &b in bytes {
                        Self::push(out, &mut n, self.byte_token(b)?, need)?;
                    }
                }
            }
        }
        Ok(n)
    }

    /// The token that merging `a` and `b` makes, and its score, if the vocabulary has their concatenation.
    /// Scores at or below -1e10 never merge (llama2.c's threshold).
    pub fn merge_pair(&self, a: u32, b: u32) -> Option<(u32, f32)> {
        let (pa, pb) = (self.piece(a), self.piece(b));
        let id = self.find(|cand| cmp_concat(cand, pa, pb))?;
        let score = self.scores[id as usize];
        (score > -1e10).then_some((id, score))
    }

    /// The second phase: merge the best-scoring adjacent pair (leftmost on ties) until none merges, in place
    /// over `tokens[..len]`; returns the new length. This is llama2.c's loop, O(n²): the std runtime has an
    /// O(n log n) one giving the same ids for long texts.
    pub fn merge(&self, tokens: &mut [u32], len: usize) -> usize {
        let mut len = len;
        loop {
            let mut best: Option<(f32, u32, usize)> = None;
            for i in 0..len.saturating_sub(1) {
                if let Some((id, score)) = self.merge_pair(tokens[i], tokens[i + 1]) {
                    if best.is_none_or(|b| score > b.0) {
                        best = Some((score, id, i));
                    }
                }
            }
            let Some((_, id, i)) = best else { return len };
            tokens[i] = id;
            tokens.copy_within(i + 2..len, i + 1);
            len -= 1;
        }
    }

    /// The bytes token `token` prints as when it follows `prev`: without the leading space right after BOS,
    /// and `<0xNN>` as the byte it names.
    pub fn decode(&self, prev: u32, token: u32) -> &'a [u8] {
        let mut p = self.piece(token);
        if prev == self.meta.bos && p.first() == Some(&b' ') {
            p = &p[1..];
        }
        match byte_piece(p) {
            Some(b) => &BYTES[b as usize..b as usize + 1],
            None => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_order_matches_building_the_string() {
        let words: [&[u8]; 7] = [b"", b"a", b"ab", b"abc", b"b", b"ba", b"\xff"];
        for cand in words {
            for a in words {
                for b in words {
                    let mut buf = [0u8; 8];
                    buf[..a.len()].copy_from_slice(a);
                    buf[a.len()..a.len() + b.len()].copy_from_slice(b);
                    let joined = &buf[..a.len() + b.len()];
                    assert_eq!(
                        cmp_concat(cand, a, b),
                        cand.cmp(joined),
                        "{cand:?} vs {a:?}+{b:?}"
                    );
                }
            }
        }
    }

    /// Pieces `"<s>"`, `"\xff<"` (not UTF-8), `"a"`, `"s"`, with `added` as the added tokens.
    fn tiny(added: &'static [u32]) -> Result<Tokenizer<'static>> {
        static PIECES: &[u8] = b"<s>\xff<as";
        static OFFSETS: [u32; 5] = [0, 3, 5, 6, 7];
        static SCORES: [f32; 4] = [-1e30, -1e30, 0.0, 0.0];
        static SORTED: [u32; 4] = [0, 2, 3, 1];
        let meta = TokenizerMeta {
            bos: 0,
            eos: 0,
            pad: None,
            max_token_len: 3,
            add_dummy_prefix: false,
            byte_fallback: None,
            chat: None,
        };
        Tokenizer::new(meta, PIECES, &OFFSETS, &SCORES, &SORTED)?.with_added(added)
    }

    #[test]
    fn added_tokens_spelled_in_text_encode_whole() {
        let enc = |t: &Tokenizer<'_>, text: &str| {
            let mut out = [0u32; 16];
            let n = t.encode(text, false, false, &mut out)?;
            Ok::<_, Error>(heapless::Vec::<u32, 16>::from_slice(&out[..n]).unwrap_or_default())
        };
        // Without added tokens, "<" has no piece and no byte fallback.
        assert!(matches!(
            enc(&tiny(&[]).unwrap(), "a<s>"),
            Err(Error::Unencodable { byte: b'<' })
        ));
        let t = tiny(&[0]).unwrap();
        assert_eq!(enc(&t, "a<s>").unwrap().as_slice(), [2, 0]);
        assert_eq!(enc(&t, "s<s><s>as").unwrap().as_slice(), [3, 0, 0, 2, 3]);
        // A piece that is not UTF-8 is never found in text, and cutting there cannot split a character.
        let t = tiny(&[0, 1]).unwrap();
        assert_eq!(enc(&t, "\u{ff}<s>").map(|v| v.len()).ok(), None);
        assert_eq!(enc(&t, "<s>a").unwrap().as_slice(), [0, 2]);
        assert!(matches!(tiny(&[9]), Err(Error::BadTokenizer(_))));
    }

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(byte_piece(b"<0x0A>"), Some(10));
        assert_eq!(byte_piece(b"<0xff>"), Some(255));
        assert_eq!(byte_piece(b"<0xG0>"), None);
        assert_eq!(byte_piece(b"<0x0A"), None);
    }

    #[test]
    fn the_vocabulary_budget_says_which_limit_was_hit() {
        let mut b = VocabBudget::default();
        assert!(b.add(MAX_PIECE_LEN).is_ok());
        match b.add(MAX_PIECE_LEN + 1) {
            Err(Error::TokenizerLimit { what, found, limit }) => {
                assert!(what.contains("length"), "{what}");
                assert_eq!(
                    (found, limit),
                    (MAX_PIECE_LEN as u64 + 1, MAX_PIECE_LEN as u64)
                );
            }
            other => panic!("{other:?}"),
        }
        let mut b = VocabBudget::default();
        let err = (0..MAX_PIECE_BYTES / 1000 + 1).try_for_each(|_| b.add(1000));
        assert!(
            matches!(err, Err(Error::TokenizerLimit { what, .. }) if what.contains("all pieces")),
            "{err:?}"
        );
        let mut b = VocabBudget::default();
        let err = (0..=MAX_VOCAB).try_for_each(|_| b.add(0));
        assert!(
            matches!(err, Err(Error::TokenizerLimit { what, .. }) if what.contains("vocabulary")),
            "{err:?}"
        );
    }
}
