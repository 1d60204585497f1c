//! `enigma modules ...` and `enigma hardware` end to end, over a temporary ENIGMA_HOME with a nano model
//! made by `enigma models create`.

use assert_cmd::Command;
use std::path::Path;
use tempfile::TempDir;

fn enigma(home: &Path) -> Command {
    let mut c = Command::cargo_bin("enigma").unwrap();
    c.env("ENIGMA_HOME", home)
        .env_remove("ENIGMA_SIMULATE_HARDWARE")
        .env("ENIGMA_KERNELS", "generic");
    c
}

/// Runs and returns (success, stdout, stderr).
fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = enigma(home).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(home: &Path, args: &[&str]) -> String {
    let (success, out, err) = run(home, args);
    assert!(success, "{args:?} failed: {err}");
    out
}

/// The command fails with exactly one line on stderr, starting "error: "; returns that line.
fn fails(home: &Path, args: &[&str]) -> String {
    let (success, _, err) = run(home, args);
    assert!(!success, "{args:?} succeeded");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    errors[0].to_string()
}

fn home_with_model() -> TempDir {
    let t = tempfile::tempdir().unwrap();
    ok(
        t.path(),
        &["models", "create", "m", "--preset", "nano", "--seed", "1"],
    );
    t
}

#[test]
fn list_shows_all_29_with_states_and_reasons() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["modules", "list"]);
    assert_eq!(
        out.lines().filter(|l| !l.is_empty()).count(),
        1 + 29 + 1,
        "{out}"
    );
    let row = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id}: {out}"))
            .to_string()
    };
    assert!(row("model").contains("choose the model to load: --set model=NAME"));
    assert!(row("tokenizer").contains("can load"));
    assert!(row("inference").contains("needs model, tokenizer (--with-deps loads them)"));
    assert!(row("training").contains("needs model, tokenizer (--with-deps loads them)"));
    assert!(row("vision").contains("unavailable"));
    assert!(row("chat_api").contains("(cloud)"));
    assert!(out.contains("29 modules: 0 wanted"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(t.path(), &["modules", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 29);
    assert_eq!(json[0]["id"], "model");
    assert_eq!(json[0]["provides"][0], "language_model");
}

#[test]
fn load_with_deps_status_unload_and_restore_across_processes() {
    let t = home_with_model();
    let h = t.path();
    let out = ok(
        h,
        &[
            "modules",
            "load",
            "model",
            "--set",
            "model=m",
            "--set",
            "threads=1",
        ],
    );
    assert!(out.starts_with("loaded model: m ("), "{out}");
    let out = ok(h, &["modules", "load", "code_gen_local", "--with-deps"]);
    let loaded: Vec<&str> = out
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        loaded,
        [
            "loaded tokenizer",
            "loaded inference",
            "loaded code_gen_local"
        ]
    );
    // Plain status reads the wanted set and loads nothing.
    let out = ok(h, &["modules", "status"]);
    for id in ["model", "tokenizer", "inference", "code_gen_local"] {
        assert!(out.contains(&format!("{id}: wanted")), "{out}");
    }
    assert!(!out.contains("health"), "{out}");
    // With --check a new process restores the set from modules.json and checks each module's health.
    let out = ok(h, &["modules", "status", "--check"]);
    for id in ["model", "tokenizer", "inference", "code_gen_local"] {
        assert!(out.contains(&format!("{id}: loaded")), "{out}");
    }
    assert_eq!(out.matches("health: ok").count(), 4, "{out}");
    assert!(
        out.contains("one-token forward: 259 finite logits"),
        "{out}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.join("modules.json")).unwrap()).unwrap();
    let ids: Vec<&str> = saved["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["model", "tokenizer", "inference", "code_gen_local"]);
    assert_eq!(saved["modules"][0]["config"]["model"], "m");

    let err = fails(h, &["modules", "unload", "model"]);
    assert_eq!(
        err,
        "error: module model is needed by code_gen_local, inference (unload those first, or use --cascade)"
    );
    let out = ok(h, &["modules", "unload", "model", "--cascade"]);
    assert_eq!(
        out,
        "unloaded code_gen_local (no longer wanted)\nunloaded inference (no longer wanted)\nunloaded model (no longer wanted)\n"
    );
    let out = ok(h, &["modules", "status"]);
    assert!(out.starts_with("tokenizer: wanted"), "{out}");
}

#[test]
fn refusals_are_one_line_with_the_reason() {
    let t = home_with_model();
    let h = t.path();
    assert_eq!(
        fails(h, &["modules", "load", "telepathy"]),
        "error: no module named 'telepathy' (see `enigma modules list`)"
    );
    assert_eq!(
        fails(h, &["modules", "load", "inference"]),
        "error: module inference needs model, tokenizer loaded first (or load it with --with-deps)"
    );
    assert!(fails(h, &["modules", "load", "vision"])
        .starts_with("error: module vision is not available in this build: "));
    assert_eq!(
        fails(h, &["modules", "load", "training"]),
        "error: module training needs model, tokenizer loaded first (or load it with --with-deps)"
    );
    assert_eq!(
        fails(h, &["modules", "load", "model", "--set", "threads=-1"]),
        "error: module model: threads: -1 is outside 0..=4096"
    );
    assert_eq!(
        fails(h, &["modules", "load", "model", "--set", "model=nope"]),
        format!(
            "error: module model: no model named 'nope' in {} (see `enigma models list`)",
            h.display()
        )
    );
    // A small machine: the model does not fit, and the reason names the sizes.
    let out = enigma(h)
        .env("ENIGMA_SIMULATE_HARDWARE", "ram=64K,cores=1")
        .args(["modules", "load", "model", "--set", "model=m"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: module model cannot run on this machine: needs ")
            && err
                .trim_end()
                .ends_with("of RAM and this machine has 64 KiB"),
        "{err}"
    );
    // Nothing was saved by any of that.
    assert!(!h.join("modules.json").exists());
}

#[test]
fn api_server_does_not_load_in_a_one_command_process() {
    let t = home_with_model();
    let h = t.path();
    assert_eq!(
        fails(h, &["modules", "load", "api_server"]),
        "error: module api_server needs a provider of text_generation (inference, chat_api or gguf_loader) loaded first (or load it with --with-deps)"
    );
    ok(h, &["modules", "load", "model", "--set", "model=m"]);
    // Its listener would stop as this command exits: refused, and what --with-deps loaded is unloaded again.
    let e = fails(
        h,
        &[
            "modules",
            "load",
            "api_server",
            "--with-deps",
            "--set",
            "port=0",
        ],
    );
    assert!(
        e.starts_with("error: module api_server failed to load: it listens only in a process that hosts modules for its life")
            && e.contains("`enigma serve` restores it from modules.json")
            && e.ends_with("(unloaded again: inference, tokenizer)"),
        "{e}"
    );
    let status = ok(h, &["modules", "status"]);
    assert!(!status.contains("api_server"), "{status}");
}

#[test]
fn a_module_that_no_longer_loads_is_reported_at_start() {
    let t = home_with_model();
    let h = t.path();
    ok(h, &["modules", "load", "model", "--set", "model=m"]);
    ok(h, &["models", "delete", "m", "--yes"]);
    // Listing loads nothing, so it cannot tell; it shows what is wanted.
    let (success, out, err) = run(h, &["modules", "list"]);
    assert!(success && err.is_empty(), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("model ") && l.contains("wanted")),
        "{out}"
    );
    let (success, out, err) = run(h, &["modules", "status", "--check"]);
    assert!(!success);
    assert!(
        err.starts_with("note: saved module model did not load: module model: no model named 'm'"),
        "{err}"
    );
    assert!(out.contains("model: not restored"), "{out}");
    let err = fails(h, &["modules", "status", "--check"]);
    assert_eq!(
        err,
        "error: 1 module did not restore, failed or is unhealthy (see above)"
    );
    // It stays saved until the user says otherwise.
    assert!(std::fs::read_to_string(h.join("modules.json"))
        .unwrap()
        .contains("\"model\""));
    assert_eq!(
        ok(h, &["modules", "unload", "model"]),
        "unloaded model (no longer wanted)\n"
    );
    assert!(!std::fs::read_to_string(h.join("modules.json"))
        .unwrap()
        .contains("\"model\""));
}

#[test]
fn a_corrupt_state_file_is_reported_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    let path = h.join("modules.json");
    std::fs::write(&path, "{\"version\": 1, \"modules\": [").unwrap();
    for args in [
        &["modules", "list"][..],
        &["modules", "load", "tokenizer"],
        &["modules", "allow-cloud", "on"],
    ] {
        let err = fails(h, args);
        assert!(
            err.starts_with(&format!(
                "error: cannot read the saved module state {}: EOF while parsing",
                path.display()
            )),
            "{err}"
        );
        assert!(err.ends_with("the file is left as it is: fix it or move it away"));
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"version\": 1, \"modules\": ["
    );
}

#[test]
fn cloud_permission_is_saved() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    assert!(ok(h, &["modules", "list"]).contains("cloud modules refused"));
    assert_eq!(
        ok(h, &["modules", "allow-cloud", "on"]),
        "cloud modules are allowed\n"
    );
    assert!(ok(h, &["modules", "list"]).contains("cloud modules allowed"));
    let saved = std::fs::read_to_string(h.join("modules.json")).unwrap();
    assert!(saved.contains("\"allow_cloud\": true"), "{saved}");
}

#[test]
fn info_describes_a_module_and_its_config() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["modules", "info", "code_gen_local"]);
    assert!(
        out.contains("needs:       model, tokenizer, inference"),
        "{out}"
    );
    assert!(out.contains("temperature"), "{out}");
    assert!(out.contains("default 0.2"), "{out}");
    let out = ok(t.path(), &["modules", "info", "image_gen_local"]);
    assert!(
        out.contains("hardware:    an NVIDIA GPU, 6 GiB of GPU memory"),
        "{out}"
    );
    let out = ok(t.path(), &["modules", "info", "gguf_loader", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["conflicts"][1], "inference");
}

