//! `enigma chat` keeps the conversation in the KV cache between turns.

use assert_cmd::Command;
use enigma_core::{Sampler, SamplerConfig, Serial, Tokenizer};
use enigma_models::llama2c;
use enigma_runtime::{HostSession, ModelFile};
use enigma_testkit::shared_bytes;

mod support;

fn stories(test: &str) -> Option<Vec<u8>> {
    let ckpt = shared_bytes("models/stories260K.bin", test)?;
    let tok = shared_bytes("models/tok512.bin", test)?;
    Some(llama2c::import(&ckpt, &tok, "stories260K.bin").expect("import"))
}

fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool) -> Vec<u32> {
    let mut ids = vec![0; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, bos, false, &mut ids).expect("encode");
    ids.truncate(n);
    ids
}

#[test]
fn a_second_turn_continues_the_first_turns_context() {
    let Some(bytes) = stories("a_second_turn_continues_the_first_turns_context") else {
        return;
    };
    let file = ModelFile::from_bytes(&bytes, "stories260K").expect("model");
    let m = file.model(enigma_core::kernels::kernels()).expect("model");
    let turn1 = encode(&m.tokenizer, "Once upon a time", true);
    let turn2 = encode(&m.tokenizer, "The dog", false);
    let greedy = || Sampler::new(SamplerConfig::greedy());

    // Two turns in one session: the second sees the first, its reply and the pending last token.
    let mut bufs = HostSession::new(&m.transformer, 8);
    let mut s = bufs.session(m.transformer).expect("session");
    let mut reply1 = Vec::new();
    s.generate(
        &Serial,
        &m.tokenizer,
        &mut greedy(),
        &turn1,
        10,
        false,
        &mut |t, _| {
            reply1.push(t);
            true
        },
    )
    .expect("turn 1");
    let mut reply2 = Vec::new();
    s.generate(
        &Serial,
        &m.tokenizer,
        &mut greedy(),
        &turn2,
        10,
        false,
        &mut |t, _| {
            reply2.push(t);
            true
        },
    )
    .expect("turn 2");
    assert_eq!(
        s.pos(),
        turn1.len() + reply1.len() + turn2.len() + reply2.len() - 1
    );

    // The same history fed at once to a fresh session gives the same second reply.
    let history: Vec<u32> = turn1.iter().chain(&reply1).chain(&turn2).copied().collect();
    let mut bufs = HostSession::new(&m.transformer, 8);
    let mut fresh = bufs.session(m.transformer).expect("session");
    let mut again = Vec::new();
    fresh
        .generate(
            &Serial,
            &m.tokenizer,
            &mut greedy(),
            &history,
            10,
            false,
            &mut |t, _| {
                again.push(t);
                true
            },
        )
        .expect("one turn");
    assert_eq!(reply2, again);

    // And a session that forgot the first turn answers differently: the context mattered.
    s.reset();
    let mut forgot = Vec::new();
    s.generate(
        &Serial,
        &m.tokenizer,
        &mut greedy(),
        &turn2,
        10,
        false,
        &mut |t, _| {
            forgot.push(t);
            true
        },
    )
    .expect("after reset");
    assert_ne!(reply2, forgot);
}

#[test]
fn enigma_chat_answers_each_line_and_leaves_on_quit() {
    let Some(bytes) = stories("enigma_chat_answers_each_line_and_leaves_on_quit") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("s.enigma");
    std::fs::write(&model, bytes).expect("write");
    let out = Command::cargo_bin("enigma")
        .expect("binary")
        .arg("chat")
        .arg("-m")
        .arg(&model)
        .args(["--temp", "0", "-n", "12", "--threads", "1"])
        .write_stdin("Tell me a story.\nWhat happened next?\n/reset\nHello\n/quit\nnever read\n")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Three turns, three replies (each ends with a newline), and the line after /quit is never answered.
    assert_eq!(stdout.lines().count(), 3, "{stdout:?}");
    assert!(stdout.lines().all(|l| !l.trim().is_empty()), "{stdout:?}");
    assert!(stderr.contains("(conversation forgotten)"), "{stderr}");
    assert_eq!(stderr.matches("generated:").count(), 3, "{stderr}");
}

