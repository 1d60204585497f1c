//! The runtime's O(n log n) encoder gives exactly the ids of the core's llama2.c merge loop.

use enigma_core::config::Config;
use enigma_core::Tokenizer;
use enigma_models::llama2c::read_tokenizer;
use enigma_runtime::{ModelFile, ModelWriter};
use enigma_testkit::{shared_bytes, shared_text};
use proptest::prelude::*;
use std::sync::OnceLock;

/// A model file carrying the llama2.c tokenizer at `rel`, with a minimal random network around it.
fn model_with_tokenizer(rel: &str, vocab: u32) -> Option<ModelFile> {
    let bytes = shared_bytes(rel, "encode_long")?;
    let tok = read_tokenizer(&bytes, vocab).expect("llama2.c tokenizer");
    let config = Config {
        dim: 8,
        hidden_dim: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: vocab,
        seq_len: 8,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    let n = enigma_core::ParamLayout::new(&config).total_numel() as usize;
    let mut w = ModelWriter::new(config, tok);
    w.f32_params(&vec![0.01; n]).expect("params");
    Some(ModelFile::from_bytes(&w.to_bytes().expect("write"), rel).expect("valid"))
}

/// The model files of the llama2.c tokenizers that are there, built once (the property test would otherwise
/// rebuild, and report missing, each of them per case).
fn models() -> &'static [ModelFile] {
    static M: OnceLock<Vec<ModelFile>> = OnceLock::new();
    M.get_or_init(|| {
        [("models/tok512.bin", 512), ("models/tokenizer.bin", 32000)]
            .into_iter()
            .filter_map(|(rel, vocab)| model_with_tokenizer(rel, vocab))
            .collect()
    })
}

fn slow(tok: &Tokenizer<'_>, text: &str) -> Vec<u32> {
    let mut ids = vec![0; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, true, true, &mut ids).expect("encode");
    ids.truncate(n);
    ids
}

fn check(file: &ModelFile, text: &str) -> Result<(), TestCaseError> {
    let model = file.model(enigma_core::kernels::kernels()).expect("model");
    let fast =
        enigma_runtime::tokenize::encode(&model.tokenizer, text, true, true).expect("encode");
    prop_assert_eq!(fast, slow(&model.tokenizer, text), "text {:?}", text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn fast_encode_equals_the_merge_loop(text in "(?s)[ a-zA-Z.,'\n]{0,80}|.{0,40}") {
        for file in models() {
            check(file, &text)?;
        }
    }
}

#[test]
fn fast_encode_equals_the_merge_loop_on_a_long_story() {
    let Some(text) = shared_text(
        "data/tinystories_sample_197k.txt",
        "fast_encode_on_a_long_story",
    ) else {
        return;
    };
    // The quadratic loop is the reference; keep its input short enough for a test.
    let text: String = text.chars().take(3000).collect();
    for file in models() {
        check(file, &text).expect("same ids");
    }
}
