//! `enigma train` end to end: the rules it enforces, exact resume, surviving `kill -9` during a save,
//! fine-tuning into a chat model, and learning (validation loss well below the unigram entropy).

use assert_cmd::Command;
use enigma_runtime::ModelLock;
use enigma_testkit::{shared_file, shared_text};
use enigma_train::checkpoint::{self, Checkpoint};
use enigma_train::progress::LogEntry;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A model small enough that a debug-build step takes milliseconds.
const TINY: &str = r#"{"dim":32,"hidden_dim":64,"n_layers":2,"n_heads":4,"n_kv_heads":2,"vocab_size":0,
"seq_len":64,"rope_theta":10000.0,"norm_eps":1e-5,"tied_classifier":true}"#;

struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

/// The first `lines` lines of tinyshakespeare and the tiny config, in a temporary folder.
fn setup(test: &str, lines: usize) -> Option<Setup> {
    let text = shared_text("data/tinyshakespeare.txt", test)?;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let data = dir.path().join("data.txt");
    let part: Vec<&str> = text.lines().take(lines).collect();
    std::fs::write(&data, part.join("\n")).expect("the data file");
    let config = dir.path().join("tiny.json");
    std::fs::write(&config, TINY).expect("the config file");
    Some(Setup { dir, data, config })
}

fn enigma() -> Command {
    let mut c = Command::cargo_bin("enigma").unwrap();
    c.env_remove("ENIGMA_TEST_SLOW_SAVE_MS");
    c
}

impl Setup {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `enigma train` on the tiny config with fast settings, plus `extra`.
    fn train(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = enigma();
        c.arg("train")
            .arg("--config")
            .arg(&self.config)
            .arg("--data")
            .arg(&self.data)
            .arg("--out")
            .arg(out);
        c.args([
            "--vocab-size",
            "300",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--threads",
            "2",
            "--quiet",
        ]);
        c.args(extra);
        c
    }
}

fn log(out: &Path) -> Vec<LogEntry> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[test]
fn small_data_and_high_learning_rates_are_refused_with_clear_messages() {
    let Some(s) = setup("small_data_refused", 200) else {
        return;
    };
    let out = s.out("run");
    let a = s.train(&out, &["--steps", "1"]).assert().failure();
    let e = stderr(&a);
    assert!(
        e.contains("200 lines") && e.contains("--allow-small-data"),
        "{e}"
    );
    let a = s
        .train(
            &out,
            &["--steps", "1", "--allow-small-data", "--lr", "0.01"],
        )
        .assert()
        .failure();
    let e = stderr(&a);
    assert!(e.contains("--lr 0.01") && e.contains("--force"), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    // Forced, it trains.
    s.train(
        &out,
        &[
            "--steps",
            "2",
            "--allow-small-data",
            "--lr",
            "0.01",
            "--force",
        ],
    )
    .assert()
    .success();
}

#[test]
fn a_locked_model_folder_is_refused_and_an_existing_run_needs_resume() {
    let Some(s) = setup("locked_folder_refused", 1200) else {
        return;
    };
    let out = s.out("run");
    std::fs::create_dir_all(&out).unwrap();
    {
        // Another process serving (or training) the model holds the folder's lock.
        let _held = ModelLock::acquire(&out, "serving").unwrap();
        let e = stderr(&s.train(&out, &["--steps", "1"]).assert().failure());
        assert!(e.contains("locked") && e.contains("serving"), "{e}");
    }
    s.train(&out, &["--steps", "2"]).assert().success();
    let e = stderr(&s.train(&out, &["--steps", "2"]).assert().failure());
    assert!(e.contains("--resume"), "{e}");
    // A shape given beside --init that is not the model's is an error, not a partial load.
    let bad = s.dir.path().join("bad.json");
    std::fs::write(&bad, TINY.replace("\"dim\":32", "\"dim\":64")).unwrap();
    let mut c = enigma();
    c.args(["train", "--steps", "1", "--quiet", "--data"])
        .arg(&s.data)
        .arg("--out")
        .arg(s.out("ft"));
    c.arg("--init")
        .arg(out.join("model.enigma"))
        .arg("--config")
        .arg(&bad);
    let e = stderr(&c.assert().failure());
    assert!(e.contains("does not match the shape"), "{e}");
}

#[test]
fn resume_repeats_the_uninterrupted_run_exactly() {
    let Some(s) = setup("resume_exact", 1200) else {
        return;
    };
    let (whole, split) = (s.out("whole"), s.out("split"));
    let args = [
        "--steps",
        "8",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "0",
    ];
    s.train(&whole, &args).assert().success();
    s.train(&split, &args)
        .arg("--stop-after")
        .arg("3")
        .assert()
        .success();
    let ck = Checkpoint::load(&split.join(checkpoint::FILE)).unwrap();
    assert_eq!(ck.step, 3);
    // Resuming reads the settings from the checkpoint; flags other than the run's folder are not needed,
    // --data included. Other data, or a stop at or before the step reached, is refused, not ignored.
    let other = s.dir.path().join("other.txt");
    std::fs::write(&other, "other data\n").unwrap();
    let e = stderr(
        &enigma()
            .args(["train", "--resume", "--quiet", "--data"])
            .arg(&other)
            .arg("--out")
            .arg(&split)
            .assert()
            .failure(),
    );
    assert!(e.contains("leave --data out"), "{e}");
    for stop in ["2", "3"] {
        let e = stderr(
            &enigma()
                .args([
                    "train",
                    "--resume",
                    "--quiet",
                    "--stop-after",
                    stop,
                    "--out",
                ])
                .arg(&split)
                .assert()
                .failure(),
        );
        assert!(e.contains("--stop-after") && e.contains("step 3"), "{e}");
    }
    assert_eq!(
        Checkpoint::load(&split.join(checkpoint::FILE))
            .unwrap()
            .step,
        3
    );
    enigma()
        .args(["train", "--resume", "--quiet", "--data"])
        .arg(&s.data)
        .arg("--out")
        .arg(&split)
        .args(["--stop-after", "5"])
        .assert()
        .success();
    enigma()
        .args(["train", "--resume", "--quiet", "--out"])
        .arg(&split)
        .assert()
        .success();
    let (a, b) = (log(&whole), log(&split));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.loss, x.lr, x.grad_norm, x.val_loss),
            (y.step, y.loss, y.lr, y.grad_norm, y.val_loss)
        );
    }
    let p = |d: &Path| Checkpoint::load(&d.join(checkpoint::FILE)).unwrap().params;
    assert_eq!(p(&whole), p(&split));
    // The trained model runs under `enigma run`.
    enigma()
        .args(["run", "-n", "8", "--temp", "0", "-p", "ROMEO:", "-m"])
        .arg(split.join("model.enigma"))
        .assert()
        .success();
}

