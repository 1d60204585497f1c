//! Embeds the model and sizes every RAM buffer at build time.
//!
//! Reads the `.enigma` file named by `ENIGMA_MODEL`, validates it with enigma-core (the same reader the
//! firmware runs), picks the context length, computes the KV cache and activation buffers from the config,
//! checks that the model fits the board's flash and the buffers its RAM (the board's `memory.x`, named by
//! `ENIGMA_MEMORY_X`, which each board's `.cargo/config.toml` sets), and writes `$OUT_DIR/model.rs`:
//! the aligned model blob (`include_bytes!`, so it stays in flash), the buffer sizes and the prompt settings.
//!
//! Settings (environment variables; `enigma flash` sets them from its options):
//! - `ENIGMA_MODEL` (required): the `.enigma` file.
//! - `ENIGMA_CTX`: context length in tokens; default the model's `seq_len`, or the longest that fits RAM.
//! - `ENIGMA_PROMPT`: a prompt the firmware runs at boot ("" = none: it waits for one on the console).
//! - `ENIGMA_STEPS` (64), `ENIGMA_TEMPERATURE` (0 = greedy), `ENIGMA_TOP_P` (0.9), `ENIGMA_TOP_K` (0),
//!   `ENIGMA_REPEAT_PENALTY` (1), `ENIGMA_REPEAT_LAST_N` (64), `ENIGMA_SEED` (42): generation.
//! - `ENIGMA_KERNELS`: a kernel tier by name (default: the best the target has).
//! - `ENIGMA_STACK_RESERVE` (12288): bytes of RAM kept for the stack and the board's own statics. A run
//!   takes about 5 KiB on the M4 (the quantized matvec keeps 2 KiB on it); the firmware logs what it used.
//! - `ENIGMA_FIRMWARE_TEST_PANIC=1`: panic after boot (tests that a panic fails the run).

use enigma_core::model::Scratch;
use enigma_core::{EnigmaFile, Tokenizer, Transformer};
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::exit;

/// Longest prompt line the console accepts, in bytes.
const LINE_BYTES: usize = 256;
/// Bytes of flash assumed for code and constants besides the model; the linker checks the exact figure.
const CODE_RESERVE: u64 = 48 * 1024;
/// A context shorter than this is not worth running.
const MIN_CTX: u32 = 16;

fn fail(msg: impl AsRef<str>) -> ! {
    // Cargo prints a failing build script's stderr; `enigma flash` picks out the lines starting "error: ".
    for line in msg.as_ref().lines() {
        eprintln!("error: {line}");
    }
    exit(1)
}

fn var(name: &str) -> Option<String> {
    println!("cargo::rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> T {
    match var(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(format!("{name}={v:?} is not a valid value"))),
    }
}

fn kib(b: u64) -> String {
    if b >= 10 * 1024 {
        format!("{b} bytes ({:.1} KiB)", b as f64 / 1024.0)
    } else {
        format!("{b} bytes")
    }
}

include!("memory_x.rs");

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

fn aligned_copy(bytes: &[u8]) -> Vec<Block> {
    let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
    for (b, src) in blocks.iter_mut().zip(bytes.chunks(64)) {
        b.0[..src.len()].copy_from_slice(src);
    }
    blocks
}

struct Ram {
    kv: usize,
    scratch: usize,
    probs: usize,
    tokens: usize,
}

