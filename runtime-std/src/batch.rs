//! The batched engine: many sequences decoded in one forward step over a paged KV pool, prompts prefilled in
//! chunks between other sequences' decode rows, and the KV blocks of prompts seen before reused.
//!
//! A [`Batcher`] owns the model (through a [`ModelHost`], which keeps the mapping alive), the block pool and a
//! scheduler thread. [`Batcher::submit`] queues a prompt and returns a [`Stream`] of token ids; the caller
//! decodes them to text. Each step the scheduler runs every decoding sequence's next row and, up to
//! [`BatchConfig::prefill_tokens`], chunks of prompts still being read, all through one
//! [`Transformer::step`], so every weight matrix is read once for all of them.
//!
//! KV memory is a pool of blocks of [`BatchConfig::block`] positions. A sequence is admitted when the blocks
//! it can use (prompt and `max_tokens`, clipped to the context) are free, and holds exactly those: one long
//! conversation can take most of the pool while short ones take little. Full blocks are indexed by a hash
//! chain of their tokens (vLLM's prefix caching): a new prompt that starts with the same whole blocks shares
//! them, reference-counted, and prefills only the rest; blocks of finished sequences stay indexed in an LRU
//! until their room is needed. See docs/DESIGN.md.

use crate::hardware::{ensure_available, try_zeroed};
use crate::{Backend, ModelFile};
use enigma_core::kernels::f16;
use enigma_core::{Config, KvCache, KvType, ProbIndex, Sampler, SamplerConfig, Scratch, SeqRows};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Whatever keeps a model's bytes alive (a loaded model module, a test's file) and the backend that runs it.
pub trait ModelHost: Send + Sync + 'static {
    fn file(&self) -> &ModelFile;
    fn backend(&self) -> &Backend;
}

/// A model file and a backend, held together: the simplest [`ModelHost`].
pub struct Hosted {
    pub file: ModelFile,
    pub backend: Backend,
}

impl ModelHost for Hosted {
    fn file(&self) -> &ModelFile {
        &self.file
    }
    fn backend(&self) -> &Backend {
        &self.backend
    }
}

/// How much the engine holds and does at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Positions of KV cache in the pool, every sequence's together (rounded up to whole blocks); `0` picks
    /// a context for each of `max_sequences` (at least four), less when the machine's free memory is short.
    pub kv_tokens: usize,
    /// Positions per block.
    pub block: usize,
    /// Sequences decoded together at most; more wait in the queue.
    pub max_sequences: usize,
    /// Prompt tokens prefilled per step, all prompts together: a long prompt is read in chunks of at most
    /// this many between the decode rows of sequences already running.
    pub prefill_tokens: usize,
    /// Requests waiting for room at most; more are refused ([`BatchError::Busy`]).
    pub max_queued: usize,
    pub kv: KvType,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            kv_tokens: 0,
            block: 16,
            max_sequences: 16,
            prefill_tokens: crate::session::DEFAULT_CHUNK,
            max_queued: 256,
            kv: KvType::F32,
        }
    }
}

/// One request's limits and sampling.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Most tokens to generate; clipped to what the context leaves after the prompt.
    pub max_tokens: usize,
    /// Its own seed: the same seed gives the same tokens whatever else is in the batch.
    pub sampler: SamplerConfig,
    /// `Some(n)`: each token carries its log-probability and the `n` most likely alternatives (`n` at most
    /// [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
    /// End at EOS (or BOS, which starts a new document), as `enigma run` does.
    pub stop_on_eos: bool,
}

/// The most alternatives a token's [`Logprobs`] lists (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token's log-probability under the model's distribution (the raw logits' log-softmax, before
/// temperature and truncation) and the most likely alternatives, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    pub chosen: f32,
    pub top: Vec<(u32, f32)>,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    EndOfText,
    /// `max_tokens`, or the context, was reached.
    Length,
    Cancelled,
}

/// The last record of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from cached blocks.
    pub cached_tokens: usize,
    pub generated: usize,
}

/// What a [`Stream`] yields: tokens as they are sampled, then `Done` (or `Failed`).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token { id: u32, logprobs: Option<Logprobs> },
    Done(Summary),
    Failed(String),
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The request can never run (a prompt longer than the context, a token outside the vocabulary).
    #[error("{0}")]
    Invalid(String),
    /// No room now: the queue is full.
    #[error("{0}")]
    Busy(String),
    /// The engine stopped (its thread ended).
    #[error("{0}")]
    Stopped(String),
}

