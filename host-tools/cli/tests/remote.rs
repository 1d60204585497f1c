//! `enigma run|chat|modules --remote` against a fake OpenAI-compatible server on loopback: a std TcpListener
//! that speaks the wire format (SSE `data:` chunks ending in `[DONE]`, the OpenAI error shape) and can
//! misbehave (401, 400, a stream cut mid-way, no answer, bad JSON). Asserts what the CLI prints and its exit.

mod common;

use assert_cmd::Command;
use common::{
    chat_chunk, done, error_answer, json_answer, models, serve, sse, text_chunk, Answer, Fake,
};
use serde_json::{json, Value};
use std::net::TcpListener;

/// A well-behaved server: models, completions and chat (each reply says how many messages it got).
fn good_server() -> Fake {
    serve(|req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => models(),
        ("POST", "/v1/completions") => sse(&[
            ": keep-alive\n\n".into(),
            text_chunk(" upon", None),
            text_chunk(" a time", Some("length")),
            done(),
        ]),
        ("POST", "/v1/chat/completions") => {
            let n = req.json()["messages"].as_array().map_or(0, Vec::len);
            sse(&[
                chat_chunk(json!({"role": "assistant"}), None),
                chat_chunk(json!({"content": "Hello"}), None),
                chat_chunk(json!({"content": format!(" ({n} messages)")}), None),
                chat_chunk(json!({}), Some("stop")),
                done(),
            ])
        }
        _ => error_answer("404 Not Found", "no such route"),
    })
}

fn enigma() -> Command {
    let mut c = Command::cargo_bin("enigma").unwrap();
    c.env_remove("ENIGMA_API_KEY").env(
        "ENIGMA_HOME",
        std::env::temp_dir().join("enigma-remote-test-none"),
    );
    c
}

/// Runs and returns (success, stdout, stderr).
fn run_with(mut c: Command, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = c.args(args).write_stdin(stdin).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

fn ok(args: &[&str]) -> (String, String) {
    let (success, out, err) = run_with(enigma(), args, "");
    assert!(success, "{args:?} failed: {err}");
    (out, err)
}

/// Fails with exactly one `error: ` line on stderr; returns it.
fn fails_with(c: Command, args: &[&str], stdin: &str) -> String {
    let (success, _, err) = run_with(c, args, stdin);
    assert!(!success, "{args:?} succeeded");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    errors[0].to_string()
}

fn fails(args: &[&str]) -> String {
    fails_with(enigma(), args, "")
}

#[test]
fn run_streams_a_completion_after_the_prompt() {
    let s = good_server();
    let (out, err) = ok(&[
        "run", "--remote", &s.url, "-p", "Once", "-n", "5", "--temp", "0", "-s", "7",
    ]);
    assert_eq!(out, "Once upon a time\n");
    assert!(
        err.contains("2 pieces") && err.contains("from story at"),
        "{err}"
    );
    let reqs = s.requests();
    // No -m: the first model the server lists.
    assert_eq!(reqs[0].path, "/v1/models");
    let body = reqs[1].json();
    assert_eq!(reqs[1].path, "/v1/completions");
    assert_eq!(body["model"], "story");
    assert_eq!(body["prompt"], "Once");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 5);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["top_k"], 40);
    assert!(reqs.iter().all(|r| r.header("authorization").is_none()));
}

#[test]
fn the_model_flag_is_sent_as_is_and_the_api_key_as_a_bearer_token() {
    let s = good_server();
    let (out, err) = ok(&[
        "run",
        "--remote",
        &s.url,
        "-m",
        "other",
        "-p",
        "x",
        "--api-key",
        "sk-secret-1",
    ]);
    assert!(!out.contains("sk-secret") && !err.contains("sk-secret"));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 1, "-m given: no model list asked for");
    assert_eq!(reqs[0].json()["model"], "other");
    assert_eq!(reqs[0].header("authorization"), Some("Bearer sk-secret-1"));
    // From the environment when no flag names one.
    let mut c = enigma();
    c.env("ENIGMA_API_KEY", "sk-from-env");
    let (success, _, _) = run_with(c, &["run", "--remote", &s.url, "-m", "m", "-p", "x"], "");
    assert!(success);
    assert_eq!(
        s.requests()[1].header("authorization"),
        Some("Bearer sk-from-env")
    );
}

