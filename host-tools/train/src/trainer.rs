//! `enigma train`: the rules, the setup (tokenizer, config, weights, data), the loop, checkpoints and output.

use super::adamw::{AdamW, AdamWConfig, Schedule};
use super::bpe::Bpe;
use super::checkpoint::{self, Checkpoint};
use super::data::{read_corpus, Dataset, Order, Rng};
use super::model::{Batch, Model};
use super::options::{TokenizerTrainArgs, TrainOptions, MAX_SAFE_LR, MIN_LINES};
use super::progress::{self, LogEntry, Progress};
use super::vocab::Vocab;
use anyhow::{bail, ensure, Context, Result};
use enigma_core::config::{Config, ParamLayout, Preset};
use enigma_core::kernels::Kernels;
use enigma_runtime::fsutil::atomic_write;
use enigma_runtime::{Extra, ModelFile, ModelLock, ModelWriter, TokenizerData};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model file a training folder ends with.
pub use enigma_runtime::lock::MODEL_FILE;
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The run's settings and shape, for people and tools that look at the folder.
pub const CONFIG_FILE: &str = "train_config.json";

/// The largest --batch-size and --grad-accum accepted (the activations are checked against memory besides).
pub const MAX_BATCH_SIZE: usize = 1 << 16;
pub const MAX_GRAD_ACCUM: usize = 1 << 12;

/// Default optimizer steps when neither --steps nor --epochs is given.
pub const DEFAULT_STEPS: u64 = 1000;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    /// Unigram entropy of the training targets under the run's tokenizer (nats/token).
    pub unigram_entropy: f64,
    pub tokens_per_s: f64,
    pub model: PathBuf,
}

fn check_rules(o: &TrainOptions) -> Result<()> {
    if let Some(lr) = o.lr {
        ensure!(
            lr.is_finite() && lr > 0.0,
            "--lr must be a positive number, not {lr}"
        );
        if lr > MAX_SAFE_LR && !o.force {
            bail!(
                "--lr {lr} is above {MAX_SAFE_LR}, far above the safe range (1e-4 .. 3e-4 for fine-tuning, up to 1e-3 from scratch); pass --force to use it anyway"
            );
        }
    }
    ensure!(
        (1..=MAX_BATCH_SIZE).contains(&o.batch_size),
        "--batch-size must be between 1 and {MAX_BATCH_SIZE}, not {}",
        o.batch_size
    );
    // Each micro-batch of a step is built before the step runs: the count is memory.
    ensure!(
        (1..=MAX_GRAD_ACCUM).contains(&o.grad_accum),
        "--grad-accum must be between 1 and {MAX_GRAD_ACCUM}, not {}",
        o.grad_accum
    );
    ensure!(
        (0.0..=1.0).contains(&o.min_lr_ratio),
        "--min-lr-ratio must be between 0 and 1"
    );
    if let Some(e) = o.epochs {
        ensure!(
            e.is_finite() && e > 0.0,
            "--epochs must be a positive number"
        );
    }
    // Stopping before any step would rewrite the outputs of a run that trained nothing.
    ensure!(
        o.stop_after != Some(0),
        "--stop-after must be at least 1 (it is the step to stop after)"
    );
    Ok(())
}

/// Parameters drawn as GPT-2 does: N(0, 0.02) for matrices, with the projections that write into the
/// residual stream (wo, w2) scaled by 1/sqrt(2L); norm weights 1.
pub fn init_params(config: &Config, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(config);
    let mut rng = Rng(seed ^ 0x005E_ED0F_1A7E);
    let resid = 0.02 / (2.0 * config.n_layers as f64).sqrt();
    let mut out = Vec::with_capacity(layout.total_numel() as usize);
    for t in layout.iter() {
        let n = t.numel() as usize;
        if t.is_norm() {
            out.extend(std::iter::repeat_n(1.0f32, n));
        } else {
            let std = if t.name == enigma_core::config::WO || t.name == enigma_core::config::W2 {
                resid
            } else {
                0.02
            };
            out.extend((0..n).map(|_| (rng.normal() * std) as f32));
        }
    }
    out
}

/// An existing model to fine-tune: its config, tokenizer, parameters and the tensors it keeps besides
/// (chat template, tokenizer flags).
struct Init {
    config: Config,
    tok: TokenizerData,
    params: Vec<f32>,
    extras: Vec<Extra>,
}

