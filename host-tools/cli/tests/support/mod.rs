//! `enigma run` as the golden tests run it: greedy, one thread.

use assert_cmd::Command;
use std::path::Path;

/// `enigma run -m MODEL -p PROMPT -n N --temp 0 --threads 1`, which must succeed; its output.
pub fn greedy_run(model: &Path, prompt: &str, n: usize) -> std::process::Output {
    let out = Command::cargo_bin("enigma")
        .unwrap()
        .arg("run")
        .arg("-m")
        .arg(model)
        .args([
            "-p",
            prompt,
            "-n",
            &n.to_string(),
            "--temp",
            "0",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
