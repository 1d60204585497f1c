//! What `enigma bench` says, decided here so tests reach it (the CLI only prints a [`Report`]): the dtype a
//! model's weights are stored in, and whether decode's DRAM bandwidth bound applies at all. A model whose
//! weights fit in the last-level cache is not streamed from DRAM once per token, so setting its decode speed
//! against DRAM bandwidth gave figures like "158% of the bound", which meant nothing.

use crate::speed::{self, BenchResult};
use anyhow::{bail, Result};
use enigma_core::config::{W1, W2, W3, WK, WO, WQ, WV};
use enigma_core::kernels::DType;
use enigma_core::{EnigmaFile, KvType};
use enigma_runtime::hardware::human_bytes;
use enigma_runtime::{Backend, Model};
use serde_json::{json, Value};
use std::fmt;

/// The per-layer projection and FFN matrices: what "a q8_0 model" means. Norms stay f32 whatever the
/// matrices are, and the embedding and classifier may be kept at a higher precision (q4_0 keeps them at
/// q8_0) or be large enough to outweigh the layers in a small model, so they do not say what a model is.
pub const WEIGHT_MATRICES: [&str; 7] = [WQ, WK, WV, WO, W1, W2, W3];

/// The weight matrices stored in one dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtypeGroup {
    pub dtype: DType,
    /// In [`WEIGHT_MATRICES`] order.
    pub matrices: Vec<&'static str>,
    pub bytes: u64,
}

/// The dtypes of a model's weight matrices, the one most of them are in first (the dtype the model was
/// quantized to, ahead of the matrices that had to stay f32 even when those hold more bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightDtypes(pub Vec<DtypeGroup>);

impl WeightDtypes {
    pub fn of(file: &EnigmaFile<'_>) -> WeightDtypes {
        let mut groups: Vec<DtypeGroup> = Vec::new();
        for name in WEIGHT_MATRICES {
            let Some(t) = file.tensor(name) else {
                continue;
            };
            let bytes = t.bytes.len() as u64;
            match groups.iter_mut().find(|g| g.dtype == t.dtype) {
                Some(g) => {
                    g.matrices.push(name);
                    g.bytes += bytes;
                }
                None => groups.push(DtypeGroup {
                    dtype: t.dtype,
                    matrices: vec![name],
                    bytes,
                }),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse((g.matrices.len(), g.bytes)));
        WeightDtypes(groups)
    }

    /// The dtype of every weight matrix, or `None` when they differ.
    pub fn single(&self) -> Option<DType> {
        match self.0.as_slice() {
            [g] => Some(g.dtype),
            _ => None,
        }
    }
}

/// `q8_0`, or `mixed (q8_0: wq, wk, wv, wo, w1, w3; f32: w2)`.
impl fmt::Display for WeightDtypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no weight matrices"),
            [g] => f.write_str(g.dtype.name()),
            groups => {
                f.write_str("mixed (")?;
                for (i, g) in groups.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{}: {}", g.dtype.name(), g.matrices.join(", "))?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One of a CPU's caches, as Linux's sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    pub level: u32,
    /// Instruction caches never hold weights.
    pub instruction: bool,
    pub bytes: u64,
}

/// A cache size as sysfs writes it: `32K`, `32768K`, `16M`, or plain bytes.
pub fn parse_cache_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// The last-level cache among `caches`: the largest data or unified cache of the deepest level.
pub fn last_level(caches: &[Cache]) -> Option<u64> {
    let data = caches.iter().filter(|c| !c.instruction);
    let level = data.clone().map(|c| c.level).max()?;
    data.filter(|c| c.level == level).map(|c| c.bytes).max()
}

/// This machine's last-level cache in bytes, read from the first CPU's entries in sysfs. Other systems have
/// no such files, so there (or when a file does not parse) the cache is unknown: `None`.
pub fn last_level_cache_bytes() -> Option<u64> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut caches = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("index"))
        {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(path.join(f)).ok();
        caches.push(Cache {
            level: read("level")?.trim().parse().ok()?,
            instruction: read("type")?.trim() == "Instruction",
            bytes: parse_cache_size(&read("size")?)?,
        });
    }
    last_level(&caches)
}

/// Whether the weights one decode step reads stay in a cache of `cache_bytes` from one token to the next.
/// An unknown cache is taken not to hold them, so the DRAM bound is reported as it always was.
pub fn weights_fit_cache(weight_bytes: u64, cache_bytes: Option<u64>) -> bool {
    cache_bytes.is_some_and(|c| weight_bytes <= c)
}

