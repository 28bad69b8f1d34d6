//! The detector against synthetic event sequences: time is an argument, so every case is
//! deterministic.

use super::detector::*;
use crate::config::AnomalyConfig;

fn detector() -> Detector {
    // The published defaults: 10-minute window (60 s buckets), 100 / 1000 minimum samples.
    Detector::new(Thresholds::from_config(&AnomalyConfig::default()))
}

fn key(campaign: &str, provider: &str) -> Key {
    Key {
        tenant: "acme".into(),
        campaign: campaign.into(),
        pool: "bulk".into(),
        provider: provider.into(),
    }
}

/// `n` samples, each `sample`, spread over [from, from + secs).
fn feed(d: &mut Detector, k: &Key, sample: Sample, n: u64, from: u64, secs: u64) {
    for i in 0..n {
        d.observe(k, sample, from + i * secs / n.max(1));
    }
}

fn raised(changes: &[Change]) -> Vec<(String, Metric, Severity)> {
    changes
        .iter()
        .filter(|c| c.raised)
        .map(|c| (c.key.campaign.clone(), c.metric, c.severity))
        .collect()
}

#[test]
fn one_bounce_in_three_messages_trips_nothing() {
    let mut d = detector();
    let k = key("c", "google");
    feed(&mut d, &k, Sample::Delivered, 2, 0, 10);
    d.observe(&k, Sample::Bounced { hard: true }, 5);
    assert_eq!(
        d.evaluate(20),
        vec![],
        "3 outcomes are under the 100 minimum sample"
    );
}

#[test]
fn ten_percent_hard_bounces_is_critical_once_and_clears_when_the_window_empties() {
    let mut d = detector();
    let k = key("spring", "google");
    feed(&mut d, &k, Sample::Delivered, 180, 0, 120);
    feed(&mut d, &k, Sample::Bounced { hard: true }, 20, 0, 120);
    let c = d.evaluate(120);
    assert_eq!(
        raised(&c),
        vec![(
            "spring".to_string(),
            Metric::HardBounceRate,
            Severity::Critical
        )]
    );
    assert_eq!(c[0].sample, 200);
    assert!((c[0].rate - 0.10).abs() < 1e-9);
    assert_eq!(c[0].threshold, 0.05);
    // Still over: nothing new.
    assert_eq!(d.evaluate(180), vec![]);
    // No traffic for a window: cleared, once, and the key is forgotten.
    let c = d.evaluate(120 + 700);
    assert_eq!(c.len(), 1);
    assert!(!c[0].raised);
    assert_eq!(c[0].metric, Metric::HardBounceRate);
    assert_eq!(d.evaluate(2000), vec![]);
    assert_eq!(d.keys(), 0);
}

#[test]
fn soft_bounces_are_not_hard_bounces() {
    let mut d = detector();
    let k = key("c", "yahoo");
    feed(&mut d, &k, Sample::Delivered, 150, 0, 60);
    feed(&mut d, &k, Sample::Bounced { hard: false }, 50, 0, 60);
    assert_eq!(d.evaluate(60), vec![]);
}

#[test]
fn three_percent_warns_then_escalates_to_critical() {
    let mut d = detector();
    let k = key("c", "other");
    feed(&mut d, &k, Sample::Delivered, 97, 0, 60);
    feed(&mut d, &k, Sample::Bounced { hard: true }, 3, 0, 60);
    assert_eq!(
        raised(&d.evaluate(60)),
        vec![("c".to_string(), Metric::HardBounceRate, Severity::Warning)]
    );
    // 10 more hard bounces in the next minute: 13 / 110 ≈ 11.8%.
    feed(&mut d, &k, Sample::Bounced { hard: true }, 10, 60, 60);
    assert_eq!(
        raised(&d.evaluate(120)),
        vec![("c".to_string(), Metric::HardBounceRate, Severity::Critical)]
    );
    // Down to 4% (still over warning): stays critical, nothing reported.
    feed(&mut d, &k, Sample::Delivered, 200, 120, 60);
    assert_eq!(d.evaluate(180), vec![]);
}

