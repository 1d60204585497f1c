//! The trainable model: the same Llama-family forward pass as `enigma_core::model` (RMSNorm, GQA attention
//! with adjacent-pair RoPE, SwiGLU, tied or separate classifier), over a batch of `B` sequences of `T` tokens,
//! keeping the activations that the hand-written backward pass needs.
//!
//! Parameters, gradients and AdamW's moments are flat f32 buffers laid out by [`ParamLayout`]; a trained
//! buffer is written with `ModelWriter::f32_params` and runs unchanged under `enigma run`.
//!
//! Letters: `B` sequences, `T` tokens each, `R = B * T` rows, `D` dim, `H` FFN hidden, `L` layers, `NH` query
//! heads, `NKV` key/value heads, `HS` head size, `QD = NH * HS`, `KVD = NKV * HS`, `V` vocabulary.

use super::layers::{self, AttnDims, CeGrad, CrossEntropy};
use super::matmul::{self, Tmp};
use enigma_core::config::{self, Config, ParamLayout};
use enigma_core::kernels::Kernels;

/// Where each parameter tensor starts in the flat buffer, and its element count.
#[derive(Clone, Copy, Debug)]
struct Offsets {
    emb: usize,
    attn_norm: usize,
    wq: usize,
    wk: usize,
    wv: usize,
    wo: usize,
    ffn_norm: usize,
    w1: usize,
    w2: usize,
    w3: usize,
    final_norm: usize,
    /// The embedding's offset when the classifier is tied.
    cls: usize,
    total: usize,
}

/// A config ready to train, with the kernel table its products run on.
#[derive(Clone, Copy)]
pub struct Model {
    pub config: Config,
    off: Offsets,
    kn: &'static Kernels,
}

/// Sizes of one batch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    h: usize,
    l: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
    v: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.b * self.t
    }
    fn qd(&self) -> usize {
        self.nh * self.hs
    }
    fn kvd(&self) -> usize {
        self.nkv * self.hs
    }
}

/// Elements of each activation buffer, in the order [`Model::acts`] takes them (tokens, x, xn1, q, k, v, p,
/// ao, xmid, xn2, h1, h3, g, xnf, oh, kv_rows); `None` when a size overflows.
fn act_lens(dm: &Dims) -> Option<[usize; 16]> {
    let m = |f: &[usize]| f.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
    let (b, t, l) = (dm.b, dm.t, dm.l);
    let r = m(&[b, t])?;
    let (d, h, qd, kvd) = (dm.d, dm.h, dm.nh * dm.hs, dm.nkv * dm.hs);
    Some([
        r,
        m(&[l + 1, r, d])?,
        m(&[l, r, d])?,
        m(&[l, r, qd])?,
        m(&[l, r, kvd])?,
        m(&[l, r, kvd])?,
        m(&[l, b, dm.nh, t, t])?,
        m(&[l, r, qd])?,
        m(&[l, r, d])?,
        m(&[l, r, d])?,
        m(&[l, r, h])?,
        m(&[l, r, h])?,
        m(&[l, r, h])?,
        m(&[r, d])?,
        m(&[r, qd])?,
        m(&[r, kvd])?,
    ])
}