/// What limits decode, as far as this machine's measurements can say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecodeBound {
    /// The weights fit in the last-level cache: decode does not stream them from DRAM, so DRAM bandwidth
    /// bounds nothing.
    InCache { cache_bytes: u64 },
    /// Decode streams every weight from DRAM once per token: at most `tokens_per_s`, of which it reached
    /// `fraction`.
    Dram { tokens_per_s: f64, fraction: f64 },
    /// The bandwidth could not be measured (no memory for the probe's buffer).
    Unmeasured,
}

pub fn decode_bound(
    weight_bytes: u64,
    cache_bytes: Option<u64>,
    bandwidth: f64,
    gen_tokens_per_s: f64,
) -> DecodeBound {
    if let Some(c) = cache_bytes.filter(|_| weights_fit_cache(weight_bytes, cache_bytes)) {
        return DecodeBound::InCache { cache_bytes: c };
    }
    if bandwidth <= 0.0 || weight_bytes == 0 {
        return DecodeBound::Unmeasured;
    }
    let tokens_per_s = bandwidth / weight_bytes as f64;
    DecodeBound::Dram {
        tokens_per_s,
        fraction: gen_tokens_per_s / tokens_per_s,
    }
}

/// Everything `enigma bench` measured and says.
#[derive(Clone, Debug)]
pub struct Report {
    pub model: String,
    pub dtypes: WeightDtypes,
    /// The backend in words (`cpu (avx2, 2 threads)`).
    pub backend: String,
    pub kernels: &'static str,
    pub threads: usize,
    pub rounds: usize,
    pub speed: BenchResult,
    pub weight_bytes_per_token: u64,
    pub prefill_flops_per_token: f64,
    /// Bytes/s; 0 when it could not be measured.
    pub read_bandwidth: f64,
    /// The instructions the FMA peak was measured with (`avx2`, ...).
    pub fma_unit: &'static str,
    /// Flop/s over all threads.
    pub fma_peak: f64,
    /// The int8 dot's instructions and peak operations/s over all threads (2 per multiply-add); `None`
    /// without a SIMD int8 dot.
    pub int8_peak: Option<(&'static str, f64)>,
    pub cache_bytes: Option<u64>,
}

impl Report {
    /// Measures `model` on `backend` (speed medians over `rounds`), then this machine's read bandwidth,
    /// FMA peak and last-level cache.
    pub fn measure(
        model: &Model<'_>,
        backend: &Backend,
        name: String,
        prompt_tokens: usize,
        gen_tokens: usize,
        rounds: usize,
        kv: KvType,
    ) -> Result<Report> {
        if rounds == 0 {
            bail!("--rounds must be at least 1 (the speeds reported are medians over the rounds)");
        }
        let threads = backend.threads();
        let speed = speed::run_model(model, backend, prompt_tokens, gen_tokens, rounds, kv)?;
        let read_bandwidth = speed::read_bandwidth(threads, 5);
        let (fma_unit, peak1) = enigma_core::kernels::probe::fma_peak_flops(0.2);
        let int8_peak = enigma_core::kernels::probe::int8_peak_ops(0.2)
            .map(|(unit, ops)| (unit, ops * threads as f64));
        Ok(Report {
            model: name,
            dtypes: WeightDtypes::of(&model.file),
            backend: backend.describe(),
            kernels: backend.kernels().tier.name(),
            threads,
            rounds,
            weight_bytes_per_token: speed::weight_bytes_per_token(model),
            prefill_flops_per_token: speed::prefill_flops_per_token(model, speed.prompt_tokens),
            speed,
            read_bandwidth,
            fma_unit,
            fma_peak: peak1 * threads as f64,
            int8_peak,
            cache_bytes: last_level_cache_bytes(),
        })
    }

    pub fn decode_bound(&self) -> DecodeBound {
        decode_bound(
            self.weight_bytes_per_token,
            self.cache_bytes,
            self.read_bandwidth,
            self.speed.gen_tokens_per_s,
        )
    }

    /// Multiply-add operations per second (2 per weight per token) during prefill.
    pub fn prefill_ops_per_s(&self) -> f64 {
        self.speed.prompt_tokens_per_s * self.prefill_flops_per_token
    }