#[test]
fn kill_9_during_a_save_leaves_the_previous_checkpoint_usable() {
    let Some(s) = setup("kill_during_save", 1200) else {
        return;
    };
    let out = s.out("run");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("enigma"));
    cmd.arg("train")
        .arg("--config")
        .arg(&s.config)
        .arg("--data")
        .arg(&s.data)
        .arg("--out")
        .arg(&out);
    cmd.args([
        "--vocab-size",
        "300",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--steps",
        "1000",
    ]);
    cmd.args(["--checkpoint-every", "1", "--eval-every", "0", "--quiet"]);
    // Each save pauses between writing the temporary file and renaming it.
    cmd.env("ENIGMA_TEST_SLOW_SAVE_MS", "400");
    cmd.stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ck = out.join(checkpoint::FILE);
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait for a first checkpoint, then for the next save to be under way.
    let mut killed_mid_save = false;
    while Instant::now() < deadline {
        let saving = std::fs::read_dir(&out)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".checkpoint.bin.tmp")
            });
        if ck.exists() && saving {
            child.kill().unwrap(); // SIGKILL
            killed_mid_save = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    assert!(killed_mid_save, "never saw a save under way");
    let before = Checkpoint::load(&ck).expect("the previous checkpoint is whole");
    assert!(before.step >= 1);
    // The lock died with the process; the run resumes from that checkpoint.
    enigma()
        .args(["train", "--resume", "--quiet", "--stop-after"])
        .arg((before.step + 2).to_string())
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(Checkpoint::load(&ck).unwrap().step, before.step + 2);
    // The killed writer's temporary file went with the next save there.
    let stale: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
}

