//! Training data: `read_corpus` on a text, JSONL or Q/A file, then `Dataset::build` with the bundled
//! default tokenizer and batches from both splits.
//!
//! Input: a format byte (low 2 bits: auto, text, jsonl, qa; bit 2: name the file `.jsonl` rather than
//! `.txt`), a sequence-length byte (1 + b % 64 tokens), a validation-split byte (b % 50 percent), then the
//! file.

use crate::Bytes;
use enigma_train::bpe::Bpe;
use enigma_train::data::{read_corpus, DataFormat, Dataset};
use enigma_train::vocab::Vocab;
use std::sync::OnceLock;

/// The tokenizer of the model bundled in the repository: real merges, chat markers.
const DEFAULT_TOKENIZER: &[u8] = include_bytes!("../../host-tools/models/builtin/tokenizer.json");

fn vocab() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| {
        let path = crate::scratch_file("default-tokenizer.json", DEFAULT_TOKENIZER);
        // The bundled tokenizer is part of the repository: failing to read it is a broken checkout.
        Vocab::from_bpe(Bpe::load(&path).expect("host-tools/models/builtin/tokenizer.json"))
    })
}

pub fn check(data: &[u8]) {
    let mut b = Bytes::new(data);
    let sel = b.u8();
    let t = 1 + (b.u8() % 64) as usize;
    let val_split = (b.u8() % 50) as f64 / 100.0;
    let format = match sel & 3 {
        0 => DataFormat::Auto,
        1 => DataFormat::Text,
        2 => DataFormat::Jsonl,
        _ => DataFormat::Qa,
    };
    let name = if sel & 4 != 0 {
        "data.jsonl"
    } else {
        "data.txt"
    };
    let path = crate::scratch_file(name, b.rest);
    let Ok(corpus) = read_corpus(&[path], format) else {
        return;
    };
    let v = vocab();
    let Ok(ds) = Dataset::build(&corpus, v, t, val_split) else {
        return;
    };
    for split in [&ds.train, &ds.val] {
        if split.is_empty() {
            continue;
        }
        let n = split.len().min(3);
        let batch = split.batch(0..n);
        assert_eq!(batch.tokens.len(), n * t);
        assert_eq!(batch.targets.len(), n * t);
        assert_eq!(batch.mask.len(), n * t);
        let vs = v.vocab_size();
        assert!(batch
            .tokens
            .iter()
            .chain(&batch.targets)
            .all(|&i| (i as usize) < vs));
        let h = split.unigram_entropy(vs);
        assert!(h.is_finite() && h >= 0.0, "entropy {h}");
        // The last example too: windows end exactly at the stream's end.
        let _ = split.batch(split.len() - 1..split.len());
    }
}
