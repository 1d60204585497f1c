//! Timings for `benches/batch_decode.sh` (not a test, not criterion: the script alternates rounds and takes
//! medians, as the other side-by-side scripts do).
//!
//!   batch_decode step MODEL ROWS STEPS THREADS   # one round of ROWS sequences decoded together
//!   batch_decode one MODEL STEPS THREADS KIND    # one round of single-sequence decode, KIND session|batcher
//!
//! `step` prefills ROWS sequences of 16 tokens each into a paged cache (blocks of 16), then times STEPS
//! calls of `Transformer::step` with one decode row per sequence and every row's logits, and prints
//! `ms_per_step ms_per_row`. `one` prints decode tokens per second of a 1-token prompt and STEPS greedy
//! tokens: `session` is `enigma bench`'s loop (a `HostSession`, as `enigma run` decodes), `batcher` the
//! same request through the batched engine as a batch of one, timed from its first token to its last.

use enigma_core::{KvCache, Sampler, SamplerConfig, Scratch, SeqRows};
use enigma_runtime::batch::{BatchConfig, Event, Hosted, Params};
use enigma_runtime::{Backend, Batcher, HostSession, ModelFile};
use std::sync::Arc;
use std::time::Instant;

const BLOCK: usize = 16;
const PROMPT: usize = 16;

fn main() {
    if let Err(e) = run() {
        eprintln!("batch_decode: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize) -> Result<&str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| "usage: batch_decode step MODEL ROWS STEPS THREADS | one MODEL STEPS THREADS session|batcher".into())
}

fn num(args: &[String], i: usize) -> Result<usize, String> {
    arg(args, i)?
        .parse()
        .map_err(|e| format!("argument {i}: {e}"))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let file = ModelFile::open(arg(&args, 2)?).map_err(|e| e.to_string())?;
    match arg(&args, 1)? {
        "step" => step(file, num(&args, 3)?, num(&args, 4)?, num(&args, 5)?),
        "one" => one(file, num(&args, 3)?, num(&args, 4)?, arg(&args, 5)?),
        other => Err(format!("unknown mode {other}")),
    }
}

fn step(file: ModelFile, rows: usize, steps: usize, threads: usize) -> Result<(), String> {
    let backend = Backend::cpu(Some(threads)).map_err(|e| e.to_string())?;
    let m = file.model(backend.kernels()).map_err(|e| e.to_string())?;
    let t = m.transformer.with_context(PROMPT + steps);
    let c = t.config;
    let per_seq = (PROMPT + steps).div_ceil(BLOCK);
    let blocks = rows * per_seq;
    let mut kv = vec![0.0f32; KvCache::paged_len(&c, BLOCK, blocks)];
    let mut cache = KvCache::paged(&mut kv[..], &c, BLOCK, blocks).map_err(|e| e.to_string())?;
    let srows = rows.max(PROMPT);
    let mut sbuf = vec![0.0f32; Scratch::batch_len(&c, srows, rows)];
    let mut scratch = Scratch::batch(&mut sbuf, &c, srows, rows).map_err(|e| e.to_string())?;
    let tables: Vec<Vec<u32>> = (0..rows)
        .map(|r| ((r * per_seq) as u32..((r + 1) * per_seq) as u32).collect())
        .collect();
    let token =
        |r: usize, p: usize| 3 + ((r * 131 + p * 7919) % (c.vocab_size as usize - 3)) as u32;
    let exec = backend.exec();
    for (r, table) in tables.iter().enumerate() {
        let prompt: Vec<u32> = (0..PROMPT).map(|p| token(r, p)).collect();
        let seq = [SeqRows {
            tokens: &prompt,
            start: 0,
            table,
            logits: true,
        }];
        t.step(exec, &mut cache, &mut scratch, &seq, &mut |_, _| {})
            .map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    for s in 0..steps {
        let pos = PROMPT + s;
        let toks: Vec<[u32; 1]> = (0..rows).map(|r| [token(r, pos)]).collect();
        let seqs: Vec<SeqRows<'_>> = toks
            .iter()
            .zip(&tables)
            .map(|(tok, table)| SeqRows {
                tokens: tok,
                start: pos,
                table,
                logits: true,
            })
            .collect();
        t.step(exec, &mut cache, &mut scratch, &seqs, &mut |_, _| {})
            .map_err(|e| e.to_string())?;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0 / steps as f64;
    println!("{ms:.3} {:.3}", ms / rows as f64);
    Ok(())
}

fn one(file: ModelFile, steps: usize, threads: usize, kind: &str) -> Result<(), String> {
    let backend = Backend::cpu(Some(threads)).map_err(|e| e.to_string())?;
    let tps = match kind {
        "session" => {
            let m = file.model(backend.kernels()).map_err(|e| e.to_string())?;
            let t = m.transformer.with_context(1 + steps);
            let mut bufs = HostSession::try_new(&t, 64).map_err(|e| e.to_string())?;
            let mut s = bufs.session(t).map_err(|e| e.to_string())?;
            s.feed(backend.exec(), &[3]).map_err(|e| e.to_string())?;
            let mut sampler = Sampler::new(SamplerConfig::greedy());
            let mut logits = Vec::with_capacity(t.config.vocab_size as usize);
            let started = Instant::now();
            for _ in 0..steps {
                logits.clear();
                logits.extend_from_slice(s.logits());
                let next = sampler
                    .sample(&mut logits, &mut [])
                    .map_err(|e| e.to_string())?;
                s.feed(backend.exec(), &[next]).map_err(|e| e.to_string())?;
            }
            steps as f64 / started.elapsed().as_secs_f64()
        }
        "batcher" => {
            let context = file.parse().map_err(|e| e.to_string())?.config().seq_len as usize;
            let cfg = BatchConfig {
                kv_tokens: context,
                max_sequences: 1,
                ..BatchConfig::default()
            };
            let engine =
                Batcher::new(Arc::new(Hosted { file, backend }), cfg).map_err(|e| e.to_string())?;
            let params = Params {
                max_tokens: steps + 1,
                sampler: SamplerConfig::greedy(),
                logprobs: None,
                stop_on_eos: false,
            };
            let stream = engine.submit(vec![3], params).map_err(|e| e.to_string())?;
            // The first token comes from the prompt's logits; each later one is one decode step.
            let mut first = None;
            let mut n = 0usize;
            while let Some(ev) = stream.recv() {
                match ev {
                    Event::Token { .. } => {
                        first.get_or_insert_with(Instant::now);
                        n += 1;
                    }
                    Event::Done(_) => break,
                    Event::Failed(e) => return Err(e),
                }
            }
            let first = first.ok_or("no token")?;
            (n - 1) as f64 / first.elapsed().as_secs_f64()
        }
        other => return Err(format!("unknown kind {other}")),
    };
    println!("{tps:.2}");
    Ok(())
}
