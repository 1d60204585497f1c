//! Console plumbing over `embedded-io`, shared by every board: a line editor for prompts, an adapter from
//! `embedded-hal-nb` serial ports (what most HALs' UARTs implement), and `\n` to `\r\n` for terminals.

use embedded_hal_nb::nb;
use embedded_hal_nb::serial;
use embedded_io::{ErrorType, Read, Write};

/// A prompt being typed: echoes what it reads, handles backspace, ends at CR or LF.
pub struct Line {
    buf: heapless::Vec<u8, { crate::build::LINE_BYTES }>,
    /// The last line ended with CR: a LF right after it belongs to that end (CRLF terminals).
    after_cr: bool,
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
        }
    }

    /// Reads one line (without its end); bytes past the buffer and invalid UTF-8 are dropped.
    pub fn read<C: Read + Write>(&mut self, console: &mut C) -> Result<&str, C::Error> {
        self.buf.clear();
        loop {
            let mut b = [0u8; 1];
            if console.read(&mut b)? == 0 {
                break;
            }
            let c = b[0];
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
        Ok(match core::str::from_utf8(&self.buf) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        })
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
