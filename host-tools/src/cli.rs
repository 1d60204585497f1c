//! The `enigma` command line.

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
    },
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(short = 't', long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(short = 'p', long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(short = 'k', long, default_value_t = 0)]
    pub top_k: u32,
    /// Penalty for tokens among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
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
    /// The .enigma model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
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
        }) => import_llama2c(&checkpoint, &tokenizer, &output),
        Command::Run(args) => run(args),
        Command::Chat(args) => chat(args),
        Command::Info { model } => info(&model),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn import_llama2c(checkpoint: &Path, tokenizer: &Path, output: &Path) -> Result<()> {
    let name = checkpoint
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let bytes = crate::llama2c::import(&read(checkpoint)?, &read(tokenizer)?, &name)
        .with_context(|| format!("{}", checkpoint.display()))?;
    enigma_runtime::writer::atomic_write(output, &bytes)?;
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

fn report(stats: &Stats, prompt_time: f64, gen_time: f64) {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s; generated: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        rate(stats.prompt_tokens, prompt_time),
        stats.generated,
        rate(stats.generated, gen_time)
    );
    if stats.stop == Stop::ContextFull {
        eprintln!("stopped: the context window is full");
    }
}

fn open(engine: &EngineArgs) -> Result<(ModelFile, Backend)> {
    let file = ModelFile::open(&engine.model)?;
    let backend = Backend::cpu(engine.threads)?;
    Ok((file, backend))
}

fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, bos, false, &mut ids)?;
    ids.truncate(n);
    Ok(ids)
}

pub fn run(args: RunArgs) -> Result<()> {
    let sampler_cfg = args.sampling.config()?;
    let (file, backend) = open(&args.engine)?;
    let model = file.model(backend.kernels())?;
    let prompt = encode(&model.tokenizer, &args.prompt, true)?;
    let max = model.transformer.config.seq_len as usize;
    if prompt.len() > max {
        bail!(
            "the prompt is {} tokens but the model's context holds {max}",
            prompt.len()
        );
    }
    let mut bufs = HostSession::new(&model.transformer, DEFAULT_CHUNK);
    let mut session = bufs.session(model.transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let n_prompt = prompt.len();
    let mut seen = 0usize;
    let stats = session.generate(
        backend.exec(),
        &model.tokenizer,
        &mut sampler,
        &prompt,
        args.n_predict,
        true,
        &mut |_, piece| {
            seen += 1;
            // Echoed prompt tokens come first; the clock for generation starts at the first new token.
            if seen == n_prompt && first.is_none() {
                first = Some(Instant::now());
            }
            emit(&mut out, piece)
        },
    )?;
    let _ = writeln!(out);
    let first = first.unwrap_or(start);
    report(
        &stats,
        (first - start).as_secs_f64(),
        first.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// How turns are wrapped: the model's own chat markers, or Llama 2's `[INST]` format.
fn chat_turn(
    tok: &Tokenizer<'_>,
    system: Option<&str>,
    user: &str,
    first: bool,
) -> Result<Vec<u32>> {
    match tok.meta().chat {
        Some(markers) => {
            let mut ids = Vec::new();
            if first {
                ids.push(tok.bos());
                if let Some(s) = system {
                    ids.extend(encode(tok, s, false)?);
                }
            }
            ids.push(markers.user);
            ids.extend(encode(tok, user, false)?);
            ids.push(markers.assistant);
            Ok(ids)
        }
        None => {
            let text = match (first, system) {
                (true, Some(s)) => format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{user} [/INST]"),
                _ => format!("[INST] {user} [/INST]"),
            };
            encode(tok, &text, true)
        }
    }
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let sampler_cfg = args.sampling.config()?;
    let (file, backend) = open(&args.engine)?;
    let model = file.model(backend.kernels())?;
    let mut bufs = HostSession::new(&model.transformer, DEFAULT_CHUNK);
    let mut session: Session<'_, '_> = bufs.session(model.transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut first = true;
    eprintln!(
        "chatting with {} (/reset forgets the conversation, /quit or end of input leaves)",
        args.engine.model.display()
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
        let ids = chat_turn(&model.tokenizer, args.system.as_deref(), text, first)?;
        if ids.len() + 1 > session.remaining() {
            eprintln!(
                "error: that turn is {} tokens and the context has {} left; /reset to start over",
                ids.len(),
                session.remaining()
            );
            continue;
        }
        first = false;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let start = Instant::now();
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
            &mut |_, piece| emit(&mut out, piece),
        )?;
        let _ = writeln!(out);
        report(&stats, 0.0, start.elapsed().as_secs_f64());
    }
    Ok(())
}

pub fn info(path: &Path) -> Result<()> {
    let file = ModelFile::open(path)?;
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
    Ok(())
}
