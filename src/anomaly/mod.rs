//! The anomaly detector: a subscriber of the event stream that watches hard-bounce,
//! complaint, deferral and unsubscribe rates per (tenant, campaign, pool, provider), and says so
//! when one crosses its threshold.
//!
//! Owns: the detector task (this file), the windows and thresholds ([`detector`], no clock and
//! no I/O), the administrators' alert mail ([`alert`]). An anomaly raised becomes
//! `gannet_anomaly_active{metric, severity, tenant, campaign, pool, provider} 1` (the series is
//! removed when it clears), `gannet_anomalies_total{metric, severity}`, an `anomaly` event (so
//! the send log, webhooks and the log get it) and, when `[anomaly] admins` is set, a mail sent
//! through Gannet itself. With `[anomaly] breaker = true`, a *critical* anomaly of a campaign
//! suspends that campaign (tenant + campaign) through the queue's suspensions, naming the
//! anomaly, until an operator resumes it (`gannet queue resume`, `/api/v1/queues/resume`).
//!
//! The subscription is *lossy* (bounded queue, drops counted in
//! `gannet_events_dropped_total{subscriber="anomaly"}`): rates over minutes barely move when a
//! few events are lost under overload, and a detector must never hold back acceptance or
//! delivery. Never does: change a message, or suspend anything but through [`Breaker`].

pub mod alert;
pub mod detector;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind, Mode, Subscription};
use crate::metrics::Metrics;
use detector::{ALL_PROVIDERS, Change, Detector, Key, Metric, Sample, Severity, Thresholds};

/// Events the detector may have unread before new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 65_536;

/// What the circuit breaker calls to stop a campaign: implemented over the queue's
/// suspensions by `serve`. Returns the suspension's id.
pub trait Breaker: Send + Sync + 'static {
    fn suspend_campaign(&self, tenant: &str, campaign: &str, reason: &str) -> u64;
}

/// Subscribe the detector (before any stage publishes). The task starts with [`run`] once the
/// handles it acts through exist.
pub fn subscribe(bus: &EventBus) -> Subscription {
    bus.subscribe(
        "anomaly",
        Mode::Lossy {
            capacity: QUEUE_CAPACITY,
        },
    )
}

/// What the detector task acts through.
pub struct Handles {
    pub bus: EventBus,
    pub metrics: Metrics,
    /// Shaping provider names: others are `other` (bounded keys and labels).
    pub providers: HashSet<String>,
    pub alerter: Option<alert::Alerter>,
    pub breaker: Option<Arc<dyn Breaker>>,
}