#[test]
fn complaints_are_judged_on_the_all_providers_key_only() {
    let mut d = detector();
    let all = key("c", ALL_PROVIDERS);
    let google = key("c", "google");
    feed(&mut d, &google, Sample::Delivered, 1000, 0, 60);
    feed(&mut d, &all, Sample::Delivered, 1000, 0, 60);
    feed(&mut d, &all, Sample::Complaint, 2, 0, 60);
    let c = d.evaluate(60);
    assert_eq!(
        raised(&c),
        vec![("c".to_string(), Metric::ComplaintRate, Severity::Warning)],
        "0.2%: over the 0.1% warning, under the 0.3% critical"
    );
    assert_eq!(c[0].key, all, "complaints are judged over every provider");
}

#[test]
fn complaint_rate_warns_at_point_one_percent_and_is_critical_at_point_three() {
    let mut d = detector();
    let all = key("c", ALL_PROVIDERS);
    feed(&mut d, &all, Sample::Delivered, 1000, 0, 60);
    d.observe(&all, Sample::Complaint, 30);
    assert_eq!(
        raised(&d.evaluate(60)),
        vec![("c".to_string(), Metric::ComplaintRate, Severity::Warning)]
    );
    feed(&mut d, &all, Sample::Complaint, 2, 60, 10);
    let c = d.evaluate(70);
    assert_eq!(
        raised(&c),
        vec![("c".to_string(), Metric::ComplaintRate, Severity::Critical)]
    );
    assert_eq!(c[0].key.provider, ALL_PROVIDERS);
}

#[test]
fn deferrals_are_judged_against_the_keys_own_baseline() {
    let mut d = detector();
    let k = key("c", "yahoo");
    // Twenty minutes at 10% deferrals: the baseline learns 10%.
    for minute in 0..20 {
        feed(&mut d, &k, Sample::Delivered, 90, minute * 60, 60);
        feed(&mut d, &k, Sample::Deferred, 10, minute * 60, 60);
        assert_eq!(d.evaluate(minute * 60 + 59), vec![], "minute {minute}");
    }
    // 20% is twice the baseline: not an anomaly (3x is).
    for minute in 20..30 {
        feed(&mut d, &k, Sample::Delivered, 80, minute * 60, 60);
        feed(&mut d, &k, Sample::Deferred, 20, minute * 60, 60);
    }
    assert_eq!(d.evaluate(30 * 60 - 1), vec![]);
    // A provider starting to defer most attempts: 60% within the window.
    for minute in 30..32 {
        feed(&mut d, &k, Sample::Delivered, 20, minute * 60, 60);
        feed(&mut d, &k, Sample::Deferred, 300, minute * 60, 60);
    }
    let c = d.evaluate(32 * 60 - 1);
    assert_eq!(
        raised(&c),
        vec![("c".to_string(), Metric::DeferralRate, Severity::Warning)]
    );
    assert!(c[0].baseline > 0.09 && c[0].baseline < 0.21, "{c:?}");
}

#[test]
fn a_key_without_history_needs_three_times_the_floor() {
    let mut d = detector();
    let k = key("", "other");
    // 10% deferrals from the start (greylisting): under 3 x 5%.
    feed(&mut d, &k, Sample::Delivered, 180, 0, 60);
    feed(&mut d, &k, Sample::Deferred, 20, 0, 60);
    assert_eq!(d.evaluate(60), vec![]);
    feed(&mut d, &k, Sample::Deferred, 100, 60, 30);
    assert_eq!(
        raised(&d.evaluate(90)),
        vec![(String::new(), Metric::DeferralRate, Severity::Warning)]
    );
}

#[test]
fn only_the_offending_key_is_raised() {
    let mut d = detector();
    let bad = key("bad", "google");
    let good = key("good", "google");
    feed(&mut d, &bad, Sample::Delivered, 90, 0, 60);
    feed(&mut d, &bad, Sample::Bounced { hard: true }, 10, 0, 60);
    feed(&mut d, &good, Sample::Delivered, 100, 0, 60);
    d.observe(&good, Sample::Bounced { hard: true }, 10);
    assert_eq!(
        raised(&d.evaluate(60)),
        vec![(
            "bad".to_string(),
            Metric::HardBounceRate,
            Severity::Critical
        )]
    );
}

#[test]
fn keys_beyond_the_limit_are_dropped_and_counted() {
    let mut t = Thresholds::from_config(&AnomalyConfig::default());
    t.max_keys = 2;
    let mut d = Detector::new(t);
    for c in ["a", "b", "c", "d"] {
        d.observe(&key(c, "google"), Sample::Delivered, 0);
    }
    assert_eq!(d.keys(), 2);
    assert_eq!(d.dropped, 2);
}