/// Parameters and tokenizer of an existing model, for fine-tuning: every tensor must have exactly the shape
/// the model's config gives it (a mismatch is an error, never a silently skipped tensor).
fn load_init(path: &Path) -> Result<Init> {
    let file = ModelFile::open(path)?;
    let f = file.parse()?;
    let tok = enigma_core::Tokenizer::from_file(&f)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let params = enigma_runtime::quantize::params_f32(&f)
        .with_context(|| format!("{}: cannot load its weights", path.display()))?;
    Ok(Init {
        config: *f.config(),
        tok: enigma_runtime::quantize::tokenizer_data(&tok),
        params,
        extras: enigma_runtime::extras(&f),
    })
}

/// A JSON config; a `vocab_size` of 0 means the tokenizer's.
fn read_config(path: &Path, vocab: u32) -> Result<Config> {
    let bytes = enigma_runtime::load::read_file(path)?;
    let mut c: Config = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a model config", path.display()))?;
    if c.vocab_size == 0 {
        c.vocab_size = vocab;
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(c)
}

/// `enigma tokenizer train`
pub fn train_tokenizer(args: &TokenizerTrainArgs) -> Result<Bpe> {
    let corpus = read_corpus(&args.data, args.format)?;
    let bpe = Bpe::train(&corpus.all_text(), args.vocab_size)?;
    bpe.save(&args.output)?;
    eprintln!(
        "wrote {}: {} tokens ({} merges)",
        args.output.display(),
        bpe.vocab_size(),
        bpe.merges().len()
    );
    Ok(bpe)
}

/// Everything a run needs, fresh or from a checkpoint.
struct State {
    config: Config,
    vocab: Vocab,
    /// What an `--init` model keeps besides parameters and vocabulary (chat template, tokenizer flags).
    extras: Vec<Extra>,
    options: TrainOptions,
    step: u64,
    data_pos: u64,
    params: Vec<f32>,
    adam: AdamW,
}

fn fresh(o: &TrainOptions, out: &Path, corpus: &super::data::Corpus) -> Result<State> {
    let init = o.init.as_deref().map(load_init).transpose()?;
    let vocab = match (&init, &o.tokenizer) {
        (Some(i), None) => Vocab::from_data(i.tok.clone(), &i.extras)?,
        (Some(i), Some(path)) => {
            let given = Bpe::load(path)?.data();
            ensure!(
                given.pieces == i.tok.pieces,
                "--tokenizer {} is not the tokenizer of --init (a model keeps its tokenizer)",
                path.display()
            );
            Vocab::from_data(i.tok.clone(), &i.extras)?
        }
        (None, Some(path)) => Vocab::from_bpe(Bpe::load(path)?),
        (None, None) => {
            let start = Instant::now();
            let bpe = Bpe::train(&corpus.all_text(), o.vocab_size)?;
            bpe.save(&out.join(TOKENIZER_FILE))?;
            eprintln!(
                "trained a tokenizer of {} tokens in {:.1}s ({})",
                bpe.vocab_size(),
                start.elapsed().as_secs_f64(),
                out.join(TOKENIZER_FILE).display()
            );
            Vocab::from_bpe(bpe)
        }
    };
    let init_chat = init.as_ref().is_some_and(|i| i.tok.chat.is_some());
    let mut vocab = vocab;
    advertise_chat(&mut vocab, !corpus.chats.is_empty(), init_chat);
    if let (Some(bpe), false) = (vocab.bpe(), out.join(TOKENIZER_FILE).exists()) {
        bpe.save(&out.join(TOKENIZER_FILE))?;
    }
    let v = vocab.vocab_size() as u32;
    let (config, params, extras) = match init {
        Some(Init {
            config: c,
            params: p,
            extras,
            ..
        }) => {
            // A shape given alongside --init must be the model's own: weights are never reshaped.
            let wanted = match &o.config {
                Some(path) => Some(read_config(path, c.vocab_size)?),
                None => None,
            };
            if let Some(w) = wanted {
                ensure!(
                    w == c,
                    "--config does not match the shape of --init's weights ({c:?}); convert the model explicitly instead"
                );
            }
            (c, p, extras)
        }
        None => {
            let mut c = match &o.config {
                Some(path) => read_config(path, v)?,
                None => Preset::by_name(&o.preset)
                    .with_context(|| {
                        let names: Vec<&str> =
                            enigma_core::PRESETS.iter().map(|p| p.name).collect();
                        format!(
                            "unknown --preset {:?} (one of {})",
                            o.preset,
                            names.join(", ")
                        )
                    })?
                    .config(v),
            };
            ensure!(
                o.config.is_none() || c.vocab_size == v,
                "the config's vocab_size {} is not the tokenizer's {v}",
                c.vocab_size
            );
            c.vocab_size = v;
            c.validate()?;
            // Parameters, gradients and AdamW's two moments, before any of them is allocated.
            enigma_runtime::hardware::ensure_available(
                c.param_count().saturating_mul(16),
                &format!("training {} parameters", c.param_count()),
            )?;
            (c, init_params(&c, o.seed), Vec::new())
        }
    };
    let adam = AdamW::new(&config, AdamWConfig::default());
    Ok(State {
        config,
        vocab,
        extras,
        options: o.clone(),
        step: 0,
        data_pos: 0,
        params,
        adam,
    })
}

fn resumed(o: &TrainOptions, out: &Path) -> Result<State> {
    let path = out.join(checkpoint::FILE);
    ensure!(
        path.exists(),
        "--resume: {} has no {} to continue from",
        out.display(),
        checkpoint::FILE
    );
    let ck = Checkpoint::load(&path)?;
    if let Some(stop) = o.stop_after {
        ensure!(
            stop > ck.step,
            "--stop-after {stop} is not past step {} where the run in {} stopped; give a later step or leave it out",
            ck.step,
            out.display()
        );
    }
    if !o.data.is_empty() && !same_files(&o.data, &ck.options.data) {
        let data = &ck.options.data;
        let stored: Vec<String> = data.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "--resume continues with the run's own data ({}); leave --data out, or start a new run for other data",
            stored.join(", ")
        );
    }
    let mut options = ck.options;
    // Settings that do not change results may differ.
    options.threads = o.threads;
    options.quiet = o.quiet;
    options.stop_after = o.stop_after;
    options.resume = true;
    // A longer schedule is how a finished run goes on (its learning rate then follows the new length).
    if let Some(steps) = o.steps {
        options.steps = Some(steps);
        options.epochs = None;
    }
    let mut adam = AdamW::new(&ck.config, AdamWConfig::default());
    adam.m = ck.m;
    adam.v = ck.v;
    adam.t = ck.adam_t;
    Ok(State {
        config: ck.config,
        vocab: Vocab::from_data(ck.tokenizer, &ck.extras)?,
        extras: ck.extras,
        options,
        step: ck.step,
        data_pos: ck.data_pos,
        params: ck.params,
        adam,
    })
}

