//! GGUF in and out: llama.cpp's model files (docs/FORMAT.md, "GGUF").
//!
//! - [`read`]: the container, zero-copy over an mmap, split files included;
//! - [`import`]: a Llama-architecture GGUF as a `.enigma` model (what `enigma run -m x.gguf` runs and
//!   `enigma import gguf` writes);
//! - [`write`]: a `.enigma` model as a GGUF v3 file llama.cpp loads (`enigma export gguf`);
//! - here: the tokenizer keys, both ways.

pub mod import;
pub mod read;
pub mod write;

use crate::bpe::{self, NEVER_MERGED, SPM_SPACE};
use anyhow::{bail, ensure, Context, Result};
use enigma_core::pretok::Split;
use enigma_runtime::ModelWriter;
use read::{Array, Gguf, GgufFiles, ValueType};
use std::path::Path;

pub use read::is_gguf;

/// The `.enigma` tensor (u8) that keeps a GGUF file's `tokenizer.chat_template`, so that an export writes
/// it back and a chat front end can find it.
pub const KEEP_TEMPLATE: &str = "gguf.chat_template";

/// The chat template a model file keeps under [`KEEP_TEMPLATE`] (from a GGUF file, or a Hugging Face
/// `tokenizer_config.json`), if it has one.
pub fn chat_template<'a>(file: &enigma_core::EnigmaFile<'a>) -> Result<Option<&'a str>> {
    file.tensor(KEEP_TEMPLATE)
        .map(|t| {
            std::str::from_utf8(t.bytes).context("the model's chat template is not UTF-8 text")
        })
        .transpose()
}

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// `tokenizer.ggml.tokens`, checked to be an array of strings.
pub struct Tokens<'a> {
    pub count: usize,
    pub array: Array<'a>,
}

pub fn tokens<'a>(g: &Gguf<'a>) -> Result<Tokens<'a>> {
    let v = g
        .get("tokenizer.ggml.tokens")
        .context("no tokenizer.ggml.tokens: the file has no vocabulary")?;
    let array = *v
        .as_array()
        .filter(|a| a.elem == ValueType::Str)
        .context("tokenizer.ggml.tokens is not an array of strings")?;
    let count = usize::try_from(array.count).context("the vocabulary is too large")?;
    Ok(Tokens { count, array })
}

/// A numeric array of exactly `n` entries under `key`, if the file has one.
fn numbers(g: &Gguf<'_>, key: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let a = v
        .as_array()
        .with_context(|| format!("{key} is not an array"))?;
    ensure!(
        a.count == n as u64,
        "{key} has {} entries for {n} tokens",
        a.count
    );
    let values = a
        .numbers()
        .with_context(|| format!("{key} is not an array of numbers"))?;
    Ok(Some(values.collect()))
}

fn token_id(g: &Gguf<'_>, key: &str, vocab: u32) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let id = v
        .as_int()
        .and_then(|i| u32::try_from(i).ok())
        .filter(|i| *i < vocab)
        .with_context(|| format!("{key} is {}, not a token of the {vocab}", v.summary()))?;
    Ok(Some(id))
}

