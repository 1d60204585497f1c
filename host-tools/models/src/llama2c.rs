//! Importing llama2.c checkpoints and tokenizers.
//!
//! Checkpoint: 7 little-endian i32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
//! negative vocab_size means the classifier is stored separately), then f32 tensors in this order:
//! token_embedding (V, D), rms_att (L, D), wq (L, D, D), wk (L, KV, D), wv (L, KV, D), wo (L, D, D),
//! rms_ffn (L, D), w1 (L, H, D), w2 (L, D, H), w3 (L, H, D), rms_final (D), then in the legacy export
//! freq_cis_real and freq_cis_imag (S, HS/2 each), then the classifier (V, D) when not shared.
//! The two layouts are told apart by the file size.
//!
//! Tokenizer: i32 max_token_len, then per token an f32 score, an i32 length and that many bytes.

use anyhow::{bail, ensure, Context, Result};
use enigma_core::config::{self, Config, ParamLayout};
use enigma_core::kernels::DType;
use enigma_core::tokenizer::VocabBudget;
use enigma_runtime::TokenizerData;

/// A checkpoint's config and its parameters in [`ParamLayout`] order.
pub struct Checkpoint {
    pub config: Config,
    /// Flat parameters laid out by `ParamLayout::new(&config)`.
    pub params: Vec<f32>,
    /// Whether the file carried the legacy freq_cis tables.
    pub legacy: bool,
}

