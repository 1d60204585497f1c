//! `enigma run` as the golden tests run it (greedy, one thread), and a GGUF file with a chat template.

use assert_cmd::Command;
use std::path::Path;

/// `enigma run -m MODEL -p PROMPT -n N --temp 0 --threads 1`, which must succeed; its output.
#[allow(dead_code)] // Not every test binary that includes this module runs a prompt.
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

/// A Llama-2-style chat template over stories260K's control pieces `<s>` and `</s>`, for the tests of
/// chat templates in GGUF files.
#[allow(dead_code)] // Not every test binary that includes this module chats.
pub const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{% if loop.first and m['role'] == 'assistant' %}{{ raise_exception('the user speaks first') }}{% endif %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}";

/// stories260K as a GGUF v3 file (`enigma export gguf`) that carries `template` as its
/// `tokenizer.chat_template`, added by the pip `gguf` package's `gguf_new_metadata` (llama.cpp's own tool);
/// `None` after `skip_or_fail` when the model or the package is missing.
#[allow(dead_code)]
pub fn templated_gguf(dir: &Path, test: &str, template: &str) -> Option<std::path::PathBuf> {
    let ckpt = enigma_testkit::shared_bytes("models/stories260K.bin", test)?;
    let tok = enigma_testkit::shared_bytes("models/tok512.bin", test)?;
    let have = std::process::Command::new("python3")
        .args(["-c", "import gguf.scripts.gguf_new_metadata"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        enigma_testkit::skip_or_fail(
            test,
            "python3 with the gguf package is missing (pip install numpy gguf==0.19.0; .ci/run installs them)",
        );
        return None;
    }
    let enigma = dir.join("stories260K.enigma");
    let plain = dir.join("stories260K.gguf");
    let templated = dir.join("stories260K-chat.gguf");
    let bytes = enigma_models::llama2c::import(&ckpt, &tok, "stories260K.bin").unwrap();
    std::fs::write(&enigma, bytes).unwrap();
    Command::cargo_bin("enigma")
        .unwrap()
        .args(["export", "gguf"])
        .arg(&enigma)
        .arg("-o")
        .arg(&plain)
        .assert()
        .success();
    let out = std::process::Command::new("python3")
        .args(["-m", "gguf.scripts.gguf_new_metadata"])
        .arg(&plain)
        .arg(&templated)
        .args(["--chat-template", template, "--force"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf_new_metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(templated)
}
