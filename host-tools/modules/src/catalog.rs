//! The 29 modules of SPEC.md: what each provides, needs and conflicts with, and its config schema.
//! Which of them are implemented is decided in `builtin.rs`; this table is the same in every build.

use super::spec::{Def, Field, HardwareNeeds, Kind, ModuleSpec};

const fn int(key: &'static str, default: i64, min: i64, max: i64, help: &'static str) -> Field {
    Field {
        key,
        kind: Kind::Int { min, max },
        default: Def::Int(default),
        help,
    }
}

const fn float(key: &'static str, default: f64, min: f64, max: f64, help: &'static str) -> Field {
    Field {
        key,
        kind: Kind::Float { min, max },
        default: Def::Float(default),
        help,
    }
}

const fn string(key: &'static str, default: &'static str, help: &'static str) -> Field {
    Field {
        key,
        kind: Kind::Str,
        default: Def::Str(default),
        help,
    }
}

const fn choice(
    key: &'static str,
    default: &'static str,
    options: &'static [&'static str],
    help: &'static str,
) -> Field {
    Field {
        key,
        kind: Kind::Choice { options },
        default: Def::Str(default),
        help,
    }
}

const fn flag(key: &'static str, default: bool, help: &'static str) -> Field {
    Field {
        key,
        kind: Kind::Bool,
        default: Def::Bool(default),
        help,
    }
}

const fn list(key: &'static str, help: &'static str) -> Field {
    Field {
        key,
        kind: Kind::List,
        default: Def::List(&[]),
        help,
    }
}

const API_KEY: Field = string(
    "api_key_env",
    "ENIGMA_API_KEY",
    "environment variable holding the API key (the key itself is never saved)",
);
const BASE_URL: Field = string(
    "base_url",
    "",
    "API endpoint (empty: the provider's default)",
);

const fn api_fields(providers: &'static [&'static str], default: &'static str) -> [Field; 4] {
    [
        choice("provider", default, providers, "which service to call"),
        string(
            "model",
            "",
            "the provider's model name (empty: its default)",
        ),
        API_KEY,
        BASE_URL,
    ]
}

const TEXT_APIS: &[&str] = &["openai", "anthropic", "openai_compatible"];
const CHAT_API: [Field; 4] = api_fields(TEXT_APIS, "openai");
const EMBED_API: [Field; 4] = api_fields(&["openai", "openai_compatible"], "openai");
const IMAGE_API: [Field; 4] = api_fields(&["openai", "stability", "replicate"], "openai");
const CODE_API: [Field; 4] = api_fields(TEXT_APIS, "openai");
const VIDEO_API: [Field; 4] = api_fields(&["replicate", "runway"], "replicate");
const AUDIO_API: [Field; 4] = api_fields(&["elevenlabs", "replicate"], "elevenlabs");
const THREED_API: [Field; 4] = api_fields(&["replicate", "meshy"], "replicate");

const MODEL_NAME: Field = string(
    "model",
    "",
    "a model in ENIGMA_HOME (see `enigma models list`) or a path to a .enigma file",
);
const THREADS: Field = int("threads", 0, 0, 4096, "worker threads (0: all cores)");

const fn spec(
    id: &'static str,
    category: &'static str,
    description: &'static str,
    provides: &'static [&'static str],
    needs: &'static [&'static str],
) -> ModuleSpec {
    ModuleSpec {
        id,
        category,
        description,
        provides,
        needs,
        optional: &[],
        conflicts: &[],
        cloud: false,
        hardware: HardwareNeeds::NONE,
        config: &[],
    }
}

const fn cloud(mut s: ModuleSpec, config: &'static [Field]) -> ModuleSpec {
    s.cloud = true;
    s.config = config;
    s
}

const fn with(mut s: ModuleSpec, config: &'static [Field]) -> ModuleSpec {
    s.config = config;
    s
}

const fn gpu(mut s: ModuleSpec, vram_gib: u64) -> ModuleSpec {
    s.hardware = HardwareNeeds::gpu_gib(vram_gib);
    s
}

const fn optional(mut s: ModuleSpec, optional: &'static [&'static str]) -> ModuleSpec {
    s.optional = optional;
    s
}

const fn conflicts(mut s: ModuleSpec, conflicts: &'static [&'static str]) -> ModuleSpec {
    s.conflicts = conflicts;
    s
}

