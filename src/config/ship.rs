//! Configuration of event shipping (`ship/`): the durable outbox (`[outbox]`) and the
//! destinations that read from it (`[[webhook]]`, `[[amqp]]`, `[[jsonl]]`).
//!
//! Owns the TOML model, defaults and the checks that name the key at fault. Opening files or
//! connections is `ship/`'s job.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::ConfigError;

/// Event `type` names a destination may filter on (the `events = [...]` keys).
pub const EVENT_TYPES: &[&str] = &[
    "received",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "dsn",
    "purged",
    "suspended",
    "resumed",
    "flushed",
    "log_access",
    "erased",
    "console",
    "bounce_report",
    "complaint",
    "unsubscribed",
    "inbound_rejected",
    "backoff",
    "suppressed",
    "suppression_changed",
    "anomaly",
];

/// `[outbox]`: where shipped events wait until every destination has taken them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Directory of the outbox segments and cursors; None = `outbox/` in the spool directory.
    pub path: Option<PathBuf>,
    /// A segment file is closed and a new one started past this size (bytes).
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Most events appended with one fdatasync.
    #[serde(default = "default_outbox_batch")]
    pub batch: usize,
    /// Events the outbox's own append may fall behind before intake waits. Destinations never
    /// count here (they read the files); only a stalled disk could reach it.
    #[serde(default = "default_outbox_bound")]
    pub bound: usize,
    /// How long the first event of a commit waits for others to share its fdatasync. Each
    /// commit costs a disk flush (a virtio kick here) and a wake-up of every destination;
    /// waiting a little under load makes them a few per second instead of hundreds. A
    /// finished message's state waits for its event's commit too, so a longer wait means
    /// more mail delivered again after a crash (as the send log's `commit_interval`).
    #[serde(default = "default_outbox_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
}

fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_outbox_batch() -> usize {
    4096
}
fn default_outbox_bound() -> usize {
    1_000_000
}
fn default_outbox_commit_interval() -> Duration {
    Duration::from_millis(10)
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            path: None,
            segment_bytes: default_segment_bytes(),
            batch: default_outbox_batch(),
            bound: default_outbox_bound(),
            commit_interval: default_outbox_commit_interval(),
        }
    }
}

/// What every destination shares: which events it takes and how it retries.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShipFilter {
    /// Event types to ship (`["delivered", "bounced"]`); empty = every type.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only events of this tenant; None = every tenant.
    pub tenant: Option<String>,
}

/// `[[webhook]]`: batched, signed HTTPS POSTs of JSON arrays of events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in metrics, logs and its cursor file; default `webhook-` + the
    /// first 8 hex digits of SHA-256(url). Renaming it starts the endpoint at the end.
    pub name: Option<String>,
    pub url: String,
    /// HMAC-SHA256 key of `X-Gannet-Signature`.
    pub secret: String,
    #[serde(default)]
    pub events: Vec<String>,
    pub tenant: Option<String>,
    /// Most bytes of events this destination may fall behind (0 = no limit, the default:
    /// it loses nothing, and its backlog holds disk until it catches up). Past it, the oldest
    /// events it has not taken are skipped, whole outbox segments at a time, counted in
    /// `gannet_ship_skipped_total` and logged: for a destination that may stay down for long,
    /// so the spool's disk does not fill.
    #[serde(default)]
    pub max_backlog_bytes: u64,
    /// Most events in one POST.
    #[serde(default = "default_webhook_batch")]
    pub batch_size: usize,
    /// How long a batch waits for more events before it is sent anyway.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// One POST's time limit (connect + answer).
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait between retries (exponential from 1 s, with jitter).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// `[[amqp]]`: persistent messages with publisher confirms, one per event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Default `amqp-` + 8 hex digits of SHA-256(url + exchange).
    pub name: Option<String>,
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Exchange to publish to (must exist; "" = the default exchange).
    #[serde(default)]
    pub exchange: String,
    /// Routing key template: `{tenant}`, `{type}`, `{class}`, `{campaign}` are replaced
    /// (empty values become `none`).
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    #[serde(default)]
    pub events: Vec<String>,
    pub tenant: Option<String>,
    /// Most bytes of events this destination may fall behind (0 = no limit, the default:
    /// it loses nothing, and its backlog holds disk until it catches up). Past it, the oldest
    /// events it has not taken are skipped, whole outbox segments at a time, counted in
    /// `gannet_ship_skipped_total` and logged: for a destination that may stay down for long,
    /// so the spool's disk does not fill.
    #[serde(default)]
    pub max_backlog_bytes: u64,
    /// Most events published before waiting for their confirms.
    #[serde(default = "default_amqp_batch")]
    pub batch_size: usize,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// `[[jsonl]]`: one event per line in files under `dir`, rotated hourly and by size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Default `jsonl-` + 8 hex digits of SHA-256(dir).
    pub name: Option<String>,
    pub dir: PathBuf,
    /// File name prefix: the live file is `{prefix}.jsonl`, rotated ones
    /// `{prefix}-YYYYMMDDTHHMMSS-N.jsonl[.zst]`.
    #[serde(default = "default_jsonl_prefix")]
    pub prefix: String,
    /// Rotate when the live file would grow past this many bytes (and at every UTC hour).
    #[serde(default = "default_jsonl_max_bytes")]
    pub max_bytes: u64,
    /// Compress rotated files with zstd (`.jsonl.zst`).
    #[serde(default)]
    pub zstd: bool,
    /// Rotated files older than this are deleted; 0 = keep forever.
    #[serde(default = "default_jsonl_retention", with = "humantime_serde")]
    pub retention: Duration,
    #[serde(default)]
    pub events: Vec<String>,
    pub tenant: Option<String>,
    /// Most bytes of events this destination may fall behind (0 = no limit, the default:
    /// it loses nothing, and its backlog holds disk until it catches up). Past it, the oldest
    /// events it has not taken are skipped, whole outbox segments at a time, counted in
    /// `gannet_ship_skipped_total` and logged: for a destination that may stay down for long,
    /// so the spool's disk does not fill.
    #[serde(default)]
    pub max_backlog_bytes: u64,
}

