//! Hugging Face folders written by the pip `safetensors` and `tokenizers` packages (`hf_pip.py` beside this
//! file): our forward pass of the imported model against numpy's forward in the HF layout, and our encoder
//! against `tokenizers`' ids on 1 MB of text.

use enigma_core::model::Serial;
use enigma_core::pretok::{self, Split};
use enigma_core::Tokenizer;
use enigma_models::hf;
use enigma_runtime::{HostSession, ModelFile};
use enigma_testkit::{hf_pip, shared_file};
use serde_json::Value;

/// The corpus the tokenizers are trained on and the ids compared over (its first 1 MB).
const CORPUS: &str = "data/kjv_bible.txt";

struct Folder {
    dir: tempfile::TempDir,
    expected: Value,
}

fn folder(test: &str, kind: &str, dtype: &str) -> Option<Folder> {
    let corpus = shared_file(CORPUS, test)?;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "model",
        dir.path().to_str().unwrap(),
        kind,
        dtype,
        corpus.to_str().unwrap(),
    ];
    hf_pip(test, &args)?;
    let text = std::fs::read_to_string(dir.path().join("expected.json")).unwrap();
    Some(Folder {
        dir,
        expected: serde_json::from_str(&text).unwrap(),
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

/// Every position's logits of `tokens` through our forward pass.
fn logits(file: &ModelFile, tokens: &[u32]) -> Vec<Vec<f32>> {
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    let t = &model.transformer;
    let mut bufs = HostSession::try_new(t, 64).unwrap();
    let (mut cache, mut scratch) = bufs.parts(&t.config).unwrap();
    let mut out = vec![Vec::new(); tokens.len()];
    t.forward_each(&Serial, &mut cache, &mut scratch, tokens, 0, &mut |i, l| {
        out[i] = l.to_vec()
    })
    .unwrap();
    out
}

fn check_logits(f: &Folder, file: &ModelFile) {
    let tokens = ids(&f.expected["ids"]);
    assert!(tokens.len() > 5);
    let ours = logits(file, &tokens);
    let mut worst = 0.0f64;
    for (pos, (row, want)) in ours
        .iter()
        .zip(f.expected["logits"].as_array().unwrap())
        .enumerate()
    {
        let want = want.as_array().unwrap();
        assert_eq!(row.len(), want.len());
        for (i, (a, b)) in row.iter().zip(want).enumerate() {
            let d = (*a as f64 - b.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d <= 1e-4, "position {pos}, logit {i}: ours {a}, numpy {b}");
        }
    }
    eprintln!("largest logit difference against numpy: {worst:.2e}");
}

/// Our ids for each line of the text against `tokenizers`'; where the tokenizer has a regex split, our
/// chunks against its pre-tokenizer's, line by line. Returns (lines, lines with equal ids). Every line also
/// decodes back to itself from `tokenizers`' ids.
fn check_ids(f: &Folder, tok: &Tokenizer<'_>) -> (usize, usize) {
    let lines = f.expected["lines"].as_array().unwrap();
    let (mut whole, mut bytes) = (0, 0);
    for (n, line) in lines.iter().enumerate() {
        let text = line["text"].as_str().unwrap();
        bytes += text.len();
        let want = ids(&line["ids"]);
        let ours = enigma_runtime::tokenize::encode(tok, text, false, false).unwrap();
        whole += usize::from(ours == want);
        if n < 500 {
            // The core's own loop (the firmware's) gives the runtime's ids.
            let mut buf = vec![0u32; Tokenizer::max_tokens(text.len())];
            let k = tok.encode(text, false, false, &mut buf).unwrap();
            assert_eq!(buf[..k], ours[..], "line {n}: the core's encoder");
        }
        if tok.split() != Split::None {
            let theirs: Vec<&str> = line["chunks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            let ours: Vec<&str> = pretok::chunks(text, tok.split()).collect();
            assert_eq!(ours, theirs, "line {n}: the pre-tokenizer's chunks");
        }
        // Decoding: with a dummy prefix, the first token as if after BOS, which drops it; a line that
        // starts with a space got no prefix from `tokenizers`, so it loses that space (as `tokenizers`'
        // own decoder's Strip does).
        let prefix = tok.meta().add_dummy_prefix;
        if prefix && text.starts_with(' ') {
            continue;
        }
        let mut prev = if prefix { tok.bos() } else { u32::MAX };
        let mut out = Vec::new();
        for &id in &want {
            out.extend_from_slice(tok.decode(prev, id));
            prev = id;
        }
        assert_eq!(String::from_utf8_lossy(&out), text, "line {n} decodes back");
    }
    assert!(bytes >= 900_000, "{bytes} bytes of text");
    for t in f.expected["specials"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let ours = enigma_runtime::tokenize::encode(tok, text, false, false).unwrap();
        assert_eq!(
            ours,
            ids(&t["ids"]),
            "{text:?}: added tokens spelled in the text"
        );
        let mut buf = vec![0u32; Tokenizer::max_tokens(text.len())];
        let k = tok.encode(text, false, false, &mut buf).unwrap();
        assert_eq!(buf[..k], ours[..], "{text:?}: the core's encoder");
        // With the special tokens the post-processor adds: BOS in front or not, as `tokenizers` does.
        let with_bos = enigma_runtime::tokenize::encode(tok, text, true, false).unwrap();
        assert_eq!(
            with_bos,
            ids(&t["with_bos"]),
            "{text:?}: with BOS as the vocabulary wants"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| !l["text"].as_str().unwrap().is_ascii()),
        "the text has non-ASCII lines"
    );
    (lines.len(), whole)
}

fn import(f: &Folder, to: enigma_core::kernels::DType) -> ModelFile {
    let bytes = hf::import_dir(f.dir.path(), to).unwrap();
    ModelFile::from_bytes(&bytes, "imported.enigma").unwrap()
}

#[test]
fn a_sharded_f32_llama_with_a_sentencepiece_style_tokenizer_matches_numpy_and_tokenizers() {
    let test =
        "a_sharded_f32_llama_with_a_sentencepiece_style_tokenizer_matches_numpy_and_tokenizers";
    let Some(f) = folder(test, "spm", "f32") else {
        return;
    };
    let file = import(&f, enigma_core::kernels::DType::F32);
    let parsed = file.parse().unwrap();
    let c = *parsed.config();
    assert_eq!((c.dim, c.n_layers, c.n_heads, c.n_kv_heads), (64, 2, 4, 2));
    assert!(!c.tied_classifier);
    let template = parsed.tensor(enigma_models::gguf::KEEP_TEMPLATE).unwrap();
    assert_eq!(
        template.bytes,
        f.expected["template"].as_str().unwrap().as_bytes()
    );
    check_logits(&f, &file);
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    let tok = &model.tokenizer;
    assert_eq!(tok.bos() as u64, f.expected["bos"].as_u64().unwrap());
    assert_eq!(tok.eos() as u64, f.expected["eos"].as_u64().unwrap());
    assert_eq!(tok.meta().byte_fallback, Some(3));
    assert_eq!(tok.split(), Split::None);
    let (lines, whole) = check_ids(&f, tok);
    // Lines starting with a space are where a llama2.c-style prefix (always added) would differ: the
    // Metaspace prefix goes only before text that has none (`tokenizer.prefix_if_unspaced`).
    let leading_space = f.expected["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["text"].as_str().unwrap().starts_with(' '))
        .count();
    eprintln!(
        "{whole} of {lines} lines encode to tokenizers' ids ({leading_space} start with a space)"
    );
    assert!(
        leading_space > 0,
        "the text has lines starting with a space"
    );
    assert_eq!(whole, lines);
}

#[test]
fn a_sharded_f16_tied_llama_with_a_byte_level_tokenizer_matches_numpy_and_tokenizers() {
    let test = "a_sharded_f16_tied_llama_with_a_byte_level_tokenizer_matches_numpy_and_tokenizers";
    let Some(f) = folder(test, "bytelevel", "f16") else {
        return;
    };
    let file = import(&f, enigma_core::kernels::DType::F32);
    assert!(file.parse().unwrap().config().tied_classifier);
    check_logits(&f, &file);
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    assert_eq!(model.tokenizer.split(), Split::Gpt2);
    let (lines, whole) = check_ids(&f, &model.tokenizer);
    eprintln!("{whole} of {lines} lines encode to tokenizers' ids");
    assert_eq!(whole, lines);
    // Quantized, the same folder still imports and runs.
    let q = import(&f, enigma_core::kernels::DType::Q8_0);
    let tokens = ids(&f.expected["ids"]);
    assert!(logits(&q, &tokens)
        .iter()
        .all(|r| r.iter().all(|v| v.is_finite())));
}

#[test]
fn a_sharded_bf16_tied_llama_with_llama_3s_split_matches_numpy_and_tokenizers() {
    let test = "a_sharded_bf16_tied_llama_with_llama_3s_split_matches_numpy_and_tokenizers";
    let Some(f) = folder(test, "llama3", "bf16") else {
        return;
    };
    let file = import(&f, enigma_core::kernels::DType::F32);
    assert!(file.parse().unwrap().config().tied_classifier);
    check_logits(&f, &file);
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    assert_eq!(model.tokenizer.split(), Split::Llama3);
    let (lines, whole) = check_ids(&f, &model.tokenizer);
    eprintln!("{whole} of {lines} lines encode to tokenizers' ids");
    assert_eq!(whole, lines);
    // Quantizing keeps the split: it travels with the vocabulary.
    let (bytes, _) = enigma_runtime::quantize::requantize(
        &file.parse().unwrap(),
        enigma_core::kernels::DType::Q8_0,
    )
    .unwrap();
    let q = ModelFile::from_bytes(&bytes, "q8.enigma").unwrap();
    assert_eq!(
        q.model(enigma_core::kernels::kernels())
            .unwrap()
            .tokenizer
            .split(),
        Split::Llama3
    );
}
