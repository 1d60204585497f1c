//! `POST /v1/audio/speech`: OpenAI's text-to-speech route, spoken by whichever module provides `text_to_speech`
//! (`voice_output`: the Piper voice, or espeak-ng alone).

use crate::error::{ApiError, ApiResult, Dialect};
use crate::fields::{Fields, JsonBody};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use enigma_modules::capability::TextToSpeech;
use std::sync::Arc;

/// OpenAI's voice names: clients always send one, and all of them speak with the provider's default voice.
const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
];

/// OpenAI's limit on `input`.
const MAX_INPUT_CHARS: usize = 4096;

pub async fn speech(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let d = Dialect::OpenAi;
    let f = Fields::new(&body, d);
    let input = f
        .string("input")?
        .ok_or_else(|| f.err("input", "is required"))?
        .to_string();
    if input.trim().is_empty() {
        return Err(f.err("input", "is empty"));
    }
    if input.chars().count() > MAX_INPUT_CHARS {
        return Err(f.err(
            "input",
            format!("is longer than {MAX_INPUT_CHARS} characters"),
        ));
    }
    f.string("model")?;
    // OpenAI's default is mp3, which we do not encode; with no format asked for, WAV.
    let format = f.string("response_format")?.unwrap_or("wav");
    let (content_type, wav) = match format {
        "wav" => ("audio/wav", true),
        "pcm" => ("audio/pcm", false),
        other => {
            return Err(f.err(
                "response_format",
                format!("\"{other}\" is not supported: use \"wav\" or \"pcm\" (16-bit mono PCM)"),
            ))
        }
    };
    if f.string("stream_format")?.is_some_and(|s| s != "audio") {
        return Err(f.err("stream_format", "must be \"audio\""));
    }
    if f.has("instructions") {
        return Err(f.err(
            "instructions",
            "is not supported: the voice cannot be instructed",
        ));
    }
    let speed = f.number("speed", 0.25, 4.0)?.unwrap_or(1.0) as f32;
    let tts = state
        .manager
        .get::<dyn TextToSpeech>("text_to_speech")
        .map_err(|e| ApiError::from_manager(e).dialect(d))?;
    let voice = match f.string("voice")? {
        None => None,
        Some(v) if OPENAI_VOICES.contains(&v) => None,
        Some(v) if tts.voices().iter().any(|x| x == v) => Some(v.to_string()),
        Some(v) => {
            return Err(f.err(
                "voice",
                format!(
                    "\"{v}\" is not a voice here: {} (or one of OpenAI's names, which speak with the default)",
                    tts.voices().join(", ")
                ),
            ))
        }
    };
    let audio = tokio::task::spawn_blocking(move || tts.speak_at(&input, voice.as_deref(), speed))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::from_module(e, "input").dialect(d))?;
    let bytes = if wav {
        enigma_voice::wav::wav_bytes(&audio.samples, audio.sample_rate)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    } else {
        enigma_voice::wav::pcm_bytes(&audio.samples)
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::HeaderName::from_static("x-sample-rate"),
                audio.sample_rate.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}