#[test]
fn conversations_fine_tune_an_existing_model_with_loss_on_replies() {
    let Some(s) = setup("chat_finetune", 1200) else {
        return;
    };
    let base = s.out("base");
    // The base model is stored as q8_0: fine-tuning dequantizes it (every shape checked) and goes on in f32.
    s.train(&base, &["--steps", "3", "--quantize", "q8_0"])
        .assert()
        .success();
    let info = enigma()
        .arg("info")
        .arg(base.join("model.enigma"))
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&info.get_output().stdout).contains("q8_0"));
    let chat = s.dir.path().join("chat.jsonl");
    let mut lines = String::new();
    for i in 0..60 {
        lines.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"system\", \"content\": \"Be brief.\"}}, {{\"role\": \"user\", \"content\": \"What is {i} plus one?\"}}, {{\"role\": \"assistant\", \"content\": \"It is {}.\"}}]}}\n",
            i + 1
        ));
    }
    std::fs::write(&chat, lines).unwrap();
    let qa = s.dir.path().join("pairs.txt");
    std::fs::write(
        &qa,
        "Q: Who are you?\nA: A small model.\n\nQ: Say hi.\nA: Hi!\n",
    )
    .unwrap();
    let ft = s.out("chat");
    let mut c = enigma();
    c.args([
        "train",
        "--allow-small-data",
        "--quiet",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "48",
    ]);
    c.arg("--init")
        .arg(base.join("model.enigma"))
        .arg("--data")
        .arg(&chat)
        .arg(&qa)
        .arg("--out")
        .arg(&ft);
    c.assert().success();
    assert_eq!(log(&ft).len(), 4);
    // The base model learnt plain text: `enigma chat` uses it as a completion model. The fine-tuned one
    // keeps the base model's tokenizer, with the markers it has now learnt, and chats.
    let first_line = |model: &std::path::Path| {
        let out = enigma()
            .args(["chat", "-n", "4", "--temp", "0", "-m"])
            .arg(model)
            .write_stdin("hello\n")
            .assert()
            .success();
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        stderr.lines().next().unwrap_or_default().to_string()
    };
    let base_line = first_line(&base.join("model.enigma"));
    assert!(base_line.contains("is a completion model"), "{base_line}");
    let chat_line = first_line(&ft.join("model.enigma"));
    assert!(chat_line.contains("a chat model"), "{chat_line}");
    // Prompted in the layout it was trained on: BOS, the system text, the user marker and text, the
    // assistant marker.
    let out = enigma()
        .args([
            "chat",
            "-n",
            "2",
            "--temp",
            "0",
            "--verbose-prompt",
            "--system",
            "Be brief.",
        ])
        .arg("-m")
        .arg(ft.join("model.enigma"))
        .write_stdin("What is 3 plus one?\n")
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let ids: Vec<u32> = stderr
        .lines()
        .find_map(|l| l.split_once("prompt ids: "))
        .map(|(_, ids)| serde_json::from_str(ids).unwrap())
        .unwrap_or_else(|| panic!("no prompt ids: {stderr}"));
    let file = enigma_runtime::ModelFile::open(ft.join("model.enigma")).unwrap();
    let parsed = file.parse().unwrap();
    let tok = enigma_core::Tokenizer::from_file(&parsed).unwrap();
    let markers = tok.meta().chat.unwrap();
    let enc = |t: &str| enigma_runtime::tokenize::encode(&tok, t, false, false).unwrap();
    let want = [
        vec![tok.bos()],
        enc("Be brief."),
        vec![markers.user],
        enc("What is 3 plus one?"),
        vec![markers.assistant],
    ]
    .concat();
    assert_eq!(ids, want);
}

#[test]
fn nano_validation_loss_falls_well_below_the_unigram_entropy() {
    let Some(src) = shared_file("data/tinyshakespeare.txt", "nano_learns") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nano");
    // The nano preset, cut short: a small vocabulary and small batches (many updates on few tokens) keep it
    // near 20 s in a debug build.
    let a = enigma()
        .args([
            "train",
            "--preset",
            "nano",
            "--vocab-size",
            "512",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
        ])
        .args([
            "--steps",
            "240",
            "--eval-every",
            "240",
            "--eval-batches",
            "4",
            "--threads",
            "2",
            "--quiet",
        ])
        .arg("--data")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let e = stderr(&a);
    let entropy: f64 = e
        .split("unigram entropy ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no unigram entropy in {e}"));
    let entries = log(&out);
    let first = entries[0].loss;
    let val = entries.last().and_then(|e| e.val_loss).unwrap();
    eprintln!("unigram entropy {entropy:.3}, first loss {first:.3}, validation loss {val:.3}");
    // Untrained, the loss is ln(512) = 6.24; a unigram model reaches the entropy (~5.3); clearly below it means
    // the model uses context.
    assert!(first > entropy, "{first} vs {entropy}");
    assert!(
        val < entropy - 0.5,
        "validation loss {val} is not well below the unigram entropy {entropy}"
    );
    assert!(out.join("loss.svg").exists());
}

/// With --lr 1e30 the weights blow up; the validation loss went NaN unnoticed and the model was written,
/// then `run` panicked in the sampler. The run stops instead, and leaves nothing behind.
#[test]
fn a_diverging_run_stops_on_a_non_finite_validation_loss_and_writes_no_model() {
    let Some(s) = setup("diverging_run_stops", 200) else {
        return;
    };
    let out = s.out("run");
    let a = s
        .train(
            &out,
            &[
                "--steps",
                "2",
                "--eval-every",
                "1",
                "--allow-small-data",
                "--lr",
                "1e30",
                "--force",
            ],
        )
        .assert()
        .failure();
    let e = stderr(&a);
    let last = e.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("--lr"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!out.join("model.enigma").exists(), "{e}");
}

