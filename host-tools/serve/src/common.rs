//! What the OpenAI and Ollama routes share: the served model, chat messages, sampling fields, timestamps.

use crate::error::{ApiError, ApiResult, Dialect};
use crate::fields::Fields;
use crate::AppState;
use enigma_modules::capability::{
    ChatMessage, LanguageModel, Role, Sampling, TextGeneration, TokenLogprob, TopLogprob,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The generator serving now, and the name clients address it by.
pub fn served(state: &AppState) -> ApiResult<(String, Arc<dyn TextGeneration>)> {
    let m = &state.manager;
    let generator = m
        .get::<dyn TextGeneration>("text_generation")
        .map_err(ApiError::from_manager)?;
    Ok((served_name(state).unwrap_or_default(), generator))
}

/// The loaded model's name (as [`public_name`] shows it), or, for a provider without a local model, the
/// providing module's id.
pub fn served_name(state: &AppState) -> Option<String> {
    names(state).map(|(public, _)| public)
}

/// The public name and the name the model was loaded as (a path, perhaps): requests may use either.
fn names(state: &AppState) -> Option<(String, String)> {
    let m = &state.manager;
    match m.get::<dyn LanguageModel>("language_model") {
        Ok(l) => Some((public_name(l.name(), l.path()), l.name().to_string())),
        Err(_) => m
            .provider("text_generation")
            .map(|p| (p.to_string(), p.to_string())),
    }
}

/// A model loaded by name keeps it; one loaded by path is called by its file's stem (a model folder's
/// `model.enigma` by the folder's name), as `enigma models list` calls it, so clients are not told the
/// server's file system.
pub fn public_name(loaded_as: &str, path: &Path) -> String {
    if !loaded_as.contains(['/', '\\']) && !loaded_as.ends_with(".enigma") {
        return loaded_as.to_string();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    match stem.as_deref() {
        Some("model") => path
            .parent()
            .and_then(Path::file_name)
            .map_or_else(|| "model".to_string(), |d| d.to_string_lossy().into_owned()),
        Some(s) => s.to_string(),
        None => loaded_as.to_string(),
    }
}

/// The generator, after checking the request's `model` against the served one. Absent or empty means the
/// served model; the name it was loaded as and Ollama's `:latest` tag are accepted too.
pub fn generator_for(
    state: &AppState,
    f: &Fields<'_>,
) -> ApiResult<(String, Arc<dyn TextGeneration>)> {
    let (name, generator) = served(state).map_err(|e| e.dialect(f.dialect))?;
    let loaded_as = names(state).map(|(_, l)| l).unwrap_or_default();
    match f.string("model")? {
        None | Some("") => {}
        Some(asked)
            if [asked, asked.strip_suffix(":latest").unwrap_or(asked)]
                .iter()
                .any(|a| *a == name || *a == loaded_as) => {}
        Some(asked) => {
            return Err(f
                .err(
                    "model",
                    format!("names '{asked}', which this server does not serve; it serves '{name}' (see /v1/models)"),
                )
                .code("model_not_found"))
        }
    }
    Ok((name, generator))
}

/// Chat messages: `role` system (or OpenAI's `developer`), user or assistant; `content` a string (or, for
/// OpenAI, a list of text parts). Tool messages and images are refused by name.
pub fn messages(f: &Fields<'_>) -> ApiResult<Vec<ChatMessage>> {
    let Some(Value::Array(list)) = f.get("messages") else {
        return Err(f.err("messages", "is required: a list of {role, content} objects"));
    };
    if list.is_empty() {
        return Err(f.err("messages", "must hold at least one message"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = v else {
            return Err(f.err(&at, "must be an object with role and content"));
        };
        let name = |k: &str| format!("{at}.{k}");
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system") | Some("developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(f.err(
                    &name("role"),
                    format!("is '{other}': only system, user and assistant messages are supported (no tool calls)"),
                ))
            }
            None => return Err(f.err(&name("role"), "is required: system, user or assistant")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that only called tools has none; there are no tools here.
            None | Some(Value::Null) if role == Role::Assistant => String::new(),
            Some(Value::Array(parts)) if f.dialect == Dialect::OpenAi => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(f.err(
                                &format!("{at}.content[{j}]"),
                                "is not a text part: only text content is supported",
                            ))
                        }
                    }
                }
                text
            }
            _ => return Err(f.err(&name("content"), "must be a string")),
        };
        if m.get("images")
            .is_some_and(|i| !i.is_null() && i.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(f.err(
                &name("images"),
                "is not supported: the served model reads text only",
            ));
        }
        if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
            return Err(f.err(
                &name("tool_calls"),
                "is not supported: this server offers no tools",
            ));
        }
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

