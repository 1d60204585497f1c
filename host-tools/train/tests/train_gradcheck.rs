//! The trainer's forward and hand-written backward against two independent references:
//! - a plain f64 forward written here from the model's definition, whose central finite differences give
//!   every parameter's gradient (tolerances below);
//! - the inference forward of `enigma-core` (`Transformer::forward`), whose logits the trainer must
//!   reproduce so a trained model runs unchanged under `enigma run`.

use enigma_core::config::{Config, ParamLayout};
use enigma_core::kernels::{generic, kernels};
use enigma_core::{KvCache, Scratch, Serial, Transformer, Weights};
use enigma_train::{Batch, Model};

fn tiny(tied: bool) -> Config {
    Config {
        dim: 16,
        hidden_dim: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 19,
        seq_len: 8,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: tied,
    }
}

/// Deterministic values in [-scale, scale]; norms near 1 like a trained model's.
fn params(c: &Config, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(c);
    let mut rng = enigma_testkit::XorShift::new(seed);
    let mut next = move || rng.unit_f64() * 2.0 - 1.0;
    let mut out = Vec::new();
    for t in layout.iter() {
        for _ in 0..t.numel() {
            out.push(if t.is_norm() {
                1.0 + 0.3 * next() as f32
            } else {
                0.5 * next() as f32
            });
        }
    }
    out
}

fn batch(c: &Config, b: usize, t: usize, masked: &[usize]) -> Batch {
    let v = c.vocab_size;
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) as u32 * 5) % v).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i * 11 + 1) as u32 * 3) % v).collect();
    let mask = (0..b * t).map(|i| !masked.contains(&i)).collect();
    Batch {
        b,
        t,
        tokens,
        targets,
        mask,
    }
}

/// The summed cross-entropy of the counted targets, computed in f64 by the textbook formulas.
fn reference_loss(c: &Config, p: &[f64], batch: &Batch) -> f64 {
    let (d, hd, nh, nkv) = (
        c.dim as usize,
        c.hidden_dim as usize,
        c.n_heads as usize,
        c.n_kv_heads as usize,
    );
    let (hs, v, t) = (c.head_size(), c.vocab_size as usize, batch.t);
    let kvd = nkv * hs;
    let layout = ParamLayout::new(c);
    let off = |n: &str| layout.flat_offset(n).unwrap() as usize;
    let cls = if c.tied_classifier {
        off("token_embedding")
    } else {
        off("classifier")
    };
    let eps = c.norm_eps as f64;
    let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let ss = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ss + eps).sqrt();
        x.iter().zip(w).map(|(a, b)| a * r * b).collect()
    };
    // y (n) = W (n, k) x (k)
    let mv = |w: &[f64], x: &[f64], n: usize| -> Vec<f64> {
        (0..n)
            .map(|i| (0..x.len()).map(|j| w[i * x.len() + j] * x[j]).sum())
            .collect()
    };
    let mut table = vec![0f32; t * hs];
    for pos in 0..t {
        generic::rope_table(&mut table[pos * hs..(pos + 1) * hs], hs, pos, c.rope_theta);
    }
    let rope = |x: &mut [f64], pos: usize| {
        for head in x.chunks_exact_mut(hs) {
            for i in 0..hs / 2 {
                let (co, si) = (
                    table[pos * hs + 2 * i] as f64,
                    table[pos * hs + 2 * i + 1] as f64,
                );
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * co - b * si;
                head[2 * i + 1] = a * si + b * co;
            }
        }
    };
    let mut total = 0.0;
    for s in 0..batch.b {
        let toks = &batch.tokens[s * t..(s + 1) * t];
        let mut x: Vec<Vec<f64>> = toks
            .iter()
            .map(|&tk| p[off("token_embedding") + tk as usize * d..][..d].to_vec())
            .collect();
        for l in 0..c.n_layers as usize {
            let an = &p[off("attn_norm") + l * d..][..d];
            let wq = &p[off("wq") + l * d * d..][..d * d];
            let wk = &p[off("wk") + l * kvd * d..][..kvd * d];
            let wv = &p[off("wv") + l * kvd * d..][..kvd * d];
            let wo = &p[off("wo") + l * d * d..][..d * d];
            let (mut q, mut k, mut vv) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, xi) in x.iter().enumerate() {
                let xn = rms(xi, an);
                let mut qi = mv(wq, &xn, d);
                let mut ki = mv(wk, &xn, kvd);
                rope(&mut qi, pos);
                rope(&mut ki, pos);
                q.push(qi);
                k.push(ki);
                vv.push(mv(wv, &xn, kvd));
            }
            for i in 0..t {
                let mut att = vec![0.0; d];
                for h in 0..nh {
                    let kh = h / (nh / nkv);
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hs)
                                .map(|e| q[i][h * hs + e] * k[j][kh * hs + e])
                                .sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                    for (j, s) in sc.iter().enumerate() {
                        let pj = (s - m).exp() / z;
                        for e in 0..hs {
                            att[h * hs + e] += pj * vv[j][kh * hs + e];
                        }
                    }
                }
                let o = mv(wo, &att, d);
                for e in 0..d {
                    x[i][e] += o[e];
                }
            }
            let fnorm = &p[off("ffn_norm") + l * d..][..d];
            let w1 = &p[off("w1") + l * hd * d..][..hd * d];
            let w2 = &p[off("w2") + l * d * hd..][..d * hd];
            let w3 = &p[off("w3") + l * hd * d..][..hd * d];
            for xi in x.iter_mut() {
                let xn = rms(xi, fnorm);
                let a = mv(w1, &xn, hd);
                let b = mv(w3, &xn, hd);
                let g: Vec<f64> = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                    .collect();
                let o = mv(w2, &g, d);
                for e in 0..d {
                    xi[e] += o[e];
                }
            }
        }
        for (i, xi) in x.iter().enumerate() {
            let row = s * t + i;
            if !batch.mask[row] {
                continue;
            }
            let xn = rms(xi, &p[off("final_norm")..][..d]);
            let logits = mv(&p[cls..][..v * d], &xn, v);
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            total += lse - logits[batch.targets[row] as usize];
        }
    }
    total
}

