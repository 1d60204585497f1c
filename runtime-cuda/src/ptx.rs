//! The CUDA C sources, NVRTC, and the on-disk PTX cache.

use crate::{Error, Result};
use std::path::PathBuf;

/// Prepended to every file (no include paths, no headers: see the file's first comment).
const COMMON: &str = include_str!("../../kernels/cuda/common.cuh");

/// Every kernel file, by name, with its text.
pub const SOURCES: &[(&str, &str)] = &[
    ("matvec.cu", include_str!("../../kernels/cuda/matvec.cu")),
    ("gemm.cu", include_str!("../../kernels/cuda/gemm.cu")),
    (
        "elementwise.cu",
        include_str!("../../kernels/cuda/elementwise.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../kernels/cuda/attention.cu"),
    ),
    ("sample.cu", include_str!("../../kernels/cuda/sample.cu")),
];

/// Rows the decode matvec takes in one launch (`matvec_<dtype>_b1` … `_b8`).
pub const MAX_BATCH: usize = 8;

/// The entry points the launchers use, per file; the PTX test checks each is in its file's PTX.
pub fn kernel_names(file: &str) -> Vec<&'static str> {
    // matvec_<dtype>_b<B>, then swiglu_<dtype>_b<B>, dtype-major.
    const MATVEC: [[&str; MAX_BATCH]; 10] = {
        macro_rules! row {
            ($k:literal, $d:literal) => {
                [
                    concat!($k, "_", $d, "_b1"),
                    concat!($k, "_", $d, "_b2"),
                    concat!($k, "_", $d, "_b3"),
                    concat!($k, "_", $d, "_b4"),
                    concat!($k, "_", $d, "_b5"),
                    concat!($k, "_", $d, "_b6"),
                    concat!($k, "_", $d, "_b7"),
                    concat!($k, "_", $d, "_b8"),
                ]
            };
        }
        [
            row!("matvec", "f32"),
            row!("matvec", "f16"),
            row!("matvec", "bf16"),
            row!("matvec", "q8_0"),
            row!("matvec", "q4_0"),
            row!("swiglu", "f32"),
            row!("swiglu", "f16"),
            row!("swiglu", "bf16"),
            row!("swiglu", "q8_0"),
            row!("swiglu", "q4_0"),
        ]
    };
    match file {
        "matvec.cu" => {
            let mut v: Vec<&str> = MATVEC.iter().flatten().copied().collect();
            v.push("quantize_q8");
            v
        }
        "gemm.cu" => vec!["gemm_f16", "gemm_bf16", "gemm_q8_0", "gemm_q4_0"],
        "elementwise.cu" => vec![
            "rmsnorm",
            "rope",
            "silu_mul",
            "add",
            "embed_f32",
            "embed_f16",
            "embed_bf16",
            "embed_q8_0",
            "embed_q4_0",
        ],
        "attention.cu" => vec![
            "kv_store_f32",
            "kv_store_f16",
            "attention_f32",
            "attention_f16",
            "attention_prefill_f32",
            "attention_prefill_f16",
        ],
        "sample.cu" => vec!["argmax", "sample_top_p"],
        _ => Vec::new(),
    }
}

/// `matvec_<dtype>_b<rows>` (or `swiglu_<dtype>_b<rows>` with `glu`), `dtype` indexing f32, f16, bf16, q8_0,
/// q4_0 and `rows` in 1..=8.
pub(crate) fn matvec_name(dtype: usize, rows: usize, glu: bool) -> &'static str {
    let all = kernel_names("matvec.cu");
    all[(usize::from(glu) * 5 + dtype) * MAX_BATCH + rows - 1]
}

/// The virtual architecture PTX is compiled for: the GPU's own, from Ampere (mma.sync on bf16) up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch(&'static str);

impl Arch {
    pub const SM80: Arch = Arch("compute_80");
    pub const SM90: Arch = Arch("compute_90");

