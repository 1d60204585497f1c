//! Console plumbing over `embedded-io`, shared by every board: the generated text as valid UTF-8, a line
//! editor for prompts, an adapter from `embedded-hal-nb` serial ports (what most HALs' UARTs implement), and
//! `\n` to `\r\n` for terminals.

use embedded_hal_nb::nb;
use embedded_hal_nb::serial;
use embedded_io::{ErrorType, Read, Write};
use enigma_core::Utf8Stream;

/// Token pieces to the console as valid UTF-8. A byte-fallback tokenizer spells a character it has no piece
/// for as one token per byte, and a sampled model can emit any bytes at all, so pieces go through the core's
/// [`Utf8Stream`]: a character split over tokens is written when its last byte comes, and bytes that can
/// never form one become U+FFFD, never raw bytes on the wire. A lone control byte, which would garble a
/// terminal, is dropped, as `enigma run` does.
#[derive(Default)]
pub struct Text {
    utf8: Utf8Stream,
}

impl Text {
    pub const fn new() -> Self {
        Text {
            utf8: Utf8Stream::new(),
        }
    }

    /// Writes the text that `piece` completes, and flushes.
    pub fn piece<W: Write>(&mut self, out: &mut W, piece: &[u8]) -> Result<(), W::Error> {
        if let [b] = piece {
            if b.is_ascii_control() && !b.is_ascii_whitespace() {
                return Ok(());
            }
        }
        let mut res = Ok(());
        self.utf8.push(piece, &mut |s| write_text(out, s, &mut res));
        res?;
        out.flush()
    }

    /// Ends the text: a character still unfinished becomes U+FFFD.
    pub fn finish<W: Write>(&mut self, out: &mut W) -> Result<(), W::Error> {
        let mut res = Ok(());
        self.utf8.finish(&mut |s| write_text(out, s, &mut res));
        res?;
        out.flush()
    }
}

fn write_text<W: Write>(out: &mut W, s: &str, res: &mut Result<(), W::Error>) -> bool {
    // The decoder carries on through the rest of a piece after a `false`: keep the first error, write no more.
    if res.is_ok() {
        *res = out.write_all(s.as_bytes());
    }
    res.is_ok()
}

/// A prompt being typed: echoes what it reads, handles backspace, ends at CR or LF.
pub struct Line {
    buf: heapless::Vec<u8, { crate::build::LINE_BYTES }>,
    /// The last line ended with CR: a LF right after it belongs to that end (CRLF terminals).
    after_cr: bool,
    /// The last line ended with a 0x00 byte: a host speaking the framed protocol, not a person.
    nul: bool,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: heapless::Vec::new(),
            after_cr: false,
            nul: false,
        }
    }

    /// The last [`Line::read`] ended at a 0x00 byte, which no terminal sends: the host's protocol client
    /// (`enigma_core::protocol`) asks the board to switch to frames.
    pub fn nul(&self) -> bool {
        self.nul
    }

    /// Reads one line (without its end); bytes past the buffer and invalid UTF-8 are dropped. A 0x00 ends
    /// the line early, empty, and sets [`Line::nul`].
    pub fn read<C: Read + Write>(&mut self, console: &mut C) -> Result<&str, C::Error> {
        self.buf.clear();
        self.nul = false;
        loop {
            let mut b = [0u8; 1];
            if console.read(&mut b)? == 0 {
                break;
            }
            let c = b[0];
            if c == 0 {
                self.buf.clear();
                self.nul = true;
                break;
            }
            let after_cr = core::mem::replace(&mut self.after_cr, c == b'\r');
            if c == b'\n' && after_cr {
                continue;
            }
            if c == b'\r' || c == b'\n' {
                console.write_all(b"\n")?;
                break;
            }
            let echo: &[u8] = if c == 0x08 || c == 0x7f {
                match self.buf.pop() {
                    Some(_) => b"\x08 \x08",
                    None => b"",
                }
            } else if (c >= 0x20 || c == b'\t') && self.buf.push(c).is_ok() {
                &b
            } else {
                b""
            };
            console.write_all(echo)?;
            console.flush()?;
        }
        Ok(self.text())
    }

    /// The last line read (its valid UTF-8 part).
    pub fn text(&self) -> &str {
        match core::str::from_utf8(&self.buf) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// An `embedded-hal-nb` serial port (`serial::Read<u8> + serial::Write<u8>`) as an `embedded-io` console.
pub struct NbSerial<S>(pub S);

/// The serial port failed (overrun, framing, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialError;

impl embedded_io::Error for SerialError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::Other
    }
}

impl<S> ErrorType for NbSerial<S> {
    type Error = SerialError;
}

impl<S: serial::Write<u8>> Write for NbSerial<S> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, SerialError> {
        for &b in buf {
            nb::block!(self.0.write(b)).map_err(|_| SerialError)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), SerialError> {
        nb::block!(self.0.flush()).map_err(|_| SerialError)
    }
}

