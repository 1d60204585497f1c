//! `enigma serve` end to end: the built binary on an ephemeral loopback port, driven by raw HTTP and by the
//! official `openai` and `ollama` Python clients (tests/serve/clients.py).
//!
//! Models: stories260K from ../shared for the clients (greedy output compared with `enigma run`); the
//! built-in model for errors and limits; a random `mini` model run on the scalar kernels where a test
//! needs a generation that lasts seconds (a full queue, a client that goes away).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn enigma() -> PathBuf {
    assert_cmd::cargo::cargo_bin("enigma")
}

/// A running `enigma serve`; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _home: Option<TempDir>,
}

impl Server {
    /// Starts `enigma serve --port 0 ARGS` over `home` and waits until `/health` says it is ready.
    fn start(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(enigma());
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("ENIGMA_HOME", home)
            .env_remove("ENIGMA_API_KEY")
            .env_remove("ENIGMA_SIMULATE_HARDWARE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start enigma serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read the listening line");
        // Whatever else it prints is read too: a closed pipe would fail the server's next print.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no listening line: {line:?}; stderr: {}",
                    stderr.lock().unwrap()
                )
            });
        let addr: SocketAddr = url.parse().expect("address");
        let s = Server {
            child,
            addr,
            stderr,
            _home: None,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = s.try_request("GET", "/health", &[], b"") {
                if r.status == 200 {
                    break;
                }
                assert_eq!(r.status, 503, "{}", r.body);
            }
            assert!(Instant::now() < deadline, "not ready: {}", s.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// A server over a home of its own.
    fn fresh(args: &[&str], env: &[(&str, &str)]) -> Server {
        let home = TempDir::new().unwrap();
        let mut s = Server::start(home.path(), args, env);
        s._home = Some(home);
        s
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `tests/serve/SCRIPT BASE_URL ARGS...` (the official Python clients against this server) and
    /// returns the JSON it prints; a failing script fails the test with its output and the server's log.
    fn client_script(&self, script: &str, args: &[&str]) -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/serve")
            .join(script);
        let out = Command::new("python3")
            .arg(&path)
            .arg(self.base())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script} failed:\n{}\n{}\nserver: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script}'s JSON: {e}"))
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut s = self.send(method, path, headers, body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(Resp::parse(&raw))
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; stderr: {}", self.stderr()))
    }

    fn post(&self, path: &str, body: &str) -> Resp {
        self.request("POST", path, &[], body.as_bytes())
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// Sends a request and hands back the open connection, for reading a stream (or dropping it).
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        Ok(s)
    }

    /// A gauge of `/metrics`.
    fn gauge(&self, name: &str) -> f64 {
        let m = self.get("/metrics").body;
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    }

    /// Waits up to `limit` for no generation to be running; how long it took.
    /// Waits for one generation to run. Polled, not a fixed sleep: on a loaded machine a request can take
    /// longer than any fixed wait to reach the engine (what the tests assert is the time to free it).
    fn wait_running(&self) {
        let t = Instant::now();
        while self.gauge("enigma_generations_running") != 1.0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the request never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_idle(&self, limit: Duration) -> Duration {
        let t = Instant::now();
        while self.gauge("enigma_generations_running") != 0.0
            || self.gauge("enigma_sequences_active") != 0.0
        {
            assert!(
                t.elapsed() < limit,
                "a generation still runs after {limit:?}: {}",
                self.get("/metrics").body
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn parse(raw: &[u8]) -> Resp {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Resp {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// An OpenAI-shaped error with this status, naming `param`; returns its message.
    fn openai_error(&self, status: u16, param: Option<&str>) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert_eq!(e["param"].as_str(), param, "{v}");
        assert!(e.get("code").is_some(), "{v}");
        e["message"].as_str().unwrap_or_default().to_string()
    }
}

/// stories260K imported into a home of its own as `stories260K`.
fn stories_home(test: &str) -> Option<TempDir> {
    let ckpt = enigma_testkit::shared_bytes("models/stories260K.bin", test)?;
    let tok = enigma_testkit::shared_bytes("models/tok512.bin", test)?;
    let bytes = enigma_models::llama2c::import(&ckpt, &tok, "stories260K.bin").expect("import");
    let home = TempDir::new().unwrap();
    std::fs::write(home.path().join("stories260K.enigma"), bytes).unwrap();
    Some(home)
}

/// A random-weight `mini` model (10M parameters, 512 tokens of context, a byte tokenizer), made once per
/// build and shared by the tests here: run on the scalar kernels on one thread it decodes at about a
/// hundred tokens a second, so a generation lasts long enough to be interrupted.
fn mini() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-mini");
    let model = dir.join("mini");
    if model.is_dir() {
        return model;
    }
    // Made aside and renamed into place, so tests in other processes never see half a model.
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = TempDir::new_in(&dir).unwrap();
    let out = Command::new(enigma())
        .args([
            "models", "create", "mini", "--preset", "mini", "--seed", "1",
        ])
        .env("ENIGMA_HOME", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::rename(tmp.path().join("mini"), &model);
    model
}

const SLOW: [(&str, &str); 1] = [("ENIGMA_KERNELS", "generic")];

fn slow_server(extra: &[&str]) -> Server {
    let model = mini();
    let mut args = vec!["-m", model.to_str().unwrap(), "-t", "1"];
    args.extend_from_slice(extra);
    Server::fresh(&args, &SLOW)
}

fn python_clients(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, ollama"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        enigma_testkit::skip_or_fail(
            test,
            "the openai and ollama Python clients are not installed (pip install openai ollama; .ci/run installs them)",
        );
    }
    ok
}

#[test]
fn the_official_clients_chat_complete_stream_and_match_enigma_run() {
    let test = "the_official_clients_chat_complete_stream_and_match_enigma_run";
    let Some(home) = stories_home(test) else {
        return;
    };
    if !python_clients(test) {
        return;
    }
    let server = Server::start(home.path(), &["-m", "stories260K"], &[]);
    let prompt = "Once upon a time";
    let v = server.client_script("clients.py", &["stories260K", prompt, "40"]);
    let completion = v["completion"].as_str().unwrap();
    assert!(!completion.is_empty(), "{v}");
    // `enigma run` prints the prompt, then the text, then a newline.
    let run = Command::new(enigma())
        .args([
            "run",
            "-m",
            "stories260K",
            "-p",
            prompt,
            "--temp",
            "0",
            "-n",
            "40",
        ])
        .env("ENIGMA_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("{prompt}{completion}\n")
    );
    assert_eq!(v["completion_usage"]["completion_tokens"], 40, "{v}");
    // The batching engine's prompt cache: the second chat turn starts with the first turn's blocks.
    assert!(v["second_turn_cached"].as_u64() >= Some(16), "{v}");
    // Log-probabilities of every one of the 4 tokens asked for.
    assert_eq!(v["logprobs_given"], 4, "{v}");
    server.wait_idle(Duration::from_secs(1));
}

#[test]
fn bad_requests_are_400s_naming_the_field_and_the_server_serves_on() {
    let server = Server::fresh(&["-m", "default"], &[]);
    let long = "word ".repeat(3000);
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "/v1/completions",
            r#"{"prompt": "x", "model": "gpt-4"}"#.into(),
            Some("model"),
        ),
        (
            "/v1/completions",
            format!(r#"{{"prompt": "{long}"}}"#),
            Some("prompt"),
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"messages": [{{"role": "user", "content": "{long}"}}]}}"#),
            Some("messages"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": "#.into(),
            None,
        ),
        ("/v1/completions", r#"{"prompt": 7}"#.into(), Some("prompt")),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": "hot"}"#.into(),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": 2.5}"#.into(),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "top_p": 1.5}"#.into(),
            Some("top_p"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 0}"#.into(),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "n": 2}"#.into(),
            Some("n"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "presence_penalty": 0.5}"#.into(),
            Some("presence_penalty"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "frequency_penalty": -1}"#.into(),
            Some("frequency_penalty"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "stop": ["a","b","c","d","e"]}"#.into(),
            Some("stop"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "logprobs": 6}"#.into(),
            Some("logprobs"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#.into(),
            Some("top_logprobs"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "tool", "content": "x"}]}"#.into(),
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": "hi"}"#.into(),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#.into(),
            Some("stream"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}"#
                .into(),
            Some("tools"),
        ),
        ("/v1/completions", r#"[1, 2]"#.into(), None),
        ("/tokenize", r#"{"content": 5}"#.into(), Some("content")),
        (
            "/detokenize",
            r#"{"tokens": [1, 99999]}"#.into(),
            Some("tokens"),
        ),
    ];
    for (path, body, param) in &cases {
        let r = server.post(path, body);
        let m = r.openai_error(400, *param);
        assert!(!m.is_empty(), "{path} {body}");
        // Still serving.
        let ok = server.post(
            "/v1/completions",
            r#"{"prompt": "In the beginning", "max_tokens": 3}"#,
        );
        assert_eq!(ok.status, 200, "after {path} {body}: {}", ok.body);
    }
    // The too-long prompt says so, rather than being cut.
    let m = server
        .post("/v1/completions", &format!(r#"{{"prompt": "{long}"}}"#))
        .openai_error(400, Some("prompt"));
    assert!(m.contains("context"), "{m}");
    // Ollama's routes answer in Ollama's shape: {"error": "..."}.
    for body in [
        r#"{"prompt": "x", "options": {"temperature": "hot"}}"#,
        r#"{"prompt": "x", "model": "llama3"}"#,
        r#"{"prompt": "x", "options": {"num_predict": 0}}"#,
        r#"{"prompt": "x", "system": "be nice"}"#,
    ] {
        let r = server.post("/api/generate", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    // An unknown route and a wrong method are OpenAI-shaped too.
    server.get("/v1/nothing").openai_error(404, None);
    assert_eq!(server.get("/v1/completions").status, 405);
    // No embeddings module: 501 naming what to load.
    let m = server
        .post("/v1/embeddings", r#"{"input": "x"}"#)
        .openai_error(501, None);
    assert!(m.contains("embedding_local"), "{m}");
    let r = server.post("/api/embed", r#"{"input": "x"}"#);
    assert_eq!(r.status, 501, "{}", r.body);
    // max_tokens past the context is clipped to what is left of it, and says `length`.
    let prompt = "word ".repeat(250);
    let r = server.post(
        "/v1/completions",
        &format!(r#"{{"prompt": "{prompt}", "max_tokens": 100000, "temperature": 0}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let u = &v["usage"];
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(u["total_tokens"], 512, "{v}");
    // Every answer was counted.
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("enigma_requests_total{route=\"/v1/completions\",status=\"400\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("enigma_generated_tokens_total"),
        "{metrics}"
    );
}

#[test]
fn api_keys_body_limits_and_the_open_health_route() {
    let server = Server::fresh(
        &[
            "-m",
            "default",
            "--api-key",
            "s3cret",
            "--max-body",
            "65536",
        ],
        &[],
    );
    let body = br#"{"prompt": "x", "max_tokens": 2}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-Api-Key", "s3cre")],
    ] {
        server
            .request("POST", "/v1/completions", &headers, body)
            .openai_error(401, None);
    }
    assert_eq!(server.request("GET", "/metrics", &[], b"").status, 401);
    let r = server.request("POST", "/api/generate", &[], br#"{"prompt": "x"}"#);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    for h in [("Authorization", "Bearer s3cret"), ("X-Api-Key", "s3cret")] {
        let r = server.request("POST", "/v1/completions", &[h], body);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(server.get("/health").status, 200);
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(100_000));
    server
        .request(
            "POST",
            "/v1/completions",
            &[("X-Api-Key", "s3cret")],
            big.as_bytes(),
        )
        .openai_error(413, None);
    assert_eq!(
        server
            .request("POST", "/v1/completions", &[("X-Api-Key", "s3cret")], body)
            .status,
        200
    );
    assert!(!server.stderr().contains("warning"), "{}", server.stderr());
}

#[test]
fn binding_beyond_loopback_without_a_key_warns() {
    let server = Server::fresh(&["-m", "default", "--host", "0.0.0.0"], &[]);
    assert!(
        server.stderr().contains("warning: listening on 0.0.0.0"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_full_queue_is_a_503_with_retry_after() {
    let server = slow_server(&["--max-queue", "1"]);
    let mut long = server
        .send(
            "POST",
            "/v1/completions",
            &[],
            br#"{"prompt": "a", "max_tokens": 400, "stream": true, "temperature": 0}"#,
        )
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(long.read(&mut buf).unwrap() > 0);
    for (path, body) in [
        ("/v1/completions", r#"{"prompt": "b", "max_tokens": 2}"#),
        ("/api/generate", r#"{"prompt": "b", "stream": false}"#),
    ] {
        let r = server.post(path, body);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{}", r.head);
    }
    drop(long);
    server.wait_idle(Duration::from_secs(1));
    assert_eq!(
        server
            .post("/v1/completions", r#"{"prompt": "b", "max_tokens": 2}"#)
            .status,
        200
    );
}

#[test]
fn a_client_that_goes_away_mid_stream_frees_its_sequence_within_a_second() {
    let server = slow_server(&[]);
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 400, "stream": true, "temperature": 0}"#,
        ),
        (
            "/api/generate",
            r#"{"prompt": "a", "options": {"num_predict": 400, "temperature": 0}}"#,
        ),
        // Not streamed: the client leaves while the server is still collecting the reply.
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 400, "temperature": 0}"#,
        ),
    ] {
        let mut s = server.send("POST", path, &[], body.as_bytes()).unwrap();
        if body.contains("stream\": true") || path == "/api/generate" {
            let mut buf = [0u8; 512];
            assert!(s.read(&mut buf).unwrap() > 0);
        } else {
            server.wait_running();
        }
        assert_eq!(server.gauge("enigma_generations_running"), 1.0, "{path}");
        drop(s);
        let took = server.wait_idle(Duration::from_secs(1));
        eprintln!("{path}: freed {took:?} after the client left");
    }
}

#[test]
fn a_client_that_goes_away_mid_prefill_frees_its_sequence_within_a_second() {
    // A cancel takes effect between steps: with the generic kernels a step of 64 prompt tokens took 0.9 s
    // here, so steps of 8 leave the second to the server's reaction, not to the step's length.
    let server = slow_server(&["--prefill-chunk", "8"]);
    let prompt = "a".repeat(500);
    let body = format!(r#"{{"prompt": "{prompt}", "max_tokens": 4, "stream": true}}"#);
    let s = server
        .send("POST", "/v1/completions", &[], body.as_bytes())
        .unwrap();
    server.wait_running();
    drop(s);
    server.wait_idle(Duration::from_secs(1));
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_streams_under_way_and_exits_zero() {
    let mut server = slow_server(&[]);
    let mut s = server
        .send(
            "POST",
            "/v1/completions",
            &[],
            br#"{"prompt": "a", "max_tokens": 40, "stream": true, "temperature": 0}"#,
        )
        .unwrap();
    let mut first = [0u8; 64];
    assert!(s.read(&mut first).unwrap() > 0);
    // An open event stream never ends by itself: shutdown must end it.
    let mut events = server.send("GET", "/v1/modules/events", &[], b"").unwrap();
    assert!(events.read(&mut first).unwrap() > 0);
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn module_routes_follow_the_cli_rules_and_publish_events() {
    let server = Server::fresh(&["-m", "default"], &[]);
    let v = server.get("/v1/modules").json();
    let list = v["modules"].as_array().unwrap();
    assert_eq!(list.len(), 29, "{v}");
    let inference = list.iter().find(|m| m["id"] == "inference").unwrap();
    assert_eq!(inference["state"], "loaded", "{v}");
    let m = server
        .post("/v1/modules/nope/load", "{}")
        .openai_error(404, None);
    assert_eq!(m, "no module named 'nope' (see `enigma modules list`)");
    let m = server
        .post("/v1/modules/model/unload", "{}")
        .openai_error(409, None);
    assert!(m.contains("is needed by"), "{m}");
    server
        .post("/v1/modules/model/load", r#"{"config": {"threads": []}}"#)
        .openai_error(400, Some("config.threads"));
    // Events of a load and an unload, as server-sent events.
    let mut events = server.send("GET", "/v1/modules/events", &[], b"").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(": subscribed") {
        let n = events.read(&mut buf).unwrap();
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    let r = server.post("/v1/modules/code_gen_local/load", r#"{"with_deps": true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["loaded"][0]["id"], "code_gen_local");
    let r = server.post("/v1/modules/code_gen_local/unload", "");
    assert_eq!(r.status, 200, "{}", r.body);
    while !seen.contains(r#""event":"unloaded","id":"code_gen_local""#) {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(
        seen.contains(r#""event":"loaded","id":"code_gen_local""#),
        "{seen}"
    );
    // Generation still works.
    assert_eq!(
        server
            .post("/api/chat", r#"{"messages": [{"role": "user", "content": "x"}], "stream": false, "options": {"num_predict": 2}}"#)
            .status,
        200
    );
}

/// The `api_server` module's address, from its status line (`listening on http://ADDR`).
fn module_listener(server: &Server) -> SocketAddr {
    let v = server.get("/v1/modules").json();
    let api = v["modules"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["id"] == "api_server"))
        .cloned()
        .unwrap_or_else(|| panic!("no api_server: {v}"));
    assert_eq!(api["state"], "loaded", "{api}");
    let text = api.to_string();
    let start = text
        .find("listening on http://")
        .expect("a listening status")
        + 20;
    let end = text[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':'))
        .map_or(text.len(), |e| start + e);
    text[start..end].parse().expect("an address")
}

fn health_at(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect to the module's listener");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    Resp::parse(&raw).status
}

#[test]
fn api_server_loads_beside_the_server_and_comes_back_at_the_next_start() {
    let home = TempDir::new().unwrap();
    let server = Server::start(home.path(), &["-m", "default"], &[]);
    // `enigma modules ... --remote` drives the server's module routes.
    let cli = |args: &[&str]| {
        let out = Command::new(enigma())
            .args(args)
            .args(["--remote", &server.base()])
            .env_remove("ENIGMA_API_KEY")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let out = cli(&[
        "modules",
        "load",
        "api_server",
        "--set",
        "host=127.0.0.1",
        "--set",
        "port=0",
    ]);
    assert!(
        out.starts_with(&format!(
            "loaded api_server on {}: listening on http://127.0.0.1:",
            server.base()
        )),
        "{out}"
    );
    let addr = module_listener(&server);
    assert_ne!(addr, server.addr);
    assert_eq!(health_at(addr), 200);
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&["modules", "list", "--json"])).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "api_server" && m["state"] == "loaded"),
        "{listed}"
    );
    // Through the server's own listener (not the module's), the unload stops it and frees the port.
    let out = cli(&["modules", "unload", "api_server"]);
    assert!(out.starts_with("unloaded api_server on "), "{out}");
    drop(std::net::TcpListener::bind(addr).expect("the port is free after the unload"));
    // Wanted in modules.json, it comes back when the next server restores the saved modules.
    let r = server.post(
        "/v1/modules/api_server/load",
        r#"{"config": {"host": "127.0.0.1", "port": 0}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(server);
    let server = Server::start(home.path(), &[], &[]);
    let addr = module_listener(&server);
    assert_eq!(health_at(addr), 200);
}

#[test]
fn tokenize_pieces_add_up_to_the_detokenized_text() {
    let server = Server::fresh(&["-m", "default"], &[]);
    let text = "In the beginning God created the heaven";
    let v = server
        .post(
            "/tokenize",
            &format!(r#"{{"content": "{text}", "with_pieces": true}}"#),
        )
        .json();
    let tokens = v["tokens"].as_array().unwrap();
    assert!(tokens.len() > 3, "{v}");
    let pieces: String = tokens
        .iter()
        .map(|t| t["piece"].as_str().unwrap())
        .collect();
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let back = server
        .post(
            "/detokenize",
            &serde_json::json!({ "tokens": ids }).to_string(),
        )
        .json();
    assert_eq!(back["content"].as_str().unwrap(), pieces);
    assert!(pieces.contains(text), "{pieces}");
    let plain = server
        .post(
            "/tokenize",
            &format!(r#"{{"content": "{text}", "add_special": true}}"#),
        )
        .json();
    assert_eq!(
        plain["tokens"].as_array().unwrap().len(),
        ids.len() + 1,
        "{plain}"
    );
}

#[test]
fn a_model_that_does_not_load_stops_the_server_with_one_error_line() {
    let home = TempDir::new().unwrap();
    let out = Command::new(enigma())
        .args(["serve", "--port", "0", "-m", "no-such-model"])
        .env("ENIGMA_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("no model named 'no-such-model'"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `enigma chat -m MODEL --system SYSTEM --verbose-prompt`, greedy, with `lines` typed: each turn's prompt
/// ids (the whole conversation as the template lays it out) and stdout.
fn cli_chat(
    model: &Path,
    system: &str,
    lines: &[&str],
    n: usize,
    banner: &str,
) -> (Vec<Vec<u32>>, String) {
    let mut input = lines.join("\n");
    input.push_str("\n/quit\n");
    let out = assert_cmd::Command::new(enigma())
        .arg("chat")
        .arg("-m")
        .arg(model)
        .args(["--system", system, "--verbose-prompt", "--temp", "0"])
        .args(["-n", &n.to_string(), "--threads", "1"])
        .write_stdin(input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(banner), "{stderr}");
    (prompt_ids(&stderr), String::from_utf8(out.stdout).unwrap())
}

/// Each turn's prompt ids that `enigma chat --verbose-prompt` wrote to stderr.
fn prompt_ids(stderr: &str) -> Vec<Vec<u32>> {
    stderr
        .lines()
        // After the "> " that asks for the line.
        .filter_map(|l| l.split_once("prompt ids: "))
        .map(|(_, ids)| serde_json::from_str(ids).unwrap())
        .collect()
}

const TEMPLATED: &str = "a chat model prompted with the model's own chat template";

#[test]
fn a_gguf_with_a_chat_template_chats_alike_in_enigma_chat_and_the_served_gguf_loader() {
    let test = "a_gguf_with_a_chat_template_chats_alike_in_enigma_chat_and_the_served_gguf_loader";
    let dir = TempDir::new().unwrap();
    let Some(gguf) = support::templated_gguf(dir.path(), test, support::TEMPLATE) else {
        return;
    };
    // gguf_loader is wanted in the home's modules.json, and `enigma serve` restores it.
    let home = TempDir::new().unwrap();
    let load = Command::new(enigma())
        .args(["modules", "load", "gguf_loader", "--set"])
        .arg(format!("path={}", gguf.display()))
        .env("ENIGMA_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let server = Server::start(home.path(), &[], &[]);
    assert_eq!(
        server.get("/health").json()["text_generation"],
        "gguf_loader"
    );

    // A completion through the served file is `enigma run -m FILE.gguf`'s.
    let prompt = "Once upon a time";
    let r = server.post(
        "/v1/completions",
        &serde_json::json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    let run = support::greedy_run(&gguf, prompt, 24);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("{prompt}{text}\n")
    );

    // A conversation: `enigma chat` and the server prompt with the same ids and reply alike.
    let system = "You tell short stories.";
    let (u1, u2) = ("Tell me about a cat.", "What did the cat eat?");
    let chat = |messages: &serde_json::Value| {
        let r = server.post(
            "/v1/chat/completions",
            &serde_json::json!({"messages": messages, "max_tokens": 16, "temperature": 0})
                .to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let tokenize = |messages: &serde_json::Value| -> Vec<u32> {
        let r = server.post(
            "/tokenize",
            &serde_json::json!({ "messages": messages }).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_value(r.json()["tokens"].clone()).unwrap()
    };
    let first = serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": u1},
    ]);
    let (prompts, stdout) = cli_chat(&gguf, system, &[u1], 16, TEMPLATED);
    let served = tokenize(&first);
    assert_eq!(prompts, std::slice::from_ref(&served));
    // BOS once (the template writes `<s>` itself), then the system line as text.
    assert_eq!(
        served.iter().filter(|&&id| id == 1).count(),
        1,
        "{served:?}"
    );
    assert_eq!(served[0], 1);
    let reply = chat(&first);
    assert_eq!(stdout, format!("{reply}\n"));

    let second = serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": u1},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": u2},
    ]);
    let (prompts, _) = cli_chat(&gguf, system, &[u1, u2], 16, TEMPLATED);
    let served = tokenize(&second);
    assert_eq!(prompts.len(), 2);
    assert_eq!(prompts[1], served);
    // The assistant's turn ends with `</s>`, the single EOS id, not its letters.
    assert!(served.contains(&2), "{served:?}");
    // A conversation the template refuses (its `raise_exception`) is the caller's error, said as such.
    let r = server.post(
        "/v1/chat/completions",
        &serde_json::json!({"messages": [{"role": "assistant", "content": "Hi"}]}).to_string(),
    );
    let message = r.openai_error(400, Some("messages"));
    assert!(
        message
            .contains("the model's chat template refuses this conversation: the user speaks first"),
        "{message}"
    );
    server.wait_idle(Duration::from_secs(1));
}

#[test]
fn a_completion_model_gets_the_same_plain_lines_from_enigma_chat_and_the_server() {
    let server = Server::fresh(&["-m", "default"], &[]);
    let system = "In the beginning";
    let (prompts, _) = cli_chat(
        Path::new("default"),
        system,
        &["God created"],
        8,
        "is a completion model",
    );
    assert_eq!(prompts.len(), 1);
    let messages = serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "God created"},
    ]);
    let r = server.post(
        "/tokenize",
        &serde_json::json!({ "messages": messages }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let served: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).unwrap();
    assert_eq!(prompts[0], served);
    // The same ids as the text of the lines, BOS first: the documented plain layout.
    let r = server.post(
        "/tokenize",
        &serde_json::json!({"content": format!("{system}\nGod created\n"), "add_special": true})
            .to_string(),
    );
    assert_eq!(r.json()["tokens"], serde_json::json!(served));
}

/// A ChatML model (`<|im_start|>`/`<|im_end|>` control tokens, EOS `</s>`) whose every step gives `a` and
/// `<|im_end|>` the same logit and every other token 16 less: sampled, a reply is some `a`s and then the
/// template's end of turn, never EOS (the weights are zero but for the embedding, the norms and those two
/// classifier rows, so the residual stream is the embedding at every position).
fn chatml_model(dir: &Path) -> PathBuf {
    use enigma_core::config::{Config, ParamLayout, CLASSIFIER, TOKEN_EMBEDDING};
    const A: usize = 3 + 256 + 1;
    const IM_END: usize = A + 2;
    let c = Config {
        dim: 16,
        hidden_dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: IM_END as u32 + 1,
        seq_len: 256,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: false,
    };
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    for p in [" ", "a", "<|im_start|>", "<|im_end|>"] {
        pieces.push(p.as_bytes().to_vec());
    }
    // Control pieces score below the merge floor, as a GGUF file's control tokens are imported.
    let mut scores = vec![0.0; pieces.len()];
    scores[IM_END - 1] = -1e10;
    scores[IM_END] = -1e10;
    let tok = enigma_runtime::TokenizerData {
        pieces,
        scores,
        bos: 1,
        eos: 2,
        pad: None,
        add_dummy_prefix: false,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    };
    let layout = ParamLayout::new(&c);
    let mut params = vec![0.0f32; layout.total_numel() as usize];
    for spec in layout.iter() {
        let at = layout.flat_offset(spec.name).unwrap() as usize;
        let span = &mut params[at..at + spec.numel() as usize];
        if spec.is_norm() || spec.name == TOKEN_EMBEDDING {
            span.fill(1.0);
        } else if spec.name == CLASSIFIER {
            let d = c.dim as usize;
            span[A * d..(A + 1) * d].fill(1.0);
            span[IM_END * d..(IM_END + 1) * d].fill(1.0);
        }
    }
    let mut w = enigma_runtime::ModelWriter::new(c, tok);
    w.provenance("test:chatml", "");
    w.f32_params(&params).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    w.tensor(
        enigma_models::gguf::KEEP_TEMPLATE,
        enigma_core::kernels::DType::U8,
        &[template.len() as u64],
        template.as_bytes().to_vec(),
    );
    let path = dir.join("chatml.enigma");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    path
}

/// A reply of the ChatML model: only `a`s, ended by `<|im_end|>` before the token limit, whose letters
/// never reach the text.
fn assert_ended_by_im_end(reply: &str, limit: usize) {
    assert!(reply.chars().all(|c| c == 'a'), "{reply:?}");
    assert!(reply.len() < limit, "ran to the limit: {reply:?}");
}

#[test]
fn a_chatml_reply_ends_at_im_end_in_enigma_chat_and_the_server() {
    let dir = TempDir::new().unwrap();
    let model = chatml_model(dir.path());
    const LIMIT: usize = 48;

    // `enigma chat`, two turns: each reply stops at `<|im_end|>`, and the second prompt closes the
    // assistant's first turn with the `<|im_end|>` id (262) the template writes.
    let out = assert_cmd::Command::new(enigma())
        .arg("chat")
        .arg("-m")
        .arg(&model)
        .args(["--verbose-prompt", "--temp", "1", "-s", "5", "-t", "1"])
        .args(["-n", &LIMIT.to_string()])
        .write_stdin("hi\nhello\n/quit\n")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(TEMPLATED), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 2, "{stdout:?}");
    for r in &replies {
        assert_ended_by_im_end(r, LIMIT);
    }
    let prompts = prompt_ids(&stderr);
    assert_eq!(prompts.len(), 2, "{stderr}");
    let closes = |p: &[u32]| p.iter().filter(|&&id| id == 262).count();
    assert_eq!(closes(&prompts[0]), 1, "{:?}", prompts[0]);
    assert_eq!(closes(&prompts[1]), 3, "{:?}", prompts[1]);

    // The server: the same stop, reported as "stop", streamed or not, over several seeds (some replies
    // must have letters, or the test would pass on a model that only ever ends at once).
    let server = Server::fresh(&["-m", model.to_str().unwrap(), "-t", "1"], &[]);
    let mut letters = 0;
    for seed in 1..=12u64 {
        let body = serde_json::json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": LIMIT, "temperature": 1, "seed": seed,
        });
        let r = server.post("/v1/chat/completions", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_ended_by_im_end(reply, LIMIT);
        letters += reply.len();
    }
    assert!(letters > 0, "every reply was empty");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": LIMIT, "temperature": 1, "seed": 3, "stream": true,
    });
    let r = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("im_end"), "{}", r.body);
    assert!(r.body.contains("\"finish_reason\":\"stop\""), "{}", r.body);
    server.wait_idle(Duration::from_secs(1));
}

/// `POST /v1/audio/speech` through the official client, spoken by a saved `voice_output` module: WAV and PCM
/// of the same text, PCM at speed 2 about half as long, mp3 refused with a 400 naming the field.
#[test]
fn the_openai_client_gets_speech_from_the_voice_output_module() {
    let test = "the_openai_client_gets_speech_from_the_voice_output_module";
    if !python_clients(test) {
        return;
    }
    if !Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        enigma_testkit::skip_or_fail(
            test,
            "espeak-ng is not installed (apt-get install espeak-ng)",
        );
        return;
    }
    let home = TempDir::new().unwrap();
    let load = Command::new(enigma())
        .args(["modules", "load", "voice_output"])
        .env("ENIGMA_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let server = Server::start(home.path(), &[], &[]);
    let out_dir = TempDir::new().unwrap();
    let v = server.client_script("speech.py", &[out_dir.path().to_str().unwrap()]);
    assert_eq!(v["wav_content_type"], "audio/wav", "{v}");
    assert_eq!(v["pcm_content_type"], "audio/pcm", "{v}");
    assert_eq!(v["mp3"]["status"], 400, "{v}");
    assert_eq!(v["mp3"]["param"], "response_format", "{v}");
    let wav = std::fs::read(out_dir.path().join("speech.wav")).unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");
    let rate = u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]);
    assert_eq!(v["pcm_sample_rate"], rate.to_string(), "{v}");
    let wav_secs = (wav.len() - 44) as f64 / 2.0 / f64::from(rate);
    let pcm = std::fs::read(out_dir.path().join("speech.pcm")).unwrap();
    let pcm_secs = pcm.len() as f64 / 2.0 / f64::from(rate);
    assert!(wav_secs > 2.0 && wav_secs < 8.0, "{wav_secs} s");
    let ratio = pcm_secs / wav_secs;
    assert!(
        (0.35..0.7).contains(&ratio),
        "speed 2: {pcm_secs} s against {wav_secs} s"
    );
}
