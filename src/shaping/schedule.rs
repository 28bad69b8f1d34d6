//! Warm-up schedules as the shaping file states them: [`WarmupSchedule`] (the `[warmup.NAME]`
//! tables: messages per day per provider, one entry per day since a source's `warmup_start`)
//! and [`Day`] (a UTC calendar day). Parsed data only; the counters that apply a schedule are
//! `warmup`'s.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ShapingError;

/// Counter label for destinations that match no provider block.
pub(super) const NO_PROVIDER: &str = "default";

/// A calendar day in UTC, counted from 1970-01-01. Written `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Day(pub i32);

impl Day {
    /// Parse `YYYY-MM-DD`; `None` for anything else (including dates that do not exist).
    pub fn parse(s: &str) -> Option<Day> {
        let s = s.trim();
        let mut parts = s.splitn(3, '-');
        let y: i64 = parts.next()?.parse().ok()?;
        let m: u32 = parts.next()?.parse().ok()?;
        let d: u32 = parts.next()?.parse().ok()?;
        if s.len() != 10 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        let day = Day(i32::try_from(days_from_civil(y, m, d)).ok()?);
        // Round-trip rejects 2026-02-30 and friends.
        (day.civil() == (y, m, d)).then_some(day)
    }

    /// The UTC day that `t` falls on.
    pub fn from_system_time(t: SystemTime) -> Day {
        let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 1,
        };
        Day(secs.div_euclid(86_400) as i32)
    }

    /// Whole days from `start` to `self` (negative if `self` is earlier).
    pub fn days_since(self, start: Day) -> i64 {
        i64::from(self.0) - i64::from(start.0)
    }

    fn civil(self) -> (i64, u32, u32) {
        civil_from_days(i64::from(self.0))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl From<Day> for String {
    fn from(d: Day) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for Day {
    type Error = String;
    fn try_from(s: String) -> Result<Day, String> {
        Day::parse(&s).ok_or_else(|| format!("invalid day {s:?}: expected YYYY-MM-DD"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One warm-up schedule: messages per day, per provider or by default. Entry `n` of a list is
/// the cap on day `n` after `warmup_start` (entry 0 on the start date itself). After the last
/// entry the source is warm: no cap.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupSchedule {
    pub name: String,
    /// Caps for destinations whose provider has no list of its own.
    pub default: Option<Vec<u64>>,
    /// Caps per provider block name.
    pub providers: BTreeMap<String, Vec<u64>>,
}

impl WarmupSchedule {
    /// Cap for `provider` on day `days_since_start` (earlier days get day 0's cap).
    /// `None`: no cap (schedule over, or no list applies).
    pub fn cap(&self, provider: Option<&str>, days_since_start: i64) -> Option<u64> {
        let list = provider
            .and_then(|p| self.providers.get(p))
            .or(self.default.as_ref())?;
        let day = usize::try_from(days_since_start.max(0)).ok()?;
        list.get(day).copied()
    }

    /// Number of days the schedule runs (its longest list).
    pub fn days(&self) -> usize {
        self.providers
            .values()
            .chain(self.default.iter())
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    }

    pub(super) fn from_toml(
        name: &str,
        table: BTreeMap<String, Vec<u64>>,
        origin: &str,
        provider_exists: impl Fn(&str) -> bool,
    ) -> Result<WarmupSchedule, ShapingError> {
        let mut schedule = WarmupSchedule {
            name: name.to_string(),
            default: None,
            providers: BTreeMap::new(),
        };
        for (key, list) in table {
            let full = format!("warmup.{name}.{key}");
            if list.is_empty() {
                return Err(ShapingError::Invalid {
                    origin: origin.to_string(),
                    key: full,
                    message: "expected messages per day for at least one day, e.g. [50, 100, 200]"
                        .into(),
                });
            }
            if key == NO_PROVIDER {
                schedule.default = Some(list);
            } else if provider_exists(&key) {
                schedule.providers.insert(key, list);
            } else {
                return Err(ShapingError::Invalid {
                    origin: origin.to_string(),
                    key: full,
                    message: format!(
                        "no [[provider]] named {key:?}; expected \"default\" or a provider name"
                    ),
                });
            }
        }
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_parsing_and_printing_round_trip() {
        assert_eq!(Day::parse("1970-01-01"), Some(Day(0)));
        assert_eq!(Day::parse("2000-03-01").unwrap().to_string(), "2000-03-01");
        assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert_eq!(Day::parse("2025-02-29"), None);
        assert_eq!(Day::parse("2026-13-01"), None);
        assert_eq!(Day::parse("2026-1-01"), None);
        assert_eq!(Day::parse("yesterday"), None);
        let d = Day::parse("2026-03-01").unwrap();
        assert_eq!(Day::parse("2026-03-31").unwrap().days_since(d), 30);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 3 + 5);
        assert_eq!(Day::from_system_time(t), Day(3));
    }
}
