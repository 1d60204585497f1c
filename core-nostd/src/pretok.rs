//! The regex pre-tokenizers of byte-level BPE vocabularies, written out by hand (no regex engine in
//! `no_std`): text is cut into chunks, and merges never cross a chunk's edge.
//!
//! - [`Split::Gpt2`], GPT-2's (and the `tokenizers` library's `ByteLevel` with `use_regex`):
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - [`Split::Llama3`], Llama 3's `Split`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|`
//!   `\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!
//! Each alternative is tried in order at the chunk's start, as the regex engine does. `\p{N}` is
//! [`char::is_numeric`] (exactly the N categories); `\p{L}` is [`char::is_alphabetic`] less a table of the
//! alphabetic characters that are not letters (combining marks such as Devanagari's vowel signs, letter
//! numbers, circled letters: `pretok_marks.rs`, 320 ranges), so no Unicode crate is needed in `no_std`.

// Without the `pretok` feature (the firmware) nothing calls the splitters, and the Unicode tables behind
// `is_alphabetic` and the marks table (10 KiB of flash) stay out of the image.
#![cfg_attr(not(feature = "pretok"), allow(dead_code))]

use crate::pretok_marks::NOT_LETTERS;

/// Which split a tokenizer applies before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// None: the text is one run (llama2.c, SentencePiece).
    None = 0,
    Gpt2 = 1,
    Llama3 = 2,
}

impl Split {
    pub fn from_u8(v: u8) -> Option<Split> {
        [Split::None, Split::Gpt2, Split::Llama3]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

/// `\p{L}`: alphabetic, less the marks, letter numbers and symbols the alphabetic property also holds for.
fn letter(c: char) -> bool {
    c.is_alphabetic() && {
        let cp = c as u32;
        let i = NOT_LETTERS.partition_point(|&(_, end)| end < cp);
        NOT_LETTERS.get(i).is_none_or(|&(start, _)| cp < start)
    }
}

fn number(c: char) -> bool {
    c.is_numeric()
}

fn other(c: char) -> bool {
    !c.is_whitespace() && !letter(c) && !number(c)
}

fn newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Bytes of the longest prefix of `s` whose chars satisfy `f`.
fn run(s: &str, f: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !f(c))
        .map_or(s.len(), |(i, _)| i)
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, case-insensitive when asked.
fn contraction(s: &str, fold: bool) -> usize {
    let Some(rest) = s.strip_prefix('\'') else {
        return 0;
    };
    let mut buf = [0u8; 2];
    let mut n = 0;
    for c in rest.chars().take(2) {
        let c = if fold { c.to_ascii_lowercase() } else { c };
        if !c.is_ascii() {
            break;
        }
        buf[n] = c as u8;
        n += 1;
    }
    match &buf[..n] {
        [b's' | b't' | b'm' | b'd', ..] => 2,
        [b'r', b'e'] | [b'v', b'e'] | [b'l', b'l'] => 3,
        _ => 0,
    }
}

/// ` ?X+` where X is `f`: an optional space, then at least one X.
fn space_then(s: &str, f: impl Fn(char) -> bool) -> usize {
    let skip = usize::from(s.starts_with(' '));
    let n = run(&s[skip..], f);
    if n == 0 {
        0
    } else {
        skip + n
    }
}

/// `\s+(?!\S)|\s+`: a whitespace run, less its last char when a non-space follows and the run is longer
/// than one char (that char then goes with what follows).
fn spaces(s: &str) -> usize {
    let n = run(s, char::is_whitespace);
    if n == s.len() {
        return n;
    }
    let last = s[..n].chars().next_back().map_or(0, char::len_utf8);
    if n > last {
        n - last
    } else {
        n
    }
}

fn gpt2(s: &str) -> usize {
    let n = contraction(s, false);
    if n > 0 {
        return n;
    }
    for f in [letter as fn(char) -> bool, number, other] {
        let n = space_then(s, f);
        if n > 0 {
            return n;
        }
    }
    spaces(s)
}

fn llama3(s: &str) -> usize {
    let n = contraction(s, true);
    if n > 0 {
        return n;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    let mut chars = s.chars();
    if let Some(c) = chars.next() {
        let skip = if !newline(c) && !letter(c) && !number(c) {
            c.len_utf8()
        } else {
            0
        };
        let n = run(&s[skip..], letter);
        if n > 0 {
            return skip + n;
        }
    }
    // \p{N}{1,3}
    let n: usize = s
        .chars()
        .take(3)
        .take_while(|&c| number(c))
        .map(char::len_utf8)
        .sum();
    if n > 0 {
        return n;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let n = space_then(s, other);
    if n > 0 {
        return n + run(&s[n..], newline);
    }
    // \s*[\r\n]+: the whitespace run up to and including its last line break.
    let ws = run(s, char::is_whitespace);
    if let Some((i, c)) = s[..ws].char_indices().rfind(|&(_, c)| newline(c)) {
        return i + c.len_utf8();
    }
    spaces(s)
}

/// The byte length of the first chunk of non-empty `s` (at least one char).
pub fn first_chunk(s: &str, split: Split) -> usize {
    let n = match split {
        Split::None => s.len(),
        #[cfg(feature = "pretok")]
        Split::Gpt2 => gpt2(s),
        #[cfg(feature = "pretok")]
        Split::Llama3 => llama3(s),
        // `Tokenizer::from_file` refuses such a vocabulary in a build without the feature.
        #[cfg(not(feature = "pretok"))]
        Split::Gpt2 | Split::Llama3 => s.len(),
    };
    // Every alternative above matches at least one char of non-empty text; this keeps a chunk non-empty
    // whatever changes there.
    if n == 0 {
        s.chars().next().map_or(0, char::len_utf8)
    } else {
        n
    }
}

/// The chunks of `text`, in order; together exactly `text`. [`Split::None`] gives the whole text (nothing
/// for empty text).
pub fn chunks(text: &str, split: Split) -> Chunks<'_> {
    Chunks { rest: text, split }
}

pub struct Chunks<'t> {
    rest: &'t str,
    split: Split,
}

impl<'t> Iterator for Chunks<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        if self.rest.is_empty() {
            return None;
        }
        let (chunk, rest) = self.rest.split_at(first_chunk(self.rest, self.split));
        self.rest = rest;
        Some(chunk)
    }
}

