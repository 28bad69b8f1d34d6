//! Adaptive backoff: reply patterns that slow down, pause or reroute delivery to a site.
//!
//! Owns the compiled [`BackoffRule`]s (from the `[[backoff]]` tables of the shaping file) and
//! [`BackoffState`], the live set of throttles, suspensions and disabled sources, each with an
//! end time. The delivery client feeds every reply to [`BackoffState::on_reply`]; the limiter and
//! the scheduler read [`BackoffState::effective`]. States end by themselves at their end time:
//! `effective` ignores ended states at once, and [`BackoffState::expire`] removes them and reports
//! each as a [`Transition`] so the caller can log "returned to normal".
//!
//! Never does: I/O, logging, sleeping, or reading the clock. Every method takes `now`, so tests
//! drive time with plain `Instant` arithmetic.

use super::ShapingError;
use super::common::parse_duration;
use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Longest state a rule may set; longer would hide a problem rather than wait it out.
const MAX_RULE_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Compiled size limit for one rule's regex, so a pathological pattern is refused at load.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a throttle, suspension or source-disable applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole site, all of our sources.
    Site,
    /// One (site, source) pair.
    Source,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Site => "site",
            Scope::Source => "source",
        }
    }
}

/// How a throttle lowers the limits of its scope. Several fields may be set; each tightens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Throttle {
    /// Multiply the message rates (per second and per hour) by this factor (0 < f < 1).
    /// Unless `max_connections` is set, the connection cap is scaled too (at least 1).
    pub factor: Option<f64>,
    /// Messages per second at most, whatever the configured rate.
    pub max_rate: Option<f64>,
    /// Concurrent connections at most.
    pub max_connections: Option<u32>,
}

impl Throttle {
    /// The throttled messages-per-second limit, given the configured one (`None`: unlimited).
    pub fn apply_rate(&self, base: Option<f64>) -> Option<f64> {
        let scaled = match (base, self.factor) {
            (Some(b), Some(f)) => Some(b * f),
            (b, _) => b,
        };
        min_f64(scaled, self.max_rate)
    }

    /// The throttled messages-per-hour limit (the factor only; `max_rate` is per second).
    pub fn apply_hourly(&self, base: Option<u64>) -> Option<u64> {
        match (base, self.factor) {
            (Some(b), Some(f)) => Some(((b as f64 * f).floor() as u64).max(1)),
            (b, _) => b,
        }
    }

    /// The throttled connection cap, given the configured one (`None`: unlimited).
    pub fn apply_connections(&self, base: Option<u32>) -> Option<u32> {
        match (self.max_connections, base, self.factor) {
            (Some(m), Some(b), _) => Some(m.min(b)),
            (Some(m), None, _) => Some(m),
            (None, Some(b), Some(f)) => Some(((b as f64 * f).floor() as u32).max(1)),
            (None, b, _) => b,
        }
    }

    /// The tighter of two throttles, field by field.
    fn tighter(&self, other: &Throttle) -> Throttle {
        Throttle {
            factor: min_f64(self.factor, other.factor),
            max_rate: min_f64(self.max_rate, other.max_rate),
            max_connections: match (self.max_connections, other.max_connections) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

impl fmt::Display for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(x) = self.factor {
            parts.push(format!("rate x{x}"));
        }
        if let Some(r) = self.max_rate {
            parts.push(format!("at most {r} msg/s"));
        }
        if let Some(c) = self.max_connections {
            parts.push(format!("at most {c} connections"));
        }
        write!(f, "{}", parts.join(", "))
    }
}

fn min_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a backoff rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Lower the limits of the site or of the (site, source) pair.
    Throttle { scope: Scope, throttle: Throttle },
    /// No new connections or messages to the site from any source.
    Suspend,
    /// This source is not used for the site; others still are.
    DisableSource,
    /// Nothing: the reply is not about our sending (e.g. one mailbox is full). Stops later
    /// rules from matching it.
    Ignore,
}

impl Action {
    /// Short label for metrics: `throttle`, `suspend`, `disable_source`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Throttle { .. } => "throttle",
            Action::Suspend => "suspend",
            Action::DisableSource => "disable_source",
            Action::Ignore => "ignore",
        }
    }

    /// What the action applies to.
    pub fn scope(&self) -> Scope {
        match self {
            Action::Throttle { scope, .. } => *scope,
            Action::Suspend | Action::Ignore => Scope::Site,
            Action::DisableSource => Scope::Source,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Throttle { throttle, .. } => write!(f, "throttle ({throttle})"),
            Action::Suspend => f.write_str("suspend"),
            Action::DisableSource => f.write_str("disable source"),
            Action::Ignore => f.write_str("ignore"),
        }
    }
}

