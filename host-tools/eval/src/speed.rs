//! `enigma bench`: prompt-processing and generation speed of a model, and how close they come to this
//! machine's memory bandwidth (decode reads every weight once per token) and FMA peak (prefill is
//! matrix-matrix work). Both limits are measured here, on this machine, in the same run.

use anyhow::{bail, Result};
use enigma_core::generate::Session;
use enigma_core::{KvType, Sampler, SamplerConfig};
use enigma_runtime::{Backend, HostSession, Model};
use rayon::prelude::*;
use std::time::Instant;

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Read bandwidth in bytes/s with `threads` threads: a wrapping integer sum over a buffer much larger than
/// any cache (integer adds vectorise freely, so the loop waits on memory, not on arithmetic).
pub fn read_bandwidth(threads: usize, rounds: usize) -> f64 {
    // 512 MiB of u64, on huge pages where the OS has them, as the weights are loaded (see
    // `enigma_runtime::load`).
    let words = 64 << 20;
    let Ok(mut mem) = enigma_runtime::load::huge_buffer(words * 8) else {
        return 0.0;
    };
    let buf: &mut [u64] = bytemuck::cast_slice_mut(&mut mem[..]);
    for (i, w) in buf.iter_mut().enumerate() {
        *w = i as u64;
    }
    let buf = &*buf;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let Ok(pool) = pool else { return 0.0 };
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let sum: u64 = pool.install(|| {
                buf.par_chunks(words / threads.max(1) + 1)
                    .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                    .reduce(|| 0, u64::wrapping_add)
            });
            std::hint::black_box(sum);
            (words * 8) as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut rates)
}

/// Bytes of weights one decode step reads: every matrix once (the embedding only one row, unless tied,
/// when it is the classifier).
pub fn weight_bytes_per_token(model: &Model<'_>) -> u64 {
    let tied = model.transformer.config.tied_classifier;
    let read_whole =
        |name: &str| !name.starts_with("tokenizer.") && (tied || name != "token_embedding");
    model
        .file
        .tensors()
        .filter(|t| read_whole(t.name))
        .map(|t| t.bytes.len() as u64)
        .sum()
}

/// Floating-point operations per prompt token of a prefill of `prompt_len` tokens: two per weight of every
/// layer for each token, and the classifier's once for the whole prompt (only the last token's logits are
/// computed; counting them per token overstated prefill's share of the FMA peak, past 100% for a 15M model).
/// Attention's own products are left out: small beside the weights at bench lengths.
pub fn prefill_flops_per_token(model: &Model<'_>, prompt_len: usize) -> f64 {
    let c = &model.transformer.config;
    let seq = c.seq_len as usize;
    let table = c.vocab_size as u64 * c.dim as u64;
    // `param_count` holds the embedding table once, plus a separate classifier when it is not tied.
    let tables = if c.tied_classifier { table } else { 2 * table };
    let layers = c.param_count().saturating_sub(tables) as f64;
    2.0 * (layers + table as f64 / prompt_len.clamp(1, seq.max(2) - 1) as f64)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchResult {
    /// The lengths measured: those asked for, shortened to fit the model's context.
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prompt_tokens_per_s: f64,
    pub gen_tokens_per_s: f64,
    /// The element type of the KV cache both were measured with.
    pub kv_cache: KvType,
}

/// Medians over `rounds` of prefilling `prompt_len` tokens and of generating `gen_len` tokens greedily,
/// with a KV cache of `kv` elements.
pub fn run_model(
    model: &Model<'_>,
    backend: &Backend,
    prompt_len: usize,
    gen_len: usize,
    rounds: usize,
    kv: KvType,
) -> Result<BenchResult> {
    let c = &model.transformer.config;
    let seq = c.seq_len as usize;
    if seq < 2 {
        bail!("the model's context of {seq} token leaves no room to generate after a prompt");
    }
    let prompt_len = prompt_len.clamp(1, seq - 1);
    let gen_len = gen_len.clamp(1, seq - prompt_len);
    let transformer = model.transformer.with_context(prompt_len + gen_len);
    // A prompt of ordinary tokens (skipping the specials at the bottom of most vocabularies).
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| 3 + (i * 7919) % (c.vocab_size - 3).max(1))
        .collect();
    let mut bufs = HostSession::try_with_kv(&transformer, 64, kv)?;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let mut session: Session<'_, '_> = bufs.session(transformer)?;
        let t = Instant::now();
        session.feed(backend.exec(), &prompt)?;
        pp.push(prompt_len as f64 / t.elapsed().as_secs_f64());

        let mut session = bufs.session(transformer)?;
        session.feed(backend.exec(), &prompt[..1])?;
        let mut sampler = Sampler::new(SamplerConfig::greedy());
        let t = Instant::now();
        let mut n = 0usize;
        // One buffer for the sampler's copy of the logits, not an allocation per token (at stories260K's
        // speed the allocator would show up in the timing).
        let mut logits = Vec::with_capacity(c.vocab_size as usize);
        for _ in 0..gen_len {
            logits.clear();
            logits.extend_from_slice(session.logits());
            let next = sampler.sample(&mut logits, &mut [])?;
            session.feed(backend.exec(), &[next])?;
            n += 1;
        }
        tg.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(BenchResult {
        prompt_tokens: prompt_len,
        gen_tokens: gen_len,
        prompt_tokens_per_s: median(&mut pp),
        gen_tokens_per_s: median(&mut tg),
        kv_cache: kv,
    })
}