#[cfg(all(test, feature = "pretok"))]
mod tests {
    use super::*;

    fn cut(text: &str, split: Split) -> heapless::Vec<&str, 32> {
        chunks(text, split).collect()
    }

    #[test]
    fn gpt2_cuts_as_its_regex() {
        assert_eq!(
            cut("Hello world's  end 123abc!!  ?\n\nx  ", Split::Gpt2).as_slice(),
            [
                "Hello", " world", "'s", " ", " end", " 123", "abc", "!!", " ", " ?", "\n", "\n",
                "x", "  "
            ]
        );
        assert_eq!(
            cut(" \u{e9}t\u{e9} 日本", Split::Gpt2).as_slice(),
            [" \u{e9}t\u{e9}", " 日本"]
        );
        assert_eq!(
            cut("'S 'll", Split::Gpt2).as_slice(),
            ["'", "S", " '", "ll"]
        );
    }

    #[test]
    fn llama3_cuts_as_its_regex() {
        assert_eq!(
            cut("Hello world'S 12345 (x) ...\n\n  y\t", Split::Llama3).as_slice(),
            [
                "Hello", " world", "'S", " ", "123", "45", " (", "x", ")", " ...\n\n", " ", " y",
                "\t"
            ]
        );
        assert_eq!(
            cut("a \n\n b", Split::Llama3).as_slice(),
            ["a", " \n\n", " b"]
        );
    }

    #[test]
    fn chunks_cover_the_text() {
        let text = "  mixed \u{1F642} text,\r\n 42 'll \u{0939}\u{093F}\u{0928}";
        for split in [Split::None, Split::Gpt2, Split::Llama3] {
            let mut rest = text;
            for c in chunks(text, split) {
                assert!(!c.is_empty() && rest.starts_with(c), "{split:?}: {c:?}");
                rest = &rest[c.len()..];
            }
            assert!(rest.is_empty());
        }
        assert_eq!(chunks("", Split::Gpt2).count(), 0);
    }
}
