//! BERT sentence encoders from a Hugging Face / sentence-transformers folder (all-MiniLM-L6-v2 is the one
//! tested): `config.json` with `model_type: "bert"`, `model.safetensors` (`BertModel` names, with or
//! without a `bert.` prefix), `vocab.txt` (WordPiece, one piece a line), and when present
//! `sentence_bert_config.json`, whose `max_seq_length` bounds the stored position table (and so the
//! tokens a sentence keeps). Written as the core's encoder tensors ([`enigma_core::encoder`]).

use super::{read_text, Shards, CONFIG};
use anyhow::{bail, ensure, Context, Result};
use enigma_core::config::{Config, TensorSpec};
use enigma_core::encoder::{self, tensor_specs};
use enigma_core::kernels::DType;
use enigma_core::pretok::Split;
use enigma_runtime::writer::TokenizerData;
use enigma_runtime::ModelWriter;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

pub const VOCAB: &str = "vocab.txt";
pub const SENTENCE_CONFIG: &str = "sentence_bert_config.json";

/// Whether `dir`'s `config.json` names a BERT model.
pub fn is_bert_dir(dir: &Path) -> bool {
    read_text(&dir.join(CONFIG))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|j| j.get("model_type").and_then(Value::as_str) == Some("bert"))
}

fn uint(j: &Value, key: &str) -> Result<u32> {
    j.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .with_context(|| format!("{CONFIG}: '{key}' is missing or not a small unsigned integer"))
}

/// The encoder's shape from `config.json` (and the sentence length from `sentence_bert_config.json`).
fn parse_config(dir: &Path) -> Result<(Config, u64)> {
    let j: Value = serde_json::from_str(&read_text(&dir.join(CONFIG))?)
        .with_context(|| format!("{CONFIG}: not JSON"))?;
    let act = j
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    ensure!(
        act == "gelu",
        "{CONFIG}: hidden_act '{act}' is not supported (only BERT's erf GELU, 'gelu')"
    );
    let pos = j
        .get("position_embedding_type")
        .and_then(Value::as_str)
        .unwrap_or("absolute");
    ensure!(
        pos == "absolute",
        "{CONFIG}: position_embedding_type '{pos}' is not supported (only 'absolute')"
    );
    let mut seq = uint(&j, "max_position_embeddings")?;
    let sc = dir.join(SENTENCE_CONFIG);
    if sc.is_file() {
        let s: Value = serde_json::from_str(&read_text(&sc)?)
            .with_context(|| format!("{SENTENCE_CONFIG}: not JSON"))?;
        if let Some(m) = s.get("max_seq_length").and_then(Value::as_u64) {
            ensure!(
                m >= 2,
                "{SENTENCE_CONFIG}: max_seq_length {m} leaves no room for text"
            );
            seq = seq.min(u32::try_from(m).unwrap_or(u32::MAX));
        }
    }
    let heads = uint(&j, "num_attention_heads")?;
    let eps = j
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-12) as f32;
    let c = Config {
        dim: uint(&j, "hidden_size")?,
        hidden_dim: uint(&j, "intermediate_size")?,
        n_layers: uint(&j, "num_hidden_layers")?,
        n_heads: heads,
        n_kv_heads: heads,
        vocab_size: uint(&j, "vocab_size")?,
        seq_len: seq,
        // An encoder has no rotary positions; the header's field must still be a positive number.
        rope_theta: 1.0,
        norm_eps: eps,
        tied_classifier: true,
    };
    c.validate().context(CONFIG)?;
    let types = j
        .get("type_vocab_size")
        .and_then(Value::as_u64)
        .unwrap_or(2);
    ensure!(
        (1..=16).contains(&types),
        "{CONFIG}: type_vocab_size {types}"
    );
    Ok((c, types))
}

/// `vocab.txt` as the vocabulary, `[CLS]` as BOS, `[SEP]` as EOS, `[PAD]` as pad.
fn parse_vocab(dir: &Path, c: &Config) -> Result<TokenizerData> {
    let text = read_text(&dir.join(VOCAB))?;
    let pieces: Vec<Vec<u8>> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).as_bytes().to_vec())
        .collect();
    ensure!(
        pieces.len() == c.vocab_size as usize,
        "{VOCAB}: {} pieces, but {CONFIG} says vocab_size {}",
        pieces.len(),
        c.vocab_size
    );
    let id = |p: &str| {
        pieces
            .iter()
            .position(|q| q == p.as_bytes())
            .map(|i| i as u32)
            .with_context(|| format!("{VOCAB}: no {p} piece"))
    };
    id("[UNK]")?;
    let data = TokenizerData {
        scores: vec![0.0; pieces.len()],
        bos: id("[CLS]")?,
        eos: id("[SEP]")?,
        pad: Some(id("[PAD]")?),
        add_dummy_prefix: false,
        chat: None,
        split: Split::None,
        added: Vec::new(),
        pieces,
    };
    data.check_limits()?;
    Ok(data)
}