fn i32_at(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

pub fn read_checkpoint(bytes: &[u8]) -> Result<Checkpoint> {
    ensure!(
        bytes.len() >= 28,
        "not a llama2.c checkpoint: {} bytes, the header alone is 28",
        bytes.len()
    );
    let h: Vec<i32> = (0..7).map(|i| i32_at(bytes, i)).collect();
    let dim_ok = h
        .iter()
        .enumerate()
        .all(|(i, v)| if i == 5 { *v != 0 } else { *v > 0 });
    ensure!(
        dim_ok,
        "not a llama2.c checkpoint: header {h:?} has a non-positive size"
    );
    let positive = |v: i32| v.unsigned_abs();
    let config = Config {
        dim: positive(h[0]),
        hidden_dim: positive(h[1]),
        n_layers: positive(h[2]),
        n_heads: positive(h[3]),
        n_kv_heads: positive(h[4]),
        vocab_size: positive(h[5]),
        seq_len: positive(h[6]),
        rope_theta: 10000.0,
        // llama2.c's run.c normalises with 1e-5.
        norm_eps: 1e-5,
        tied_classifier: h[5] > 0,
    };
    config
        .validate()
        .context("not a usable llama2.c checkpoint")?;
    let layout = ParamLayout::new(&config);
    let body = &bytes[28..];
    ensure!(
        body.len().is_multiple_of(4),
        "checkpoint body is {} bytes, not a whole number of f32",
        body.len()
    );
    let floats = body.len() as u64 / 4;
    let shared_params = layout
        .iter()
        .filter(|t| t.name != config::CLASSIFIER)
        .map(|t| t.numel())
        .sum::<u64>();
    let classifier = if config.tied_classifier {
        0
    } else {
        config.vocab_size as u64 * config.dim as u64
    };
    let freq_cis = config.seq_len as u64 * config.head_size() as u64;
    let legacy = if floats == shared_params + classifier {
        false
    } else if floats == shared_params + freq_cis + classifier {
        true
    } else {
        bail!(
            "checkpoint size does not match its header {h:?}: {floats} floats, expected {} (current layout) or {} (legacy)",
            shared_params + classifier,
            shared_params + freq_cis + classifier
        );
    };
    let all: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut params = all[..shared_params as usize].to_vec();
    if !config.tied_classifier {
        let at = (shared_params + if legacy { freq_cis } else { 0 }) as usize;
        params.extend_from_slice(&all[at..]);
    }
    // Reject, rather than import, weights that would turn every generation into NaN.
    enigma_runtime::quantize::check_params_finite(&config, &params)?;
    Ok(Checkpoint {
        config,
        params,
        legacy,
    })
}

/// Reads llama2.c's `tokenizer.bin` format for a vocabulary of `vocab_size` tokens (BOS 1, EOS 2, as
/// llama2.c assumes, with SentencePiece's dummy prefix). The file is read to its end whatever the
/// checkpoint says, so a tokenizer of another vocabulary is reported with both sizes.
pub fn read_tokenizer(bytes: &[u8], vocab_size: u32) -> Result<TokenizerData> {
    ensure!(
        bytes.len() >= 4,
        "not a llama2.c tokenizer: {} bytes",
        bytes.len()
    );
    let mut at = 4;
    // Each token takes at least 8 bytes of the file: a header's vocabulary size alone reserves no more.
    let cap = (vocab_size as usize).min(bytes.len() / 8);
    let mut pieces = Vec::with_capacity(cap);
    let mut scores = Vec::with_capacity(cap);
    let mut budget = VocabBudget::default();
    while at < bytes.len() {
        let i = pieces.len();
        let rec = bytes
            .get(at..at + 8)
            .with_context(|| format!("the tokenizer ends inside the record of token {i}"))?;
        let score = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let len = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let len = usize::try_from(len)
            .map_err(|_| anyhow::anyhow!("token {i} has a length of {len} bytes"))?;
        budget.add(len).with_context(|| format!("token {i}"))?;
        let piece = bytes
            .get(at + 8..at + 8 + len)
            .with_context(|| format!("the tokenizer ends inside token {i}"))?;
        ensure!(
            score.is_finite(),
            "token {i} has a score that is not a number"
        );
        pieces.push(piece.to_vec());
        scores.push(score);
        at += 8 + len;
    }
    ensure!(
        pieces.len() == vocab_size as usize,
        "the tokenizer holds {} tokens but the checkpoint's vocabulary is {vocab_size}: it belongs to another model",
        pieces.len()
    );
    ensure!(
        vocab_size > 2,
        "a llama2.c vocabulary needs BOS (1) and EOS (2)"
    );
    Ok(TokenizerData {
        pieces,
        scores,
        bos: 1,
        eos: 2,
        pad: None,
        add_dummy_prefix: true,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    })
}

/// Converts a checkpoint and its tokenizer into `.enigma` bytes, in f32.
pub fn import(ckpt_bytes: &[u8], tok_bytes: &[u8], source: &str) -> Result<Vec<u8>> {
    import_as(ckpt_bytes, tok_bytes, source, DType::F32)
}

/// Converts a checkpoint and its tokenizer into `.enigma` bytes with the matrices stored as `to`.
pub fn import_as(ckpt_bytes: &[u8], tok_bytes: &[u8], source: &str, to: DType) -> Result<Vec<u8>> {
    let ckpt = read_checkpoint(ckpt_bytes)?;
    let tok = read_tokenizer(tok_bytes, ckpt.config.vocab_size)?;
    convert(&ckpt, tok, source, to)
}

/// A checkpoint and tokenizer already read ([`read_checkpoint`], [`read_tokenizer`]) as `.enigma` bytes with
/// the matrices stored as `to`; reading them apart lets a caller say which file is at fault.
pub fn convert(ckpt: &Checkpoint, tok: TokenizerData, source: &str, to: DType) -> Result<Vec<u8>> {
    let mut w = enigma_runtime::ModelWriter::new(ckpt.config, tok);
    let layout = if ckpt.legacy {
        "legacy layout with freq_cis"
    } else {
        "current layout"
    };
    w.provenance(
        format!("llama2c:{source}"),
        format!("imported from a llama2.c checkpoint ({layout})"),
    );
    let kept = enigma_runtime::quantize::add_params(&mut w, &ckpt.config, &ckpt.params, to)?;
    if !kept.is_empty() {
        eprintln!(
            "note: {} stay f32: their rows are not whole blocks of 32",
            kept.join(", ")
        );
    }
    Ok(w.to_bytes()?)
}