const INFERENCE: &[Field] = &[
    int("max_tokens", 256, 1, 1 << 20, "most tokens per reply"),
    float("temperature", 0.8, 0.0, 10.0, "0 is greedy"),
    float("top_p", 0.9, 0.0, 1.0, "nucleus sampling (1: off)"),
    // 40 as `enigma run`, llama.cpp and Ollama default to: without it, top-p over a flat distribution sorts
    // the whole vocabulary for every token (2 ms at 32,000 tokens), which a server pays per stream per step.
    int(
        "top_k",
        40,
        0,
        1 << 22,
        "keep the K most likely tokens (0: off)",
    ),
    float(
        "repeat_penalty",
        1.0,
        0.01,
        10.0,
        "penalty for recent tokens (1: off)",
    ),
    int("seed", 0, 0, i64::MAX, "sampling seed (0: from the clock)"),
    int(
        "kv_tokens",
        0,
        0,
        1 << 30,
        "KV cache positions shared by all sequences (0: a context per sequence, less if memory is short)",
    ),
    int(
        "max_sequences",
        16,
        1,
        4096,
        "sequences decoded together; more requests wait",
    ),
    int(
        "prefill_tokens",
        64,
        1,
        65536,
        "prompt tokens read per step beside the decoding sequences (a cancel takes effect between steps)",
    ),
    choice("kv_cache", "f32", &["f32", "f16"], "KV cache element type"),
];

/// All 29 modules, in SPEC.md's order.
/// The catalog's spec of `id`, for a crate registering its module. Ids are fixed at build time, so a
/// miss is a bug in that crate, caught by its first test.
pub fn by_id(id: &str) -> &'static ModuleSpec {
    match CATALOG.iter().find(|s| s.id == id) {
        Some(s) => s,
        None => panic!("module {id} is not in the catalog"),
    }
}

