//! The model built into `enigma` talks readable English: what a new user sees first.

use assert_cmd::Command;
use enigma_testkit::skip_or_fail;
use std::collections::HashSet;

const DICTIONARY: &str = "/usr/share/dict/words";

/// The dictionary's words, lowercased; `None` (after a visible skip, or a failure under CI) without one.
fn dictionary(test: &str) -> Option<HashSet<String>> {
    match std::fs::read_to_string(DICTIONARY) {
        Ok(text) => Some(text.lines().map(|w| w.to_lowercase()).collect()),
        Err(e) => {
            skip_or_fail(
                test,
                &format!(
                    "{DICTIONARY}: {e} (apt-get install wamerican; scripts/ci-tools.sh words)"
                ),
            );
            None
        }
    }
}

/// The alphabetic words of `text`, and the fraction of them the dictionary knows (a possessive's "'s" is
/// dropped first: the list has "lord" but not every "lord's").
fn known_fraction(text: &str, dict: &HashSet<String>) -> (usize, f64) {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphabetic() && c != '\'')
        .map(|w| w.trim_matches('\'').trim_end_matches("'s").to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let known = words.iter().filter(|w| dict.contains(*w)).count();
    (words.len(), known as f64 / words.len().max(1) as f64)
}

fn enigma() -> Command {
    let mut c = Command::cargo_bin("enigma").expect("binary");
    // Nothing from the environment decides which model answers: the built-in one does.
    c.env_remove("ENIGMA_HOME");
    c
}

#[test]
fn chat_with_the_built_in_model_prints_readable_english() {
    let test = "chat_with_the_built_in_model_prints_readable_english";
    let Some(dict) = dictionary(test) else { return };
    let home = tempfile::tempdir().expect("tempdir");
    let out = enigma()
        .current_dir(home.path())
        .args(["chat", "-s", "1", "-t", "1"])
        .write_stdin("Hello\n/quit\n")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).expect("valid UTF-8");
    let (n, known) = known_fraction(&text, &dict);
    assert!(n >= 5, "too few words: {text:?}");
    assert!(
        known >= 0.8,
        "{:.0}% dictionary words: {text:?}",
        100.0 * known
    );
}

#[test]
fn run_with_the_built_in_model_prints_readable_english() {
    let test = "run_with_the_built_in_model_prints_readable_english";
    let Some(dict) = dictionary(test) else { return };
    for seed in ["1", "2", "3"] {
        let out = enigma()
            .args([
                "run",
                "-p",
                "And it came to pass",
                "-n",
                "60",
                "-s",
                seed,
                "-t",
                "1",
            ])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("valid UTF-8");
        let (n, known) = known_fraction(&text, &dict);
        assert!(n >= 20, "too few words: {text:?}");
        assert!(
            known >= 0.8,
            "{:.0}% dictionary words: {text:?}",
            100.0 * known
        );
    }
}
