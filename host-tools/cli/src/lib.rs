//! The `enigma` command line: clap types and dispatch over the host-tools crates.

pub mod models;
pub mod modules;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use enigma_core::generate::{Session, Stats, Stop};
use enigma_core::kernels::DType;
use enigma_core::{Sampler, SamplerConfig, Tokenizer};
use enigma_runtime::session::DEFAULT_CHUNK;
use enigma_runtime::{Backend, HostSession, ModelFile};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "enigma",
    version,
    about = "Enigma Engine: one transformer core for microcontrollers, Pis, desktops and GPUs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a model from another engine's format into a .enigma file.
    #[command(subcommand)]
    Import(Import),
    /// Generate text from a prompt, streaming it to stdout.
    Run(RunArgs),
    /// Talk with a model; the conversation stays in the KV cache between turns.
    Chat(ChatArgs),
    /// Show a model file's config, size, tensors and provenance.
    Info {
        /// The .enigma file.
        model: PathBuf,
    },
    /// Rewrite a model with its weight matrices as f16, bf16, q8_0 or q4_0 (norms stay f32).
    Quantize {
        /// The .enigma file to convert.
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// f32, f16, bf16, q8_0 or q4_0.
        #[arg(long)]
        to: String,
    },
    /// Perplexity of a model on a text file.
    Eval(EvalArgs),
    /// Prompt-processing and generation speed, against this machine's measured bandwidth and FMA peak.
    Bench(BenchArgs),
    /// Build the firmware with a model embedded; run it under QEMU or flash it to a board.
    #[cfg(feature = "flash")]
    Flash(enigma_flash::FlashArgs),
    /// Switch capabilities on and off: list, info, load, unload, status (docs/MODULES.md).
    #[command(subcommand)]
    Modules(crate::modules::ModulesCommand),
    /// Manage the models directory (ENIGMA_HOME): list, info, create, delete, rename, copy, convert.
    #[command(subcommand)]
    Models(crate::models::ModelsCommand),
    /// Train a model (and its tokenizer, unless given) on text or conversations; see docs/TRAINING.md.
    Train(Box<enigma_train::TrainOptions>),
    /// Train a byte-level BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(enigma_train::TokenizerCommand),
    /// What this machine has (RAM, cores, CUDA GPUs) and which modules it cannot run.
    Hardware {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// A UTF-8 text file to score.
    #[arg(long)]
    pub data: PathBuf,
    /// Tokens per scoring window (default: the model's context).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Score at most this many tokens of the text (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_tokens: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt tokens processed as one prefill.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Import {
    /// A llama2.c checkpoint (legacy or current layout) and its tokenizer.bin.
    Llama2c {
        /// The checkpoint, e.g. stories15M.bin.
        checkpoint: PathBuf,
        /// llama2.c's tokenizer file (tokenizer.bin, tok512.bin, ...).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Where to write the .enigma file.
        #[arg(short, long)]
        output: PathBuf,
        /// Store the weight matrices as f32, f16, bf16, q8_0 or q4_0 (norms stay f32).
        #[arg(long, default_value = "f32")]
        quantize: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(
        short = 't',
        long,
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(
        short = 'p',
        long,
        default_value_t = 0.9,
        allow_negative_numbers = true
    )]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(short = 'k', long, default_value_t = 0)]
    pub top_k: u32,
    /// Penalty for tokens among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: u32,
    /// Random seed (default: from the clock).
    #[arg(short, long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    fn config(&self) -> Result<SamplerConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be a number >= 0, not {}",
                self.temperature
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            bail!("--top-p must be between 0 and 1, not {}", self.top_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            bail!(
                "--repeat-penalty must be a positive number, not {}",
                self.repeat_penalty
            );
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// The .enigma model file (default: the built-in nano model trained on tinyshakespeare).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Worker threads (default: all cores; one for models under 16 MiB, where threads cost more than they save).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl EngineArgs {
    /// The model's path, or how the built-in default model is named.
    pub fn model_name(&self) -> String {
        match &self.model {
            Some(p) => p.display().to_string(),
            None => enigma_models::DEFAULT_MODEL_NAME.to_string(),
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(short = 'i', long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// An instruction placed before the first turn.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import(Import::Llama2c {
            checkpoint,
            tokenizer,
            output,
            quantize,
        }) => import_llama2c(&checkpoint, &tokenizer, &output, &quantize),
        Command::Quantize { input, output, to } => quantize(&input, &output, &to),
        Command::Run(args) => run(args),
        Command::Chat(args) => chat(args),
        Command::Info { model } => info(&model),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        #[cfg(feature = "flash")]
        Command::Flash(args) => enigma_flash::flash(args),
        Command::Modules(cmd) => crate::modules::main(cmd),
        Command::Models(cmd) => crate::models::main(cmd),
        Command::Hardware { json } => crate::modules::hardware(json),
        Command::Train(opts) => {
            let kernels = enigma_core::kernels::kernels_from_env()
                .map_err(|e| anyhow::anyhow!("ENIGMA_KERNELS: {e}"))?;
            enigma_train::train(&opts, kernels).map(|_| ())
        }
        Command::Tokenizer(enigma_train::TokenizerCommand::Train(args)) => {
            enigma_train::train_tokenizer(&args).map(|_| ())
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    Ok(enigma_runtime::load::read_file(path)?)
}

fn import_llama2c(checkpoint: &Path, tokenizer: &Path, output: &Path, dtype: &str) -> Result<()> {
    let dtype = enigma_runtime::quantize::parse_dtype(dtype)?;
    let name = checkpoint
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    use enigma_models::llama2c;
    let ckpt = llama2c::read_checkpoint(&read(checkpoint)?)
        .with_context(|| checkpoint.display().to_string())?;
    let tok = llama2c::read_tokenizer(&read(tokenizer)?, ckpt.config.vocab_size)
        .with_context(|| tokenizer.display().to_string())?;
    let bytes = llama2c::convert(&ckpt, tok, &name, dtype)
        .with_context(|| checkpoint.display().to_string())?;
    enigma_runtime::fsutil::atomic_write(output, &bytes)?;
    eprintln!("wrote {} ({} bytes)", output.display(), bytes.len());
    Ok(())
}

/// Writes a token's bytes, dropping lone control bytes that would garble a terminal (as llama2.c does).
fn emit(out: &mut impl Write, piece: &[u8]) -> bool {
    if let [b] = piece {
        if b.is_ascii_control() && !b.is_ascii_whitespace() {
            return true;
        }
    }
    out.write_all(piece).and_then(|_| out.flush()).is_ok()
}

/// Times one generation. Prefill ends when the first generated token arrives (after `echoed` echoed
/// prompt tokens); decode speed counts the tokens after that one.
struct Clock {
    start: Instant,
    first: Option<Instant>,
    echoed: usize,
    seen: usize,
}

impl Clock {
    fn new(echoed: usize) -> Self {
        Clock {
            start: Instant::now(),
            first: None,
            echoed,
            seen: 0,
        }
    }

    fn tick(&mut self) {
        self.seen += 1;
        if self.seen == self.echoed + 1 {
            self.first = Some(Instant::now());
        }
    }

    fn report(&self, stats: &Stats) {
        let first = self.first.unwrap_or(self.start);
        let prefill = (first - self.start).as_secs_f64();
        let decode = first.elapsed().as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s; generated: {} tokens, {:.1} tok/s",
            stats.prompt_tokens,
            rate(stats.prompt_tokens, prefill),
            stats.generated,
            rate(stats.generated.saturating_sub(1), decode)
        );
        if stats.stop == Stop::ContextFull {
            eprintln!("stopped: the context window is full");
        }
    }
}

/// Below this file size, a model runs on one thread unless `--threads` says otherwise.
const SMALL_MODEL_BYTES: usize = 16 << 20;

/// Opens the model and the backend. A model in a model folder (the store's, or a training run's) is held
/// with the folder's reader lock for as long as the returned file lives, so it is never trained,
/// converted, renamed or deleted while it runs, and never run while that happens.
fn open(engine: &EngineArgs, purpose: &str) -> Result<(ModelFile, Backend)> {
    let file = match &engine.model {
        Some(path) => ModelFile::open_shared(path, purpose)?,
        None => ModelFile::from_bytes(
            enigma_models::DEFAULT_MODEL,
            enigma_models::DEFAULT_MODEL_NAME,
        )?,
    };
    // Splitting a small model's matrices over threads costs far more in synchronisation than it saves
    // (stories260K: ~34,000 tok/s on one thread, ~1,100 on two), so without --threads a model this small
    // runs on one thread.
    let threads = engine
        .threads
        .or_else(|| (file.bytes().len() < SMALL_MODEL_BYTES).then_some(1));
    let backend = Backend::cpu(threads)?;
    Ok((file, backend))
}

/// Encodes a prompt that must fit in `max` tokens, in O(n log n) (the core's loop is quadratic).
fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool, max: usize) -> Result<Vec<u32>> {
    Ok(enigma_runtime::tokenize::encode_within(
        tok, text, bos, false, max,
    )?)
}

pub fn run(args: RunArgs) -> Result<()> {
    let sampler_cfg = args.sampling.config()?;
    let (file, backend) = open(&args.engine, "run")?;
    let model = file.model(backend.kernels())?;
    let max = model.transformer.config.seq_len as usize;
    let prompt = encode(&model.tokenizer, &args.prompt, true, max)?;
    // The cache holds what this run can reach, not the whole context the header declares.
    let transformer = model
        .transformer
        .with_context(prompt.len().saturating_add(args.n_predict));
    let mut bufs = HostSession::try_new(&transformer, DEFAULT_CHUNK)?;
    let mut session = bufs.session(transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A fresh session echoes every prompt token but the leading BOS.
    let mut clock = Clock::new(prompt.len() - 1);
    let stats = session.generate(
        backend.exec(),
        &model.tokenizer,
        &mut sampler,
        &prompt,
        args.n_predict,
        true,
        &mut |_, piece| {
            clock.tick();
            emit(&mut out, piece)
        },
    )?;
    let _ = writeln!(out);
    clock.report(&stats);
    Ok(())
}

/// How turns are wrapped: the model's own chat markers, or Llama 2's `[INST]` format. A turn of more than
/// `max` tokens is an error.
fn chat_turn(
    tok: &Tokenizer<'_>,
    system: Option<&str>,
    user: &str,
    first: bool,
    max: usize,
) -> Result<Vec<u32>> {
    match tok.meta().chat {
        Some(markers) => {
            let mut ids = Vec::new();
            if first {
                ids.push(tok.bos());
                if let Some(s) = system {
                    ids.extend(encode(tok, s, false, max)?);
                }
            }
            ids.push(markers.user);
            ids.extend(encode(tok, user, false, max)?);
            ids.push(markers.assistant);
            if ids.len() > max {
                bail!(enigma_core::Error::PromptTooLong {
                    tokens: ids.len(),
                    max
                });
            }
            Ok(ids)
        }
        None => {
            let text = match (first, system) {
                (true, Some(s)) => format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{user} [/INST]"),
                _ => format!("[INST] {user} [/INST]"),
            };
            encode(tok, &text, true, max)
        }
    }
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let sampler_cfg = args.sampling.config()?;
    let (file, backend) = open(&args.engine, "chat")?;
    let model = file.model(backend.kernels())?;
    let mut bufs = HostSession::try_new(&model.transformer, DEFAULT_CHUNK)?;
    let mut session: Session<'_, '_> = bufs.session(model.transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut first = true;
    eprintln!(
        "chatting with {} (/reset forgets the conversation, /quit or end of input leaves)",
        args.engine.model_name()
    );
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read standard input")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                session.reset();
                sampler.clear_history();
                first = true;
                eprintln!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        // One slot stays free for the reply's first token.
        let room = session.remaining().saturating_sub(1);
        let ids = match chat_turn(&model.tokenizer, args.system.as_deref(), text, first, room) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!(
                    "error: that turn does not fit in the {room} tokens left in the context ({e:#}); /reset to start over"
                );
                continue;
            }
        };
        first = false;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut clock = Clock::new(0);
        let n = args
            .n_predict
            .min(session.remaining().saturating_sub(ids.len()));
        let stats = session.generate(
            backend.exec(),
            &model.tokenizer,
            &mut sampler,
            &ids,
            n,
            false,
            &mut |_, piece| {
                clock.tick();
                emit(&mut out, piece)
            },
        )?;
        let _ = writeln!(out);
        clock.report(&stats);
    }
    Ok(())
}