/// One compiled `[[backoff]]` rule. A reply matches when every criterion the rule gives
/// matches: the code is one of `codes`, the enhanced code matches one of `enhanced` (exact, or
/// a prefix ending in `*`), and `text` (a case-insensitive regex) is found in the reply text.
#[derive(Debug, Clone)]
pub struct BackoffRule {
    pub name: Arc<str>,
    pub action: Action,
    pub duration: Duration,
    codes: Vec<u16>,
    enhanced: Vec<String>,
    text: Option<Regex>,
}

impl BackoffRule {
    /// Whether a reply matches this rule.
    pub fn matches(&self, code: u16, enhanced: &str, text: &str) -> bool {
        (self.codes.is_empty() || self.codes.contains(&code))
            && (self.enhanced.is_empty() || {
                let e = enhanced.trim();
                self.enhanced.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => e.starts_with(prefix),
                    None => e == p,
                })
            })
            && self.text.as_ref().is_none_or(|r| r.is_match(text))
    }

    pub(super) fn from_toml(
        raw: BackoffRuleToml,
        origin: &str,
        index: usize,
    ) -> Result<BackoffRule, ShapingError> {
        let name = raw.name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(ShapingError::Invalid {
                origin: origin.to_string(),
                key: format!("backoff[{index}].name"),
                message: format!("expected a short name without spaces, got {:?}", raw.name),
            });
        }
        let invalid = |field: &str, message: String| ShapingError::Invalid {
            origin: origin.to_string(),
            key: format!("backoff[{index}].{field}"),
            message: format!("rule {name:?}: {message}"),
        };
        if raw.codes.is_empty() && raw.enhanced.is_empty() && raw.text.is_none() {
            return Err(invalid(
                "codes",
                "a rule needs at least one of `codes`, `enhanced` or `text`, or it would match every reply".into(),
            ));
        }
        if let Some(c) = raw.codes.iter().find(|c| !(400..=599).contains(*c)) {
            return Err(invalid(
                "codes",
                format!("reply code {c} cannot signal backoff; expected 4xx or 5xx codes"),
            ));
        }
        for e in &raw.enhanced {
            let body = e.strip_suffix('*').unwrap_or(e);
            let ok = !body.is_empty()
                && matches!(body.as_bytes()[0], b'4' | b'5')
                && body.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if !ok {
                return Err(invalid(
                    "enhanced",
                    format!(
                        "bad enhanced status code {e:?}: expected e.g. \"4.7.28\" or a prefix like \"5.7.6*\""
                    ),
                ));
            }
        }
        let text = match &raw.text {
            None => None,
            Some(t) => Some(
                RegexBuilder::new(t)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        invalid(
                            "text",
                            format!(
                                "invalid regular expression {t:?}: {} (expected a Rust regex, e.g. \"rate limit|try again later\")",
                                e.to_string().lines().last().unwrap_or("syntax error")
                            ),
                        )
                    })?,
            ),
        };
        let duration = match (&raw.duration, raw.action) {
            (None, ActionName::Ignore) => Duration::ZERO,
            (Some(_), ActionName::Ignore) => {
                return Err(invalid(
                    "duration",
                    "action = \"ignore\" sets no state, so it takes no duration".into(),
                ));
            }
            (None, _) => {
                return Err(invalid(
                    "duration",
                    "missing: how long the action lasts, e.g. duration = \"30m\"".into(),
                ));
            }
            (Some(d), _) => {
                let duration = parse_duration(d).map_err(|m| invalid("duration", m))?;
                if duration.is_zero() || duration > MAX_RULE_DURATION {
                    return Err(invalid(
                        "duration",
                        format!("{d:?} is out of range: expected from 1s up to 7d"),
                    ));
                }
                duration
            }
        };
        let throttle = Throttle {
            factor: raw.factor,
            max_rate: raw.max_rate,
            max_connections: raw.max_connections,
        };
        let has_throttle_keys = throttle != Throttle::default();
        let action = match raw.action {
            ActionName::Throttle => {
                if !has_throttle_keys {
                    return Err(invalid(
                        "action",
                        "a throttle needs `factor`, `max_rate` or `max_connections`".into(),
                    ));
                }
                if let Some(f) = throttle.factor
                    && !(f > 0.0 && f < 1.0)
                {
                    return Err(invalid(
                        "factor",
                        format!(
                            "{f} is out of range: expected a fraction above 0 and below 1, e.g. 0.5"
                        ),
                    ));
                }
                if let Some(r) = throttle.max_rate
                    && !(r.is_finite() && r > 0.0)
                {
                    return Err(invalid(
                        "max_rate",
                        format!("{r} is out of range: expected messages per second above 0"),
                    ));
                }
                if throttle.max_connections == Some(0) {
                    return Err(invalid(
                        "max_connections",
                        "expected at least 1 (use action = \"suspend\" to stop delivery)".into(),
                    ));
                }
                Action::Throttle {
                    scope: match raw.scope.unwrap_or(ScopeName::Site) {
                        ScopeName::Site => Scope::Site,
                        ScopeName::Source => Scope::Source,
                    },
                    throttle,
                }
            }
            ActionName::Suspend | ActionName::DisableSource | ActionName::Ignore => {
                if has_throttle_keys {
                    return Err(invalid(
                        "action",
                        "`factor`, `max_rate` and `max_connections` only apply to action = \"throttle\"".into(),
                    ));
                }
                if raw.scope.is_some() {
                    return Err(invalid(
                        "scope",
                        "`scope` only applies to throttles; \"suspend\" is site-wide and \"disable_source\" is per source".into(),
                    ));
                }
                match raw.action {
                    ActionName::Suspend => Action::Suspend,
                    ActionName::DisableSource => Action::DisableSource,
                    _ => Action::Ignore,
                }
            }
        };
        Ok(BackoffRule {
            name: Arc::from(name),
            action,
            duration,
            codes: raw.codes,
            enhanced: raw.enhanced.iter().map(|e| e.trim().to_string()).collect(),
            text,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActionName {
    Throttle,
    Suspend,
    DisableSource,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ScopeName {
    Site,
    Source,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackoffRuleToml {
    name: String,
    #[serde(default)]
    codes: Vec<u16>,
    #[serde(default)]
    enhanced: Vec<String>,
    text: Option<String>,
    action: ActionName,
    scope: Option<ScopeName>,
    factor: Option<f64>,
    max_rate: Option<f64>,
    max_connections: Option<u32>,
    duration: Option<String>,
}

/// How a backoff state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    /// A rule matched and a new state began.
    Started,
    /// A rule matched while a state of the same kind was active: it now lasts longer or is
    /// tighter.
    Extended,
    /// The state reached its end time (or was cleared): back to normal.
    Ended,
}

impl TransitionKind {
    /// Short label for metrics: `started`, `extended`, `ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Started => "started",
            TransitionKind::Extended => "extended",
            TransitionKind::Ended => "ended",
        }
    }
}

/// One change of backoff state, to be logged and counted (labels: `kind.as_str()`,
/// `action.as_str()`, `rule`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub site: String,
    /// The source the state is about; `None` for site-wide states.
    pub source: Option<String>,
    /// The rule that set the state.
    pub rule: Arc<str>,
    pub action: Action,
    /// When the state ends (for `Ended`: when it ended).
    pub until: Instant,
    /// `Started`/`Extended`: how long from now it lasts. `Ended`: how long it lasted.
    pub duration: Duration,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TransitionKind::Started => "backoff started",
            TransitionKind::Extended => "backoff extended",
            TransitionKind::Ended => "backoff ended, returned to normal",
        };
        write!(f, "{what}: site {}", self.site)?;
        if let Some(s) = &self.source {
            write!(f, " source {s}")?;
        }
        let secs = Duration::from_secs(self.duration.as_secs());
        let d = humantime::format_duration(secs);
        match self.kind {
            TransitionKind::Ended => {
                write!(f, ": {} by rule {} lasted {d}", self.action, self.rule)
            }
            _ => write!(f, ": {} for {d} (rule {})", self.action, self.rule),
        }
    }
}

