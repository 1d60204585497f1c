//! `POST /v1/audio/transcriptions` in OpenAI's shape: `multipart/form-data` with `file` (a WAV file),
//! `model` (any name: the loaded `speech_recognition` provider answers), optional `response_format`
//! (`json`, `text` or `verbose_json`; `srt` and `vtt` are refused), `language` (`en` only) and the fields
//! greedy decoding does not use (`prompt`, `temperature`), which are accepted and ignored.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use enigma_modules::capability::SpeechRecognition;
use serde_json::json;
use std::sync::Arc;

/// Largest audio file taken, as OpenAI's API: 25 MB.
pub const MAX_AUDIO: usize = 25 << 20;

pub async fn transcriptions(
    State(state): State<Arc<AppState>>,
    mut form: Multipart,
) -> ApiResult<Response> {
    let (mut file, mut format, mut language) = (None, "json".to_string(), None);
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("multipart body: {e}"))
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "file" => file = Some(field.bytes().await.map_err(bad)?),
            "response_format" => format = field.text().await.map_err(bad)?,
            "language" => language = Some(field.text().await.map_err(bad)?),
            // Read and dropped: model names whatever provider is loaded; greedy decoding has no prompt
            // or temperature.
            _ => drop(field.bytes().await.map_err(bad)?),
        }
    }
    let file = file.ok_or_else(|| ApiError::invalid("file", "is required (a WAV file)"))?;
    if !matches!(format.as_str(), "json" | "text" | "verbose_json") {
        return Err(ApiError::invalid(
            "response_format",
            format!("'{format}' is not supported: json, text or verbose_json"),
        ));
    }
    if let Some(l) = language.filter(|l| !l.is_empty() && l != "en") {
        return Err(ApiError::invalid(
            "language",
            format!("'{l}': the English-only model transcribes 'en' only"),
        ));
    }
    let m = &state.manager;
    let sr = m
        .get::<dyn SpeechRecognition>("speech_recognition")
        .map_err(ApiError::from_manager)?;
    let verbose = format == "verbose_json";
    let t = tokio::task::spawn_blocking(move || sr.transcribe_wav(&file, verbose))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::from_module(e, "file"))?;
    Ok(match format.as_str() {
        "text" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            t.text + "\n",
        )
            .into_response(),
        "verbose_json" => {
            let segments: Vec<_> = t
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text,
                        "tokens": s.tokens, "temperature": 0.0})
                })
                .collect();
            Json(
                json!({"task": "transcribe", "language": "english", "duration": t.duration,
                "text": t.text, "segments": segments}),
            )
            .into_response()
        }
        _ => Json(json!({"text": t.text})).into_response(),
    })
}