pub static CATALOG: [ModuleSpec; 29] = [
    with(
        spec(
            "model",
            "core",
            "The language model's weights, memory-mapped from a .enigma file",
            &["language_model", "model_embeddings"],
            &[],
        ),
        &[MODEL_NAME, THREADS],
    ),
    with(
        optional(
            spec(
                "tokenizer",
                "core",
                "The model's tokenizer: text to token ids and back",
                &["tokenization"],
                &[],
            ),
            &["model"],
        ),
        &[string(
            "model",
            "",
            "whose tokenizer: a model name or .enigma path (empty: the model module's model)",
        )],
    ),
    with(
        spec(
            "training",
            "core",
            "Train and fine-tune the loaded model",
            &["model_training", "fine_tuning"],
            &["model", "tokenizer"],
        ),
        &[
            list(
                "data",
                "training files: text, chat JSONL or Q:/A: (see `enigma train --help`)",
            ),
            int("steps", 1000, 1, i64::MAX, "optimizer steps"),
            float(
                "learning_rate",
                1e-4,
                1e-8,
                1e-3,
                "peak learning rate; above 1e-3 only through `enigma train --force`",
            ),
            int("batch_size", 8, 1, 1 << 16, "sequences per step"),
            string("output", "", "model name to write (empty: MODEL-tuned)"),
            flag(
                "allow_small_data",
                false,
                "accept data under 1000 lines (experiments)",
            ),
        ],
    ),
    with(
        spec(
            "inference",
            "core",
            "Text generation, streaming and chat on the local model",
            &["text_generation", "streaming", "chat"],
            &["model", "tokenizer"],
        ),
        INFERENCE,
    ),
    cloud(
        spec(
            "chat_api",
            "core",
            "Text generation and chat through a remote API",
            &["text_generation", "streaming", "chat"],
            &[],
        ),
        &CHAT_API,
    ),
    conflicts(
        with(
            spec(
                "gguf_loader",
                "core",
                "Run GGUF models (llama.cpp's format) directly",
                &["text_generation", "completion", "gguf_support"],
                &[],
            ),
            &[string("path", "", "the .gguf file"), THREADS],
        ),
        &["model", "inference"],
    ),
    optional(
        with(
            spec(
                "memory",
                "memory",
                "Conversation storage and vector search over it",
                &["conversation_storage", "vector_search"],
                &[],
            ),
            &[
                string(
                    "store",
                    "memory.db",
                    "database file, relative to ENIGMA_HOME",
                ),
                int(
                    "max_entries",
                    100_000,
                    1,
                    i64::MAX,
                    "oldest entries are dropped beyond this",
                ),
            ],
        ),
        &["embedding_local", "embedding_api"],
    ),
    with(
        spec(
            "embedding_local",
            "memory",
            "Text embeddings computed on this machine",
            &["embeddings", "semantic_search"],
            &[],
        ),
        &[MODEL_NAME, int("dim", 384, 1, 65536, "embedding width")],
    ),
    cloud(
        spec(
            "embedding_api",
            "memory",
            "Text embeddings from a remote API",
            &["embeddings", "semantic_search"],
            &[],
        ),
        &EMBED_API,
    ),
    with(
        spec(
            "voice_input",
            "perception",
            "Speech recognition (Whisper on this machine)",
            &["speech_recognition"],
            &[],
        ),
        &[
            MODEL_NAME,
            THREADS,
            string("device", "default", "audio input device"),
            string("language", "en", "spoken language"),
        ],
    ),
    with(
        spec(
            "vision",
            "perception",
            "Camera capture and text recognition (OCR)",
            &["image_capture", "ocr"],
            &[],
        ),
        &[
            int("camera", 0, 0, 63, "camera index"),
            string("ocr_language", "eng", "OCR language"),
        ],
    ),
    optional(
        with(
            spec(
                "motion_tracking",
                "perception",
                "Gesture recognition from a camera",
                &["gesture_recognition"],
                &[],
            ),
            &[int("camera", 0, 0, 63, "camera index")],
        ),
        &["avatar"],
    ),
    with(
        spec(
            "voice_output",
            "output",
            "Text to speech",
            &["text_to_speech"],
            &[],
        ),
        &[
            string("voice", "default", "voice name"),
            float("rate", 1.0, 0.25, 4.0, "speaking rate"),
        ],
    ),
    optional(
        with(
            spec(
                "avatar",
                "output",
                "An animated avatar with lip sync",
                &["visual_avatar", "lip_sync"],
                &[],
            ),
            &[choice("style", "2d", &["2d", "3d"], "how it is drawn")],
        ),
        &["voice_output"],
    ),
    gpu(
        with(
            spec(
                "image_gen_local",
                "generation",
                "Image generation on a local GPU",
                &["image_generation"],
                &[],
            ),
            &[
                MODEL_NAME,
                int("steps", 30, 1, 1000, "diffusion steps"),
                int("width", 512, 64, 4096, "pixels"),
                int("height", 512, 64, 4096, "pixels"),
            ],
        ),
        6,
    ),
    cloud(
        spec(
            "image_gen_api",
            "generation",
            "Image generation through a remote API",
            &["image_generation"],
            &[],
        ),
        &IMAGE_API,
    ),
    with(
        spec(
            "code_gen_local",
            "generation",
            "Code generation by prompting the local model",
            &["code_generation"],
            &["model", "tokenizer", "inference"],
        ),
        &[
            string(
                "language",
                "python",
                "language asked for when a request names none",
            ),
            int("max_tokens", 512, 1, 1 << 20, "most tokens per answer"),
            float("temperature", 0.2, 0.0, 10.0, "0 is greedy"),
        ],
    ),
    cloud(
        spec(
            "code_gen_api",
            "generation",
            "Code generation through a remote API",
            &["code_generation"],
            &[],
        ),
        &CODE_API,
    ),
    gpu(
        with(
            spec(
                "video_gen_local",
                "generation",
                "Video generation on a local GPU",
                &["video_generation"],
                &[],
            ),
            &[MODEL_NAME, int("frames", 16, 1, 1024, "frames per clip")],
        ),
        12,
    ),
    cloud(
        spec(
            "video_gen_api",
            "generation",
            "Video generation through a remote API",
            &["video_generation"],
            &[],
        ),
        &VIDEO_API,
    ),
    with(
        spec(
            "audio_gen_local",
            "generation",
            "Audio generation on this machine",
            &["audio_generation"],
            &[],
        ),
        &[
            MODEL_NAME,
            int("sample_rate", 24000, 8000, 192_000, "samples per second"),
        ],
    ),
    cloud(
        spec(
            "audio_gen_api",
            "generation",
            "Audio and music generation through a remote API",
            &["audio_generation", "music_generation"],
            &[],
        ),
        &AUDIO_API,
    ),
    gpu(
        with(
            spec(
                "threed_gen_local",
                "generation",
                "3D model generation on a local GPU",
                &["3d_generation"],
                &[],
            ),
            &[MODEL_NAME, int("steps", 64, 1, 10000, "generation steps")],
        ),
        4,
    ),
    cloud(
        spec(
            "threed_gen_api",
            "generation",
            "3D model generation through a remote API",
            &["3d_generation"],
            &[],
        ),
        &THREED_API,
    ),
    with(
        spec(
            "web_tools",
            "tools",
            "Web search and fetching pages",
            &["web_search", "url_fetch"],
            &[],
        ),
        &[
            int("max_results", 5, 1, 100, "search results per query"),
            int("timeout_s", 10, 1, 600, "per request"),
        ],
    ),
    with(
        spec(
            "file_tools",
            "tools",
            "Read, write and search files, confined to allowed folders",
            &["file_read", "file_write", "file_search"],
            &[],
        ),
        &[
            list(
                "allowed_folders",
                "the only folders it may touch (empty: none)",
            ),
            int(
                "max_bytes",
                10 << 20,
                1,
                i64::MAX,
                "largest file it reads or writes",
            ),
        ],
    ),
    with(
        // network is optional only to order restoring: loaded first, it announces the server on the LAN.
        optional(
            spec(
                "api_server",
                "interface",
                "The OpenAI-compatible HTTP API, for remote access",
                &["rest_api", "remote_access"],
                // A capability, not a module: inference, chat_api or gguf_loader meets it (SPEC.md).
                &["text_generation"],
            ),
            &["network"],
        ),
        &[
            string(
                "host",
                "127.0.0.1",
                "address to listen on (anything but loopback is reachable from other machines: set a key)",
            ),
            int("port", 8080, 0, 65535, "TCP port (0: any free one)"),
            string(
                "api_key_env",
                "ENIGMA_API_KEY",
                "environment variable holding the key clients must send (unset or empty: none; the key itself is never saved)",
            ),
            int(
                "max_queue",
                64,
                1,
                1 << 20,
                "generation requests admitted at once; more get 503",
            ),
            int(
                "max_body",
                4 << 20,
                1,
                1 << 30,
                "largest request body in bytes; larger gets 413",
            ),
        ],
    ),
    with(
        spec(
            "network",
            "network",
            "Several devices as one: remote inference between them",
            &["multi_device", "remote_inference"],
            &[],
        ),
        &[
            string(
                "peer",
                "auto",
                "the engine remote_inference generates on: its URL, or auto (the first one discovered)",
            ),
            string(
                "api_key_env",
                "ENIGMA_API_KEY",
                "environment variable holding the peer's API key (unset or empty: none; never saved)",
            ),
            flag(
                "discovery",
                true,
                "advertise this host's api_server and find peers on the local network (mDNS)",
            ),
        ],
    ),
    with(
        spec(
            "gui",
            "interface",
            "The graphical interface, including module management",
            &["graphical_interface", "module_management"],
            &[],
        ),
        &[choice("theme", "dark", &["dark", "light"], "colours")],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_catalog_matches_the_spec_and_is_consistent() {
        assert_eq!(CATALOG.len(), 29);
        let ids: HashSet<&str> = CATALOG.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 29, "ids are unique");
        for s in &CATALOG {
            for r in s.optional.iter().chain(s.conflicts) {
                assert!(ids.contains(r), "{} names unknown module {r}", s.id);
            }
            // A need names a module or a capability some module provides.
            for r in s.needs {
                assert!(
                    ids.contains(r) || CATALOG.iter().any(|o| o.provides.contains(r)),
                    "{} needs unknown {r}",
                    s.id
                );
            }
            // Every default satisfies its own field's type and bounds.
            for f in s.config {
                f.check(f.default_value()).unwrap();
            }
            let keys: HashSet<&str> = s.config.iter().map(|f| f.key).collect();
            assert_eq!(keys.len(), s.config.len(), "{}: duplicate key", s.id);
        }
        let by = |id: &str| CATALOG.iter().find(|s| s.id == id).unwrap();
        assert_eq!(CATALOG.iter().filter(|s| s.cloud).count(), 7);
        assert_eq!(
            by("code_gen_local").needs,
            ["model", "tokenizer", "inference"]
        );
        assert_eq!(by("gguf_loader").conflicts, ["model", "inference"]);
        assert_eq!(by("image_gen_local").hardware.vram, 6 << 30);
        assert_eq!(by("video_gen_local").hardware.vram, 12 << 30);
        assert_eq!(by("threed_gen_local").hardware.vram, 4 << 30);
        assert_eq!(by("api_server").needs, ["text_generation"]);
    }
}