/// A suspension or disabled source, as seen in an [`Effect`].
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub until: Instant,
    pub rule: Arc<str>,
}

/// What backoff currently imposes on one (site, source). `Effect::default()` is normal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effect {
    /// The site is suspended: no new connections or messages from any source.
    pub suspended: Option<Hold>,
    /// This source must not be used for the site.
    pub source_disabled: Option<Hold>,
    /// Lowered limits for the site as a whole.
    pub site_throttle: Option<Throttle>,
    /// Lowered limits for this (site, source).
    pub source_throttle: Option<Throttle>,
}

impl Effect {
    /// No backoff applies.
    pub fn is_normal(&self) -> bool {
        *self == Effect::default()
    }

    pub fn suspended_until(&self) -> Option<Instant> {
        self.suspended.as_ref().map(|h| h.until)
    }

    pub fn source_disabled_until(&self) -> Option<Instant> {
        self.source_disabled.as_ref().map(|h| h.until)
    }
}

#[derive(Debug, Clone)]
struct Held<T> {
    rule: Arc<str>,
    since: Instant,
    until: Instant,
    value: T,
}

impl<T> Held<T> {
    fn live(&self, now: Instant) -> bool {
        self.until > now
    }
}

#[derive(Debug, Default)]
struct SourceEntry {
    disabled: Option<Held<()>>,
    throttle: Option<Held<Throttle>>,
}