/// A fresh run that failed after training its tokenizer left tokenizer.json (and the folder) behind.
#[test]
fn a_failed_train_leaves_no_tokenizer_json_behind() {
    let Some(s) = setup("failed_train_cleans_up", 200) else {
        return;
    };
    let out = s.out("run");
    let e = stderr(
        &s.train(
            &out,
            &["--steps", "1", "--allow-small-data", "--quantize", "q9"],
        )
        .assert()
        .failure(),
    );
    // Refused after the tokenizer was trained and saved.
    assert!(e.contains("trained a tokenizer") && e.contains("q9"), "{e}");
    assert!(!out.join("tokenizer.json").exists(), "{e}");
    assert!(!out.exists(), "the folder the run made is gone too");
    // A folder that was there before stays, with what it held.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    s.train(
        &out,
        &["--steps", "1", "--allow-small-data", "--quantize", "q9"],
    )
    .assert()
    .failure();
    assert!(out.join("notes.txt").exists());
    assert!(!out.join("tokenizer.json").exists());
}

/// A byte-level model with everything a Hugging Face or GGUF import can put beside its weights: a chat
/// template, the regex split, an added token, no BOS and the Metaspace prefix rule.
fn foreign_model(path: &Path) {
    use enigma_core::config::{Config, ParamLayout};
    let c = Config {
        dim: 32,
        hidden_dim: 64,
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 258,
        seq_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    let mut pieces: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    pieces.push(b"<|im_end|>".to_vec());
    pieces.push(b"th".to_vec());
    let mut scores = vec![0.0; pieces.len()];
    scores[256] = -1e10;
    let tok = enigma_runtime::TokenizerData {
        pieces,
        scores,
        bos: 256,
        eos: 256,
        pad: None,
        add_dummy_prefix: true,
        chat: None,
        split: enigma_core::pretok::Split::Gpt2,
        added: vec![256],
    };
    let n = ParamLayout::new(&c).total_numel() as usize;
    let params = enigma_testkit::XorShift::new(9).fill(n, -0.05, 0.05);
    let mut w = enigma_runtime::ModelWriter::new(c, tok);
    w.provenance("test:foreign", "");
    w.f32_params(&params).unwrap();
    w.without_bos().prefix_if_unspaced();
    w.tensor(
        enigma_models::gguf::KEEP_TEMPLATE,
        enigma_core::kernels::DType::U8,
        &[TEMPLATE.len() as u64],
        TEMPLATE.as_bytes().to_vec(),
    );
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}";

/// What a model's tokenizer does beyond its pieces, as one comparable value.
fn tokenizer_rules(path: &Path) -> (Vec<u8>, Vec<u32>, bool, Vec<u32>, Vec<u32>) {
    let file = enigma_runtime::ModelFile::open(path).unwrap();
    let parsed = file.parse().unwrap();
    let tok = enigma_core::Tokenizer::from_file(&parsed).unwrap();
    let template = parsed
        .tensor(enigma_models::gguf::KEEP_TEMPLATE)
        .map_or(Vec::new(), |t| t.bytes.to_vec());
    let enc = |t: &str| enigma_runtime::tokenize::encode(&tok, t, true, false).unwrap();
    (
        template,
        tok.added().to_vec(),
        tok.adds_bos(),
        enc(" the"),
        enc("x<|im_end|>"),
    )
}

#[test]
fn fine_tuning_keeps_the_chat_template_split_added_tokens_and_flags_across_a_resume() {
    let Some(s) = setup("finetune_keeps_tokenizer_rules", 1200) else {
        return;
    };
    let init = s.dir.path().join("foreign.enigma");
    foreign_model(&init);
    let want = tokenizer_rules(&init);
    // The rules are there to keep: no BOS, one prefix space (" the" has its own), `th` merged, the added
    // token whole.
    assert_eq!(want.0, TEMPLATE.as_bytes());
    assert!(!want.2);
    assert_eq!(want.3, vec![32, 257, 101]);
    assert_eq!(want.4, vec![32, 120, 256]);
    let ft = s.out("ft");
    let train = |extra: &[&str]| {
        let mut c = enigma();
        c.args(["train", "--allow-small-data", "--quiet", "--steps", "2"])
            .args(["--batch-size", "2", "--seq-len", "32", "--threads", "1"])
            .arg("--data")
            .arg(&s.data)
            .arg("--out")
            .arg(&ft)
            .args(extra);
        c
    };
    train(&["--init", init.to_str().unwrap(), "--stop-after", "1"])
        .assert()
        .success();
    assert_eq!(
        tokenizer_rules(&ft.join("model.enigma")),
        want,
        "after step 1"
    );
    train(&["--resume"]).assert().success();
    assert_eq!(
        Checkpoint::load(&ft.join(checkpoint::FILE)).unwrap().step,
        2
    );
    assert_eq!(
        tokenizer_rules(&ft.join("model.enigma")),
        want,
        "after the resume"
    );
}
