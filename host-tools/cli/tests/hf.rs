//! `enigma import hf` on a folder written by the pip `safetensors` and `tokenizers` packages
//! (host-tools/models/tests/hf_pip.py), and its refusals. Logit and tokenizer parity are tested in
//! host-tools/models/tests/hf.rs.

mod support;

use assert_cmd::Command;

fn enigma() -> Command {
    Command::cargo_bin("enigma").unwrap()
}

#[test]
fn a_pip_written_folder_imports_quantized_and_runs() {
    let test = "a_pip_written_folder_imports_quantized_and_runs";
    let Some(corpus) = enigma_testkit::shared_file("data/tinyshakespeare.txt", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("llama");
    let args = [
        "model",
        folder.to_str().unwrap(),
        "spm",
        "f32",
        corpus.to_str().unwrap(),
    ];
    if enigma_testkit::hf_pip(test, &args).is_none() {
        return;
    }
    let out = dir.path().join("llama.enigma");
    enigma()
        .args(["import", "hf"])
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .args(["--quantize", "q8_0"])
        .assert()
        .success();
    let info = enigma().arg("info").arg(&out).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("source:      hf:llama"), "{info}");
    assert!(
        info.contains("SentencePiece-style BPE, stored as q8_0"),
        "{info}"
    );
    assert!(
        info.contains("split before merging: none; 259 added tokens matched whole in text"),
        "{info}"
    );
    let run = support::greedy_run(&out, "ROMEO:", 8);
    assert!(run.status.success());
    // The folder runs in place (f32, as its safetensors are) and gives the f32 import's tokens.
    let f32_model = dir.path().join("llama-f32.enigma");
    enigma()
        .args(["import", "hf"])
        .arg(&folder)
        .arg("-o")
        .arg(&f32_model)
        .assert()
        .success();
    let in_place = support::greedy_run(&folder, "ROMEO:", 12);
    let imported = support::greedy_run(&f32_model, "ROMEO:", 12);
    assert!(
        in_place.status.success(),
        "{}",
        String::from_utf8_lossy(&in_place.stderr)
    );
    assert!(!imported.stdout.is_empty());
    assert_eq!(in_place.stdout, imported.stdout);
    // Again without --force: the output exists.
    let again = enigma()
        .args(["import", "hf"])
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn what_is_not_a_usable_folder_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.enigma");
    let err = |folder: &std::path::Path| {
        let o = enigma()
            .args(["import", "hf"])
            .arg(folder)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!out.exists());
        e
    };
    assert!(err(&d.join("missing")).contains("not a folder"));
    assert!(err(d).contains("no model.safetensors"));
    std::fs::write(d.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{\"a\": 1}").unwrap();
    assert!(err(d).contains("runs past the end of the file"));
    std::fs::write(d.join("model.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
    assert!(err(d).contains("config.json"));
    std::fs::write(d.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    assert!(err(d).contains("only Llama-family"));
}
