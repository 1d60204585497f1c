//! The batched engine on a small random model: many sequences stepped together give each one the tokens it
//! gets alone, prompts are chunked between decode rows, cached prefixes are reused, cancelling frees the
//! blocks, and every limit is an error rather than a hang or a panic.

use enigma_core::config::{Config, ParamLayout};
use enigma_core::{KvType, SamplerConfig, Transformer};
use enigma_runtime::batch::{BatchConfig, BatchError, Event, Finish, Hosted, Params, Summary};
use enigma_runtime::{Backend, Batcher, HostSession, ModelFile, ModelWriter, TokenizerData};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config() -> Config {
    Config {
        dim: 32,
        hidden_dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 64,
        seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: false,
    }
}

fn file() -> ModelFile {
    file_of(config())
}

fn file_of(c: Config) -> ModelFile {
    let tok = TokenizerData {
        pieces: (0..c.vocab_size)
            .map(|i| format!("t{i} ").into_bytes())
            .collect(),
        scores: vec![0.0; c.vocab_size as usize],
        bos: 1,
        eos: 2,
        pad: None,
        add_dummy_prefix: false,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    };
    let n = ParamLayout::new(&c).total_numel() as usize;
    let mut w = ModelWriter::new(c, tok);
    w.f32_params(&enigma_testkit::XorShift::new(9).fill(n, -0.5, 0.5))
        .unwrap();
    ModelFile::from_bytes(&w.to_bytes().unwrap(), "random").unwrap()
}

fn engine(cfg: BatchConfig) -> Batcher {
    engine_of(file(), cfg)
}

fn engine_of(file: ModelFile, cfg: BatchConfig) -> Batcher {
    let host = Hosted {
        file,
        backend: Backend::cpu(Some(2)).unwrap(),
    };
    Batcher::new(Arc::new(host), cfg).unwrap()
}

/// The model with a context of 1024: sequences long enough to be caught while they run.
fn long_engine(cfg: BatchConfig) -> Batcher {
    let c = Config {
        seq_len: 1024,
        ..config()
    };
    engine_of(file_of(c), cfg)
}

fn small() -> BatchConfig {
    BatchConfig {
        kv_tokens: 1024,
        block: 16,
        max_sequences: 4,
        prefill_tokens: 8,
        max_queued: 64,
        kv: KvType::F32,
    }
}

fn greedy(max_tokens: usize) -> Params {
    Params {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        logprobs: None,
        stop_on_eos: false,
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7 + salt * 13 + 3) % 64)
        .collect()
}

/// `prompt` decoded alone with today's single-sequence path (a contiguous cache, `enigma run`'s loop).
fn alone(prompt: &[u32], n: usize, cfg: SamplerConfig) -> Vec<u32> {
    let f = file();
    let backend = Backend::cpu(Some(1)).unwrap();
    let m = f.model(backend.kernels()).unwrap();
    let t: Transformer<'_> = m.transformer;
    let mut bufs = HostSession::with_kv(&t, 64, KvType::F32);
    let mut s = bufs.session(t).unwrap();
    let mut sampler = enigma_core::Sampler::new(cfg);
    let mut probs = vec![enigma_core::ProbIndex::default(); 64];
    s.feed(backend.exec(), prompt).unwrap();
    for &p in prompt {
        sampler.observe(p);
    }
    let mut out = Vec::new();
    while out.len() < n {
        let mut l = s.logits().to_vec();
        let id = sampler.sample(&mut l, &mut probs).unwrap();
        sampler.observe(id);
        out.push(id);
        if out.len() < n {
            s.feed(backend.exec(), &[id]).unwrap();
        }
    }
    out
}

/// Every token of a stream, and its summary.
fn collect(stream: &enigma_runtime::batch::Stream) -> (Vec<u32>, Summary) {
    let mut ids = Vec::new();
    loop {
        match stream.recv_timeout(Duration::from_secs(60)).unwrap() {
            Some(Event::Token { id, .. }) => ids.push(id),
            Some(Event::Done(s)) => return (ids, s),
            Some(Event::Failed(e)) => panic!("failed: {e}"),
            None => panic!("no event in 60 s"),
        }
    }
}

