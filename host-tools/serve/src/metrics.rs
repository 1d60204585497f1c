//! `/metrics`: Prometheus text, written by hand (a handful of counters and one histogram do not need a
//! metrics framework).

use enigma_modules::capability::EngineLoad;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds of the time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by route (the matched pattern, so ids in paths do not multiply series) and status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Generations whose thread is inside the provider now (a cancelled one counts until it has stopped).
    pub running: AtomicUsize,
    ttft: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn observe_ttft(&self, secs: f64) {
        let mut h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        for (c, le) in h.counts.iter_mut().zip(TTFT_BUCKETS) {
            if secs <= le {
                *c += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The exposition text, with the provider's load (absent when nothing generates).
    pub fn render(&self, load: Option<EngineLoad>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP enigma_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(s, "# TYPE enigma_requests_total counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "enigma_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                route.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |s: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut s,
            "enigma_prompt_tokens_total",
            "Prompt tokens of finished generations.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "enigma_cached_prompt_tokens_total",
            "Of those, tokens reused from a cached prefix.",
            self.cached_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "enigma_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        gauge(
            &mut s,
            "enigma_generations_running",
            "Requests inside the text generator now (this server's count).",
            self.running.load(Ordering::Relaxed),
        );
        let l = load.unwrap_or_default();
        gauge(
            &mut s,
            "enigma_sequences_active",
            "Sequences being prefilled or decoded (the generator's count).",
            l.active,
        );
        gauge(
            &mut s,
            "enigma_sequences_queued",
            "Requests waiting in the generator for room.",
            l.queued,
        );
        gauge(
            &mut s,
            "enigma_kv_blocks_used",
            "KV cache blocks in use, cached prefixes included.",
            l.kv_blocks_used,
        );
        gauge(
            &mut s,
            "enigma_kv_blocks_total",
            "KV cache blocks there are.",
            l.kv_blocks_total,
        );
        let h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(s, "# HELP enigma_time_to_first_token_seconds From a generation request's arrival to its first generated text.");
        let _ = writeln!(s, "# TYPE enigma_time_to_first_token_seconds histogram");
        for (c, le) in h.counts.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(
                s,
                "enigma_time_to_first_token_seconds_bucket{{le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            s,
            "enigma_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(s, "enigma_time_to_first_token_seconds_sum {}", h.sum);
        let _ = writeln!(s, "enigma_time_to_first_token_seconds_count {}", h.count);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_requests_are_labelled() {
        let m = Metrics::default();
        m.observe_ttft(0.02);
        m.observe_ttft(3.0);
        m.count_request("/v1/models", 200);
        m.count_request("/v1/models", 200);
        let t = m.render(None);
        assert!(
            t.contains("enigma_requests_total{route=\"/v1/models\",status=\"200\"} 2"),
            "{t}"
        );
        assert!(t.contains("bucket{le=\"0.01\"} 0"), "{t}");
        assert!(t.contains("bucket{le=\"0.025\"} 1"), "{t}");
        assert!(t.contains("bucket{le=\"5\"} 2"), "{t}");
        assert!(t.contains("bucket{le=\"+Inf\"} 2"), "{t}");
        assert!(t.contains("enigma_sequences_active 0"), "{t}");
    }
}
