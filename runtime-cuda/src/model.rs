//! The forward pass on the device: the same steps as enigma_core's `Transformer::layers` and `classify`
//! (embedding, then per layer RMSNorm → q, k, v → RoPE → KV store → attention → wo (+ residual) → RMSNorm →
//! w1, w3 → SwiGLU → w2 (+ residual); final norm, classifier), with weights uploaded once and the KV cache and
//! every activation on the device. Only token ids, positions and block tables go up per step, and only the
//! sampled ids (or, when asked, logits) come back.
//!
//! The cache holds `slots` sequences of the whole context each (a paged cache of `slots` blocks of `S`
//! positions): slot 0 is the single sequence of `run`; [`DeviceModel::decode_batch`] steps up to
//! [`MAX_BATCH`] sequences at once, each weight read once for all of them.

use crate::ops::{self, Buf, DeviceMatrix, KvShape, QuantScratch, Rows};
use crate::ptx::MAX_BATCH;
use crate::{Error, Gpu, Result};
use cudarc::driver::{sys, CudaGraph};
use enigma_core::config::{Config, KvType};
use enigma_core::model::Weights;
use enigma_core::sampler::{Sampler, SamplerConfig};

/// Tokens of a prompt per forward call: a chunk large enough to keep the tensor cores busy, small enough
/// that its activations are a few MB on the largest presets.
pub const CHUNK: usize = 256;

struct Layerless {
    embedding: DeviceMatrix,
    classifier: Option<DeviceMatrix>,
    final_norm: Buf<f32>,
}

struct Stacked {
    attn_norm: Buf<f32>,
    ffn_norm: Buf<f32>,
    wq: DeviceMatrix,
    wk: DeviceMatrix,
    wv: DeviceMatrix,
    wo: DeviceMatrix,
    w1: DeviceMatrix,
    w2: DeviceMatrix,
    w3: DeviceMatrix,
}

/// Activations for up to `rows` rows.
struct Acts {
    rows: usize,
    x: Buf<f32>,
    xb: Buf<f32>,
    q: Buf<f32>,
    k: Buf<f32>,
    v: Buf<f32>,
    att: Buf<f32>,
    hb: Buf<f32>,
    hb2: Buf<f32>,
    quant: QuantScratch,
    logits: Buf<f32>,
    probs: Buf<f32>,
    tokens: Buf<i32>,
    pos: Buf<i32>,
    tables: Buf<i32>,
    ids: Buf<i32>,
    coins: Buf<f32>,
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug)]
pub enum Sampling {
    Greedy,
    /// Temperature and top-p on the device, coins from the host's seeded generator.
    TopP {
        temperature: f32,
        top_p: f32,
    },
}

impl Sampling {
    /// The device can sample what `cfg` asks when it needs no top-k and no repetition penalty; `None`
    /// otherwise (the caller then samples on the host from [`DeviceModel::logits`]).
    pub fn of(cfg: &SamplerConfig) -> Option<Sampling> {
        let t = cfg.temperature;
        if t.is_nan() || t <= 0.0 {
            return Some(Sampling::Greedy);
        }
        let penalty = cfg.repetition_penalty;
        let penalised = !(penalty == 1.0 || penalty.is_nan() || penalty <= 0.0);
        (cfg.top_k == 0 && !penalised).then_some(Sampling::TopP {
            temperature: t,
            top_p: cfg.top_p,
        })
    }
}

pub struct DeviceModel {
    gpu: Gpu,
    pub config: Config,
    top: Layerless,
    layers: Stacked,
    kc: Buf<u8>,
    vc: Buf<u8>,
    kv: KvShape,
    acts: Acts,
    /// Captured decode steps of 1..=8 rows.
    graph: [Option<CudaGraph>; MAX_BATCH],
    graphs: bool,
    graph_error: Option<String>,
}

fn upload_norm(gpu: &Gpu, v: &[f32]) -> Result<Buf<f32>> {
    Buf::upload(gpu, v)
}

