//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.
//!
//! The PRNG and the temperature/top-p path are llama2.c's, so a seed gives the same tokens as `run.c` does.

use crate::{Error, Result};
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
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Zeroable)]
pub struct ProbIndex {
    pub prob: f32,
    pub index: u32,
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    recent: heapless::Deque<u32, MAX_RECENT>,
    softmax: fn(&mut [f32]),
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
            softmax: generic::softmax,
        }
    }

    /// The same sampler with a tier's softmax ([`crate::kernels::Kernels::softmax`]) instead of the scalar
    /// reference: over a 32,000-token vocabulary the scalar `expf`s were a fifth of a busy server's time.
    /// Its last bits differ from the reference's, so a seed picks the same tokens only on the same tier.
    pub fn with_softmax(mut self, softmax: fn(&mut [f32])) -> Self {
        self.softmax = softmax;
        self
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
    ///
    /// A logit that is NaN or infinite is an error, not a token: it means the model's weights or activations
    /// overflowed, and any token picked from it would be noise.
    pub fn sample(&mut self, logits: &mut [f32], scratch: &mut [ProbIndex]) -> Result<u32> {
        if let Some((token, &value)) = logits.iter().enumerate().find(|(_, l)| !l.is_finite()) {
            return Err(Error::NonFiniteLogit {
                token: token as u32,
                value,
            });
        }
        if logits.is_empty() {
            return Err(Error::BufferTooSmall {
                what: "logits",
                needed: 1,
                found: 0,
            });
        }
        self.penalize(logits);
        let t = self.cfg.temperature;
        // Dividing by a temperature so small that the extreme logits overflow is the greedy limit; dividing
        // anyway would turn them into infinities and the softmax into NaN. Division is monotonic, so the
        // extremes decide for every logit.
        let (lo, hi) = logits
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        let underflows = !(lo / t).is_finite() || !(hi / t).is_finite();
        if t.is_nan() || t <= 0.0 || underflows || logits.len() == 1 {
            return Ok(argmax(logits));
        }
        for l in logits.iter_mut() {
            *l /= t;
        }
        (self.softmax)(logits);
        let coin = self.next_f32();
        let n = logits.len();
        let top_k = if self.cfg.top_k == 0 {
            n
        } else {
            (self.cfg.top_k as usize).min(n)
        };
        // A NaN top-p is "off", like the out-of-range values.
        let top_p = self.cfg.top_p;
        let nucleus = top_p > 0.0 && top_p < 1.0;
        if (top_k == n && !nucleus) || scratch.len() < n {
            return Ok(sample_mult(logits, coin));
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
        // With a tiny p and a flat distribution nothing reaches the cutoff: the nucleus is then the top token.
        if m == 0 {
            return Ok(argmax(logits));
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
        let mut last = cands.len() - 1;
        for (i, c) in cands.iter().enumerate() {
            total += c.prob;
            if nucleus && total > top_p {
                last = i;
                break;
            }
        }
        let r = coin * total;
        let mut cdf = 0.0f32;
        for c in &cands[..=last] {
            cdf += c.prob;
            if r < cdf {
                return Ok(c.index);
            }
        }
        Ok(cands[last].index)
    }

    fn penalize(&self, logits: &mut [f32]) {
        let p = self.cfg.repetition_penalty;
        if p == 1.0 || p.is_nan() || p <= 0.0 {
            return;
        }
        for (i, &t) in self.recent.iter().enumerate() {
            // Once per distinct token, however often it recurs.
            if self.recent.iter().take(i).any(|&u| u == t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                // Clamped: a huge logit times a large penalty must not become an infinity.
                let v = if *l > 0.0 { *l / p } else { *l * p };
                *l = v.clamp(f32::MIN, f32::MAX);
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
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &mut []), Ok(1));
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
        assert_eq!(s.sample(&mut [-1.0, -1.5, 2.0, 1.2], &mut []), Ok(3));
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
            assert_eq!(s.sample(&mut logits.clone(), &mut scratch), Ok(1));
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                top_p: 0.95,
                ..SamplerConfig::default()
            });
            let mut out = [0u32; 32];
            for o in out.iter_mut() {
                *o = s.sample(&mut logits.clone(), &mut scratch.clone()).unwrap();
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
            seen[s.sample(&mut logits.clone(), &mut scratch).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }

    fn nucleus(temperature: f32) -> Sampler {
        Sampler::new(SamplerConfig {
            temperature,
            top_p: 0.9,
            ..SamplerConfig::default()
        })
    }

    /// The top-p cut sliced `cands[..=last]` of an empty candidate list when every probability was NaN.
    #[test]
    fn non_finite_logits_stop_with_an_error_instead_of_a_top_p_panic() {
        let mut scratch = [ProbIndex::default(); 4];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut logits = [0.5, bad, 1.0, 2.0];
            let err = nucleus(1.0).sample(&mut logits, &mut scratch).unwrap_err();
            assert!(
                matches!(err, Error::NonFiniteLogit { token: 1, .. }),
                "{err:?}"
            );
            let greedy = Sampler::new(SamplerConfig::greedy()).sample(&mut [bad, 1.0], &mut []);
            assert!(greedy.is_err(), "{greedy:?}");
        }
    }

    /// `-t 1e-38` made every logit divided by it infinite, and the softmax NaN.
    #[test]
    fn a_temperature_that_overflows_the_logits_is_greedy() {
        let mut scratch = [ProbIndex::default(); 4];
        for t in [1e-38, f32::MIN_POSITIVE, 1e-45] {
            let mut logits = [5.0, 10.0, -3.0, 9.9];
            assert_eq!(nucleus(t).sample(&mut logits, &mut scratch), Ok(1), "t={t}");
        }
    }

    /// A weight of 3.4e38 gives logits near f32::MAX: still finite, so they must sample without a NaN.
    #[test]
    fn huge_finite_logits_sample_without_panicking() {
        let mut scratch = [ProbIndex::default(); 3];
        let logits = [f32::MAX, -f32::MAX, 3.0e38];
        let mut s = nucleus(1.0);
        for _ in 0..50 {
            let t = s.sample(&mut logits.clone(), &mut scratch).unwrap();
            assert!(t == 0 || t == 2, "{t}");
        }
        // The repetition penalty cannot push them to infinity either.
        let mut s = Sampler::new(SamplerConfig {
            repetition_penalty: 1e30,
            ..SamplerConfig::default()
        });
        s.observe(1);
        assert!(s.sample(&mut logits.clone(), &mut scratch).is_ok());
    }

    /// What a fuzzer would try: arbitrary logits (huge, tiny, equal) under arbitrary settings, NaN ones
    /// included. Every call returns a token inside the vocabulary or an error, never a panic.
    #[test]
    fn arbitrary_logits_and_settings_never_panic() {
        let specials = [
            0.0,
            -0.0,
            1e-45,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            f32::NAN,
            f32::INFINITY,
            1e-38,
            2.0,
        ];
        let mut rng = Sampler::new(SamplerConfig::default());
        let pick = |rng: &mut Sampler| specials[rng.next_u32() as usize % specials.len()];
        let mut scratch = [ProbIndex::default(); 7];
        for round in 0..20_000u32 {
            let n = 1 + (round as usize % 7);
            let cfg = SamplerConfig {
                temperature: pick(&mut rng),
                top_k: rng.next_u32() % 9,
                top_p: pick(&mut rng),
                repetition_penalty: pick(&mut rng),
                repeat_last_n: rng.next_u32() % 4,
                seed: u64::from(round),
            };
            let mut s = Sampler::new(cfg);
            s.observe(rng.next_u32() % 8);
            let mut logits = [0f32; 7];
            for l in logits[..n].iter_mut() {
                *l = if rng.next_u32().is_multiple_of(3) {
                    pick(&mut rng)
                } else {
                    rng.next_f32() * 20.0 - 10.0
                };
            }
            let scratch_len = if round % 2 == 0 { n } else { 0 };
            if let Ok(t) = s.sample(&mut logits[..n], &mut scratch[..scratch_len]) {
                assert!((t as usize) < n, "{cfg:?}: {t}");
            }
        }
        assert!(Sampler::new(SamplerConfig::default())
            .sample(&mut [], &mut [])
            .is_err());
    }
}
