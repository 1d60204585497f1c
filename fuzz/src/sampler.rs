//! The sampler over arbitrary logits and settings: for finite logits every call returns an id inside the
//! vocabulary, with or without scratch, for any temperature, top-k, top-p, penalty and history; for logits
//! with a NaN or an infinity, every call is an error.
//!
//! Input: temperature (f32), top_k (u32), top_p (f32), repetition penalty (f32), repeat_last_n (u32), seed
//! (u64), a history length byte and that many u32 tokens, a flags byte (bit 0: give no scratch), then the
//! logits as f32 (at least one: a model's vocabulary is never empty).

use crate::Bytes;
use enigma_core::{ProbIndex, Sampler, SamplerConfig};

pub fn check(data: &[u8]) {
    let mut b = Bytes::new(data);
    let cfg = SamplerConfig {
        temperature: b.f32(),
        top_k: b.u32(),
        top_p: b.f32(),
        repetition_penalty: b.f32(),
        repeat_last_n: b.u32(),
        seed: b.u64(),
    };
    let history: Vec<u32> = (0..b.u8()).map(|_| b.u32()).collect();
    let flags = b.u8();
    let logits: Vec<f32> = b
        .rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if logits.is_empty() {
        return;
    }
    let n = logits.len();
    let with_scratch = flags & 1 == 0;
    let mut s = Sampler::new(cfg);
    for &t in &history {
        s.observe(t);
    }
    let mut scratch = vec![ProbIndex::default(); if with_scratch { n } else { 0 }];
    let finite = logits.iter().all(|l| l.is_finite());
    for _ in 0..3 {
        // Non-finite logits get a clear error (issue 12 point 1); finite ones always get a token, whatever the
        // settings; a panic or an id outside the vocabulary is never an answer.
        let id = match s.sample(&mut logits.clone(), &mut scratch) {
            Ok(id) => id,
            Err(e) if !finite => {
                let _ = e.to_string();
                return;
            }
            Err(e) => panic!("finite logits refused: {e} with {cfg:?}"),
        };
        assert!(finite, "sampled {id} from non-finite logits with {cfg:?}");
        assert!((id as usize) < n, "sampled {id} of {n} logits with {cfg:?}");
        s.observe(id);
    }
}