/// 500 events (~300 KB of JSON at typical event sizes) per POST: each POST costs Gannet a
/// request, a signature and a blocking-thread hop whatever its size, and at 100 events those
/// were about 1% of its CPU under load; a receiver wanting smaller batches sets `batch_size`.
fn default_webhook_batch() -> usize {
    500
}
fn default_amqp_batch() -> usize {
    500
}
fn default_max_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_routing_key() -> String {
    "gannet.{tenant}.{type}".to_string()
}
fn default_jsonl_prefix() -> String {
    "events".to_string()
}
fn default_jsonl_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_jsonl_retention() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
}

impl WebhookConfig {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("webhook-{}", short_hash(&self.url)))
    }
}

impl AmqpConfig {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "amqp-{}",
                short_hash(&format!("{}|{}", self.url, self.exchange))
            )
        })
    }
}

impl JsonlConfig {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("jsonl-{}", short_hash(&self.dir.to_string_lossy())))
    }
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn check_filter(key: &str, events: &[String], tenant: &Option<String>) -> Result<(), ConfigError> {
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(invalid(
                format!("{key}.events"),
                format!(
                    "unknown event type {e:?}; expected some of {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    if tenant.as_deref() == Some("") {
        return Err(invalid(
            format!("{key}.tenant"),
            "expected a tenant name (leave the key out for every tenant)",
        ));
    }
    Ok(())
}

fn check_name(key: &str, name: &str, seen: &mut Vec<String>) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            format!("{key}.name"),
            format!(
                "expected 1-64 letters, digits, '-' or '_', got {name:?} (it names a cursor file)"
            ),
        ));
    }
    if seen.iter().any(|n| n == name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("{name:?} is used by another destination; names must be unique"),
        ));
    }
    seen.push(name.to_string());
    Ok(())
}

/// `max_backlog_bytes`: 0 (no limit) or at least 1 MiB; less is a typo (it counts bytes, not
/// events or megabytes).
fn check_backlog(key: &str, bytes: u64) -> Result<(), ConfigError> {
    if bytes != 0 && bytes < 1 << 20 {
        return Err(invalid(
            format!("{key}.max_backlog_bytes"),
            "expected 0 (no limit) or at least 1048576 (1 MiB)",
        ));
    }
    Ok(())
}

