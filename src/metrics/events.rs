//! The metrics subscriber: counts what the event stream says happened.
//!
//! Owns the mapping from events to the counters stages used to increment themselves:
//! `gannet_accepted_total{listener}` (received), `gannet_recipients_total{outcome, class}`
//! (delivered, deferred, bounced — an expiry counts as `bounced`, as before events existed —,
//! purged), `gannet_delivery_latency_seconds{class}`, `gannet_backoff_transitions_total`,
//! `gannet_bounces_total{category, class, pool, provider}` (bounced, expired, bounce_report),
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

/// Count every event the subscription carries until the bus goes away.
pub async fn run(metrics: Metrics, mut sub: Subscription) {
    while let Some(p) = sub.recv().await {
        let mut last = p.seq;
        count(&metrics, &p);
        while let Some(p) = sub.try_recv() {
            last = p.seq;
            count(&metrics, &p);
        }
        metrics.events_seen.advance(last);
    }
}

fn count(m: &Metrics, p: &Published) {
    let e = &p.event;
    m.events.with_label_values(&[e.type_name()]).inc();
    let outcome = |name: &str| {
        m.outcomes
            .with_label_values(&[name, e.class.as_str()])
            .inc()
    };
    // Category names come from the rules file and providers from shaping.toml: both bounded.
    let bounce = |category: &str, provider: &str| {
        let category = if category.is_empty() {
            "unknown"
        } else {
            category
        };
        m.bounces
            .with_label_values(&[category, e.class.as_str(), e.pool.as_str(), provider])
            .inc();
    };
    match &e.kind {
        EventKind::Received { listener, .. } => {
            m.accepted.with_label_values(&[listener.as_str()]).inc();
        }
        EventKind::Delivered { queue_secs, .. } => {
            outcome("delivered");
            m.delivery_latency
                .with_label_values(&[e.class.as_str()])
                .observe(*queue_secs);
        }
        EventKind::Deferred { .. } => outcome("deferred"),
        EventKind::Bounced {
            category, provider, ..
        }
        | EventKind::Expired {
            category, provider, ..
        } => {
            outcome("bounced");
            bounce(category, provider);
        }
        EventKind::BounceReport { category, .. } => bounce(category, ""),
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
        EventKind::Purged { .. } => outcome("purged"),
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
        | EventKind::InboundRejected { .. } => {}
    }
}
