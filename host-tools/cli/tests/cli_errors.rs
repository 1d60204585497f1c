//! Every bad input to the `enigma` command ends in one line on stderr that starts with "error: ", a non-zero
//! exit, and no panic. The models here are built in the test (a 1-layer, dim-16 model with a byte-level
//! vocabulary and a context of 8 tokens), so each run takes milliseconds and needs no shared files.

use assert_cmd::Command;
use enigma_core::config::{Config, ParamLayout};
use enigma_core::format::{Header, PRELUDE_LEN};
use enigma_core::kernels::DType;
use enigma_runtime::{ModelWriter, TokenizerData};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

fn config() -> Config {
    Config {
        dim: 16,
        hidden_dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: 3 + 256 + 2,
        seq_len: 8,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    }
}

/// `<unk> <s> </s>`, the 256 byte pieces, `" "` and `"a"`: every prompt encodes (mostly one token a byte).
fn tokenizer() -> TokenizerData {
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    pieces.push(b" ".to_vec());
    pieces.push(b"a".to_vec());
    let scores = vec![0.0; pieces.len()];
    TokenizerData {
        pieces,
        scores,
        bos: 1,
        eos: 2,
        pad: None,
        add_dummy_prefix: true,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    }
}

fn valid() -> &'static [u8] {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| {
        let c = config();
        let n = ParamLayout::new(&c).total_numel() as usize;
        let params: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        let mut w = ModelWriter::new(c, tokenizer());
        w.provenance("test:cli_errors", "");
        w.f32_params(&params).unwrap();
        w.to_bytes().unwrap()
    })
}

/// The valid file with its header changed by `f` (re-encoded with postcard, header length and CRC fixed).
/// When the new header no longer fits before the data, the data and every offset move up by 64 bytes.
fn hostile(f: impl FnOnce(&mut Header<'_>)) -> Vec<u8> {
    hostile_of(valid(), f)
}

/// [`hostile`] over any well-formed file `b`.
fn hostile_of(b: &[u8], f: impl FnOnce(&mut Header<'_>)) -> Vec<u8> {
    let hlen = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
    let mut h: Header<'_> = postcard::from_bytes(&b[PRELUDE_LEN..PRELUDE_LEN + hlen]).unwrap();
    let data_at = h.data_offset as usize;
    f(&mut h);
    let mut shift = 0;
    loop {
        let mut h2 = h.clone();
        h2.data_offset += shift as u64;
        for t in &mut h2.tensors {
            t.offset = t.offset.wrapping_add(shift as u64);
        }
        let hb = postcard::to_allocvec(&h2).unwrap();
        if PRELUDE_LEN + hb.len() <= data_at + shift {
            let mut out = b[..PRELUDE_LEN].to_vec();
            out[8..12].copy_from_slice(&(hb.len() as u32).to_le_bytes());
            out[12..16].copy_from_slice(&crc32fast::hash(&hb).to_le_bytes());
            out.extend_from_slice(&hb);
            out.resize(data_at + shift, 0);
            out.extend_from_slice(&b[data_at..]);
            return out;
        }
        shift += 64;
    }
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn enigma() -> Command {
    Command::cargo_bin("enigma").unwrap()
}

/// Runs `cmd`, checks it failed cleanly with our own one-line message, and returns that line.
fn fails(cmd: &mut Command) -> String {
    let out = cmd
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {cmd:?}\n{stderr}");
    assert_ne!(out.status.code(), Some(0));
    assert!(out.status.code().is_some(), "killed by a signal: {cmd:?}");
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{cmd:?}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{cmd:?}: {stderr}");
    lines[0].to_string()
}

/// clap's own usage errors: non-zero exit, "error: " first, no panic (clap adds a usage hint below).
fn usage_error(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn run(model: &Path, prompt: &str) -> Command {
    let mut c = enigma();
    c.args(["run", "-m"])
        .arg(model)
        .args(["-p", prompt, "-n", "4", "--temp", "0"]);
    c
}

fn info(model: &Path) -> Command {
    let mut c = enigma();
    c.arg("info").arg(model);
    c
}

/// `run` and `info` both refuse `bytes` with a message containing `want`.
fn both_refuse(name: &str, bytes: &[u8], want: &str) {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, name, bytes);
    for mut cmd in [run(&p, "a"), info(&p)] {
        let line = fails(&mut cmd);
        assert_eq!(line.matches(want).count(), 1, "{cmd:?}: said once: {line}");
        assert!(line.contains(name), "the message names the file: {line}");
    }
}

#[test]
fn the_valid_model_runs_and_shows_its_info() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "ok.enigma", valid());
    run(&p, "a").assert().success();
    let out = info(&p).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("seq_len 8"), "{stdout}");
}

