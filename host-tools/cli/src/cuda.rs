//! `--device cuda` where it goes beyond `run`: `enigma bench --device cuda`, and the commands that do not run
//! on the GPU yet.

use crate::{BenchArgs, EvalArgs};
use anyhow::{bail, Result};
use enigma_core::KvType;
use enigma_runtime::device::{copy_bandwidth, describe, Gpu, Runner};
use enigma_runtime::{Backend, ModelFile};
use std::time::Instant;

/// `command` runs on the CPU only: with a GPU backend it says so instead of silently using the CPU.
pub(crate) fn cpu_only(backend: &Backend, command: &str) -> Result<()> {
    if backend.gpu().is_some() {
        bail!("--device cuda: `enigma {command}` does not run on the GPU yet (`run`, `eval` and `bench` do); use --device cpu");
    }
    Ok(())
}

/// `enigma eval --device cuda`: the same windows and sums as on the CPU (`enigma_eval::perplexity::score`),
/// each window's logits from the device.
pub(crate) fn eval(args: &EvalArgs, file: &ModelFile, gpu: &Gpu) -> Result<()> {
    let f = file.parse()?;
    let tok = enigma_core::Tokenizer::from_file(&f)?;
    let tokens = enigma_eval::perplexity::tokens_of_file_with(&tok, &args.data)?;
    let seq_len = f.config().seq_len as usize;
    let ctx = args.ctx.unwrap_or(seq_len);
    let mut runner = Runner::load(gpu, &f, args.engine.kv_type()?, ctx.clamp(1, seq_len), 1)?;
    let start = Instant::now();
    let p =
        enigma_eval::perplexity::score(&tokens, ctx, args.max_tokens, seq_len, &mut |w, sink| {
            Ok(runner.forward_each(w, 0, sink)?)
        })?;
    crate::print_perplexity(&p, args, ctx, start.elapsed().as_secs_f64(), &describe(gpu));
    Ok(())
}

/// Sequences of the batched-decode figures.
const BATCHES: [usize; 2] = [8, 32];

/// Decode tok/s at batch 1 against the bandwidth bound (weight bytes per token over the measured copy
/// bandwidth), batched decode at 8 and 32 sequences, and prefill tok/s with its achieved FLOP/s; medians of
/// `rounds`.
pub(crate) fn bench(args: &BenchArgs, file: &ModelFile, gpu: &Gpu, kv: KvType) -> Result<()> {
    let f = file.parse()?;
    let c = *f.config();
    let v = c.vocab_size;
    let prompt: Vec<u32> = (0..args.prompt_tokens.max(1))
        .map(|i| (i as u32 * 7919 + 1) % v)
        .collect();
    let ctx = (prompt.len() + args.gen_tokens + 1).min(c.seq_len as usize);
    if prompt.len() >= ctx {
        bail!(
            "--prompt-tokens {} does not fit the context of {ctx}",
            prompt.len()
        );
    }
    let slots = *BATCHES.iter().max().unwrap_or(&1);
    let mut runner = Runner::load(gpu, &f, kv, ctx, slots)?;
    let bandwidth = copy_bandwidth(gpu)?;
    let bytes = runner.weight_bytes_per_token() as f64;
    let bound = bandwidth / bytes;
    let median = |mut xs: Vec<f64>| enigma_eval::speed::median(&mut xs);
    let rounds = args.rounds.max(1);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        runner.synchronize()?;
        let t0 = Instant::now();
        runner.forward(&prompt, 0)?;
        runner.synchronize()?;
        prefill.push(prompt.len() as f64 / t0.elapsed().as_secs_f64());
        let mut next = runner.greedy(1)?[0];
        let t0 = Instant::now();
        let steps = args.gen_tokens.min(ctx - prompt.len() - 1);
        for i in 0..steps {
            runner.forward(&[next], prompt.len() + i)?;
            next = runner.greedy(1)?[0];
        }
        decode.push(steps as f64 / t0.elapsed().as_secs_f64());
    }
    let mut batched = Vec::new();
    for seqs in BATCHES {
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let steps = args.gen_tokens.min(ctx - 1).max(1);
            runner.synchronize()?;
            let t0 = Instant::now();
            for pos in 0..steps {
                for group in (0..seqs)
                    .collect::<Vec<_>>()
                    .chunks(enigma_runtime::device::MAX_ROWS)
                {
                    let rows: Vec<_> = group
                        .iter()
                        .map(|&s| ((s as u32 * 31 + pos as u32) % v, pos, s))
                        .collect();
                    runner.decode_batch(&rows)?;
                    runner.greedy(rows.len())?;
                }
            }
            rates.push((steps * seqs) as f64 / t0.elapsed().as_secs_f64());
        }
        batched.push((seqs, median(rates)));
    }
    let (prefill, decode) = (median(prefill), median(decode));
    // Multiply-adds of the layers' weight products per token (the classifier runs for the last token only).
    let (d, h) = (c.dim as f64, c.hidden_dim as f64);
    let (q, kvd) = (
        (c.n_heads as usize * c.head_size()) as f64,
        c.kv_dim() as f64,
    );
    let per_token = 2.0 * c.n_layers as f64 * (d * (2.0 * q + 2.0 * kvd) + 3.0 * d * h);
    let flops = per_token * prefill;
    println!("device:      {}", describe(gpu));
    println!("launches:    {}", runner.launches());
    println!(
        "model:       {} ({} weight bytes per token)",
        args.engine.model_name(),
        bytes as u64
    );
    println!(
        "copy bandwidth (device to device, measured): {:.1} GB/s",
        bandwidth / 1e9
    );
    println!(
        "decode:      {decode:.1} tok/s = {:.1}% of the bandwidth bound {bound:.1} tok/s",
        100.0 * decode / bound
    );
    for (seqs, rate) in batched {
        println!("batched decode, {seqs} sequences: {rate:.1} tok/s in all");
    }
    println!(
        "prefill:     {prefill:.1} tok/s over {} tokens = {:.1} TFLOP/s of weight products (compare with the GPU's peak tensor FLOP/s)",
        prompt.len(),
        flops / 1e12
    );
    Ok(())
}
