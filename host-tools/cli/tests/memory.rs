//! `enigma memory ...` and `enigma chat --memory` end to end: the memory module embedding through
//! `embedding_api` against a loopback server of OpenAI's wire format (hashed-word vectors, not a model).

use assert_cmd::Command;
use enigma_memory::fake::FakeApi;
use std::path::Path;

fn enigma(home: &Path) -> Command {
    let mut c = Command::cargo_bin("enigma").unwrap();
    c.env("ENIGMA_HOME", home)
        .env_remove("ENIGMA_SIMULATE_HARDWARE")
        .env("ENIGMA_KERNELS", "generic");
    c
}

fn run(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = enigma(home).args(args).write_stdin(stdin).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(home: &Path, args: &[&str]) -> String {
    let (success, out, err) = run(home, args, "");
    assert!(success, "{args:?} failed: {err}");
    out
}

/// Fails with one line on stderr starting "error: ", which is returned.
fn fails(home: &Path, args: &[&str]) -> String {
    let (success, _, err) = run(home, args, "");
    assert!(!success, "{args:?} succeeded");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    errors[0].to_string()
}

/// A models home with embedding_api (against `api`) and memory wanted.
fn home_with_memory(api: &FakeApi) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let h = t.path();
    let e = fails(h, &["memory", "list"]);
    assert!(e.contains("enigma modules load memory"), "{e}");
    ok(h, &["modules", "allow-cloud", "on"]);
    let url = format!("base_url={}", api.url());
    ok(
        h,
        &[
            "modules",
            "load",
            "embedding_api",
            "--set",
            "provider=openai_compatible",
            "--set",
            &url,
            "--set",
            "model=fake-embed",
        ],
    );
    ok(h, &["modules", "load", "memory"]);
    t
}

#[test]
fn add_search_list_forget_export_import() {
    let api = FakeApi::start(128, None).unwrap();
    let t = home_with_memory(&api);
    let h = t.path();
    let out = ok(
        h,
        &[
            "memory",
            "add",
            "The spare key is under the blue flower pot.",
            "Dentist appointment on Thursday at nine.",
            "The wifi network is called Orchard.",
        ],
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.starts_with("added #1: The spare key"), "{out}");

    let found: serde_json::Value = serde_json::from_str(&ok(
        h,
        &[
            "memory",
            "search",
            "when is the dentist appointment",
            "-k",
            "2",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2);
    assert_eq!(found[0]["id"], 2);
    assert!(found[0]["score"].as_f64().unwrap() > found[1]["score"].as_f64().unwrap());

    let listed = ok(h, &["memory", "list", "--entries"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    ok(h, &["memory", "forget", "2"]);
    let e = fails(h, &["memory", "forget", "2"]);
    assert!(e.contains("no memory entry 2"), "{e}");
    let out = ok(h, &["memory", "search", "dentist", "-k", "1"]);
    assert!(!out.contains("Dentist"), "{out}");

    // Conversations: import a file, export it back, refuse an unknown id.
    let export = r#"{"format":"enigma-memory","version":1,"conversations":[{"id":7,"title":"trip","created_at":1,"updated_at":2,"messages":[{"role":"user","content":"pack the tent","created_at":1},{"role":"assistant","content":"noted","created_at":2}]}]}"#;
    let file = h.join("in.json");
    std::fs::write(&file, export).unwrap();
    let out = ok(h, &["memory", "import", file.to_str().unwrap()]);
    assert!(out.contains("imported 1 conversations: [1]"), "{out}");
    assert!(ok(h, &["memory", "list"]).contains("1 \"trip\": 2 messages"));
    let outfile = h.join("out.json");
    ok(
        h,
        &[
            "memory",
            "export",
            "--conversation",
            "1",
            "-o",
            outfile.to_str().unwrap(),
        ],
    );
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outfile).unwrap()).unwrap();
    assert_eq!(
        back["conversations"][0]["messages"][0]["content"],
        "pack the tent"
    );
    let e = fails(h, &["memory", "export", "--conversation", "99"]);
    assert!(e.contains("no conversation 99"), "{e}");
    let e = fails(
        h,
        &[
            "memory",
            "import",
            outfile.with_extension("missing").to_str().unwrap(),
        ],
    );
    assert!(e.contains("cannot read"), "{e}");
    ok(h, &["memory", "forget", "--conversation", "1"]);
    assert!(!ok(h, &["memory", "list"]).contains("trip"));
}

#[test]
fn chat_with_memory_puts_the_nearest_passages_in_the_prompt_and_says_which() {
    let api = FakeApi::start(128, None).unwrap();
    let t = home_with_memory(&api);
    let h = t.path();
    ok(
        h,
        &["models", "create", "m", "--preset", "nano", "--seed", "1"],
    );
    ok(
        h,
        &[
            "memory",
            "add",
            "The wifi network is called Orchard.",
            "The spare key is under the blue flower pot.",
        ],
    );
    let args = [
        "chat",
        "-m",
        "m",
        "--memory",
        "--memory-top",
        "1",
        "--temp",
        "0",
        "-n",
        "4",
        "--threads",
        "1",
        "--verbose-prompt",
    ];
    let (success, _, err) = run(h, &args, "where is the spare key\n/quit\n");
    assert!(success, "{err}");
    assert!(err.contains("(memory: #2 ("), "{err}");
    assert!(
        err.contains("(memory: saving this chat as conversation 1)"),
        "{err}"
    );
    // The passage is in the prompt: more tokens than the question alone.
    let prompt_len = |err: &str| {
        err.lines()
            .find_map(|l| l.split_once("prompt ids: ").map(|(_, ids)| ids))
            .map(|ids| ids.matches(',').count() + 1)
            .unwrap_or_else(|| panic!("no prompt ids in {err}"))
    };
    let with = prompt_len(&err);
    let plain = [
        "chat",
        "-m",
        "m",
        "--temp",
        "0",
        "-n",
        "4",
        "--threads",
        "1",
        "--verbose-prompt",
    ];
    let (success, _, err) = run(h, &plain, "where is the spare key\n/quit\n");
    assert!(success, "{err}");
    assert!(with > prompt_len(&err) + 5, "{with} tokens with memory");
    // The turn was saved, in the user's own words.
    let saved: serde_json::Value =
        serde_json::from_str(&ok(h, &["memory", "export", "--conversation", "1"])).unwrap();
    assert_eq!(
        saved["conversations"][0]["messages"][0]["content"],
        "where is the spare key"
    );
    assert_eq!(
        saved["conversations"][0]["messages"][1]["role"],
        "assistant"
    );
}
