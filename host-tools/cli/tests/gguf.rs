//! GGUF through the `enigma` command: the built-in model (our byte-level BPE) exported as a `gpt2`
//! vocabulary and run back, `info` and `import` of a GGUF file, and refusals. The llama2.c parity tests of
//! GGUF files sit with the other golden tests (golden.rs).

mod support;

use assert_cmd::Command;
use std::path::Path;

fn enigma() -> Command {
    Command::cargo_bin("enigma").unwrap()
}

fn run(model: &Path, prompt: &str) -> Vec<u8> {
    support::greedy_run(model, prompt, 40).stdout
}

#[test]
fn the_built_in_model_exports_as_gpt2_bpe_and_runs_back_the_same() {
    let test = "the_built_in_model_exports_as_gpt2_bpe_and_runs_back_the_same";
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("default.enigma");
    std::fs::write(&original, enigma_models::DEFAULT_MODEL).unwrap();
    let out = dir.path().join("default.gguf");
    enigma()
        .args(["export", "gguf", "default", "-o"])
        .arg(&out)
        .assert()
        .success();
    let c = enigma_models::peek_builtin().unwrap().config;
    let kv = c.kv_dim().to_string();
    let (layers, dim, hidden, vocab) = (
        c.n_layers.to_string(),
        c.dim.to_string(),
        c.hidden_dim.to_string(),
        c.vocab_size.to_string(),
    );
    let tied = if c.tied_classifier {
        "tied"
    } else {
        "separate"
    };
    let args = [
        "check",
        out.to_str().unwrap(),
        &layers,
        &dim,
        &hidden,
        &kv,
        &vocab,
        tied,
    ];
    let Some(summary) = enigma_testkit::gguf_pip(test, &args) else {
        return;
    };
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["model"], "gpt2");
    // The merges rebuilt from the scores encode the prompt as the trained tokenizer does, and the weights
    // are the same bytes: the same text comes out.
    for prompt in [
        "In the beginning God created",
        "And he said, Let there be light: and",
    ] {
        assert_eq!(
            String::from_utf8_lossy(&run(&out, prompt)),
            String::from_utf8_lossy(&run(&original, prompt)),
        );
    }
}

#[test]
fn import_gguf_writes_a_model_and_info_describes_the_file() {
    let Some(gguf) = enigma_testkit::shared_file(
        "models/tinyllamas-stories-260k-f32.gguf",
        "import_gguf_writes_a_model_and_info_describes_the_file",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("s.enigma");
    enigma()
        .args(["import", "gguf"])
        .arg(&gguf)
        .arg("-o")
        .arg(&model)
        .assert()
        .success();
    // An existing output is refused without --force, and replaced with it.
    let again = enigma()
        .args(["import", "gguf"])
        .arg(&gguf)
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(!again.status.success());
    enigma()
        .args(["import", "gguf", "--force"])
        .arg(&gguf)
        .arg("-o")
        .arg(&model)
        .assert()
        .success();
    assert_eq!(
        run(&model, "Once upon a time"),
        run(&gguf, "Once upon a time")
    );
    let info = enigma().arg("info").arg(&gguf).output().unwrap();
    assert!(info.status.success());
    let text = String::from_utf8_lossy(&info.stdout);
    for want in [
        "GGUF v1",
        "llama.block_count",
        "48 f32",
        "dim 64 hidden 172 layers 5",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
}

#[test]
fn a_broken_gguf_is_a_one_line_error() {
    let Some(gguf) = enigma_testkit::shared_file(
        "models/tinyllamas-stories-260k-f32.gguf",
        "a_broken_gguf_is_a_one_line_error",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = enigma()
        .arg("run")
        .arg("-m")
        .arg(&cut)
        .args(["-p", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("runs past the end"), "{err}");
}

#[test]
fn import_and_quantize_keep_the_chat_template() {
    let test = "import_and_quantize_keep_the_chat_template";
    let dir = tempfile::tempdir().unwrap();
    let Some(gguf) = support::templated_gguf(dir.path(), test, support::TEMPLATE) else {
        return;
    };
    let imported = dir.path().join("chat.enigma");
    let quantized = dir.path().join("chat-q8.enigma");
    enigma()
        .args(["import", "gguf"])
        .arg(&gguf)
        .arg("-o")
        .arg(&imported)
        .assert()
        .success();
    enigma()
        .arg("quantize")
        .arg(&imported)
        .arg("-o")
        .arg(&quantized)
        .args(["--to", "q8_0"])
        .assert()
        .success();
    for file in [&imported, &quantized] {
        let model =
            enigma_runtime::ModelFile::from_bytes(&std::fs::read(file).unwrap(), file).unwrap();
        let parsed = model.parse().unwrap();
        assert_eq!(
            enigma_models::gguf::chat_template(&parsed).unwrap(),
            Some(support::TEMPLATE),
            "{}",
            file.display()
        );
        // Once: the rewrite does not copy the tokenizer's tensors beside the ones it writes.
        let mut names: Vec<&str> = parsed.tensors().map(|t| t.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{}", file.display());
    }
}
