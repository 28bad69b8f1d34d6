//! The kinds of event and the facts each carries.
//!
//! Serialised with a `type` field (`"delivered"`, `"bounced"`, ...) flattened into the event, so
//! one JSON object per event: the shape the send log, webhooks, AMQP and JSONL all share. Add
//! variants and fields freely (with `#[serde(default)]` on new fields, so stored events stay
//! readable); never rename one.

use serde::{Deserialize, Serialize};

/// TLS of one outbound delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`
    pub cipher: String,
}

/// Whether a delivery status notification went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsnStatus {
    /// Built and durably queued to the original sender.
    Sent,
    /// Could not be built or queued (retried; see `error`).
    Failed,
    /// Kept owed in the spool because `[bounce] hold_dsns` is set.
    Held,
}

/// What happened. Delivery facts (`site`, `mx_host`, `remote_ip`, `source_ip`) are empty when
/// no connection was made (DNS failure, expiry while queued, limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A message was accepted (durable) from a listener or the HTTP API. One per message;
    /// `recipient` is empty, `recipients` counts them.
    Received {
        /// Listener name, `"http"` or `"dsn"`.
        listener: String,
        client_ip: String,
        /// AUTH user or API token name; empty when none.
        #[serde(default)]
        auth: String,
        size: u64,
        recipients: u32,
        /// A/B label given at injection.
        #[serde(default)]
        variant: String,
        /// Published again at start-up, with its first id and time, because it may not have
        /// reached every durable subscriber before Gannet stopped (see `intake::received`).
        /// Receivers that already have this id drop it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    /// The remote MX accepted the recipient.
    Delivered {
        site: String,
        mx_host: String,
        remote_ip: String,
        source_ip: String,
        #[serde(default)]
        tls: Option<TlsInfo>,
        reply: String,
        /// Seconds from acceptance to this delivery.
        #[serde(default)]
        queue_secs: f64,
        /// The shaping provider the site matched (`google`...); empty when none did.
        #[serde(default)]
        provider: String,
    },
    /// A temporary failure; the recipient will be retried.
    Deferred {
        #[serde(default)]
        site: String,
        #[serde(default)]
        mx_host: String,
        #[serde(default)]
        remote_ip: String,
        #[serde(default)]
        source_ip: String,
        reply: String,
        /// Bounce category (bounce rules, e.g. `rate-limited`).
        #[serde(default)]
        category: String,
        /// The shaping (or bounce-rules) provider the site matched, e.g. `google`; empty when
        /// none did. Picks the provider's bounce rules first.
        #[serde(default)]
        provider: String,
        /// Seconds until the next attempt.
        #[serde(default)]
        retry_in_secs: u64,
    },
    /// A permanent failure; the recipient is final.
    Bounced {
        #[serde(default)]
        site: String,
        #[serde(default)]
        mx_host: String,
        #[serde(default)]
        remote_ip: String,
        #[serde(default)]
        source_ip: String,
        reply: String,
        #[serde(default)]
        category: String,
        /// The category is a hard one (the address itself is bad): suppression policy acts on it.
        #[serde(default)]
        hard: bool,
        /// The provider the site matched (see `Deferred`); empty when none did.
        #[serde(default)]
        provider: String,
    },
    /// The recipient stayed deferred past `[delivery] max_age` and was given up (a bounce
    /// with status 5.4.7, reported separately so expiries can be counted).
    Expired {
        reply: String,
        /// Category of the last error (what kept the recipient undeliverable).
        #[serde(default)]
        category: String,
        /// Whether that category is hard.
        #[serde(default)]
        hard: bool,
        #[serde(default)]
        provider: String,
    },
    /// A delivery status notification about this message's failed recipients.
    Dsn {
        status: DsnStatus,
        /// Queue id of the DSN message itself (when sent).
        #[serde(default)]
        dsn_queue_id: String,
        /// How many failed recipients it reports.
        failed: u32,
        #[serde(default)]
        error: String,
    },
    /// An operator removed the recipient from the queue (no DSN).
    Purged { actor: String },
    /// Operator: queued mail matching `filter` is held until resumed.
    Suspended {
        actor: String,
        suspension_id: u64,
        filter: serde_json::Value,
        held: u64,
        /// Why, when not an operator's own decision (e.g. the anomaly that tripped a breaker).
        #[serde(default)]
        reason: String,
    },
    /// Operator: suspensions with `filter` removed.
    Resumed {
        actor: String,
        filter: serde_json::Value,
        removed: u64,
        released: u64,
    },
    /// Operator: every deferred delivery retried now.
    Flushed { actor: String, released: u64 },
    /// Operator: someone read the send log (GDPR accountability: who looked up whom, when).
    /// `recipient` is the person looked up, when the query named one.
    LogAccess {
        /// API token name, `"loopback"` or `"cli"`.
        actor: String,
        /// `events`, `message`, `campaign_stats`, `subject_export`, `erasure`.
        action: String,
        /// The filter as given (personal values in it are stored sealed like any recipient).
        #[serde(default)]
        filter: serde_json::Value,
        /// `json`, `csv`, `ndjson`.
        #[serde(default)]
        format: String,
        /// Rows returned (for streamed exports: rows sent before the stream ended).
        #[serde(default)]
        rows: u64,
    },
    /// Operator: a person was erased (GDPR Art. 17). Recorded without the address: `subject`
    /// is the keyed hash the send log and suppression use.
    Erased {
        actor: String,
        /// Hex of the address's keyed hash.
        subject: String,
        /// Send-log rows that can no longer be read.
        #[serde(default)]
        rows: u64,
    },
    /// The web console: a sign-in (`login`, `login_failed`, `login_locked`), `logout`, or a
    /// step of a four-eyes erasure (`erasure_requested`, `erasure_confirmed`,
    /// `erasure_cancelled`). `recipient` is the person an erasure step is about.
    Console {
        /// The console user (as typed, for a failed sign-in).
        actor: String,
        action: String,
        /// Why a sign-in failed (`password`, `totp`, `locked`, ...) or the request id.
        #[serde(default)]
        detail: String,
        #[serde(default)]
        client_ip: String,
    },
    /// An asynchronous bounce (a DSN or a non-standard bounce mail arriving on the bounces
    /// listener) tied to the original send; `queue_id`/`recipient` are the original's.
    BounceReport {
        /// `dsn` or `non-standard`.
        format: String,
        /// DSN status code, e.g. `5.1.1`.
        status: String,
        #[serde(default)]
        diagnostic: String,
        category: String,
        hard: bool,
        #[serde(default)]
        reporting_mta: String,
    },
    /// A feedback-loop complaint (ARF, RFC 5965) tied to the original send.
    Complaint {
        /// ARF Feedback-Type, e.g. `abuse`.
        feedback_type: String,
        #[serde(default)]
        user_agent: String,
        /// Who sent the report (the FBL provider's reporting domain).
        #[serde(default)]
        reporter: String,
    },
    /// The recipient opted out (RFC 8058 one-click POST, the mailto variant, or the API).
    Unsubscribed {
        /// `one-click`, `mailto`, `api`.
        via: String,
        /// Tenant scope of the opt-out (`*` for all tenants).
        scope: String,
        /// List or campaign scope when the token carries one.
        #[serde(default)]
        list: String,
    },
    /// Mail to a suppressed address was not sent (refused at injection, or dropped from the
    /// queue just before delivery).
    Suppressed {
        /// `smtp`, `http` (refused at injection) or `delivery` (dropped from the queue).
        stage: String,
        /// The suppression's reason (`hard-bounce`, `complaint`, `unsubscribe`, ...).
        reason: String,
        scope: String,
    },
    /// A suppression entry was added or removed (`recipient` is the address).
    SuppressionChanged {
        /// `added`, `removed`, `imported`.
        change: String,
        reason: String,
        scope: String,
        /// API token name, `cli`, `policy` (from a bounce/complaint/unsubscribe event).
        actor: String,
        /// Unix seconds when the entry lapses; 0 = never.
        #[serde(default)]
        expires: u64,
        /// How many entries the change covers: 1, or the number a bulk import wrote
        /// (`change` = `imported`; then `recipient` is empty).
        #[serde(default)]
        entries: u64,
    },
    /// Mail arriving on the bounces listener that created nothing: a forged VERP token, failing
    /// DKIM/SPF/DMARC, no original send found, an auto-reply (`reason` says which).
    InboundRejected {
        reason: String,
        #[serde(default)]
        client_ip: String,
    },
    /// The anomaly detector saw a rate cross a threshold (or fall back under it) for one
    /// (tenant, campaign, pool, provider); `tenant`, `campaign` and `pool` are the common
    /// fields, `recipient` is empty.
    Anomaly {
        /// `hard_bounce_rate`, `complaint_rate`, `deferral_rate`, `unsubscribe_rate`.
        metric: String,
        /// `warning` or `critical`.
        severity: String,
        /// `raised` (crossed, or escalated to `critical`) or `cleared`.
        state: String,
        /// The shaping provider of the window (`other` when none matched, `*` for rates over
        /// every provider: complaints and unsubscribes are not tied to a site).
        provider: String,
        /// The rate over the window (0.05 = 5%).
        rate: f64,
        /// The threshold crossed (for `deferral_rate`: the factor × baseline).
        threshold: f64,
        /// The key's EWMA baseline of this rate before the window.
        baseline: f64,
        /// Events in the rate's denominator over the window.
        sample: u64,
        window_secs: u64,
        /// What the circuit breaker did: `suspended` (see `suspension_id`) or empty.
        #[serde(default)]
        action: String,
        #[serde(default)]
        suspension_id: u64,
    },
    /// A backoff rule changed the state of a (site, source).
    Backoff {
        /// `started`, `extended`, `ended`
        change: String,
        /// `throttle`, `suspend`, `disable-source`
        action: String,
        site: String,
        #[serde(default)]
        source: String,
        rule: String,
        seconds: u64,
    },
}

