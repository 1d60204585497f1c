//! A Llama-architecture GGUF model as a `.enigma` model: config from the `llama.*` keys, tokenizer from the
//! `tokenizer.ggml.*` keys, and the per-layer tensors `blk.N.*` stacked into the `(L, ...)` tensors of
//! [`ParamLayout`].
//!
//! Q/K rows are kept as they are: GGUF's llama architecture stores Meta's layout (llama.cpp's converter
//! undoes Hugging Face's permutation), whose RoPE rotates adjacent pairs, as ours does; the
//! stories260K parity test is what shows it.

use super::read::{GgmlType, Gguf, Tensor};
use super::{tokens, KEEP_TEMPLATE};
use anyhow::{ensure, Context, Result};
use enigma_core::config::{self, Config, ParamLayout, TensorSpec};
use enigma_core::kernels::kquants::KQuant;
use enigma_core::kernels::DType;
use enigma_runtime::{ModelWriter, TokenizerData};

/// The GGUF name of a parameter of the layout, for layer `l` of a stacked tensor.
pub fn gguf_name(ours: &str, l: u32) -> Option<String> {
    let per_layer = |n: &str| format!("blk.{l}.{n}.weight");
    Some(match ours {
        config::TOKEN_EMBEDDING => "token_embd.weight".into(),
        config::FINAL_NORM => "output_norm.weight".into(),
        config::CLASSIFIER => "output.weight".into(),
        config::ATTN_NORM => per_layer("attn_norm"),
        config::WQ => per_layer("attn_q"),
        config::WK => per_layer("attn_k"),
        config::WV => per_layer("attn_v"),
        config::WO => per_layer("attn_output"),
        config::FFN_NORM => per_layer("ffn_norm"),
        config::W1 => per_layer("ffn_gate"),
        config::W2 => per_layer("ffn_down"),
        config::W3 => per_layer("ffn_up"),
        _ => return None,
    })
}

/// Whether a parameter of the layout is stacked over layers `(L, ...)`: all but the embedding, the final
/// norm and the classifier.
pub fn is_stacked(spec: &TensorSpec) -> bool {
    !matches!(
        spec.name,
        config::TOKEN_EMBEDDING | config::FINAL_NORM | config::CLASSIFIER
    )
}

fn uint(g: &Gguf<'_>, key: &str) -> Result<Option<u32>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .and_then(|i| u32::try_from(i).ok())
            .map(Some)
            .with_context(|| format!("{key} is {}, not a count", v.summary())),
    }
}

fn float(g: &Gguf<'_>, key: &str) -> Result<Option<f32>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .with_context(|| format!("{key} is {}, not a number", v.summary())),
    }
}

/// The model's config from the `llama.*` keys; the vocabulary is the token list's length.
pub fn config(g: &Gguf<'_>) -> Result<Config> {
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .context("no general.architecture key")?;
    ensure!(
        arch == "llama",
        "architecture '{arch}': only 'llama' models are read (Llama, Mistral, TinyLlama...)"
    );
    let need = |k: &str| -> Result<u32> {
        uint(g, &format!("llama.{k}"))?.with_context(|| format!("no llama.{k} key"))
    };
    let n_heads = need("attention.head_count")?;
    let vocab = tokens(g)?.count;
    let config = Config {
        dim: need("embedding_length")?,
        hidden_dim: need("feed_forward_length")?,
        n_layers: need("block_count")?,
        n_heads,
        n_kv_heads: uint(g, "llama.attention.head_count_kv")?.unwrap_or(n_heads),
        vocab_size: u32::try_from(vocab).context("the vocabulary is too large")?,
        seq_len: need("context_length")?,
        rope_theta: float(g, "llama.rope.freq_base")?.unwrap_or(10000.0),
        norm_eps: float(g, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        tied_classifier: g.tensor("output.weight").is_none(),
    };
    config.validate().context("not a usable Llama config")?;
    if let Some(rot) = uint(g, "llama.rope.dimension_count")? {
        ensure!(
            rot as usize == config.head_size(),
            "llama.rope.dimension_count {rot} rotates part of each head (head size {}): partial RoPE is not supported",
            config.head_size()
        );
    }
    if let Some(scaling) = g.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
        ensure!(
            scaling == "none",
            "llama.rope.scaling.type '{scaling}' is not supported"
        );
    }
    Ok(config)
}

/// The GGUF tensor of layer `l` (or the single tensor) with the shape the layout wants for one layer.
fn part<'g, 'a>(
    g: &'g Gguf<'a>,
    spec: &TensorSpec,
    l: u32,
    stacked: bool,
) -> Result<&'g Tensor<'a>> {
    let name = gguf_name(spec.name, l).context("a tensor the layout does not name")?;
    let t = g
        .tensor(&name)
        .with_context(|| format!("no tensor '{name}'"))?;
    let want: Vec<u64> = if stacked {
        spec.shape[1..spec.ndim()].to_vec()
    } else {
        spec.shape[..spec.ndim()].to_vec()
    };
    ensure!(
        t.shape() == want,
        "tensor '{name}' has shape {:?}, the config needs {want:?}",
        t.shape()
    );
    Ok(t)
}