    /// The newest virtual architecture NVRTC 12 knows that this GPU runs, or `None` before 8.0.
    pub fn for_capability(major: i32, minor: i32) -> Option<Arch> {
        const KNOWN: [(i32, &str); 6] = [
            (90, "compute_90"),
            (89, "compute_89"),
            (87, "compute_87"),
            (86, "compute_86"),
            (80, "compute_80"),
            (0, ""),
        ];
        let cc = major * 10 + minor;
        KNOWN
            .iter()
            .find(|(k, _)| cc >= *k)
            .filter(|(k, _)| *k >= 80)
            .map(|(_, a)| Arch(a))
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// The text NVRTC compiles for `file`: the common helpers, then the file.
pub fn source(file: &str) -> Result<String> {
    let (_, text) = SOURCES
        .iter()
        .find(|(f, _)| *f == file)
        .ok_or_else(|| Error::Invalid(format!("no kernel file {file}")))?;
    Ok(format!("{COMMON}\n{text}"))
}

/// Compiles `file` to PTX for `arch` (NVRTC must be loadable: see [`crate::libraries`]). No fast math: the
/// kernels divide and take square roots as the CPU references do.
pub fn compile(file: &'static str, arch: Arch) -> Result<String> {
    let src = source(file)?;
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch.0),
        options: vec!["--std=c++17".into(), "-default-device".into()],
        name: Some(file.into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| Error::Compile {
        file,
        arch: arch.0,
        log: format!("{e:?}"),
    })?;
    Ok(ptx.to_src())
}

/// 64-bit FNV-1a: the cache key only needs to change when the source does.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `ENIGMA_PTX_CACHE`, else `$XDG_CACHE_HOME/enigma/ptx`, else `~/.cache/enigma/ptx`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ENIGMA_PTX_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("enigma").join("ptx"))
}

/// [`compile`], through a disk cache keyed by the source's hash and the architecture, so NVRTC runs once per
/// kernel version and GPU kind. A cache that cannot be read or written only costs the compile.
pub fn ptx_cached(file: &'static str, arch: Arch) -> Result<String> {
    let src = source(file)?;
    let key = format!(
        "{}-{}-{:016x}.ptx",
        file.trim_end_matches(".cu"),
        arch.0,
        fnv1a(src.as_bytes())
    );
    let path = cache_dir().map(|d| d.join(key));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        if text.contains(".entry") {
            return Ok(text);
        }
    }
    let ptx = compile(file, arch)?;
    if let Some(p) = path {
        // Written beside, then renamed: a reader never sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let written = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, &ptx))
            .and_then(|_| std::fs::rename(&tmp, &p));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(ptx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_from_capabilities() {
        assert_eq!(Arch::for_capability(7, 5), None);
        assert_eq!(Arch::for_capability(8, 0), Some(Arch::SM80));
        assert_eq!(
            Arch::for_capability(8, 6).map(Arch::name),
            Some("compute_86")
        );
        assert_eq!(
            Arch::for_capability(8, 9).map(Arch::name),
            Some("compute_89")
        );
        assert_eq!(Arch::for_capability(9, 0), Some(Arch::SM90));
        // Blackwell runs compute_90 PTX (the driver JIT-compiles it).
        assert_eq!(Arch::for_capability(12, 0), Some(Arch::SM90));
    }

    #[test]
    fn matvec_names_match_dtype_and_rows() {
        assert_eq!(matvec_name(0, 1, false), "matvec_f32_b1");
        assert_eq!(matvec_name(3, 8, false), "matvec_q8_0_b8");
        assert_eq!(matvec_name(4, 5, false), "matvec_q4_0_b5");
        assert_eq!(matvec_name(0, 1, true), "swiglu_f32_b1");
        assert_eq!(matvec_name(4, 8, true), "swiglu_q4_0_b8");
        assert_eq!(10 * MAX_BATCH + 1, kernel_names("matvec.cu").len());
    }

    #[test]
    fn the_cache_key_changes_with_the_source() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert!(source("matvec.cu").unwrap().starts_with(COMMON));
        assert!(source("nope.cu").is_err());
    }
}
