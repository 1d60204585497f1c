//! `enigma eval`: perplexity of a model on a text file.

use anyhow::{bail, Context, Result};
use enigma_core::{Exec, KvType, Tokenizer};
use enigma_runtime::{HostSession, Model};
use std::path::Path;

/// The mean negative log-likelihood of a text and its perplexity.
#[derive(Clone, Copy, Debug)]
pub struct Perplexity {
    /// Tokens scored (every token of each window but its first).
    pub scored: usize,
    pub mean_nll: f64,
}

impl Perplexity {
    pub fn ppl(&self) -> f64 {
        self.mean_nll.exp()
    }
}

/// Encodes a text file with the model's tokenizer (BOS first), in O(n log n).
pub fn tokens_of_file(model: &Model<'_>, path: &Path) -> Result<Vec<u32>> {
    tokens_of_file_with(&model.tokenizer, path)
}

/// [`tokens_of_file`] with a tokenizer alone (a model that runs on a GPU has no CPU `Model`).
pub fn tokens_of_file_with(tokenizer: &Tokenizer<'_>, path: &Path) -> Result<Vec<u32>> {
    let bytes = enigma_runtime::load::read_file(path)?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(enigma_runtime::tokenize::encode(
        tokenizer, text, true, false,
    )?)
}

/// Runs a window's input tokens from position 0 on a fresh cache and hands each position's logits to the sink:
/// `run(tokens, sink(index in tokens, logits (V)))`. The CPU's and the GPU's forward passes both fit it.
pub type WindowRunner<'a> = &'a mut dyn FnMut(&[u32], &mut dyn FnMut(usize, &[f32])) -> Result<()>;

/// Scores `tokens` in independent windows of `ctx` tokens: within a window, each token is predicted from
/// the ones before it. `max_tokens` caps the tokens read (0 = all). The KV cache keeps `kv` elements.
pub fn perplexity(
    model: &Model<'_>,
    exec: &dyn Exec,
    tokens: &[u32],
    ctx: usize,
    max_tokens: usize,
    kv: KvType,
) -> Result<Perplexity> {
    // Windows never reach past `ctx`: the cache and scratch are sized by it, not by the header's context.
    let seq_len = model.transformer.config.seq_len as usize;
    let transformer = model.transformer.with_context(ctx);
    let c = &transformer.config;
    let mut bufs = HostSession::try_with_kv(&transformer, 64, kv)?;
    score(tokens, ctx, max_tokens, seq_len, &mut |window, sink| {
        let (mut cache, mut s) = bufs.parts(c)?;
        transformer.forward_each(exec, &mut cache, &mut s, window, 0, sink)?;
        Ok(())
    })
}

/// [`perplexity`] over any forward pass: `tokens` (at most `max_tokens`, 0 = all) in independent windows of
/// `ctx` tokens (2..=`seq_len`), each run by `run`.
pub fn score(
    tokens: &[u32],
    ctx: usize,
    max_tokens: usize,
    seq_len: usize,
    run: WindowRunner<'_>,
) -> Result<Perplexity> {
    if ctx < 2 || ctx > seq_len {
        bail!("--ctx must be between 2 and the model's context ({seq_len}), not {ctx}");
    }
    let tokens = if max_tokens > 0 {
        &tokens[..tokens.len().min(max_tokens)]
    } else {
        tokens
    };
    if tokens.len() < 2 {
        bail!("the text is too short to score: {} tokens", tokens.len());
    }
    let (mut sum, mut scored) = (0.0f64, 0usize);
    for window in tokens.chunks(ctx).filter(|w| w.len() >= 2) {
        run(&window[..window.len() - 1], &mut |i, logits| {
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max
                + logits
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            sum += lse - logits[window[i + 1] as usize] as f64;
            scored += 1;
        })?;
    }
    Ok(Perplexity {
        scored,
        mean_nll: sum / scored as f64,
    })
}