/// Sequences and KV blocks, now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Sequences being prefilled or decoded.
    pub active: usize,
    /// Requests waiting for room.
    pub queued: usize,
    /// Blocks held by sequences.
    pub blocks_used: usize,
    /// Blocks no sequence holds that keep a cached prefix (reused or evicted when needed).
    pub blocks_cached: usize,
    pub blocks_total: usize,
}

/// The tokens of one request, as they come. Dropping it (or [`Stream::cancel`]) ends the sequence and frees
/// its blocks at the next step, whether it is queued, prefilling or decoding.
pub struct Stream {
    rx: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Stream {
    /// The next event, waiting for it; `None` once the engine has stopped without finishing the stream.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `wait`: `Ok(None)` when nothing came in time, `Err` when the engine
    /// stopped without finishing the stream.
    pub fn recv_timeout(&self, wait: Duration) -> Result<Option<Event>, BatchError> {
        match self.rx.recv_timeout(wait) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn stopped() -> BatchError {
    BatchError::Stopped("the batched engine stopped (see the error it printed)".into())
}

/// State the callers and the scheduler share.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    queue: VecDeque<Request>,
    load: Load,
    /// Set by `Batcher`'s drop (stop) or by the scheduler as it ends (no one serves the queue any more).
    stop: bool,
    dead: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A submitted request waiting for room.
struct Request {
    prompt: Vec<u32>,
    params: Params,
    /// `max_tokens` clipped to the context: at least 1.
    max_new: usize,
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
}

/// The engine: submit prompts from any thread; one scheduler thread runs them together.
pub struct Batcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    context: usize,
    vocab: u32,
    max_queued: usize,
}

impl Batcher {
    /// Sizes the pool and the scratch for `host`'s model, checks the memory, allocates it (fallibly) and
    /// starts the scheduler.
    pub fn new(host: Arc<dyn ModelHost>, cfg: BatchConfig) -> crate::Result<Self> {
        let invalid = |s: &str| crate::Error::Invalid(format!("batched engine: {s}"));
        if cfg.block == 0 || cfg.max_sequences == 0 || cfg.prefill_tokens == 0 {
            return Err(invalid(
                "block, max_sequences and prefill_tokens must be at least 1",
            ));
        }
        let full = host
            .file()
            .model(host.backend().kernels())?
            .transformer
            .config;
        let per_token = 2 * full.n_layers as u64 * full.kv_dim() as u64 * cfg.kv.bytes();
        let kv_tokens = match cfg.kv_tokens {
            0 => auto_kv_tokens(full.seq_len as usize, cfg.max_sequences, per_token),
            n => n,
        };
        let blocks = kv_tokens.div_ceil(cfg.block).max(1);
        let pool_tokens = blocks.saturating_mul(cfg.block);
        let mut c = full;
        c.seq_len = c
            .seq_len
            .min(u32::try_from(pool_tokens).unwrap_or(u32::MAX));
        let rows = cfg.max_sequences.saturating_add(cfg.prefill_tokens);
        let kv_len = KvCache::paged_len(&c, cfg.block, blocks);
        let scratch_len = Scratch::batch_len(&c, rows, cfg.max_sequences);
        let v = c.vocab_size as usize;
        let bytes = (kv_len as u64)
            .saturating_mul(cfg.kv.bytes())
            .saturating_add(scratch_len as u64 * 4)
            .saturating_add((v * (size_of::<ProbIndex>() + 8) * (cfg.max_sequences + 1)) as u64);
        ensure_available(
            bytes,
            &format!(
                "a KV pool of {} tokens ({} blocks of {}) for {} sequences",
                pool_tokens, blocks, cfg.block, cfg.max_sequences
            ),
        )?;
        let kv = match cfg.kv {
            KvType::F32 => KvStore::F32(try_zeroed(kv_len, "the KV pool")?),
            KvType::F16 => KvStore::F16(try_zeroed(kv_len, "the KV pool")?),
        };
        let bufs = Buffers {
            kv,
            scratch: try_zeroed(scratch_len, "the batch scratch")?,
            probs: try_zeroed(v, "the sampler's candidates")?,
            logits: try_zeroed(v * cfg.max_sequences, "the batch logits")?,
            work: try_zeroed(v, "the sampler's logits")?,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                load: Load {
                    blocks_total: blocks,
                    ..Load::default()
                },
                stop: false,
                dead: false,
            }),
            wake: Condvar::new(),
        });
        let sh = shared.clone();
        let context = c.seq_len as usize;
        let thread = std::thread::Builder::new()
            .name("enigma-batch".into())
            .spawn(move || {
                let _dead = Dead(&sh);
                if let Err(e) = schedule(&*host, &sh, cfg, blocks, context, bufs) {
                    eprintln!("enigma: the batched engine stopped: {e}");
                }
            })
            .map_err(|e| invalid(&format!("cannot start the scheduler thread: {e}")))?;
        Ok(Batcher {
            shared,
            thread: Some(thread),
            context,
            vocab: c.vocab_size,
            max_queued: cfg.max_queued,
        })
    }

    /// Tokens of context a sequence can use (the model's, or the pool's when smaller).
    pub fn context(&self) -> usize {
        self.context
    }

    /// Queues `prompt` (token ids, BOS included when wanted). Refuses at once a prompt that can never run
    /// ([`BatchError::Invalid`]) and, when [`BatchConfig::max_queued`] requests already wait,
    /// [`BatchError::Busy`].
    pub fn submit(&self, prompt: Vec<u32>, params: Params) -> Result<Stream, BatchError> {
        if prompt.is_empty() {
            return Err(BatchError::Invalid("the prompt is empty".into()));
        }
        if let Some(t) = prompt.iter().find(|&&t| t >= self.vocab) {
            return Err(BatchError::Invalid(format!(
                "token id {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        if prompt.len() >= self.context {
            return Err(BatchError::Invalid(format!(
                "the prompt is {} tokens and the context holds {} (prompt and reply together)",
                prompt.len(),
                self.context
            )));
        }
        let max_new = params.max_tokens.min(self.context - prompt.len());
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stream = Stream {
            rx,
            cancel: cancel.clone(),
            shared: self.shared.clone(),
        };
        if max_new == 0 {
            let _ = tx.send(Event::Done(Summary {
                finish: Finish::Length,
                prompt_tokens: prompt.len(),
                cached_tokens: 0,
                generated: 0,
            }));
            return Ok(stream);
        }
        let mut st = self.shared.lock();
        if st.dead || st.stop {
            return Err(stopped());
        }
        if st.queue.len() >= self.max_queued {
            return Err(BatchError::Busy(format!(
                "{} requests are already waiting; try again later",
                st.queue.len()
            )));
        }
        st.queue.push_back(Request {
            prompt,
            params,
            max_new,
            tx,
            cancel,
        });
        st.load.queued = st.queue.len();
        drop(st);
        self.shared.wake.notify_all();
        Ok(stream)
    }

    /// Sequences and blocks now.
    pub fn load(&self) -> Load {
        self.shared.lock().load
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks the engine dead when the scheduler ends, however it ends, and drops what was queued so each
/// waiting stream sees the end.
struct Dead<'a>(&'a Shared);

impl Drop for Dead<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.dead = true;
        st.queue.clear();
    }
}

/// A whole context for each of `sequences` (at least four), so that with every slot busy none waits for
/// room, or what a quarter of the free memory holds when that is less (at least one context: a model that
/// cannot hold one is refused by the memory check that follows). The pool is zeroed by the allocator, so
/// the blocks short requests never reach cost address space, not memory.
fn auto_kv_tokens(context: usize, sequences: usize, bytes_per_token: u64) -> usize {
    let want = context.saturating_mul(sequences.max(4));
    match crate::hardware::ram().1 {
        Some(free) if bytes_per_token > 0 => {
            let fits = (free / 4 / bytes_per_token).min(usize::MAX as u64) as usize;
            want.min(fits).max(context)
        }
        _ => want,
    }
}

enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Everything the scheduler computes in, allocated before it starts.
struct Buffers {
    kv: KvStore,
    /// `Scratch::batch_len` elements
    scratch: Vec<f32>,
    /// (V) the sampler's candidates
    probs: Vec<ProbIndex>,
    /// (max_sequences, V) the logits of one step's rows that asked
    logits: Vec<f32>,
    /// (V) one row's logits as the sampler changes them
    work: Vec<f32>,
}

/// A full block's content, for the prefix index: the hash chain up to it and its own tokens (compared on a
/// hit, so a hash collision can never hand out another text's keys).
struct CachedBlock {
    hash: u64,
    tokens: Vec<u32>,
}

/// The KV pool's block bookkeeping: reference counts, free blocks, and the prefix index with its LRU.
struct Blocks {
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// Blocks never written or whose content was dropped.
    free: Vec<u32>,
    /// The content of each indexed block.
    cached: Vec<Option<CachedBlock>>,
    index: HashMap<u64, u32>,
    /// Indexed blocks no sequence holds, oldest release first, and each one's key in it.
    lru: BTreeMap<u64, u32>,
    lru_key: Vec<u64>,
    tick: u64,
}

impl Blocks {
    fn new(n: usize) -> Self {
        Blocks {
            refs: vec![0; n],
            // Popped from the end: block 0 first.
            free: (0..n as u32).rev().collect(),
            cached: (0..n).map(|_| None).collect(),
            index: HashMap::new(),
            lru: BTreeMap::new(),
            lru_key: vec![0; n],
            tick: 0,
        }
    }

    /// Blocks that can be given out now (free, or cached and unheld).
    fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// The indexed block with chain hash `hash` and these `tokens`.
    fn lookup(&self, hash: u64, tokens: &[u32]) -> Option<u32> {
        let &b = self.index.get(&hash)?;
        let c = self.cached[b as usize].as_ref()?;
        (c.hash == hash && c.tokens == tokens).then_some(b)
    }

    /// One more holder of block `b`.
    fn hold(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.lru.remove(&self.lru_key[i]);
        }
        self.refs[i] += 1;
    }

    /// A block to write: a free one, else the least recently released cached one (its entry dropped).
    fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(c) = self.cached[b as usize].take() {
                    self.index.remove(&c.hash);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn release(&mut self, b: u32) {
        let i = b as usize;
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.cached[i].is_some() {
            self.tick += 1;
            self.lru_key[i] = self.tick;
            self.lru.insert(self.tick, b);
        } else {
            self.free.push(b);
        }
    }

    /// Indexes full block `b` (unless an identical one already is: two sequences with the same prompt
    /// computed at once keep one entry).
    fn register(&mut self, b: u32, hash: u64, tokens: &[u32]) {
        if self.index.contains_key(&hash) || self.cached[b as usize].is_some() {
            return;
        }
        self.index.insert(hash, b);
        self.cached[b as usize] = Some(CachedBlock {
            hash,
            tokens: tokens.to_vec(),
        });
    }
}

/// The hash chain of full blocks: a block's hash covers every token before it too.
fn chain(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// A sequence the scheduler runs.
struct Seq {
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
    params: Params,
    sampler: Sampler,
    /// The prompt, then each generated token as it is sampled.
    tokens: Vec<u32>,
    prompt_len: usize,
    cached: usize,
    /// Tokens whose keys and values are in the cache.
    fed: usize,
    /// Its blocks, all reserved at admission.
    table: Vec<u32>,
    /// The hash chain of its full blocks, in order; those are indexed (or were already).
    hashes: Vec<u64>,
    max_new: usize,
    generated: usize,
}

impl Seq {
    fn summary(&self, finish: Finish) -> Summary {
        Summary {
            finish,
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached,
            generated: self.generated,
        }
    }

    /// Rows it runs this step (`budget`: prompt tokens it may read).
    fn rows(&self, budget: usize) -> usize {
        if self.fed < self.prompt_len {
            (self.prompt_len - self.fed).min(budget)
        } else {
            1
        }
    }
}

/// Admits `r` if its blocks (beyond a cached prefix) can be had now; gives it back otherwise.
fn admit(
    r: Request,
    blocks: &mut Blocks,
    block: usize,
    softmax: fn(&mut [f32]),
) -> Result<Seq, Request> {
    let len = r.prompt.len();
    // Whole blocks only, and never the last prompt token: its logits are computed, so it runs.
    let mut hashes = Vec::new();
    let mut hit = Vec::new();
    let mut h = 0u64;
    for part in r.prompt[..len - 1].chunks_exact(block) {
        h = chain(h, part);
        match blocks.lookup(h, part) {
            Some(b) => {
                hit.push(b);
                hashes.push(h);
            }
            None => break,
        }
    }
    // Positions it can fill: the prompt and every generated token but the last, which is never fed.
    let need = (len + r.max_new - 1).div_ceil(block);
    let unheld_hits = hit
        .iter()
        .filter(|&&b| blocks.refs[b as usize] == 0)
        .count();
    if need - hit.len() > blocks.available() - unheld_hits {
        return Err(r);
    }
    for &b in &hit {
        blocks.hold(b);
    }
    let mut table = hit;
    while table.len() < need {
        // Counted above, so there is one.
        let Some(b) = blocks.alloc() else { break };
        table.push(b);
    }
    let mut sampler = Sampler::new(r.params.sampler).with_softmax(softmax);
    for &t in &r.prompt {
        sampler.observe(t);
    }
    let cached = hashes.len() * block;
    Ok(Seq {
        tx: r.tx,
        cancel: r.cancel,
        params: r.params,
        sampler,
        tokens: r.prompt,
        prompt_len: len,
        cached,
        fed: cached,
        table,
        hashes,
        max_new: r.max_new,
        generated: 0,
    })
}

/// Ends `s`: gives its blocks back and leaves its stream's last event in `outbox`, sent once the load
/// without it is published (so a caller that has seen its stream end sees the blocks back).
fn retire(s: Seq, blocks: &mut Blocks, last: Event, outbox: &mut Vec<(Sender<Event>, Event)>) {
    for &b in &s.table {
        blocks.release(b);
    }
    outbox.push((s.tx, last));
}

/// The scheduler: admits, steps, samples, until the batcher is dropped.
fn schedule(
    host: &dyn ModelHost,
    sh: &Shared,
    cfg: BatchConfig,
    n_blocks: usize,
    context: usize,
    mut bufs: Buffers,
) -> crate::Result<()> {
    let backend = host.backend();
    let model = host.file().model(backend.kernels())?;
    let (eos, bos) = (model.tokenizer.eos(), model.tokenizer.bos());
    let t = model.transformer.with_context(context);
    let c: Config = t.config;
    let v = c.vocab_size as usize;
    let mut cache = match &mut bufs.kv {
        KvStore::F32(b) => KvCache::paged(&mut b[..], &c, cfg.block, n_blocks)?,
        KvStore::F16(b) => KvCache::paged(&mut b[..], &c, cfg.block, n_blocks)?,
    };
    let rows = cfg.max_sequences + cfg.prefill_tokens;
    let mut scratch = Scratch::batch(&mut bufs.scratch, &c, rows, cfg.max_sequences)?;
    let mut blocks = Blocks::new(n_blocks);
    let mut running: Vec<Seq> = Vec::new();
    let mut outbox: Vec<(Sender<Event>, Event)> = Vec::new();
    loop {
        // Cancelled sequences give their blocks back before anything new is admitted.
        let mut i = 0;
        while i < running.len() {
            if running[i].cancel.load(Ordering::Relaxed) {
                let s = running.remove(i);
                let last = Event::Done(s.summary(Finish::Cancelled));
                retire(s, &mut blocks, last, &mut outbox);
            } else {
                i += 1;
            }
        }
        {
            let mut st = sh.lock();
            loop {
                if st.stop {
                    for s in running.drain(..) {
                        let last = Event::Failed("the engine is shutting down".into());
                        retire(s, &mut blocks, last, &mut outbox);
                    }
                    for (tx, last) in outbox.drain(..) {
                        let _ = tx.send(last);
                    }
                    return Ok(());
                }
                while running.len() < cfg.max_sequences {
                    let Some(r) = st.queue.pop_front() else { break };
                    if r.cancel.load(Ordering::Relaxed) {
                        let _ = r.tx.send(Event::Done(Summary {
                            finish: Finish::Cancelled,
                            prompt_tokens: r.prompt.len(),
                            cached_tokens: 0,
                            generated: 0,
                        }));
                        continue;
                    }
                    match admit(
                        r,
                        &mut blocks,
                        cfg.block,
                        model.transformer.kernels().softmax,
                    ) {
                        Ok(s) => running.push(s),
                        Err(r) => {
                            // First come, first served: the head waits for blocks to be released.
                            st.queue.push_front(r);
                            break;
                        }
                    }
                }
                st.load = Load {
                    active: running.len(),
                    queued: st.queue.len(),
                    blocks_used: n_blocks - blocks.available(),
                    blocks_cached: blocks.lru.len(),
                    blocks_total: n_blocks,
                };
                for (tx, last) in outbox.drain(..) {
                    let _ = tx.send(last);
                }
                if !running.is_empty() {
                    break;
                }
                st = sh.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }

        // This step's rows: every decoding sequence's next token, then prompt chunks up to the budget.
        let mut budget = cfg.prefill_tokens;
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (i, s) in running.iter().enumerate() {
            if s.fed >= s.prompt_len {
                order.push((i, 1));
            }
        }
        for (i, s) in running.iter().enumerate() {
            if s.fed < s.prompt_len && budget > 0 {
                let n = s.rows(budget);
                budget -= n;
                order.push((i, n));
            }
        }
        let seqs: Vec<SeqRows<'_>> = order
            .iter()
            .map(|&(i, n)| {
                let s = &running[i];
                SeqRows {
                    tokens: &s.tokens[s.fed..s.fed + n],
                    start: s.fed,
                    table: &s.table,
                    logits: s.fed + n >= s.prompt_len,
                }
            })
            .collect();
        // Which sequence's logits are in each row of `bufs.logits`.
        let mut scored: Vec<usize> = Vec::new();
        let logits = &mut bufs.logits;
        let result = t.step(
            backend.exec(),
            &mut cache,
            &mut scratch,
            &seqs,
            &mut |j, l| {
                let k = scored.len();
                logits[k * v..(k + 1) * v].copy_from_slice(l);
                scored.push(order[j].0);
            },
        );
        drop(seqs);
        if let Err(e) = result {
            // The rows were built from checked requests, so this is a bug; end these sequences, not all.
            let mut failed: Vec<usize> = order.iter().map(|&(i, _)| i).collect();
            // Highest first, so each removal leaves the indices still to remove in place.
            failed.sort_unstable_by(|a, b| b.cmp(a));
            for i in failed {
                let s = running.remove(i);
                let last = Event::Failed(format!("forward step: {e}"));
                retire(s, &mut blocks, last, &mut outbox);
            }
            continue;
        }
        for &(i, n) in &order {
            let s = &mut running[i];
            s.fed += n;
            // Index the blocks this step filled.
            while (s.hashes.len() + 1) * cfg.block <= s.fed {
                let j = s.hashes.len();
                let part = &s.tokens[j * cfg.block..(j + 1) * cfg.block];
                let h = chain(s.hashes.last().copied().unwrap_or(0), part);
                blocks.register(s.table[j], h, part);
                s.hashes.push(h);
            }
        }
        let mut done: Vec<(usize, Event)> = Vec::new();
        for (k, &i) in scored.iter().enumerate() {
            let s = &mut running[i];
            let raw = &bufs.logits[k * v..(k + 1) * v];
            bufs.work.copy_from_slice(raw);
            let id = match s.sampler.sample(&mut bufs.work, &mut bufs.probs) {
                Ok(id) => id,
                Err(e) => {
                    done.push((i, Event::Failed(e.to_string())));
                    continue;
                }
            };
            if s.params.stop_on_eos && (id == eos || id == bos) {
                done.push((i, Event::Done(s.summary(Finish::EndOfText))));
                continue;
            }
            let lp = s
                .params
                .logprobs
                .map(|n| logprobs(raw, id, n.min(MAX_TOP_LOGPROBS)));
            s.generated += 1;
            s.sampler.observe(id);
            s.tokens.push(id);
            if s.tx.send(Event::Token { id, logprobs: lp }).is_err() {
                // Nobody is reading: the stream was dropped.
                s.cancel.store(true, Ordering::Relaxed);
            }
            if s.generated >= s.max_new {
                done.push((i, Event::Done(s.summary(Finish::Length))));
            }
        }
        done.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, last) in done {
            let s = running.remove(i);
            retire(s, &mut blocks, last, &mut outbox);
        }
    }
}

/// `logits`' log-softmax at `id`, and the `n` most likely tokens with theirs, most likely first.
fn logprobs(logits: &[f32], id: u32, n: usize) -> Logprobs {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (t, &l) in logits.iter().enumerate() {
        if top.len() == n && top.last().is_none_or(|&(_, m)| l <= m) {
            continue;
        }
        let at = top.partition_point(|&(_, m)| m >= l);
        top.insert(at, (t as u32, l));
        top.truncate(n);
    }
    Logprobs {
        chosen: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| l - lse),
        top: top.into_iter().map(|(t, l)| (t, l - lse)).collect(),
    }
}
