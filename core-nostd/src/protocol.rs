//! The host↔board protocol: what `enigma chat --port` / `enigma run --port` and the firmware say to each
//! other over a serial line (or QEMU's emulated UART), defined once here so both sides share the types.
//!
//! A frame is `COBS(postcard(message) ++ crc32_le(postcard(message))) ++ 0x00`: COBS leaves no zero byte
//! inside a frame, so the 0x00 delimiter resynchronises a reader after noise or a dropped byte, and the
//! CRC-32 (IEEE) catches a corrupted frame that still decodes. A frame that fails any check is answered with
//! [`Response::Error`] ([`ErrorCode::BadFrame`]) and the board goes on serving.
//!
//! The host sends [`Request`]s; the board answers `Hello` with [`Response::Hello`] and `Generate` with a
//! stream of [`Response::Token`] (the prompt's pieces first, flagged, then each new token's) ended by
//! [`Response::Done`]. A `Stop` sent while tokens stream ends the generation early (`Done` says
//! [`StopReason::Stopped`]).
//!
//! The firmware's console starts as a line-based chat for a person on a terminal; a 0x00 byte (which a
//! terminal never sends) switches it to this protocol, and it answers with a lone 0x00 so the host can drop
//! whatever console text preceded it.

use serde::{Deserialize, Serialize};

/// Changes whenever a message's encoding does; the host refuses a board that says another.
pub const VERSION: u16 = 1;

/// The longest frame either side sends or accepts, delimiter included. A board reads requests into a buffer
/// of this size; a longer frame is answered with [`ErrorCode::BadFrame`].
pub const MAX_FRAME: usize = 320;

/// The longest prompt (in bytes of UTF-8) a `Generate` can carry: it fits [`MAX_FRAME`], and it is the
/// firmware's line length, for which it sizes its token buffer.
pub const MAX_PROMPT: usize = 256;

/// What the host asks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request<'a> {
    /// Who are you: answered with [`Response::Hello`].
    Hello,
    /// Generate text for a prompt.
    #[serde(borrow)]
    Generate(Generate<'a>),
    /// End the generation in progress (ignored, with [`ErrorCode::Idle`], when none is).
    Stop,
}

/// A generation's prompt and settings, as `enigma run`'s flags.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Generate<'a> {
    pub prompt: &'a str,
    /// At most this many new tokens (also bounded by the board's context).
    pub steps: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub seed: u64,
}

/// What the board says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response<'a> {
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// One token's piece (raw bytes: a character may span several byte tokens; the host joins them).
    Token {
        id: u32,
        /// The piece echoes the prompt rather than a generated token.
        prompt: bool,
        piece: &'a [u8],
    },
    /// The generation ended.
    Done(Stats),
    /// A request could not be served; the board is ready for the next one.
    Error { code: ErrorCode, message: &'a str },
}

/// The board and its model.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello<'a> {
    pub version: u16,
    pub board: &'a str,
    pub model: &'a str,
    pub kernels: &'a str,
    pub dim: u32,
    pub n_layers: u32,
    pub vocab_size: u32,
    /// Tokens of context the board's KV cache holds (the model's may be longer).
    pub ctx: u32,
}

/// A finished generation's figures.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub prompt_tokens: u32,
    pub generated: u32,
    pub stop: StopReason,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfText,
    Length,
    ContextFull,
    /// The host sent [`Request::Stop`].
    Stopped,
}

