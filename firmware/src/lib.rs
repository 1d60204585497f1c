//! Enigma Engine on a microcontroller: the board-independent part of the firmware.
//!
//! - the `.enigma` model, embedded at build time (`ENIGMA_MODEL`), 64-byte aligned in flash, read in place;
//! - the KV cache and activations in static buffers whose sizes `build.rs` computed from the model's config
//!   (the build fails, saying by how much, when they or the model do not fit the board);
//! - [`run`]: the token loop. It generates for the built-in prompt (`ENIGMA_PROMPT`) and/or prompts read
//!   from the console, writing each token's text as it comes, as valid UTF-8 ([`console::Text`]). The
//!   console is anything with `embedded_io::{Read, Write}`: the QEMU board's UART, a HAL's UART through
//!   [`console::NbSerial`].
//!
//! The model code is all in enigma-core; this crate only wires it to buffers and a console. Logging goes
//! through [`fmt`]: `defmt` with the `defmt` feature (the board chooses the transport: a second UART under
//! QEMU, RTT on real boards), else text lines to a sink the board sets (its UART), or nowhere.
#![no_std]

pub mod console;
pub mod fmt;
#[cfg(feature = "defmt")]
#[doc(hidden)]
pub use defmt as __defmt;
#[cfg(feature = "protocol")]
mod serve;

use core::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use embedded_io::{Read, Write};
use enigma_core::generate::{Session, Stop};
use enigma_core::kernels::{self, DType, Kernels, Tier, WeightView};
use enigma_core::{
    Config, ProbIndex, Sampler, SamplerConfig, Serial, Tokenizer, Transformer, Weights,
};

/// `T` placed on a 64-byte boundary (the `.enigma` reader's requirement, so tensors can be viewed in place).
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

/// What `build.rs` computed: the model blob, where its tensors lie, buffer sizes, prompt and sampler settings.
pub mod build {
    use super::Aligned;

    /// A tensor of the model: its dtype code, its bytes' place in [`MODEL`], and its matrix shape.
    pub struct Tensor {
        pub dtype: u8,
        pub offset: usize,
        pub len: usize,
        pub rows: usize,
        pub cols: usize,
    }

    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}

pub use build::{CTX, KV_LEN, MODEL_LEN, PROMPT, SCRATCH_LEN, STEPS, VOCAB};

/// Why the firmware stopped.
#[derive(Debug)]
pub enum Error {
    /// The model could not be loaded or run.
    Model(enigma_core::Error),
    /// The model in flash is not the one the build described (its header or a tensor disagrees).
    Layout,
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

impl Error {
    /// The text of every error but the core's (which needs `core::fmt`).
    fn describe(&self) -> &'static str {
        match self {
            Error::Model(_) => "model error (the `messages` feature has the text)",
            Error::Layout => "the model in flash is not the one this image was built for",
            Error::Console => "console I/O failed",
            Error::BuffersTaken => "the buffers were already taken",
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            // The core's messages need core::fmt (several KiB of flash): only boards that can spare it turn
            // them on. The build script already ran the same checks on the host, so these are rare.
            #[cfg(feature = "messages")]
            Error::Model(e) => defmt::write!(f, "model: {}", defmt::Display2Format(e)),
            e => defmt::write!(f, "{=str}", e.describe()),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            #[cfg(feature = "messages")]
            Error::Model(e) => write!(f, "model: {e}"),
            e => f.write_str(e.describe()),
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

/// Measures the stack's high-water mark: [`stack::paint`] fills the free stack with a pattern at boot,
/// [`stack::used`] finds how deep it was overwritten. The figures go to the log, so CI sees how much of the
/// reserve `build.rs` keeps for the stack (`ENIGMA_STACK_RESERVE`) a run really needs.
pub mod stack {
    const PAINT: u32 = 0x5AC3_5AC3;

    extern "C" {
        // cortex-m-rt's linker script: the stack grows down from `_stack_start` to `_stack_end`.
        static _stack_start: u32;
        static _stack_end: u32;
    }

    fn bounds() -> (usize, usize) {
        // Only the symbols' addresses are taken; nothing is read through them.
        (
            core::ptr::addr_of!(_stack_end) as usize,
            core::ptr::addr_of!(_stack_start) as usize,
        )
    }

    /// Bytes between the lowest and the highest address of the stack region.
    pub fn size() -> usize {
        let (lo, hi) = bounds();
        hi - lo
    }

    /// Only this much of the stack's top is painted and measured: a run needs a few KiB, and painting a
    /// whole 4 MiB region would cost millions of instructions at boot.
    const WATCHED: usize = 64 * 1024;

    fn watched() -> (usize, usize) {
        let (lo, hi) = bounds();
        (lo.max(hi.saturating_sub(WATCHED)), hi)
    }

    /// Fills the watched stack below the caller's frame (with a 256-byte margin) with the pattern.
    #[inline(never)]
    pub fn paint() {
        let here = 0u32;
        let sp = core::ptr::addr_of!(here) as usize;
        let (lo, _) = watched();
        let mut p = lo;
        while p + 256 < sp {
            // SAFETY: [lo, sp - 256) is stack no frame is using (the stack grows down to `lo` and the
            // current frame sits above sp - 256); the writes are aligned words.
            unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
            p += 4;
        }
    }

    /// The most bytes of stack used since [`paint`] (at most the watched 64 KiB).
    pub fn used() -> usize {
        let (lo, hi) = watched();
        let mut p = lo;
        // SAFETY: reads of aligned words inside the stack region, below the current frame.
        while p < hi && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
            p += 4;
        }
        hi - p
    }
}

/// What a board's console must do: read and write bytes, and (with the `protocol` feature, so a `Stop` can
/// arrive while tokens stream) say without blocking whether a byte is waiting.
#[cfg(feature = "protocol")]
pub trait Console: Read + Write + embedded_io::ReadReady {}
#[cfg(feature = "protocol")]
impl<C: Read + Write + embedded_io::ReadReady> Console for C {}
#[cfg(not(feature = "protocol"))]
pub trait Console: Read + Write {}
#[cfg(not(feature = "protocol"))]
impl<C: Read + Write> Console for C {}

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

/// The bytes of tensor `t` in flash.
fn bytes(t: &build::Tensor) -> &'static [u8] {
    &build::MODEL.0[t.offset..t.offset + t.len]
}

/// Tensor `t` viewed as `T`s in place.
fn cast<T: bytemuck::Pod>(t: &build::Tensor) -> Result<&'static [T], Error> {
    bytemuck::try_cast_slice(bytes(t)).map_err(|_| Error::Layout)
}