impl SourceEntry {
    fn is_empty(&self) -> bool {
        self.disabled.is_none() && self.throttle.is_none()
    }
}

#[derive(Debug, Default)]
struct SiteEntry {
    suspended: Option<Held<()>>,
    throttle: Option<Held<Throttle>>,
    sources: HashMap<String, SourceEntry>,
}

impl SiteEntry {
    fn is_empty(&self) -> bool {
        self.suspended.is_none() && self.throttle.is_none() && self.sources.is_empty()
    }
}

/// The live backoff state of all sites. Clone is cheap (one `Arc`); all clones share state.
///
/// Locking: one std `Mutex` over a map of sites. Every critical section is a few hash lookups
/// with no `.await` and no regex work inside (rules are matched before locking), so a blocking
/// mutex is cheaper than an async one and cannot be held across a suspension point. The state is
/// small (only sites currently in backoff have entries).
///
/// A cluster would share this state (DESIGN.md); the method set is what a shared backend would
/// implement.
#[derive(Clone)]
pub struct BackoffState {
    inner: Arc<BackoffInner>,
}

struct BackoffInner {
    /// Replaced whole on reload; cloned out (an `Arc` bump) before matching.
    rules: Mutex<Arc<[BackoffRule]>>,
    sites: Mutex<HashMap<String, SiteEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data (no half-done invariants spanning
    // fields), so continuing with it is safe.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for BackoffState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackoffState")
            .field("rules", &lock(&self.inner.rules).len())
            .field("sites", &lock(&self.inner.sites).len())
            .finish()
    }
}