#[test]
fn a_server_without_completions_is_asked_through_chat() {
    // Ollama-style base URL with /v1, which the client folds.
    let s = serve(|req| match req.path.as_str() {
        "/v1/completions" => error_answer("404 Not Found", "not found"),
        "/v1/chat/completions" => sse(&[
            chat_chunk(json!({"role": "assistant", "content": "Hi!"}), Some("stop")),
            done(),
        ]),
        _ => models(),
    });
    let url = format!("{}/v1/", s.url);
    let (out, err) = ok(&["run", "--remote", &url, "-m", "story", "-p", "Say hi"]);
    assert_eq!(out, "Hi!\n");
    assert!(err.contains("no /v1/completions"), "{err}");
    let reqs = s.requests();
    assert_eq!(reqs[1].path, "/v1/chat/completions");
    assert_eq!(
        reqs[1].json()["messages"],
        json!([{"role": "user", "content": "Say hi"}])
    );
}

#[test]
fn chat_keeps_the_conversation_and_sends_it_whole() {
    let s = good_server();
    let (success, out, err) = run_with(
        enigma(),
        &["chat", "--remote", &s.url, "--system", "Be brief."],
        "hello\n/help\n\nsecond\n/reset\nthird\n/quit\nnever sent\n",
    );
    assert!(success, "{err}");
    assert_eq!(
        out,
        "Hello (2 messages)\nHello (4 messages)\nHello (2 messages)\n"
    );
    assert!(err.contains("chatting with story"), "{err}");
    let chats: Vec<Value> = s
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| r.json()["messages"].clone())
        .collect();
    assert_eq!(chats.len(), 3);
    assert_eq!(
        chats[1],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hello (2 messages)"},
            {"role": "user", "content": "second"}
        ])
    );
    assert_eq!(chats[2][1], json!({"role": "user", "content": "third"}));
}

#[test]
fn http_errors_are_one_line_with_the_servers_message() {
    let s = serve(|req| match req.header("authorization") {
        Some("Bearer right") => error_answer("400 Bad Request", "temperature must be <= 2"),
        _ => error_answer("401 Unauthorized", "Invalid API key"),
    });
    let with_key = |key: &str, more: &[&str]| {
        let mut args = vec!["run", "--remote", &s.url, "-m", "m", "--api-key", key];
        args.extend(more);
        fails(&args)
    };
    let e = with_key("wrong", &[]);
    assert!(
        e.contains("HTTP 401") && e.contains("Invalid API key"),
        "{e}"
    );
    assert!(!e.contains("wrong"), "the key is never shown: {e}");
    let e = with_key("right", &["--temp", "3"]);
    assert!(
        e.contains("HTTP 400") && e.contains("temperature must be <= 2"),
        "{e}"
    );
    let e = fails(&["chat", "--remote", &s.url, "--api-key", "wrong"]);
    assert!(e.contains("/v1/models: HTTP 401"), "{e}");
}

#[test]
fn a_stream_cut_mid_way_is_an_error_after_the_text_that_came() {
    // Close-delimited: the body just ends, without [DONE] or a finish_reason.
    let s = serve(|_| {
        let mut b =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                .to_vec();
        b.extend(text_chunk(" upon", None).into_bytes());
        b.extend(b"data: {\"choices\":[{\"te");
        Answer::Bytes(b)
    });
    let (success, out, err) = run_with(
        enigma(),
        &["run", "--remote", &s.url, "-m", "m", "-p", "Once"],
        "",
    );
    assert!(!success);
    assert!(out.starts_with("Once upon"), "{out}");
    let e: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(e.len(), 1, "{err}");
    assert!(e[0].contains("not JSON") || e[0].contains("cut"), "{err}");

    // Chunked: the connection drops inside a chunk.
    let s = serve(|_| {
        let mut b = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let c = text_chunk(" upon", None);
        b.extend(format!("{:x}\r\n{c}\r\n", c.len()).into_bytes());
        b.extend(b"100\r\ndata: {\"cho");
        Answer::Bytes(b)
    });
    let e = fails(&["run", "--remote", &s.url, "-m", "m", "-p", "Once"]);
    assert!(e.contains("stream was cut"), "{e}");

    // A clean close after whole events, but no end of reply.
    let s = serve(|_| sse(&[text_chunk(" upon", None)]));
    let e = fails(&["run", "--remote", &s.url, "-m", "m", "-p", "Once"]);
    assert!(
        e.contains("stream was cut") && e.contains("no [DONE]"),
        "{e}"
    );
}

