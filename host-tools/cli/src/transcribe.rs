//! `enigma transcribe`: speech to text from a WAV file or standard input with a Whisper `.enigma` model,
//! printed as text (a line per segment, with times unless --no-timestamps) or JSON (`--json`).

use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_core::whisper::DecodeOptions;
use enigma_runtime::audio::WavSource;
use enigma_runtime::Transcriber;
use std::io::{Read, Write};

#[derive(Args, Debug)]
pub struct TranscribeArgs {
    /// The Whisper model: a .enigma file or a model of the models home.
    #[arg(short, long)]
    pub model: String,
    /// A WAV file, or `-` for WAV on standard input.
    pub input: String,
    /// Print JSON: {"text", "segments": [{"start", "end", "text", "tokens"}], ...}.
    #[arg(long)]
    pub json: bool,
    /// Decode without timestamp tokens (one segment per 30-second window).
    #[arg(long)]
    pub no_timestamps: bool,
    /// Tokens one 30-second window may produce at most (ends hallucination loops).
    #[arg(long, default_value_t = 224)]
    pub max_tokens: usize,
    /// Threads to run on (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Loads the Whisper model named by `spec` (a file, or a model of the models home).
pub fn open_transcriber(spec: &str, threads: Option<usize>) -> Result<Transcriber> {
    let path = match enigma_models::resolve_model(spec)? {
        enigma_models::ResolvedModel::File(p) => p,
        enigma_models::ResolvedModel::BuiltIn => {
            bail!("the built-in model is a text generator, not a speech-recognition model")
        }
    };
    let kernels = enigma_core::kernels::kernels_from_env()
        .map_err(|e| anyhow::anyhow!("ENIGMA_KERNELS: {e}"))?;
    let t = Transcriber::open(&path, kernels).with_context(|| path.display().to_string())?;
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    Ok(t.with_threads(threads)?)
}

pub fn run(args: TranscribeArgs) -> Result<()> {
    let t = open_transcriber(&args.model, args.threads)?;
    let reader: Box<dyn Read> = if args.input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.input).with_context(|| args.input.clone())?,
        ))
    };
    let mut src = WavSource::new(reader).with_context(|| args.input.clone())?;
    let (rate, channels) = src.format();
    if src.resampled() {
        eprintln!("note: {rate} Hz audio resampled to 16000 Hz (linear interpolation)");
    }
    if channels > 1 {
        eprintln!("note: {channels} channels mixed down to mono");
    }
    let opts = DecodeOptions {
        timestamps: !args.no_timestamps,
        max_tokens: args.max_tokens.clamp(1, 440),
        ..DecodeOptions::default()
    };
    let mut segments = Vec::new();
    let mut out = std::io::stdout().lock();
    let json = args.json;
    let ts = opts.timestamps;
    t.transcribe(&mut |buf| src.read(buf), &opts, &mut |s| {
        if !json {
            // Text streams out as each window is decoded.
            let line = if ts {
                format!("[{:.2} -> {:.2}] {}", s.start, s.end, s.text.trim())
            } else {
                s.text.trim().to_string()
            };
            writeln!(out, "{line}").map_err(|e| enigma_runtime::Error::Invalid(e.to_string()))?;
        } else {
            segments.push(s);
        }
        Ok(())
    })
    .with_context(|| args.input.clone())?;
    if json {
        let text: String = segments.iter().map(|s| s.text.as_str()).collect();
        let v = serde_json::json!({
            "model": args.model,
            "text": text.trim(),
            "sample_rate": rate,
            "channels": channels,
            "resampled": rate != 16000,
            "segments": segments,
        });
        writeln!(out, "{v}")?;
    }
    Ok(())
}