/// How the importer stores a GGUF type: as it is when the kernels multiply it, else `None` (widened).
fn native(ty: GgmlType) -> Option<DType> {
    Some(match ty {
        GgmlType::F32 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        GgmlType::Q8_0 => DType::Q8_0,
        GgmlType::Q4_0 => DType::Q4_0,
        GgmlType::K(KQuant::Q4K) => DType::Q4K,
        GgmlType::K(KQuant::Q6K) => DType::Q6K,
        GgmlType::K(_) => return None,
    })
}

/// One stacked (or single) tensor of the layout, its dtype and bytes.
/// - norms: f32 (GGUF writers keep them f32; an f16 one is widened);
/// - every part in one type the kernels multiply (Q4_K and Q6_K included): those bytes, concatenated (no
///   re-quantization);
/// - otherwise (Q2_K, Q3_K, Q5_K, or layers in different types, as a Q4_K_M file's `attn_v` and `ffn_down`
///   mix Q4_K and Q6_K): widened to f32 and quantized to q8_0, or f32 when rows are not whole blocks of 32.
///
/// Also returns the GGUF types its parts had, when any was widened.
fn stacked_tensor(
    g: &Gguf<'_>,
    spec: &TensorSpec,
    c: &Config,
) -> Result<(DType, Vec<u8>, Vec<&'static str>)> {
    let stacked = is_stacked(spec);
    let layers = if stacked { c.n_layers } else { 1 };
    let parts = (0..layers)
        .map(|l| part(g, spec, l, stacked))
        .collect::<Result<Vec<_>>>()?;
    let mut types: Vec<&'static str> = Vec::new();
    for p in &parts {
        if !types.contains(&p.ty.name()) {
            types.push(p.ty.name());
        }
    }
    let same = native(parts[0].ty).filter(|_| parts.iter().all(|p| p.ty == parts[0].ty));
    match same {
        Some(dt) if !spec.is_norm() || dt == DType::F32 => {
            let mut bytes = Vec::new();
            for p in &parts {
                bytes.extend_from_slice(p.bytes);
            }
            Ok((dt, bytes, Vec::new()))
        }
        _ => {
            let to = if spec.is_norm() || !spec.row_len().is_multiple_of(32) {
                DType::F32
            } else {
                DType::Q8_0
            };
            // A layer at a time: each is whole rows, and q8_0 blocks never cross a row, so this is the
            // encoding of the whole tensor without holding all of it in f32 (5.8 GB for a 7B model's w1).
            let mut bytes = Vec::new();
            for p in &parts {
                let values = p.to_f32();
                enigma_runtime::quantize::check_finite(p.name, &values)?;
                bytes.extend(
                    enigma_runtime::quantize::encode(to, &values)
                        .with_context(|| format!("tensor '{}'", p.name))?,
                );
            }
            Ok((to, bytes, types))
        }
    }
}

/// A GGUF model as `.enigma` bytes; `source` names it in the provenance.
pub fn to_enigma(g: &Gguf<'_>, source: &str) -> Result<Vec<u8>> {
    Ok(writer(g, source)?.to_bytes()?)
}

/// A GGUF model's `.enigma` file, ready to assemble.
pub fn writer(g: &Gguf<'_>, source: &str) -> Result<ModelWriter<'static>> {
    let config = config(g)?;
    let tok: TokenizerData = super::tokenizer(g, config.vocab_size)?;
    let mut w = ModelWriter::new(config, tok);
    // llama.cpp's default when the key is absent is BOS, as here.
    if g.get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        == Some(false)
    {
        w.without_bos();
    }
    let mut widened = Vec::new();
    for spec in ParamLayout::new(&config).iter() {
        let (dt, bytes, from) = stacked_tensor(g, &spec, &config)?;
        if !from.is_empty() {
            widened.push(format!(
                "{} ({} -> {})",
                spec.name,
                from.join("+"),
                dt.name()
            ));
        }
        w.tensor(spec.name, dt, &spec.shape[..spec.ndim()], bytes);
    }
    let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str());
    if let Some(t) = template.filter(|t| !t.is_empty()) {
        w.tensor(
            KEEP_TEMPLATE,
            DType::U8,
            &[t.len() as u64],
            t.as_bytes().to_vec(),
        );
    }
    let notes = if widened.is_empty() {
        format!("imported from GGUF v{} (tensors as stored)", g.version)
    } else {
        format!(
            "imported from GGUF v{}; dequantized on load: {}",
            g.version,
            widened.join(", ")
        )
    };
    w.provenance(format!("gguf:{source}"), notes);
    Ok(w)
}