#[test]
fn chat_with_a_completion_model_says_so_and_help_lists_the_commands() {
    let Some(bytes) = stories("chat_with_a_completion_model_says_so_and_help_lists_the_commands")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("s.enigma");
    std::fs::write(&model, bytes).expect("write");
    let out = Command::cargo_bin("enigma")
        .expect("binary")
        .arg("chat")
        .arg("-m")
        .arg(&model)
        .args(["--temp", "0", "-n", "40", "-t", "1"])
        .write_stdin("/help\n/nonsense\nOnce upon a time\n/quit\n")
        .output()
        .expect("run");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("is a completion model"), "{stderr}");
    assert!(
        stderr.contains("/reset") && stderr.contains("/quit"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command /nonsense"), "{stderr}");
    // Only the story line reached the model: one reply, a paragraph, with no chat markup.
    assert!(
        !stdout.trim().is_empty() && !stdout.contains("\n\n"),
        "{stdout:?}"
    );
    assert!(
        !stdout.contains("[INST]") && !stdout.contains("/help"),
        "{stdout:?}"
    );
    assert_eq!(stderr.matches("generated:").count(), 1, "{stderr}");
}

#[test]
fn a_template_that_does_not_parse_is_an_error_line_not_a_crash() {
    let test = "a_template_that_does_not_parse_is_an_error_line_not_a_crash";
    let dir = tempfile::tempdir().unwrap();
    let broken = "{% for m in messages %}{{ m['content'] }}";
    let Some(gguf) = support::templated_gguf(dir.path(), test, broken) else {
        return;
    };
    let out = Command::cargo_bin("enigma")
        .unwrap()
        .arg("chat")
        .arg("-m")
        .arg(&gguf)
        .args(["--temp", "0", "-n", "4", "--threads", "1"])
        .write_stdin("Hello\n/quit\n")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "error: that turn cannot be prompted (the model's chat template does not parse:"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_truncated_context_continues_as_a_fresh_one_fed_the_same_tokens() {
    let Some(bytes) = stories("a_truncated_context_continues_as_a_fresh_one_fed_the_same_tokens")
    else {
        return;
    };
    let file = ModelFile::from_bytes(&bytes, "stories260K").expect("model");
    let m = file.model(enigma_core::kernels::kernels()).expect("model");
    let first = encode(&m.tokenizer, "Once upon a time", true);
    let greedy = || Sampler::new(SamplerConfig::greedy());
    let run = |s: &mut enigma_core::generate::Session<'_, '_>, prompt: &[u32]| {
        let mut out = Vec::new();
        s.generate(
            &Serial,
            &m.tokenizer,
            &mut greedy(),
            prompt,
            10,
            false,
            &mut |t, _| {
                out.push(t);
                true
            },
        )
        .expect("generate");
        out
    };
    let mut bufs = HostSession::new(&m.transformer, 8);
    let mut s = bufs.session(m.transformer).expect("session");
    run(&mut s, &first);
    // What `enigma chat` does when a conversation changed after its first tokens: keep those, feed the rest.
    let changed: Vec<u32> = [&first[..], &encode(&m.tokenizer, "The dog ran", false)].concat();
    let keep = first.len() - 2;
    s.truncate(keep, Some(changed[keep - 1]));
    let reused = run(&mut s, &changed[keep..]);
    assert_eq!(s.pos(), changed.len() + reused.len() - 1);

    let mut bufs = HostSession::new(&m.transformer, 8);
    let mut fresh = bufs.session(m.transformer).expect("session");
    assert_eq!(reused, run(&mut fresh, &changed));
}