impl Ram {
    fn new(c: &enigma_core::Config) -> Ram {
        Ram {
            kv: c.kv_cache_len(),
            scratch: Scratch::len(c, 1),
            probs: c.vocab_size as usize,
            tokens: Tokenizer::max_tokens(LINE_BYTES),
        }
    }
    /// Bytes of the static buffers (f32 KV cache and scratch, (f32, u32) sampler candidates, u32 tokens, line).
    fn bytes(&self) -> u64 {
        (4 * self.kv + 4 * self.scratch + 8 * self.probs + 4 * self.tokens + LINE_BYTES) as u64
    }
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=memory_x.rs");
    println!("cargo::rustc-check-cfg=cfg(enigma_test_panic)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut board = var("ENIGMA_BOARD").unwrap_or_else(|| "this board".into());

    let Some(model_path) = var("ENIGMA_MODEL") else {
        fail(
            "ENIGMA_MODEL is not set: name the .enigma model to embed, e.g.\n  \
             ENIGMA_MODEL=/path/to/stories260K.enigma cargo build --release\n\
             (or let `enigma flash --board NAME --model FILE` build the firmware)",
        )
    };
    let model_path = Path::new(&model_path)
        .canonicalize()
        .unwrap_or_else(|e| fail(format!("ENIGMA_MODEL={model_path}: {e}")));
    println!("cargo::rerun-if-changed={}", model_path.display());
    let bytes = std::fs::read(&model_path)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", model_path.display())));
    let name = model_path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // The reader wants 64-byte-aligned bytes, as they are in flash.
    let blocks = aligned_copy(&bytes);
    let aligned = AlignedView::new(&blocks, bytes.len());
    let file = EnigmaFile::parse(aligned.bytes())
        .unwrap_or_else(|e| fail(format!("{name} is not a valid .enigma file: {e:?}")));
    file.verify_checksum()
        .unwrap_or_else(|e| fail(format!("{name}: {e:?}")));
    let kernels = enigma_core::kernels::kernels();
    let model = Transformer::from_file(&file, kernels)
        .unwrap_or_else(|e| fail(format!("{name} cannot run on the firmware: {e:?}")));
    Tokenizer::from_file(&file).unwrap_or_else(|e| fail(format!("{name}: tokenizer: {e:?}")));
    let config = model.config;

    // Budgets from the board's memory.x.
    let memory_x = var("ENIGMA_MEMORY_X").map(PathBuf::from);
    if let Some(name) = memory_x.as_ref().and_then(|p| p.file_name()) {
        if name != "memory.x" {
            board = format!("{board} ({})", name.to_string_lossy());
        }
    }
    let (flash, ram) = match &memory_x {
        Some(p) => {
            println!("cargo::rerun-if-changed={}", p.display());
            let text = std::fs::read_to_string(p)
                .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", p.display())));
            let get = |r| {
                memory_region(&text, r)
                    .map(|m| m.length)
                    .unwrap_or_else(|| {
                        fail(format!("{}: no `{r} : ... LENGTH = ...` line", p.display()))
                    })
            };
            (Some(get("FLASH")), Some(get("RAM")))
        }
        None => {
            println!(
                "cargo::warning=ENIGMA_MEMORY_X is not set: not checking that the model fits (build from a board's folder)"
            );
            (None, None)
        }
    };
    let stack_reserve: u64 = parsed("ENIGMA_STACK_RESERVE", 12 * 1024);

    let model_len = bytes.len() as u64;
    if let Some(flash) = flash {
        if model_len + CODE_RESERVE > flash {
            fail(format!(
                "{name} does not fit the flash of {board}: the model is {} and the firmware's code needs about {}, \
                 but the board has {} of flash: over by {}.\n\
                 Use a smaller model or quantize it (enigma import llama2c --quantize q8_0).",
                kib(model_len),
                kib(CODE_RESERVE),
                kib(flash),
                kib(model_len + CODE_RESERVE - flash)
            ));
        }
    }

    let sizes_for = |ctx: u32| {
        let mut c = config;
        c.seq_len = ctx;
        Ram::new(&c)
    };
    let ram_for = |ctx: u32| sizes_for(ctx).bytes();
    let explicit_ctx = var("ENIGMA_CTX").map(|v| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| fail(format!("ENIGMA_CTX={v:?} is not a positive number")))
    });
    let ctx = match (explicit_ctx, ram) {
        (Some(ctx), _) if ctx > config.seq_len => fail(format!(
            "ENIGMA_CTX={ctx} is longer than the model's context ({} tokens)",
            config.seq_len
        )),
        (Some(ctx), None) => ctx,
        (None, None) => config.seq_len,
        (ctx, Some(ram)) => {
            let avail = ram.saturating_sub(stack_reserve);
            let longest = (1..=config.seq_len)
                .rev()
                .find(|&n| ram_for(n) <= avail)
                .unwrap_or(0);
            let want = ctx.unwrap_or(config.seq_len.min(longest.max(MIN_CTX)));
            let need = ram_for(want);
            if need > avail {
                let hint = if longest >= 1 {
                    format!(
                        "The longest context that fits is {longest} tokens (ENIGMA_CTX={longest}, or `enigma flash --context {longest}`)."
                    )
                } else {
                    "Not even a one-token context fits: use a smaller model.".into()
                };
                fail(format!(
                    "the buffers of {name} do not fit the RAM of {board}: a {want}-token context needs {} \
                     (KV cache {}, activations and sampler {}) plus {} kept for the stack, but the board has {} of RAM: \
                     over by {}.\n{hint}",
                    kib(need),
                    kib(4 * sizes_for(want).kv as u64),
                    kib(need - 4 * sizes_for(want).kv as u64),
                    kib(stack_reserve),
                    kib(ram),
                    kib(need + stack_reserve - ram),
                ));
            }
            if want < config.seq_len {
                println!(
                    "cargo::warning=context shortened from {} to {want} tokens to fit the RAM of {board}",
                    config.seq_len
                );
            }
            want
        }
    };
    let sizes = sizes_for(ctx);

    let prompt = var("ENIGMA_PROMPT").unwrap_or_default();
    if prompt.len() > LINE_BYTES {
        fail(format!(
            "ENIGMA_PROMPT is {} bytes; the firmware takes at most {LINE_BYTES}",
            prompt.len()
        ));
    }
    let steps: u32 = parsed("ENIGMA_STEPS", 64);
    let temperature: f32 = parsed("ENIGMA_TEMPERATURE", 0.0);
    let top_p: f32 = parsed("ENIGMA_TOP_P", 0.9);
    let top_k: u32 = parsed("ENIGMA_TOP_K", 0);
    let repeat_penalty: f32 = parsed("ENIGMA_REPEAT_PENALTY", 1.0);
    let repeat_last_n: u32 = parsed("ENIGMA_REPEAT_LAST_N", 64);
    let seed: u64 = parsed("ENIGMA_SEED", 42);
    if !(temperature >= 0.0 && temperature.is_finite() && (0.0..=1.0).contains(&top_p)) {
        fail("ENIGMA_TEMPERATURE must be >= 0 and ENIGMA_TOP_P between 0 and 1");
    }
    if !(repeat_penalty > 0.0 && repeat_penalty.is_finite()) {
        fail("ENIGMA_REPEAT_PENALTY must be a positive number");
    }
    let tier = var("ENIGMA_KERNELS").unwrap_or_default();
    if var("ENIGMA_FIRMWARE_TEST_PANIC").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=enigma_test_panic");
    }

    // Where each tensor lies: the firmware views them in flash without parsing the header again (no
    // postcard, no CRC table, no header copies on the stack: about 28 KiB of flash and 17 KiB of stack).
    let base = aligned.bytes().as_ptr() as usize;
    let layout = enigma_core::ParamLayout::new(&config);
    let mut tensors = String::new();
    let tensor_const = |tensors: &mut String, ident: &str, name: &str, rows: u64, cols: u64| {
        let t = file
            .tensor(name)
            .unwrap_or_else(|| fail(format!("{name}: no tensor {name}")));
        writeln!(
            tensors,
            "pub const {ident}: Tensor = Tensor {{ dtype: {}, offset: {}, len: {}, rows: {rows}, cols: {cols} }};",
            t.dtype as u8,
            t.bytes.as_ptr() as usize - base,
            t.bytes.len()
        )
        .unwrap();
    };
    for spec in layout.iter() {
        let cols = spec.row_len();
        tensor_const(
            &mut tensors,
            &format!("T_{}", spec.name.to_uppercase()),
            spec.name,
            spec.numel() / cols,
            cols,
        );
    }
    // The parameters by their layout names, for the core's `Weights::assemble` (which also decides what a
    // tied classifier is).
    tensors.push_str("pub const PARAMS: &[(&str, Tensor)] = &[\n");
    for spec in layout.iter() {
        writeln!(
            tensors,
            "    ({:?}, T_{}),",
            spec.name,
            spec.name.to_uppercase()
        )
        .unwrap();
    }
    tensors.push_str("];\n");
    let v = config.vocab_size as u64;
    use enigma_core::format::{TOK_OFFSETS, TOK_PIECES, TOK_SCORES, TOK_SORTED};
    let pieces_len = file.tensor(TOK_PIECES).map_or(0, |t| t.bytes.len() as u64);
    tensor_const(&mut tensors, "T_TOK_PIECES", TOK_PIECES, 1, pieces_len);
    tensor_const(&mut tensors, "T_TOK_OFFSETS", TOK_OFFSETS, 1, v + 1);
    tensor_const(&mut tensors, "T_TOK_SCORES", TOK_SCORES, 1, v);
    tensor_const(&mut tensors, "T_TOK_SORTED", TOK_SORTED, 1, v);
    let header_len = 16 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let header_crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());

    let mut src = String::new();
    let w = &mut src;
    writeln!(w, "// Generated by build.rs from {}.", model_path.display()).unwrap();
    writeln!(
        w,
        "use enigma_core::format::{{ChatTokens, TokenizerMeta}};\n#[allow(unused_imports)]\nuse enigma_core::Config;"
    )
    .unwrap();
    // Debug output of these plain structs is Rust syntax, and floats print exactly (shortest round trip).
    writeln!(
        w,
        "/// The model's own config (`seq_len` is the model's, not [`CTX`])."
    )
    .unwrap();
    writeln!(w, "pub const CONFIG: Config = {config:?};").unwrap();
    writeln!(
        w,
        "#[allow(unused)]\nconst _CHAT: Option<ChatTokens> = None;"
    )
    .unwrap();
    writeln!(
        w,
        "pub const TOKENIZER: TokenizerMeta = {:?};",
        file.header().tokenizer
    )
    .unwrap();
    writeln!(
        w,
        "/// Prelude and header bytes, and the header's CRC32, as the build saw them."
    )
    .unwrap();
    writeln!(w, "pub const HEADER_LEN: usize = {header_len};").unwrap();
    writeln!(w, "pub const HEADER_CRC: u32 = {header_crc:#010x};").unwrap();
    w.push_str(&tensors);
    writeln!(w, "pub const MODEL_NAME: &str = {name:?};").unwrap();
    writeln!(w, "pub const MODEL_LEN: usize = {};", bytes.len()).unwrap();
    writeln!(
        w,
        "/// The `.enigma` file, 64-byte aligned in flash and read in place.\n\
         pub static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!({:?}));",
        model_path.display().to_string()
    )
    .unwrap();
    writeln!(w, "/// Context length the buffers hold (tokens).").unwrap();
    writeln!(w, "pub const CTX: u32 = {ctx};").unwrap();
    writeln!(
        w,
        "/// f32 elements of the KV cache `2 * (L, NKV, CTX, HS)`."
    )
    .unwrap();
    writeln!(w, "pub const KV_LEN: usize = {};", sizes.kv).unwrap();
    writeln!(
        w,
        "/// f32 elements of the activations for one-token chunks."
    )
    .unwrap();
    writeln!(w, "pub const SCRATCH_LEN: usize = {};", sizes.scratch).unwrap();
    writeln!(w, "pub const VOCAB: usize = {};", sizes.probs).unwrap();
    writeln!(w, "pub const LINE_BYTES: usize = {LINE_BYTES};").unwrap();
    writeln!(w, "pub const TOKENS_LEN: usize = {};", sizes.tokens).unwrap();
    writeln!(w, "pub const BUFFER_BYTES: usize = {};", sizes.bytes()).unwrap();
    writeln!(w, "pub const STACK_RESERVE: usize = {stack_reserve};").unwrap();
    writeln!(w, "pub const PROMPT: &str = {prompt:?};").unwrap();
    writeln!(w, "pub const STEPS: usize = {steps};").unwrap();
    writeln!(w, "pub const KERNELS: &str = {tier:?};").unwrap();
    writeln!(
        w,
        "pub const SAMPLER: enigma_core::SamplerConfig = enigma_core::SamplerConfig {{ \
         temperature: {temperature:?}, top_k: {top_k}, top_p: {top_p:?}, \
         repetition_penalty: {repeat_penalty:?}, repeat_last_n: {repeat_last_n}, seed: {seed} }};"
    )
    .unwrap();
    std::fs::write(out.join("model.rs"), src).expect("write model.rs");
}

/// 64-byte-aligned bytes for the reader.
struct AlignedView<'a> {
    blocks: &'a [Block],
    len: usize,
}

impl<'a> AlignedView<'a> {
    fn new(blocks: &'a [Block], len: usize) -> Self {
        AlignedView { blocks, len }
    }
    fn bytes(&self) -> &'a [u8] {
        let arrays: &'a [[u8; 64]] = block_arrays(self.blocks);
        &arrays.as_flattened()[..self.len]
    }
}

fn block_arrays(b: &[Block]) -> &[[u8; 64]] {
    // SAFETY: `Block` is `repr(C)` around `[u8; 64]` with no padding (size 64, align 64), so a slice of
    // blocks is a slice of byte arrays of the same length.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<[u8; 64]>(), b.len()) }
}
