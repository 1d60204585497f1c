//! Server-sent events (the WHATWG `text/event-stream` format) as OpenAI-compatible servers stream replies:
//! `data:` lines, a blank line ending each event, `:` comments as keep-alives.
//!
//! Bytes are fed as they arrive, so a line, a CRLF pair or a UTF-8 character may be split between two
//! reads; nothing is decoded until its line is whole.

/// One dispatched event: its `event:` name (empty when none was given) and its `data:` lines joined by
/// `\n`, as the format specifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// An incremental parser: [`SseParser::feed`] the bytes of a response body as they are read.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// A CR ended the last line: an LF first in the next read belongs to it, not to an empty line.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

/// Longest line kept: a server that never ends a line cannot make the client hold unbounded memory.
const MAX_LINE: usize = 16 << 20;

/// Why a stream could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseError {
    LineTooLong,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Parses `bytes`, returning the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ if self.line.len() >= MAX_LINE => return Err(SseError::LineTooLong),
                _ => self.line.push(b),
            }
        }
        Ok(events)
    }

    /// The end of the body. The format drops an event that no blank line ended; an OpenAI stream's last
    /// event is `[DONE]`, and a server that closes right after its `data:` line still meant it, so a
    /// pending event is returned rather than lost.
    pub fn finish(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.line);
        let from_line = if line.is_empty() {
            None
        } else {
            self.line_done(&line)
        };
        from_line.or_else(|| self.dispatch())
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => self.push_data(&value),
            b"event" => self.event = value.into_owned(),
            // llama.cpp's server reports a failure inside a stream as an `error:` line, a field the
            // format does not have; keep it as an `error` event so the caller can say what went wrong.
            b"error" => {
                self.event = "error".to_string();
                self.push_data(&value);
            }
            // `id:`, `retry:` and unknown fields: nothing a reply stream needs.
            _ => {}
        }
        None
    }

    fn push_data(&mut self, value: &str) {
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(value);
        self.has_data = true;
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(Event {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    fn all(bytes: &[u8]) -> Vec<Event> {
        let mut p = SseParser::new();
        let mut events = p.feed(bytes).unwrap();
        events.extend(p.finish());
        events
    }

    #[test]
    fn each_blank_line_ends_an_event() {
        let events = all(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(data(&events), ["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn data_lines_of_one_event_are_joined_by_newlines() {
        let events = all(b"data: first\ndata:second\ndata\ndata:  indented\n\n");
        assert_eq!(data(&events), ["first\nsecond\n\n indented"]);
    }

    #[test]
    fn comments_and_other_fields_are_not_data() {
        let events = all(b": keep-alive\n\nid: 7\nretry: 100\nevent: message\ndata: x\n\n:\n\n");
        assert_eq!(
            events,
            [Event {
                event: "message".into(),
                data: "x".into()
            }]
        );
    }

    #[test]
    fn crlf_and_lone_cr_end_lines_too() {
        let events = all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n");
        assert_eq!(data(&events), ["a", "b", "c"]);
    }

    #[test]
    fn a_stream_split_anywhere_parses_the_same() {
        let whole = "data: {\"t\":\"caf\u{e9}\"}\r\n\r\n: ping\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\r\n\r\n";
        let expected = all(whole.as_bytes());
        assert_eq!(data(&expected), ["{\"t\":\"caf\u{e9}\"}", "x\ny", "[DONE]"]);
        let bytes = whole.as_bytes();
        // Every split into two reads, and one byte at a time: CRLF pairs, the two bytes of "é" and the
        // "data:" prefix are all cut somewhere.
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut events = p.feed(&bytes[..cut]).unwrap();
            events.extend(p.feed(&bytes[cut..]).unwrap());
            events.extend(p.finish());
            assert_eq!(events, expected, "split at {cut}");
        }
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in bytes {
            events.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        events.extend(p.finish());
        assert_eq!(events, expected);
    }

    #[test]
    fn an_event_without_its_blank_line_is_kept_at_the_end() {
        assert_eq!(data(&all(b"data: [DONE]")), ["[DONE]"]);
        assert_eq!(data(&all(b"data: [DONE]\n")), ["[DONE]"]);
        assert!(all(b": only a comment").is_empty());
    }

    #[test]
    fn llama_cpp_error_lines_become_error_events() {
        let events = all(b"error: {\"message\":\"boom\"}\n\n");
        assert_eq!(events[0].event, "error");
        assert_eq!(events[0].data, "{\"message\":\"boom\"}");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(data(&all(b"data: \xFFx\n\n")), ["\u{FFFD}x"]);
    }
}
