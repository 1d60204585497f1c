//! Errors as clients read them: OpenAI's shape on the OpenAI, engine and module routes, Ollama's on `/api/*`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use enigma_modules::{ManagerError, ModuleError};
use serde_json::json;

/// Which shape an error takes: the official clients each parse their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub dialect: Dialect,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            dialect: Dialect::OpenAi,
        }
    }

    /// A 400 naming the field at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// A generation the provider refused or could not run. `prompt_field` is the request field a refused
    /// request is blamed on: the provider's `Invalid` is about what it was given to read (a prompt longer
    /// than the context); the fields the server can check itself were checked before.
    pub fn from_module(e: ModuleError, prompt_field: &str) -> Self {
        match e {
            ModuleError::Invalid(m) => ApiError::invalid(prompt_field, m),
            ModuleError::Busy(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m).code("busy"),
            ModuleError::Unavailable(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string())
            }
            ModuleError::Config(m) | ModuleError::Failed(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        }
    }

    /// A module manager's answer, with its text as the CLI prints it.
    pub fn from_manager(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::Unknown(_) => StatusCode::NOT_FOUND,
            ManagerError::Busy { .. }
            | ManagerError::ProviderBusy { .. }
            | ManagerError::AlreadyLoaded { .. }
            | ManagerError::NotLoaded { .. }
            | ManagerError::Conflict { .. }
            | ManagerError::CapabilityTaken { .. }
            | ManagerError::NeededBy { .. } => StatusCode::CONFLICT,
            ManagerError::NoProvider { .. } | ManagerError::NoHandle { .. } => {
                StatusCode::NOT_IMPLEMENTED
            }
            ManagerError::LoadFailed { .. }
            | ManagerError::UnloadFailed { .. }
            | ManagerError::Save { .. }
            | ManagerError::StateBlocked { .. }
            | ManagerError::StateCorrupt { .. }
            | ManagerError::Registry(_)
            | ManagerError::WrongFamily { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            413 | 400 | 409 | 422 => "invalid_request_error",
            501 => "not_implemented_error",
            503 => "server_overloaded",
            _ => "server_error",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.dialect {
            Dialect::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.error_type(),
                "param": self.param,
                "code": self.code,
            }}),
            // The ollama client raises `ResponseError(body["error"])`: a string.
            Dialect::Ollama => json!({"error": self.message}),
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
