//! The sampler over arbitrary logits and settings: every call returns an id inside the vocabulary, with
//! or without scratch, for any temperature, top-k, top-p, penalty and history.
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
    if crate::known_issue(overflows(&cfg, &logits), "non-finite logits (12.1)") {
        return;
    }
    let n = logits.len();
    let with_scratch = flags & 1 == 0;
    if crate::known_issue(
        empty_nucleus(&cfg, n, with_scratch),
        "top-p keeps no candidate (12.1)",
    ) {
        return;
    }
    let mut s = Sampler::new(cfg);
    for &t in &history {
        s.observe(t);
    }
    let mut scratch = vec![ProbIndex::default(); if with_scratch { n } else { 0 }];
    for _ in 0..3 {
        // A clear error (non-finite logits) is an answer; a panic or an id outside the vocabulary is not.
        let Ok(id) = s.sample(&mut logits.clone(), &mut scratch) else {
            return;
        };
        assert!((id as usize) < n, "sampled {id} of {n} logits with {cfg:?}");
        s.observe(id);
    }
}

/// Whether the logits, after the penalty and the temperature, can stop being finite: the sampler panic of
/// issue 12 point 1 (being fixed on the `hardening` branch). Conservative: any logit that the largest penalty
/// factor and the temperature could push past f32's range.
fn overflows(cfg: &SamplerConfig, logits: &[f32]) -> bool {
    if logits.iter().any(|l| !l.is_finite()) {
        return true;
    }
    // The sampler's own test for greedy (a NaN temperature is not greedy): argmax copes with anything.
    if cfg.temperature <= 0.0 || logits.len() == 1 {
        return false;
    }
    let p = cfg.repetition_penalty;
    let factor = if p == 1.0 || p <= 0.0 {
        1.0
    } else if p.is_nan() {
        return true;
    } else {
        p.max(1.0 / p)
    };
    logits
        .iter()
        .any(|&l| !((l.abs() * factor) / cfg.temperature).is_finite())
}

/// Whether top-p alone could keep no candidate: its pre-filter drops tokens below `(1 - p) / (n - 1)`, and
/// when `p` is at most about `1 / n` that cutoff can exceed every probability (a flat distribution, finite
/// logits), so `cands[..=last]` slices an empty list. The same line as issue 12 point 1's panic, reached
/// without any non-finite value; being fixed on the `hardening` branch. Conservative: `2 / n` leaves room for
/// rounding (the largest probability is at least `1 / n`). A NaN `top_p` makes the cutoff NaN, which no
/// probability passes.
fn empty_nucleus(cfg: &SamplerConfig, n: usize, with_scratch: bool) -> bool {
    let top_k_off = cfg.top_k == 0 || cfg.top_k as usize >= n;
    let greedy = cfg.temperature <= 0.0 || n == 1;
    !greedy
        && with_scratch
        && top_k_off
        && (cfg.top_p.is_nan() || (cfg.top_p > 0.0 && cfg.top_p <= 2.0 / n as f32))
}
