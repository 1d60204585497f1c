//! Two processes writing one model folder: exactly one wins, the other is told who holds it.
//!
//! The winner is made to hold the lock for a moment (ENIGMA_TEST_HOLD_LOCK_MS, docs/MODELS.md), so the two
//! really overlap whichever starts first; the outcome does not depend on timing beyond that.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const HOLD_MS: &str = "1500";

fn enigma(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("enigma"));
    c.env("ENIGMA_HOME", home)
        .env("ENIGMA_TEST_HOLD_LOCK_MS", HOLD_MS)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn(home: &Path, args: &[&str]) -> Child {
    enigma(home, args).spawn().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn create(home: &Path, name: &str) {
    let out = enigma(
        home,
        &["models", "create", name, "--preset", "nano", "--seed", "1"],
    )
    .env_remove("ENIGMA_TEST_HOLD_LOCK_MS")
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn two_writers_of_one_folder_exactly_one_wins() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    create(h, "m");
    let args = [
        "models",
        "convert",
        "m",
        "--preset",
        "micro",
        "--in-place",
        "--yes",
    ];
    let (a, b) = (spawn(h, &args), spawn(h, &args));
    let pids = [a.id(), b.id()];
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let winners: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "{} / {}",
        stderr(&outs[0]),
        stderr(&outs[1])
    );
    let (w, l) = (winners[0], 1 - winners[0]);
    let err = stderr(&outs[l]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "error: model 'm': {} is locked by process {} (convert); try again when it finishes",
            h.join("m").display(),
            pids[w]
        )
    );
    // The winner's work is whole: the model is micro-sized and loads.
    let out = enigma(h, &["models", "info", "m"])
        .env_remove("ENIGMA_TEST_HOLD_LOCK_MS")
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(info.contains("dim 192"), "{info}");
    assert_eq!(info.matches("converted from m").count(), 1, "{info}");
}

#[test]
fn delete_is_refused_while_another_process_works_on_the_model() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    create(h, "m");
    let holder = spawn(h, &["models", "copy", "m", "m2"]);
    let pid = holder.id();
    // Wait until the holder has the lock (its note names it), then try to delete.
    let lock = h.join("m/.lock");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with(&pid.to_string())) {
        assert!(
            start.elapsed().as_secs() < 20,
            "the holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = enigma(h, &["models", "delete", "m", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "error: model 'm': {} is locked by process {pid} (copy); try again when it finishes",
            h.join("m").display()
        )
    );
    // The listing says who holds it (a probe that never gets in the holder's way).
    let out = enigma(h, &["models", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("m ") && l.ends_with(&format!("locked by process {pid} (copy)"))),
        "{list}"
    );
    let done = holder.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(h.join("m/model.enigma").is_file() && h.join("m2/model.enigma").is_file());
    let out = enigma(h, &["models", "delete", "m", "--yes"])
        .env_remove("ENIGMA_TEST_HOLD_LOCK_MS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn two_creators_of_one_name_exactly_one_wins() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    let args = ["models", "create", "same", "--preset", "nano"];
    let (a, b) = (spawn(h, &args), spawn(h, &args));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "{} / {}", stderr(&outs[0]), stderr(&outs[1]));
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(
        stderr(loser).trim_end(),
        format!(
            "error: a model named 'same' already exists in {}",
            h.display()
        )
    );
    // No staging folder is left behind by the loser.
    let hidden: Vec<_> = std::fs::read_dir(h)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// `enigma run` holds a reader's lock on a model folder: training into that folder is refused while it
/// runs, and running is refused while the folder is being written.
#[test]
fn run_and_train_of_one_model_folder_exclude_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("m");
    std::fs::create_dir_all(&model_dir).expect("dir");
    std::fs::write(model_dir.join("model.enigma"), enigma_models::DEFAULT_MODEL).expect("model");
    let model = model_dir.join("model.enigma");

    // A writer holds the folder: `run` is refused with one line naming it.
    let writer =
        enigma_runtime::lock::ModelLock::acquire(&model_dir, "train").expect("writer lock");
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("enigma"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args(["-p", "x", "-n", "2"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("error: ") && err.contains("locked by") && err.contains("train"),
        "{err}"
    );
    drop(writer);

    // Readers share: two runs at once are fine, and while one holds the folder a writer is refused.
    let reader =
        enigma_runtime::lock::ModelLock::acquire_shared(&model_dir, "run").expect("reader");
    let again =
        enigma_runtime::lock::ModelLock::acquire_shared(&model_dir, "run").expect("second reader");
    let refused = enigma_runtime::lock::ModelLock::acquire(&model_dir, "train");
    assert!(
        refused.is_err(),
        "a writer got the lock while readers held it"
    );
    drop((reader, again));
    let ok = std::process::Command::new(assert_cmd::cargo::cargo_bin("enigma"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args(["-p", "x", "-n", "2", "--temp", "0"])
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    enigma_runtime::lock::ModelLock::acquire(&model_dir, "train").expect("free again after run");
}

/// `run` took no lock on a store model's folder (a fresh store folder has no `.lock` file yet), so
/// `models delete`, `convert --in-place` and `rename` went ahead under a running model.
#[test]
fn a_running_model_cannot_be_deleted_converted_or_renamed() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    create(h, "m");
    let dir = h.join("m");
    assert!(
        !dir.join(".lock").exists(),
        "a fresh model folder has no lock file"
    );
    // The reader holds its lock for the hook's pause before it runs.
    let run = enigma(h, &["run", "-p", "x", "-n", "2", "--temp", "0", "-m"])
        .env("ENIGMA_TEST_HOLD_LOCK_MS", "4000")
        .arg(dir.join("model.enigma"))
        .spawn()
        .unwrap();
    // Wait until the reader holds the lock: an exclusive try fails then (and never blocks anyone: a
    // reader that meets the probe waits it out).
    let start = std::time::Instant::now();
    loop {
        let held = std::fs::File::open(dir.join(".lock"))
            .map(|f| !fs4_try_exclusive(&f))
            .unwrap_or(false);
        if held || start.elapsed().as_secs() > 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for args in [
        &["models", "delete", "m", "--yes"][..],
        &["models", "rename", "m", "n", "--yes"],
        &[
            "models",
            "convert",
            "m",
            "--preset",
            "micro",
            "--in-place",
            "--yes",
        ],
    ] {
        let out = enigma(h, args)
            .env_remove("ENIGMA_TEST_HOLD_LOCK_MS")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{args:?} succeeded under a running model"
        );
        assert!(err.contains("locked"), "{args:?}: {err}");
    }
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("model.enigma").is_file());
}

/// Tries an exclusive lock and drops it at once; `false` when someone holds the file.
fn fs4_try_exclusive(f: &std::fs::File) -> bool {
    fs4::fs_std::FileExt::try_lock_exclusive(f).unwrap_or(false)
}