fn gradient_check(c: Config) {
    let model = Model::new(c, kernels()).unwrap();
    let p = params(&c, 7);
    // Some targets masked out, as the assistant-only loss of chat data does.
    let batch = batch(&c, 2, 6, &[0, 3, 7]);
    let count = batch.count();
    let mut acts = model.acts(batch.b, batch.t).unwrap();
    let mut grads = vec![0.0f32; p.len()];
    let (sum, n) = model
        .forward_backward(&p, &mut grads, &mut acts, &batch, 1.0 / count as f32)
        .unwrap();
    assert_eq!(n, count);

    let mut p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let ref_sum = reference_loss(&c, &p64, &batch);
    assert!(
        (sum - ref_sum).abs() <= 1e-5 * ref_sum.abs(),
        "f32 loss {sum} vs f64 reference {ref_sum}"
    );

    // Central differences of the mean loss in f64: the error of the difference is ~h² · f''' ≈ 1e-10 here,
    // far below the f32 analytic gradient's own rounding (~1e-6 relative), which sets the tolerance.
    let h = 1e-5;
    let layout = ParamLayout::new(&c);
    let mut at = 0;
    for spec in layout.iter() {
        let n = spec.numel() as usize;
        let (mut worst, mut scale, mut max_err) = (f64::MIN, 0.0f64, 0.0f64);
        for i in at..at + n {
            let orig = p64[i];
            p64[i] = orig + h;
            let up = reference_loss(&c, &p64, &batch);
            p64[i] = orig - h;
            let down = reference_loss(&c, &p64, &batch);
            p64[i] = orig;
            let fd = (up - down) / (2.0 * h) / count as f64;
            let err = (grads[i] as f64 - fd).abs();
            // Tolerance: 1e-4 of the tensor's largest gradient plus 1e-3 relative.
            scale = scale.max(fd.abs());
            max_err = max_err.max(err);
            worst = worst.max(err - 1e-3 * fd.abs());
        }
        assert!(
            worst <= 1e-4 * scale,
            "{}: gradient differs from finite differences by {worst:e} (largest gradient {scale:e})",
            spec.name
        );
        assert!(
            scale > 1e-4,
            "{}: gradient is (almost) zero, the check proves nothing",
            spec.name
        );
        eprintln!(
            "{:<16} ok: largest error {max_err:.2e}, largest gradient {scale:.2e}",
            spec.name
        );
        at += n;
    }
}

#[test]
fn every_gradient_matches_finite_differences_tied_classifier() {
    gradient_check(tiny(true));
}

#[test]
fn every_gradient_matches_finite_differences_separate_classifier() {
    gradient_check(tiny(false));
}

#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let c = tiny(true);
    let model = Model::new(c, kernels()).unwrap();
    let p = params(&c, 3);
    let batch = batch(&c, 3, 8, &[1]);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut acts = model.acts(batch.b, batch.t).unwrap();
            let mut g = vec![0.0f32; p.len()];
            let (loss, _) = model
                .forward_backward(&p, &mut g, &mut acts, &batch, 0.1)
                .unwrap();
            (loss, g)
        })
    };
    let (l1, g1) = run(1);
    let (l3, g3) = run(3);
    assert_eq!(l1.to_bits(), l3.to_bits());
    assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn trainer_logits_equal_the_inference_forward() {
    for tied in [true, false] {
        let c = tiny(tied);
        let model = Model::new(c, kernels()).unwrap();
        let p = params(&c, 11);
        let t = c.seq_len as usize;
        let batch = batch(&c, 2, t, &[]);
        let mut acts = model.acts(batch.b, batch.t).unwrap();
        model.forward(&p, &mut acts, &batch.tokens).unwrap();
        let logits = model.logits(&p, &acts);
        let v = c.vocab_size as usize;

        let weights = Weights::from_flat(&c, &p).unwrap();
        let tf = Transformer::new(c, weights, kernels()).unwrap();
        for s in 0..batch.b {
            let mut kv = vec![0.0f32; KvCache::len(&c)];
            let mut cache = KvCache::new(&mut kv[..], &c).unwrap();
            let mut sbuf = vec![0.0; Scratch::len(&c, 1)];
            let mut scratch = Scratch::new(&mut sbuf, &c, 1).unwrap();
            for pos in 0..t {
                let tok = batch.tokens[s * t + pos];
                let got = tf
                    .forward(&Serial, &mut cache, &mut scratch, &[tok], pos)
                    .unwrap();
                let want = &logits[(s * t + pos) * v..(s * t + pos + 1) * v];
                for (a, b) in got.iter().zip(want) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "seq {s} pos {pos}: inference {a} vs trainer {b}"
                    );
                }
            }
        }
    }
}