/// The sampling fields both APIs name alike: `temperature` (0 to 2; 0 is greedy), `top_p` (0 to 1),
/// `top_k` (0 is off), `seed`, `repeat_penalty` (Ollama's).
pub fn sampling(f: &Fields<'_>) -> ApiResult<Sampling> {
    Ok(Sampling {
        temperature: f.number("temperature", 0.0, 2.0)?.map(|x| x as f32),
        top_p: f.number("top_p", 0.0, 1.0)?.map(|x| x as f32),
        top_k: f.int("top_k", 0, u32::MAX as i64)?.map(|x| x as u32),
        repeat_penalty: match f.number("repeat_penalty", 0.0, 100.0)? {
            Some(x) if x <= 0.0 => return Err(f.err("repeat_penalty", "must be above 0")),
            x => x.map(|x| x as f32),
        },
        seed: f.u64("seed")?,
    })
}

/// Log-probabilities as OpenAI's chat and Ollama both list them: `{token, logprob, bytes, top_logprobs:
/// [{token, logprob, bytes}]}` per generated token.
pub fn logprob_entries(lps: &[TokenLogprob]) -> Vec<Value> {
    let entry = |t: &TopLogprob| json!({"token": String::from_utf8_lossy(&t.bytes), "logprob": t.logprob, "bytes": t.bytes});
    lps.iter()
        .map(|l| {
            let mut e = entry(&l.chosen);
            e["top_logprobs"] = l.top.iter().map(entry).collect();
            e
        })
        .collect()
}

/// `logprobs: true` and `top_logprobs` (0 to 20), as OpenAI's chat and Ollama name them: what
/// `GenerateRequest::logprobs` asks of the provider.
pub fn logprobs_asked(f: &Fields<'_>) -> ApiResult<Option<usize>> {
    let on = f.bool("logprobs")?.unwrap_or(false);
    let top = f.int("top_logprobs", 0, 20)?;
    if top.is_some() && !on {
        return Err(f.err("top_logprobs", "needs \"logprobs\": true"));
    }
    Ok(on.then(|| top.unwrap_or(0) as usize))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now as RFC 3339 in UTC with nanoseconds, as Ollama writes `created_at`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

/// Civil date from days since 1970 (Howard Hinnant's algorithm): one function does not need a date crate.
fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn models_loaded_by_path_are_called_by_their_stem() {
        let p = Path::new;
        assert_eq!(public_name("story", p("/m/story/model.enigma")), "story");
        assert_eq!(
            public_name("/tmp/x/s260K.enigma", p("/tmp/x/s260K.enigma")),
            "s260K"
        );
        assert_eq!(public_name("s260K.enigma", p("s260K.enigma")), "s260K");
        assert_eq!(public_name("/m/story", p("/m/story/model.enigma")), "story");
        assert_eq!(public_name("default", p("")), "default");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_798_761_599, 0), "2026-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn messages_are_checked_and_named() {
        let body = json!({"messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let m = body.as_object().unwrap();
        let got = messages(&Fields::new(m, Dialect::OpenAi)).unwrap();
        assert_eq!(got[1].content, "hi");
        assert_eq!(got[0].role, Role::System);
        for (bad, param) in [
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]}),
                "messages[0].images",
            ),
        ] {
            let e = messages(&Fields::new(bad.as_object().unwrap(), Dialect::OpenAi)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }
}
