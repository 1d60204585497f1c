//! Stand-ins for tests and demos: [`HashEmbeddings`], a deterministic bag-of-words embedder (texts that share
//! words get similar vectors, so retrieval can be tested without a model), and [`FakeApi`], a loopback
//! server answering OpenAI's `POST /v1/embeddings` with those vectors (what `embedding_api` is tested
//! against). Neither is a real embedding model.

use enigma_modules::capability::{Embedded, Embeddings};
use enigma_modules::ModuleError;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Words hashed into `dim` buckets with a sign each (the "hashing trick"), L2-normalised.
pub struct HashEmbeddings {
    pub dim: usize,
    pub name: String,
}

impl HashEmbeddings {
    pub fn new(name: &str, dim: usize) -> Self {
        HashEmbeddings {
            dim: dim.max(2),
            name: name.to_string(),
        }
    }

    /// One text's vector.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dim];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
        {
            let w = word.to_lowercase();
            // A crude plural fold, so "cats" meets "cat".
            let w = w.strip_suffix('s').unwrap_or(&w);
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in w.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[(h % self.dim as u64) as usize] += sign;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            // No words: one fixed direction, so the vector is still a unit vector.
            v[0] = 1.0;
            return v;
        }
        v.iter().map(|x| x / norm).collect()
    }
}

impl Embeddings for HashEmbeddings {
    fn describe(&self) -> String {
        format!("{} (hashed words, {} wide)", self.name, self.dim)
    }
    fn dimensions(&self) -> usize {
        self.dim
    }
    fn embed(&self, texts: &[&str]) -> Result<Embedded, ModuleError> {
        Ok(Embedded {
            vectors: texts.iter().map(|t| self.vector(t)).collect(),
            tokens: texts.iter().map(|t| t.split_whitespace().count()).sum(),
        })
    }
    fn model(&self) -> String {
        self.name.clone()
    }
}

/// A loopback OpenAI-compatible embeddings server (one thread, one request per connection).
pub struct FakeApi {
    pub addr: SocketAddr,
    /// Requests answered with vectors.
    pub served: Arc<AtomicUsize>,
    /// The `Authorization` header of the last request, as sent.
    pub last_auth: Arc<Mutex<Option<String>>>,
}

impl FakeApi {
    /// Serves vectors of `dim` width for any model name; with `key`, only requests bearing it.
    pub fn start(dim: usize, key: Option<&str>) -> std::io::Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicUsize::new(0));
        let last_auth = Arc::new(Mutex::new(None));
        let (s, a, key) = (served.clone(), last_auth.clone(), key.map(str::to_string));
        std::thread::spawn(move || {
            let embedder = HashEmbeddings::new("fake", dim);
            for stream in listener.incoming().flatten() {
                // A broken request only ends its own connection.
                let _ = answer(stream, &embedder, key.as_deref(), &s, &a);
            }
        });
        Ok(FakeApi {
            addr,
            served,
            last_auth,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn answer(
    stream: TcpStream,
    embedder: &HashEmbeddings,
    key: Option<&str>,
    served: &AtomicUsize,
    last_auth: &Mutex<Option<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut length, mut auth) = (0usize, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 24)];
    reader.read_exact(&mut body)?;
    if let Ok(mut l) = last_auth.lock() {
        l.clone_from(&auth);
    }
    let (status, reply) = reply(&request_line, &body, auth.as_deref(), key, embedder);
    if status == 200 {
        served.fetch_add(1, Ordering::Relaxed);
    }
    let text = reply.to_string();
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        if status == 200 { "OK" } else { "Error" },
        text.len()
    )?;
    out.flush()
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (
        status,
        json!({ "error": { "message": message, "type": "invalid_request_error" } }),
    )
}

fn reply(
    request_line: &str,
    body: &[u8],
    auth: Option<&str>,
    key: Option<&str>,
    embedder: &HashEmbeddings,
) -> (u16, Value) {
    if !request_line.starts_with("POST /v1/embeddings ") {
        return error(404, "no such route");
    }
    if let Some(k) = key {
        if auth != Some(format!("Bearer {k}").as_str()) {
            return error(401, "Incorrect API key provided");
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(400, "the body is not JSON");
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return error(400, "you must provide a model parameter");
    };
    let inputs: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => match a.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(v) => v,
            None => return error(400, "input must be strings"),
        },
        _ => return error(400, "input is required"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "object": "embedding", "index": i, "embedding": embedder.vector(t) }))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    (
        200,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens }
        }),
    )
}