/// The alert mail settings from `[anomaly]`, or None when no admin is configured.
pub fn alerter(
    config: &Config,
    acceptor: crate::message::SharedAcceptor,
) -> Option<alert::Alerter> {
    let a = &config.anomaly;
    if a.admins.is_empty() {
        return None;
    }
    let class = a.alert_class.clone().or_else(|| {
        config
            .classes
            .contains_key("transactional")
            .then(|| "transactional".to_string())
    });
    Some(alert::Alerter {
        acceptor,
        admins: a.admins.clone(),
        from: a
            .alert_from
            .clone()
            .unwrap_or_else(|| format!("gannet@{}", config.hostname)),
        class,
        hostname: config.hostname.clone(),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Run the detector until `shutdown`: count every event, evaluate every `[anomaly] interval`.
pub async fn run(
    config: Arc<Config>,
    mut sub: Subscription,
    h: Handles,
    shutdown: CancellationToken,
) {
    let window_secs = config.anomaly.window.as_secs().max(1);
    let mut d = Detector::new(Thresholds::from_config(&config.anomaly));
    let dropped_keys = prometheus::IntCounter::new(
        "gannet_anomaly_keys_dropped_total",
        "Events of keys beyond [anomaly] max_keys, not evaluated",
    )
    .expect("metric");
    let keys = prometheus::IntGauge::new(
        "gannet_anomaly_keys",
        "Keys (tenant, campaign, pool, provider) the anomaly detector tracks",
    )
    .expect("metric");
    let _ = h.metrics.registry.register(Box::new(dropped_keys.clone()));
    let _ = h.metrics.registry.register(Box::new(keys.clone()));
    // Every (metric, severity) has a series from the start, so dashboards and alert rules
    // see `0` rather than nothing.
    for m in Metric::ALL {
        for s in [Severity::Warning, Severity::Critical] {
            h.metrics
                .anomalies_raised
                .with_label_values(&[m.as_str(), s.as_str()]);
        }
    }
    let mut tick = tokio::time::interval(config.anomaly.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            p = sub.recv() => {
                let Some(p) = p else { break };
                observe(&mut d, &h.providers, &p.event);
                while let Some(p) = sub.try_recv() {
                    observe(&mut d, &h.providers, &p.event);
                }
            }
            _ = tick.tick() => {
                for c in d.evaluate(now_secs()) {
                    act(&h, &config, &c, window_secs);
                }
                dropped_keys.inc_by(d.dropped.saturating_sub(dropped_keys.get()));
                keys.set(d.keys() as i64);
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Count one event on its key(s).
fn observe(d: &mut Detector, providers: &HashSet<String>, e: &Event) {
    let provider_key = |provider: &str| Key {
        tenant: e.tenant.clone(),
        campaign: e.campaign.clone(),
        pool: e.pool.clone(),
        provider: if providers.contains(provider) {
            provider.to_string()
        } else {
            crate::metrics::labels::OTHER.to_string()
        },
    };
    let all = || Key {
        tenant: e.tenant.clone(),
        campaign: e.campaign.clone(),
        pool: e.pool.clone(),
        provider: ALL_PROVIDERS.to_string(),
    };
    let now = e.time_us / 1_000_000;
    match &e.kind {
        EventKind::Delivered { provider, .. } => {
            d.observe(&provider_key(provider), Sample::Delivered, now);
            d.observe(&all(), Sample::Delivered, now);
        }
        EventKind::Bounced { hard, provider, .. } | EventKind::Expired { hard, provider, .. } => {
            d.observe(
                &provider_key(provider),
                Sample::Bounced { hard: *hard },
                now,
            );
        }
        EventKind::Deferred { provider, .. } => {
            d.observe(&provider_key(provider), Sample::Deferred, now)
        }
        EventKind::Complaint { .. } => d.observe(&all(), Sample::Complaint, now),
        EventKind::Unsubscribed { .. } => d.observe(&all(), Sample::Unsubscribed, now),
        _ => {}
    }
}

/// Gauge, counter, breaker, event, mail: in that order (the event names the suspension).
fn act(h: &Handles, config: &Config, c: &Change, window_secs: u64) {
    let k = &c.key;
    let labels = |s: Severity| {
        [
            c.metric.as_str(),
            s.as_str(),
            k.tenant.as_str(),
            k.campaign.as_str(),
            k.pool.as_str(),
            k.provider.as_str(),
        ]
    };
    let mut suspension = None;
    if c.raised {
        if c.severity == Severity::Critical {
            let _ = h
                .metrics
                .anomaly_active
                .remove_label_values(&labels(Severity::Warning));
        }
        h.metrics
            .anomaly_active
            .with_label_values(&labels(c.severity))
            .set(1);
        h.metrics
            .anomalies_raised
            .with_label_values(&[c.metric.as_str(), c.severity.as_str()])
            .inc();
        if config.anomaly.breaker
            && c.severity == Severity::Critical
            && !k.campaign.is_empty()
            && let Some(b) = &h.breaker
        {
            let reason = format!("anomaly: {}", alert::describe(c, window_secs));
            suspension = Some(b.suspend_campaign(&k.tenant, &k.campaign, &reason));
        }
    } else {
        let _ = h
            .metrics
            .anomaly_active
            .remove_label_values(&labels(c.severity));
    }
    let mut e = Event::new(EventKind::Anomaly {
        metric: c.metric.as_str().to_string(),
        severity: c.severity.as_str().to_string(),
        state: if c.raised { "raised" } else { "cleared" }.to_string(),
        provider: k.provider.clone(),
        rate: c.rate,
        threshold: c.threshold,
        baseline: c.baseline,
        sample: c.sample,
        window_secs,
        action: if suspension.is_some() {
            "suspended".to_string()
        } else {
            String::new()
        },
        suspension_id: suspension.unwrap_or(0),
    });
    e.tenant = k.tenant.clone();
    e.campaign = k.campaign.clone();
    e.pool = k.pool.clone();
    h.bus.publish(e);
    if c.raised
        && let Some(a) = &h.alerter
    {
        tokio::spawn(alert::send(a.clone(), c.clone(), window_secs, suspension));
    }
}

#[cfg(test)]
mod detector_tests;
