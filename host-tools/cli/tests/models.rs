//! `enigma models ...` end to end over a temporary ENIGMA_HOME.

use assert_cmd::Command;
use std::path::Path;

fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::cargo_bin("enigma")
        .unwrap()
        .env("ENIGMA_HOME", home)
        .env("ENIGMA_KERNELS", "generic")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(home: &Path, args: &[&str]) -> (String, String) {
    let (success, out, err) = run(home, args);
    assert!(success, "{args:?} failed: {err}");
    (out, err)
}

fn fails(home: &Path, args: &[&str]) -> String {
    let (success, _, err) = run(home, args);
    assert!(!success, "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_string()
}

#[test]
fn create_list_info_copy_rename_convert_delete() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    let (out, _) = ok(h, &["models", "list"]);
    // The built-in model is always there; the home is empty.
    let first = out.lines().nth(1).unwrap();
    assert!(
        first.starts_with("default ") && first.ends_with("built in (read-only)"),
        "{out}"
    );
    assert!(out.contains("(no models in"), "{out}");
    let (_, err) = ok(
        h,
        &[
            "models", "create", "story", "--preset", "nano", "--seed", "3",
        ],
    );
    assert!(err.starts_with("created model 'story' (nano, "), "{err}");
    for f in ["model.enigma", "config.json", "metadata.json"] {
        assert!(h.join("story").join(f).exists(), "{f}");
    }
    // The model runs (byte-level tokenizer, random weights: the text is noise, but it is produced).
    let model = h.join("story/model.enigma");
    let (out, _) = ok(
        h,
        &[
            "run",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "hi",
            "-n",
            "4",
            "--temp",
            "0",
        ],
    );
    assert!(out.starts_with("hi"), "{out:?}");

    let (out, _) = ok(h, &["models", "list"]);
    let row = out.lines().nth(2).unwrap();
    assert!(
        row.starts_with("story") && row.contains("nano") && row.ends_with("ready"),
        "{out}"
    );

    let (out, _) = ok(h, &["models", "info", "story"]);
    assert!(out.contains("preset:      nano"), "{out}");
    assert!(
        out.contains("shape:       dim 128 layers 4 heads 4/2 ffn 384 vocab 259 seq 256"),
        "{out}"
    );
    assert!(out.contains("source:      random init (seed 3)"), "{out}");
    assert!(out.contains("lock:        free"), "{out}");

    ok(h, &["models", "copy", "story", "story2"]);
    ok(h, &["models", "rename", "story2", "tale", "--yes"]);
    let (_, err) = ok(
        h,
        &[
            "models",
            "convert",
            "tale",
            "--preset",
            "micro",
            "--in-place",
            "--seed",
            "1",
            "--yes",
        ],
    );
    assert!(err.contains("to micro (dim 192 layers 4"), "{err}");
    ok(
        h,
        &[
            "models",
            "convert",
            "story",
            "--preset",
            "tiny",
            "--to",
            "story-tiny",
        ],
    );
    let (out, _) = ok(h, &["models", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let all = v.as_array().unwrap();
    assert_eq!(all[0]["name"], "default");
    assert_eq!(all[0]["built_in"], true);
    let names: Vec<(&str, &str)> = all[1..]
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["preset"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("story", "nano"), ("story-tiny", "tiny"), ("tale", "micro")]
    );
    let (out, _) = ok(h, &["models", "info", "tale"]);
    assert!(out.contains("copied from story"), "{out}");
    assert!(out.contains("renamed from story2"), "{out}");
    assert!(out.contains("converted from tale (dim 128"), "{out}");

    ok(h, &["models", "delete", "tale", "-y"]);
    assert!(!h.join("tale").exists());
    let registry = std::fs::read_to_string(h.join("models.json")).unwrap();
    assert!(
        !registry.contains("\"tale\"") && registry.contains("\"story-tiny\""),
        "{registry}"
    );
}

#[test]
fn mistakes_get_one_clear_line() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    ok(h, &["models", "create", "a", "--preset", "nano"]);
    assert_eq!(
        fails(h, &["models", "create", "a", "--preset", "nano"]),
        format!("error: a model named 'a' already exists in {}", h.display())
    );
    assert!(fails(h, &["models", "create", "b", "--preset", "jumbo"])
        .starts_with("error: no preset named 'jumbo'; the presets are nano, micro, tiny,"));
    assert!(fails(h, &["models", "create", "../b", "--preset", "nano"])
        .starts_with("error: '../b' is not a usable model name"));
    assert_eq!(
        fails(h, &["models", "delete", "zz"]),
        format!(
            "error: no model named 'zz' in {} (see `enigma models list`)",
            h.display()
        )
    );
    assert_eq!(
        fails(
            h,
            &[
                "models",
                "convert",
                "a",
                "--preset",
                "nano",
                "--in-place",
                "--yes"
            ]
        ),
        "error: model 'a' already has the shape of preset nano"
    );
    // Resizing is never implicit: the target must be named.
    let (success, _, err) = run(h, &["models", "convert", "a", "--preset", "micro"]);
    assert!(!success && err.contains("--to <TO>|--in-place"), "{err}");
    // The largest presets are refused up front rather than exhausting memory.
    assert!(fails(h, &["models", "create", "big", "--preset", "omega"]).contains("needs about"));
}