impl DeviceModel {
    /// Uploads `weights` (the file's own views, not CPU-repacked ones) and makes a KV cache of `slots`
    /// sequences of `config.seq_len` positions in `kv` elements.
    pub fn new(
        gpu: Gpu,
        config: Config,
        weights: &Weights<'_>,
        kv: KvType,
        slots: usize,
    ) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (d, h, hs) = (c.dim as usize, c.hidden_dim as usize, c.head_size());
        let (nh, kvd) = (c.n_heads as usize, c.kv_dim());
        let rows = CHUNK.max(MAX_BATCH);
        let top = Layerless {
            embedding: DeviceMatrix::upload(&gpu, weights.token_embedding)?,
            classifier: if c.tied_classifier {
                None
            } else {
                Some(DeviceMatrix::upload(&gpu, weights.classifier)?)
            },
            final_norm: upload_norm(&gpu, weights.final_norm)?,
        };
        let layers = Stacked {
            attn_norm: upload_norm(&gpu, weights.attn_norm)?,
            ffn_norm: upload_norm(&gpu, weights.ffn_norm)?,
            wq: DeviceMatrix::upload(&gpu, weights.wq)?,
            wk: DeviceMatrix::upload(&gpu, weights.wk)?,
            wv: DeviceMatrix::upload(&gpu, weights.wv)?,
            wo: DeviceMatrix::upload(&gpu, weights.wo)?,
            w1: DeviceMatrix::upload(&gpu, weights.w1)?,
            w2: DeviceMatrix::upload(&gpu, weights.w2)?,
            w3: DeviceMatrix::upload(&gpu, weights.w3)?,
        };
        let kvs = KvShape {
            layers: c.n_layers as usize,
            kv_heads: c.n_kv_heads as usize,
            head_size: hs,
            block: c.seq_len as usize,
            blocks: slots.max(1),
            f16: kv == KvType::F16,
        };
        let kv_bytes = kvs.elems() * if kvs.f16 { 2 } else { 4 };
        let v = c.vocab_size as usize;
        let acts = Acts {
            rows,
            x: Buf::zeros(&gpu, rows * d)?,
            xb: Buf::zeros(&gpu, rows * d)?,
            q: Buf::zeros(&gpu, rows * nh * hs)?,
            k: Buf::zeros(&gpu, rows * kvd)?,
            v: Buf::zeros(&gpu, rows * kvd)?,
            att: Buf::zeros(&gpu, rows * nh * hs)?,
            hb: Buf::zeros(&gpu, rows * h)?,
            hb2: Buf::zeros(&gpu, rows * h)?,
            // Every row of a prompt chunk, for the int8 GEMM.
            quant: QuantScratch::new(&gpu, rows * d.max(h).max(nh * hs))?,
            logits: Buf::zeros(&gpu, MAX_BATCH * v)?,
            probs: Buf::zeros(&gpu, MAX_BATCH * v)?,
            tokens: Buf::zeros(&gpu, rows)?,
            pos: Buf::zeros(&gpu, rows)?,
            tables: Buf::zeros(&gpu, rows)?,
            ids: Buf::zeros(&gpu, MAX_BATCH)?,
            coins: Buf::zeros(&gpu, MAX_BATCH)?,
        };
        Ok(DeviceModel {
            kc: Buf::zeros(&gpu, kv_bytes)?,
            vc: Buf::zeros(&gpu, kv_bytes)?,
            gpu,
            config,
            top,
            layers,
            kv: kvs,
            acts,
            graph: Default::default(),
            graphs: std::env::var_os("ENIGMA_CUDA_GRAPH").is_none_or(|v| v != "0"),
            graph_error: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights one decode step reads (every matrix once; the embedding only a row): the numerator of
    /// the bandwidth bound.
    pub fn weight_bytes_per_token(&self) -> usize {
        let l = &self.layers;
        let classifier = self.top.classifier.as_ref().unwrap_or(&self.top.embedding);
        [&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3, classifier]
            .iter()
            .map(|m| m.bytes())
            .sum()
    }

    /// Slots (sequences) the KV cache holds.
    pub fn slots(&self) -> usize {
        self.kv.blocks
    }

    /// Checks `(token, position, slot)` rows and puts them on the device for [`Self::launch_layers`]. A slot's
    /// rows must be consecutive positions of it whose earlier positions are already cached.
    fn upload_rows(&mut self, rows: &[(u32, usize, usize)]) -> Result<()> {
        let c = self.config;
        let t = rows.len();
        if t == 0 || t > self.acts.rows {
            return Err(Error::Invalid(format!(
                "{t} rows in one step (1..={})",
                self.acts.rows
            )));
        }
        for &(tok, p, slot) in rows {
            if tok >= c.vocab_size || p >= c.seq_len as usize || slot >= self.kv.blocks {
                return Err(Error::Invalid(format!(
                    "token {tok} at position {p} of slot {slot}: outside the vocabulary ({}), context ({}) or cache ({} slots)",
                    c.vocab_size, c.seq_len, self.kv.blocks
                )));
            }
        }
        let g = &self.gpu;
        let a = &mut self.acts;
        let as_i32 = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        a.tokens
            .write(g, &rows.iter().map(|r| r.0 as i32).collect::<Vec<_>>())?;
        a.pos
            .write(g, &rows.iter().map(|r| as_i32(r.1)).collect::<Vec<_>>())?;
        a.tables
            .write(g, &rows.iter().map(|r| as_i32(r.2)).collect::<Vec<_>>())?;
        Ok(())
    }

    /// Every launch of the layers for `t` rows whose tokens, positions and slots [`Self::upload_rows`] put on
    /// the device, leaving the residual stream in `x`. Only launches: a decode step's sequence of them is
    /// captured into a CUDA graph once and replayed, since positions and slots are read from device memory.
    fn launch_layers(&self, t: usize) -> Result<()> {
        let c = self.config;
        let (d, h, hs) = (c.dim as usize, c.hidden_dim as usize, c.head_size());
        let (nh, nkv, kvd) = (c.n_heads as usize, c.n_kv_heads as usize, c.kv_dim());
        let g = &self.gpu;
        let a = &self.acts;
        let (w, kv) = (&self.layers, self.kv);
        let r = Rows {
            rows: t,
            pos: a.pos.at(0),
            tables: a.tables.at(0),
            tb: 1,
        };
        let scale = 1.0 / (hs as f32).sqrt();
        ops::embed(g, a.x.at(0), &self.top.embedding, a.tokens.at(0), t)?;
        let q = &a.quant;
        for l in 0..c.n_layers as usize {
            ops::rmsnorm(
                g,
                a.xb.at(0),
                a.x.at(0),
                w.attn_norm.at(l * d),
                t,
                d,
                c.norm_eps,
            )?;
            ops::linear(
                g,
                a.q.at(0),
                &w.wq,
                l * nh * hs,
                nh * hs,
                a.xb.at(0),
                t,
                false,
                q,
            )?;
            ops::linear(g, a.k.at(0), &w.wk, l * kvd, kvd, a.xb.at(0), t, false, q)?;
            ops::linear(g, a.v.at(0), &w.wv, l * kvd, kvd, a.xb.at(0), t, false, q)?;
            ops::rope(
                g,
                a.q.at(0),
                a.k.at(0),
                a.pos.at(0),
                t,
                nh,
                nkv,
                hs,
                c.rope_theta,
            )?;
            // Every row's keys and values are stored before attention, so a chunk's rows see each other.
            ops::kv_store(
                g,
                self.kc.at(0),
                self.vc.at(0),
                a.k.at(0),
                a.v.at(0),
                r,
                l,
                kv,
            )?;
            // More rows than a decode batch are a prompt chunk of one sequence (`forward_slot`): tiled.
            let attend = if t > MAX_BATCH {
                ops::attention_prefill
            } else {
                ops::attention
            };
            let (kc, vc) = (self.kc.at(0), self.vc.at(0));
            attend(g, a.att.at(0), a.q.at(0), kc, vc, r, l, nh, kv, scale)?;
            ops::linear(g, a.x.at(0), &w.wo, l * d, d, a.att.at(0), t, true, q)?;
            ops::rmsnorm(
                g,
                a.xb.at(0),
                a.x.at(0),
                w.ffn_norm.at(l * d),
                t,
                d,
                c.norm_eps,
            )?;
            let (gate_up, hb) = ((&w.w1, &w.w3), a.hb.at(0));
            ops::swiglu(g, hb, a.hb2.at(0), gate_up, l * h, h, a.xb.at(0), t, q)?;
            ops::linear(g, a.x.at(0), &w.w2, l * d, d, a.hb.at(0), t, true, q)?;
        }
        Ok(())
    }

    /// Logits of rows `which` (indices into the last step's rows, at most 8) into the device's logits buffer.
    fn classify(&self, which: &[usize]) -> Result<()> {
        let c = &self.config;
        let (d, v) = (c.dim as usize, c.vocab_size as usize);
        let (g, a) = (&self.gpu, &self.acts);
        for (j, &row) in which.iter().enumerate() {
            ops::rmsnorm(
                g,
                a.xb.at(j * d),
                a.x.at(row * d),
                self.top.final_norm.at(0),
                1,
                d,
                c.norm_eps,
            )?;
        }
        let cls = self.top.classifier.as_ref().unwrap_or(&self.top.embedding);
        ops::linear(
            g,
            a.logits.at(0),
            cls,
            0,
            v,
            a.xb.at(0),
            which.len(),
            false,
            &a.quant,
        )
    }

    /// Runs `tokens` of slot 0 at positions `start..`, chunk by chunk, leaving the last token's logits on the
    /// device.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        self.forward_slot(0, tokens, start)
    }

    /// [`Self::forward`] for any slot of the cache (a sequence of a batch, before [`Self::decode_batch`]).
    pub fn forward_slot(&mut self, slot: usize, tokens: &[u32], start: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to run".into()));
        }
        for (i, part) in tokens.chunks(CHUNK).enumerate() {
            let rows: Vec<_> = part
                .iter()
                .enumerate()
                .map(|(j, &tok)| (tok, start + i * CHUNK + j, slot))
                .collect();
            if tokens.len() == 1 {
                // Decode: the captured graph.
                return self.step(&rows);
            }
            self.upload_rows(&rows)?;
            self.launch_layers(rows.len())?;
        }
        let last = (tokens.len() - 1) % CHUNK;
        self.classify(&[last])
    }