#[test]
fn hardware_reports_the_machine_or_the_simulation() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["hardware"]);
    assert!(
        out.contains("RAM:") && out.contains("CPU cores:") && out.contains("CUDA:"),
        "{out}"
    );
    let out = enigma(t.path())
        .env("ENIGMA_SIMULATE_HARDWARE", "ram=4G,cores=4,gpu=8G")
        .arg("hardware")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("RAM:        4 GiB total, 4 GiB free"),
        "{text}"
    );
    assert!(
        text.contains("GPU 0:      simulated GPU, 8 GiB memory"),
        "{text}"
    );
    assert!(
        text.contains(
            "video_gen_local: needs 12 GiB of GPU memory and the largest GPU here has 8 GiB"
        ),
        "{text}"
    );
    assert!(!text.contains("image_gen_local:"), "{text}");
}

#[test]
fn the_training_module_prepares_a_fine_tuning_run() {
    let t = home_with_model();
    let h = t.path();
    let data = h.join("data.txt");
    std::fs::write(&data, "hello\n".repeat(10)).unwrap();
    ok(h, &["modules", "load", "model", "--set", "model=m"]);
    ok(h, &["modules", "load", "tokenizer"]);
    assert_eq!(
        fails(h, &["modules", "load", "training"]),
        "error: module training failed to load: choose the training data: --set data=FILE[,FILE...]"
    );
    let set_data = format!("data={}", data.display());
    let out = ok(
        h,
        &[
            "modules", "load", "training", "--set", &set_data, "--set", "steps=5",
        ],
    );
    assert_eq!(
        out.trim_end(),
        format!(
            "loaded training: fine-tunes m on {} for 5 steps (lr 0.0001) into model 'm-tuned'",
            data.display()
        )
    );
    let out = ok(h, &["modules", "status", "--check"]);
    assert!(
        out.contains("training: loaded") && out.contains("health: ok: ready to train"),
        "{out}"
    );
}

