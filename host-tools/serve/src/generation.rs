//! The bridge from a request to the text generator: each generation runs on its own blocking thread (the
//! provider's calls block; a batching provider decodes the threads' sequences together) and streams its
//! pieces back through a channel. Dropping the [`Generation`] (a finished response, or a client that went
//! away, even while its prompt is still being read) sets the cancel flag the provider polls.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::http::StatusCode;
use enigma_modules::capability::{
    ChatMessage, GenerateRequest, GenerationStats, TextGeneration, TokenLogprob,
};
use enigma_modules::ModuleError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub enum Msg {
    Piece {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Result<GenerationStats, ModuleError>),
}

/// Sets the flag when dropped, so whoever owns the response owns the sequence's life.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Gives back the queue place and the running count however the thread ends (a provider that panics
/// included).
struct Admitted {
    state: Arc<AppState>,
    running: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.running {
            self.state.metrics.running.fetch_sub(1, Ordering::Relaxed);
        }
        self.state.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A generation under way.
pub struct Generation {
    rx: mpsc::UnboundedReceiver<Msg>,
    _cancel: CancelOnDrop,
}

impl Generation {
    /// The next piece, or the end; a provider thread that died without ending is reported as an error.
    pub async fn next(&mut self) -> Msg {
        self.rx.recv().await.unwrap_or_else(|| {
            Msg::Done(Err(ModuleError::Failed(
                "the text generator stopped without finishing".into(),
            )))
        })
    }

    /// Waits for the first piece (or the end) before anything is sent, so a request the provider refuses
    /// (a prompt longer than the context, no room now) gets its status code rather than a broken stream.
    pub async fn first(&mut self, prompt_field: &str) -> ApiResult<Msg> {
        match self.next().await {
            Msg::Done(Err(e)) => Err(ApiError::from_module(e, prompt_field)),
            m => Ok(m),
        }
    }

    /// All of it: text, log-probabilities, and the stats.
    pub async fn collect(
        mut self,
        prompt_field: &str,
    ) -> ApiResult<(String, Vec<TokenLogprob>, GenerationStats)> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        loop {
            match self.next().await {
                Msg::Piece {
                    text: t,
                    logprobs: l,
                } => {
                    text.push_str(&t);
                    logprobs.extend(l);
                }
                Msg::Done(r) => {
                    let stats = r.map_err(|e| ApiError::from_module(e, prompt_field))?;
                    return Ok((text, logprobs, stats));
                }
            }
        }
    }
}

/// Starts `req` (a chat when `messages` is given) on a thread of its own. Refused with a 503 when
/// `--max-queue` generations are already admitted or the server is shutting down.
pub fn start(
    state: &Arc<AppState>,
    generator: Arc<dyn TextGeneration>,
    messages: Option<Vec<ChatMessage>>,
    req: GenerateRequest,
    started: Instant,
) -> ApiResult<Generation> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    let before = state.admitted.fetch_add(1, Ordering::Relaxed);
    let mut admitted = Admitted {
        state: state.clone(),
        running: false,
    };
    if before >= state.options.max_queue {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is busy: {} requests are being served or queued (--max-queue); retry shortly",
                state.options.max_queue
            ),
        )
        .code("queue_full"));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    state.track(&cancel);
    let (tx, rx) = mpsc::unbounded_channel();
    let flag = cancel.clone();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        st.metrics.running.fetch_add(1, Ordering::Relaxed);
        admitted.running = true;
        let mut first = true;
        // The channel is unbounded so a slow client never stalls the provider's thread (a batching
        // provider would stall every sequence with it); a client that is gone stops the generation.
        let mut on_text = |p: &enigma_modules::capability::Piece<'_>| {
            if first {
                first = false;
                st.metrics.observe_ttft(started.elapsed().as_secs_f64());
            }
            tx.send(Msg::Piece {
                text: p.text.to_string(),
                logprobs: p.logprobs.to_vec(),
            })
            .is_ok()
        };
        let r = match &messages {
            Some(m) => generator.chat(m, &req, &flag, &mut on_text),
            None => generator.generate(&req, &flag, &mut on_text),
        };
        if let Ok(s) = &r {
            let m = &st.metrics;
            m.prompt_tokens
                .fetch_add(s.prompt_tokens as u64, Ordering::Relaxed);
            m.cached_tokens
                .fetch_add(s.cached_tokens as u64, Ordering::Relaxed);
            m.generated_tokens
                .fetch_add(s.generated_tokens as u64, Ordering::Relaxed);
        }
        drop(admitted);
        let _ = tx.send(Msg::Done(r));
    });
    Ok(Generation {
        rx,
        _cancel: CancelOnDrop(cancel),
    })
}