    /// Runs `tokens` of slot 0 from `start` and hands every position's logits to `on_logits(index in tokens,
    /// logits (V))`, 8 rows at a time (scoring a text: `enigma eval`).
    pub fn forward_each(
        &mut self,
        tokens: &[u32],
        start: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let v = self.config.vocab_size as usize;
        for (i, part) in tokens.chunks(CHUNK).enumerate() {
            let rows: Vec<_> = part
                .iter()
                .enumerate()
                .map(|(j, &tok)| (tok, start + i * CHUNK + j, 0))
                .collect();
            self.upload_rows(&rows)?;
            self.launch_layers(rows.len())?;
            for g0 in (0..rows.len()).step_by(MAX_BATCH) {
                let which: Vec<usize> = (g0..rows.len().min(g0 + MAX_BATCH)).collect();
                self.classify(&which)?;
                let logits = self.logits(which.len())?;
                for (j, l) in logits.chunks_exact(v).enumerate() {
                    on_logits(i * CHUNK + g0 + j, l);
                }
            }
        }
        Ok(())
    }

    /// One decode step of up to 8 sequences: `(token, position, slot)` each, every weight read once for all.
    /// Leaves each row's logits on the device.
    pub fn decode_batch(&mut self, rows: &[(u32, usize, usize)]) -> Result<()> {
        if rows.len() > MAX_BATCH {
            return Err(Error::Invalid(format!(
                "{} sequences in one decode step (at most {MAX_BATCH})",
                rows.len()
            )));
        }
        self.step(rows)
    }