#[test]
fn listing_opens_no_model_so_a_broken_file_still_lists() {
    let t = home_with_model();
    let h = t.path();
    ok(h, &["modules", "load", "model", "--set", "model=m"]);
    ok(h, &["modules", "load", "inference", "--with-deps"]);
    // The saved model's file is replaced by garbage: anything that opened it would fail.
    let file = h.join("m").join("model.enigma");
    std::fs::write(&file, b"this is not a model").unwrap();
    let (success, out, err) = run(h, &["modules", "list"]);
    assert!(success && err.is_empty(), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("model ") && l.contains("wanted") && l.contains("model=\"m\"")),
        "{out}"
    );
    let (success, out, err) = run(h, &["modules", "info", "model"]);
    assert!(success && err.is_empty(), "{err}");
    assert!(out.contains("state:       wanted"), "{out}");
    let (success, out, err) = run(h, &["modules", "status"]);
    assert!(success && err.is_empty(), "{err}");
    assert!(out.contains("inference: wanted"), "{out}");
    // Changing the wanted set needs no loading either.
    assert_eq!(
        ok(h, &["modules", "unload", "inference"]),
        "unloaded inference (no longer wanted)\n"
    );
    // Hosting the set does open it, and says what is wrong.
    let (success, _, err) = run(h, &["modules", "status", "--check"]);
    assert!(!success);
    assert!(err.contains("saved module model did not load"), "{err}");
}