fn view(t: &build::Tensor) -> Result<WeightView<'static>, Error> {
    let dtype = DType::from_code(t.dtype).ok_or(Error::Layout)?;
    WeightView::from_bytes(dtype, bytes(t), t.rows, t.cols).map_err(|_| Error::Layout)
}

/// The model's parameters, viewed in flash where the build found them, put together by the core's own
/// `Weights::assemble` (the core's `Weights::from_file` did the same checks on the host, in build.rs).
fn weights(config: &Config) -> Result<Weights<'static>, Error> {
    let param = |name: &'static str| {
        build::PARAMS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t)
            .ok_or(enigma_core::Error::MissingTensor { name })
    };
    let missing = |name| move |_| enigma_core::Error::MissingTensor { name };
    // Any failure means flash does not hold what build.rs described.
    Weights::assemble(
        config,
        |n| view(param(n)?).map_err(missing(n)),
        |n| cast(param(n)?).map_err(missing(n)),
    )
    .map_err(|_| Error::Layout)
}

/// Checks that flash holds the file the build read: magic, and the header's CRC as stored and as computed.
/// (The tensor data was checked against its CRC on the host; the flasher verifies what it writes.)
fn check_header() -> Result<(), Error> {
    let m = &build::MODEL.0;
    let stored = u32::from_le_bytes([m[12], m[13], m[14], m[15]]);
    if m[..4] != *b"ENGM"
        || stored != build::HEADER_CRC
        || enigma_core::protocol::crc32(&m[16..build::HEADER_LEN]) != stored
    {
        return Err(Error::Layout);
    }
    Ok(())
}

fn pick_kernels() -> &'static Kernels {
    if !build::KERNELS.is_empty() {
        if let Some(k) = Tier::from_name(build::KERNELS).and_then(|t| kernels::kernels_for(t).ok())
        {
            return k;
        }
        crate::warn!(
            "kernel tier {} is not available; using the default",
            build::KERNELS
        );
    }
    kernels::kernels()
}

struct Engine {
    session: Session<'static, 'static>,
    tokenizer: Tokenizer<'static>,
    tokens: &'static mut [u32],
    prompts: u64,
    kernels: &'static str,
}

impl Engine {
    // Not inlined: parsing the header takes a few KiB of stack that generation then gets back.
    #[inline(never)]
    fn boot() -> Result<Engine, Error> {
        check_header()?;
        let mut config = build::CONFIG;
        config.seq_len = CTX;
        let kernels = pick_kernels();
        let model = Transformer::new(config, weights(&config)?, kernels)?;
        let tokenizer = Tokenizer::new(
            build::TOKENIZER,
            bytes(&build::T_TOK_PIECES),
            cast(&build::T_TOK_OFFSETS)?,
            cast(&build::T_TOK_SCORES)?,
            cast(&build::T_TOK_SORTED)?,
        )?;
        let bufs = Buffers::take().ok_or(Error::BuffersTaken)?;
        let session = Session::new(model, bufs.kv, bufs.scratch, 1, bufs.probs)?;
        crate::info!(
            "model {}: {} bytes in flash at {:#x}; dim {} layers {} vocab {}; {} of {} tokens of context",
            build::MODEL_NAME,
            MODEL_LEN,
            build::MODEL.0.as_ptr() as usize,
            config.dim,
            config.n_layers,
            config.vocab_size,
            CTX,
            build::CONFIG.seq_len
        );
        crate::info!(
            "buffers: {} bytes of RAM (KV cache {}); kernels {}",
            build::BUFFER_BYTES,
            KV_LEN * 4,
            kernels.tier.name()
        );
        Ok(Engine {
            session,
            tokenizer,
            tokens: bufs.tokens,
            prompts: 0,
            kernels: kernels.tier.name(),
        })
    }