    /// The peak that bounds prefill, in words, and its rate: the f32 FMA peak for float matrices; for
    /// block-quantized ones the int8 dot peak (`vpdpbusd`, `sdot`), several times the FMA rate, against
    /// which a q8_0 model's prefill would read as more than 100%. `None` when that peak was not measured.
    pub fn prefill_bound(&self) -> Option<(&'static str, f64)> {
        match self.int8_dtype() {
            None => Some(("FMA peak", self.fma_peak)),
            Some(_) => self.int8_peak.map(|(_, ops)| ("int8 dot peak", ops)),
        }
    }

    /// Prefill's rate as a fraction of [`Report::prefill_bound`].
    pub fn prefill_fraction(&self) -> Option<f64> {
        self.prefill_bound()
            .map(|(_, peak)| self.prefill_ops_per_s() / peak)
    }

    /// A block-quantized dtype among the weight matrices (whose products run as int8).
    fn int8_dtype(&self) -> Option<DType> {
        self.dtypes
            .0
            .iter()
            .map(|g| g.dtype)
            .find(|d| d.block_elems() > 1)
    }

    /// Why the decode fraction is missing, in words; `None` when there is one.
    fn no_fraction_because(&self) -> Option<String> {
        match self.decode_bound() {
            DecodeBound::InCache { cache_bytes } => Some(format!(
                "the weights read per token ({:.1} MB) fit in the {} last-level cache, so the DRAM bandwidth bound does not apply",
                self.weight_bytes_per_token as f64 / 1e6,
                human_bytes(cache_bytes)
            )),
            DecodeBound::Unmeasured => {
                Some("the read bandwidth could not be measured".to_string())
            }
            DecodeBound::Dram { .. } => None,
        }
    }