impl BackoffState {
    /// A state with no active backoff, using `rules` (from [`super::Shaping::backoff_rules`]).
    pub fn new(rules: Arc<[BackoffRule]>) -> BackoffState {
        BackoffState {
            inner: Arc::new(BackoffInner {
                rules: Mutex::new(rules),
                sites: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Use new rules from now on (config reload). Active states keep running to their end.
    pub fn set_rules(&self, rules: Arc<[BackoffRule]>) {
        *lock(&self.inner.rules) = rules;
    }

    /// Feed one SMTP reply from `site` received over `source` (the source's name). `enhanced`
    /// is the enhanced status code without the reply code (`"4.7.28"`, or `""` if none) and
    /// `text` the reply text (all lines). Replies below 400 never match.
    ///
    /// Returns a transition when the first matching rule starts a state or makes an active one
    /// longer or tighter; `None` when no rule matches or the state already covers it.
    pub fn on_reply(
        &self,
        site: &str,
        source: &str,
        code: u16,
        enhanced: &str,
        text: &str,
        now: Instant,
    ) -> Option<Transition> {
        if code < 400 {
            return None;
        }
        let rules = lock(&self.inner.rules).clone();
        let rule = rules.iter().find(|r| r.matches(code, enhanced, text))?;
        self.apply(site, source, rule, now)
    }

    /// Apply `rule` to (site, source) as if a reply had matched it. `on_reply` uses this after
    /// matching; it is public for operator actions ("suspend this site for 1h") and tests.
    pub fn apply(
        &self,
        site: &str,
        source: &str,
        rule: &BackoffRule,
        now: Instant,
    ) -> Option<Transition> {
        let until = now + rule.duration;
        let mut sites = lock(&self.inner.sites);
        let entry = sites.entry(site.to_string()).or_default();
        let (kind, until) = match rule.action {
            Action::Ignore => return None,
            Action::Suspend => hold_unit(&mut entry.suspended, rule, now, until)?,
            Action::DisableSource => {
                let src = entry.sources.entry(source.to_string()).or_default();
                hold_unit(&mut src.disabled, rule, now, until)?
            }
            Action::Throttle { scope, throttle } => {
                let slot = match scope {
                    Scope::Site => &mut entry.throttle,
                    Scope::Source => {
                        &mut entry
                            .sources
                            .entry(source.to_string())
                            .or_default()
                            .throttle
                    }
                };
                hold_throttle(slot, rule, throttle, now, until)?
            }
        };
        Some(Transition {
            kind,
            site: site.to_string(),
            source: (rule.action.scope() == Scope::Source).then(|| source.to_string()),
            rule: rule.name.clone(),
            action: rule.action,
            until,
            duration: until.saturating_duration_since(now),
        })
    }

    /// What backoff imposes on (site, source) at `now`. States past their end time are ignored
    /// (and removed by the next [`BackoffState::expire`]).
    pub fn effective(&self, site: &str, source: &str, now: Instant) -> Effect {
        let sites = lock(&self.inner.sites);
        let Some(entry) = sites.get(site) else {
            return Effect::default();
        };
        let hold = |h: &Option<Held<()>>| {
            h.as_ref().filter(|h| h.live(now)).map(|h| Hold {
                until: h.until,
                rule: h.rule.clone(),
            })
        };
        let throttle =
            |h: &Option<Held<Throttle>>| h.as_ref().filter(|h| h.live(now)).map(|h| h.value);
        let src = entry.sources.get(source);
        Effect {
            suspended: hold(&entry.suspended),
            source_disabled: src.and_then(|s| hold(&s.disabled)),
            site_throttle: throttle(&entry.throttle),
            source_throttle: src.and_then(|s| throttle(&s.throttle)),
        }
    }

    /// Remove every state whose end time has passed and report each as an `Ended` transition.
    /// Call it regularly (e.g. when [`BackoffState::next_expiry`] is reached); correctness of
    /// `effective` does not depend on it, only the "returned to normal" log lines do.
    pub fn expire(&self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut sites = lock(&self.inner.sites);
        sites.retain(|site, entry| {
            take_ended(
                &mut entry.suspended,
                now,
                site,
                None,
                |_| Action::Suspend,
                &mut out,
            );
            take_ended(
                &mut entry.throttle,
                now,
                site,
                None,
                |t| Action::Throttle {
                    scope: Scope::Site,
                    throttle: *t,
                },
                &mut out,
            );
            entry.sources.retain(|source, s| {
                take_ended(
                    &mut s.disabled,
                    now,
                    site,
                    Some(source),
                    |_| Action::DisableSource,
                    &mut out,
                );
                take_ended(
                    &mut s.throttle,
                    now,
                    site,
                    Some(source),
                    |t| Action::Throttle {
                        scope: Scope::Source,
                        throttle: *t,
                    },
                    &mut out,
                );
                !s.is_empty()
            });
            !entry.is_empty()
        });
        out
    }

    /// End every state of `site` (or only those of one source) now, e.g. on an operator's
    /// "resume". Returns the `Ended` transitions.
    pub fn clear(&self, site: &str, source: Option<&str>, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut sites = lock(&self.inner.sites);
        let Some(entry) = sites.get_mut(site) else {
            return out;
        };
        let end = |until: &mut Instant| *until = (*until).min(now);
        if source.is_none() {
            if let Some(h) = entry.suspended.as_mut() {
                end(&mut h.until);
            }
            if let Some(h) = entry.throttle.as_mut() {
                end(&mut h.until);
            }
        }
        for (name, s) in entry.sources.iter_mut() {
            if source.is_none_or(|want| want == name) {
                if let Some(h) = s.disabled.as_mut() {
                    end(&mut h.until);
                }
                if let Some(h) = s.throttle.as_mut() {
                    end(&mut h.until);
                }
            }
        }
        drop(sites);
        // Only this site's states are due now, apart from others that ended on their own
        // (reporting those too is correct).
        out.extend(self.expire(now));
        out
    }

    /// The earliest end time of any active state, so the caller can wake up for `expire`.
    pub fn next_expiry(&self) -> Option<Instant> {
        let sites = lock(&self.inner.sites);
        let mut next: Option<Instant> = None;
        let mut see = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for e in sites.values() {
            e.suspended.iter().for_each(|h| see(h.until));
            e.throttle.iter().for_each(|h| see(h.until));
            for s in e.sources.values() {
                s.disabled.iter().for_each(|h| see(h.until));
                s.throttle.iter().for_each(|h| see(h.until));
            }
        }
        next
    }

    /// Number of sites with any state held (live or awaiting `expire`), for a gauge.
    pub fn sites_in_backoff(&self) -> usize {
        lock(&self.inner.sites).len()
    }
}

/// Start or extend a suspension / disabled-source hold. `None` when nothing changes.
fn hold_unit(
    slot: &mut Option<Held<()>>,
    rule: &BackoffRule,
    now: Instant,
    until: Instant,
) -> Option<(TransitionKind, Instant)> {
    match slot {
        Some(h) if h.live(now) => {
            if until <= h.until {
                return None;
            }
            h.until = until;
            h.rule = rule.name.clone();
            Some((TransitionKind::Extended, until))
        }
        _ => {
            *slot = Some(Held {
                rule: rule.name.clone(),
                since: now,
                until,
                value: (),
            });
            Some((TransitionKind::Started, until))
        }
    }
}

/// Start, extend or tighten a throttle. `None` when the active throttle already covers it.
fn hold_throttle(
    slot: &mut Option<Held<Throttle>>,
    rule: &BackoffRule,
    throttle: Throttle,
    now: Instant,
    until: Instant,
) -> Option<(TransitionKind, Instant)> {
    match slot {
        Some(h) if h.live(now) => {
            let tighter = h.value.tighter(&throttle);
            if until <= h.until && tighter == h.value {
                return None;
            }
            h.value = tighter;
            h.until = h.until.max(until);
            h.rule = rule.name.clone();
            Some((TransitionKind::Extended, h.until))
        }
        _ => {
            *slot = Some(Held {
                rule: rule.name.clone(),
                since: now,
                until,
                value: throttle,
            });
            Some((TransitionKind::Started, until))
        }
    }
}

fn take_ended<T>(
    slot: &mut Option<Held<T>>,
    now: Instant,
    site: &str,
    source: Option<&str>,
    action: impl Fn(&T) -> Action,
    out: &mut Vec<Transition>,
) {
    if let Some(h) = slot.take_if(|h| !h.live(now)) {
        out.push(Transition {
            kind: TransitionKind::Ended,
            site: site.to_string(),
            source: source.map(str::to_string),
            rule: h.rule,
            action: action(&h.value),
            until: h.until,
            duration: h.until.saturating_duration_since(h.since),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::Shaping;

    const SITE: &str = "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com";

    fn state() -> BackoffState {
        BackoffState::new(Shaping::builtin().backoff_rules())
    }

    fn rules(text: &str) -> Arc<[BackoffRule]> {
        Shaping::from_toml(text, "t").unwrap().backoff_rules()
    }

    fn err_of(text: &str) -> String {
        Shaping::from_toml(text, "test-shaping.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn google_rate_limited_reply_throttles_the_source() {
        let b = state();
        let now = Instant::now();
        let t = b
            .on_reply(
                SITE,
                "ip-a",
                421,
                "4.7.28",
                "Gmail has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
                now,
            )
            .expect("a transition");
        assert_eq!(t.kind, TransitionKind::Started);
        assert_eq!(t.source.as_deref(), Some("ip-a"));
        assert!(
            matches!(
                t.action,
                Action::Throttle {
                    scope: Scope::Source,
                    ..
                }
            ),
            "{t}"
        );
        let shown = t.to_string();
        assert!(
            shown.contains("backoff started") && shown.contains(SITE),
            "{shown}"
        );
        assert!(shown.contains(&*t.rule), "{shown}");

        let e = b.effective(SITE, "ip-a", now);
        let th = e.source_throttle.expect("throttled");
        assert!(th.apply_rate(Some(10.0)).unwrap() < 10.0);
        assert!(e.suspended.is_none() && e.site_throttle.is_none());
        // Other sources for the same site are untouched.
        assert!(b.effective(SITE, "ip-b", now).is_normal());
    }

    #[test]
    fn throttle_expires_back_to_normal_with_a_transition() {
        let b = state();
        let now = Instant::now();
        let t = b
            .on_reply(SITE, "ip-a", 421, "4.7.28", "... rate limited ...", now)
            .unwrap();
        let end = t.until;
        assert_eq!(b.next_expiry(), Some(end));
        assert!(b.expire(end - Duration::from_secs(1)).is_empty());
        assert!(
            !b.effective(SITE, "ip-a", end - Duration::from_secs(1))
                .is_normal()
        );
        // At the end time the state stops applying even before expire() runs.
        assert!(b.effective(SITE, "ip-a", end).is_normal());
        let ended = b.expire(end);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].kind, TransitionKind::Ended);
        assert_eq!(ended[0].rule, t.rule);
        assert_eq!(ended[0].duration, t.duration);
        assert!(
            ended[0].to_string().contains("returned to normal"),
            "{}",
            ended[0]
        );
        assert_eq!(b.sites_in_backoff(), 0);
        assert_eq!(b.next_expiry(), None);
        assert!(b.expire(end + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn repeated_match_extends_once_then_is_quiet() {
        let b = state();
        let t0 = Instant::now();
        let reply = (421, "4.7.28", "rate limited");
        let first = b
            .on_reply(SITE, "ip-a", reply.0, reply.1, reply.2, t0)
            .unwrap();
        // Same instant: already covered, nothing to log.
        assert_eq!(
            b.on_reply(SITE, "ip-a", reply.0, reply.1, reply.2, t0),
            None
        );
        let later = t0 + Duration::from_secs(60);
        let ext = b
            .on_reply(SITE, "ip-a", reply.0, reply.1, reply.2, later)
            .unwrap();
        assert_eq!(ext.kind, TransitionKind::Extended);
        assert_eq!(ext.until, first.until + Duration::from_secs(60));
    }

    const CUSTOM: &str = r#"
[[backoff]]
name = "too-many"
codes = [421]
text = "too many connections"
action = "throttle"
max_connections = 2
duration = "10m"

[[backoff]]
name = "halt"
codes = [421]
enhanced = ["4.3.2"]
action = "suspend"
duration = "5m"

[[backoff]]
name = "blocked-ip"
codes = [550, 554]
enhanced = ["5.7.6*"]
action = "disable_source"
duration = "2h"
"#;

    #[test]
    fn suspend_stops_the_whole_site_then_lapses() {
        let b = BackoffState::new(rules(CUSTOM));
        let now = Instant::now();
        let t = b
            .on_reply("site-x", "ip-a", 421, "4.3.2", "System shutting down", now)
            .unwrap();
        assert_eq!(t.action, Action::Suspend);
        assert_eq!(t.source, None);
        for src in ["ip-a", "ip-b"] {
            let e = b.effective("site-x", src, now);
            assert_eq!(e.suspended_until(), Some(now + Duration::from_secs(300)));
        }
        let ended = b.expire(now + Duration::from_secs(300));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].action, Action::Suspend);
        assert!(
            b.effective("site-x", "ip-a", now + Duration::from_secs(300))
                .is_normal()
        );
    }

    #[test]
    fn disable_source_only_affects_that_source() {
        let b = BackoffState::new(rules(CUSTOM));
        let now = Instant::now();
        let t = b
            .on_reply(
                "site-x",
                "ip-a",
                550,
                "5.7.606",
                "Access denied, banned sending IP [192.0.2.1]",
                now,
            )
            .unwrap();
        assert_eq!(t.action, Action::DisableSource);
        assert_eq!(
            b.effective("site-x", "ip-a", now).source_disabled_until(),
            Some(now + Duration::from_secs(7200))
        );
        assert!(b.effective("site-x", "ip-b", now).is_normal());
        assert!(b.effective("site-y", "ip-a", now).is_normal());
    }

    #[test]
    fn criteria_must_all_match_and_first_rule_wins() {
        let b = BackoffState::new(rules(CUSTOM));
        let now = Instant::now();
        // Right text, wrong code.
        assert_eq!(
            b.on_reply("s", "a", 451, "", "Too many connections", now),
            None
        );
        // Enhanced-code prefix does not match 5.7.1.
        assert_eq!(b.on_reply("s", "a", 550, "5.7.1", "denied", now), None);
        // 2xx never matches.
        assert_eq!(
            b.on_reply("s", "a", 250, "", "too many connections", now),
            None
        );
        let t = b
            .on_reply("s", "a", 421, "4.3.2", "TOO MANY CONNECTIONS", now)
            .unwrap();
        assert_eq!(&*t.rule, "too-many");
        assert_eq!(
            b.effective("s", "a", now)
                .site_throttle
                .unwrap()
                .max_connections,
            Some(2)
        );
    }

    #[test]
    fn builtin_rules_cover_common_provider_replies() {
        let b = state();
        let now = Instant::now();
        let cases: &[(u16, &str, &str, &str)] = &[
            (
                421,
                "4.7.0",
                "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
                "throttle",
            ),
            (
                451,
                "4.7.650",
                "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
                "throttle",
            ),
            (
                550,
                "5.7.606",
                "Access denied, banned sending IP [192.0.2.1].",
                "disable_source",
            ),
            (
                421,
                "4.7.0",
                "Too many concurrent SMTP connections from this IP address; please try again later.",
                "throttle",
            ),
            (
                421,
                "",
                "Service not available, try again later",
                "throttle",
            ),
        ];
        for (i, (code, enh, text, action)) in cases.iter().enumerate() {
            let site = format!("site-{i}");
            let t = b
                .on_reply(&site, "ip-a", *code, enh, text, now)
                .unwrap_or_else(|| panic!("no rule matched {code} {enh} {text}"));
            assert_eq!(t.action.as_str(), *action, "{code} {enh} {text} -> {t}");
        }
        // A plain unknown-user bounce is not backoff.
        assert_eq!(
            b.on_reply(
                "s",
                "a",
                550,
                "5.1.1",
                "The email account that you tried to reach does not exist.",
                now
            ),
            None
        );
    }

    #[test]
    fn clear_ends_states_now() {
        let b = BackoffState::new(rules(CUSTOM));
        let now = Instant::now();
        b.on_reply("s", "a", 421, "4.3.2", "", now).unwrap();
        b.on_reply("s", "a", 550, "5.7.606", "", now).unwrap();
        let ended = b.clear("s", Some("a"), now);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].action, Action::DisableSource);
        assert!(b.effective("s", "a", now).suspended.is_some());
        let ended = b.clear("s", None, now);
        assert_eq!(ended.len(), 1);
        assert!(b.effective("s", "a", now).is_normal());
    }

    #[test]
    fn bad_regex_is_reported_with_rule_and_pattern() {
        let e = err_of(
            "[[backoff]]\nname = \"x\"\ntext = \"rate (limit\"\naction = \"suspend\"\nduration = \"1m\"\n",
        );
        assert!(e.contains("test-shaping.toml"), "{e}");
        assert!(e.contains("backoff[0].text"), "{e}");
        assert!(e.contains("rate (limit"), "{e}");
    }

    #[test]
    fn bad_rule_shapes_are_reported() {
        let base = "[[backoff]]\nname = \"x\"\ncodes = [421]\n";
        let e = err_of(&format!(
            "{base}action = \"suspend\"\nduration = \"eventually\"\n"
        ));
        assert!(
            e.contains("backoff[0].duration") && e.contains("eventually"),
            "{e}"
        );
        let e = err_of(&format!("{base}action = \"throttle\"\nduration = \"1m\"\n"));
        assert!(e.contains("needs `factor`"), "{e}");
        let e = err_of(&format!(
            "{base}action = \"throttle\"\nfactor = 2.0\nduration = \"1m\"\n"
        ));
        assert!(e.contains("backoff[0].factor"), "{e}");
        let e = err_of(&format!(
            "{base}action = \"suspend\"\nfactor = 0.5\nduration = \"1m\"\n"
        ));
        assert!(e.contains("only apply to action"), "{e}");
        let e = err_of(&format!(
            "{base}action = \"slow_down\"\nduration = \"1m\"\n"
        ));
        assert!(e.contains("slow_down") && e.contains("throttle"), "{e}");
        let e = err_of("[[backoff]]\nname = \"x\"\naction = \"suspend\"\nduration = \"1m\"\n");
        assert!(e.contains("match every reply"), "{e}");
        let e = err_of(
            "[[backoff]]\nname = \"x\"\ncodes = [250]\naction = \"suspend\"\nduration = \"1m\"\n",
        );
        assert!(e.contains("250"), "{e}");
    }

    #[test]
    fn throttle_arithmetic() {
        let t = Throttle {
            factor: Some(0.5),
            max_rate: None,
            max_connections: None,
        };
        assert_eq!(t.apply_rate(Some(10.0)), Some(5.0));
        assert_eq!(t.apply_rate(None), None);
        assert_eq!(t.apply_hourly(Some(1000)), Some(500));
        assert_eq!(t.apply_connections(Some(5)), Some(2));
        assert_eq!(t.apply_connections(Some(1)), Some(1));
        let t = Throttle {
            factor: None,
            max_rate: Some(2.0),
            max_connections: Some(3),
        };
        assert_eq!(t.apply_rate(None), Some(2.0));
        assert_eq!(t.apply_rate(Some(1.0)), Some(1.0));
        assert_eq!(t.apply_connections(None), Some(3));
        assert_eq!(t.apply_connections(Some(10)), Some(3));
    }
}