/// Checks of `[outbox]`, `[[webhook]]`, `[[amqp]]` and `[[jsonl]]`.
pub(super) fn validate(c: &super::Config) -> Result<(), ConfigError> {
    if c.outbox.segment_bytes < 4096 {
        return Err(invalid(
            "outbox.segment_bytes".into(),
            "expected at least 4096 bytes",
        ));
    }
    if c.outbox.batch == 0 || c.outbox.bound == 0 {
        return Err(invalid(
            "outbox.batch".into(),
            "batch and bound must be at least 1",
        ));
    }
    if c.outbox.commit_interval > Duration::from_secs(1) {
        return Err(invalid(
            "outbox.commit_interval".into(),
            "expected at most 1s (finished messages wait for their events' commit)",
        ));
    }
    let mut seen = Vec::new();
    for (i, w) in c.webhooks.iter().enumerate() {
        let key = format!("webhook[{i}]");
        check_name(&key, &w.name(), &mut seen)?;
        check_filter(&key, &w.events, &w.tenant)?;
        check_backlog(&key, w.max_backlog_bytes)?;
        if !(w.url.starts_with("https://") || w.url.starts_with("http://"))
            || w.url.contains(char::is_whitespace)
        {
            return Err(invalid(
                format!("{key}.url"),
                format!("expected an https:// (or http://) URL, got {:?}", w.url),
            ));
        }
        if w.secret.len() < 16 {
            return Err(invalid(
                format!("{key}.secret"),
                "expected a secret of at least 16 characters (it keys the HMAC signature)",
            ));
        }
        if w.batch_size == 0 || w.batch_size > 10_000 {
            return Err(invalid(format!("{key}.batch_size"), "expected 1 to 10000"));
        }
        if w.timeout.is_zero() {
            return Err(invalid(format!("{key}.timeout"), "expected more than 0s"));
        }
        if w.max_backoff < Duration::from_secs(1) {
            return Err(invalid(
                format!("{key}.max_backoff"),
                "expected at least 1s",
            ));
        }
    }
    for (i, a) in c.amqp.iter().enumerate() {
        let key = format!("amqp[{i}]");
        check_name(&key, &a.name(), &mut seen)?;
        check_filter(&key, &a.events, &a.tenant)?;
        check_backlog(&key, a.max_backlog_bytes)?;
        if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
            return Err(invalid(
                format!("{key}.url"),
                format!("expected an amqp:// or amqps:// URL, got {:?}", a.url),
            ));
        }
        match a.url.parse::<amq_protocol::uri::AMQPUri>() {
            Err(e) => {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("cannot read the URL: {e}"),
                ));
            }
            Ok(uri) => {
                let mechanism = uri.query.auth_mechanism.unwrap_or_default();
                // What ship/amqp/link.rs answers.
                use amq_protocol::uri::SASLMechanism::{AMQPlain, Plain};
                if !matches!(mechanism, Plain | AMQPlain) {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!(
                            "auth_mechanism={} is not supported; use plain or amqplain",
                            mechanism.name()
                        ),
                    ));
                }
            }
        }
        if a.exchange.len() > 255 {
            return Err(invalid(
                format!("{key}.exchange"),
                "expected at most 255 bytes",
            ));
        }
        if a.routing_key.is_empty() || a.routing_key.len() > 255 {
            return Err(invalid(
                format!("{key}.routing_key"),
                "expected a template of 1 to 255 bytes, e.g. \"gannet.{tenant}.{type}\"",
            ));
        }
        if a.batch_size == 0 || a.batch_size > 100_000 {
            return Err(invalid(format!("{key}.batch_size"), "expected 1 to 100000"));
        }
        if a.max_backoff < Duration::from_secs(1) {
            return Err(invalid(
                format!("{key}.max_backoff"),
                "expected at least 1s",
            ));
        }
    }
    for (i, j) in c.jsonl.iter().enumerate() {
        let key = format!("jsonl[{i}]");
        check_name(&key, &j.name(), &mut seen)?;
        check_filter(&key, &j.events, &j.tenant)?;
        check_backlog(&key, j.max_backlog_bytes)?;
        if j.prefix.is_empty()
            || !j
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(
                format!("{key}.prefix"),
                format!(
                    "expected letters, digits, '-', '_' or '.', got {:?}",
                    j.prefix
                ),
            ));
        }
        if j.max_bytes < 4096 {
            return Err(invalid(
                format!("{key}.max_bytes"),
                "expected at least 4096",
            ));
        }
    }
    Ok(())
}
