//! `enigma embed`: sentence embeddings of texts as JSON, from an encoder `.enigma` file
//! (`enigma import hf` of a BERT / sentence-transformers folder).

use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_runtime::Embedder;
use std::io::Read;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// The encoder model: a .enigma file or a model of the models home.
    #[arg(short, long)]
    pub model: String,
    /// The texts; with --stdin, more are read from standard input, one a line.
    pub texts: Vec<String>,
    /// Also read texts from standard input, one a line (empty lines included).
    #[arg(long)]
    pub stdin: bool,
    /// Print the token ids of each text instead of embeddings (`[CLS]` … `[SEP]`, truncated to the
    /// model's length unless --no-truncate).
    #[arg(long)]
    pub tokens: bool,
    /// With --tokens: keep every token (the Hugging Face tokenizer without truncation).
    #[arg(long, requires = "tokens")]
    pub no_truncate: bool,
    /// Embed this many texts per call of the encoder, one call after another (default: all at once);
    /// `--batch 1` is one sentence at a time, as a caller with one query does.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Threads to embed on (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Loads the encoder named by `spec` (a file, or a model of the models home).
pub fn open_embedder(spec: &str) -> Result<Embedder> {
    let path = match enigma_models::resolve_model(spec)? {
        enigma_models::ResolvedModel::File(p) => p,
        enigma_models::ResolvedModel::BuiltIn => {
            bail!("the built-in model is a text generator, not a sentence-embedding model")
        }
    };
    let kernels = enigma_core::kernels::kernels_from_env()
        .map_err(|e| anyhow::anyhow!("ENIGMA_KERNELS: {e}"))?;
    Embedder::open(&path, kernels).with_context(|| path.display().to_string())
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let mut texts = args.texts;
    if args.stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        texts.extend(s.split('\n').map(str::to_string));
    }
    if texts.is_empty() {
        bail!("no texts: give them as arguments or with --stdin");
    }
    let mut e = open_embedder(&args.model)?;
    if let Some(t) = args.threads {
        e = e.with_threads(t);
    }
    let out = if args.tokens {
        let ids = if args.no_truncate {
            e.tokenize_untruncated(&texts)?
        } else {
            e.tokenize_many(&texts)?
        };
        serde_json::json!({ "model": args.model, "tokens": ids })
    } else {
        let per = args.batch.unwrap_or(texts.len()).max(1);
        let mut vecs = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(per) {
            vecs.extend(e.embed(chunk)?);
        }
        serde_json::json!({
            "model": args.model,
            "dim": e.dim(),
            "embeddings": vecs,
        })
    };
    println!("{out}");
    Ok(())
}
