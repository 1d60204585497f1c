//! A Hugging Face `tokenizer.json` (the `tokenizers` library's file) with a BPE model, as the core's
//! vocabulary ([`TokenizerData`]), and the chat template of `tokenizer_config.json`.
//!
//! Two families are read, the two Llama-family models use:
//! - **byte-level** (GPT-2, Llama 3): a `ByteLevel` pre-tokenizer; pieces are written in GPT-2's byte
//!   stand-ins and become the bytes they stand for;
//! - **SentencePiece-style** (Llama 2): a `Metaspace` pre-tokenizer, or a normalizer that prepends `▁` and
//!   replaces spaces by it; `▁` becomes a space, the prepended `▁` is the core's dummy prefix, and
//!   `byte_fallback` uses the `<0x00>`..`<0xFF>` pieces.
//!
//! Merges become scores (`-rank`, [`crate::bpe::rank_merges`]), so the core's loop applies them in rank
//! order, as the GGUF importer does for `gpt2` vocabularies. The regex split of a `ByteLevel` (with
//! `use_regex`) or a `Split` by GPT-2's or Llama 3's regex is kept as the tokenizer's [`Split`]. Differences
//! from `tokenizers` (docs/FORMAT.md, section 12): added tokens are matched in the text as written (their `lstrip`, `rstrip`,
//! `single_word` and `normalized` flags are not read).

use crate::bpe::{self, NEVER_MERGED, SPM_SPACE};
use anyhow::{bail, ensure, Context, Result};
use enigma_core::pretok::Split;
use enigma_runtime::TokenizerData;
use serde_json::Value;
use std::collections::HashMap;

/// Which of the two families a `tokenizer.json` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ByteLevel,
    SentencePiece,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ByteLevel => "byte-level BPE",
            Kind::SentencePiece => "SentencePiece-style BPE",
        }
    }
}

/// The parts of a `tokenizer.json` the import uses.
pub struct HfTokenizer {
    pub kind: Kind,
    pub data: TokenizerData,
    /// Every token's text as the file writes it (added tokens included), by id: BOS/EOS named by text in
    /// `tokenizer_config.json` are found here.
    pub ids: HashMap<String, u32>,
    /// The special token the post-processor puts before a single text (`TemplateProcessing`, as Llama's
    /// `<s>` or `<|begin_of_text|>`); `None` when it adds none (no post-processor, or GPT-2's `ByteLevel`).
    pub leading: Option<String>,
    /// Text already starting with a space gets no dummy prefix (the pre-tokenizer's rule, not a
    /// normalizer's `Prepend`): the writer's [`enigma_runtime::ModelWriter::prefix_if_unspaced`].
    pub prefix_if_unspaced: bool,
}

/// How a tokenizer puts the dummy prefix (`▁` or a space) in front of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    Never,
    /// A normalizer's `Prepend`: every text, as SentencePiece does.
    Always,
    /// Metaspace and ByteLevel(`add_prefix_space`): only text not already starting with a space.
    IfUnspaced,
}

/// [`HfTokenizer::leading`] of `tokenizer.json`.
fn leading_special(j: &Value) -> Option<String> {
    let mut procs = Vec::new();
    flatten(j.get("post_processor")?, "processors", &mut procs);
    let single = procs
        .iter()
        .find(|p| type_of(p) == "TemplateProcessing")?
        .get("single")?
        .as_array()?;
    // Only what comes before the text itself (`$A`, a `Sequence` piece) counts.
    let first = single.first()?.get("SpecialToken")?;
    first.get("id").and_then(Value::as_str).map(str::to_string)
}

/// The entries of a pre-tokenizer or normalizer, a `Sequence` flattened.
fn flatten<'a>(v: &'a Value, list_key: &str, out: &mut Vec<&'a Value>) {
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for item in v
                .get(list_key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                flatten(item, list_key, out);
            }
        }
        Some(_) => out.push(v),
        None => {}
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The regexes of `Split` pre-tokenizers the core cuts text by ([`enigma_core::pretok`]), as
/// `tokenizer.json` writes them.
const SPLITS: [(&str, Split); 2] = [
    (
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        Split::Gpt2,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        Split::Llama3,
    ),
];