    /// A decode step of `rows` (1..=8) with each row's logits: one CUDA graph launch once the step of that
    /// many rows has been captured (launch overhead, not bandwidth, bounds small models otherwise).
    fn step(&mut self, rows: &[(u32, usize, usize)]) -> Result<()> {
        self.upload_rows(rows)?;
        let t = rows.len();
        let which: Vec<usize> = (0..t).collect();
        if !self.graphs {
            self.launch_layers(t)?;
            return self.classify(&which);
        }
        if self.graph[t - 1].is_none() {
            match self.capture(t, &which) {
                Ok(graph) => self.graph[t - 1] = Some(graph),
                Err(e) => {
                    // Plain launches compute the same; the reason is kept for `launches()`.
                    self.graphs = false;
                    self.graph_error = Some(e.to_string());
                    self.launch_layers(t)?;
                    return self.classify(&which);
                }
            }
        }
        match &self.graph[t - 1] {
            Some(graph) => graph.launch().map_err(crate::driver("graph launch")),
            None => Err(Error::Invalid("no decode graph".into())),
        }
    }

    /// Records the launches of a decode step of `t` rows into a graph.
    fn capture(&self, t: usize, which: &[usize]) -> Result<CudaGraph> {
        let s = &self.gpu.stream;
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(crate::driver("graph capture"))?;
        // The capture is ended whatever happened inside it, so the stream is usable again.
        let launched = self.launch_layers(t).and_then(|_| self.classify(which));
        let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        graph
            .map_err(crate::driver("graph capture"))?
            .ok_or_else(|| Error::Invalid("the captured decode graph is empty".into()))
    }