impl<S: serial::Read<u8>> Read for NbSerial<S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SerialError> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Overruns while the model was busy only lose typed bytes: skip them.
        let b = loop {
            match nb::block!(self.0.read()) {
                Ok(b) => break b,
                Err(_) => continue,
            }
        };
        buf[0] = b;
        Ok(1)
    }
}

/// Writes `\n` as `\r\n`, as serial terminals expect; reads pass through.
pub struct Crlf<C>(pub C);

impl<C: ErrorType> ErrorType for Crlf<C> {
    type Error = C::Error;
}

impl<C: Write> Write for Crlf<C> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, C::Error> {
        for part in buf.split_inclusive(|&b| b == b'\n') {
            match part.strip_suffix(b"\n") {
                Some(text) => {
                    self.0.write_all(text)?;
                    self.0.write_all(b"\r\n")?;
                }
                None => self.0.write_all(part)?,
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), C::Error> {
        self.0.flush()
    }
}

impl<C: Read> Read for Crlf<C> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, C::Error> {
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A console that records what is written, or fails every write after `fail_after` bytes.
    struct Sink {
        bytes: Vec<u8>,
        fail_after: usize,
    }

    impl ErrorType for Sink {
        type Error = SerialError;
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> Result<usize, SerialError> {
            if self.bytes.len() + buf.len() > self.fail_after {
                return Err(SerialError);
            }
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), SerialError> {
            Ok(())
        }
    }

    fn sink() -> Sink {
        Sink {
            bytes: Vec::new(),
            fail_after: usize::MAX,
        }
    }

    #[test]
    fn byte_fallback_pieces_reach_the_console_as_whole_characters() {
        let mut out = sink();
        let mut text = Text::new();
        // "é" and "世" spelled as byte-fallback tokens, as tok512 does for characters it has no piece for.
        for piece in [
            &b"Caf"[..],
            b"\xc3",
            b"\xa9",
            b" ",
            b"\xe4",
            b"\xb8",
            b"\x96",
            b"!",
        ] {
            let before = out.bytes.len();
            text.piece(&mut out, piece).unwrap();
            // Nothing is written while a character is unfinished, so the wire never carries half of one.
            assert!(core::str::from_utf8(&out.bytes).is_ok(), "after {piece:?}");
            if piece == b"\xc3" || piece == b"\xe4" || piece == b"\xb8" {
                assert_eq!(out.bytes.len(), before);
            }
        }
        text.finish(&mut out).unwrap();
        assert_eq!(core::str::from_utf8(&out.bytes), Ok("Café 世!"));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_control_bytes_are_dropped() {
        let mut out = sink();
        let mut text = Text::new();
        // A lead byte the model never finished, a stray continuation byte, a bell, and a character cut off
        // by the end of the text.
        for piece in [
            &b"a"[..],
            b"\xe2",
            b"b",
            b"\x80",
            b"\x07",
            b"\n",
            b"c",
            b"\xf0\x9f",
        ] {
            text.piece(&mut out, piece).unwrap();
        }
        text.finish(&mut out).unwrap();
        assert_eq!(
            core::str::from_utf8(&out.bytes),
            Ok("a\u{FFFD}b\u{FFFD}\nc\u{FFFD}")
        );
    }

    #[test]
    fn a_console_error_is_reported() {
        let mut out = Sink {
            bytes: Vec::new(),
            fail_after: 3,
        };
        let mut text = Text::new();
        assert!(text.piece(&mut out, b"ab").is_ok());
        // One run of text, one write: refused whole by this sink, and nothing after it is written.
        assert_eq!(text.piece(&mut out, b"cd\xff"), Err(SerialError));
        assert_eq!(out.bytes, b"ab");
    }

    /// Typed input: reads from `input`, records what is echoed.
    struct Typed {
        input: std::collections::VecDeque<u8>,
        echo: Sink,
    }

    impl ErrorType for Typed {
        type Error = SerialError;
    }

    impl Read for Typed {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, SerialError> {
            match (buf.first_mut(), self.input.pop_front()) {
                (Some(slot), Some(b)) => {
                    *slot = b;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    impl Write for Typed {
        fn write(&mut self, buf: &[u8]) -> Result<usize, SerialError> {
            self.echo.write(buf)
        }
        fn flush(&mut self) -> Result<(), SerialError> {
            Ok(())
        }
    }

    #[test]
    fn a_nul_byte_ends_the_line_and_asks_for_frames() {
        let mut c = Typed {
            input: b"hello\r\nab\0x\n".iter().copied().collect(),
            echo: sink(),
        };
        let mut line = Line::new();
        assert_eq!(line.read(&mut c).unwrap(), "hello");
        assert!(!line.nul(), "a line ended by CR LF is a person's");
        assert_eq!(
            line.read(&mut c).unwrap(),
            "",
            "what came before the 0x00 is dropped"
        );
        assert!(line.nul());
        assert_eq!(line.read(&mut c).unwrap(), "x");
        assert!(!line.nul(), "the next line starts over");
    }
}