/// What forward keeps for backward, for one batch shape; reused step after step.
pub struct Acts {
    dims: Dims,
    /// (T, HS/2, 2)
    rope: Vec<f32>,
    /// (R) input token ids of the last forward
    tokens: Vec<u32>,
    /// (L + 1, R, D): the residual stream entering each layer; the last enters the final norm
    x: Vec<f32>,
    /// (L, R, D) attention-norm output
    xn1: Vec<f32>,
    /// (L, B, NH, T, HS) queries after RoPE
    q: Vec<f32>,
    /// (L, B, NKV, T, HS) keys after RoPE
    k: Vec<f32>,
    /// (L, B, NKV, T, HS)
    v: Vec<f32>,
    /// (L, B, NH, T, T) attention probabilities
    p: Vec<f32>,
    /// (L, R, QD) attention output, heads side by side (the input of wo)
    ao: Vec<f32>,
    /// (L, R, D) residual stream after attention
    xmid: Vec<f32>,
    /// (L, R, D) FFN-norm output
    xn2: Vec<f32>,
    /// (L, R, H) w1 output
    h1: Vec<f32>,
    /// (L, R, H) w3 output
    h3: Vec<f32>,
    /// (L, R, H) silu(h1) * h3 (the input of w2)
    g: Vec<f32>,
    /// (R, D) final-norm output
    xnf: Vec<f32>,
    /// (B, NH, T, HS) scratch: one layer's attention output, head-major
    oh: Vec<f32>,
    /// (R, KVD) scratch: key and value projections before they go head-major
    kv_rows: Vec<f32>,
    /// Backward's buffers, allocated on the first backward (evaluation never needs them).
    grad: Option<GradBufs>,
    /// Weights transposed for the forward products.
    tmp: Tmp,
    /// (layers::ce_chunk(V), V)
    logits: Vec<f32>,
    /// (D, V) the classifier transposed in panels, the logits' right operand
    cls_t: Vec<f32>,
}

/// Gradients of activations, reused layer after layer.
struct GradBufs {
    /// (R, D) gradient of the residual stream
    dx: Vec<f32>,
    /// (R, D)
    dxn: Vec<f32>,
    /// (R, QD), then reused for the attention output's gradient
    dq: Vec<f32>,
    /// (R, KVD)
    dk: Vec<f32>,
    /// (R, KVD)
    dv: Vec<f32>,
    /// (B, NH, T, HS)
    dqh: Vec<f32>,
    /// (B, NKV, T, HS)
    dkh: Vec<f32>,
    /// (B, NKV, T, HS)
    dvh: Vec<f32>,
    /// (B, NH, T, HS) head-major gradient of the attention output
    doh: Vec<f32>,
    /// (R, H)
    dh1: Vec<f32>,
    /// (R, H)
    dh3: Vec<f32>,
    /// (R, H)
    dg: Vec<f32>,
    /// (counted rows, D) the final norm's output at the rows whose target counts
    xn_rows: Vec<f32>,
    /// (counted rows, D) its gradient
    dxn_rows: Vec<f32>,
}

/// One batch: `tokens`, `targets` and `mask`, each `(B, T)`; a target counts toward the loss where its mask is
/// true.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Batch {
    /// Targets that count toward the loss.
    pub fn count(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }
}

impl Model {
    pub fn new(config: Config, kn: &'static Kernels) -> anyhow::Result<Model> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let at = |n| layout.flat_offset(n).unwrap_or(0) as usize;
        let off = Offsets {
            emb: at(config::TOKEN_EMBEDDING),
            attn_norm: at(config::ATTN_NORM),
            wq: at(config::WQ),
            wk: at(config::WK),
            wv: at(config::WV),
            wo: at(config::WO),
            ffn_norm: at(config::FFN_NORM),
            w1: at(config::W1),
            w2: at(config::W2),
            w3: at(config::W3),
            final_norm: at(config::FINAL_NORM),
            cls: if config.tied_classifier {
                at(config::TOKEN_EMBEDDING)
            } else {
                at(config::CLASSIFIER)
            },
            total: layout.total_numel() as usize,
        };
        Ok(Model { config, off, kn })
    }

    /// Elements of the flat parameter (and gradient, and moment) buffer.
    pub fn num_params(&self) -> usize {
        self.off.total
    }

    fn dims(&self, b: usize, t: usize) -> Dims {
        let c = &self.config;
        Dims {
            b,
            t,
            d: c.dim as usize,
            h: c.hidden_dim as usize,
            l: c.n_layers as usize,
            nh: c.n_heads as usize,
            nkv: c.n_kv_heads as usize,
            hs: c.head_size(),
            v: c.vocab_size as usize,
        }
    }