/// The family, how the dummy prefix is added, and the split, from the normalizer and pre-tokenizer.
fn kind(j: &Value) -> Result<(Kind, Prefix, Split)> {
    let mut pre = Vec::new();
    if let Some(p) = j.get("pre_tokenizer") {
        flatten(p, "pretokenizers", &mut pre);
    }
    let mut norm = Vec::new();
    if let Some(n) = j.get("normalizer") {
        flatten(n, "normalizers", &mut norm);
    }
    let mut spm = false;
    let mut prefix = Prefix::Never;
    for n in &norm {
        match type_of(n) {
            "Prepend" if n.get("prepend").and_then(Value::as_str) == Some(SPM_SPACE) => {
                spm = true;
                prefix = Prefix::Always;
            }
            "Replace"
                if n.pointer("/pattern/String").and_then(Value::as_str) == Some(" ")
                    && n.get("content").and_then(Value::as_str) == Some(SPM_SPACE) =>
            {
                spm = true
            }
            // Unicode normalization changes nothing in text that is already NFC.
            "NFC" => {}
            other => bail!("tokenizer.json: normalizer '{other}' is not supported"),
        }
    }
    let mut byte_level = None;
    let mut splits = Vec::new();
    for p in &pre {
        match type_of(p) {
            "ByteLevel" => {
                byte_level = Some(
                    p.get("add_prefix_space")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                );
                if p.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                    splits.push(Split::Gpt2);
                }
            }
            "Metaspace" => {
                ensure!(
                    p.get("replacement").and_then(Value::as_str) == Some(SPM_SPACE),
                    "tokenizer.json: a Metaspace pre-tokenizer whose replacement is not '{SPM_SPACE}'"
                );
                spm = true;
                let adds = match p.get("prepend_scheme").and_then(Value::as_str) {
                    Some(scheme) => scheme != "never",
                    None => p
                        .get("add_prefix_space")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                };
                if adds && prefix == Prefix::Never {
                    prefix = Prefix::IfUnspaced;
                }
            }
            "Split" => {
                let pattern = p.pointer("/pattern/Regex").and_then(Value::as_str);
                let split = SPLITS
                    .iter()
                    .find(|(re, _)| Some(*re) == pattern)
                    .map(|(_, s)| *s)
                    .with_context(|| {
                        format!(
                            "tokenizer.json: a Split pre-tokenizer by {}: only GPT-2's and Llama 3's regexes are supported",
                            p.get("pattern").map_or("nothing".into(), |v| v.to_string())
                        )
                    })?;
                let behavior = p.get("behavior").and_then(Value::as_str).unwrap_or("");
                ensure!(
                    behavior == "Isolated"
                        && !p.get("invert").and_then(Value::as_bool).unwrap_or(false),
                    "tokenizer.json: a Split pre-tokenizer with behavior '{behavior}' (only Isolated, not inverted, is supported)"
                );
                splits.push(split);
            }
            other => bail!("tokenizer.json: pre-tokenizer '{other}' is not supported"),
        }
    }
    ensure!(
        splits.len() <= 1,
        "tokenizer.json: two regex splits one after the other are not supported"
    );
    let split = splits.first().copied().unwrap_or(Split::None);
    match (byte_level, spm) {
        (Some(_), true) => {
            bail!("tokenizer.json: both a ByteLevel and a Metaspace (▁) step: not a known family")
        }
        (Some(p), false) => Ok((
            Kind::ByteLevel,
            if p { Prefix::IfUnspaced } else { Prefix::Never },
            split,
        )),
        (None, true) if split == Split::None => Ok((Kind::SentencePiece, prefix, Split::None)),
        (None, true) => bail!("tokenizer.json: a regex split in a SentencePiece-style tokenizer is not supported"),
        (None, false) => bail!(
            "tokenizer.json: neither a ByteLevel nor a Metaspace (▁) step: only byte-level and SentencePiece-style BPE are read"
        ),
    }
}

/// A merge as its two token strings: `"a b"` (older files) or `["a", "b"]`.
fn merge_pair(m: &Value, rank: usize) -> Result<(&str, &str)> {
    match m {
        Value::String(s) => s.split_once(' '),
        Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
        _ => None,
    }
    .with_context(|| format!("tokenizer.json: merge {rank} is not two tokens"))
}