impl EventKind {
    /// The `type` value in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Received { .. } => "received",
            EventKind::Delivered { .. } => "delivered",
            EventKind::Deferred { .. } => "deferred",
            EventKind::Bounced { .. } => "bounced",
            EventKind::Expired { .. } => "expired",
            EventKind::Dsn { .. } => "dsn",
            EventKind::Purged { .. } => "purged",
            EventKind::Suspended { .. } => "suspended",
            EventKind::Resumed { .. } => "resumed",
            EventKind::Flushed { .. } => "flushed",
            EventKind::Backoff { .. } => "backoff",
            EventKind::LogAccess { .. } => "log_access",
            EventKind::Erased { .. } => "erased",
            EventKind::Console { .. } => "console",
            EventKind::BounceReport { .. } => "bounce_report",
            EventKind::Complaint { .. } => "complaint",
            EventKind::Unsubscribed { .. } => "unsubscribed",
            EventKind::Suppressed { .. } => "suppressed",
            EventKind::SuppressionChanged { .. } => "suppression_changed",
            EventKind::InboundRejected { .. } => "inbound_rejected",
            EventKind::Anomaly { .. } => "anomaly",
        }
    }

    /// The reply text of an outcome, if this kind has one.
    pub fn reply(&self) -> Option<&str> {
        match self {
            EventKind::Delivered { reply, .. }
            | EventKind::Deferred { reply, .. }
            | EventKind::Bounced { reply, .. }
            | EventKind::Expired { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// True for a recipient's final outcome (no further attempt follows).
    pub fn is_final_outcome(&self) -> bool {
        matches!(
            self,
            EventKind::Delivered { .. }
                | EventKind::Bounced { .. }
                | EventKind::Expired { .. }
                | EventKind::Purged { .. }
        )
    }
}