impl From<crate::generate::Stop> for StopReason {
    fn from(s: crate::generate::Stop) -> Self {
        use crate::generate::Stop;
        match s {
            Stop::EndOfText => StopReason::EndOfText,
            Stop::Length => StopReason::Length,
            Stop::ContextFull => StopReason::ContextFull,
            Stop::Callback => StopReason::Stopped,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The bytes before a 0x00 were not a frame (COBS, CRC, length or message encoding).
    BadFrame,
    /// A request that makes no sense now (`Hello` or `Generate` while generating).
    Busy,
    /// `Stop` with no generation in progress.
    Idle,
    /// The generation failed (the prompt does not fit the context, for example).
    Model,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not valid COBS, or shorter than its CRC.
    Cobs,
    /// The CRC does not match the payload.
    Crc,
    /// The payload is not a message of the expected type (or has bytes after it).
    Message,
    /// The message does not fit the buffer it is encoded into.
    TooLong,
}

impl FrameError {
    /// What went wrong, short enough for an error frame.
    pub fn message(self) -> &'static str {
        match self {
            FrameError::Cobs => "not a COBS frame",
            FrameError::Crc => "frame CRC mismatch",
            FrameError::Message => "not a valid message",
            FrameError::TooLong => "message too long for a frame",
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

/// CRC-32 (IEEE) bit by bit: no 1 KiB+ table in a microcontroller's flash; frames and headers are short.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Encodes `msg` as one frame (delimiter included) into `out`, using `scratch` for the payload; returns the
/// frame's length.
pub fn encode<T: Serialize>(
    msg: &T,
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let n = postcard::to_slice(msg, scratch)
        .map_err(|_| FrameError::TooLong)?
        .len();
    let crc = crc32(&scratch[..n]).to_le_bytes();
    let payload = scratch.get_mut(n..n + 4).ok_or(FrameError::TooLong)?;
    payload.copy_from_slice(&crc);
    let mut enc = cobs::CobsEncoder::new(out);
    enc.push(&scratch[..n + 4])
        .map_err(|_| FrameError::TooLong)?;
    let len = enc.finalize();
    *out.get_mut(len).ok_or(FrameError::TooLong)? = 0;
    Ok(len + 1)
}

/// Decodes one frame's bytes (without the 0x00 delimiter) in place into a message that may borrow from them.
pub fn decode<'a, T: Deserialize<'a>>(frame: &'a mut [u8]) -> Result<T, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    let frame: &'a [u8] = frame;
    let body = n.checked_sub(4).ok_or(FrameError::Cobs)?;
    let (payload, crc) = frame[..n].split_at(body);
    if crc32(payload).to_le_bytes() != crc {
        return Err(FrameError::Crc);
    }
    match postcard::take_from_bytes(payload) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::Message),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn roundtrip<'a, T: Serialize + Deserialize<'a> + PartialEq + core::fmt::Debug>(
        msg: &T,
        buf: &'a mut [u8; MAX_FRAME],
    ) {
        let mut scratch = [0u8; MAX_FRAME];
        let mut out = [0u8; MAX_FRAME];
        let len = encode(msg, &mut scratch, &mut out).unwrap();
        assert_eq!(out[len - 1], 0, "a frame ends with its delimiter");
        assert!(!out[..len - 1].contains(&0), "COBS leaves no zero inside");
        buf[..len - 1].copy_from_slice(&out[..len - 1]);
        let back: T = decode(&mut buf[..len - 1]).unwrap();
        assert_eq!(&back, msg);
    }

    #[test]
    fn messages_roundtrip() {
        let prompt = "x".to_string().repeat(MAX_PROMPT);
        let generate = Request::Generate(Generate {
            prompt: &prompt,
            steps: 256,
            temperature: 0.8,
            top_p: 0.9,
            top_k: 40,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: u64::MAX,
        });
        roundtrip(&generate, &mut [0; MAX_FRAME]);
        roundtrip(&Request::Stop, &mut [0; MAX_FRAME]);
        roundtrip(
            &Response::Token {
                id: 300,
                prompt: false,
                piece: &[0, 0xE4, 0],
            },
            &mut [0; MAX_FRAME],
        );
        roundtrip(
            &Response::Done(Stats {
                prompt_tokens: 5,
                generated: 7,
                stop: StopReason::Stopped,
            }),
            &mut [0; MAX_FRAME],
        );
    }

    #[test]
    fn corruption_is_caught() {
        let mut scratch = [0u8; MAX_FRAME];
        let mut out = [0u8; MAX_FRAME];
        let len = encode(&Request::Hello, &mut scratch, &mut out).unwrap();
        let good = out[..len - 1].to_vec();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                if bad[i] == 0 {
                    continue; // a zero would end the frame early: the reader never sees this
                }
                assert!(
                    decode::<Request>(&mut bad).is_err(),
                    "byte {i} bit {bit} flipped was accepted"
                );
            }
        }
        assert_eq!(decode::<Request>(&mut []), Err(FrameError::Cobs));
        assert!(decode::<Request>(&mut b"garbage".to_vec()).is_err());
    }

    #[test]
    fn too_long_is_an_error() {
        let prompt = "x".to_string().repeat(MAX_FRAME);
        let msg = Request::Generate(Generate {
            prompt: &prompt,
            steps: 1,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
        });
        let mut scratch = [0u8; MAX_FRAME];
        let mut out = [0u8; MAX_FRAME];
        assert_eq!(
            encode(&msg, &mut scratch, &mut out),
            Err(FrameError::TooLong)
        );
    }

    #[test]
    fn crc_matches_the_reference() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
