//! Hugging Face model folders in: a Llama-family `config.json`, the weights in `*.safetensors` (one file, or
//! shards named by `model.safetensors.index.json`), `tokenizer.json`, and `tokenizer_config.json`'s chat
//! template (`enigma import hf`; docs/FORMAT.md, "Hugging Face folders").
//!
//! - [`safetensors`]: the container, zero-copy over an mmap;
//! - [`config`]: `config.json` as our config;
//! - [`tokenizer`]: `tokenizer.json` as the core's vocabulary;
//! - here: the weights, by the names transformers' `LlamaForCausalLM` gives them, stacked into the
//!   `(L, ...)` tensors of [`ParamLayout`], with the Q/K row permutation undone.

pub mod config;
pub mod encoder;
pub mod safetensors;
pub mod tokenizer;

use crate::gguf::{import::is_stacked, read::map_file, KEEP_TEMPLATE};
use anyhow::{bail, ensure, Context, Result};
use enigma_core::config::{self as layout, Config, ParamLayout, TensorSpec};
use enigma_core::kernels::DType;
use enigma_runtime::ModelWriter;
use safetensors::{SafeTensors, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

/// Whether `dir` looks like a Hugging Face model folder (a `config.json` and safetensors weights).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join(CONFIG).is_file() && (dir.join(WEIGHTS).is_file() || dir.join(INDEX).is_file())
}

/// transformers' name of a parameter of the layout, for layer `l` of a stacked tensor.
pub fn hf_name(ours: &str, l: u32) -> Option<String> {
    let per_layer = |n: &str| format!("model.layers.{l}.{n}.weight");
    Some(match ours {
        layout::TOKEN_EMBEDDING => "model.embed_tokens.weight".into(),
        layout::FINAL_NORM => "model.norm.weight".into(),
        layout::CLASSIFIER => "lm_head.weight".into(),
        layout::ATTN_NORM => per_layer("input_layernorm"),
        layout::WQ => per_layer("self_attn.q_proj"),
        layout::WK => per_layer("self_attn.k_proj"),
        layout::WV => per_layer("self_attn.v_proj"),
        layout::WO => per_layer("self_attn.o_proj"),
        layout::FFN_NORM => per_layer("post_attention_layernorm"),
        layout::W1 => per_layer("mlp.gate_proj"),
        layout::W2 => per_layer("mlp.down_proj"),
        layout::W3 => per_layer("mlp.up_proj"),
        _ => return None,
    })
}

/// Reads a small text file of the folder; errors name it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    enigma_runtime::load::ensure_regular_file(path)?;
    std::fs::read_to_string(path).with_context(|| path.display().to_string())
}

/// The safetensors files of a folder, mapped: every shard the index names, or `model.safetensors`.
pub struct Shards {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl Shards {
    pub fn open(dir: &Path) -> Result<Shards> {
        let index = dir.join(INDEX);
        let names: Vec<String> = if index.is_file() {
            let text = read_text(&index)?;
            let j: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", index.display()))?;
            let map = j
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no weight_map object", index.display()))?;
            let mut files = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().with_context(|| {
                    format!(
                        "{}: the file of '{tensor}' is not a string",
                        index.display()
                    )
                })?;
                // A shard is a file of this folder, never a path that leaves it.
                ensure!(
                    !file.is_empty() && !file.contains(['/', '\\']) && file != "." && file != "..",
                    "{}: shard '{file}' is not a file name in the folder",
                    index.display()
                );
                files.insert(file.to_string());
            }
            ensure!(
                !files.is_empty(),
                "{}: the weight_map is empty",
                index.display()
            );
            files.into_iter().collect()
        } else if dir.join(WEIGHTS).exists() {
            vec![WEIGHTS.to_string()]
        } else if dir.is_dir() {
            bail!("no {WEIGHTS} or {INDEX} in the folder: not a Hugging Face model folder with safetensors weights");
        } else {
            bail!("not a folder");
        };
        let maps = names
            .into_iter()
            .map(|n| {
                let p = dir.join(n);
                map_file(&p).map(|m| (p, m))
            })
            .collect::<Result<_>>()?;
        Ok(Shards { maps })
    }

