//! The `embedding_api` module: `embeddings` from an OpenAI-compatible `POST /v1/embeddings` (OpenAI's
//! documented wire format: `{"model", "input": [...]}` answered by `{"data": [{"index", "embedding"}],
//! "usage": {"prompt_tokens"}}`), through `enigma-remote`'s client. The key is read from the environment
//! variable the config names, sent only as the `Authorization` header, and never saved, logged or shown.
//! A cloud module: the manager loads it only when cloud modules are allowed.

use enigma_modules::capability::{Embedded, Embeddings};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, Module, ModuleConfig, ModuleError, ModuleSpec, Provided, Registry,
};
use enigma_remote::Client;
use serde_json::{json, Value as Json};
use std::sync::Arc;

/// OpenAI's endpoint and default embedding model, for `provider=openai` with the fields left empty.
const OPENAI_URL: &str = "https://api.openai.com";
const OPENAI_MODEL: &str = "text-embedding-3-small";
/// Inputs per request: OpenAI takes up to 2048; smaller requests keep one reply's body modest.
const BATCH: usize = 256;

pub(crate) fn register(registry: &mut Registry) {
    registry.register(Box::new(ApiModule {
        spec: catalog::by_id("embedding_api"),
        loaded: None,
    }));
}

struct ApiModule {
    spec: &'static ModuleSpec,
    loaded: Option<Arc<ApiEmbeddings>>,
}

/// A client of one endpoint and model.
pub struct ApiEmbeddings {
    client: Client,
    model: String,
    dim: usize,
}

fn text<'a>(config: &'a ModuleConfig, key: &str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl ApiEmbeddings {
    /// A client of `base_url` (with or without `/v1`) for `model`, with an optional key; asks the
    /// endpoint once for the width of its vectors.
    pub fn connect(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<Self, ModuleError> {
        let client =
            Client::new(base_url, api_key).map_err(|e| ModuleError::Config(e.to_string()))?;
        let mut api = ApiEmbeddings {
            client,
            model: model.to_string(),
            dim: 0,
        };
        let probe = api.request(&["dimension probe"])?;
        api.dim = probe.vectors.first().map_or(0, Vec::len);
        Ok(api)
    }

    /// One request; the reply checked whole (one vector per input, each index once, one width).
    fn request(&self, texts: &[&str]) -> Result<Embedded, ModuleError> {
        let body = json!({ "model": self.model, "input": texts, "encoding_format": "float" });
        let reply = self
            .client
            .post_json("/v1/embeddings", &body)
            .map_err(|e| match e {
                enigma_remote::Error::Status { status, .. } if (400..500).contains(&status) => {
                    ModuleError::Invalid(format!("embedding_api: {e}"))
                }
                _ => ModuleError::Failed(format!("embedding_api: {e}")),
            })?;
        let bad = |why: String| {
            ModuleError::Failed(format!(
                "embedding_api: {}/v1/embeddings answered {why}",
                self.client.base()
            ))
        };
        let data = reply
            .get("data")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("without a data array".into()))?;
        if data.len() != texts.len() {
            return Err(bad(format!(
                "{} vectors for {} inputs",
                data.len(),
                texts.len()
            )));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for item in data {
            let index = item
                .get("index")
                .and_then(Json::as_u64)
                .filter(|&i| (i as usize) < texts.len())
                .ok_or_else(|| bad("an item without a valid index".into()))?
                as usize;
            let values = item
                .get("embedding")
                .and_then(Json::as_array)
                .ok_or_else(|| bad(format!("item {index} without an embedding array (base64?)")))?;
            let v = values
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| {
                    bad(format!(
                        "item {index} with a value that is not a finite number"
                    ))
                })?;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if v.is_empty() || norm == 0.0 {
                return Err(bad(format!("item {index} as an empty or zero vector")));
            }
            if vectors[index]
                .replace(v.iter().map(|x| x / norm).collect())
                .is_some()
            {
                return Err(bad(format!("index {index} twice")));
            }
        }
        let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
        let dim = vectors.first().map_or(0, Vec::len);
        if vectors.iter().any(|v| v.len() != dim) || (self.dim != 0 && dim != self.dim) {
            return Err(bad(format!(
                "vectors of several widths (expected {})",
                self.dim.max(dim)
            )));
        }
        let tokens = reply
            .pointer("/usage/prompt_tokens")
            .and_then(Json::as_u64)
            .unwrap_or(0) as usize;
        Ok(Embedded { vectors, tokens })
    }
}

impl Embeddings for ApiEmbeddings {
    fn describe(&self) -> String {
        format!("{} at {}", self.model, self.client.base())
    }
    fn dimensions(&self) -> usize {
        self.dim
    }
    fn embed(&self, texts: &[&str]) -> Result<Embedded, ModuleError> {
        let mut out = Embedded::default();
        for chunk in texts.chunks(BATCH) {
            let part = self.request(chunk)?;
            out.vectors.extend(part.vectors);
            out.tokens += part.tokens;
        }
        Ok(out)
    }
    /// The endpoint and model together: the same model name at two services may be different models.
    fn model(&self) -> String {
        format!("{}@{}", self.model, self.client.base())
    }
}

impl Module for ApiModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let provider = text(config, "provider");
        let (base, model) = match (provider, text(config, "base_url"), text(config, "model")) {
            ("openai", "", m) => (OPENAI_URL, if m.is_empty() { OPENAI_MODEL } else { m }),
            ("openai", b, "") => (b, OPENAI_MODEL),
            (_, "", _) => {
                return Err(ModuleError::Config(format!(
                    "provider {provider} needs base_url (the server's address)"
                )))
            }
            (_, _, "") => {
                return Err(ModuleError::Config(format!(
                    "provider {provider} needs model (the name the server knows it by)"
                )))
            }
            (_, b, m) => (b, m),
        };
        let env = text(config, "api_key_env");
        let key = (!env.is_empty())
            .then(|| std::env::var(env).ok())
            .flatten()
            .filter(|k| !k.is_empty());
        if key.is_none() && base == OPENAI_URL {
            return Err(ModuleError::Config(format!(
                "OpenAI needs an API key: set the environment variable {env} (api_key_env)"
            )));
        }
        let api = Arc::new(ApiEmbeddings::connect(base, model, key)?);
        self.loaded = Some(api.clone());
        Ok(Provided::new().with_all(
            &["embeddings", "semantic_search"],
            api as Arc<dyn Embeddings>,
        ))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            Some(a) => format!("{} ({} wide)", a.describe(), a.dim),
            None => "not loaded".into(),
        }
    }

    fn health(&self) -> Health {
        match &self.loaded {
            None => Health::NotLoaded,
            Some(a) => match a.request(&["health"]) {
                Ok(_) => Health::Ok(a.describe()),
                Err(e) => Health::Unhealthy(e.to_string()),
            },
        }
    }
}
