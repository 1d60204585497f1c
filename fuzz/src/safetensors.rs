//! Hugging Face folders: `SafeTensors::parse` on the raw bytes; for a file it accepts, every tensor small
//! enough is widened to f32; then the bytes as the `model.safetensors` of a folder with a tiny Llama
//! `config.json` and `tokenizer.json`, whose import must refuse with an error or give a file the reader
//! accepts. The same bytes, as text, also go to the `config.json` and `tokenizer.json` parsers.
//!
//! Input: the safetensors file as it is (`seeds/safetensors/` holds one of the tiny model).

use enigma_core::kernels::DType;
use enigma_models::hf::{self, safetensors::SafeTensors};
use enigma_runtime::ModelFile;

const WIDEN_LIMIT: u64 = 1 << 20;

/// The tiny model the seed holds: dim 8, 1 layer, 2 heads of 4 (1 KV head), hidden 16, 8 tokens.
const CONFIG: &str = r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 8,
    "max_position_embeddings": 16, "eos_token_id": 7, "tie_word_embeddings": true}"#;
const TOKENIZER: &str = r#"{"added_tokens": [{"id": 7, "content": "<|end|>", "special": true}],
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġa": 4, "c": 5, "Ġab": 6},
              "merges": ["a b", "Ġ a", "Ġa b"]}}"#;

pub fn check(data: &[u8]) {
    if let Ok(st) = SafeTensors::parse(data) {
        for t in &st.tensors {
            assert!(
                t.bytes.len() <= data.len(),
                "a tensor reaches past the file"
            );
            if t.numel() <= WIDEN_LIMIT {
                assert_eq!(t.to_f32().len() as u64, t.numel());
            }
        }
    }
    let weights = crate::scratch_file(hf::WEIGHTS, data);
    crate::scratch_file(hf::CONFIG, CONFIG.as_bytes());
    crate::scratch_file(hf::TOKENIZER, TOKENIZER.as_bytes());
    let dir = weights.parent().expect("the scratch folder");
    if let Ok(bytes) = hf::import_dir(dir, DType::F32) {
        if let Err(e) = ModelFile::from_bytes(&bytes, "imported.enigma") {
            panic!("the Hugging Face import wrote a file the reader refuses: {e}");
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = hf::config::parse(&text, false);
    let _ = hf::tokenizer::parse(&text, 64);
    let _ = hf::tokenizer::parse_config(&text);
}