/// Whether the model file advertises chat markers: only once the model has learnt them, from this run's
/// conversations or before (an `--init` chat model). Conversations need the markers, and ours are reserved
/// in every vocabulary we train, so a model trained on text until now gets them back.
fn advertise_chat(vocab: &mut Vocab, has_chats: bool, learnt_before: bool) {
    if has_chats {
        if super::data::Encode::data(vocab).chat.is_none() && vocab.bpe().is_some() {
            vocab.set_chat(Some(super::bpe::reserved_chat_markers()));
        }
    } else if !learnt_before {
        vocab.set_chat(None);
    }
}

/// Whether two lists of paths name the same files, in order (however each was spelled).
fn same_files(a: &[PathBuf], b: &[PathBuf]) -> bool {
    let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| canon(x) == canon(y))
}

fn evaluate(
    model: &Model,
    params: &[f32],
    ds: &Dataset,
    b: usize,
    batches: usize,
    acts: &mut super::Acts,
) -> Result<Option<f64>> {
    let n = (ds.val.len() / b).min(batches);
    if n == 0 {
        return Ok(None);
    }
    let (mut sum, mut count) = (0.0, 0usize);
    for i in 0..n {
        let batch = ds.val.batch(i * b..(i + 1) * b);
        model.forward(params, acts, &batch.tokens)?;
        let (s, c) = model.loss(params, acts, &batch);
        sum += s;
        count += c;
    }
    Ok((count > 0).then(|| sum / count as f64))
}

/// `enigma train`
pub fn train(o: &TrainOptions, kernels: &'static Kernels) -> Result<Summary> {
    check_rules(o)?;
    let out = o.out.clone();
    let made_dir = !out.exists();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let lock = ModelLock::acquire(&out, "training")?;
    let ck_path = out.join(checkpoint::FILE);
    if !o.resume && ck_path.exists() {
        bail!(
            "{} already holds a training run ({}); pass --resume to continue it, or choose another --out",
            out.display(),
            checkpoint::FILE
        );
    }
    let threads = o
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    ensure!(threads > 0, "--threads must be at least 1");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the worker threads")?;
    // A fresh run that fails before its first checkpoint leaves nothing to resume: what it wrote goes.
    let outputs = [
        TOKENIZER_FILE,
        MODEL_FILE,
        checkpoint::FILE,
        CONFIG_FILE,
        progress::LOG_FILE,
        progress::PLOT_FILE,
    ];
    let new_files: Vec<PathBuf> = outputs
        .iter()
        .map(|f| out.join(f))
        .filter(|p| !p.exists())
        .collect();
    let result = pool.install(|| run(o, &out, kernels));
    if result.is_err() && !o.resume && !ck_path.exists() {
        for p in &new_files {
            let _ = std::fs::remove_file(p);
        }
        if made_dir {
            drop(lock);
            let _ = std::fs::remove_file(out.join(enigma_runtime::lock::LOCK_FILE));
            let _ = std::fs::remove_dir(&out);
        }
    }
    result
}

