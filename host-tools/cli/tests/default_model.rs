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

/// Checks that `text` reads as English: enough words, most of them lowercase, and nearly every lowercase
/// word in the dictionary. Capitalised words are names or sentence starts: the names of the King James
/// Bible (Beriah, Happuah, ...) are not in a dictionary, and garbage does not get in that way since it
/// would have to be most of the words. A possessive's "'s" is dropped first.
fn assert_readable(text: &str, dict: &HashSet<String>, min_words: usize) {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphabetic() && c != '\'')
        .map(|w| w.trim_matches('\'').trim_end_matches("'s"))
        .filter(|w| !w.is_empty())
        .collect();
    let lower: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| w.starts_with(|c: char| c.is_lowercase()))
        .collect();
    let known = lower.iter().filter(|w| dict.contains(**w)).count();
    assert!(words.len() >= min_words, "too few words: {text:?}");
    assert!(
        2 * lower.len() >= words.len(),
        "mostly capitalised: {text:?}"
    );
    assert!(
        10 * known >= 9 * lower.len(),
        "{known} of {} lowercase words in the dictionary: {text:?}",
        lower.len()
    );
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
    assert_readable(&text, &dict, 5);
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
        assert_readable(&text, &dict, 20);
    }
}
