//! `enigma run --port PATH` and `enigma chat --port PATH`: a board running the firmware generates, driven
//! over its serial line with `enigma_core::protocol` frames. PATH is a serial device (`/dev/ttyACM0`, set to
//! raw 115200 8N1) or a unix socket (QEMU's `-serial unix:PATH,server=on`, as `enigma flash --serve` boots
//! the emulated board).

use crate::generate::{next_input, ChatArgs, Input, Printer, RunArgs, SamplingArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_core::protocol::{self, ErrorCode, Generate, Request, Response, Stats, MAX_FRAME};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Args, Debug, Clone, Default)]
pub struct PortArgs {
    /// Generate on a board running the Enigma firmware, over its serial port (a device such as
    /// /dev/ttyACM0, or the unix socket of QEMU's emulated UART) instead of in this process.
    #[arg(long, value_name = "PATH", conflicts_with = "remote")]
    pub port: Option<PathBuf>,
    /// Seconds to wait for each answer from the board before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, requires = "port")]
    pub port_timeout: u64,
}

/// The board's `Hello`, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardInfo {
    pub board: String,
    pub model: String,
    pub kernels: String,
    pub dim: u32,
    pub n_layers: u32,
    pub vocab_size: u32,
    pub ctx: u32,
}

/// One frame from the board, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Hello(BoardInfo),
    Token {
        id: u32,
        prompt: bool,
        piece: Vec<u8>,
    },
    Done(Stats),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Bytes that were not a frame (console text from before the switch, or line noise).
    Garbage(Vec<u8>),
}

impl Reply {
    fn decode(mut frame: Vec<u8>) -> Reply {
        let copy = frame.clone();
        match protocol::decode::<Response>(&mut frame) {
            Ok(Response::Hello(h)) if h.version == protocol::VERSION => Reply::Hello(BoardInfo {
                board: h.board.into(),
                model: h.model.into(),
                kernels: h.kernels.into(),
                dim: h.dim,
                n_layers: h.n_layers,
                vocab_size: h.vocab_size,
                ctx: h.ctx,
            }),
            Ok(Response::Hello(h)) => Reply::Error {
                code: ErrorCode::BadFrame,
                message: format!(
                    "the board speaks protocol version {}; this enigma speaks {}",
                    h.version,
                    protocol::VERSION
                ),
            },
            Ok(Response::Token { id, prompt, piece }) => Reply::Token {
                id,
                prompt,
                piece: piece.to_vec(),
            },
            Ok(Response::Done(s)) => Reply::Done(s),
            Ok(Response::Error { code, message }) => Reply::Error {
                code,
                message: message.into(),
            },
            Err(_) => Reply::Garbage(copy),
        }
    }
}

/// A connection to a board.
pub struct Board {
    out: Box<dyn Write + Send>,
    frames: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    timeout: Duration,
    pub info: BoardInfo,
}

impl Board {
    /// Opens PATH, switches the board's console to frames and reads its `Hello`.
    pub fn open(path: &Path, timeout: Duration) -> Result<Board> {
        let (input, out) = connect(path)?;
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || read_frames(input, tx));
        let mut board = Board {
            out,
            frames,
            timeout,
            info: BoardInfo {
                board: String::new(),
                model: String::new(),
                kernels: String::new(),
                dim: 0,
                n_layers: 0,
                vocab_size: 0,
                ctx: 0,
            },
        };
        // 0x00 switches a console still in line mode to frames (and is an empty frame to one already
        // serving); Stop ends a generation a previous client left running; then Hello. Whatever comes
        // before the Hello answer (console text, that generation's tail, Stop's `Idle`) is dropped.
        board.write_raw(&[0])?;
        board.send(&Request::Stop)?;
        board.send(&Request::Hello)?;
        loop {
            match board.recv()? {
                Reply::Hello(info) => {
                    board.info = info;
                    return Ok(board);
                }
                Reply::Error {
                    code: ErrorCode::BadFrame,
                    message,
                } if message.contains("protocol version") => bail!("{}: {message}", path.display()),
                _ => continue,
            }
        }
    }

    /// Writes bytes as they are (a test sends a malformed frame with it).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .context("cannot write to the board's port")
    }

    pub fn send(&mut self, request: &Request<'_>) -> Result<()> {
        let mut scratch = [0u8; MAX_FRAME];
        let mut frame = [0u8; MAX_FRAME];
        let n = protocol::encode(request, &mut scratch, &mut frame)
            .map_err(|e| anyhow::anyhow!("cannot frame the request: {e}"))?;
        self.write_raw(&frame[..n])
    }

    /// The next frame from the board.
    pub fn recv(&mut self) -> Result<Reply> {
        match self.frames.recv_timeout(self.timeout) {
            Ok(Ok(frame)) => Ok(Reply::decode(frame)),
            Ok(Err(e)) => Err(e).context("cannot read from the board's port"),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "the board said nothing for {} s (is the firmware running, built with the protocol?)",
                self.timeout.as_secs()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the board's port closed")
            }
        }
    }

    /// Runs one generation, calling `on_piece(id, echoes_prompt, piece)` per token; when it returns
    /// `false` the board is told to stop (the tokens it sent meanwhile are dropped).
    pub fn generate(
        &mut self,
        request: &Generate<'_>,
        on_piece: &mut dyn FnMut(u32, bool, &[u8]) -> bool,
    ) -> Result<Stats> {
        if request.prompt.len() > protocol::MAX_PROMPT {
            bail!(
                "the prompt is {} bytes; a board takes at most {}",
                request.prompt.len(),
                protocol::MAX_PROMPT
            );
        }
        self.send(&Request::Generate(request.clone()))?;
        let mut stopping = false;
        loop {
            match self.recv()? {
                Reply::Token { id, prompt, piece } => {
                    if !stopping && !on_piece(id, prompt, &piece) {
                        self.send(&Request::Stop)?;
                        stopping = true;
                    }
                }
                Reply::Done(stats) => return Ok(stats),
                Reply::Error { code, message } => bail!("the board: {message} ({code:?})"),
                Reply::Hello(_) | Reply::Garbage(_) => {
                    bail!("the board sent an unexpected frame while generating")
                }
            }
        }
    }
}

