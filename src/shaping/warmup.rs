//! IP warm-up: daily message caps for new source addresses, rising day by day.
//!
//! Owns [`Warmup`], the per-(source, provider) daily counters with a snapshot the caller
//! persists so a restart does not reset today's counts. The schedules and calendar days it
//! counts by are `schedule`'s.
//!
//! Never does: choose another source or pool when capped (the scheduler does, per
//! `PoolConfig.on_warmup_cap`), persist anything, or read the clock (callers pass the day).

use super::common::get_or_insert;
use super::schedule::{Day, NO_PROVIDER, WarmupSchedule};
use super::{Shaping, ShapingError};
use crate::config::PoolConfig;
use crate::config::SourceConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Answer of [`Warmup::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmupDecision {
    /// Send; one message was counted.
    Allowed,
    /// Today's cap for this (source, provider) is used up: overflow or defer (per
    /// `PoolConfig.on_warmup_cap`). Nothing was counted.
    Capped { cap: u64 },
}

/// One persisted counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupCounterEntry {
    pub source: String,
    /// Provider block name, or `"default"` for destinations without one.
    pub provider: String,
    pub day: Day,
    pub used: u64,
}

/// All warm-up counters, for persisting across restarts (serde: store it as JSON in sled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupSnapshot {
    pub entries: Vec<WarmupCounterEntry>,
}

/// The name Gannet uses for a source in shaping, logs and metrics: its `name`, or its IP.
pub fn source_name(source: &SourceConfig) -> String {
    source.name.clone().unwrap_or_else(|| source.ip.to_string())
}

#[derive(Debug, Clone)]
struct Plan {
    schedule: Arc<WarmupSchedule>,
    start: Day,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    day: Day,
    used: u64,
}

/// Warm-up plans of all sources and their daily counters. Clone is cheap; clones share counters.
///
/// Locking: a std `Mutex` over the counters (source -> provider -> count). Each section is two
/// hash lookups and an add, never held across `.await`. Sources that are not warming up never
/// take the lock.
#[derive(Clone, Debug)]
pub struct Warmup {
    inner: Arc<WarmupInner>,
}

#[derive(Debug)]
struct WarmupInner {
    plans: HashMap<String, Plan>,
    counters: Mutex<HashMap<String, HashMap<String, Count>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain counters: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Warmup {
    /// Plans for every source of `pools` that names a `warmup` schedule. Errors name the config
    /// key (`pool[i].sources[j].warmup`) when a schedule is unknown or a start date is missing
    /// or malformed.
    pub fn new(shaping: &Shaping, pools: &[PoolConfig]) -> Result<Warmup, ShapingError> {
        let mut plans: HashMap<String, Plan> = HashMap::new();
        let mut schedules: HashMap<&str, Arc<WarmupSchedule>> = HashMap::new();
        for (i, pool) in pools.iter().enumerate() {
            for (j, s) in pool.sources.iter().enumerate() {
                let key = format!("pool[{i}].sources[{j}]");
                let err = |field: &str, message: String| ShapingError::Source {
                    key: format!("{key}.{field}"),
                    message,
                };
                let (name, start) = match (&s.warmup, &s.warmup_start) {
                    (None, None) => continue,
                    (None, Some(_)) => {
                        return Err(err(
                            "warmup",
                            "warmup_start is set but no warmup schedule is named".into(),
                        ));
                    }
                    (Some(_), None) => {
                        return Err(err(
                            "warmup_start",
                            "a warm-up needs its start date, e.g. warmup_start = \"2026-03-01\""
                                .into(),
                        ));
                    }
                    (Some(n), Some(d)) => (n, d),
                };
                let start = Day::parse(start).ok_or_else(|| {
                    err(
                        "warmup_start",
                        format!("invalid date {start:?}: expected YYYY-MM-DD"),
                    )
                })?;
                let schedule = match schedules.get(name.as_str()) {
                    Some(s) => s.clone(),
                    None => {
                        let found = shaping.warmup_schedule(name).ok_or_else(|| {
                            let known: Vec<&str> = shaping.warmup_schedule_names().collect();
                            err(
                                "warmup",
                                format!(
                                    "no warm-up schedule {name:?} in {}; known: {}",
                                    shaping.origin(),
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            )
                        })?;
                        let found = Arc::new(found.clone());
                        schedules.insert(name.as_str(), found.clone());
                        found
                    }
                };
                let plan = Plan { schedule, start };
                let source = source_name(s);
                if let Some(prev) = plans.get(&source)
                    && (prev.schedule.name != plan.schedule.name || prev.start != plan.start)
                {
                    return Err(err(
                        "warmup",
                        format!(
                            "source {source:?} appears in several pools with different warm-up settings"
                        ),
                    ));
                }
                plans.insert(source, plan);
            }
        }
        Ok(Warmup {
            inner: Arc::new(WarmupInner {
                plans,
                counters: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Per source with a plan: (source, days since its start on `today`, days in its
    /// schedule), sorted by source (for `gannet_warmup_day` / `gannet_warmup_schedule_length`).
    pub fn progress(&self, today: Day) -> Vec<(String, i64, usize)> {
        let mut v: Vec<(String, i64, usize)> = self
            .inner
            .plans
            .iter()
            .map(|(s, p)| (s.clone(), today.days_since(p.start), p.schedule.days()))
            .collect();
        v.sort();
        v
    }

    /// How many sources have a warm-up plan (for `gannet_warmup_sources`).
    pub fn warming_sources(&self) -> usize {
        self.inner.plans.len()
    }

    /// Whether `source` has a warm-up plan at all.
    pub fn is_warming(&self, source: &str) -> bool {
        self.inner.plans.contains_key(source)
    }

    /// Today's cap for (source, provider); `None` when not capped.
    pub fn cap(&self, source: &str, provider: Option<&str>, today: Day) -> Option<u64> {
        let plan = self.inner.plans.get(source)?;
        plan.schedule.cap(provider, today.days_since(plan.start))
    }

    /// Count one message from `source` to a destination of `provider` (`None`: no provider
    /// block matched) on `today`, unless today's cap is reached. Counters roll over when the
    /// day changes.
    pub fn try_take(&self, source: &str, provider: Option<&str>, today: Day) -> WarmupDecision {
        let Some(cap) = self.cap(source, provider, today) else {
            return WarmupDecision::Allowed;
        };
        let provider = provider.unwrap_or(NO_PROVIDER);
        let mut counters = lock(&self.inner.counters);
        let per_provider = get_or_insert(&mut counters, source, HashMap::new);
        let count = get_or_insert(per_provider, provider, || Count {
            day: today,
            used: 0,
        });
        if count.day != today {
            *count = Count {
                day: today,
                used: 0,
            };
        }
        if count.used >= cap {
            return WarmupDecision::Capped { cap };
        }
        count.used += 1;
        WarmupDecision::Allowed
    }

    /// Undo one `Allowed` take (the message was not sent after all, e.g. the connection
    /// failed before DATA).
    pub fn give_back(&self, source: &str, provider: Option<&str>, today: Day) {
        let provider = provider.unwrap_or(NO_PROVIDER);
        let mut counters = lock(&self.inner.counters);
        if let Some(c) = counters.get_mut(source).and_then(|p| p.get_mut(provider))
            && c.day == today
        {
            c.used = c.used.saturating_sub(1);
        }
    }

    /// Messages counted today for (source, provider).
    pub fn used(&self, source: &str, provider: Option<&str>, today: Day) -> u64 {
        let provider = provider.unwrap_or(NO_PROVIDER);
        lock(&self.inner.counters)
            .get(source)
            .and_then(|p| p.get(provider))
            .filter(|c| c.day == today)
            .map_or(0, |c| c.used)
    }

    /// All counters, to persist (e.g. every minute and at shutdown).
    pub fn snapshot(&self) -> WarmupSnapshot {
        let counters = lock(&self.inner.counters);
        let mut entries: Vec<WarmupCounterEntry> = counters
            .iter()
            .flat_map(|(source, per)| {
                per.iter().map(move |(provider, c)| WarmupCounterEntry {
                    source: source.clone(),
                    provider: provider.clone(),
                    day: c.day,
                    used: c.used,
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.source, &a.provider).cmp(&(&b.source, &b.provider)));
        WarmupSnapshot { entries }
    }

    /// Merge persisted counters back in (at startup). For each counter the later day wins, and
    /// on the same day the higher count, so restoring never lets a source exceed its cap.
    pub fn restore(&self, snapshot: &WarmupSnapshot) {
        let mut counters = lock(&self.inner.counters);
        for e in &snapshot.entries {
            let c = counters
                .entry(e.source.clone())
                .or_default()
                .entry(e.provider.clone())
                .or_insert(Count {
                    day: e.day,
                    used: 0,
                });
            if e.day > c.day {
                *c = Count {
                    day: e.day,
                    used: e.used,
                };
            } else if e.day == c.day {
                c.used = c.used.max(e.used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const DATA: &str = r#"
[[provider]]
name = "google"
mx = ["*.google.com"]

[warmup.gentle]
default = [10, 20, 40]
google = [5, 10]
"#;

    fn pools(extra: &str) -> Vec<PoolConfig> {
        let text = format!(
            "[[pool]]\nname = \"p\"\nsources = [\n  {{ ip = \"127.0.0.2\", ehlo = \"a\", name = \"warm-a\" {extra} }},\n  {{ ip = \"127.0.0.3\", ehlo = \"b\" }},\n]\n[class.c]\npool = \"p\"\n"
        );
        Config::from_toml(&text, "t").unwrap().pools
    }

    fn warmup() -> (Warmup, Day) {
        let shaping = Shaping::from_toml(DATA, "t").unwrap();
        let w = Warmup::new(
            &shaping,
            &pools(", warmup = \"gentle\", warmup_start = \"2026-03-01\""),
        )
        .unwrap();
        (w, Day::parse("2026-03-01").unwrap())
    }

    #[test]
    fn caps_rise_by_day_and_end_after_the_schedule() {
        let s = Shaping::from_toml(DATA, "t").unwrap();
        assert_eq!(s.warmup_cap("gentle", Some("google"), 0), Some(5));
        assert_eq!(s.warmup_cap("gentle", Some("google"), 1), Some(10));
        assert_eq!(s.warmup_cap("gentle", Some("google"), 2), None); // google list is over
        assert_eq!(s.warmup_cap("gentle", None, 2), Some(40));
        assert_eq!(s.warmup_cap("gentle", Some("yahoo"), 1), Some(20)); // default list
        assert_eq!(s.warmup_cap("gentle", None, -3), Some(10)); // before start: day 0
        assert_eq!(s.warmup_cap("gentle", None, 3), None);
        assert_eq!(s.warmup_cap("nope", None, 0), None);
    }

    #[test]
    fn builtin_standard_schedule_rises() {
        let s = Shaping::builtin();
        let caps: Vec<u64> = (0..60)
            .map_while(|d| s.warmup_cap("standard", None, d))
            .collect();
        assert!(caps.len() >= 14, "{caps:?}");
        assert!(caps.windows(2).all(|w| w[0] <= w[1]), "{caps:?}");
    }

    #[test]
    fn try_take_caps_per_source_provider_and_day() {
        let (w, start) = warmup();
        for _ in 0..5 {
            assert_eq!(
                w.try_take("warm-a", Some("google"), start),
                WarmupDecision::Allowed
            );
        }
        assert_eq!(
            w.try_take("warm-a", Some("google"), start),
            WarmupDecision::Capped { cap: 5 }
        );
        // Another provider has its own counter (default list: 10 on day 0).
        assert_eq!(w.try_take("warm-a", None, start), WarmupDecision::Allowed);
        // A source without a plan is never capped.
        for _ in 0..100 {
            assert_eq!(
                w.try_take("127.0.0.3", Some("google"), start),
                WarmupDecision::Allowed
            );
        }
        assert!(!w.is_warming("127.0.0.3"));
        // Next day: new counter, higher cap.
        let day1 = Day(start.0 + 1);
        for _ in 0..10 {
            assert_eq!(
                w.try_take("warm-a", Some("google"), day1),
                WarmupDecision::Allowed
            );
        }
        assert_eq!(
            w.try_take("warm-a", Some("google"), day1),
            WarmupDecision::Capped { cap: 10 }
        );
        w.give_back("warm-a", Some("google"), day1);
        assert_eq!(w.used("warm-a", Some("google"), day1), 9);
        assert_eq!(
            w.try_take("warm-a", Some("google"), day1),
            WarmupDecision::Allowed
        );
    }

    #[test]
    fn counters_survive_restart_through_snapshot() {
        let (w, start) = warmup();
        for _ in 0..4 {
            w.try_take("warm-a", Some("google"), start);
        }
        let snap = w.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"2026-03-01\""), "{json}");
        let back: WarmupSnapshot = serde_json::from_str(&json).unwrap();

        let (fresh, _) = warmup();
        fresh.restore(&back);
        assert_eq!(fresh.used("warm-a", Some("google"), start), 4);
        assert_eq!(
            fresh.try_take("warm-a", Some("google"), start),
            WarmupDecision::Allowed
        );
        assert_eq!(
            fresh.try_take("warm-a", Some("google"), start),
            WarmupDecision::Capped { cap: 5 }
        );
        // Restoring an older snapshot never lowers a count.
        fresh.restore(&back);
        assert_eq!(fresh.used("warm-a", Some("google"), start), 5);
    }

    #[test]
    fn bad_warmup_config_names_the_key() {
        let shaping = Shaping::from_toml(DATA, "t").unwrap();
        let e = Warmup::new(
            &shaping,
            &pools(", warmup = \"fast\", warmup_start = \"2026-03-01\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pool[0].sources[0].warmup") && e.contains("gentle"),
            "{e}"
        );
        let e = Warmup::new(
            &shaping,
            &pools(", warmup = \"gentle\", warmup_start = \"March\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("warmup_start") && e.contains("YYYY-MM-DD"),
            "{e}"
        );
        let e = Warmup::new(&shaping, &pools(", warmup = \"gentle\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("warmup_start"), "{e}");
        let e = Shaping::from_toml(
            "[warmup.x]\ngogle = [1]\n[[provider]]\nname = \"google\"\nmx = [\"*.google.com\"]\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("warmup.x.gogle"), "{e}");
    }
}
