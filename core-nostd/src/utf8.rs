//! Turning a stream of token pieces into valid UTF-8.
//!
//! A byte-fallback tokenizer emits one byte per token for characters it has no piece for, so a character
//! of 2–4 bytes arrives over several tokens, and a model can emit any byte sequence at all. Everything
//! that shows text (the CLI, the UART, an HTTP stream) passes pieces through [`Utf8Stream`]: it holds back
//! the start of an unfinished character until its last byte arrives, and turns bytes that can never form a
//! character into U+FFFD. No heap: the firmware uses it too.

/// The replacement character, as UTF-8.
pub const REPLACEMENT: &str = "\u{FFFD}";

/// Buffers the tail of an incomplete character between pieces.
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    /// The first bytes of a character whose last bytes have not come yet (at most 3).
    held: [u8; 4],
    len: usize,
}

impl Utf8Stream {
    pub const fn new() -> Self {
        Utf8Stream {
            held: [0; 4],
            len: 0,
        }
    }

    /// Feeds `piece` and calls `out` with each run of complete, valid text, in order. Returns what `out`
    /// returned last (`false` asks the caller to stop), or `true` when there was nothing to say.
    pub fn push(&mut self, piece: &[u8], out: &mut dyn FnMut(&str) -> bool) -> bool {
        let mut keep_going = true;
        let mut rest = piece;
        if self.len > 0 {
            // The held bytes and enough of the piece to finish (or refute) their character: a character
            // is at most 4 bytes and at most 3 are held.
            let take = rest.len().min(3);
            let mut tmp = [0u8; 6];
            tmp[..self.len].copy_from_slice(&self.held[..self.len]);
            tmp[self.len..self.len + take].copy_from_slice(&rest[..take]);
            let all = &tmp[..self.len + take];
            let mut at = 0;
            while at < self.len {
                match step(&all[at..]) {
                    Step::Valid(s) => {
                        keep_going = out(s);
                        at += s.len();
                    }
                    Step::Invalid(n) => {
                        keep_going = out(REPLACEMENT);
                        at += n;
                    }
                    Step::Incomplete => {
                        // The piece ran out inside `tmp`: keep waiting.
                        let tail = &all[at..];
                        let mut held = [0u8; 4];
                        held[..tail.len()].copy_from_slice(tail);
                        self.held = held;
                        self.len = tail.len();
                        return keep_going;
                    }
                }
            }
            rest = &rest[at - self.len..];
            self.len = 0;
        }
        while !rest.is_empty() {
            match step(rest) {
                Step::Valid(s) => {
                    keep_going = out(s);
                    rest = &rest[s.len()..];
                }
                Step::Invalid(n) => {
                    keep_going = out(REPLACEMENT);
                    rest = &rest[n..];
                }
                Step::Incomplete => {
                    self.held[..rest.len()].copy_from_slice(rest);
                    self.len = rest.len();
                    break;
                }
            }
        }
        keep_going
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self, out: &mut dyn FnMut(&str) -> bool) -> bool {
        if self.len == 0 {
            return true;
        }
        self.len = 0;
        out(REPLACEMENT)
    }

    /// Whether bytes of an unfinished character are held.
    pub fn is_pending(&self) -> bool {
        self.len > 0
    }
}

enum Step<'a> {
    /// A run of complete characters at the start.
    Valid(&'a str),
    /// This many bytes at the start can never be part of a character (one U+FFFD, as
    /// `String::from_utf8_lossy` counts them).
    Invalid(usize),
    /// The bytes are the start of a character whose end has not come.
    Incomplete,
}

fn step(bytes: &[u8]) -> Step<'_> {
    match core::str::from_utf8(bytes) {
        Ok(s) => Step::Valid(s),
        Err(e) if e.valid_up_to() > 0 => {
            let (good, _) = bytes.split_at(e.valid_up_to());
            // from_utf8 has just checked these bytes.
            Step::Valid(core::str::from_utf8(good).unwrap_or(REPLACEMENT))
        }
        Err(e) => match e.error_len() {
            Some(n) => Step::Invalid(n),
            None => Step::Incomplete,
        },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn run(pieces: &[&[u8]]) -> String {
        let mut s = Utf8Stream::new();
        let mut text = String::new();
        for p in pieces {
            s.push(p, &mut |t| {
                text.push_str(t);
                true
            });
        }
        s.finish(&mut |t| {
            text.push_str(t);
            true
        });
        text
    }

    #[test]
    fn characters_split_over_pieces_come_out_whole() {
        let s = "héllo, 世界 🎉!";
        let bytes = s.as_bytes();
        // Every split into single bytes, and into pairs.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles), s);
        let pairs: Vec<&[u8]> = bytes.chunks(2).collect();
        assert_eq!(run(&pairs), s);
        let threes: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(run(&threes), s);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_valid_text_survives() {
        assert_eq!(run(&[b"a\xffb"]), "a\u{FFFD}b");
        // A lead byte followed by an ASCII byte: the lead is replaced, the ASCII byte kept.
        assert_eq!(run(&[b"\xe4", b"x"]), "\u{FFFD}x");
        // A lead byte followed by another lead that completes.
        assert_eq!(run(&[b"\xe4", b"\xc3\xa9"]), "\u{FFFD}é");
        // An unfinished character at the end of the stream.
        assert_eq!(run(&[b"ok\xf0\x9f"]), "ok\u{FFFD}");
        // A stray continuation byte.
        assert_eq!(run(&[b"\x80", b"z"]), "\u{FFFD}z");
    }

    #[test]
    fn any_byte_stream_gives_valid_utf8_equal_to_lossy_decoding_of_valid_input() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 24) as usize;
            let mut bytes = Vec::new();
            let mut y = x;
            for _ in 0..n {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((y >> 56) as u8);
            }
            let cut = (x >> 40) as usize % (n + 1);
            let text = run(&[&bytes[..cut], &bytes[cut..]]);
            // `text` is a String, so valid by type; it must also keep every valid character in place.
            if let Ok(valid) = core::str::from_utf8(&bytes) {
                assert_eq!(text, valid);
            }
            assert_eq!(text, String::from_utf8_lossy(&bytes).as_ref());
        }
    }
}