    /// One JSON object: the text report's figures, with `decode_bandwidth_fraction` null and
    /// `decode_bandwidth_note` saying why when the bound does not apply.
    pub fn json(&self) -> Value {
        let (fraction, bound) = match self.decode_bound() {
            DecodeBound::Dram {
                tokens_per_s,
                fraction,
            } => (Some(fraction), Some(tokens_per_s)),
            _ => (None, None),
        };
        json!({
            "model": self.model,
            "dtype": self.dtypes.to_string(),
            "weight_dtypes": self.dtypes.0.iter().map(|g| (g.dtype.name(), g.matrices.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "threads": self.threads,
            "kernels": self.kernels,
            "prompt_tokens": self.speed.prompt_tokens,
            "gen_tokens": self.speed.gen_tokens,
            "rounds": self.rounds,
            "kv_cache": self.speed.kv_cache.name(),
            "prompt_tokens_per_s": self.speed.prompt_tokens_per_s,
            "gen_tokens_per_s": self.speed.gen_tokens_per_s,
            "weight_bytes_per_token": self.weight_bytes_per_token,
            "read_bandwidth_gb_s": self.read_bandwidth / 1e9,
            "fma_peak_gflops": self.fma_peak / 1e9,
            "last_level_cache_bytes": self.cache_bytes,
            "decode_bandwidth_bound_tokens_per_s": bound,
            "decode_bandwidth_fraction": fraction,
            "decode_bandwidth_note": self.no_fraction_because(),
            "int8_peak_gops": self.int8_peak.map(|(_, ops)| ops / 1e9),
            "prefill_gops": self.prefill_ops_per_s() / 1e9,
            "prefill_bound": self.prefill_bound().map(|(name, _)| name),
            "prefill_fraction": self.prefill_fraction(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.speed;
        writeln!(
            f,
            "model      {} ({}, {:.1} MB of weights read per token)",
            self.model,
            self.dtypes,
            self.weight_bytes_per_token as f64 / 1e6
        )?;
        writeln!(f, "backend    {}", self.backend)?;
        writeln!(
            f,
            "prefill    {:>10.1} tok/s  ({} tokens, median of {})",
            s.prompt_tokens_per_s, s.prompt_tokens, self.rounds
        )?;
        writeln!(
            f,
            "decode     {:>10.1} tok/s  ({} tokens, median of {}; {} KV cache)",
            s.gen_tokens_per_s,
            s.gen_tokens,
            self.rounds,
            s.kv_cache.name()
        )?;
        let cache = self
            .cache_bytes
            .map_or_else(|| "unknown".into(), human_bytes);
        writeln!(
            f,
            "machine    read bandwidth {:.1} GB/s, FMA peak {:.1} GFLOP/s ({}, {} threads){}, measured now; last-level cache {cache}",
            self.read_bandwidth / 1e9,
            self.fma_peak / 1e9,
            self.fma_unit,
            self.threads,
            self.int8_peak.map_or_else(String::new, |(unit, ops)| format!(
                ", int8 dot peak {:.1} Gop/s ({unit})",
                ops / 1e9
            ))
        )?;
        match self.decode_bound() {
            DecodeBound::Dram {
                tokens_per_s,
                fraction,
            } => {
                write!(
                    f,
                    "decode     {:.1}% of the bandwidth bound ({tokens_per_s:.1} tok/s)",
                    100.0 * fraction
                )?;
                if fraction > 1.0 {
                    // Decode cannot beat the bound it is measured against, so one of the two figures is off.
                    write!(
                        f,
                        "; above 100%: decode read faster than the probe (cache hits, or a busier machine while the probe ran)"
                    )?;
                }
                writeln!(f)?;
            }
            _ => {
                let why = self.no_fraction_because().unwrap_or_default();
                writeln!(f, "decode     {why}")?;
            }
        }
        let gops = self.prefill_ops_per_s() / 1e9;
        let unit = if self.int8_dtype().is_some() {
            "Gop/s"
        } else {
            "GFLOP/s"
        };
        match (self.prefill_bound(), self.prefill_fraction()) {
            (Some((bound, _)), Some(fraction)) => writeln!(
                f,
                "prefill    {gops:.1} {unit}, {:.1}% of the {bound}",
                100.0 * fraction
            ),
            _ => writeln!(
                f,
                "prefill    {gops:.1} {unit}; int8 products, which the f32 FMA peak does not bound (no int8 dot peak measured)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_cache_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("16M"), Some(16 << 20));
        assert_eq!(parse_cache_size("1024"), Some(1024));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size("99999999999999999999G"), None);
    }

    #[test]
    fn the_last_level_is_the_deepest_data_cache() {
        let c = |level, instruction, bytes| Cache {
            level,
            instruction,
            bytes,
        };
        // This machine's cpu0 (AMD EPYC): L1d, L1i, L2, L3.
        let epyc = [
            c(1, false, 32 << 10),
            c(1, true, 32 << 10),
            c(2, false, 512 << 10),
            c(3, false, 32 << 20),
        ];
        assert_eq!(last_level(&epyc), Some(32 << 20));
        // A part without L3 (a Pi 4: 1 MiB L2); an instruction cache never counts, however deep.
        let pi = [
            c(1, false, 32 << 10),
            c(2, false, 1 << 20),
            c(3, true, 4 << 20),
        ];
        assert_eq!(last_level(&pi), Some(1 << 20));
        assert_eq!(last_level(&[]), None);
        assert_eq!(last_level(&[c(1, true, 1)]), None);
    }

    #[test]
    fn weights_fit_the_cache_only_when_known_and_no_larger() {
        let mib = 1u64 << 20;
        // stories15M q8_0 (~17 MB) in a 32 MiB L3 fits; stories110M q8_0 (~117 MB) and 15M f32 do not.
        assert!(weights_fit_cache(17_000_000, Some(32 * mib)));
        assert!(!weights_fit_cache(117_000_000, Some(32 * mib)));
        assert!(!weights_fit_cache(60_800_000, Some(32 * mib)));
        assert!(weights_fit_cache(32 * mib, Some(32 * mib)));
        assert!(!weights_fit_cache(32 * mib + 1, Some(32 * mib)));
        // Unknown cache: the DRAM bound is reported.
        assert!(!weights_fit_cache(1, None));
    }

    #[test]
    fn the_bound_applies_only_to_weights_streamed_from_dram() {
        let mib = 1u64 << 20;
        assert_eq!(
            decode_bound(17_000_000, Some(32 * mib), 20e9, 1900.0),
            DecodeBound::InCache {
                cache_bytes: 32 * mib
            }
        );
        let DecodeBound::Dram {
            tokens_per_s,
            fraction,
        } = decode_bound(100_000_000, Some(32 * mib), 20e9, 150.0)
        else {
            panic!("a model larger than the cache is bound by DRAM");
        };
        assert!((tokens_per_s - 200.0).abs() < 1e-9 && (fraction - 0.75).abs() < 1e-9);
        assert!(matches!(
            decode_bound(17_000_000, None, 20e9, 1900.0),
            DecodeBound::Dram { .. }
        ));
        assert_eq!(
            decode_bound(100_000_000, None, 0.0, 150.0),
            DecodeBound::Unmeasured
        );
    }

    fn report(weight_bytes: u64, cache_bytes: Option<u64>) -> Report {
        Report {
            model: "m".into(),
            dtypes: WeightDtypes(vec![DtypeGroup {
                dtype: DType::Q8_0,
                matrices: WEIGHT_MATRICES.to_vec(),
                bytes: weight_bytes,
            }]),
            backend: "cpu (generic, 1 threads)".into(),
            kernels: "generic",
            threads: 1,
            rounds: 3,
            speed: BenchResult {
                prompt_tokens: 128,
                gen_tokens: 128,
                prompt_tokens_per_s: 1000.0,
                gen_tokens_per_s: 300.0,
                kv_cache: KvType::F32,
            },
            weight_bytes_per_token: weight_bytes,
            prefill_flops_per_token: 1e6,
            read_bandwidth: 10e9,
            fma_unit: "avx2",
            fma_peak: 1e10,
            int8_peak: Some(("avx512 vnni", 4e10)),
            cache_bytes,
        }
    }

    #[test]
    fn a_model_in_cache_gets_no_bandwidth_percentage_in_text_or_json() {
        // 300 tok/s of 52 MB would be 158% of a 10 GB/s bound: the figure this replaces.
        let r = report(52_000_000, Some(64 << 20));
        let text = r.to_string();
        assert!(
            text.contains(
                "fit in the 64 MiB last-level cache, so the DRAM bandwidth bound does not apply"
            ),
            "{text}"
        );
        assert!(!text.contains("of the bandwidth bound"), "{text}");
        let j = r.json();
        assert!(j["decode_bandwidth_fraction"].is_null());
        assert!(j["decode_bandwidth_bound_tokens_per_s"].is_null());
        assert!(j["decode_bandwidth_note"]
            .as_str()
            .is_some_and(|s| s.contains("does not apply")));
        assert_eq!(j["last_level_cache_bytes"], 64u64 << 20);
        assert_eq!(j["dtype"], "q8_0");

        // The same model on a machine with a small cache is bound by DRAM: 300 / (10e9 / 52e6) = 156%.
        let r = report(52_000_000, Some(8 << 20));
        let text = r.to_string();
        assert!(
            text.contains("156.0% of the bandwidth bound (192.3 tok/s); above 100%"),
            "{text}"
        );
        let j = r.json();
        assert!((j["decode_bandwidth_fraction"].as_f64().unwrap_or(0.0) - 1.56).abs() < 1e-9);
        assert!(j["decode_bandwidth_note"].is_null());

        // Unknown cache: the bound as before.
        assert!(report(52_000_000, None)
            .to_string()
            .contains("last-level cache unknown"));
    }

    #[test]
    fn a_quantized_model_s_prefill_is_measured_against_the_int8_peak_not_the_fma_peak() {
        // 1000 tok/s x 1e6 ops/token = 1 Gop/s: 10% of a 10 GFLOP/s FMA peak, 2.5% of a 40 Gop/s int8 peak.
        let q = report(52_000_000, None);
        let text = q.to_string();
        assert!(!text.contains("of the FMA peak"), "{text}");
        assert!(
            text.contains("prefill    1.0 Gop/s, 2.5% of the int8 dot peak"),
            "{text}"
        );
        assert!(
            text.contains("int8 dot peak 40.0 Gop/s (avx512 vnni)"),
            "{text}"
        );
        let j = q.json();
        assert_eq!(j["prefill_bound"], "int8 dot peak");
        assert!((j["prefill_fraction"].as_f64().unwrap_or(0.0) - 0.025).abs() < 1e-9);
        assert!((j["prefill_gops"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-9);

        // Without a SIMD int8 dot there is no peak to compare with, and no percentage.
        let mut none = report(52_000_000, None);
        none.int8_peak = None;
        assert!(none.prefill_fraction().is_none());
        assert!(none
            .to_string()
            .contains("which the f32 FMA peak does not bound"));
        assert!(none.json()["prefill_fraction"].is_null());

        let mut f = report(52_000_000, None);
        f.dtypes.0[0].dtype = DType::F32;
        assert!(f
            .to_string()
            .contains("prefill    1.0 GFLOP/s, 10.0% of the FMA peak"));
        assert_eq!(f.json()["prefill_bound"], "FMA peak");
    }
}
