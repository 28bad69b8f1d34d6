//! The detector's logic, with no clock and no I/O: samples go in with their time, `evaluate`
//! is told the time, and anomalies raised or cleared come out. Tested with synthetic event
//! sequences (`detector_tests.rs`).
//!
//! Per key (tenant, campaign, pool, provider) it keeps a sliding window of counts in buckets
//! (a tenth of the window each) and, per rate, an EWMA baseline fed with each bucket's rate as
//! the bucket leaves the window (so the baseline is what was normal *before* the window).
//!
//! Rates and thresholds (defaults in `[anomaly]`):
//! - hard-bounce rate = hard bounces / (delivered + bounced): warning ≥ 2%, critical ≥ 5%;
//! - deferral rate = deferred / attempts: warning ≥ factor (3) × baseline, and at least
//!   `deferral_min_rate` (a key with no history yet takes `deferral_min_rate` as baseline);
//! - complaint rate = complaints / delivered: warning ≥ 0.1%, critical ≥ 0.3%;
//! - unsubscribe rate = unsubscribes / delivered: warning ≥ 1%, critical ≥ 2%.
//!
//! Complaints and opt-outs are not tied to a site, so they are counted on the key with
//! provider [`ALL_PROVIDERS`] (which also counts every delivery of the tenant, campaign and
//! pool); hard bounces and deferrals on the per-provider keys. A rate counts only once its
//! denominator reaches the metric's minimum sample. An anomaly is raised when a rate crosses
//! warning (raised again when it reaches critical), stays raised while the sample is too small
//! to say otherwise, and clears when the rate is back under warning or the window is empty.

use std::collections::{HashMap, VecDeque};

use crate::config::AnomalyConfig;

/// Provider of the keys complaints and opt-outs are counted on (every provider together).
pub const ALL_PROVIDERS: &str = "*";

/// What a window is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tenant: String,
    pub campaign: String,
    pub pool: String,
    /// Shaping provider name, `other`, or [`ALL_PROVIDERS`].
    pub provider: String,
}