#[test]
fn generate_streams_from_whatever_provides_text_generation() {
    let t = home_with_model();
    let h = t.path();
    assert_eq!(
        fails(h, &["modules", "generate", "-p", "hi"]),
        "error: nothing loaded provides text_generation (one of inference, chat_api, gguf_loader can: `enigma modules load ID --with-deps`)"
    );
    ok(h, &["modules", "load", "model", "--set", "model=m"]);
    ok(h, &["modules", "load", "inference", "--with-deps"]);
    let out = enigma(h)
        .args(["modules", "generate", "-p", "Once upon", "-n", "12"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Streamed text is valid UTF-8 whatever bytes the (random) model picks.
    let text = String::from_utf8(out.stdout).expect("valid UTF-8");
    assert!(!text.trim().is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("generating with m (local"), "{err}");
    assert!(err.contains("generated in"), "{err}");
}

/// The module manager and `enigma run -m` resolve names one way: `default` is the built-in model, a
/// loose `.enigma` file of the home is found by its name.
#[test]
fn the_model_module_resolves_names_as_run_does() {
    for (name, setup) in [("default", false), ("loose", true)] {
        let t = home_with_model();
        let h = t.path();
        if setup {
            std::fs::copy(h.join("m/model.enigma"), h.join("loose.enigma")).unwrap();
        }
        ok(
            h,
            &[
                "modules",
                "load",
                "model",
                "--set",
                &format!("model={name}"),
            ],
        );
        let (success, out, err) = run(h, &["modules", "status", "--check"]);
        assert!(success, "{err}");
        assert!(
            out.contains(&format!("model: loaded: {name} (")) && out.contains("health: ok"),
            "{out}"
        );
    }
    // A name that is nowhere is refused, saying where it looked.
    let t = home_with_model();
    let line = fails(
        t.path(),
        &["modules", "load", "model", "--set", "model=nothing"],
    );
    assert!(
        line.contains("no model named 'nothing'") && line.contains("enigma models list"),
        "{line}"
    );
}