    /// Activation buffers for batches of `b` sequences of `t` tokens. Their sizes come from flags: they are
    /// computed without overflow, checked against the memory available, and allocated fallibly.
    pub fn acts(&self, b: usize, t: usize) -> anyhow::Result<Acts> {
        let dm = self.dims(b, t);
        let too_big = || {
            anyhow::anyhow!(
                "the activations of a batch of {b} sequences of {t} tokens do not fit in this machine's address space; lower --batch-size or --seq-len"
            )
        };
        let lens = act_lens(&dm).ok_or_else(too_big)?;
        let bytes = lens
            .iter()
            .try_fold(0u64, |sum, &n| sum.checked_add((n as u64).checked_mul(4)?))
            .ok_or_else(too_big)?;
        enigma_runtime::hardware::ensure_available(
            bytes,
            &format!("the activations of a batch of {b} sequences of {t} tokens (lower --batch-size or --seq-len)"),
        )?;
        let z = |n: usize| enigma_runtime::hardware::try_zeroed::<f32>(n, "activations");
        let [tokens, x, xn1, q, k, v, p, ao, xmid, xn2, h1, h3, g, xnf, oh, kv_rows] = lens;
        Ok(Acts {
            dims: dm,
            rope: layers::rope_table(t, dm.hs, self.config.rope_theta),
            tokens: enigma_runtime::hardware::try_zeroed(tokens, "activations")?,
            x: z(x)?,
            xn1: z(xn1)?,
            q: z(q)?,
            k: z(k)?,
            v: z(v)?,
            p: z(p)?,
            ao: z(ao)?,
            xmid: z(xmid)?,
            xn2: z(xn2)?,
            h1: z(h1)?,
            h3: z(h3)?,
            g: z(g)?,
            xnf: z(xnf)?,
            oh: z(oh)?,
            kv_rows: z(kv_rows)?,
            grad: None,
            tmp: Tmp::default(),
            logits: Vec::new(),
            cls_t: Vec::new(),
        })
    }

    /// Runs the batch's tokens through every layer and the final norm, keeping activations in `a`.
    pub fn forward(&self, p: &[f32], a: &mut Acts, tokens: &[u32]) -> anyhow::Result<()> {
        let Dims {
            d,
            h,
            l,
            nh,
            nkv,
            hs,
            v,
            t,
            ..
        } = a.dims;
        let r = a.dims.rows();
        let (qd, kvd) = (a.dims.qd(), a.dims.kvd());
        anyhow::ensure!(
            p.len() == self.off.total,
            "{} parameters given, the model has {}",
            p.len(),
            self.off.total
        );
        anyhow::ensure!(
            tokens.len() == r,
            "{} tokens given for a batch of {r}",
            tokens.len()
        );
        if let Some(bad) = tokens.iter().find(|&&tk| tk as usize >= v) {
            anyhow::bail!("token {bad} is outside the vocabulary of {v}");
        }
        let (kn, o, eps) = (self.kn, self.off, self.config.norm_eps);
        a.tokens.copy_from_slice(tokens);
        for (row, &tk) in a.x[..r * d].chunks_exact_mut(d).zip(tokens) {
            let e = o.emb + tk as usize * d;
            row.copy_from_slice(&p[e..e + d]);
        }
        let dims = AttnDims {
            t,
            hs,
            group: nh / nkv,
        };
        for li in 0..l {
            let w = |off: usize, n: usize| &p[off + li * n..][..n];
            let (wq, wk, wv, wo) = (
                w(o.wq, qd * d),
                w(o.wk, kvd * d),
                w(o.wv, kvd * d),
                w(o.wo, d * qd),
            );
            let (w1, w2, w3) = (w(o.w1, h * d), w(o.w2, d * h), w(o.w3, h * d));
            let (xs, xrest) = a.x.split_at_mut((li + 1) * r * d);
            let x = &xs[li * r * d..];
            let xn1 = &mut a.xn1[li * r * d..(li + 1) * r * d];
            layers::rmsnorm_forward(kn, xn1, x, &p[o.attn_norm + li * d..][..d], eps);
            let q = &mut a.q[li * r * qd..(li + 1) * r * qd];
            let k = &mut a.k[li * r * kvd..(li + 1) * r * kvd];
            let vv = &mut a.v[li * r * kvd..(li + 1) * r * kvd];
            // Row-major projections first, written into ao/xmid as scratch, then rotated and made head-major.
            let qrows = &mut a.ao[li * r * qd..(li + 1) * r * qd];
            matmul::linear_forward(kn, &mut a.tmp, qrows, xn1, wq, r);
            layers::rope(kn, qrows, &a.rope, t, qd, false);
            layers::heads_layout(qrows, q, t, nh, hs, false);
            let krows = &mut a.kv_rows;
            matmul::linear_forward(kn, &mut a.tmp, krows, xn1, wk, r);
            layers::rope(kn, krows, &a.rope, t, kvd, false);
            layers::heads_layout(krows, k, t, nkv, hs, false);
            matmul::linear_forward(kn, &mut a.tmp, krows, xn1, wv, r);
            layers::heads_layout(krows, vv, t, nkv, hs, false);

            let pl = &mut a.p[li * r * nh * t..(li + 1) * r * nh * t];
            layers::attention_forward(kn, &mut a.oh, pl, q, k, vv, dims);
            let ao = &mut a.ao[li * r * qd..(li + 1) * r * qd];
            layers::heads_layout(ao, &mut a.oh, t, nh, hs, true);

            let xmid = &mut a.xmid[li * r * d..(li + 1) * r * d];
            matmul::linear_forward(kn, &mut a.tmp, xmid, ao, wo, r);
            layers::add(kn, xmid, x);
            let xn2 = &mut a.xn2[li * r * d..(li + 1) * r * d];
            layers::rmsnorm_forward(kn, xn2, xmid, &p[o.ffn_norm + li * d..][..d], eps);
            let h1 = &mut a.h1[li * r * h..(li + 1) * r * h];
            let h3 = &mut a.h3[li * r * h..(li + 1) * r * h];
            let g = &mut a.g[li * r * h..(li + 1) * r * h];
            matmul::linear_forward(kn, &mut a.tmp, h1, xn2, w1, r);
            matmul::linear_forward(kn, &mut a.tmp, h3, xn2, w3, r);
            layers::swiglu_forward(kn, g, h1, h3);
            let xnext = &mut xrest[..r * d];
            matmul::linear_forward(kn, &mut a.tmp, xnext, g, w2, r);
            layers::add(kn, xnext, xmid);
        }
        let xl = &a.x[l * r * d..];
        layers::rmsnorm_forward(kn, &mut a.xnf, xl, &p[o.final_norm..][..d], eps);
        Ok(())
    }

