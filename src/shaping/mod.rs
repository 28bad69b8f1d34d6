//! Traffic shaping: how fast, how wide and through which source Gannet may deliver to each
//! destination *site* (a recipient domain's MX set, so `gmail.com` and `googlemail.com` share
//! one budget).
//!
//! Owns four things, all driven by data in `config/shaping.toml` (embedded as the built-in
//! default):
//! - [`Shaping`]: the parsed shaping file. Resolves [`SiteLimits`] for a domain and its MX
//!   hosts (domain override > provider block matched by MX suffix > defaults), holds the backoff
//!   rules and warm-up schedules. Immutable once loaded.
//! - [`BackoffState`]: adaptive backoff. Fed with every 4xx/5xx reply, it matches the backoff
//!   rules and throttles, suspends or disables a source for a site for a while, then lets the
//!   state lapse. Every change is a [`Transition`] the caller logs and counts.
//! - [`Warmup`]: daily caps per (source, provider) for sources that are warming up, with a
//!   snapshot the caller persists across restarts.
//! - [`Limiter`]: the cluster seam for rate and concurrency limits ([`RateLimits`]), with an
//!   in-process default built on `governor`. It applies [`SiteLimits`] and the live
//!   [`BackoffState`] effect; its [`ConnectionPermit`] releases a connection slot on drop.
//!
//! Time: methods that take `now: Instant` expect `tokio::time::Instant::now().into_std()`, the
//! clock [`Limiter::in_process`] reads, so tests under `tokio::time::pause` stay consistent.
//! Names: a source is named by [`source_name`] (its `name`, or its IP) everywhere here; a site
//! by [`site_key`].
//!
//! Never does: DNS, sockets, queue scheduling, persistence or logging. Callers (the scheduler
//! and the delivery client) pass in MX hosts, replies and clock readings, and decide what to do
//! with refusals, transitions and warm-up caps.

mod backoff;
mod common;
mod data;
mod limiter;
mod schedule;
mod warmup;

pub use backoff::{
    Action, BackoffRule, BackoffState, Effect, Hold, Scope, Throttle, Transition, TransitionKind,
};
pub use data::{
    DEFAULT_SHAPING_TOML, LimitSet, Shaping, SiteLimits, normalize_host, provider_matches, site_key,
};
pub use limiter::{ConnectionPermit, InProcessLimits, Limiter, RateLimits, Refusal};
pub use schedule::{Day, WarmupSchedule};
pub use warmup::{Warmup, WarmupCounterEntry, WarmupDecision, WarmupSnapshot, source_name};

/// Why the shaping data could not be used. Every variant names the file (or "built-in") and,
/// where there is one, the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    #[error("cannot read shaping file {path}: {source} (check `shaping.file` in the config)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("shaping file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("shaping file {origin}, key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("config key `{key}`: {message}")]
    Source { key: String, message: String },
}