    /// Generates up to `steps` tokens for `prompt` with `sampler`, calling `on_piece(id, echoes_prompt,
    /// piece)` for each prompt piece then each new token (after which `perf_mark` runs); `false` from it
    /// stops the generation.
    #[inline(never)]
    fn complete(
        &mut self,
        prompt: &str,
        sampler: SamplerConfig,
        steps: usize,
        on_piece: &mut dyn FnMut(u32, bool, &[u8]) -> bool,
    ) -> Result<enigma_core::generate::Stats, Error> {
        self.session.reset();
        let n = self.tokenizer.encode(prompt, true, false, self.tokens)?;
        let ids = &self.tokens[..n];
        let mut sampler = Sampler::new(sampler);
        let echoed = n.saturating_sub(1);
        let mut calls = 0usize;
        crate::info!("prompt: {} tokens; generating up to {}", n, steps);
        let stats = self.session.generate(
            &Serial,
            &self.tokenizer,
            &mut sampler,
            ids,
            steps,
            true,
            &mut |id, piece| {
                calls += 1;
                let go_on = on_piece(id, calls <= echoed, piece);
                if calls > echoed {
                    perf_mark();
                }
                go_on
            },
        )?;
        crate::info!(
            "done: {} prompt tokens, {} generated, stop: {}",
            stats.prompt_tokens,
            stats.generated,
            match stats.stop {
                Stop::EndOfText => "end of text",
                Stop::Length => "length",
                Stop::ContextFull => "context full",
                Stop::Callback => "console",
            }
        );
        Ok(stats)
    }

    /// Generates for `prompt` with the built-in settings, streaming the prompt then each new token to `out`
    /// as valid UTF-8 ([`console::Text`]), then a newline: the same text `enigma run` prints.
    fn generate<W: Write>(&mut self, out: &mut W, prompt: &str) -> Result<(), Error> {
        // Each prompt gets its own sampler, seeded like `enigma run --seed S` for the first.
        let sampler = SamplerConfig {
            seed: build::SAMPLER.seed.wrapping_add(self.prompts),
            ..build::SAMPLER
        };
        self.prompts += 1;
        let mut io_ok = true;
        let mut text = console::Text::new();
        self.complete(prompt, sampler, STEPS, &mut |_, _, piece| {
            io_ok = text.piece(out, piece).is_ok();
            io_ok
        })?;
        if !io_ok {
            return Err(Error::Console);
        }
        text.finish(out).map_err(|_| Error::Console)?;
        out.write_all(b"\n").map_err(|_| Error::Console)?;
        out.flush().map_err(|_| Error::Console)?;
        Ok(())
    }
}

/// Boots the model and generates: first for the built-in prompt (when there is one), then, with
/// [`Then::Listen`], for each line read from `console` until `/quit`.
pub fn run<C: Console>(console: &mut C, then: Then) -> Result<(), Error> {
    stack::paint();
    let mut engine = Engine::boot()?;
    let boot_stack = stack::used();
    stack::paint();
    if cfg!(enigma_test_panic) {
        panic!("ENIGMA_FIRMWARE_TEST_PANIC: panicking on purpose after boot");
    }
    if !PROMPT.is_empty() {
        engine.generate(console, PROMPT)?;
        crate::info!(
            "stack: {} bytes at most at boot, {} while generating; build.rs keeps {} for it, the region has {}",
            boot_stack,
            stack::used(),
            build::STACK_RESERVE,
            stack::size()
        );
    }
    if then == Then::Return {
        return Ok(());
    }
    let mut line = console::Line::new();
    loop {
        console.write_all(b"> ").map_err(|_| Error::Console)?;
        console.flush().map_err(|_| Error::Console)?;
        line.read(console).map_err(|_| Error::Console)?;
        if line.nul() {
            // A host's protocol client: serve frames from now on (boards built without the protocol ignore it).
            #[cfg(feature = "protocol")]
            return serve::serve(&mut engine, console);
            #[cfg(not(feature = "protocol"))]
            continue;
        }
        match line.text().trim() {
            "" => continue,
            "/quit" => return Ok(()),
            t => {
                if let Err(e) = engine.generate(console, t) {
                    // A prompt too long for the context is the user's to fix; report it and go on.
                    crate::warn!("{}", e);
                    let _ = console.write_all(b"\nerror: that prompt cannot run (too long?)\n");
                }
            }
        }
    }
}
