//! Request bodies: the one place their bytes are read and checked. A body is parsed as JSON once, then each
//! field the route reads is taken with its type and range checked, so an error names the field at fault
//! (serde's derive would name a line and column).

use crate::error::{ApiError, ApiResult, Dialect};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

/// A JSON object body. A body over the size limit is a 413, anything but a JSON object a 400.
pub struct JsonBody(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let status = r.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "the request body is larger than this server accepts (--max-body)",
                )
                .code("request_too_large")
            } else {
                ApiError::new(status, r.body_text())
            }
        })?;
        parse_object(&bytes).map(JsonBody)
    }
}

/// A body that must be a JSON object; an empty one counts as `{}` (a bodiless POST of a module route).
pub fn parse_object(bytes: &[u8]) -> ApiResult<Map<String, Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")),
    }
}

/// The fields of one request object (or of a nested one, such as Ollama's `options`), named as the client
/// wrote them for errors (`options.temperature`).
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
    pub dialect: Dialect,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>, dialect: Dialect) -> Self {
        Fields {
            map,
            prefix: "",
            dialect,
        }
    }

    pub fn nested(map: &'a Map<String, Value>, prefix: &'a str, dialect: Dialect) -> Self {
        Fields {
            map,
            prefix,
            dialect,
        }
    }

    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn err(&self, key: &str, message: impl std::fmt::Display) -> ApiError {
        let name = self.name(key);
        ApiError::invalid(&name, format!("'{name}' {message}")).dialect(self.dialect)
    }

    /// The value of `key`; JSON `null` counts as absent, as the OpenAI API treats it.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn string(&self, key: &str) -> ApiResult<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "must be a string")),
        }
    }

    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(key, "must be true or false")),
        }
    }

    /// A number within `min..=max`.
    pub fn number(&self, key: &str, min: f64, max: f64) -> ApiResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(self.err(key, format!("must be between {min} and {max}, not {n}"))),
            },
            Some(_) => Err(self.err(key, "must be a number")),
        }
    }

    /// A whole number within `min..=max`.
    pub fn int(&self, key: &str, min: i64, max: i64) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                // A seed may be a full u64; the callers that take those use `u64`.
                _ => Err(self.err(
                    key,
                    format!("must be a whole number from {min} to {max}, not {n}"),
                )),
            },
            Some(_) => Err(self.err(key, "must be a whole number")),
        }
    }

    /// Any unsigned 64-bit number (seeds).
    pub fn u64(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_i64().map(|x| x as u64))
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a whole number, not {n}"))),
            Some(_) => Err(self.err(key, "must be a whole number")),
        }
    }

    /// Stop strings: one string or a list of them (at most `max`, none empty).
    pub fn stop(&self, key: &str, max: usize) -> ApiResult<Vec<String>> {
        let list = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err(key, "must be a string or a list of strings"))?,
            Some(_) => return Err(self.err(key, "must be a string or a list of strings")),
        };
        if list.len() > max {
            return Err(self.err(key, format!("may hold at most {max} strings")));
        }
        if list.iter().any(String::is_empty) {
            return Err(self.err(key, "may not hold an empty string"));
        }
        Ok(list)
    }

    /// A field that is accepted only at its neutral value (`presence_penalty: 0`): anything else is refused
    /// by name rather than silently ignored.
    pub fn refuse_unless(&self, key: &str, neutral: &Value, why: &str) -> ApiResult<()> {
        match self.get(key) {
            Some(v) if !same(v, neutral) => Err(self.err(key, why)),
            _ => Ok(()),
        }
    }

    pub fn object(&self, key: &str) -> ApiResult<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.err(key, "must be an object")),
        }
    }
}

/// JSON equality with numbers compared by value (`0` and `0.0` are the same penalty).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test objects are objects"),
        }
    }

    #[test]
    fn fields_are_checked_by_type_and_range_and_named() {
        let m = obj(json!({"t": 3.5, "s": "x", "n": null, "l": ["a", 1], "k": -1}));
        let f = Fields::new(&m, Dialect::OpenAi);
        assert_eq!(f.number("t", 0.0, 4.0).unwrap(), Some(3.5));
        let e = f.number("t", 0.0, 2.0).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("t"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(f.number("n", 0.0, 1.0).unwrap(), None);
        assert!(f.number("s", 0.0, 1.0).is_err());
        assert_eq!(f.stop("s", 4).unwrap(), vec!["x".to_string()]);
        assert!(f.stop("l", 4).is_err());
        assert!(f.int("k", 0, 10).is_err());
        let o = obj(json!({"temperature": "hot"}));
        let e = Fields::nested(&o, "options.", Dialect::Ollama)
            .number("temperature", 0.0, 2.0)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("options.temperature"));
    }

    #[test]
    fn neutral_values_pass_and_others_are_refused() {
        let m = obj(json!({"p": 0, "q": 0.5}));
        let f = Fields::new(&m, Dialect::OpenAi);
        assert!(f.refuse_unless("p", &json!(0.0), "no").is_ok());
        assert!(f.refuse_unless("q", &json!(0.0), "no").is_err());
        assert!(f.refuse_unless("absent", &json!(0.0), "no").is_ok());
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(parse_object(b"").unwrap().is_empty());
        assert_eq!(
            parse_object(b"{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(parse_object(b"[1]").is_err());
        assert_eq!(parse_object(br#"{"a":1}"#).unwrap().len(), 1);
    }
}