/// The vocabulary of a GGUF file for a model of `vocab` tokens.
///
/// - `llama` (SentencePiece): pieces with `▁` as space, the file's scores, SentencePiece's dummy prefix
///   (unless `tokenizer.ggml.add_space_prefix` is false), byte fallback through the `<0xNN>` pieces.
/// - `gpt2` (byte-level BPE): pieces as the bytes their chars stand for, and merge `i` gives the piece it
///   makes the score `-i`, so the core's encoder (highest score first) applies merges in rank order.
///   `tokenizer.ggml.pre` `gpt-2` and `llama-bpe` become the core's GPT-2 and Llama 3 regex splits; llama.cpp's
///   other pre-tokenizers are not applied: ids can then differ from llama.cpp's on text that their split
///   would cut differently; generation from ids is unaffected.
///
/// Control, unknown and unused tokens get a score below the merge floor in both.
pub fn tokenizer(g: &Gguf<'_>, vocab: u32) -> Result<enigma_runtime::TokenizerData> {
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .context("no tokenizer.ggml.model")?;
    let toks = tokens(g)?;
    let n = toks.count;
    ensure!(
        n == vocab as usize,
        "{n} tokens for a vocabulary of {vocab}"
    );
    let types = numbers(g, "tokenizer.ggml.token_type", n)?;
    let special = |i: usize| {
        types.as_ref().is_some_and(|t| {
            let t = t[i] as i32;
            t == token_type::CONTROL || t == token_type::UNKNOWN || t == token_type::UNUSED
        })
    };
    let strings = toks
        .array
        .strings()
        .context("tokenizer.ggml.tokens is not strings")?;
    let mut pieces = Vec::new();
    let mut scores = Vec::new();
    let add_dummy_prefix = match model {
        "llama" => {
            let file_scores = numbers(g, "tokenizer.ggml.scores", n)?;
            for (i, s) in strings.enumerate() {
                let text = String::from_utf8_lossy(s);
                pieces.push(text.replace(SPM_SPACE, " ").into_bytes());
                let score = file_scores.as_ref().map_or(0.0, |s| s[i] as f32);
                ensure!(score.is_finite(), "token {i} has a score that is not a number");
                scores.push(if special(i) { NEVER_MERGED } else { score });
            }
            g.get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true)
        }
        "gpt2" => {
            let inverse = bpe::byte_char_inverse();
            for (i, s) in strings.enumerate() {
                let (bytes, score) =
                    bpe::byte_level_piece(&String::from_utf8_lossy(s), special(i), &inverse);
                pieces.push(bytes);
                scores.push(score);
            }
            if let Some(m) = g.get("tokenizer.ggml.merges") {
                let merges = m
                    .as_array()
                    .and_then(|a| a.strings())
                    .context("tokenizer.ggml.merges is not an array of strings")?;
                let joined = merges.enumerate().map(|(rank, line)| {
                    let line = String::from_utf8_lossy(line);
                    let (a, b) = line
                        .split_once(' ')
                        .with_context(|| format!("merge {rank} ({line:?}) is not two tokens"))?;
                    Ok(bpe::gpt2_join(a, b, &inverse))
                });
                bpe::rank_merges(&pieces, &mut scores, joined, special)?;
            }
            false
        }
        other => bail!(
            "tokenizer.ggml.model '{other}': only 'llama' (SentencePiece) and 'gpt2' (byte-level BPE) vocabularies are read"
        ),
    };
    // llama.cpp's names of the two regex splits the core has; its other pre-tokenizers are not applied.
    let split = match g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
        Some("gpt-2") if model == "gpt2" => Split::Gpt2,
        Some("llama-bpe" | "llama3") if model == "gpt2" => Split::Llama3,
        _ => Split::None,
    };
    let eos = token_id(g, "tokenizer.ggml.eos_token_id", vocab)?;
    let bos = token_id(g, "tokenizer.ggml.bos_token_id", vocab)?;
    let (bos, eos) = match (bos, eos) {
        (Some(b), Some(e)) => (b, e),
        (None, Some(e)) => (e, e),
        // llama2.c's and SentencePiece's defaults.
        (b, None) if model == "llama" && vocab > 2 => (b.unwrap_or(1), 2),
        _ => bail!("no tokenizer.ggml.eos_token_id"),
    };
    Ok(enigma_runtime::TokenizerData {
        pieces,
        scores,
        bos,
        eos,
        pad: token_id(g, "tokenizer.ggml.padding_token_id", vocab)?,
        add_dummy_prefix,
        chat: None,
        split,
        added: Vec::new(),
    })
}

/// A GGUF model file (or the first part of a split one) as a validated in-memory `.enigma` model.
///
/// The GGUF file is mapped and read in place; the `.enigma` image is built in memory (the tensors the
/// kernels multiply are copied as they are, q2_K/q3_K/q5_K are widened to q8_0), so a GGUF model runs on the
/// same code path as every other model, and costs its size in memory once more while it runs.
pub fn load(path: &Path) -> Result<enigma_runtime::ModelFile> {
    with_writer(path, |w| Ok(w.to_model(path)?))
}

/// [`import::to_enigma`] of the file at `path`; errors name it.
pub fn import_file(path: &Path) -> Result<Vec<u8>> {
    with_writer(path, |w| Ok(w.to_bytes()?))
}

/// Runs `f` on the `.enigma` writer of a GGUF file (or split model), errors naming the file.
fn with_writer<T>(path: &Path, f: impl FnOnce(ModelWriter<'_>) -> Result<T>) -> Result<T> {
    let files = GgufFiles::open(path)?;
    let g = files.parse()?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    import::writer(&g, &name)
        .and_then(f)
        .with_context(|| path.display().to_string())
}

/// The model a GGUF file (or split model) holds, read from its keys without touching tensor data.
pub fn peek(path: &Path) -> Result<crate::Peek> {
    let files = GgufFiles::open(path)?;
    let g = files.parse()?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(crate::Peek {
        config: import::config(&g)?,
        source: format!("gguf:{name}"),
        notes: format!("GGUF v{}", g.version),
        created_unix: 0,
        file_len: files.len(),
    })
}

/// What `enigma info` prints about a GGUF file before the model it becomes.
pub fn describe(path: &Path) -> Result<String> {
    use std::fmt::Write;
    let files = GgufFiles::open(path)?;
    let g = files.parse()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "format:      GGUF v{} (alignment {}, {} tensors, {} metadata keys)",
        g.version,
        g.alignment,
        g.tensors.len(),
        g.meta.len()
    );
    for (k, v) in &g.meta {
        let _ = writeln!(s, "  {k:<44} {}", v.summary());
    }
    let mut by_type: Vec<(&str, usize)> = Vec::new();
    for t in &g.tensors {
        match by_type.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some((_, c)) => *c += 1,
            None => by_type.push((t.ty.name(), 1)),
        }
    }
    let types: Vec<String> = by_type.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let _ = writeln!(s, "gguf tensors: {}", types.join(", "));
    Ok(s)
}