#[test]
fn truncated_file() {
    let b = valid();
    for cut in [3, 15, 40, b.len() / 2, b.len() - 1] {
        both_refuse("cut.enigma", &b[..cut], "truncated");
    }
}

#[test]
fn wrong_magic() {
    let mut b = valid().to_vec();
    b[..4].copy_from_slice(b"GGML");
    both_refuse("magic.enigma", &b, "not an .enigma file");
    // "GGUF" makes it a GGUF file, whatever its name: its reader refuses it, in one line naming the file.
    b[..4].copy_from_slice(b"GGUF");
    both_refuse("magic-gguf.enigma", &b, "truncated");
    // A llama2.c checkpoint given to `run` by mistake.
    let mut ckpt = Vec::new();
    for v in [16i32, 32, 1, 2, 1, 10, 8] {
        ckpt.extend_from_slice(&v.to_le_bytes());
    }
    ckpt.resize(4096, 0);
    both_refuse("stories.bin", &ckpt, "not an .enigma file");
}

#[test]
fn unsupported_version() {
    let mut b = valid().to_vec();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    both_refuse("v7.enigma", &b, "format version 7");
}

#[test]
fn corrupt_header_and_data() {
    let mut b = valid().to_vec();
    b[PRELUDE_LEN + 2] ^= 0x55;
    both_refuse("hdr.enigma", &b, "header is corrupt");
    let mut b = valid().to_vec();
    let last = b.len() - 1;
    b[last] ^= 0x55;
    both_refuse("data.enigma", &b, "tensor data is corrupt");
}

#[test]
fn tensor_offset_past_the_end() {
    let b = hostile(|h| {
        let t = h.tensors.iter_mut().find(|t| t.name == "w2").unwrap();
        t.offset += 64 * 1000;
    });
    both_refuse("past.enigma", &b, "points past the end of the file");
}

#[test]
fn shape_that_disagrees_with_the_config() {
    // wk is (1, 8, 16); (1, 16, 8) has the same bytes.
    let b = hostile(|h| {
        let t = h.tensors.iter_mut().find(|t| t.name == "wk").unwrap();
        t.shape.clear();
        t.shape.extend_from_slice(&[1, 16, 8]).unwrap();
    });
    both_refuse(
        "shape.enigma",
        &b,
        "tensor 'wk' has shape [1, 16, 8] but the config needs [1, 8, 16]",
    );
}

#[test]
fn missing_tensor() {
    let b = hostile(|h| h.tensors.retain(|t| t.name != "w3"));
    both_refuse("missing.enigma", &b, "no tensor 'w3'");
}

#[test]
fn unknown_dtype() {
    let b = hostile(|h| {
        let t = h.tensors.iter_mut().find(|t| t.name == "wo").unwrap();
        t.dtype = 42;
    });
    both_refuse("dtype.enigma", &b, "unknown dtype code 42");
}

#[test]
fn dtype_the_model_cannot_compute_with() {
    // u32 has f32's byte count, so the file is well formed; no kernel multiplies a u32 matrix.
    let b = hostile(|h| {
        let t = h.tensors.iter_mut().find(|t| t.name == "w1").unwrap();
        t.dtype = DType::U32 as u8;
    });
    both_refuse("u32.enigma", &b, "tensor 'w1' is u32");
}

#[test]
fn bad_config() {
    let b = hostile(|h| h.config.n_heads = 3);
    both_refuse("config.enigma", &b, "n_heads must divide dim");
}

#[test]
fn empty_file() {
    both_refuse("empty.enigma", &[], "the model file is empty");
}

