//! A fake OpenAI-compatible server for the `--remote` tests: a std TcpListener that speaks the wire format
//! (SSE `data:` chunks ending in `[DONE]`, the OpenAI error shape) and can be told to misbehave.
// Each test binary that includes this uses only part of it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the fake server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// What the fake server does with a request.
pub enum Answer {
    /// Writes these bytes and closes.
    Bytes(Vec<u8>),
    /// Reads the request and never answers (until the client gives up).
    Hang,
}

type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

pub struct Fake {
    pub url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Starts the fake server on a free loopback port; each connection is served on its own thread.
pub fn serve(handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Fake {
    serve_on("127.0.0.1:0", handler)
}

/// [`serve`] on a given address.
pub fn serve_on(addr: &str, handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind(addr).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let seen2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = Arc::clone(&handler);
            let seen = Arc::clone(&seen2);
            std::thread::spawn(move || {
                let Some(req) = read_request(&mut stream) else {
                    return;
                };
                seen.lock().unwrap().push(req.clone());
                match handler(&req) {
                    Answer::Bytes(b) => {
                        let _ = stream.write_all(&b);
                        let _ = stream.flush();
                    }
                    Answer::Hang => std::thread::sleep(Duration::from_secs(30)),
                }
            });
        }
    });
    Fake { url, seen }
}

pub fn json_answer(status: &str, body: &Value) -> Answer {
    let body = body.to_string();
    Answer::Bytes(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

pub fn error_answer(status: &str, message: &str) -> Answer {
    json_answer(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// An SSE reply in HTTP chunked encoding, as servers send streams: each event its own chunk.
pub fn sse(events: &[String]) -> Answer {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for e in events {
        out.extend(format!("{:x}\r\n{e}\r\n", e.len()).into_bytes());
    }
    out.extend(b"0\r\n\r\n");
    Answer::Bytes(out)
}

pub fn text_chunk(text: &str, finish: Option<&str>) -> String {
    let v = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "story",
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
    format!("data: {v}\n\n")
}

pub fn chat_chunk(delta: Value, finish: Option<&str>) -> String {
    let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "story",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {v}\r\n\r\n")
}

pub fn done() -> String {
    "data: [DONE]\n\n".to_string()
}

pub fn models() -> Answer {
    json_answer(
        "200 OK",
        &json!({"object": "list", "data": [{"id": "story", "object": "model", "owned_by": "enigma"}, {"id": "other", "object": "model"}]}),
    )
}