    /// The logits of every position of the last forward, `(R, V)`; tests compare them with inference.
    pub fn logits(&self, p: &[f32], a: &Acts) -> Vec<f32> {
        let Dims { d, v, .. } = a.dims;
        let r = a.dims.rows();
        let mut out = vec![0.0; r * v];
        let cls = &p[self.off.cls..][..v * d];
        matmul::linear_forward(self.kn, &mut Tmp::default(), &mut out, &a.xnf, cls, r);
        out
    }

    /// The summed cross-entropy of the batch's counted targets after [`Model::forward`], and their count.
    pub fn loss(&self, p: &[f32], a: &mut Acts, batch: &Batch) -> (f64, usize) {
        let (rows, targets) = counted_rows(batch);
        let d = a.dims.d;
        let mut xn = vec![0.0f32; rows.len() * d];
        for (dst, &i) in xn.chunks_exact_mut(d).zip(&rows) {
            dst.copy_from_slice(&a.xnf[i * d..(i + 1) * d]);
        }
        let ce = self.ce(p, &mut a.cls_t, a.dims.v);
        let sum = ce.run(&mut a.logits, &xn, &targets, None);
        (sum, rows.len())
    }

    /// The cross-entropy over the classifier of `p`, transposed into `cls_t`.
    fn ce<'a>(&self, p: &'a [f32], cls_t: &'a mut Vec<f32>, v: usize) -> CrossEntropy<'a> {
        let d = self.config.dim as usize;
        let classifier = &p[self.off.cls..][..v * d];
        cls_t.resize(v * d, 0.0);
        matmul::transpose_panels(cls_t, classifier, v, d);
        CrossEntropy {
            kn: self.kn,
            classifier,
            classifier_t: cls_t,
            vocab: v,
        }
    }

