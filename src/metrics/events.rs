//! The metrics subscriber: counts what the event stream says happened.
//!
//! Owns the mapping from events to the counters stages used to increment themselves:
//! `gannet_accepted_total{listener}` and `gannet_message_size_bytes` (received),
//! `gannet_recipients_total{outcome, class, pool, provider}` (delivered, deferred, bounced —
//! an expiry counts as `bounced`, as before events existed —, purged),
//! `gannet_source_recipients_total{source, outcome}`, `gannet_delivered_tls_total{version}`,
//! `gannet_campaign_recipients_total{tenant, campaign, outcome}` (bounded by [`Labels`]),
//! `gannet_delivery_latency_seconds{class}`, `gannet_backoff_transitions_total`,
//! `gannet_bounces_total{category, hard, class, pool, provider}` (bounced, expired, bounce_report),
//! `gannet_complaints_total`, `gannet_unsubscribes_total`, `gannet_suppressed_total`,
//! `gannet_suppression_changes_total` and `gannet_events_total{type}`. Registered lossless by `serve`: the counters agree with the
//! outcome log line for line.
//!
//! A scrape sees every event published before it: [`EventsSeen`] records the highest `seq`
//! counted, and `/metrics` waits (briefly) until the subscriber has caught up with the bus.
//! Never does: log, or read anything but events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Metrics;
use super::labels::Labels;
use crate::events::{EventKind, Published, Subscription};

/// How far the metrics subscriber has counted (highest `seq`), and a wake-up for waiters.
#[derive(Default)]
pub struct EventsSeen {
    through: AtomicU64,
    progress: Notify,
}

impl EventsSeen {
    /// Highest event `seq` reflected in the counters.
    pub fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    fn advance(&self, seq: u64) {
        self.through.fetch_max(seq, Ordering::AcqRel);
        self.progress.notify_waiters();
    }

    /// Wait until every event up to `seq` is counted, or `limit` has passed (a scrape must
    /// answer even when the subscriber is stuck). Returns whether it caught up.
    pub async fn wait_for(&self, seq: u64, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.progress.notified();
                if self.through() >= seq {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Count every event the subscription carries until the bus goes away, with every provider
/// `other` and no campaign series (see [`run_with`]).
pub async fn run(metrics: Metrics, sub: Subscription) {
    run_with(metrics, sub, Labels::new([], 0, 0)).await
}

/// Count every event the subscription carries until the bus goes away; `labels` bounds the
/// provider and campaign label values.
pub async fn run_with(metrics: Metrics, mut sub: Subscription, mut labels: Labels) {
    while let Some(p) = sub.recv().await {
        let mut last = p.seq;
        count(&metrics, &mut labels, &p);
        while let Some(p) = sub.try_recv() {
            last = p.seq;
            count(&metrics, &mut labels, &p);
        }
        metrics.events_seen.advance(last);
    }
}

fn count(m: &Metrics, labels: &mut Labels, p: &Published) {
    let e = &p.event;
    m.events.with_label_values(&[e.type_name()]).inc();
    let pool = if e.pool.is_empty() {
        "none"
    } else {
        e.pool.as_str()
    };
    let mut outcome = |name: &str, provider: &str, source: Option<&str>| {
        m.outcomes
            .with_label_values(&[name, e.class.as_str(), pool, labels.provider(provider)])
            .inc();
        if let Some(source) = source {
            let source = if source.is_empty() { "none" } else { source };
            m.source_outcomes.with_label_values(&[source, name]).inc();
        }
        let (named, freed) = labels.campaign(&e.tenant, &e.campaign, e.time_us / 1_000_000);
        for (t, c) in freed {
            for o in ["delivered", "deferred", "bounced", "purged"] {
                let _ = m.campaign_outcomes.remove_label_values(&[&t, &c, o]);
            }
        }
        if let Some((t, c)) = named {
            m.campaign_outcomes.with_label_values(&[&t, &c, name]).inc();
        }
    };
    // Category names come from the rules file and providers from shaping.toml: both bounded.
    let bounce = |category: &str, hard: bool, provider: &str| {
        let category = if category.is_empty() {
            "unknown"
        } else {
            category
        };
        let hard = if hard { "true" } else { "false" };
        m.bounces
            .with_label_values(&[category, hard, e.class.as_str(), e.pool.as_str(), provider])
            .inc();
    };
    match &e.kind {
        // A replay at start-up is a message accepted before the restart, counted then.
        EventKind::Received { replayed: true, .. } => {}
        EventKind::Received { listener, size, .. } => {
            m.accepted.with_label_values(&[listener.as_str()]).inc();
            m.message_size.observe(*size as f64);
        }
        EventKind::Delivered {
            queue_secs,
            provider,
            source_ip,
            tls,
            ..
        } => {
            outcome("delivered", provider, Some(source_ip));
            m.delivered_tls
                .with_label_values(&[tls.as_ref().map_or("none", |t| t.version.as_str())])
                .inc();
            m.delivery_latency
                .with_label_values(&[e.class.as_str()])
                .observe(*queue_secs);
        }
        EventKind::Deferred {
            provider,
            source_ip,
            ..
        } => outcome("deferred", provider, Some(source_ip)),
        EventKind::Bounced {
            category,
            hard,
            provider,
            source_ip,
            ..
        } => {
            outcome("bounced", provider, Some(source_ip));
            bounce(category, *hard, labels.provider(provider));
        }
        EventKind::Expired {
            category,
            hard,
            provider,
            ..
        } => {
            outcome("bounced", provider, None);
            bounce(category, *hard, labels.provider(provider));
        }
        EventKind::BounceReport { category, hard, .. } => {
            bounce(category, *hard, super::labels::OTHER)
        }
        EventKind::Complaint { .. } => {
            m.complaints
                .with_label_values(&[e.class.as_str(), e.pool.as_str()])
                .inc();
        }
        EventKind::Unsubscribed { via, .. } => {
            m.unsubscribes
                .with_label_values(&[via.as_str(), e.class.as_str()])
                .inc();
        }
        EventKind::Suppressed { stage, reason, .. } => {
            m.suppressed
                .with_label_values(&[stage.as_str(), reason.as_str()])
                .inc();
        }
        EventKind::SuppressionChanged { change, reason, .. } => {
            m.suppression_changes
                .with_label_values(&[change.as_str(), reason.as_str()])
                .inc();
        }
        EventKind::Purged { .. } => outcome("purged", "", None),
        EventKind::Backoff {
            change,
            action,
            rule,
            ..
        } => {
            m.backoff_transitions
                .with_label_values(&[change.as_str(), action.as_str(), rule.as_str()])
                .inc();
        }
        EventKind::Dsn { .. }
        | EventKind::Suspended { .. }
        | EventKind::Resumed { .. }
        | EventKind::Flushed { .. }
        | EventKind::LogAccess { .. }
        | EventKind::Erased { .. }
        | EventKind::Console { .. }
        | EventKind::InboundRejected { .. }
        | EventKind::Anomaly { .. } => {}
    }
}
