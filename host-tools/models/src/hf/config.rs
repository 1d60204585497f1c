//! A Llama-family `config.json` (transformers' `LlamaConfig` and the families that share its weights and
//! forward pass: Mistral without a sliding window, TinyLlama, SmolLM...) as our [`Config`].

use anyhow::{bail, ensure, Context, Result};
use enigma_core::config::Config;
use serde_json::Value;

/// What the import needs from `config.json` beyond [`Config`].
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub config: Config,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

fn uint(j: &Value, key: &str) -> Result<Option<u32>> {
    match j.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .with_context(|| format!("config.json: {key} is {v}, not a count")),
    }
}

fn float(j: &Value, key: &str) -> Result<Option<f32>> {
    match j.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .with_context(|| format!("config.json: {key} is {v}, not a number")),
    }
}

/// A token id that may be written as a list (several EOS ids): the first is taken.
fn token_id(j: &Value, key: &str) -> Result<Option<u32>> {
    match j.get(key) {
        Some(Value::Array(a)) => match a.first() {
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .with_context(|| format!("config.json: {key} holds {v}, not a token id")),
            None => Ok(None),
        },
        _ => uint(j, key),
    }
}

/// Reads `config.json`'s text. `tied` says whether the weights have no `lm_head.weight` (some
/// checkpoints leave `tie_word_embeddings` out and still share the matrix).
pub fn parse(text: &str, tied_by_weights: bool) -> Result<HfConfig> {
    let j: Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("config.json is not JSON: {e}"))?;
    ensure!(j.is_object(), "config.json is not a JSON object");
    let model_type = j.get("model_type").and_then(Value::as_str).unwrap_or("");
    ensure!(
        matches!(model_type, "llama" | "mistral"),
        "config.json: model_type '{model_type}': only Llama-family models ('llama', 'mistral') are read"
    );
    let need = |k: &str| -> Result<u32> {
        uint(&j, k)?.with_context(|| format!("config.json has no {k}"))
    };
    let act = j
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    ensure!(
        act == "silu",
        "config.json: hidden_act '{act}': only SwiGLU (silu) is supported"
    );
    for flag in ["attention_bias", "mlp_bias"] {
        ensure!(
            !j.get(flag).and_then(Value::as_bool).unwrap_or(false),
            "config.json: {flag} is true: projections with biases are not supported"
        );
    }
    if let Some(s) = j.get("rope_scaling").filter(|v| !v.is_null()) {
        bail!("config.json: rope_scaling {s} is not supported");
    }
    if let Some(w) = j.get("sliding_window").filter(|v| !v.is_null()) {
        bail!("config.json: sliding_window {w} is not supported (every layer attends to the whole context)");
    }
    let n_heads = need("num_attention_heads")?;
    let dim = need("hidden_size")?;
    let tie = j.get("tie_word_embeddings").and_then(Value::as_bool);
    let config = Config {
        dim,
        hidden_dim: need("intermediate_size")?,
        n_layers: need("num_hidden_layers")?,
        n_heads,
        n_kv_heads: uint(&j, "num_key_value_heads")?.unwrap_or(n_heads),
        vocab_size: need("vocab_size")?,
        seq_len: need("max_position_embeddings")?,
        rope_theta: float(&j, "rope_theta")?.unwrap_or(10000.0),
        // transformers' LlamaConfig default.
        norm_eps: float(&j, "rms_norm_eps")?.unwrap_or(1e-6),
        tied_classifier: tie.unwrap_or(false) || tied_by_weights,
    };
    config
        .validate()
        .context("config.json is not a usable Llama config")?;
    if let Some(hd) = uint(&j, "head_dim")? {
        ensure!(
            hd as usize == config.head_size(),
            "config.json: head_dim {hd} is not hidden_size / num_attention_heads ({})",
            config.head_size()
        );
    }
    Ok(HfConfig {
        config,
        bos: token_id(&j, "bos_token_id")?,
        eos: token_id(&j, "eos_token_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
        "max_position_embeddings": 128, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true, "eos_token_id": [2, 7], "bos_token_id": 1, "rope_scaling": null}"#;

    #[test]
    fn reads_a_llama_config() {
        let c = parse(GOOD, false).unwrap();
        assert_eq!(c.config.n_kv_heads, 2);
        assert_eq!(c.config.rope_theta, 500000.0);
        assert!(c.config.tied_classifier);
        assert_eq!((c.bos, c.eos), (Some(1), Some(2)));
    }

    #[test]
    fn refuses_what_it_cannot_run_in_one_line() {
        let with = |k: &str, v: &str| {
            let mut j: Value = serde_json::from_str(GOOD).unwrap();
            j[k] = serde_json::from_str(v).unwrap();
            let e = format!("{:#}", parse(&j.to_string(), false).unwrap_err());
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert!(with("model_type", "\"gpt2\"").contains("only Llama-family"));
        assert!(with("hidden_size", "-3").contains("not a count"));
        assert!(with("num_attention_heads", "5").contains("not a usable"));
        assert!(with("rope_scaling", r#"{"type": "linear"}"#).contains("rope_scaling"));
        assert!(with("hidden_act", "\"gelu\"").contains("silu"));
        assert!(with("attention_bias", "true").contains("biases"));
        assert!(with("head_dim", "32").contains("head_dim"));
        assert!(with("vocab_size", "1e30").contains("not a count"));
        assert!(with("eos_token_id", r#"["x"]"#).contains("not a token id"));
        assert!(format!("{:#}", parse("{", false).unwrap_err()).contains("not JSON"));
        assert!(format!("{:#}", parse("[]", false).unwrap_err()).contains("not a JSON object"));
    }
}