    /// Parses every shard; a shard's errors name its file. Tensor names must be unique across shards.
    pub fn parse(&self) -> Result<HashMap<String, Tensor<'_>>> {
        let mut all = HashMap::new();
        for (p, m) in &self.maps {
            let st = SafeTensors::parse(m).with_context(|| p.display().to_string())?;
            for t in st.tensors {
                let name = t.name.clone();
                ensure!(
                    all.insert(name.clone(), t).is_none(),
                    "tensor '{name}' appears in two shards (the second: {})",
                    p.display()
                );
            }
        }
        Ok(all)
    }

    /// The dtypes of the weights, for the provenance note.
    fn dtypes(tensors: &HashMap<String, Tensor<'_>>) -> String {
        let set: BTreeSet<&str> = tensors.values().map(|t| t.dtype.name()).collect();
        set.into_iter().collect::<Vec<_>>().join("+")
    }
}

/// Undoes transformers' `permute` of q_proj/k_proj rows (convert_llama_weights_to_hf.py): within each head
/// of `head_size` rows, HF row `p * head_size/2 + j` is Meta's row `2j + p`. Meta's order is what our
/// RoPE rotates (adjacent pairs), so the rows go back to it. `w` is `(heads * head_size, cols)`.
pub fn unpermute_rows(w: &[f32], heads: usize, head_size: usize, cols: usize) -> Vec<f32> {
    let half = head_size / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for j in 0..half {
            for p in 0..2 {
                let src = (h * head_size + p * half + j) * cols;
                let dst = (h * head_size + 2 * j + p) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// One parameter of the layout in f32, its layers stacked, read from the folder's tensors.
fn param(tensors: &HashMap<String, Tensor<'_>>, spec: &TensorSpec, c: &Config) -> Result<Vec<f32>> {
    let stacked = is_stacked(spec);
    let (layers, want) = if stacked {
        (c.n_layers, &spec.shape[1..spec.ndim()])
    } else {
        (1, &spec.shape[..spec.ndim()])
    };
    let mut out = Vec::with_capacity(usize::try_from(spec.numel()).unwrap_or(0));
    for l in 0..layers {
        let name = hf_name(spec.name, l).context("a tensor the layout does not name")?;
        let t = tensors
            .get(&name)
            .with_context(|| format!("no tensor '{name}' in the safetensors files"))?;
        ensure!(
            t.shape == want,
            "tensor '{name}' has shape {:?}, config.json needs {want:?}",
            t.shape
        );
        let values = t.to_f32();
        let cols = c.dim as usize;
        match spec.name {
            layout::WQ => out.extend(unpermute_rows(
                &values,
                c.n_heads as usize,
                c.head_size(),
                cols,
            )),
            layout::WK => out.extend(unpermute_rows(
                &values,
                c.n_kv_heads as usize,
                c.head_size(),
                cols,
            )),
            _ => out.extend(values),
        }
    }
    Ok(out)
}

/// Finds a token named by text (tokenizer_config.json) among the tokenizer's.
fn id_of(tok: &tokenizer::HfTokenizer, name: Option<&str>, what: &str) -> Result<Option<u32>> {
    let Some(name) = name else { return Ok(None) };
    tok.ids.get(name).copied().map(Some).with_context(|| {
        format!("{TOKENIZER_CONFIG}: the {what} token {name:?} is not in {TOKENIZER}")
    })
}

/// A Hugging Face model folder as `.enigma` bytes with the matrices stored as `to` (f32 keeps every weight
/// exactly: F16 and BF16 widen without loss). Holds the mapped files, one parameter in f32, and the output.
pub fn import_dir(dir: &Path, to: DType) -> Result<Vec<u8>> {
    if encoder::is_bert_dir(dir) {
        return encoder::import_dir(dir, to);
    }
    if crate::whisper::is_ct2_whisper(dir) {
        return crate::whisper::import_dir(dir, to);
    }
    with_writer(dir, Some(to), |w| Ok(w.to_bytes()?))
}

/// A Hugging Face model folder run in place (`enigma run -m DIR`): built in memory as a `.enigma` model
/// with the matrices in the safetensors' own type (f16 and bf16 stay as they are; a mix, or f32, is f32).
pub fn load(dir: &Path) -> Result<enigma_runtime::ModelFile> {
    with_writer(dir, None, |w| Ok(w.to_model(dir)?))
        .with_context(|| format!("the Hugging Face folder {}", dir.display()))
}

/// `hf:` and the folder's own name, as a model's provenance names where it came from.
fn source_name(dir: &Path) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    format!("hf:{name}")
}

/// `config.json`, with the classifier tied when the weights have no `lm_head`.
fn folder_config(dir: &Path, tensors: &HashMap<String, Tensor<'_>>) -> Result<config::HfConfig> {
    let tied_by_weights = !tensors.contains_key("lm_head.weight")
        && tensors.contains_key("model.embed_tokens.weight");
    config::parse(&read_text(&dir.join(CONFIG))?, tied_by_weights)
        .with_context(|| dir.join(CONFIG).display().to_string())
}

/// The model a folder holds, from `config.json` and the safetensors headers (no tensor data is read).
pub fn peek(dir: &Path) -> Result<crate::Peek> {
    let shards = Shards::open(dir)?;
    let tensors = shards.parse()?;
    let hf = folder_config(dir, &tensors)?;
    Ok(crate::Peek {
        config: hf.config,
        source: format!("hf:{}", dir.display()),
        notes: format!(
            "Hugging Face folder (safetensors {})",
            Shards::dtypes(&tensors)
        ),
        created_unix: 0,
        file_len: shards.maps.iter().map(|(_, m)| m.len() as u64).sum(),
    })
}

/// Runs `f` on the `.enigma` writer of the folder, matrices stored as `to` (`None`: as in the files).
fn with_writer<T>(
    dir: &Path,
    to: Option<DType>,
    f: impl FnOnce(ModelWriter<'_>) -> Result<T>,
) -> Result<T> {
    let shards = Shards::open(dir)?;
    let tensors = shards.parse()?;
    let to = to.unwrap_or_else(|| {
        let mut types = tensors.values().map(|t| t.dtype);
        match types.next() {
            Some(first) if types.all(|t| t == first) => match first {
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F32 => DType::F32,
            },
            _ => DType::F32,
        }
    });
    let hf = folder_config(dir, &tensors)?;
    let c = hf.config;
    ensure!(
        c.head_size() % 2 == 0,
        "head size {} is odd: RoPE rotates pairs",
        c.head_size()
    );
    let tok_path = dir.join(TOKENIZER);
    let mut tok = tokenizer::parse(&read_text(&tok_path)?, c.vocab_size)
        .with_context(|| tok_path.display().to_string())?;
    let tc_path = dir.join(TOKENIZER_CONFIG);
    let tc = if tc_path.is_file() {
        Some(
            tokenizer::parse_config(&read_text(&tc_path)?)
                .with_context(|| tc_path.display().to_string())?,
        )
    } else {
        None
    };
    let named = |f: fn(&tokenizer::TokenizerConfig) -> Option<&String>| {
        tc.as_ref().and_then(f).map(String::as_str)
    };
    let bos = match hf.bos {
        Some(id) => Some(id),
        None => id_of(&tok, named(|t| t.bos.as_ref()), "BOS")?,
    };
    let eos = match hf.eos {
        Some(id) => id,
        None => id_of(&tok, named(|t| t.eos.as_ref()), "EOS")?
            .context("no eos_token_id in config.json and no eos_token in tokenizer_config.json")?,
    };
    ensure!(
        eos < c.vocab_size && bos.is_none_or(|b| b < c.vocab_size),
        "config.json: a BOS or EOS id is outside the {} tokens",
        c.vocab_size
    );
    // BOS goes first when tokenizer_config.json says so, else when the post-processor puts it there.
    let adds_bos = bos.is_some()
        && tc.as_ref().and_then(|t| t.add_bos).unwrap_or_else(|| {
            tok.leading
                .as_ref()
                .is_some_and(|t| tok.ids.get(t).copied() == bos)
        });
    tok.data.bos = bos.unwrap_or(eos);
    tok.data.eos = eos;
    tok.data.pad = id_of(&tok, named(|t| t.pad.as_ref()), "pad")?;
    let (kind, prefix_if_unspaced) = (tok.kind, tok.prefix_if_unspaced);
    let mut w = ModelWriter::new(c, tok.data);
    if !adds_bos {
        w.without_bos();
    }
    if prefix_if_unspaced {
        w.prefix_if_unspaced();
    }
    // A tensor at a time: only one stacked parameter is ever held in f32 (a 7B model's w1 is 5.8 GB).
    let mut kept = Vec::new();
    for spec in ParamLayout::new(&c).iter() {
        let values = param(&tensors, &spec, &c)?;
        kept.extend(enigma_runtime::quantize::add_param(
            &mut w, &spec, &values, to,
        )?);
    }
    if !kept.is_empty() {
        eprintln!(
            "note: {} stay f32: their rows are not whole blocks of 32",
            kept.join(", ")
        );
    }
    if let Some(t) = tc
        .as_ref()
        .and_then(|t| t.chat_template.as_ref())
        .filter(|t| !t.is_empty())
    {
        w.tensor(
            KEEP_TEMPLATE,
            DType::U8,
            &[t.len() as u64],
            t.as_bytes().to_vec(),
        );
    }
    w.provenance(
        source_name(dir),
        format!(
            "imported from a Hugging Face folder (safetensors {}, {}, stored as {})",
            Shards::dtypes(&tensors),
            kind.name(),
            to.name()
        ),
    );
    if tensors.is_empty() {
        bail!("the safetensors files hold no tensors");
    }
    f(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one_line(e: anyhow::Error) -> String {
        let e = format!("{e:#}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn an_index_naming_files_outside_the_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = |map: &str| {
            std::fs::write(
                dir.path().join(INDEX),
                format!(r#"{{"weight_map": {map}}}"#),
            )
            .unwrap();
            one_line(Shards::open(dir.path()).err().unwrap())
        };
        assert!(index(r#"{"a": "../x.safetensors"}"#).contains("not a file name in the folder"));
        assert!(index(r#"{"a": "/etc/passwd"}"#).contains("not a file name in the folder"));
        assert!(index(r#"{"a": ".."}"#).contains("not a file name in the folder"));
        assert!(index(r#"{"a": 3}"#).contains("not a string"));
        assert!(index("{}").contains("empty"));
        assert!(index(r#"{"a": "missing.safetensors"}"#).contains("missing.safetensors"));
    }

    proptest! {
        /// config.json, tokenizer.json and tokenizer_config.json cut anywhere or with bytes written over
        /// them give a value or a one-line error, never a panic.
        #[test]
        fn hostile_json_files_never_panic(cut in 0usize..2000, at in 0usize..2000, with in "[ -~]{1,6}") {
            let tok = r#"{"added_tokens": [{"id": 2, "content": "<s>", "special": true}],
                "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
                "model": {"type": "BPE", "vocab": {"▁": 0, "a": 1, "▁a": 3}, "merges": ["▁ a"], "byte_fallback": false}}"#;
            let config = r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4,
                "max_position_embeddings": 16, "eos_token_id": 2}"#;
            let tc = r#"{"chat_template": "{{ x }}", "bos_token": {"content": "<s>"}}"#;
            for text in [tok, config, tc] {
                let mut variants = vec![text.chars().take(cut).collect::<String>()];
                let mut chars: Vec<char> = text.chars().collect();
                let at = at % chars.len();
                chars.splice(at..(at + with.len()).min(chars.len()), with.chars());
                variants.push(chars.into_iter().collect());
                for v in variants {
                    if let Err(e) = tokenizer::parse(&v, 4) { one_line(e); }
                    if let Err(e) = config::parse(&v, false) { one_line(e); }
                    if let Err(e) = tokenizer::parse_config(&v) { one_line(e); }
                }
            }
        }
    }

    #[test]
    fn unpermute_inverts_hf_permute() {
        // HF: w.view(h, hs/2, 2, cols).transpose(1, 2): Meta row (h, j, p) goes to (h, p, j).
        let (heads, hs, cols) = (2, 6, 3);
        let meta: Vec<f32> = (0..heads * hs * cols).map(|v| v as f32).collect();
        let mut hf = vec![0.0; meta.len()];
        for h in 0..heads {
            for j in 0..hs / 2 {
                for p in 0..2 {
                    let m = (h * hs + 2 * j + p) * cols;
                    let f = (h * hs + p * hs / 2 + j) * cols;
                    hf[f..f + cols].copy_from_slice(&meta[m..m + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&hf, heads, hs, cols), meta);
    }
}
