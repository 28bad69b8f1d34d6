//! Shipping's Prometheus series, per destination (`destination` = its configured name, so
//! the label values come from the configuration only).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

#[derive(Clone)]
pub struct ShipMetrics {
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub retries: IntCounterVec,
    pub skipped: IntCounterVec,
    pub lag: GaugeVec,
    pub backlog: IntGaugeVec,
    pub outbox_bytes: IntGauge,
    pub appended: IntCounter,
}

impl ShipMetrics {
    pub fn new(registry: &prometheus::Registry) -> ShipMetrics {
        let d = &["destination"];
        let m = ShipMetrics {
            sent: IntCounterVec::new(
                Opts::new("gannet_ship_sent_total", "Events a destination has taken"),
                d,
            )
            .expect("metric"),
            failed: IntCounterVec::new(
                Opts::new(
                    "gannet_ship_failed_total",
                    "Events a destination refused for good (HTTP 4xx other than 408/429); not retried",
                ),
                d,
            )
            .expect("metric"),
            retries: IntCounterVec::new(
                Opts::new(
                    "gannet_ship_retries_total",
                    "Failed attempts that will be retried (timeouts, 5xx, 429, broker down)",
                ),
                d,
            )
            .expect("metric"),
            skipped: IntCounterVec::new(
                Opts::new(
                    "gannet_ship_skipped_total",
                    "Events a destination never got: skipped when it fell more than max_backlog_bytes behind",
                ),
                d,
            )
            .expect("metric"),
            lag: GaugeVec::new(
                Opts::new(
                    "gannet_ship_lag_seconds",
                    "Age of the oldest event a destination has not taken yet (0 when caught up)",
                ),
                d,
            )
            .expect("metric"),
            backlog: IntGaugeVec::new(
                Opts::new(
                    "gannet_ship_backlog_events",
                    "Events in the outbox a destination has not passed yet",
                ),
                d,
            )
            .expect("metric"),
            outbox_bytes: IntGauge::new(
                "gannet_outbox_bytes",
                "Bytes of events held in the outbox (not yet passed by every destination)",
            )
            .expect("metric"),
            appended: IntCounter::new(
                "gannet_outbox_appended_total",
                "Events appended to the outbox",
            )
            .expect("metric"),
        };
        let _ = registry.register(Box::new(m.sent.clone()));
        let _ = registry.register(Box::new(m.failed.clone()));
        let _ = registry.register(Box::new(m.retries.clone()));
        let _ = registry.register(Box::new(m.skipped.clone()));
        let _ = registry.register(Box::new(m.lag.clone()));
        let _ = registry.register(Box::new(m.backlog.clone()));
        let _ = registry.register(Box::new(m.outbox_bytes.clone()));
        let _ = registry.register(Box::new(m.appended.clone()));
        m
    }

    /// Make every series of `name` exist at 0, so "nothing failed" is visible.
    pub fn preset(&self, name: &str) {
        self.sent.with_label_values(&[name]);
        self.failed.with_label_values(&[name]);
        self.retries.with_label_values(&[name]);
        self.skipped.with_label_values(&[name]);
        self.lag.with_label_values(&[name]);
        self.backlog.with_label_values(&[name]);
    }
}