#[test]
fn missing_file() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("nowhere.enigma");
    for mut cmd in [run(&p, "a"), info(&p)] {
        let line = fails(&mut cmd);
        assert!(line.contains("nowhere.enigma"), "{line}");
        // The OS reason once, not repeated by the error chain.
        assert_eq!(line.matches("os error").count(), 1, "{line}");
    }
    let line = fails(enigma().args(["import", "llama2c"]).arg(&p).args([
        "--tokenizer",
        "t.bin",
        "-o",
        "x.enigma",
    ]));
    assert!(line.contains("nowhere.enigma"), "{line}");
    assert_eq!(line.matches("os error").count(), 1, "{line}");
}

#[test]
fn a_directory_instead_of_a_file() {
    let dir = TempDir::new().unwrap();
    for mut cmd in [run(dir.path(), "a"), info(dir.path())] {
        let line = fails(&mut cmd);
        assert_eq!(
            line,
            format!(
                "error: {} is a directory, not a model file (no model.enigma in it)",
                dir.path().display()
            )
        );
    }
    // A folder that holds a model.enigma names that model.
    write(&dir, "model.enigma", valid());
    run(dir.path(), "a").assert().success();
}

#[test]
fn prompt_longer_than_the_context() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "short.enigma", valid());
    let line = fails(&mut run(&p, "Once upon a time there was a little girl"));
    assert!(
        line.contains("the prompt is") && line.contains("context holds 8"),
        "{line}"
    );
    // A prompt that fits still runs, and generation stops at the end of the context without an error.
    let out = enigma()
        .args(["run", "-m"])
        .arg(&p)
        .args(["-p", "aaa", "-n", "100", "--temp", "0"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("context window is full"), "{stderr}");
}

#[test]
fn bad_flag_values() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "ok.enigma", valid());
    let cases: [(&[&str], &str); 8] = [
        (&["--temp", "-1"], "--temp"),
        (&["--temperature", "-0.5"], "--temp"),
        (&["--temp", "NaN"], "--temp"),
        (&["--top-p", "2"], "--top-p"),
        (&["--top-p", "-0.1"], "--top-p"),
        (&["--threads", "0"], "--threads"),
        (&["--repeat-penalty", "-1"], "--repeat-penalty"),
        (&["--temp", "0", "-c", "0"], "-c/--ctx-size"),
    ];
    for (flags, want) in cases {
        let mut c = enigma();
        c.args(["run", "-m"]).arg(&p).args(["-p", "a", "-n", "2"]);
        c.args(flags);
        let line = fails(&mut c);
        assert!(line.contains(want), "{flags:?}: {line}");
    }
    // Values clap cannot parse at all are clap's usage errors.
    for flags in [&["--threads", "many"][..], &["-n", "x"], &["--top-k", "x"]] {
        let mut c = enigma();
        c.args(["run", "-m"]).arg(&p).args(["-p", "a"]).args(flags);
        usage_error(&mut c);
    }
    // Without --model, run uses the built-in default model; a --model without its value is a usage error.
    usage_error(enigma().args(["run", "--model"]));
    usage_error(enigma().args(["frobnicate"]));
}