/// Splits what the board sends into frames at each 0x00, for [`Board::recv`].
fn read_frames(mut input: Box<dyn Read + Send>, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut frame = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for &b in &buf[..n] {
            if b != 0 {
                // Past any real frame's length it is noise; keep the tail only.
                if frame.len() < 4 * MAX_FRAME {
                    frame.push(b);
                }
            } else if !frame.is_empty() && tx.send(Ok(std::mem::take(&mut frame))).is_err() {
                return;
            }
        }
    }
}

type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn connect(path: &Path) -> Result<Halves> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("no port at {}", path.display()))?;
        if meta.file_type().is_socket() {
            let s = std::os::unix::net::UnixStream::connect(path)
                .with_context(|| format!("cannot connect to the socket {}", path.display()))?;
            let r = s.try_clone()?;
            return Ok((Box::new(r), Box::new(s)));
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the port {}", path.display()))?;
    #[cfg(unix)]
    raw_tty(&f).with_context(|| format!("cannot set up the serial port {}", path.display()))?;
    let r = f.try_clone()?;
    Ok((Box::new(r), Box::new(f)))
}

/// A serial device as the firmware's UART is set: 115200 baud, 8N1, raw (no echo, no line editing, no
/// CR/LF translation: frames are binary).
#[cfg(unix)]
fn raw_tty(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: isatty reads no memory of ours.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(()); // a FIFO or a plain file (tests): nothing to set
    }
    // SAFETY: termios is plain data that tcgetattr fills; fd is open for the call's duration.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        if libc::cfsetspeed(&mut t, libc::B115200) != 0
            || libc::tcsetattr(fd, libc::TCSANOW, &t) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn request<'a>(
    prompt: &'a str,
    steps: Option<usize>,
    sampling: &SamplingArgs,
    turn: u64,
) -> Result<Generate<'a>> {
    let cfg = sampling.config()?;
    Ok(Generate {
        prompt,
        // The board stops at its context in any case.
        steps: steps.map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: cfg.top_k,
        repeat_penalty: cfg.repetition_penalty,
        repeat_last_n: cfg.repeat_last_n,
        // Each chat turn gets its own seed, as the firmware's own console seeds its prompts.
        seed: cfg.seed.wrapping_add(turn),
    })
}

fn timeout(args: &PortArgs) -> Duration {
    Duration::from_secs(args.port_timeout.max(1))
}

/// `enigma run --port`: the prompt's text, then the generated text, as `enigma run` prints it.
pub fn run(args: &RunArgs, port: &Path) -> Result<()> {
    let prompt = args.prompt_text()?;
    let steps = args.length.predict()?;
    let mut board = Board::open(port, timeout(&args.port))?;
    let g = request(&prompt, steps, &args.sampling, 0)?;
    let stdout = std::io::stdout();
    let mut printer = Printer::new(stdout.lock());
    let stats = board.generate(&g, &mut |_, _, piece| printer.piece(piece))?;
    printer.finish();
    eprintln!(
        "[{}: {} prompt tokens, {} generated, stop: {:?}]",
        board.info.board, stats.prompt_tokens, stats.generated, stats.stop
    );
    Ok(())
}

/// `enigma chat --port`: each line typed is a prompt the board continues (the firmware has no chat
/// template: a nano model is a completion model).
pub fn chat(args: &ChatArgs, port: &Path) -> Result<()> {
    anyhow::ensure!(
        !args.memory && args.system.is_none(),
        "--memory and --system need a local model, not --port"
    );
    let steps = args.length.predict()?;
    let mut board = Board::open(port, timeout(&args.port))?;
    let i = &board.info;
    eprintln!(
        "chatting with {} on {} over {} ({} tokens of context, kernels {}): each line is continued as text; /help lists commands",
        i.model,
        i.board,
        port.display(),
        i.ctx,
        i.kernels
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn = 0u64;
    loop {
        match next_input(&mut lines)? {
            Input::Quit => return Ok(()),
            // Every turn starts from an empty context on the board.
            Input::Reset => continue,
            Input::Text(text) => {
                let g = request(&text, steps, &args.sampling, turn)?;
                turn += 1;
                let stdout = std::io::stdout();
                let mut printer = Printer::new(stdout.lock());
                // The prompt was typed: only the continuation is printed.
                board.generate(&g, &mut |_, echo, piece| echo || printer.piece(piece))?;
                printer.finish();
            }
        }
    }
}