/// Reads `tokenizer.json`'s text for a model of `vocab` tokens (ids the file does not use get a placeholder
/// piece that no text encodes to).
pub fn parse(text: &str, vocab: u32) -> Result<HfTokenizer> {
    let j: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("tokenizer.json is not JSON: {e}"))?;
    let model = j.get("model").context("tokenizer.json has no model")?;
    let ty = type_of(model);
    ensure!(
        ty == "BPE",
        "tokenizer.json: model type '{ty}': only BPE is read"
    );
    let (kind, prefix, split) = kind(&j)?;
    let n = vocab as usize;
    let mut texts: Vec<Option<String>> = vec![None; n];
    let mut special = vec![false; n];
    let mut put = |id: &Value, content: &str, is_special: bool| -> Result<usize> {
        let i = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < n)
            .with_context(|| {
                format!("tokenizer.json: token {content:?} has id {id}, outside the model's {vocab} tokens")
            })?;
        texts[i] = Some(content.to_string());
        special[i] |= is_special;
        Ok(i)
    };
    let entries = model
        .get("vocab")
        .and_then(Value::as_object)
        .context("tokenizer.json: model.vocab is not an object")?;
    for (piece, id) in entries {
        put(id, piece, false)?;
    }
    let mut added = Vec::new();
    for (k, t) in j
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .with_context(|| format!("tokenizer.json: added token {k} has no content"))?;
        let id = t.get("id").unwrap_or(&Value::Null);
        ensure!(
            !content.is_empty(),
            "tokenizer.json: added token {k} is empty"
        );
        // Added tokens are matched whole by `tokenizers`, never built by merges.
        added.push(put(id, content, true)? as u32);
    }
    let inverse = bpe::byte_char_inverse();
    let mut pieces = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut ids = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        let Some(t) = t else {
            pieces.push(format!("<|unused {i}|>").into_bytes());
            scores.push(NEVER_MERGED);
            continue;
        };
        ids.insert(t.clone(), i as u32);
        let (bytes, score) = match kind {
            Kind::ByteLevel => bpe::byte_level_piece(t, special[i], &inverse),
            Kind::SentencePiece => {
                let single = !special[i] && t.chars().count() == 1;
                let piece = if special[i] {
                    t.clone()
                } else {
                    t.replace(SPM_SPACE, " ")
                };
                (piece.into_bytes(), if single { 0.0 } else { NEVER_MERGED })
            }
        };
        pieces.push(bytes);
        scores.push(score);
    }
    let merges = model
        .get("merges")
        .map(|m| {
            m.as_array()
                .context("tokenizer.json: model.merges is not a list")
        })
        .transpose()?
        .map_or(&[][..], |m| m.as_slice());
    let joined = merges.iter().enumerate().map(|(rank, m)| {
        let (a, b) = merge_pair(m, rank)?;
        Ok(match kind {
            Kind::ByteLevel => bpe::gpt2_join(a, b, &inverse),
            Kind::SentencePiece => format!("{a}{b}").replace(SPM_SPACE, " ").into_bytes(),
        })
    });
    bpe::rank_merges(&pieces, &mut scores, joined, |i| special[i])?;
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if kind == Kind::SentencePiece && byte_fallback {
        ensure!(
            (0..256).all(|b| ids.contains_key(&format!("<0x{b:02X}>"))),
            "tokenizer.json: byte_fallback without all 256 pieces <0x00>..<0xFF>"
        );
    }
    Ok(HfTokenizer {
        kind,
        data: TokenizerData {
            pieces,
            scores,
            // Set by the caller, which knows config.json's ids.
            bos: 0,
            eos: 0,
            pad: None,
            add_dummy_prefix: prefix != Prefix::Never,
            chat: None,
            split,
            added: {
                added.sort_unstable();
                added.dedup();
                added
            },
        },
        leading: leading_special(&j),
        prefix_if_unspaced: prefix == Prefix::IfUnspaced,
        ids,
    })
}

/// A token named in `tokenizer_config.json`: a string, or an object with `content` (an `AddedToken`).
fn named_token<'a>(cfg: &'a Value, key: &str) -> Option<&'a str> {
    let v = cfg.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
}

/// `tokenizer_config.json`'s parts: BOS/EOS by name (where config.json has no ids), and the chat template.
pub struct TokenizerConfig {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub chat_template: Option<String>,
    /// `add_bos_token`, which overrides what the post-processor does (transformers rebuilds it from this).
    pub add_bos: Option<bool>,
}