fn checkpoint(header: [i32; 7], floats: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for v in header {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for i in 0..floats {
        b.extend_from_slice(&((i % 7) as f32 * 0.01).to_le_bytes());
    }
    b
}

fn llama2c_tokenizer(vocab: usize) -> Vec<u8> {
    let mut b = 8i32.to_le_bytes().to_vec();
    for i in 0..vocab {
        let piece = format!("t{i}");
        b.extend_from_slice(&0f32.to_le_bytes());
        b.extend_from_slice(&(piece.len() as i32).to_le_bytes());
        b.extend_from_slice(piece.as_bytes());
    }
    b
}

/// dim 8, hidden 16, 1 layer, 2 heads, 2 kv heads, vocab 4, seq 4: the header and its float count in the
/// current layout.
fn tiny_llama2c() -> ([i32; 7], usize) {
    let c = Config {
        dim: 8,
        hidden_dim: 16,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        vocab_size: 4,
        seq_len: 4,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    (
        [8, 16, 1, 2, 2, 4, 4],
        ParamLayout::new(&c).total_numel() as usize,
    )
}

/// A 512-token tokenizer given with a 4-token checkpoint was reported against the checkpoint, as
/// "tokenizer ends at token 4 of 4"-style noise, never saying the two sizes.
#[test]
fn a_llama2c_tokenizer_of_another_vocabulary_is_blamed_with_both_sizes() {
    let dir = TempDir::new().unwrap();
    let (header, n) = tiny_llama2c();
    let ckpt = write(&dir, "model.bin", &checkpoint(header, n));
    let tok = write(&dir, "tokenizer.bin", &llama2c_tokenizer(512));
    let line = fails(
        enigma()
            .args(["import", "llama2c"])
            .arg(&ckpt)
            .arg("--tokenizer")
            .arg(&tok)
            .arg("-o")
            .arg(dir.path().join("out.enigma")),
    );
    // Both files and both sizes; the tokenizer is the one blamed, given for that checkpoint.
    assert!(
        line.contains(&format!(
            "tokenizer.bin (the tokenizer given for {})",
            ckpt.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("512 tokens") && line.contains("vocabulary is 4"),
        "{line}"
    );
}

#[test]
fn corrupt_llama2c_checkpoints() {
    let dir = TempDir::new().unwrap();
    let (header, n) = tiny_llama2c();
    let tok = write(&dir, "tok.bin", &llama2c_tokenizer(4));
    let out = dir.path().join("out.enigma");
    let import = |ckpt: &Path, tok: &Path| {
        let mut cmd = enigma();
        cmd.args(["import", "llama2c"])
            .arg(ckpt)
            .arg("--tokenizer")
            .arg(tok)
            .arg("-o")
            .arg(&out);
        cmd
    };
    // The good one imports (and its output goes, so the failures below are about their inputs).
    let good = write(&dir, "good.bin", &checkpoint(header, n));
    import(&good, &tok).assert().success();
    std::fs::remove_file(&out).unwrap();

    let mut nan = checkpoint(header, n);
    nan[28 + 4 * 5..28 + 4 * 6].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut zero_vocab = header;
    zero_vocab[5] = 0;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.bin", vec![], "not a llama2.c checkpoint"),
        ("short.bin", vec![1, 2, 3], "not a llama2.c checkpoint"),
        (
            "wrong_size.bin",
            checkpoint(header, n + 3),
            "does not match its header",
        ),
        (
            "too_small.bin",
            checkpoint(header, n / 2),
            "does not match its header",
        ),
        (
            "odd.bin",
            checkpoint(header, n)[..28 + 4 * n - 1].to_vec(),
            "not a whole number",
        ),
        (
            "zero_dims.bin",
            checkpoint([0, 0, 0, 0, 0, 0, 0], 16),
            "non-positive",
        ),
        ("zero_vocab.bin", checkpoint(zero_vocab, n), "non-positive"),
        (
            "negative.bin",
            checkpoint([-8, 16, 1, 2, 2, 4, 4], n),
            "non-positive",
        ),
        (
            "bad_heads.bin",
            checkpoint([8, 16, 1, 3, 3, 4, 4], n),
            "n_heads must divide dim",
        ),
        (
            "huge.bin",
            checkpoint([i32::MAX, i32::MAX, i32::MAX, 1, 1, i32::MAX, i32::MAX], 0),
            "implausibly large",
        ),
        (
            "nan.bin",
            nan,
            "tensor 'token_embedding' element 5 is NaN, not a finite number",
        ),
    ];
    for (name, bytes, want) in &cases {
        let p = write(&dir, name, bytes);
        let line = fails(&mut import(&p, &tok));
        assert!(line.contains(want), "{name}: {line}");
        assert!(
            line.contains(name),
            "{name}: the message names the file: {line}"
        );
    }
    // Tokenizers that do not fit the checkpoint.
    let tok_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tok_short.bin", llama2c_tokenizer(3), "holds 3 tokens"),
        ("tok_long.bin", llama2c_tokenizer(5), "holds 5 tokens"),
        ("tok_empty.bin", vec![], "not a llama2.c tokenizer"),
        (
            "tok_cut.bin",
            llama2c_tokenizer(4)[..20].to_vec(),
            "tokenizer ends",
        ),
    ];
    for (name, bytes, want) in &tok_cases {
        let t = write(&dir, name, bytes);
        let line = fails(&mut import(&good, &t));
        assert!(line.contains(want), "{name}: {line}");
        assert!(
            line.contains(name),
            "{name}: the message names the tokenizer: {line}"
        );
    }
    // Nothing half-written was left behind by the failures.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn info_on_every_bad_file_fails_cleanly() {
    let b = valid();
    let mut flipped = b.to_vec();
    flipped[b.len() / 3] ^= 1;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("a.enigma", vec![]),
        ("b.enigma", b[..10].to_vec()),
        ("c.enigma", b[..200].to_vec()),
        (
            "d.enigma",
            b"ENGM\x01\0\0\0\xff\xff\xff\xff\0\0\0\0".to_vec(),
        ),
        ("e.enigma", flipped),
        ("f.enigma", hostile(|h| h.tensors[3].offset += 4)),
        ("g.enigma", hostile(|h| h.tensors[2].dtype = 200)),
        ("h.enigma", hostile(|h| h.data_len += 64)),
        ("i.enigma", hostile(|h| h.tokenizer.bos = 100_000)),
    ];
    let dir = TempDir::new().unwrap();
    for (name, bytes) in &bad {
        let p = write(&dir, name, bytes);
        let line = fails(&mut info(&p));
        assert!(line.contains(name), "{line}");
    }
}

/// `valid()` with `f32` `value` written over the tensor `name` (all of it), the data checksum made right
/// again: a file that passes every check of the reader.
fn with_weights(name: &str, value: f32) -> Vec<u8> {
    let b = valid();
    let hlen = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
    let h: Header<'_> = postcard::from_bytes(&b[PRELUDE_LEN..PRELUDE_LEN + hlen]).unwrap();
    let t = h.tensors.iter().find(|t| t.name == name).unwrap();
    let mut out = b.to_vec();
    for c in out[t.offset as usize..(t.offset + t.len) as usize].chunks_exact_mut(4) {
        c.copy_from_slice(&value.to_le_bytes());
    }
    let (at, len) = (h.data_offset as usize, h.data_len as usize);
    let crc = crc32fast::hash(&out[at..at + len]);
    hostile_of(&out, |h| h.data_crc32 = crc)
}

#[test]
fn nan_weights_with_valid_checksums_stop_generation_with_an_error_not_a_sampler_panic() {
    let dir = TempDir::new().unwrap();
    for (i, (tensor, value)) in [("final_norm", f32::NAN), ("token_embedding", f32::INFINITY)]
        .into_iter()
        .enumerate()
    {
        let p = write(
            &dir,
            &format!("bad{i}.enigma"),
            &with_weights(tensor, value),
        );
        // Sampled with top-p, where the panic was, and greedy.
        for t in ["1", "0"] {
            let mut c = enigma();
            c.args(["run", "-m"])
                .arg(&p)
                .args(["-p", "a", "-n", "4", "--temp", t]);
            let line = fails(&mut c);
            assert!(
                line.contains("logit") && line.contains("not finite"),
                "{line}"
            );
        }
    }
}

#[test]
fn a_temperature_that_underflows_is_greedy_not_a_sampler_panic() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "ok.enigma", valid());
    let out = |t: &str| {
        let a = enigma()
            .args(["run", "-m"])
            .arg(&p)
            .args(["-p", "a", "-n", "6", "--temp", t])
            .assert()
            .success();
        a.get_output().stdout.clone()
    };
    // 1e-45 overflows every logit this model makes: greedy exactly. 1e-38 does not always, and then
    // samples among exactly tied logits; either way it must run.
    assert_eq!(out("1e-45"), out("0"));
    assert!(String::from_utf8(out("1e-38")).is_ok_and(|s| s.starts_with('a')));
}

