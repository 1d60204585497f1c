//! Enigma Engine on a microcontroller: the board-independent part of the firmware.
//!
//! - the `.enigma` model, embedded at build time (`ENIGMA_MODEL`), 64-byte aligned in flash, read in place;
//! - the KV cache and activations in static buffers whose sizes `build.rs` computed from the model's config
//!   (the build fails, saying by how much, when they or the model do not fit the board);
//! - [`run`]: the token loop. It generates for the built-in prompt (`ENIGMA_PROMPT`) and/or prompts read
//!   from the console, writing each token's bytes as it comes. The console is anything with
//!   `embedded_io::{Read, Write}`: the QEMU board's UART, a HAL's UART through [`console::NbSerial`].
//!
//! The model code is all in enigma-core; this crate only wires it to buffers and a console. Logging is
//! `defmt`: the board chooses the transport (semihosting under QEMU, RTT on real boards).
#![no_std]

pub mod console;

use core::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use embedded_io::{Read, Write};
use enigma_core::generate::{Session, Stop};
use enigma_core::kernels::{self, Kernels, Tier};
use enigma_core::{EnigmaFile, ProbIndex, Sampler, SamplerConfig, Serial, Tokenizer, Transformer, Weights};

/// `T` placed on a 64-byte boundary (the `.enigma` reader's requirement, so tensors can be viewed in place).
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

/// What `build.rs` computed: the model blob, buffer sizes, prompt and sampler settings.
pub mod build {
    use super::Aligned;
    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}

pub use build::{CTX, KV_LEN, MODEL_LEN, PROMPT, SCRATCH_LEN, STEPS, VOCAB};

/// Why the firmware stopped.
#[derive(Debug)]
pub enum Error {
    /// The model could not be loaded or run.
    Model(enigma_core::Error),
    /// The console failed.
    Console,
    /// [`run`] was called twice (the static buffers are handed out once).
    BuffersTaken,
}

impl From<enigma_core::Error> for Error {
    fn from(e: enigma_core::Error) -> Self {
        Error::Model(e)
    }
}

impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Error::Model(e) => defmt::write!(f, "model: {}", defmt::Debug2Format(e)),
            Error::Console => defmt::write!(f, "console I/O failed"),
            Error::BuffersTaken => defmt::write!(f, "the buffers were already taken"),
        }
    }
}

/// Called once per generated token, after the token is written. The instruction counter
/// (`benches/firmware_insncount.sh`) marks this address; the deltas between calls are instructions per token.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn perf_mark() {
    // A side effect the optimiser must keep, so every call stays a call to this address.
    compiler_fence(Ordering::SeqCst);
}

/// What [`run`] does after the built-in prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Return (the QEMU board exits, which ends the emulator).
    Return,
    /// Read prompts from the console, one a line, until `/quit`.
    Listen,
}

struct Buffers {
    /// (2 * (L, NKV, CTX, HS))
    kv: &'static mut [f32],
    /// (SCRATCH_LEN)
    scratch: &'static mut [f32],
    /// (V)
    probs: &'static mut [ProbIndex],
    /// (TOKENS_LEN)
    tokens: &'static mut [u32],
}

const NO_PROB: ProbIndex = ProbIndex {
    prob: 0.0,
    index: 0,
};
static mut KV: [f32; KV_LEN] = [0.0; KV_LEN];
static mut SCRATCH: [f32; SCRATCH_LEN] = [0.0; SCRATCH_LEN];
static mut PROBS: [ProbIndex; VOCAB] = [NO_PROB; VOCAB];
static mut TOKENS: [u32; build::TOKENS_LEN] = [0; build::TOKENS_LEN];
static TAKEN: AtomicBool = AtomicBool::new(false);

impl Buffers {
    /// The static buffers, once. (Load and store, not swap: Armv6-M has no compare-and-swap; the firmware
    /// has one thread and calls this from `main` only.)
    fn take() -> Option<Buffers> {
        if TAKEN.load(Ordering::Acquire) {
            return None;
        }
        TAKEN.store(true, Ordering::Release);
        // SAFETY: TAKEN guarantees this runs once, so these are the only references to the statics ever made.
        unsafe {
            Some(Buffers {
                kv: &mut *core::ptr::addr_of_mut!(KV),
                scratch: &mut *core::ptr::addr_of_mut!(SCRATCH),
                probs: &mut *core::ptr::addr_of_mut!(PROBS),
                tokens: &mut *core::ptr::addr_of_mut!(TOKENS),
            })
        }
    }
}

fn pick_kernels() -> &'static Kernels {
    if !build::KERNELS.is_empty() {
        if let Some(k) = Tier::from_name(build::KERNELS).and_then(|t| kernels::kernels_for(t).ok()) {
            return k;
        }
        defmt::warn!("kernel tier {=str} is not available; using the default", build::KERNELS);
    }
    kernels::kernels()
}