#[test]
fn errors_inside_a_stream_are_reported() {
    let s = serve(|_| {
        sse(&[
            text_chunk(" a", None),
            "data: {\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}\n\n"
                .into(),
        ])
    });
    let e = fails(&["run", "--remote", &s.url, "-m", "m", "-p", "x"]);
    assert!(e.contains("out of memory"), "{e}");
}

#[test]
fn a_refused_connection_is_one_line() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let e = fails(&["run", "--remote", &url, "-p", "x"]);
    assert!(e.contains("cannot reach") && e.contains("refused"), "{e}");
    let e = fails(&["modules", "list", "--remote", &url]);
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let s = serve(|_| Answer::Hang);
    let mut c = enigma();
    c.env("ENIGMA_REMOTE_TIMEOUT", "1");
    let e = fails_with(c, &["run", "--remote", &s.url, "-m", "m", "-p", "x"], "");
    assert!(e.contains("no answer within 1 s"), "{e}");
}

#[test]
fn bad_json_and_bad_urls_are_one_line() {
    let s = serve(|_| {
        Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\nnot json".to_vec())
    });
    let e = fails(&["run", "--remote", &s.url, "-p", "x"]);
    assert!(e.contains("not JSON"), "{e}");
    let e = fails(&["run", "--remote", "localhost:8080", "-p", "x"]);
    assert!(e.contains("not a server URL"), "{e}");
    let e = fails(&["run", "--remote", "https://example.invalid", "-p", "x"]);
    assert!(e.contains("https needs enigma built with TLS"), "{e}");
}

/// A server with the engine's module routes, answering as the contract says.
fn modules_server() -> Fake {
    serve(|req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/modules") => json_answer(
            "200 OK",
            &json!({"modules": [
                {"id": "model", "category": "core", "state": "loaded", "provides": ["language_model"],
                 "cloud": false, "note": "story (2 MiB)", "status": "story (2 MiB)"},
                {"id": "chat_api", "category": "addons", "state": "unloaded", "capabilities": ["text_generation"],
                 "cloud": true, "note": "can load"}
            ]}),
        ),
        ("POST", "/v1/modules/model/load") => json_answer(
            "200 OK",
            &json!({"loaded": [{"id": "model", "status": "story (2 MiB)"}]}),
        ),
        ("POST", "/v1/modules/model/unload") => {
            json_answer("200 OK", &json!({"unloaded": ["model"]}))
        }
        ("POST", _) => error_answer("400 Bad Request", "unknown module nope"),
        _ => error_answer("404 Not Found", "no route"),
    })
}

#[test]
fn modules_are_driven_on_the_server() {
    let s = modules_server();
    let (out, _) = ok(&["modules", "list", "--remote", &s.url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["id"], "model");
    let (out, _) = ok(&["modules", "list", "--remote", &s.url]);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("text_generation (cloud)"), "{out}");
    assert!(out.contains("2 modules on http://127.0.0.1:"), "{out}");
    let (out, _) = ok(&[
        "modules",
        "load",
        "model",
        "--set",
        "model=story",
        "--remote",
        &s.url,
    ]);
    assert!(
        out.starts_with("loaded model on ") && out.contains(": story (2 MiB)"),
        "{out}"
    );
    let (out, _) = ok(&[
        "modules",
        "unload",
        "model",
        "--cascade",
        "--remote",
        &s.url,
    ]);
    assert!(out.starts_with("unloaded model on "), "{out}");
    let (out, _) = ok(&["modules", "status", "--remote", &s.url]);
    assert_eq!(out, "model: loaded: story (2 MiB)\n");
    let (out, _) = ok(&["modules", "status", "--remote", &s.url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["modules"].as_array().unwrap().len(), 1);
    let reqs = s.requests();
    let load = reqs.iter().find(|r| r.path.ends_with("/load")).unwrap();
    assert_eq!(
        load.json(),
        json!({"with_deps": false, "config": {"model": "story"}})
    );
    let unload = reqs.iter().find(|r| r.path.ends_with("/unload")).unwrap();
    assert_eq!(unload.json(), json!({"cascade": true}));
    assert_eq!(load.header("content-type"), Some("application/json"));
    let e = fails(&["modules", "load", "nope", "--remote", &s.url]);
    assert!(e.contains("HTTP 400: unknown module nope"), "{e}");
    let e = fails(&["modules", "status", "--check", "--remote", &s.url]);
    assert!(e.contains("--check"), "{e}");
}