#[test]
fn writers_refuse_non_finite_weights_and_name_the_tensor() {
    let dir = TempDir::new().unwrap();
    // A huge but finite f32 weight is legal; stored as f16 it would become infinite, so that is refused.
    let huge = write(&dir, "huge.enigma", &with_weights("wq", 3.0e38));
    let out = dir.path().join("huge-f16.enigma");
    let mut c = enigma();
    c.arg("quantize")
        .arg(&huge)
        .arg("-o")
        .arg(&out)
        .args(["--to", "f16"]);
    let line = fails(&mut c);
    assert!(
        line.contains("tensor 'wq'") && line.contains("does not fit in f16"),
        "{line}"
    );
    assert!(!out.exists());
    // Generating from it stops with an error about the logits, whatever they overflow to.
    let mut c = enigma();
    c.args(["run", "-m"])
        .arg(&huge)
        .args(["-p", "a", "-n", "4"]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_prompt_of_ten_thousand_words_is_refused_at_once_not_after_a_quadratic_encode() {
    // The prompt flag's long name; `--prompt` stays whatever its short letter becomes.
    let prompt = "the ".repeat(10_000);
    let start = std::time::Instant::now();
    let line = fails(enigma().args(["run", "--prompt", &prompt, "-n", "1"]));
    let took = start.elapsed();
    assert!(
        line.contains("the prompt is") && line.contains("context holds"),
        "{line}"
    );
    // It took 89 s; the release binary answers in milliseconds. The bound leaves room for a loaded machine.
    assert!(took.as_secs_f64() < 5.0, "{took:?}");
    // A prompt that the byte count cannot rule out is encoded (fast) and counted exactly.
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "ok.enigma", valid());
    let line = fails(&mut run(&p, &"a".repeat(40)));
    assert!(line.contains("the prompt is 42 tokens"), "{line}");
}

#[test]
fn a_header_context_of_a_million_tokens_sizes_the_cache_to_the_run() {
    let test = "a_header_context_of_a_million_tokens_sizes_the_cache_to_the_run";
    let (Some(ckpt), Some(tok)) = (
        enigma_testkit::shared_file("models/stories260K.bin", test),
        enigma_testkit::shared_file("models/tok512.bin", test),
    ) else {
        return;
    };
    let model = enigma_models::llama2c::import(
        &std::fs::read(ckpt).unwrap(),
        &std::fs::read(tok).unwrap(),
        "stories260K.bin",
    )
    .unwrap();
    // stories260K with a context of 2^20: its whole KV cache would take 1.25 GiB.
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "long.enigma",
        &hostile_of(&model, |h| h.config.seq_len = 1 << 20),
    );
    // An address space of 1 GiB holds the cache of a short run, not the header's whole context.
    let limited = |args: &str| {
        let mut c = std::process::Command::new("bash");
        c.arg("-c").arg(format!(
            "ulimit -v 1048576; exec \"$0\" run -m \"$1\" -p Once --temp 0 {args}"
        ));
        c.arg(assert_cmd::cargo::cargo_bin("enigma")).arg(&p);
        c.output().unwrap()
    };
    let out = limited("-n 4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that does need the whole context gets an error that says so, not an abort.
    let out = limited("-n 100000000");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!stderr.contains("memory allocation"), "{stderr}");
}

