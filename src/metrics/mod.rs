//! Prometheus metrics: one registry per running instance, handed to each stage as a cheap
//! handle (no process-wide statics, so tests can run several instances in one process).
//!
//! Owns the metric definitions (all prefixed `gannet_`); stages only increment the ones about
//! their own state (queue length, connections, limiter refusals). Counters of *facts*
//! (accepted, outcomes, backoff transitions) are fed by the [`events`] subscriber only.

pub mod events;

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// All of Gannet's metrics. Clone is cheap (prometheus metrics are `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Messages accepted (durable) per listener.
    pub accepted: IntCounterVec,
    /// Submissions refused, per listener and SMTP code.
    pub rejected: IntCounterVec,
    /// Seconds from end of DATA to the durable 250 (includes the group-commit wait).
    pub accept_latency: Histogram,
    /// Recipients per outcome (delivered, deferred, bounced, expired) and class.
    pub outcomes: IntCounterVec,
    /// Recipients waiting in the queue.
    pub queued_recipients: IntGauge,
    /// Group commits (fdatasync calls) and the messages they covered.
    pub spool_commits: prometheus::IntCounter,
    pub spool_commit_messages: Histogram,
    /// Damaged spool records found at start-up (copied to quarantine, segment kept).
    pub spool_damaged_records: IntGauge,
    /// Open SMTP sessions per listener.
    pub smtp_sessions: IntGaugeVec,
    /// Open outbound connections per site.
    pub outbound_connections: IntGaugeVec,
    /// Seconds from acceptance to delivery, per class.
    pub delivery_latency: HistogramVec,
    /// Backoff state changes (started, extended, ended) per action and rule.
    pub backoff_transitions: IntCounterVec,
    /// Times a limiter said "not now", per reason.
    pub limiter_refusals: IntCounterVec,
    /// Messages that met a source's warm-up cap, per source and what happened (overflow, defer).
    pub warmup_capped: IntCounterVec,
    /// Events counted by the metrics subscriber, per type.
    pub events: IntCounterVec,
    /// Bounced and expired recipients and asynchronous bounce reports, per bounce category,
    /// class, pool and provider (bounded labels: no domain, no address).
    pub bounces: IntCounterVec,
    /// Feedback-loop complaints per class and pool.
    pub complaints: IntCounterVec,
    /// Opt-outs per way in (`one-click`, `mailto`, `api`) and class.
    pub unsubscribes: IntCounterVec,
    /// Sends refused or dropped because the address is suppressed, per stage and reason.
    pub suppressed: IntCounterVec,
    /// Suppression entries added or removed, per change and reason.
    pub suppression_changes: IntCounterVec,
    /// How far the metrics subscriber has counted (for consistent scrapes).
    pub events_seen: Arc<events::EventsSeen>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            accepted: IntCounterVec::new(
                Opts::new(
                    "gannet_accepted_total",
                    "Messages accepted and made durable",
                ),
                &["listener"],
            )
            .expect("metric"),
            rejected: IntCounterVec::new(
                Opts::new("gannet_rejected_total", "Submissions refused"),
                &["listener", "code"],
            )
            .expect("metric"),
            accept_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "gannet_accept_latency_seconds",
                    "End of DATA to durable 250",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                    1.0, 2.0, 5.0,
                ]),
            )
            .expect("metric"),
            outcomes: IntCounterVec::new(
                Opts::new("gannet_recipients_total", "Recipient outcomes"),
                &["outcome", "class"],
            )
            .expect("metric"),
            queued_recipients: IntGauge::new(
                "gannet_queued_recipients",
                "Recipients waiting for delivery",
            )
            .expect("metric"),
            spool_commits: prometheus::IntCounter::new(
                "gannet_spool_commits_total",
                "Group commits (fdatasync) of the spool",
            )
            .expect("metric"),
            spool_commit_messages: Histogram::with_opts(
                HistogramOpts::new(
                    "gannet_spool_commit_messages",
                    "Messages covered by one group commit",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("metric"),
            spool_damaged_records: IntGauge::new(
                "gannet_spool_damaged_records",
                "Damaged spool records found at start-up, copied to quarantine (their segments are kept)",
            )
            .expect("metric"),
            smtp_sessions: IntGaugeVec::new(
                Opts::new("gannet_smtp_sessions", "Open inbound SMTP sessions"),
                &["listener"],
            )
            .expect("metric"),
            outbound_connections: IntGaugeVec::new(
                Opts::new("gannet_outbound_connections", "Open outbound connections"),
                &["site", "source"],
            )
            .expect("metric"),
            delivery_latency: HistogramVec::new(
                HistogramOpts::new("gannet_delivery_latency_seconds", "Acceptance to delivery")
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 22).expect("buckets")),
                &["class"],
            )
            .expect("metric"),
            backoff_transitions: IntCounterVec::new(
                Opts::new("gannet_backoff_transitions_total", "Backoff state changes"),
                &["kind", "action", "rule"],
            )
            .expect("metric"),
            limiter_refusals: IntCounterVec::new(
                Opts::new("gannet_limiter_refusals_total", "Shaping limiter refusals"),
                &["reason"],
            )
            .expect("metric"),
            warmup_capped: IntCounterVec::new(
                Opts::new(
                    "gannet_warmup_capped_total",
                    "Messages over a source's warm-up cap",
                ),
                &["source", "action"],
            )
            .expect("metric"),
            events: IntCounterVec::new(
                Opts::new("gannet_events_total", "Events published, per type"),
                &["type"],
            )
            .expect("metric"),
            bounces: IntCounterVec::new(
                Opts::new(
                    "gannet_bounces_total",
                    "Bounced and expired recipients and bounce reports, per bounce category",
                ),
                &["category", "class", "pool", "provider"],
            )
            .expect("metric"),
            complaints: IntCounterVec::new(
                Opts::new("gannet_complaints_total", "Feedback-loop complaints"),
                &["class", "pool"],
            )
            .expect("metric"),
            unsubscribes: IntCounterVec::new(
                Opts::new("gannet_unsubscribes_total", "Recipient opt-outs"),
                &["via", "class"],
            )
            .expect("metric"),
            suppressed: IntCounterVec::new(
                Opts::new(
                    "gannet_suppressed_total",
                    "Sends refused or dropped for a suppressed address",
                ),
                &["stage", "reason"],
            )
            .expect("metric"),
            suppression_changes: IntCounterVec::new(
                Opts::new(
                    "gannet_suppression_changes_total",
                    "Suppression entries added or removed",
                ),
                &["change", "reason"],
            )
            .expect("metric"),
            events_seen: Arc::new(events::EventsSeen::default()),
            registry,
        };
        for c in [
            Box::new(m.accepted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.rejected.clone()),
            Box::new(m.accept_latency.clone()),
            Box::new(m.outcomes.clone()),
            Box::new(m.queued_recipients.clone()),
            Box::new(m.spool_commits.clone()),
            Box::new(m.spool_commit_messages.clone()),
            Box::new(m.spool_damaged_records.clone()),
            Box::new(m.smtp_sessions.clone()),
            Box::new(m.outbound_connections.clone()),
            Box::new(m.delivery_latency.clone()),
            Box::new(m.backoff_transitions.clone()),
            Box::new(m.limiter_refusals.clone()),
            Box::new(m.warmup_capped.clone()),
            Box::new(m.events.clone()),
            Box::new(m.bounces.clone()),
            Box::new(m.complaints.clone()),
            Box::new(m.unsubscribes.clone()),
            Box::new(m.suppressed.clone()),
            Box::new(m.suppression_changes.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