/// A BERT folder as `.enigma` bytes, matrices (and the token table) stored as `to`.
pub fn import_dir(dir: &Path, to: DType) -> Result<Vec<u8>> {
    let (c, types) = parse_config(dir)?;
    let tok = parse_vocab(dir, &c)?;
    let shards = Shards::open(dir)?;
    let tensors = shards.parse()?;
    let get = |name: &str, shape: &[u64]| -> Result<Vec<f32>> {
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(&format!("bert.{name}")))
            .with_context(|| format!("the safetensors files have no tensor '{name}'"))?;
        ensure!(
            t.shape.as_slice() == shape,
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            t.shape
        );
        Ok(t.to_f32())
    };
    let (d, h, p) = (c.dim as u64, c.hidden_dim as u64, c.seq_len as usize);
    let layers = |f: &dyn Fn(u32) -> Result<Vec<f32>>| -> Result<Vec<f32>> {
        let mut all = Vec::new();
        for l in 0..c.n_layers {
            all.extend(f(l)?);
        }
        Ok(all)
    };
    let lw = |l: u32, part: &str, shape: &[u64]| get(&format!("encoder.layer.{l}.{part}"), shape);
    let full_pos = get(
        "embeddings.position_embeddings.weight",
        &[
            tensors_rows(&tensors, "embeddings.position_embeddings.weight")?,
            d,
        ],
    )?;
    ensure!(
        full_pos.len() >= p * d as usize,
        "the position table is shorter than max_seq_length"
    );
    let values = |name: &str| -> Result<Vec<f32>> {
        Ok(match name {
            encoder::TOKEN_EMBEDDING => get(
                "embeddings.word_embeddings.weight",
                &[c.vocab_size as u64, d],
            )?,
            encoder::POSITION_EMBEDDING => full_pos[..p * d as usize].to_vec(),
            encoder::TYPE_EMBEDDING => get("embeddings.token_type_embeddings.weight", &[types, d])?,
            encoder::EMBED_NORM => get("embeddings.LayerNorm.weight", &[d])?,
            encoder::EMBED_NORM_BIAS => get("embeddings.LayerNorm.bias", &[d])?,
            encoder::WQKV => layers(&|l| {
                let mut m = lw(l, "attention.self.query.weight", &[d, d])?;
                m.extend(lw(l, "attention.self.key.weight", &[d, d])?);
                m.extend(lw(l, "attention.self.value.weight", &[d, d])?);
                Ok(m)
            })?,
            encoder::BQKV => layers(&|l| {
                let mut m = lw(l, "attention.self.query.bias", &[d])?;
                m.extend(lw(l, "attention.self.key.bias", &[d])?);
                m.extend(lw(l, "attention.self.value.bias", &[d])?);
                Ok(m)
            })?,
            encoder::WO => layers(&|l| lw(l, "attention.output.dense.weight", &[d, d]))?,
            encoder::BO => layers(&|l| lw(l, "attention.output.dense.bias", &[d]))?,
            encoder::ATTN_NORM => layers(&|l| lw(l, "attention.output.LayerNorm.weight", &[d]))?,
            encoder::ATTN_NORM_BIAS => layers(&|l| lw(l, "attention.output.LayerNorm.bias", &[d]))?,
            encoder::W1 => layers(&|l| lw(l, "intermediate.dense.weight", &[h, d]))?,
            encoder::B1 => layers(&|l| lw(l, "intermediate.dense.bias", &[h]))?,
            encoder::W2 => layers(&|l| lw(l, "output.dense.weight", &[d, h]))?,
            encoder::B2 => layers(&|l| lw(l, "output.dense.bias", &[d]))?,
            encoder::FFN_NORM => layers(&|l| lw(l, "output.LayerNorm.weight", &[d]))?,
            encoder::FFN_NORM_BIAS => layers(&|l| lw(l, "output.LayerNorm.bias", &[d]))?,
            other => bail!("no source for encoder tensor '{other}'"),
        })
    };
    let mut w = ModelWriter::new(c, tok);
    for (spec, matrix) in tensor_specs(&c, types) {
        let data = values(spec.name)?;
        if matrix {
            enigma_runtime::quantize::add_param(&mut w, &spec, &data, to)?;
        } else {
            add_f32(&mut w, &spec, &data)?;
        }
    }
    w.provenance(
        super::source_name(dir),
        format!(
            "BERT sentence encoder imported from a Hugging Face folder, stored as {}",
            to.name()
        ),
    );
    Ok(w.to_bytes()?)
}

fn tensors_rows(
    tensors: &HashMap<String, super::safetensors::Tensor<'_>>,
    name: &str,
) -> Result<u64> {
    tensors
        .get(name)
        .or_else(|| tensors.get(&format!("bert.{name}")))
        .and_then(|t| t.shape.first().copied())
        .with_context(|| format!("the safetensors files have no tensor '{name}'"))
}

fn add_f32(w: &mut ModelWriter<'_>, spec: &TensorSpec, data: &[f32]) -> Result<()> {
    enigma_runtime::quantize::add_param(w, spec, data, DType::F32)?;
    Ok(())
}