fn wait_for(b: &Batcher, what: &str, ok: impl Fn(&enigma_runtime::batch::Load) -> bool) {
    let since = Instant::now();
    while !ok(&b.load()) {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{what}: {:?}",
            b.load()
        );
        std::thread::yield_now();
    }
}

/// Prompts of different lengths submitted from several threads at once, more than run together, with
/// prompts read in chunks of 8 beside other sequences' decode rows: each gets the greedy tokens it gets
/// alone.
#[test]
fn batched_greedy_equals_each_prompt_alone() {
    let b = engine(small());
    let prompts: Vec<Vec<u32>> = [3usize, 40, 17, 1, 60, 9, 33]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(n, i as u32))
        .collect();
    let got: Vec<(Vec<u32>, Summary)> = std::thread::scope(|s| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let b = &b;
                s.spawn(move || collect(&b.submit(p.clone(), greedy(20)).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, (ids, sum)) in prompts.iter().zip(got) {
        assert_eq!(
            ids,
            alone(p, 20, SamplerConfig::greedy()),
            "prompt of {}",
            p.len()
        );
        assert_eq!(sum.finish, Finish::Length);
        assert_eq!((sum.prompt_tokens, sum.generated), (p.len(), 20));
    }
    wait_for(&b, "all blocks back", |l| {
        l.blocks_used == 0 && l.active == 0
    });
}

/// A seeded sampled sequence gives the same tokens whatever else is in the batch.
#[test]
fn a_seed_gives_the_same_tokens_in_any_batch() {
    let b = engine(small());
    let cfg = SamplerConfig {
        temperature: 1.0,
        top_p: 0.9,
        seed: 5,
        ..SamplerConfig::default()
    };
    let params = Params {
        sampler: cfg,
        ..greedy(24)
    };
    let p = prompt(12, 4);
    let (first, _) = collect(&b.submit(p.clone(), params.clone()).unwrap());
    assert_eq!(first, alone(&p, 24, cfg));
    let others: Vec<_> = (0..3)
        .map(|i| b.submit(prompt(30, i), greedy(30)).unwrap())
        .collect();
    let (again, _) = collect(&b.submit(p, params).unwrap());
    assert_eq!(again, first);
    drop(others);
}

/// A prompt that starts with whole blocks of an earlier sequence (its prompt and its reply: the previous
/// turn of a chat) reuses them, says how many tokens it did not compute, and gets the same tokens.
#[test]
fn a_cached_prefix_is_reused_with_the_same_tokens() {
    let b = engine(small());
    let p = prompt(40, 1);
    let (reply, first) = collect(&b.submit(p.clone(), greedy(10)).unwrap());
    assert_eq!(first.cached_tokens, 0);
    // The next turn: the whole conversation so far and a few more tokens.
    let mut turn = p.clone();
    turn.extend(&reply);
    turn.extend(prompt(5, 2));
    let (ids, sum) = collect(&b.submit(turn.clone(), greedy(12)).unwrap());
    // 40 prompt + 9 fed reply tokens = 49 positions computed: three whole blocks of 16.
    assert_eq!(sum.cached_tokens, 48);
    assert_eq!(ids, alone(&turn, 12, SamplerConfig::greedy()));
    // The same prompt again: everything but its last block-and-a-bit comes from the cache.
    let (ids, sum) = collect(&b.submit(p.clone(), greedy(10)).unwrap());
    assert_eq!((ids, sum.cached_tokens), (reply, 32));
    // A prompt of exactly whole blocks keeps its last token to compute.
    let (_, sum) = collect(&b.submit(p[..32].to_vec(), greedy(2)).unwrap());
    assert_eq!(sum.cached_tokens, 16);
    // The finished sequences' blocks stay, unheld, in the cache.
    wait_for(&b, "cached and unheld", |l| {
        l.active == 0 && l.blocks_used == 0 && l.blocks_cached > 0
    });
}

/// Cached blocks make room when the pool is short: a pool that holds one sequence serves many different
/// ones in turn.
#[test]
fn cached_blocks_are_evicted_when_room_is_needed() {
    let b = engine(BatchConfig {
        kv_tokens: 128,
        ..small()
    });
    for i in 0..6 {
        let p = prompt(70, i);
        let (ids, _) = collect(&b.submit(p.clone(), greedy(50)).unwrap());
        assert_eq!(ids, alone(&p, 50, SamplerConfig::greedy()));
    }
}

/// Cancelling in the middle of a long prompt's prefill, or dropping the stream during its decode, gives the
/// blocks back.
#[test]
fn cancelling_frees_the_blocks() {
    // A prompt of 1000 read a token a step: a prefill long enough to be caught in the middle.
    let b = long_engine(BatchConfig {
        prefill_tokens: 1,
        ..small()
    });
    let s = b.submit(prompt(1000, 3), greedy(5)).unwrap();
    wait_for(&b, "prefill under way", |l| {
        l.active == 1 && l.blocks_used > 0
    });
    s.cancel();
    let last = std::iter::from_fn(|| s.recv()).last();
    assert!(
        matches!(
            last,
            Some(Event::Done(Summary {
                finish: Finish::Cancelled,
                generated: 0,
                ..
            }))
        ),
        "{last:?}"
    );
    wait_for(&b, "blocks back after a cancelled prefill", |l| {
        l.active == 0 && l.blocks_used == 0
    });
    let s = b.submit(prompt(10, 4), greedy(500)).unwrap();
    for _ in 0..3 {
        assert!(matches!(s.recv(), Some(Event::Token { .. })));
    }
    drop(s);
    wait_for(&b, "blocks back after a dropped decode", |l| {
        l.active == 0 && l.blocks_used == 0
    });
}

/// A full queue is busy, a request that can never run is invalid, and `max_tokens` is clipped to the
/// context.
#[test]
fn limits_are_errors() {
    let b = long_engine(BatchConfig {
        max_sequences: 1,
        max_queued: 1,
        ..small()
    });
    let running = b.submit(prompt(4, 0), greedy(1000)).unwrap();
    wait_for(&b, "first running", |l| l.active == 1);
    let queued = b.submit(prompt(4, 1), greedy(5)).unwrap();
    assert!(matches!(
        b.submit(prompt(4, 2), greedy(5)),
        Err(BatchError::Busy(_))
    ));
    drop((running, queued));
    wait_for(&b, "both gone", |l| l.active == 0 && l.queued == 0);
    for bad in [vec![], vec![64], prompt(1024, 0), prompt(5000, 0)] {
        assert!(
            matches!(
                b.submit(bad.clone(), greedy(1)),
                Err(BatchError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let (ids, sum) = collect(&b.submit(prompt(1000, 5), greedy(1000)).unwrap());
    assert_eq!((ids.len(), sum.finish), (24, Finish::Length));
    let (ids, sum) = collect(&b.submit(prompt(3, 5), greedy(0)).unwrap());
    assert_eq!((ids.len(), sum.generated), (0, 0));
}

/// Log-probabilities are the raw logits' log-softmax: the greedy token is the most likely, the list is
/// sorted and no probability exceeds one.
#[test]
fn logprobs_rank_the_greedy_token_first() {
    let b = engine(small());
    let s = b
        .submit(
            prompt(8, 6),
            Params {
                logprobs: Some(5),
                ..greedy(6)
            },
        )
        .unwrap();
    let mut n = 0;
    while let Some(Event::Token { id, logprobs }) = s.recv() {
        let lp = logprobs.unwrap();
        assert_eq!(lp.top.len(), 5);
        assert_eq!(lp.top[0].0, id);
        assert_eq!(lp.top[0].1, lp.chosen);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(lp.chosen <= 0.0 && total <= 1.0 + 1e-5);
        n += 1;
    }
    assert_eq!(n, 6);
}
