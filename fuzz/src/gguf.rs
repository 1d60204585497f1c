//! GGUF files: `Gguf::parse` on the raw bytes; for a file it accepts, every metadata value and array is
//! walked, every tensor small enough is widened to f32 (k-quants dequantized), and the import to a
//! `.enigma` model must either refuse with an error or give a file the reader accepts.
//!
//! Input: the GGUF file as it is.

use enigma_models::gguf::{import, read::Gguf};
use enigma_runtime::ModelFile;

/// Tensors above this many elements are only located, not widened: the widening is linear, and a fuzz
/// input's cost should be in its parsing.
const WIDEN_LIMIT: u64 = 1 << 20;

pub fn check(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    for (_, v) in &g.meta {
        let _ = v.summary();
        if let Some(a) = v.as_array() {
            assert!(a.iter().count() as u64 == a.count, "an array iterates its count");
        }
    }
    for t in &g.tensors {
        assert!(t.bytes.len() <= data.len());
        if t.numel() <= WIDEN_LIMIT {
            assert_eq!(t.to_f32().len() as u64, t.numel());
        }
    }
    if let Ok(bytes) = import::to_enigma(&g, "fuzz.gguf") {
        if let Err(e) = ModelFile::from_bytes(&bytes, "imported.enigma") {
            panic!("the GGUF import wrote a file the reader refuses: {e}");
        }
    }
}
