//! Prometheus metrics: one registry per running instance, handed to each stage as a cheap
//! handle (no process-wide statics, so tests can run several instances in one process).
//!
//! Owns the metric definitions (all prefixed `gannet_`); stages only increment the ones about
//! their own state (queue length, connections, limiter refusals). Counters of *facts*
//! (accepted, outcomes, backoff transitions) are fed by the [`events`] subscriber only; gauges
//! of *state* read at scrape time (queue depth, suspensions, spool disk, process) are set by
//! [`gauges`] from values the HTTP handler collects through the stages' handles.
//!
//! Label cardinality is bounded whatever is mailed: no domain, site or address is ever a
//! label; `provider` is a shaping provider name or `other`; `tenant`/`campaign` appear only on
//! `gannet_campaign_recipients_total`, for at most `[metrics] top_campaigns` campaigns
//! ([`labels`]).

pub mod events;
pub mod gauges;
pub mod labels;

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
    /// Recipients per outcome (delivered, deferred, bounced, purged), class, pool and provider.
    pub outcomes: IntCounterVec,
    /// Recipient outcomes per source IP (bounded by the pools' configured sources).
    pub source_outcomes: IntCounterVec,
    /// Deliveries per TLS version (`none` for plaintext): the TLS share of deliveries.
    pub delivered_tls: IntCounterVec,
    /// Outcomes per (tenant, campaign) for the top N campaigns, the rest as `other`.
    pub campaign_outcomes: IntCounterVec,
    /// Size of accepted messages.
    pub message_size: Histogram,
    /// Recipients queued, per class, pool, provider and state (set at scrape).
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest queued message, per class, pool and provider (set at scrape).
    pub queue_oldest: IntGaugeVec,
    /// Operator (or circuit-breaker) suspensions in force.
    pub suspensions: IntGauge,
    /// Sites with a backoff rule in force.
    pub backoff_sites: IntGauge,
    /// Sources still on a warm-up schedule (their daily caps apply).
    pub warming_sources: IntGauge,
    /// Per warming source: the day of its schedule it is on, and the schedule's length.
    pub warmup_day: IntGaugeVec,
    pub warmup_schedule_days: IntGaugeVec,
    /// Seconds one SMTP transaction took (MAIL to the end of DATA), per provider.
    pub attempt_duration: HistogramVec,
    /// MX resolutions that failed, per kind (`temporary`, `permanent`).
    pub dns_errors: IntCounterVec,
    /// Bytes the spool directory holds, and bytes free on its file system.
    pub spool_used_bytes: IntGauge,
    pub spool_free_bytes: IntGauge,
    /// Resident memory and open file descriptors of this process.
    pub process_rss_bytes: IntGauge,
    pub process_open_fds: IntGauge,
    /// Heap bytes in live allocations, and bytes the allocator holds free (glibc `mallinfo2`):
    /// tells a growing RSS made of live data from one made of allocator fragmentation.
    pub heap_in_use_bytes: IntGauge,
    pub heap_free_bytes: IntGauge,
    /// 1 while an anomaly is active, per metric, severity and key (series removed on clear:
    /// bounded by the anomalies active at once).
    pub anomaly_active: IntGaugeVec,
    /// Anomalies raised, per metric and severity.
    pub anomalies_raised: IntCounterVec,
    /// Recipients waiting in the queue.
    pub queued_recipients: IntGauge,
    /// Group commits (fdatasync calls) and the messages they covered.
    pub spool_commits: prometheus::IntCounter,
    pub spool_commit_messages: Histogram,
    /// Damaged spool records found at start-up (copied to quarantine, segment kept).
    pub spool_damaged_records: IntGauge,
    /// Recipients of HTTP injection requests held parsed (rendered, in intake) and not yet
    /// answered, and the most held at once since start: a batch is a bounded pipeline, so
    /// this stays near `[inject] concurrency`, not the request's size.
    pub inject_held_recipients: IntGauge,
    pub inject_held_recipients_peak: IntGauge,
    /// Open SMTP sessions per listener.
    pub smtp_sessions: IntGaugeVec,
    /// Message bytes held by a listener's sessions (its `max_inflight_bytes` budget).
    pub smtp_inflight_bytes: IntGaugeVec,
    /// Open outbound connections per provider (shaping provider or `other`) and source.
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
    /// hard (`true`: the address is bad), class, pool and provider (bounded labels: no domain,
    /// no address).
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
                &["outcome", "class", "pool", "provider"],
            )
            .expect("metric"),
            source_outcomes: IntCounterVec::new(
                Opts::new(
                    "gannet_source_recipients_total",
                    "Recipient outcomes per source IP",
                ),
                &["source", "outcome"],
            )
            .expect("metric"),
            delivered_tls: IntCounterVec::new(
                Opts::new(
                    "gannet_delivered_tls_total",
                    "Deliveries per TLS version (none = plaintext)",
                ),
                &["version"],
            )
            .expect("metric"),
            campaign_outcomes: IntCounterVec::new(
                Opts::new(
                    "gannet_campaign_recipients_total",
                    "Recipient outcomes of the top campaigns (the rest as campaign=\"other\")",
                ),
                &["tenant", "campaign", "outcome"],
            )
            .expect("metric"),
            message_size: Histogram::with_opts(
                HistogramOpts::new("gannet_message_size_bytes", "Size of accepted messages")
                    .buckets(prometheus::exponential_buckets(1024.0, 4.0, 9).expect("buckets")),
            )
            .expect("metric"),
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "gannet_queue_recipients",
                    "Recipients queued, per class, pool, provider and state",
                ),
                &["class", "pool", "provider", "state"],
            )
            .expect("metric"),
            queue_oldest: IntGaugeVec::new(
                Opts::new(
                    "gannet_queue_oldest_age_seconds",
                    "Age of the oldest queued message",
                ),
                &["class", "pool", "provider"],
            )
            .expect("metric"),
            suspensions: IntGauge::new(
                "gannet_queue_suspensions",
                "Queue suspensions in force (operator or circuit breaker)",
            )
            .expect("metric"),
            backoff_sites: IntGauge::new(
                "gannet_backoff_active_sites",
                "Sites with a backoff rule in force",
            )
            .expect("metric"),
            warming_sources: IntGauge::new(
                "gannet_warmup_sources",
                "Source IPs still on a warm-up schedule",
            )
            .expect("metric"),
            warmup_day: IntGaugeVec::new(
                Opts::new(
                    "gannet_warmup_day",
                    "Day of its warm-up schedule a source is on (0 = first day)",
                ),
                &["source"],
            )
            .expect("metric"),
            warmup_schedule_days: IntGaugeVec::new(
                Opts::new(
                    "gannet_warmup_schedule_length",
                    "Days in the source's warm-up schedule (progress = day / days)",
                ),
                &["source"],
            )
            .expect("metric"),
            attempt_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gannet_delivery_attempt_seconds",
                    "One SMTP transaction to the MX, MAIL FROM to the reply after DATA",
                )
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).expect("buckets")),
                &["provider"],
            )
            .expect("metric"),
            dns_errors: IntCounterVec::new(
                Opts::new("gannet_dns_errors_total", "MX resolutions that failed"),
                &["kind"],
            )
            .expect("metric"),
            spool_used_bytes: IntGauge::new(
                "gannet_spool_used_bytes",
                "Bytes held in the spool directory",
            )
            .expect("metric"),
            spool_free_bytes: IntGauge::new(
                "gannet_spool_free_bytes",
                "Bytes available to Gannet on the spool's file system",
            )
            .expect("metric"),
            process_rss_bytes: IntGauge::new(
                "gannet_process_resident_memory_bytes",
                "Resident memory of the gannet process",
            )
            .expect("metric"),
            process_open_fds: IntGauge::new(
                "gannet_process_open_fds",
                "Open file descriptors of the gannet process",
            )
            .expect("metric"),
            heap_in_use_bytes: IntGauge::new(
                "gannet_heap_in_use_bytes",
                "Heap bytes in live allocations (malloc'd and not freed, incl. mmapped blocks)",
            )
            .expect("metric"),
            heap_free_bytes: IntGauge::new(
                "gannet_heap_free_bytes",
                "Heap bytes the allocator holds free in its arenas (given back by the trim task)",
            )
            .expect("metric"),
            anomaly_active: IntGaugeVec::new(
                Opts::new(
                    "gannet_anomaly_active",
                    "1 while the anomaly detector sees this rate over its threshold",
                ),
                &["metric", "severity", "tenant", "campaign", "pool", "provider"],
            )
            .expect("metric"),
            anomalies_raised: IntCounterVec::new(
                Opts::new(
                    "gannet_anomalies_total",
                    "Anomalies raised by the detector, per metric and severity",
                ),
                &["metric", "severity"],
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
            inject_held_recipients: IntGauge::new(
                "gannet_inject_held_recipients",
                "Recipients of HTTP injection requests parsed and not yet answered (durable or refused)",
            )
            .expect("metric"),
            inject_held_recipients_peak: IntGauge::new(
                "gannet_inject_held_recipients_peak",
                "Most recipients of HTTP injection requests held parsed at once since start",
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
            smtp_inflight_bytes: IntGaugeVec::new(
                Opts::new(
                    "gannet_smtp_inflight_bytes",
                    "Message bytes a listener's sessions hold (read, not yet answered), against max_inflight_bytes",
                ),
                &["listener"],
            )
            .expect("metric"),
            outbound_connections: IntGaugeVec::new(
                Opts::new("gannet_outbound_connections", "Open outbound connections"),
                &["provider", "source"],
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
                &["category", "hard", "class", "pool", "provider"],
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
            Box::new(m.source_outcomes.clone()),
            Box::new(m.delivered_tls.clone()),
            Box::new(m.campaign_outcomes.clone()),
            Box::new(m.message_size.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.queue_oldest.clone()),
            Box::new(m.suspensions.clone()),
            Box::new(m.backoff_sites.clone()),
            Box::new(m.warming_sources.clone()),
            Box::new(m.warmup_day.clone()),
            Box::new(m.warmup_schedule_days.clone()),
            Box::new(m.attempt_duration.clone()),
            Box::new(m.dns_errors.clone()),
            Box::new(m.spool_used_bytes.clone()),
            Box::new(m.spool_free_bytes.clone()),
            Box::new(m.process_rss_bytes.clone()),
            Box::new(m.process_open_fds.clone()),
            Box::new(m.heap_in_use_bytes.clone()),
            Box::new(m.heap_free_bytes.clone()),
            Box::new(m.anomaly_active.clone()),
            Box::new(m.anomalies_raised.clone()),
            Box::new(m.queued_recipients.clone()),
            Box::new(m.spool_commits.clone()),
            Box::new(m.inject_held_recipients.clone()),
            Box::new(m.inject_held_recipients_peak.clone()),
            Box::new(m.spool_commit_messages.clone()),
            Box::new(m.spool_damaged_records.clone()),
            Box::new(m.smtp_sessions.clone()),
            Box::new(m.smtp_inflight_bytes.clone()),
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

    /// Create the outcome and complaint series of every configured (class, pool) and provider
    /// with value 0, so rates and alert rules have data before the first bounce (Prometheus
    /// advises initialising label sets known in advance).
    pub fn preset(&self, config: &crate::config::Config, providers: &[String]) {
        for kind in ["temporary", "permanent"] {
            self.dns_errors.with_label_values(&[kind]);
        }
        // The TLS share is 1 - plaintext / all: the plaintext series always exists.
        self.delivered_tls.with_label_values(&["none"]);
        for (class, c) in &config.classes {
            for outcome in ["delivered", "deferred", "bounced"] {
                for p in providers.iter().map(String::as_str).chain([labels::OTHER]) {
                    self.outcomes
                        .with_label_values(&[outcome, class, &c.pool, p]);
                }
            }
            self.complaints.with_label_values(&[class, &c.pool]);
            for reason in [
                "suspended",
                "source_disabled",
                "rate_limited",
                "at_capacity",
            ] {
                self.limiter_refusals.with_label_values(&[reason]);
            }
            for via in ["one-click", "mailto", "api"] {
                self.unsubscribes.with_label_values(&[via, class]);
            }
        }
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
