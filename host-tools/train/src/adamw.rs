//! AdamW with decoupled weight decay, global-norm gradient clipping, and the learning-rate schedule.
//! The moments are flat buffers laid out like the parameters.

use enigma_core::config::{Config, ParamLayout};
use rayon::prelude::*;

/// Optimizer settings (PyTorch's `AdamW` arguments).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Gradients whose global L2 norm exceeds this are scaled down to it.
    pub clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
        }
    }
}

/// Linear warmup from `lr / warmup` to `lr`, then a cosine down to `min_lr` at `total` steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (cos * (self.lr - self.min_lr) as f64) as f32
    }
}

/// AdamW's state: first and second moments `(P)` and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates taken so far (bias correction uses it).
    pub t: u64,
    /// Which parameter ranges decay: matrices and the embedding do, norm weights do not.
    decay: Vec<(usize, usize, bool)>,
}

impl AdamW {
    pub fn new(config: &Config, cfg: AdamWConfig) -> AdamW {
        let layout = ParamLayout::new(config);
        let mut at = 0;
        let mut decay = Vec::new();
        for t in layout.iter() {
            let n = t.numel() as usize;
            decay.push((at, at + n, !t.is_norm()));
            at += n;
        }
        AdamW {
            cfg,
            m: vec![0.0; at],
            v: vec![0.0; at],
            t: 0,
            decay,
        }
    }

    /// Clips `grads` to the global norm `cfg.clip` (as `torch.nn.utils.clip_grad_norm_`), then takes one step
    /// at `lr`. Returns the norm before clipping.
    pub fn step(&mut self, params: &mut [f32], grads: &mut [f32], lr: f32) -> f32 {
        // Per-chunk sums in a fixed order: the same result on any number of threads.
        let norm = grads
            .par_chunks(1 << 14)
            .map(|c| {
                // 8 running sums, so the loop vectorises.
                let mut acc = [0.0f64; 8];
                for g in c.chunks(8) {
                    for (a, &g) in acc.iter_mut().zip(g) {
                        *a += (g as f64) * (g as f64);
                    }
                }
                acc.iter().sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>()
            .sqrt() as f32;
        let coef = self.cfg.clip / (norm + 1e-6);
        if coef < 1.0 {
            grads.par_iter_mut().for_each(|g| *g *= coef);
        }
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for &(a, b, decays) in &self.decay {
            let wd = if decays {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            params[a..b]
                .par_chunks_mut(4096)
                .zip(grads[a..b].par_chunks(4096))
                .zip(
                    self.m[a..b]
                        .par_chunks_mut(4096)
                        .zip(self.v[a..b].par_chunks_mut(4096)),
                )
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                        let denom = v[i].sqrt() / bc2_sqrt + c.eps;
                        p[i] = p[i] * wd - step_size * m[i] / denom;
                    }
                });
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-9);
        assert!((s.lr(9) - 1e-3).abs() < 1e-9);
        assert!((s.lr(10) - 1e-3).abs() < 1e-9);
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-6);
        assert!((s.lr(110) - 1e-4).abs() < 1e-9);
        assert!((s.lr(500) - 1e-4).abs() < 1e-9);
    }
}