/// One fact the detector counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Delivered,
    /// A permanent failure; `hard` when its category is about the address (bad mailbox...).
    Bounced {
        hard: bool,
    },
    Deferred,
    Complaint,
    Unsubscribed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    HardBounceRate,
    DeferralRate,
    ComplaintRate,
    UnsubscribeRate,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::HardBounceRate,
        Metric::DeferralRate,
        Metric::ComplaintRate,
        Metric::UnsubscribeRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::HardBounceRate => "hard_bounce_rate",
            Metric::DeferralRate => "deferral_rate",
            Metric::ComplaintRate => "complaint_rate",
            Metric::UnsubscribeRate => "unsubscribe_rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Which keys the metric is evaluated on.
    fn applies_to(self, key: &Key) -> bool {
        let all = key.provider == ALL_PROVIDERS;
        match self {
            Metric::HardBounceRate | Metric::DeferralRate => !all,
            Metric::ComplaintRate | Metric::UnsubscribeRate => all,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What `evaluate` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: Key,
    pub metric: Metric,
    pub severity: Severity,
    /// True: raised (or escalated to critical); false: cleared.
    pub raised: bool,
    pub rate: f64,
    pub threshold: f64,
    pub baseline: f64,
    pub sample: u64,
}

/// Counts of one bucket (or a whole window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    delivered: u64,
    bounced: u64,
    hard: u64,
    deferred: u64,
    complaints: u64,
    unsubscribed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.hard += o.hard;
        self.deferred += o.deferred;
        self.complaints += o.complaints;
        self.unsubscribed += o.unsubscribed;
    }

    /// (numerator, denominator) of a metric.
    fn ratio(&self, m: Metric) -> (u64, u64) {
        match m {
            Metric::HardBounceRate => (self.hard, self.delivered + self.bounced),
            Metric::DeferralRate => (self.deferred, self.delivered + self.bounced + self.deferred),
            Metric::ComplaintRate => (self.complaints, self.delivered),
            Metric::UnsubscribeRate => (self.unsubscribed, self.delivered),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

#[derive(Debug, Default)]
struct KeyState {
    /// (bucket number, counts), oldest first.
    buckets: VecDeque<(u64, Counts)>,
    baseline: [Option<f64>; 4],
    active: [Option<Severity>; 4],
}

/// Thresholds and sizes, from `[anomaly]`.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub window_secs: u64,
    pub ewma_alpha: f64,
    pub hard_bounce: (f64, f64, u64),
    pub complaint: (f64, f64, u64),
    pub unsubscribe: (f64, f64, u64),
    pub deferral_factor: f64,
    pub deferral_min_rate: f64,
    pub deferral_min_sample: u64,
    pub max_keys: usize,
}

impl Thresholds {
    pub fn from_config(c: &AnomalyConfig) -> Thresholds {
        Thresholds {
            window_secs: c.window.as_secs().max(1),
            ewma_alpha: c.ewma_alpha,
            hard_bounce: (
                c.hard_bounce_warn,
                c.hard_bounce_critical,
                c.hard_bounce_min_sample,
            ),
            complaint: (
                c.complaint_warn,
                c.complaint_critical,
                c.complaint_min_sample,
            ),
            unsubscribe: (
                c.unsubscribe_warn,
                c.unsubscribe_critical,
                c.unsubscribe_min_sample,
            ),
            deferral_factor: c.deferral_factor,
            deferral_min_rate: c.deferral_min_rate,
            deferral_min_sample: c.deferral_min_sample,
            max_keys: c.max_keys,
        }
    }
}

/// The windows of every key. One owner (the detector task); no lock.
pub struct Detector {
    t: Thresholds,
    bucket_secs: u64,
    keys: HashMap<Key, KeyState>,
    /// Samples of keys beyond `max_keys`, not evaluated.
    pub dropped: u64,
}

/// Buckets per window.
const BUCKETS: u64 = 10;

impl Detector {
    pub fn new(t: Thresholds) -> Detector {
        Detector {
            bucket_secs: (t.window_secs / BUCKETS).max(1),
            t,
            keys: HashMap::new(),
            dropped: 0,
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Count `sample` for `key` at `now` (seconds).
    pub fn observe(&mut self, key: &Key, sample: Sample, now: u64) {
        if !self.keys.contains_key(key) && self.keys.len() >= self.t.max_keys {
            self.dropped += 1;
            return;
        }
        let bucket = now / self.bucket_secs;
        let st = self.keys.entry(key.clone()).or_default();
        if st.buckets.back().is_none_or(|(b, _)| *b < bucket) {
            st.buckets.push_back((bucket, Counts::default()));
        }
        // A late sample (older than the newest bucket) counts in the newest: windows are
        // minutes long, so seconds of lateness do not matter.
        let c = &mut st.buckets.back_mut().expect("pushed above").1;
        match sample {
            Sample::Delivered => c.delivered += 1,
            Sample::Bounced { hard } => {
                c.bounced += 1;
                if hard {
                    c.hard += 1;
                }
            }
            Sample::Deferred => c.deferred += 1,
            Sample::Complaint => c.complaints += 1,
            Sample::Unsubscribed => c.unsubscribed += 1,
        }
    }

    /// Slide every window to `now` (seconds) and report what crossed a threshold or fell back.
    pub fn evaluate(&mut self, now: u64) -> Vec<Change> {
        let oldest = (now / self.bucket_secs).saturating_sub(BUCKETS - 1);
        let mut changes = Vec::new();
        let t = &self.t;
        self.keys.retain(|key, st| {
            // Buckets leaving the window feed the baselines.
            while st.buckets.front().is_some_and(|(b, _)| *b < oldest) {
                let (_, c) = st.buckets.pop_front().expect("checked");
                for m in Metric::ALL {
                    let (num, den) = c.ratio(m);
                    if den > 0 {
                        let r = num as f64 / den as f64;
                        let b = &mut st.baseline[m.index()];
                        *b = Some(match *b {
                            Some(prev) => prev + t.ewma_alpha * (r - prev),
                            None => r,
                        });
                    }
                }
            }
            let mut window = Counts::default();
            for (_, c) in &st.buckets {
                window.add(c);
            }
            for m in Metric::ALL.into_iter().filter(|m| m.applies_to(key)) {
                let (num, den) = window.ratio(m);
                let rate = if den > 0 {
                    num as f64 / den as f64
                } else {
                    0.0
                };
                let baseline = st.baseline[m.index()];
                let (warn, critical, min) = match m {
                    Metric::HardBounceRate => t.hard_bounce,
                    Metric::ComplaintRate => t.complaint,
                    Metric::UnsubscribeRate => t.unsubscribe,
                    Metric::DeferralRate => {
                        let base = baseline.unwrap_or(t.deferral_min_rate);
                        let warn = (t.deferral_factor * base).max(t.deferral_min_rate);
                        // No critical level for deferrals: a provider slowing us down is
                        // not something a campaign breaker fixes.
                        (warn, f64::INFINITY, t.deferral_min_sample)
                    }
                };
                let was = st.active[m.index()];
                let now_sev = if den == 0 {
                    None
                } else if den < min.max(1) {
                    was
                } else if rate >= critical {
                    Some(Severity::Critical)
                } else if rate >= warn {
                    Some(Severity::Warning)
                } else {
                    None
                };
                // Once raised, an anomaly stays at its highest severity until it clears.
                let now_sev = match (was, now_sev) {
                    (Some(Severity::Critical), Some(_)) => Some(Severity::Critical),
                    (_, s) => s,
                };
                let change = |severity: Severity, raised: bool| Change {
                    key: key.clone(),
                    metric: m,
                    severity,
                    raised,
                    rate,
                    threshold: if severity == Severity::Critical {
                        critical
                    } else {
                        warn
                    },
                    baseline: baseline.unwrap_or(0.0),
                    sample: den,
                };
                match (was, now_sev) {
                    (None, Some(s)) => changes.push(change(s, true)),
                    (Some(Severity::Warning), Some(Severity::Critical)) => {
                        changes.push(change(Severity::Critical, true))
                    }
                    (Some(s), None) => changes.push(change(s, false)),
                    _ => {}
                }
                st.active[m.index()] = now_sev;
            }
            // A key with an empty window and nothing active is forgotten (its baseline too):
            // memory stays bounded by the keys with recent traffic.
            let empty = st.buckets.iter().all(|(_, c)| c.is_empty());
            !(empty && st.active.iter().all(Option::is_none))
        });
        changes.sort_by(|a, b| (&a.key, a.metric).cmp(&(&b.key, b.metric)));
        changes
    }
}