pub fn info(path: &Path) -> Result<()> {
    let file = ModelFile::open_shared(path, "info")?;
    let f = file.parse()?;
    let c = f.config();
    let h = f.header();
    println!("file:        {} ({} bytes)", path.display(), f.len());
    println!("format:      .enigma v{}", enigma_core::format::VERSION);
    println!("source:      {}", h.provenance.source);
    println!(
        "written by:  {} at unix time {}",
        h.provenance.tool, h.provenance.created_unix
    );
    if !h.provenance.notes.is_empty() {
        println!("notes:       {}", h.provenance.notes);
    }
    println!(
        "config:      dim {} hidden {} layers {} heads {} kv_heads {} vocab {} seq_len {}",
        c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len
    );
    println!(
        "             rope_theta {} norm_eps {} classifier {}",
        c.rope_theta,
        c.norm_eps,
        if c.tied_classifier {
            "tied to the embedding"
        } else {
            "separate"
        }
    );
    println!("parameters:  {}", c.param_count());
    let t = h.tokenizer;
    println!(
        "tokenizer:   {} tokens, bos {} eos {}, byte fallback {}, dummy prefix {}",
        c.vocab_size,
        t.bos,
        t.eos,
        if t.byte_fallback.is_some() {
            "yes"
        } else {
            "no"
        },
        t.add_dummy_prefix
    );
    for d in [DType::F32, DType::F16, DType::Q8_0] {
        if let Some(m) = c.memory_estimate(d) {
            println!(
                "memory {:<5} weights {} + KV cache {} + scratch {} = {} bytes",
                d.name(),
                m.weights,
                m.kv_cache,
                m.scratch,
                m.total()
            );
        }
    }
    println!("tensors:");
    for t in f.tensors() {
        let shape: Vec<String> = t
            .shape
            .iter()
            .take_while(|d| **d != 0)
            .map(|d| d.to_string())
            .collect();
        println!(
            "  {:<20} {:<5} [{}] {} bytes",
            t.name,
            t.dtype.name(),
            shape.join(", "),
            t.bytes.len()
        );
    }
    // A well-formed file can still disagree with its config (a shape, a missing tensor, the tokenizer):
    // say so rather than exit 0 on a model that `run` refuses.
    file.model(enigma_core::kernels::kernels())?;
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let (file, backend) = open(&args.engine, "eval")?;
    let model = file.model(backend.kernels())?;
    let tokens = enigma_eval::perplexity::tokens_of_file(&model, &args.data)?;
    let ctx = args
        .ctx
        .unwrap_or(model.transformer.config.seq_len as usize);
    let start = Instant::now();
    let p =
        enigma_eval::perplexity::perplexity(&model, backend.exec(), &tokens, ctx, args.max_tokens)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "perplexity {:.4} (mean NLL {:.5} nats/token) over {} tokens of {}, windows of {ctx}",
        p.ppl(),
        p.mean_nll,
        p.scored,
        args.data.display()
    );
    eprintln!(
        "{:.1} tokens/s on {}",
        p.scored as f64 / secs,
        backend.describe()
    );
    Ok(())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let (file, backend) = open(&args.engine, "bench")?;
    let model = file.model(backend.kernels())?;
    let report = enigma_eval::report::Report::measure(
        &model,
        &backend,
        args.engine.model_name(),
        args.prompt_tokens,
        args.gen_tokens,
        args.rounds,
    )?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{report}");
    }
    Ok(())
}

pub fn quantize(input: &Path, output: &Path, to: &str) -> Result<()> {
    let to = enigma_runtime::quantize::parse_dtype(to)?;
    let file = ModelFile::open_shared(input, "quantize")?;
    let (bytes, kept) = enigma_runtime::quantize::requantize(&file.parse()?, to)?;
    // Check the result loads before it replaces anything.
    ModelFile::from_bytes(&bytes, output)?.model(enigma_core::kernels::kernels())?;
    enigma_runtime::fsutil::atomic_write(output, &bytes)?;
    if !kept.is_empty() {
        eprintln!(
            "note: {} stay f32: their rows are not whole blocks of 32",
            kept.join(", ")
        );
    }
    eprintln!(
        "wrote {} ({} bytes, {} weights)",
        output.display(),
        bytes.len(),
        to.name()
    );
    Ok(())
}
