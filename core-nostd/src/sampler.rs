//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.
//!
//! The PRNG and the temperature/top-p path are llama2.c's, so a seed gives the same tokens as `run.c` does.

use enigma_kernels::generic;

/// How to sample. `temperature == 0` is greedy; `top_k == 0` and `top_p >= 1` switch those filters off;
/// `repetition_penalty == 1` switches the penalty off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    /// CTRL-style: a recent token's positive logit is divided by it, a negative one multiplied, so both
    /// become less likely.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at (at most [`MAX_RECENT`]).
    pub repeat_last_n: u32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

pub const MAX_RECENT: usize = 256;

/// A candidate token and its probability; the sampler's caller-owned scratch holds `V` of these.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProbIndex {
    pub prob: f32,
    pub index: u32,
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    recent: heapless::Deque<u32, MAX_RECENT>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        // xorshift never leaves the all-zero state.
        let rng = if cfg.seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            cfg.seed
        };
        Sampler {
            cfg,
            rng,
            recent: heapless::Deque::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// llama2.c's xorshift64*.
    pub fn next_u32(&mut self) -> u32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }

    /// Records a token of the context, for the repetition penalty.
    pub fn observe(&mut self, token: u32) {
        let keep = (self.cfg.repeat_last_n as usize).min(MAX_RECENT);
        if keep == 0 {
            return;
        }
        while self.recent.len() >= keep {
            self.recent.pop_front();
        }
        let _ = self.recent.push_back(token);
    }

    pub fn clear_history(&mut self) {
        self.recent.clear();
    }

    /// Picks the next token. Modifies `logits (V)` in place; `scratch` needs `V` entries when top-k or
    /// top-p is on (it may be empty otherwise).
    pub fn sample(&mut self, logits: &mut [f32], scratch: &mut [ProbIndex]) -> u32 {
        self.penalize(logits);
        if self.cfg.temperature <= 0.0 || logits.len() == 1 {
            return argmax(logits);
        }
        for l in logits.iter_mut() {
            *l /= self.cfg.temperature;
        }
        generic::softmax(logits);
        let coin = self.next_f32();
        let n = logits.len();
        let top_k = if self.cfg.top_k == 0 {
            n
        } else {
            (self.cfg.top_k as usize).min(n)
        };
        let top_p = self.cfg.top_p;
        if (top_k == n && (top_p <= 0.0 || top_p >= 1.0)) || scratch.len() < n {
            return sample_mult(logits, coin);
        }
        // Candidates: with top-p alone, tokens below (1 - p) / (n - 1) can never be in the nucleus (llama2.c).
        let cutoff = if top_k == n {
            (1.0 - top_p) / (n - 1) as f32
        } else {
            0.0
        };
        let mut m = 0;
        for (i, &p) in logits.iter().enumerate() {
            if p >= cutoff {
                scratch[m] = ProbIndex {
                    prob: p,
                    index: i as u32,
                };
                m += 1;
            }
        }
        let cands = &mut scratch[..m];
        let desc = |a: &ProbIndex, b: &ProbIndex| b.prob.total_cmp(&a.prob);
        let cands = if top_k < m {
            cands.select_nth_unstable_by(top_k - 1, desc);
            &mut cands[..top_k]
        } else {
            cands
        };
        cands.sort_unstable_by(desc);
        let mut total = 0.0f32;
        let mut last = cands.len().saturating_sub(1);
        for (i, c) in cands.iter().enumerate() {
            total += c.prob;
            if top_p > 0.0 && top_p < 1.0 && total > top_p {
                last = i;
                break;
            }
        }
        let r = coin * total;
        let mut cdf = 0.0f32;
        for c in &cands[..=last] {
            cdf += c.prob;
            if r < cdf {
                return c.index;
            }
        }
        cands.get(last).map_or(0, |c| c.index)
    }

    fn penalize(&self, logits: &mut [f32]) {
        let p = self.cfg.repetition_penalty;
        if p == 1.0 || p <= 0.0 {
            return;
        }
        for (i, &t) in self.recent.iter().enumerate() {
            // Once per distinct token, however often it recurs.
            if self.recent.iter().take(i).any(|&u| u == t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_mult(probs: &[f32], coin: f32) -> u32 {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i as u32;
        }
    }
    probs.len().saturating_sub(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &mut []), 1);
    }

    #[test]
    fn repetition_penalty_makes_negative_logits_less_likely_too() {
        // The original divided negative logits, which made repeated tokens *more* likely.
        let mut s = Sampler::new(SamplerConfig {
            repetition_penalty: 2.0,
            ..SamplerConfig::greedy()
        });
        let mut logits = [-1.0, -1.5, 2.0, 1.2];
        s.observe(0);
        s.observe(2);
        s.observe(2);
        s.penalize(&mut logits);
        assert_eq!(logits, [-2.0, -1.5, 1.0, 1.2]);
        assert_eq!(s.sample(&mut [-1.0, -1.5, 2.0, 1.2], &mut []), 3);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let mut scratch = [ProbIndex::default(); 5];
        let logits = [0.5, 2.0, 1.9, -3.0, 0.0];
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            temperature: 1.5,
            ..SamplerConfig::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &mut scratch), 1);
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                top_p: 0.95,
                ..SamplerConfig::default()
            });
            let mut out = [0u32; 32];
            for o in out.iter_mut() {
                *o = s.sample(&mut logits.clone(), &mut scratch.clone());
            }
            out
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_never_picks_outside_the_nucleus() {
        // Probabilities after softmax ~ [0.64, 0.24, 0.09, 0.03]: p = 0.7 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut scratch = [ProbIndex::default(); 4];
        let mut s = Sampler::new(SamplerConfig {
            top_p: 0.7,
            seed: 3,
            ..SamplerConfig::default()
        });
        let mut seen = [0u32; 4];
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone(), &mut scratch) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }
}