#[test]
fn the_registry_is_rebuilt_from_the_folders_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    ok(
        h,
        &["models", "create", "a", "--preset", "nano", "--seed", "1"],
    );
    let (_, err) = ok(h, &["models", "list"]);
    assert_eq!(err, "", "in agreement: nothing to say");
    // A folder removed behind the manager's back, another half-made one.
    std::fs::remove_dir_all(h.join("a")).unwrap();
    std::fs::create_dir_all(h.join("junk")).unwrap();
    let (out, err) = ok(h, &["models", "list"]);
    assert!(err.starts_with("note: "), "{err}");
    assert!(
        err.contains("disagreed with the model folders (no longer there: a); rebuilt it from the model folders"),
        "{err}"
    );
    assert!(out.contains("junk") && out.contains("broken: "), "{out}");
    let (_, err) = ok(h, &["models", "list"]);
    assert_eq!(err, "");
}

/// `enigma models delete default` removed the repository's tracked model files and broke the next build.
#[test]
fn the_built_in_model_is_listed_read_only_and_never_deleted_or_replaced() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    ok(
        h,
        &["models", "create", "a", "--preset", "nano", "--seed", "1"],
    );
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/builtin/model.enigma");
    let before = std::fs::read(&builtin).unwrap();
    for args in [
        &["models", "delete", "default"][..],
        &["models", "delete", "default", "--yes"],
        &["models", "rename", "default", "b", "--yes"],
        &[
            "models",
            "convert",
            "default",
            "--preset",
            "micro",
            "--in-place",
            "--yes",
        ],
        &["models", "create", "default", "--preset", "nano"],
        &["models", "copy", "a", "default", "--force", "--yes"],
        &["models", "rename", "a", "default", "--force", "--yes"],
        &[
            "models", "convert", "a", "--preset", "micro", "--to", "default", "--force", "--yes",
        ],
    ] {
        let line = fails(h, args);
        assert!(
            line.starts_with("error: 'default' is the built-in model, built into the binary: "),
            "{args:?}: {line}"
        );
    }
    assert_eq!(std::fs::read(&builtin).unwrap(), before);
    assert!(!h.join("default").exists());
    // It runs by name, its info is shown, and a copy of it is an ordinary model.
    let (out, _) = ok(
        h,
        &[
            "run", "-m", "default", "-p", "ROMEO:", "-n", "4", "--temp", "0",
        ],
    );
    assert!(out.starts_with("ROMEO:"), "{out}");
    let (out, _) = ok(h, &["models", "info", "default"]);
    assert!(out.contains("built into the binary"), "{out}");
    ok(h, &["models", "copy", "default", "mine"]);
    assert_eq!(std::fs::read(h.join("mine/model.enigma")).unwrap(), before);
    let (out, _) = ok(h, &["models", "list"]);
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row: {out}"))
            .to_string()
    };
    assert!(row("default").ends_with("built in (read-only)"), "{out}");
    // The built-in's training steps come from the model itself, and its copy keeps them (the size
    // column is two words: "4 MiB").
    let steps = |r: String| r.split_whitespace().nth(6).unwrap().to_string();
    assert_ne!(steps(row("default")), "-", "{out}");
    assert_eq!(steps(row("default")), steps(row("mine")), "{out}");
}

