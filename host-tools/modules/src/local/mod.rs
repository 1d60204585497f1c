//! The modules that run on this machine's own model: `model`, `tokenizer`, `inference`, `code_gen_local`,
//! and `gguf_loader` (the first three over a GGUF file); `embedding_local` over an encoder model; and
//! `voice_input` over a Whisper model.
//! Each takes what it builds on through the capability seam (inference asks for `language_model` and
//! `tokenization`), so none knows another's type.

mod code_gen;
mod embedding;
mod gguf_loader;
mod inference;
mod model;
mod tokenizer;
mod voice_input;

pub use embedding::LocalEmbeddings;
pub use inference::Inference;
pub use model::LoadedModel;
pub use voice_input::LocalSpeech;

use crate::catalog;
use crate::registry::Registry;
use crate::spec::{ModuleConfig, Value};
use enigma_models::ModelStore;

/// Registers the local modules over the models directory of `store`.
pub fn register(registry: &mut Registry, store: &ModelStore) {
    registry.register(Box::new(model::ModelModule::new(
        catalog::by_id("model"),
        store.clone(),
    )));
    registry.register(Box::new(tokenizer::TokenizerModule::new(
        catalog::by_id("tokenizer"),
        store.clone(),
    )));
    registry.register(Box::new(inference::InferenceModule::new(catalog::by_id(
        "inference",
    ))));
    registry.register(Box::new(code_gen::CodeGenModule::new(catalog::by_id(
        "code_gen_local",
    ))));
    registry.register(Box::new(embedding::EmbeddingModule::new(
        catalog::by_id("embedding_local"),
        store.clone(),
    )));
    registry.register(Box::new(voice_input::VoiceInputModule::new(
        catalog::by_id("voice_input"),
        store.clone(),
    )));
    registry.register(Box::new(gguf_loader::GgufLoaderModule::new(
        catalog::by_id("gguf_loader"),
        store.clone(),
    )));
}

pub(crate) fn text(config: &ModuleConfig, key: &str) -> String {
    config
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A text setting that must be given; `hint` says how.
pub(crate) fn required_text(
    config: &ModuleConfig,
    key: &str,
    hint: &str,
) -> Result<String, crate::module::ModuleError> {
    let v = text(config, key);
    if v.is_empty() {
        return Err(crate::module::ModuleError::Config(hint.into()));
    }
    Ok(v)
}

pub(crate) fn int(config: &ModuleConfig, key: &str, default: i64) -> i64 {
    config.get(key).and_then(Value::as_int).unwrap_or(default)
}

pub(crate) fn float(config: &ModuleConfig, key: &str, default: f64) -> f64 {
    config.get(key).and_then(Value::as_float).unwrap_or(default)
}

/// The `threads` setting: 0 (all cores) is `None`.
pub(crate) fn threads(config: &ModuleConfig) -> Option<usize> {
    match int(config, "threads", 0) {
        0 => None,
        n => Some(n as usize),
    }
}

/// RAM to run a model: its file, a full-context f32 KV cache and one token's scratch. A GGUF file is mapped and
/// rebuilt in memory, with k-quants widened to q8_0 (enigma_models::gguf): three times its size bounds that.
pub(crate) fn ram_needs(peek: &enigma_models::Peek) -> u64 {
    let file = if peek.source.starts_with("gguf:") {
        3 * peek.file_len
    } else {
        peek.file_len
    };
    let run = peek
        .config
        .memory_estimate(enigma_core::kernels::DType::F32, enigma_core::KvType::F32)
        .map_or(0, |m| m.kv_cache + m.scratch);
    file + run
}
