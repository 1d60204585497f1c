//! llama2.c tokenizers: `read_tokenizer`, then what the importer does with the result (the `.enigma`
//! writer, then the reader and both encoders over what it wrote).
//!
//! Input: the vocabulary size as a u32 LE (what the checkpoint's header would say), then the file.

use crate::Bytes;
use enigma_core::config::Config;
use enigma_core::Tokenizer;
use enigma_models::llama2c;
use enigma_runtime::{ModelFile, ModelWriter};

/// The vocabulary sizes a checkpoint can bring: `Config::validate` refuses more than 2^22.
const MAX_VOCAB: u32 = 1 << 22;

pub fn check(data: &[u8]) {
    let mut b = Bytes::new(data);
    let vocab = b.u32().min(MAX_VOCAB);
    let Ok(tok) = llama2c::read_tokenizer(b.rest, vocab) else {
        return;
    };
    assert_eq!(tok.pieces.len(), vocab as usize);
    assert_eq!(tok.scores.len(), vocab as usize);
    // The smallest model that carries this vocabulary.
    let config = Config {
        dim: 2,
        hidden_dim: 2,
        n_layers: 1,
        n_heads: 1,
        n_kv_heads: 1,
        vocab_size: vocab,
        seq_len: 8,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    let n = enigma_core::ParamLayout::new(&config)
        .iter()
        .map(|t| t.numel() as usize)
        .sum();
    let mut w = ModelWriter::new(config, tok);
    let params = vec![0.5f32; n];
    if w.f32_params(&params).is_err() {
        return;
    }
    // The writer may refuse a vocabulary (too long in all, say); that is an answer, not a finding.
    let Ok(bytes) = w.to_bytes() else {
        return;
    };
    let mf = match ModelFile::from_bytes(&bytes, "imported.enigma") {
        Ok(mf) => mf,
        Err(e) => panic!("the writer wrote a file the reader refuses: {e}"),
    };
    let Ok(file) = mf.parse() else {
        return;
    };
    let t = match Tokenizer::from_file(&file) {
        Ok(t) => t,
        Err(e) => panic!("the writer wrote a tokenizer the reader refuses: {e}"),
    };
    let text = crate::text_of(&b.rest[b.rest.len().saturating_sub(40)..], 40);
    let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
    let core = t
        .encode(&text, true, false, &mut out)
        .map(|n| out[..n].to_vec());
    let fast = enigma_runtime::tokenize::encode(&t, &text, true, false);
    match (core, fast) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the two encoders disagree on {text:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("one encoder failed: core {a:?}, runtime {b:?}"),
    }
}