    /// Forward, loss and backward of one batch: adds `scale ·` the gradient of the summed loss into `grads`
    /// (laid out like the parameters) and returns the summed loss and the count of targets.
    pub fn forward_backward(
        &self,
        p: &[f32],
        grads: &mut [f32],
        a: &mut Acts,
        batch: &Batch,
        scale: f32,
    ) -> anyhow::Result<(f64, usize)> {
        anyhow::ensure!(
            grads.len() == self.off.total,
            "gradient buffer of {} for {} parameters",
            grads.len(),
            self.off.total
        );
        anyhow::ensure!(
            (batch.b, batch.t) == (a.dims.b, a.dims.t),
            "batch shape does not match the activations"
        );
        self.forward(p, a, &batch.tokens)?;
        let Dims {
            d,
            h,
            l,
            nh,
            nkv,
            hs,
            v,
            t,
            ..
        } = a.dims;
        let r = a.dims.rows();
        let (qd, kvd) = (a.dims.qd(), a.dims.kvd());
        let (kn, o, eps) = (self.kn, self.off, self.config.norm_eps);
        let mut gb = a.grad.take().unwrap_or_else(|| {
            let z = |n: usize| vec![0.0f32; n];
            GradBufs {
                dx: z(r * d),
                dxn: z(r * d),
                dq: z(r * qd.max(d)),
                dk: z(r * kvd),
                dv: z(r * kvd),
                dqh: z(r * qd),
                dkh: z(r * kvd),
                dvh: z(r * kvd),
                doh: z(r * qd),
                dh1: z(r * h),
                dh3: z(r * h),
                dg: z(r * h),
                xn_rows: Vec::new(),
                dxn_rows: Vec::new(),
            }
        });

        // Loss over the counted rows only; the others get no gradient from the classifier.
        let (rows, targets) = counted_rows(batch);
        // (counted, D) inputs and gradients of the classifier, kept between steps (no page faults per step).
        // When every row counts (plain text), the final norm's output and gradient serve as they are.
        let every = rows.len() == r;
        let (xn, dxn_rows) = if every {
            (&a.xnf, &mut gb.dxn)
        } else {
            let (xn, dxn_rows) = (&mut gb.xn_rows, &mut gb.dxn_rows);
            xn.resize(rows.len() * d, 0.0);
            dxn_rows.resize(rows.len() * d, 0.0);
            for (dst, &i) in xn.chunks_exact_mut(d).zip(&rows) {
                dst.copy_from_slice(&a.xnf[i * d..(i + 1) * d]);
            }
            (&*xn, dxn_rows)
        };
        let loss = self.ce(p, &mut a.cls_t, v).run(
            &mut a.logits,
            xn,
            &targets,
            Some(CeGrad {
                dxn: dxn_rows,
                dclassifier: &mut grads[o.cls..o.cls + v * d],
                scale,
            }),
        );
        if !every {
            gb.dxn.fill(0.0);
            for (src, &i) in gb.dxn_rows.chunks_exact(d).zip(&rows) {
                gb.dxn[i * d..(i + 1) * d].copy_from_slice(src);
            }
        }
        // Final norm.
        gb.dx.fill(0.0);
        layers::rmsnorm_backward(
            &mut gb.dx,
            &mut grads[o.final_norm..][..d],
            &gb.dxn,
            &a.x[l * r * d..],
            &p[o.final_norm..][..d],
            eps,
        );

        let dims = AttnDims {
            t,
            hs,
            group: nh / nkv,
        };
        for li in (0..l).rev() {
            let x = &a.x[li * r * d..(li + 1) * r * d];
            let xn1 = &a.xn1[li * r * d..(li + 1) * r * d];
            let ao = &a.ao[li * r * qd..(li + 1) * r * qd];
            let xmid = &a.xmid[li * r * d..(li + 1) * r * d];
            let xn2 = &a.xn2[li * r * d..(li + 1) * r * d];
            let h1 = &a.h1[li * r * h..(li + 1) * r * h];
            let h3 = &a.h3[li * r * h..(li + 1) * r * h];
            let g = &a.g[li * r * h..(li + 1) * r * h];

            // x_{l+1} = xmid + g · w2ᵀ: dg = dx · w2, dw2 += dxᵀ · g; dx flows on to xmid unchanged.
            matmul::linear_backward(
                kn,
                Some((&mut gb.dg, false)),
                &mut grads[o.w2 + li * d * h..][..d * h],
                &gb.dx,
                g,
                &p[o.w2 + li * d * h..][..d * h],
                r,
            );
            layers::swiglu_backward(kn, &mut gb.dh1, &mut gb.dh3, &gb.dg, h1, h3);
            matmul::linear_backward(
                kn,
                Some((&mut gb.dxn, false)),
                &mut grads[o.w1 + li * h * d..][..h * d],
                &gb.dh1,
                xn2,
                &p[o.w1 + li * h * d..][..h * d],
                r,
            );
            matmul::linear_backward(
                kn,
                Some((&mut gb.dxn, true)),
                &mut grads[o.w3 + li * h * d..][..h * d],
                &gb.dh3,
                xn2,
                &p[o.w3 + li * h * d..][..h * d],
                r,
            );
            layers::rmsnorm_backward(
                &mut gb.dx,
                &mut grads[o.ffn_norm + li * d..][..d],
                &gb.dxn,
                xmid,
                &p[o.ffn_norm + li * d..][..d],
                eps,
            );

            // xmid = x + ao · woᵀ
            let dao = &mut gb.dq[..r * qd];
            matmul::linear_backward(
                kn,
                Some((dao, false)),
                &mut grads[o.wo + li * d * qd..][..d * qd],
                &gb.dx,
                ao,
                &p[o.wo + li * d * qd..][..d * qd],
                r,
            );
            layers::heads_layout(dao, &mut gb.doh, t, nh, hs, false);
            layers::attention_backward(
                kn,
                &mut gb.dqh,
                &mut gb.dkh,
                &mut gb.dvh,
                &gb.doh,
                &a.p[li * r * nh * t..(li + 1) * r * nh * t],
                &a.q[li * r * qd..(li + 1) * r * qd],
                &a.k[li * r * kvd..(li + 1) * r * kvd],
                &a.v[li * r * kvd..(li + 1) * r * kvd],
                dims,
            );
            let dq = &mut gb.dq[..r * qd];
            layers::heads_layout(dq, &mut gb.dqh, t, nh, hs, true);
            layers::rope(kn, dq, &a.rope, t, qd, true);
            layers::heads_layout(&mut gb.dk, &mut gb.dkh, t, nkv, hs, true);
            layers::rope(kn, &mut gb.dk, &a.rope, t, kvd, true);
            layers::heads_layout(&mut gb.dv, &mut gb.dvh, t, nkv, hs, true);

            for (j, (off, dy, width)) in [
                (o.wq, &gb.dq[..r * qd], qd),
                (o.wk, &gb.dk[..], kvd),
                (o.wv, &gb.dv[..], kvd),
            ]
            .into_iter()
            .enumerate()
            {
                matmul::linear_backward(
                    kn,
                    Some((&mut gb.dxn, j > 0)),
                    &mut grads[off + li * width * d..][..width * d],
                    dy,
                    xn1,
                    &p[off + li * width * d..][..width * d],
                    r,
                );
            }
            layers::rmsnorm_backward(
                &mut gb.dx,
                &mut grads[o.attn_norm + li * d..][..d],
                &gb.dxn,
                x,
                &p[o.attn_norm + li * d..][..d],
                eps,
            );
        }
        // Embedding: each row's gradient goes to its token's row (serial: tokens repeat).
        for (row, &tk) in gb.dx.chunks_exact(d).zip(&a.tokens) {
            let e = o.emb + tk as usize * d;
            for (gv, dv) in grads[e..e + d].iter_mut().zip(row) {
                *gv += dv;
            }
        }
        a.grad = Some(gb);
        Ok((loss, rows.len()))
    }
}

/// Indices of the rows whose target counts, and those targets.
fn counted_rows(batch: &Batch) -> (Vec<usize>, Vec<u32>) {
    batch
        .mask
        .iter()
        .zip(&batch.targets)
        .enumerate()
        .filter(|(_, (m, _))| **m)
        .map(|(i, (_, &tg))| (i, tg))
        .unzip()
}
