//! Counters for `/metrics` (Prometheus text format).

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use glare_proto::broker::ErrorCode;

use crate::registry::Stats;

/// The broker's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    pub(crate) fn relayed(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn api_error(&self, err: &crate::registry::ApiError) {
        self.error(err.body.error);
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition text.
    pub(crate) fn render(&self, stats: Stats) -> String {
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "glare_channels_open",
            "gauge",
            "Open channels.",
            stats.channels,
        );
        metric("glare_sessions", "gauge", "Sessions.", stats.sessions);
        metric(
            "glare_list_watchers",
            "gauge",
            "Live list watchers.",
            stats.watchers,
        );
        metric(
            "glare_messages_relayed_total",
            "counter",
            "Messages relayed to a channel.",
            self.messages.load(Ordering::Relaxed),
        );
        metric(
            "glare_bytes_relayed_total",
            "counter",
            "Bytes of relayed messages (compact JSON).",
            self.bytes.load(Ordering::Relaxed),
        );
        metric(
            "glare_resume_replays_total",
            "counter",
            "Messages replayed on resume.",
            stats.replays,
        );
        let _ = writeln!(
            out,
            "# HELP glare_http_errors_total Error answers, by code.\n# TYPE glare_http_errors_total counter"
        );
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "glare_http_errors_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}
