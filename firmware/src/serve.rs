//! The board as a device the host drives: `enigma_core::protocol` frames over the console, after the host's
//! 0x00 (see [`crate::console::Line::nul`]). Requests are read into a fixed buffer; each answer is encoded
//! into two more (payload and frame), so serving costs about 1 KiB of stack and no heap.

use crate::{build, Console, Engine, Error};
use embedded_io::Write;
use enigma_core::protocol::{
    self, ErrorCode, FrameError, Hello, Request, Response, Stats, MAX_FRAME,
};
use enigma_core::SamplerConfig;

/// Bytes received since the last 0x00.
struct Rx {
    buf: [u8; MAX_FRAME],
    len: usize,
    /// More bytes came than a frame may have: the frame is bad, whatever follows until its 0x00.
    overflow: bool,
}

impl Rx {
    const fn new() -> Self {
        Rx {
            buf: [0; MAX_FRAME],
            len: 0,
            overflow: false,
        }
    }

    /// Takes one byte; at a 0x00, the frame it ends (`None` for an empty one, which hosts send to resync).
    fn push(&mut self, b: u8) -> Option<Result<Request<'_>, FrameError>> {
        if b != 0 {
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = b;
                    self.len += 1;
                }
                None => self.overflow = true,
            }
            return None;
        }
        let (len, overflow) = (self.len, self.overflow);
        self.len = 0;
        self.overflow = false;
        if overflow {
            return Some(Err(FrameError::TooLong));
        }
        if len == 0 {
            return None;
        }
        Some(protocol::decode(&mut self.buf[..len]))
    }
}

/// Encodes and writes frames.
struct Tx {
    scratch: [u8; MAX_FRAME],
    frame: [u8; MAX_FRAME],
}

impl Tx {
    fn send<W: Write>(&mut self, out: &mut W, msg: &Response<'_>) -> Result<(), Error> {
        // A piece or message too long for a frame is a bug on this side, not the host's: say so in its place.
        let n = match protocol::encode(msg, &mut self.scratch, &mut self.frame) {
            Ok(n) => n,
            Err(_) => protocol::encode(
                &error(ErrorCode::Model, "answer too long for a frame"),
                &mut self.scratch,
                &mut self.frame,
            )
            .map_err(|_| Error::Console)?,
        };
        out.write_all(&self.frame[..n])
            .map_err(|_| Error::Console)?;
        out.flush().map_err(|_| Error::Console)
    }
}

fn error(code: ErrorCode, message: &str) -> Response<'_> {
    Response::Error { code, message }
}

fn bad_frame(e: FrameError) -> Response<'static> {
    error(ErrorCode::BadFrame, e.message())
}

/// Serves requests until the console fails (the host's end going away is not an end: the next client sends
/// its own 0x00 and hello).
pub(crate) fn serve<C: Console>(engine: &mut Engine, console: &mut C) -> Result<(), Error> {
    crate::info!("serving the framed protocol");
    let mut rx = Rx::new();
    let mut tx = Tx {
        scratch: [0; MAX_FRAME],
        frame: [0; MAX_FRAME],
    };
    // The lone 0x00 ends whatever console text the host read before: its next frame is a real one.
    console.write_all(&[0]).map_err(|_| Error::Console)?;
    loop {
        let mut b = [0u8; 1];
        if console.read(&mut b).map_err(|_| Error::Console)? == 0 {
            continue;
        }
        let request = match rx.push(b[0]) {
            None => continue,
            Some(Err(e)) => {
                tx.send(console, &bad_frame(e))?;
                continue;
            }
            Some(Ok(r)) => r,
        };
        match request {
            Request::Hello => {
                let c = &build::CONFIG;
                let hello = Hello {
                    version: protocol::VERSION,
                    board: option_env!("ENIGMA_BOARD").unwrap_or("unknown"),
                    model: build::MODEL_NAME,
                    kernels: engine.kernels,
                    dim: c.dim,
                    n_layers: c.n_layers,
                    vocab_size: c.vocab_size,
                    ctx: build::CTX,
                };
                tx.send(console, &Response::Hello(hello))?;
            }
            Request::Stop => tx.send(console, &error(ErrorCode::Idle, "nothing to stop"))?,
            Request::Generate(g) => {
                if g.prompt.len() > protocol::MAX_PROMPT {
                    tx.send(console, &error(ErrorCode::Model, "prompt too long"))?;
                    continue;
                }
                // The prompt lives in `rx`, which the stream below reads Stop requests into: copy it out.
                let mut prompt = [0u8; protocol::MAX_PROMPT];
                let prompt = &mut prompt[..g.prompt.len()];
                prompt.copy_from_slice(g.prompt.as_bytes());
                let sampler = SamplerConfig {
                    temperature: g.temperature,
                    top_p: g.top_p,
                    top_k: g.top_k,
                    repetition_penalty: g.repeat_penalty,
                    repeat_last_n: g.repeat_last_n,
                    seed: g.seed,
                };
                let steps = g.steps as usize;
                let prompt = core::str::from_utf8(prompt).unwrap_or("");
                generate(engine, console, &mut rx, &mut tx, prompt, sampler, steps)?;
            }
        }
    }
}

/// One `Generate`: tokens stream out as frames; between tokens, requests that came in are read (a `Stop`
/// ends the generation, anything else is answered `Busy` or `BadFrame`).
fn generate<C: Console>(
    engine: &mut Engine,
    console: &mut C,
    rx: &mut Rx,
    tx: &mut Tx,
    prompt: &str,
    sampler: SamplerConfig,
    steps: usize,
) -> Result<(), Error> {
    let mut failed = None;
    let mut step = |id: u32, echo: bool, piece: &[u8]| -> Result<bool, Error> {
        let token = Response::Token {
            id,
            prompt: echo,
            piece,
        };
        tx.send(console, &token)?;
        let mut go_on = true;
        while console.read_ready().map_err(|_| Error::Console)? {
            let mut b = [0u8; 1];
            if console.read(&mut b).map_err(|_| Error::Console)? == 0 {
                break;
            }
            match rx.push(b[0]) {
                None => {}
                Some(Ok(Request::Stop)) => go_on = false,
                Some(Ok(_)) => tx.send(
                    console,
                    &error(ErrorCode::Busy, "generating; send Stop first"),
                )?,
                Some(Err(e)) => tx.send(console, &bad_frame(e))?,
            }
        }
        Ok(go_on)
    };
    let result = engine.complete(prompt, sampler, steps, &mut |id, echo, piece| match step(
        id, echo, piece,
    ) {
        Ok(go_on) => go_on,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    match result {
        Ok(stats) => {
            let stats = Stats {
                prompt_tokens: stats.prompt_tokens as u32,
                generated: stats.generated as u32,
                stop: stats.stop.into(),
            };
            tx.send(console, &Response::Done(stats))
        }
        Err(e) => {
            crate::warn!("{}", e);
            tx.send(
                console,
                &error(
                    ErrorCode::Model,
                    "the prompt cannot run (too long for the context?)",
                ),
            )
        }
    }
}