pub fn parse_config(text: &str) -> Result<TokenizerConfig> {
    let j: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("tokenizer_config.json is not JSON: {e}"))?;
    ensure!(j.is_object(), "tokenizer_config.json is not a JSON object");
    let chat_template = match j.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // Several named templates: the default one is the chat template.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_string),
        Some(other) => bail!("tokenizer_config.json: chat_template is {other}, not a string"),
    };
    Ok(TokenizerConfig {
        bos: named_token(&j, "bos_token").map(str::to_string),
        eos: named_token(&j, "eos_token").map(str::to_string),
        pad: named_token(&j, "pad_token").map(str::to_string),
        chat_template,
        add_bos: j.get("add_bos_token").and_then(Value::as_bool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm() -> Value {
        let mut vocab = serde_json::Map::new();
        for (i, p) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert((*p).into(), i.into());
        }
        for b in 0..256 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        for (i, p) in ["▁", "a", "b", "▁a", "ab", "▁ab"].iter().enumerate() {
            vocab.insert((*p).into(), (259 + i).into());
        }
        serde_json::json!({
            "added_tokens": [{"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": [["▁", "a"], "a b", ["▁a", "b"]], "byte_fallback": true}
        })
    }

    #[test]
    fn sentencepiece_style_pieces_and_ranks() {
        let t = parse(&spm().to_string(), 270).unwrap();
        assert_eq!(t.kind, Kind::SentencePiece);
        assert!(t.data.add_dummy_prefix);
        assert_eq!(t.data.pieces[262], b" a");
        assert_eq!(t.data.scores[259], 0.0);
        assert_eq!(t.data.scores[262], 0.0, "rank 0");
        assert_eq!(t.data.scores[263], -1.0);
        assert_eq!(t.data.scores[264], -2.0);
        assert_eq!(t.data.scores[1], NEVER_MERGED);
        // Ids the file does not use are placeholders.
        assert_eq!(t.data.pieces[269], b"<|unused 269|>");
        assert_eq!(t.data.meta().byte_fallback, Some(3));
        // A Metaspace prepends only to text without a leading `▁`; a normalizer's Prepend, to all.
        assert!(t.prefix_if_unspaced);
        let mut j = spm();
        j["pre_tokenizer"] = Value::Null;
        j["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let t = parse(&j.to_string(), 270).unwrap();
        assert!(t.data.add_dummy_prefix && !t.prefix_if_unspaced);
        j["pre_tokenizer"] = spm()["pre_tokenizer"].clone();
        j["pre_tokenizer"]["prepend_scheme"] = "never".into();
        j["normalizer"] = Value::Null;
        let t = parse(&j.to_string(), 270).unwrap();
        assert!(!t.data.add_dummy_prefix && !t.prefix_if_unspaced);
    }

    #[test]
    fn byte_level_pieces_are_bytes() {
        let j = serde_json::json!({
            "added_tokens": [{"id": 4, "content": "<|end|>", "special": true}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLITS[1].0}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
            "model": {"type": "BPE", "vocab": {"Ġ": 0, "a": 1, "Ġa": 2, "Ã©": 3}, "merges": ["Ġ a", "Ã ©"]}
        });
        let t = parse(&j.to_string(), 5).unwrap();
        assert_eq!(t.kind, Kind::ByteLevel);
        assert_eq!(t.data.split, Split::Llama3);
        assert!(!t.data.add_dummy_prefix);
        assert_eq!(t.data.pieces[0], b" ");
        assert_eq!(t.data.pieces[2], b" a");
        assert_eq!(t.data.pieces[3], "é".as_bytes());
        assert_eq!(t.data.scores[3], -1.0);
        assert_eq!(t.data.pieces[4], b"<|end|>");
        assert_eq!(t.ids["<|end|>"], 4);
    }

    #[test]
    fn hostile_files_are_one_line_errors() {
        let err = |j: &Value, vocab: u32| {
            let e = format!("{:#}", parse(&j.to_string(), vocab).err().unwrap());
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert!(err(&spm(), 100).contains("outside the model's 100 tokens"));
        let mut j = spm();
        j["model"]["type"] = "WordPiece".into();
        assert!(err(&j, 270).contains("only BPE"));
        let mut j = spm();
        j["model"]["merges"] = serde_json::json!([["a"]]);
        assert!(err(&j, 270).contains("merge 0 is not two tokens"));
        let mut j = spm();
        j["pre_tokenizer"] = Value::Null;
        assert!(err(&j, 270).contains("neither a ByteLevel nor a Metaspace"));
        let mut j = spm();
        j["pre_tokenizer"] = serde_json::json!({"type": "Split", "pattern": {"Regex": "x"}});
        assert!(err(&j, 270).contains("only GPT-2's and Llama 3's regexes"));
        let mut j = spm();
        j["normalizer"] = serde_json::json!({"type": "Lowercase"});
        assert!(err(&j, 270).contains("normalizer 'Lowercase'"));
        let mut j = spm();
        j["model"]["vocab"]["<0x41>"] = 9999.into();
        assert!(err(&j, 270).contains("outside"));
        let mut j = spm();
        j["model"]["vocab"]
            .as_object_mut()
            .unwrap()
            .remove("<0x41>");
        assert!(err(&j, 270).contains("byte_fallback without"));
        let mut j = spm();
        j["model"]["vocab"] = serde_json::json!([1]);
        assert!(err(&j, 270).contains("not an object"));
        assert!(format!("{:#}", parse("{", 3).err().unwrap()).contains("not JSON"));
        assert!(parse_config(r#"{"chat_template": 5}"#).is_err());
    }

    #[test]
    fn chat_templates_plain_and_named() {
        let c = parse_config(
            r#"{"chat_template": "{{ x }}", "bos_token": {"content": "<s>"}, "eos_token": "</s>"}"#,
        )
        .unwrap();
        assert_eq!(c.chat_template.as_deref(), Some("{{ x }}"));
        assert_eq!(
            (c.bos.as_deref(), c.eos.as_deref()),
            (Some("<s>"), Some("</s>"))
        );
        let c = parse_config(r#"{"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]}"#).unwrap();
        assert_eq!(c.chat_template.as_deref(), Some("d"));
    }
}