/// Writes a token's bytes, dropping lone control bytes that would garble a terminal (as `enigma run` does).
fn emit<W: Write>(out: &mut W, piece: &[u8]) -> bool {
    if let [b] = piece {
        if b.is_ascii_control() && !b.is_ascii_whitespace() {
            return true;
        }
    }
    out.write_all(piece).and_then(|_| out.flush()).is_ok()
}

struct Engine {
    session: Session<'static, 'static>,
    tokenizer: Tokenizer<'static>,
    tokens: &'static mut [u32],
    prompts: u64,
}

impl Engine {
    fn boot() -> Result<Engine, Error> {
        let file = EnigmaFile::parse(&build::MODEL.0)?;
        file.verify_checksum()?;
        let mut config = *file.config();
        config.seq_len = CTX;
        let kernels = pick_kernels();
        let model = Transformer::new(config, Weights::from_file(&file)?, kernels)?;
        let tokenizer = Tokenizer::from_file(&file)?;
        let bufs = Buffers::take().ok_or(Error::BuffersTaken)?;
        let session = Session::new(model, bufs.kv, bufs.scratch, 1, bufs.probs)?;
        defmt::info!(
            "model {=str}: {=usize} bytes in flash at {=usize:#x}; dim {=u32} layers {=u32} vocab {=u32}; {=u32} of {=u32} tokens of context",
            build::MODEL_NAME,
            MODEL_LEN,
            build::MODEL.0.as_ptr() as usize,
            config.dim,
            config.n_layers,
            config.vocab_size,
            CTX,
            file.config().seq_len
        );
        defmt::info!(
            "buffers: {=usize} bytes of RAM (KV cache {=usize}); kernels {=str}",
            build::BUFFER_BYTES,
            KV_LEN * 4,
            kernels.tier.name()
        );
        Ok(Engine {
            session,
            tokenizer,
            tokens: bufs.tokens,
            prompts: 0,
        })
    }

    /// Generates for `prompt`, streaming the prompt then each new token to `out`, then a newline: the same
    /// bytes `enigma run` prints.
    fn generate<W: Write>(&mut self, out: &mut W, prompt: &str) -> Result<(), Error> {
        self.session.reset();
        let n = self.tokenizer.encode(prompt, true, false, self.tokens)?;
        let ids = &self.tokens[..n];
        // Each prompt gets its own sampler, seeded like `enigma run --seed S` for the first.
        let mut sampler = Sampler::new(SamplerConfig {
            seed: build::SAMPLER.seed.wrapping_add(self.prompts),
            ..build::SAMPLER
        });
        self.prompts += 1;
        let echoed = n.saturating_sub(1);
        let mut calls = 0usize;
        let mut io_ok = true;
        defmt::info!("prompt: {=usize} tokens; generating up to {=usize}", n, STEPS);
        let stats = self.session.generate(
            &Serial,
            &self.tokenizer,
            &mut sampler,
            ids,
            STEPS,
            true,
            &mut |_, piece| {
                calls += 1;
                io_ok = emit(out, piece);
                if calls > echoed {
                    perf_mark();
                }
                io_ok
            },
        )?;
        if !io_ok {
            return Err(Error::Console);
        }
        out.write_all(b"\n").map_err(|_| Error::Console)?;
        out.flush().map_err(|_| Error::Console)?;
        defmt::info!(
            "done: {=usize} prompt tokens, {=usize} generated, stop: {=str}",
            stats.prompt_tokens,
            stats.generated,
            match stats.stop {
                Stop::EndOfText => "end of text",
                Stop::Length => "length",
                Stop::ContextFull => "context full",
                Stop::Callback => "console",
            }
        );
        Ok(())
    }
}

/// Boots the model and generates: first for the built-in prompt (when there is one), then, with
/// [`Then::Listen`], for each line read from `console` until `/quit`.
pub fn run<C: Read + Write>(console: &mut C, then: Then) -> Result<(), Error> {
    let mut engine = Engine::boot()?;
    if cfg!(enigma_test_panic) {
        panic!("ENIGMA_FIRMWARE_TEST_PANIC: panicking on purpose after boot");
    }
    if !PROMPT.is_empty() {
        engine.generate(console, PROMPT)?;
    }
    if then == Then::Return {
        return Ok(());
    }
    let mut line = console::Line::new();
    loop {
        console.write_all(b"> ").map_err(|_| Error::Console)?;
        console.flush().map_err(|_| Error::Console)?;
        let text = line.read(console).map_err(|_| Error::Console)?;
        match text.trim() {
            "" => continue,
            "/quit" => return Ok(()),
            t => {
                if let Err(e) = engine.generate(console, t) {
                    // A prompt too long for the context is the user's to fix; report it and go on.
                    defmt::warn!("{}", e);
                    let _ = console.write_all(b"\nerror: that prompt cannot run (too long?)\n");
                }
            }
        }
    }
}