fn run(o: &TrainOptions, out: &Path, kernels: &'static Kernels) -> Result<Summary> {
    // On resume the data files are read again (they are not in the checkpoint); the settings are the stored ones.
    let mut st = if o.resume {
        resumed(o, out)?
    } else {
        let corpus = read_corpus(&o.data, o.format)?;
        check_small(o, corpus.lines)?;
        let st = fresh(o, out, &corpus)?;
        return run_state(st, corpus, out, kernels, None);
    };
    let corpus = read_corpus(&st.options.data, st.options.format)?;
    // Only a fine-tuned model can have learnt the markers before this run (checkpoints of earlier versions
    // kept them on every vocabulary).
    let learnt_before =
        st.options.init.is_some() && super::data::Encode::data(&st.vocab).chat.is_some();
    advertise_chat(&mut st.vocab, !corpus.chats.is_empty(), learnt_before);
    let resume_step = Some(st.step);
    st.options.resume = true;
    run_state(st, corpus, out, kernels, resume_step)
}

fn check_small(o: &TrainOptions, lines: usize) -> Result<()> {
    if lines < MIN_LINES && !o.allow_small_data {
        bail!(
            "the training data has {lines} lines; at least {MIN_LINES} are needed to train anything useful (pass --allow-small-data to train on it anyway)"
        );
    }
    Ok(())
}