#[test]
fn sizes_that_would_abort_the_process_are_refused() {
    let dir = TempDir::new().unwrap();
    let data = write(&dir, "d.txt", b"hello world\n");
    for (flag, value) in [
        ("--grad-accum", "4294967295"),
        ("--batch-size", "4294967295"),
    ] {
        let mut c = enigma();
        c.args(["train", "--allow-small-data", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join("run"))
            .args([flag, value]);
        let line = fails(&mut c);
        assert!(line.contains(flag), "{line}");
    }
    // The largest preset needs far more memory than any machine running this test has.
    let mut c = enigma();
    c.env("ENIGMA_HOME", dir.path().join("home")).args([
        "models", "create", "big", "--preset", "omega", "--seed", "1",
    ]);
    let line = fails(&mut c);
    assert!(
        line.contains("needs about") && line.contains("memory"),
        "{line}"
    );
}

#[test]
fn bench_with_zero_rounds_is_refused() {
    let line = fails(enigma().args(["bench", "--rounds", "0"]));
    assert!(line.contains("--rounds"), "{line}");
}

#[test]
fn stop_after_zero_is_refused_before_anything_is_trained() {
    let dir = TempDir::new().unwrap();
    let data = write(&dir, "d.txt", b"hello world\n");
    let out = dir.path().join("run");
    let mut c = enigma();
    c.args(["train", "--allow-small-data", "--stop-after", "0", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out);
    let line = fails(&mut c);
    assert!(line.contains("--stop-after"), "{line}");
    assert!(!out.join("model.enigma").exists());
}

#[cfg(unix)]
#[test]
fn info_on_a_fifo_is_refused_instead_of_blocking_forever() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("pipe.enigma");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mkfifo is not available");
        return;
    }
    for mut cmd in [info(&fifo), run(&fifo, "a")] {
        let line = fails(cmd.timeout(std::time::Duration::from_secs(20)));
        assert!(line.contains("not a regular file"), "{line}");
    }
}