/// Deleting, renaming, converting in place or replacing a model asks first; a script must say --yes.
#[test]
fn destroying_a_model_needs_confirmation_without_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    ok(
        h,
        &["models", "create", "a", "--preset", "nano", "--seed", "1"],
    );
    ok(
        h,
        &["models", "create", "b", "--preset", "nano", "--seed", "2"],
    );
    let before = std::fs::read(h.join("b/model.enigma")).unwrap();
    for args in [
        &["models", "delete", "a"][..],
        &["models", "rename", "a", "c"],
        &["models", "convert", "a", "--preset", "micro", "--in-place"],
        &["models", "copy", "a", "b", "--force"],
        &["models", "rename", "a", "b", "--force"],
        &[
            "models", "convert", "a", "--preset", "micro", "--to", "b", "--force",
        ],
    ] {
        let line = fails(h, args);
        assert!(
            line.contains("not confirmed") && line.contains("--yes"),
            "{args:?}: {line}"
        );
    }
    // Onto an existing name, --force is needed at all.
    for args in [
        &["models", "copy", "a", "b"][..],
        &["models", "rename", "a", "b", "--yes"],
        &[
            "models", "convert", "a", "--preset", "micro", "--to", "b", "--yes",
        ],
    ] {
        let line = fails(h, args);
        assert!(
            line.contains("already exists") && line.contains("--force"),
            "{args:?}: {line}"
        );
    }
    assert!(h.join("a/model.enigma").is_file());
    assert_eq!(std::fs::read(h.join("b/model.enigma")).unwrap(), before);
    ok(h, &["models", "copy", "a", "b", "--force", "--yes"]);
    assert_eq!(
        std::fs::read(h.join("b/model.enigma")).unwrap(),
        std::fs::read(h.join("a/model.enigma")).unwrap()
    );
    ok(h, &["models", "delete", "b", "-y"]);
    assert!(!h.join("b").exists());
}

/// `-m story` found nothing: run opened paths only, while the module manager looked in the models home.
#[test]
fn a_model_name_resolves_in_run_info_quantize_and_list_shows_loose_files() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    ok(
        h,
        &[
            "models", "create", "story", "--preset", "nano", "--seed", "3",
        ],
    );
    let (by_name, _) = ok(
        h,
        &["run", "-m", "story", "-p", "hi", "-n", "4", "--temp", "0"],
    );
    let path = h.join("story/model.enigma");
    let (by_path, _) = ok(
        h,
        &[
            "run",
            "-m",
            path.to_str().unwrap(),
            "-p",
            "hi",
            "-n",
            "4",
            "--temp",
            "0",
        ],
    );
    assert_eq!(by_name, by_path);
    // The folder itself names the model too.
    let folder = h.join("story");
    ok(h, &["info", folder.to_str().unwrap()]);
    let (out, _) = ok(h, &["info", "story"]);
    assert!(out.contains("story/model.enigma"), "{out}");
    // A loose .enigma file in the home, as scripts/quickstart.sh writes one.
    let loose = h.join("loose.enigma");
    ok(
        h,
        &[
            "quantize",
            "story",
            "-o",
            loose.to_str().unwrap(),
            "--to",
            "q8_0",
        ],
    );
    ok(
        h,
        &["run", "-m", "loose", "-p", "hi", "-n", "2", "--temp", "0"],
    );
    let (out, _) = ok(h, &["models", "list"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("loose "))
        .unwrap_or_else(|| panic!("no loose row: {out}"));
    assert!(
        row.contains(&format!("ready (file {})", loose.display())),
        "{row}"
    );
    // Nothing recorded training steps for it: '-', not a made-up 0.
    assert_eq!(row.split_whitespace().nth(6), Some("-"), "{row}");
    let story = out.lines().find(|l| l.starts_with("story ")).unwrap();
    assert_eq!(story.split_whitespace().nth(6), Some("0"), "{story}");
    // Nothing of that name: one line naming the home.
    let line = fails(h, &["run", "-m", "nothing", "-n", "1"]);
    assert_eq!(
        line,
        format!(
            "error: no model named 'nothing' in {} (see `enigma models list`)",
            h.display()
        )
    );
}

/// Steps were 0 in `models list` for a model trained by `enigma train --out HOME/NAME` (no metadata.json).
#[test]
fn list_shows_the_steps_enigma_train_ran() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path().join("home");
    let data = t.path().join("d.txt");
    let text: String = (0..300)
        .map(|i| format!("line {i}: the cat sat on the mat and looked at the dog\n"))
        .collect();
    std::fs::write(&data, text).unwrap();
    let config = t.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"dim":16,"hidden_dim":32,"n_layers":1,"n_heads":2,"n_kv_heads":1,"vocab_size":0,
"seq_len":16,"rope_theta":10000.0,"norm_eps":1e-5,"tied_classifier":true}"#,
    )
    .unwrap();
    let out = h.join("trained");
    ok(
        &h,
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--vocab-size",
            "270",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--allow-small-data",
            "--quiet",
        ],
    );
    let (list, _) = ok(&h, &["models", "list"]);
    let row = list.lines().find(|l| l.starts_with("trained ")).unwrap();
    assert_eq!(row.split_whitespace().nth(6), Some("3"), "{list}");
}