fn run_state(
    mut st: State,
    corpus: super::data::Corpus,
    out: &Path,
    kernels: &'static Kernels,
    resume_step: Option<u64>,
) -> Result<Summary> {
    let o = st.options.clone();
    let c = st.config;
    let model = Model::new(c, kernels)?;
    let t = o.seq_len.unwrap_or((c.seq_len as usize).min(256));
    ensure!(
        t >= 1 && t <= c.seq_len as usize,
        "--seq-len must be between 1 and the model's context of {}",
        c.seq_len
    );
    let ds = Dataset::build(&corpus, &st.vocab, t, o.val_split)?;
    drop(corpus);
    let b = o.batch_size;
    let per_step = (b * o.grad_accum) as u64;
    let total = match (o.steps, o.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * ds.train.len() as f64) / per_step as f64)
            .ceil()
            .max(1.0) as u64,
        (None, None) => DEFAULT_STEPS,
    };
    let lr = o.lr.unwrap_or(if o.init.is_some() { 1e-4 } else { 1e-3 });
    let sched = Schedule {
        lr,
        min_lr: lr * o.min_lr_ratio,
        warmup: o.warmup.unwrap_or((total / 10).min(100)),
        total,
    };
    let entropy = ds.train.unigram_entropy(c.vocab_size as usize);
    if resume_step.is_none() {
        eprintln!(
            "training {} parameters ({} layers, dim {}, vocab {}) on {} training and {} validation examples of {t} tokens; {total} steps of {} sequences; unigram entropy {entropy:.3} nats/token",
            c.param_count(),
            c.n_layers,
            c.dim,
            c.vocab_size,
            ds.train.len(),
            ds.val.len(),
            per_step,
        );
        let meta = serde_json::json!({ "config": c, "options": &o, "steps": total, "lr": lr });
        atomic_write(
            &out.join(CONFIG_FILE),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
    } else if st.step >= total {
        // Nothing would run: say so instead of reporting the loss of no steps (NaN).
        bail!(
            "the run in {} is finished: step {} of {total}; to continue it, resume with more steps (--resume --steps {})",
            out.display(),
            st.step,
            st.step + total
        );
    } else {
        eprintln!("resuming at step {} of {total}", st.step);
    }
    let dtype = enigma_runtime::quantize::parse_dtype(&o.quantize)?;

    let mut progress = Progress::new(out, st.step, total, resume_step, o.quiet)?;
    let mut acts = model.acts(b, t)?;
    let mut grads = vec![0.0f32; model.num_params()];
    let mut order = Order::new(o.seed, ds.train.len());
    let mut last_val = None;
    let mut last_loss = f64::NAN;
    let run_start = Instant::now();
    let mut tokens_done = 0u64;
    let source: Vec<String> = o
        .data
        .iter()
        .map(|p| {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let source = format!("trained:{}", source.join(","));
    let save = |st: &State, step: u64| -> Result<()> {
        // Neither the checkpoint nor the model may hold weights that diverged: --resume would continue
        // from them and `run` would fail on them.
        enigma_runtime::quantize::check_params_finite(&c, &st.params).with_context(|| {
            format!("the weights stopped being finite by step {step}; try a lower --lr")
        })?;
        let ck = Checkpoint {
            config: c,
            tokenizer: st.vocab_data(),
            extras: st.extras.clone(),
            options: st.options.clone(),
            step,
            data_pos: st.data_pos,
            adam_t: st.adam.t,
            params: st.params.clone(),
            m: st.adam.m.clone(),
            v: st.adam.v.clone(),
        };
        ck.save(&out.join(checkpoint::FILE))?;
        write_model(out, &source, st, dtype, step)
    };
    let stop = o.stop_after.unwrap_or(total).min(total);
    while st.step < stop {
        let t0 = Instant::now();
        grads.par_chunks_mut(1 << 16).for_each(|g| g.fill(0.0));
        let batches: Vec<Batch> = (0..o.grad_accum)
            .map(|_| {
                let ids: Vec<usize> = (0..b).map(|j| order.at(st.data_pos + j as u64)).collect();
                st.data_pos += b as u64;
                ds.train.batch(ids.into_iter())
            })
            .collect();
        let count: usize = batches.iter().map(|x| x.count()).sum();
        let scale = 1.0 / count.max(1) as f32;
        let mut sum = 0.0;
        for batch in &batches {
            let (s, _) = model.forward_backward(&st.params, &mut grads, &mut acts, batch, scale)?;
            sum += s;
        }
        let loss = sum / count.max(1) as f64;
        ensure!(
            loss.is_finite(),
            "the loss became {loss} at step {}; try a lower --lr",
            st.step + 1
        );
        let lr_now = sched.lr(st.step);
        let norm = st.adam.step(&mut st.params, &mut grads, lr_now);
        st.step += 1;
        let tokens = per_step * t as u64;
        tokens_done += tokens;
        let dt = t0.elapsed().as_secs_f64();
        let val = if st.step == total || (o.eval_every > 0 && st.step.is_multiple_of(o.eval_every))
        {
            evaluate(&model, &st.params, &ds, b, o.eval_batches, &mut acts)?
        } else {
            None
        };
        if let Some(v) = val {
            // As for the training loss: a run whose weights diverged must stop, not write them out.
            ensure!(
                v.is_finite(),
                "the validation loss became {v} at step {}; try a lower --lr",
                st.step
            );
            last_val = val;
        }
        last_loss = loss;
        progress.record(LogEntry {
            step: st.step,
            loss,
            lr: lr_now,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            grad_norm: norm,
            val_loss: val,
        })?;
        if st.step == stop || (o.checkpoint_every > 0 && st.step.is_multiple_of(o.checkpoint_every))
        {
            save(&st, st.step)?;
        }
    }
    progress.finish();
    progress::plot(&out.join(progress::PLOT_FILE), progress.entries())?;
    let secs = run_start.elapsed().as_secs_f64();
    let rate = tokens_done as f64 / secs.max(1e-9);
    let model_path = out.join(MODEL_FILE);
    eprintln!(
        "done: {} steps, train loss {last_loss:.4}{}, {rate:.0} tokens/s; wrote {}",
        st.step,
        last_val.map_or(String::new(), |v| format!(", val loss {v:.4}")),
        model_path.display()
    );
    Ok(Summary {
        steps: st.step,
        final_loss: last_loss,
        val_loss: last_val,
        unigram_entropy: entropy,
        tokens_per_s: rate,
        model: model_path,
    })
}

impl State {
    fn vocab_data(&self) -> TokenizerData {
        super::data::Encode::data(&self.vocab).clone()
    }
}

/// Writes `DIR/model.enigma` atomically.
fn write_model(
    out: &Path,
    source: &str,
    st: &State,
    dtype: enigma_core::kernels::DType,
    step: u64,
) -> Result<()> {
    let mut w = ModelWriter::new(st.config, st.vocab_data());
    for e in &st.extras {
        w.extra(e);
    }
    w.provenance(source, enigma_models::training_note(step));
    enigma_runtime::quantize::add_params(&mut w, &st.config, &st.params, dtype)?;
    Ok(atomic_write(&out.join(MODEL_FILE), &w.to_bytes()?)?)
}