#[test]
fn n_predict_zero_and_a_context_past_the_models_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "m.enigma", valid());
    let line = fails(
        enigma()
            .args(["run", "-m"])
            .arg(&p)
            .args(["-p", "a", "-n", "0"]),
    );
    assert!(line.contains("-n/--n-predict must be at least 1"), "{line}");
    let line = fails(
        enigma()
            .args(["run", "-m"])
            .arg(&p)
            .args(["-p", "a", "-c", "9"]),
    );
    assert!(
        line.contains("-c/--ctx-size 9 is more than this model's context of 8"),
        "{line}"
    );
    let line = fails(enigma().args(["chat", "-m"]).arg(&p).args(["-n", "-3"]));
    assert!(line.contains("-n/--n-predict"), "{line}");
    let line = fails(
        enigma()
            .args(["run", "-m"])
            .arg(&p)
            .arg("-f")
            .arg(dir.path().join("none.txt")),
    );
    assert!(line.contains("cannot read the prompt file"), "{line}");
    let bad = write(&dir, "bad.txt", b"a\xFFb");
    let line = fails(enigma().args(["run", "-m"]).arg(&p).arg("-f").arg(&bad));
    assert!(line.contains("is not UTF-8 text"), "{line}");
}

/// The byte-level model emits arbitrary bytes when sampled hot: the bytes printed must still be UTF-8,
/// with U+FFFD where the model's bytes never form a character.
#[test]
fn run_prints_valid_utf8_whatever_bytes_the_model_emits() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "m.enigma", valid());
    let mut replaced = 0;
    for seed in 1..=12 {
        let out = enigma()
            .args(["run", "-m"])
            .arg(&p)
            .args([
                "-p", "é", "-n", "-1", "--temp", "30", "--top-k", "0", "--top-p", "1",
            ])
            .args(["-s", &seed.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("stdout is UTF-8");
        assert!(text.starts_with("é"), "{text:?}");
        replaced += text.matches('\u{FFFD}').count();
    }
    // Random bytes rarely form characters: the decoder had something to repair.
    assert!(replaced > 0);
}

#[test]
fn a_prompt_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "m.enigma", valid());
    let f = write(&dir, "prompt.txt", "aé".as_bytes());
    let out = enigma()
        .args(["run", "-m"])
        .arg(&p)
        .arg("-f")
        .arg(&f)
        .args(["-n", "1", "--temp", "0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("aé"));
}

/// `quantize m.enigma -o m.enigma` and an import over its own checkpoint replaced their input.
#[test]
fn outputs_never_overwrite_inputs_or_existing_files_without_force() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "ok.enigma", valid());
    let quantize = |out: &Path, extra: &[&str]| {
        let mut c = enigma();
        c.arg("quantize")
            .arg(&p)
            .arg("-o")
            .arg(out)
            .args(["--to", "q8_0"])
            .args(extra);
        c
    };
    // The input itself, spelled differently.
    let same = dir.path().join(".").join("ok.enigma");
    let line = fails(&mut quantize(&same, &[]));
    assert!(
        line.contains("is the same file as the input") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), valid());
    let other = write(&dir, "other.enigma", b"keep me");
    let line = fails(&mut quantize(&other, &[]));
    assert!(
        line.contains("other.enigma already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
    quantize(&other, &["--force"]).assert().success();
    run(&other, "a").assert().success();

    // An import whose -o names its own tokenizer or checkpoint.
    let (header, n) = tiny_llama2c();
    let ckpt = write(&dir, "model.bin", &checkpoint(header, n));
    let tok = write(&dir, "tok.bin", &llama2c_tokenizer(4));
    for target in [&tok, &ckpt] {
        let line = fails(
            enigma()
                .args(["import", "llama2c"])
                .arg(&ckpt)
                .arg("--tokenizer")
                .arg(&tok)
                .arg("-o")
                .arg(target),
        );
        assert!(line.contains("is the same file as the input"), "{line}");
    }
    assert_eq!(std::fs::read(&tok).unwrap(), llama2c_tokenizer(4));
    assert_eq!(std::fs::read(&ckpt).unwrap(), checkpoint(header, n));
}

/// `train --resume` of a run that had done all its steps printed "loss NaN" and exited 0.
#[test]
fn resuming_a_finished_run_says_it_is_finished() {
    let dir = TempDir::new().unwrap();
    let text: String = (0..200)
        .map(|i| format!("line {i}: the cat sat on the mat\n"))
        .collect();
    let data = write(&dir, "d.txt", text.as_bytes());
    let config = write(
        &dir,
        "tiny.json",
        br#"{"dim":16,"hidden_dim":32,"n_layers":1,"n_heads":2,"n_kv_heads":1,"vocab_size":0,
"seq_len":16,"rope_theta":10000.0,"norm_eps":1e-5,"tied_classifier":true}"#,
    );
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut c = enigma();
        c.arg("train")
            .arg("--out")
            .arg(&out)
            .args(["--quiet", "--threads", "1"])
            .args(extra);
        c
    };
    train(&["--steps", "2", "--vocab-size", "270", "--batch-size", "2"])
        .args(["--allow-small-data", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .assert()
        .success();
    let line = fails(&mut train(&["--resume"]));
    assert_eq!(
        line,
        format!(
            "error: the run in {} is finished: step 2 of 2; to continue it, resume with more steps (--resume --steps 4)",
            out.display()
        )
    );
    // More steps continue it.
    train(&["--resume", "--steps", "3"]).assert().success();
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
}

#[cfg(feature = "flash")]
mod flash {
    use super::*;

    /// A folder holding only `programs`, each a shell script printing `output` (a stand-in for a tool).
    fn path_with(dir: &TempDir, programs: &[(&str, &str)]) -> PathBuf {
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, output) in programs {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\nprintf '%s\\n' {output}\n")).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        bin
    }

    fn flash(model: &Path, board: &str, path: &Path, extra: &[&str]) -> Command {
        let mut c = enigma();
        c.env("PATH", path)
            .args(["flash", "--board", board, "--model"])
            .arg(model)
            .args(extra);
        c
    }

    /// A missing target or QEMU was a compiler error after a 36 s build; now the command that installs it.
    #[cfg(unix)]
    #[test]
    fn missing_targets_and_tools_are_named_before_building() {
        let dir = TempDir::new().unwrap();
        let m = write(&dir, "ok.enigma", valid());
        // rustup knows only the host's target.
        let bin = path_with(&dir, &[("rustup", "x86_64-unknown-linux-gnu")]);
        let start = std::time::Instant::now();
        let line = fails(&mut flash(&m, "mps2-an386", &bin, &["--build-only"]));
        assert_eq!(
            line,
            "error: the Rust target thumbv7em-none-eabihf is not installed (the mps2-an386 firmware is built for it): run `rustup target add thumbv7em-none-eabihf`"
        );
        let line = fails(&mut flash(&m, "rp-pico", &bin, &["--build-only"]));
        assert!(
            line.contains("rustup target add thumbv6m-none-eabi"),
            "{line}"
        );
        // The target is there; QEMU is not.
        let bin = path_with(&dir, &[("rustup", "thumbv7em-none-eabihf")]);
        let line = fails(&mut flash(&m, "mps2-an386", &bin, &["-p", "a"]));
        assert!(
            line.contains("qemu-system-arm is not installed")
                && line.contains("apt-get install qemu-system-arm"),
            "{line}"
        );
        assert!(start.elapsed().as_secs() < 30, "nothing was built");
    }

    /// The budget refusal came after a build, below cargo's output; a model larger than the whole flash is
    /// refused first, in one line.
    #[test]
    fn a_model_larger_than_the_flash_is_refused_in_one_line() {
        let dir = TempDir::new().unwrap();
        let c = Config {
            dim: 128,
            hidden_dim: 384,
            n_layers: 2,
            ..config()
        };
        let params = vec![0.01f32; ParamLayout::new(&c).total_numel() as usize];
        let mut w = ModelWriter::new(c, tokenizer());
        w.f32_params(&params).unwrap();
        let m = write(&dir, "big.enigma", &w.to_bytes().unwrap());
        let path = std::env::var_os("PATH").unwrap_or_default();
        let line = fails(&mut flash(
            &m,
            "nucleo-f411re",
            Path::new(&path),
            &["--build-only"],
        ));
        assert!(
            line.contains("big.enigma does not fit the flash of nucleo-f411re")
                && line.contains("the board has 512 KiB of flash, over by")
                && line.contains("--to q8_0"),
            "{line}"
        );
    }
}