    /// How decode steps are launched: a CUDA graph per step, or plain launches and why.
    pub fn launches(&self) -> String {
        match (&self.graph_error, self.graphs) {
            (Some(e), _) => format!("plain launches (graph capture failed: {e})"),
            (None, true) => "one CUDA graph per decode step".into(),
            (None, false) => "plain launches (ENIGMA_CUDA_GRAPH=0)".into(),
        }
    }

    /// Turns decode graphs on or off (the GPU tests compare both; `ENIGMA_CUDA_GRAPH=0` starts with them off).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
        self.graph_error = None;
    }

    /// The logits of the last `rows` rows classified, `(rows, V)`, copied to the host (tests, host sampling).
    pub fn logits(&self, rows: usize) -> Result<Vec<f32>> {
        self.acts
            .logits
            .read(&self.gpu, rows * self.config.vocab_size as usize)
    }

    /// Picks the next token of each of the last `coins.len()` classified rows on the device; only the ids
    /// come back. `coins` are used by top-p sampling only.
    pub fn sample(&mut self, how: Sampling, coins: &[f32]) -> Result<Vec<u32>> {
        let rows = coins.len();
        let v = self.config.vocab_size as usize;
        let (g, a) = (&self.gpu, &mut self.acts);
        match how {
            Sampling::Greedy => ops::argmax(g, a.ids.at(0), a.logits.at(0), rows, v)?,
            Sampling::TopP { temperature, top_p } => {
                a.coins.write(g, coins)?;
                ops::sample_top_p(
                    g,
                    a.ids.at(0),
                    a.logits.at(0),
                    a.probs.at(0),
                    rows,
                    v,
                    temperature,
                    top_p,
                    a.coins.at(0),
                )?
            }
        }
        let ids = a.ids.read(g, rows)?;
        // The kernels return indices below V; anything else would be a kernel bug, refused rather than used.
        ids.iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&i| i < self.config.vocab_size)
                    .ok_or_else(|| Error::Invalid(format!("the device sampled token {i}")))
            })
            .collect()
    }

    /// Feeds `prompt` into slot 0 from position 0 and generates up to `max_new` tokens, calling `on_token`
    /// with each (it returns false to stop). Sampling runs on the device where it can ([`Sampling::of`]),
    /// otherwise on the host from copied logits. Stops at the context's end; returns the generated ids.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let how = Sampling::of(sampler.config());
        let ctx = self.config.seq_len as usize;
        if prompt.len() > ctx {
            return Err(Error::Invalid(format!(
                "a prompt of {} tokens in a context of {ctx}",
                prompt.len()
            )));
        }
        let mut out = Vec::new();
        // The sampler sees the prompt, as the CPU's token loop shows it (its repetition penalty counts it).
        for &t in prompt {
            sampler.observe(t);
        }
        self.forward(prompt, 0)?;
        let mut pos = prompt.len();
        let v = self.config.vocab_size as usize;
        let mut probs = vec![enigma_core::sampler::ProbIndex::default(); v];
        while out.len() < max_new {
            let next = match how {
                Some(Sampling::Greedy) => self.sample(Sampling::Greedy, &[0.0])?[0],
                Some(s) => {
                    let coin = sampler.next_f32();
                    self.sample(s, &[coin])?[0]
                }
                None => {
                    let mut logits = self.logits(1)?;
                    sampler.sample(&mut logits, &mut probs)?
                }
            };
            sampler.observe(next);
            out.push(next);
            if !on_token(next) || pos >= ctx {
                break;
            }
            self.forward(&[next], pos)?;
            pos += 1;
        }
        Ok(out)
    }
}

/// Device-to-device copy bandwidth, bytes per second counting each byte read and written: the median of 5
/// copies of 256 MiB after a warm-up.
pub fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
    const BYTES: usize = 256 << 20;
    let src = Buf::<u8>::zeros(gpu, BYTES)?;
    let mut dst = Buf::<u8>::zeros(gpu, BYTES)?;
    let mut times = Vec::new();
    for round in 0..6 {
        gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        src.copy_to(gpu, &mut dst)?;
        gpu.synchronize()?;
        if round > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * BYTES as f64 / times[times.len() / 2])
}
