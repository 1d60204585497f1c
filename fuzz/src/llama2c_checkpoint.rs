//! llama2.c checkpoints: `read_checkpoint` on the raw bytes, and for a checkpoint it accepts, the whole
//! import (with a made-up tokenizer of the right size) must give a `.enigma` file that the reader accepts.
//!
//! Input: the checkpoint file as it is.

use enigma_core::config::ParamLayout;
use enigma_models::llama2c;
use enigma_runtime::ModelFile;

pub fn check(data: &[u8]) {
    let Ok(ckpt) = llama2c::read_checkpoint(data) else {
        return;
    };
    let c = ckpt.config;
    let numel: u64 = ParamLayout::new(&c).iter().map(|t| t.numel()).sum();
    assert_eq!(
        ckpt.params.len() as u64,
        numel,
        "parameters vs layout of {c:?}"
    );
    assert!(ckpt.params.iter().all(|v| v.is_finite()));
    let tok = tokenizer_bin(c.vocab_size);
    // The writer may refuse what the reader took (sizes it cannot store): an error is an answer. What it
    // writes, the reader must take.
    if let Ok(bytes) = llama2c::import(data, &tok, "fuzz.bin") {
        if let Err(e) = ModelFile::from_bytes(&bytes, "imported.enigma") {
            panic!("the importer wrote a file the reader refuses: {e}");
        }
    }
}

/// A llama2.c `tokenizer.bin` of `v` distinct pieces.
pub fn tokenizer_bin(v: u32) -> Vec<u8> {
    let mut out = 8u32.to_le_bytes().to_vec();
    for i in 0..v {
        let piece = format!("t{i}");
        out.extend_from_slice(&(-(i as f32)).to_le_bytes());
        out.extend_from_slice(&(piece.len() as i32).to_le_bytes());
        out.extend_from_slice(piece.as_bytes());
    }
    out
}
