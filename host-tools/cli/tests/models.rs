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
    assert!(out.starts_with("no models in"), "{out}");
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
    let row = out.lines().nth(1).unwrap();
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
    ok(h, &["models", "rename", "story2", "tale"]);
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
    let names: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
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

    ok(h, &["models", "delete", "tale"]);
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
            &["models", "convert", "a", "--preset", "nano", "--in-place"]
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
