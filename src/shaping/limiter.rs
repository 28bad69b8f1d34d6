//! Rate and concurrency limits per site and per (site, source): the seam a cluster backend
//! replaces.
//!
//! Owns the [`RateLimits`] trait, the [`Limiter`] handle the scheduler and delivery client
//! hold, [`ConnectionPermit`] (a connection slot released on drop), [`Refusal`], and
//! [`InProcessLimits`], the single-node backend: one `governor` limiter per (site) and per
//! (site, source) for each of messages/second, messages/hour and new connections/second, plus
//! open-connection counters. Limits come from the caller's [`SiteLimits`], tightened by the live
//! [`BackoffState`] effect (suspend, disabled source, throttle).
//!
//! Never does: sleep or queue waiters. A refusal says when to try again (or, for a full
//! connection budget, that a permit must be dropped first); the scheduler decides what to do.
//! A cluster backend (Redis) implements [`RateLimits`] and hands out permits whose release
//! closure returns the slot to the shared store.

use super::backoff::{BackoffState, Effect, Scope, Throttle};
use super::common::get_or_insert;
use super::data::SiteLimits;
use futures::future::BoxFuture;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A site or (site, source) slot with no open connection and no use for this long is
/// forgotten (its limiter would be full again by then anyway; see [`Bucket::refill_time`]).
const DEFAULT_IDLE_EVICT: Duration = Duration::from_secs(10 * 60);
/// How often the in-process backend looks for idle slots to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why a connection or message may not go now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Backoff suspended the site: nothing to it from any source until then.
    Suspended { until: Instant, rule: Arc<str> },
    /// Backoff disabled this source for the site: use another source, or wait.
    SourceDisabled { until: Instant, rule: Arc<str> },
    /// A rate (messages/s, messages/h or new connections/s) is used up for now.
    RateLimited { scope: Scope, retry_after: Duration },
    /// All connection slots of the scope are in use; try again when a permit is dropped.
    AtCapacity { scope: Scope, limit: u32 },
}

impl Refusal {
    /// How long to wait before asking again; `None` when waiting for a permit to be dropped
    /// (an open connection finishing) is the right trigger.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self {
            Refusal::Suspended { until, .. } | Refusal::SourceDisabled { until, .. } => {
                Some(until.saturating_duration_since(now))
            }
            Refusal::RateLimited { retry_after, .. } => Some(*retry_after),
            Refusal::AtCapacity { .. } => None,
        }
    }

    /// Short label for metrics: `suspended`, `source_disabled`, `rate_limited`, `at_capacity`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Suspended { .. } => "suspended",
            Refusal::SourceDisabled { .. } => "source_disabled",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::AtCapacity { .. } => "at_capacity",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Suspended { rule, .. } => write!(f, "site suspended by backoff rule {rule}"),
            Refusal::SourceDisabled { rule, .. } => {
                write!(f, "source disabled for this site by backoff rule {rule}")
            }
            Refusal::RateLimited { scope, retry_after } => write!(
                f,
                "{} rate limit reached, retry in {}ms",
                scope.as_str(),
                retry_after.as_millis()
            ),
            Refusal::AtCapacity { scope, limit } => {
                write!(f, "{} connection limit of {limit} reached", scope.as_str())
            }
        }
    }
}

/// One open (or opening) connection's slot. Dropping it gives the slot back.
pub struct ConnectionPermit {
    site: Arc<str>,
    source: Arc<str>,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ConnectionPermit {
    /// For [`RateLimits`] backends: a permit that runs `release` exactly once when dropped.
    pub fn new(
        site: &str,
        source: &str,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> ConnectionPermit {
        ConnectionPermit {
            site: Arc::from(site),
            source: Arc::from(source),
            release: Some(Box::new(release)),
        }
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("site", &self.site)
            .field("source", &self.source)
            .finish()
    }
}

/// Rate and concurrency limits shared by everything that delivers. One node uses
/// [`InProcessLimits`]; a cluster backend shares the counters between nodes. Implementations
/// must apply the [`BackoffState`] effect for (site, source) as well as `limits`.
///
/// Methods return boxed futures so the trait is object-safe and a networked backend can await;
/// the in-process backend answers immediately.
pub trait RateLimits: Send + Sync + 'static {
    /// Take one message token for (site, source), or say why not.
    fn try_acquire_message<'a>(
        &'a self,
        site: &'a str,
        source: &'a str,
        limits: &'a SiteLimits,
    ) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Take a connection slot for (site, source) and one new-connection token, or say why not.
    fn acquire_connection<'a>(
        &'a self,
        site: &'a str,
        source: &'a str,
        limits: &'a SiteLimits,
    ) -> BoxFuture<'a, Result<ConnectionPermit, Refusal>>;

    /// Connections open to `site` (from `source` only, when given).
    fn open_connections<'a>(
        &'a self,
        site: &'a str,
        source: Option<&'a str>,
    ) -> BoxFuture<'a, usize>;
}

/// The handle to the limits backend. Clone is cheap; all clones share state.
#[derive(Clone)]
pub struct Limiter {
    backend: Arc<dyn RateLimits>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// The single-node backend, reading time from tokio's clock (so `tokio::time::pause`
    /// applies in tests).
    pub fn in_process(backoff: BackoffState) -> Limiter {
        Limiter::from_backend(Arc::new(InProcessLimits::new(backoff)))
    }

    /// Any backend, e.g. a cluster one.
    pub fn from_backend(backend: Arc<dyn RateLimits>) -> Limiter {
        Limiter { backend }
    }

    /// Take one message token for (site, source). Call before each message (each
    /// transaction), including on a reused connection. On `Suspended` or `SourceDisabled` the
    /// caller should close the connection and requeue.
    pub async fn try_acquire_message(
        &self,
        site: &str,
        source: &str,
        limits: &SiteLimits,
    ) -> Result<(), Refusal> {
        self.backend.try_acquire_message(site, source, limits).await
    }

    /// Take a connection slot for (site, source); hold the permit as long as the connection is
    /// open (including while idle) and drop it when the connection closes.
    pub async fn acquire_connection(
        &self,
        site: &str,
        source: &str,
        limits: &SiteLimits,
    ) -> Result<ConnectionPermit, Refusal> {
        self.backend.acquire_connection(site, source, limits).await
    }

    /// Connections open to `site` (from `source` only, when given).
    pub async fn open_connections(&self, site: &str, source: Option<&str>) -> usize {
        self.backend.open_connections(site, source).await
    }
}

/// Where the in-process backend reads the time.
#[derive(Clone)]
enum Clock {
    /// `tokio::time::Instant::now()`: the real clock, or tokio's paused clock in tests.
    Tokio,
    Manual(Arc<dyn Fn() -> Instant + Send + Sync>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::Tokio => tokio::time::Instant::now().into_std(),
            Clock::Manual(f) => f(),
        }
    }
}

impl GovernorClock for Clock {
    type Instant = Instant;
    fn now(&self) -> Instant {
        Clock::now(self)
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Instant>>;

/// A GCRA quota: one token per `period`, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuotaKey {
    period: Duration,
    burst: NonZeroU32,
}

impl QuotaKey {
    /// `rate` events per second; bursts of one second's worth.
    fn per_second(rate: Option<f64>) -> Option<QuotaKey> {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
        // Clamp so the period fits a Duration: at most one per ~11.6 days, at least 1 ns.
        let period = (1.0 / rate).clamp(1e-9, 1e6);
        QuotaKey::new(Duration::from_secs_f64(period), rate.floor())
    }

    /// `n` events per hour; bursts of one minute's worth, so an hour never sees much more than
    /// `n` (at most `n + n/60`).
    fn per_hour(n: Option<u64>) -> Option<QuotaKey> {
        let n = n.filter(|n| *n > 0)?;
        QuotaKey::new(Duration::from_secs_f64(3600.0 / n as f64), (n / 60) as f64)
    }

    fn new(period: Duration, burst: f64) -> Option<QuotaKey> {
        let burst = NonZeroU32::new(burst.clamp(1.0, f64::from(u32::MAX)) as u32)?;
        Some(QuotaKey {
            period: period.max(Duration::from_nanos(1)),
            burst,
        })
    }

    fn quota(self) -> Option<Quota> {
        Some(Quota::with_period(self.period)?.allow_burst(self.burst))
    }
}

/// One governor limiter and the quota it was built with (quotas cannot change in place).
struct Bucket {
    key: QuotaKey,
    gcra: Gcra,
}

impl Bucket {
    /// Take one token under `quota` (`None`: unlimited). A changed quota replaces the limiter;
    /// a replacement starts empty, so switching quotas (a throttle starting or ending) never
    /// grants an extra burst.
    fn take(
        slot: &mut Option<Bucket>,
        quota: Option<QuotaKey>,
        clock: &Clock,
        now: Instant,
    ) -> Result<(), Duration> {
        let Some(key) = quota else {
            *slot = None;
            return Ok(());
        };
        if slot.as_ref().is_none_or(|b| b.key != key) {
            let Some(q) = key.quota() else {
                *slot = None;
                return Ok(());
            };
            let gcra = RateLimiter::direct_with_clock(q, clock.clone());
            if slot.is_some() {
                // Drain the fresh limiter's burst; the result is irrelevant.
                let _ = gcra.check_n(key.burst);
            }
            *slot = Some(Bucket { key, gcra });
        }
        match slot {
            Some(b) => b.gcra.check().map_err(|nu| nu.wait_time_from(now)),
            None => Ok(()),
        }
    }

    /// Time for an untouched limiter to be full again: after this, forgetting it is harmless.
    fn refill_time(&self) -> Duration {
        self.key.period.saturating_mul(self.key.burst.get())
    }
}

#[derive(Default)]
struct Buckets {
    msg_second: Option<Bucket>,
    msg_hour: Option<Bucket>,
    conn_rate: Option<Bucket>,
}

impl Buckets {
    fn refill_time(&self) -> Duration {
        [&self.msg_second, &self.msg_hour, &self.conn_rate]
            .into_iter()
            .flatten()
            .map(Bucket::refill_time)
            .max()
            .unwrap_or_default()
    }

    /// Messages/second then messages/hour.
    fn take_message(
        &mut self,
        rate: Option<f64>,
        hourly: Option<u64>,
        clock: &Clock,
        now: Instant,
    ) -> Result<(), Duration> {
        Bucket::take(&mut self.msg_second, QuotaKey::per_second(rate), clock, now)?;
        Bucket::take(&mut self.msg_hour, QuotaKey::per_hour(hourly), clock, now)
    }
}

struct SourceSlot {
    buckets: Buckets,
    open: u32,
    last_used: Instant,
}

struct SiteSlot {
    buckets: Buckets,
    open: u32,
    last_used: Instant,
    sources: HashMap<String, SourceSlot>,
}

struct Slots {
    sites: HashMap<String, SiteSlot>,
    last_sweep: Option<Instant>,
}

impl SiteSlot {
    /// The slot of `source` at this site, marked used at `now`.
    fn source(&mut self, source: &str, now: Instant) -> &mut SourceSlot {
        let src = get_or_insert(&mut self.sources, source, || SourceSlot {
            buckets: Buckets::default(),
            open: 0,
            last_used: now,
        });
        src.last_used = now;
        src
    }
}

impl Slots {
    /// The slot of `site`, marked used at `now`.
    fn site(&mut self, site: &str, now: Instant) -> &mut SiteSlot {
        let s = get_or_insert(&mut self.sites, site, || SiteSlot {
            buckets: Buckets::default(),
            open: 0,
            last_used: now,
            sources: HashMap::new(),
        });
        s.last_used = now;
        s
    }

    /// Forget slots with nothing open whose limiters have refilled.
    fn sweep(&mut self, now: Instant, idle: Duration) {
        let evictable = |open: u32, last: Instant, b: &Buckets| {
            open == 0 && now.saturating_duration_since(last) >= idle.max(b.refill_time())
        };
        self.sites.retain(|_, s| {
            s.sources
                .retain(|_, src| !evictable(src.open, src.last_used, &src.buckets));
            !(s.sources.is_empty() && evictable(s.open, s.last_used, &s.buckets))
        });
        self.last_sweep = Some(now);
    }
}

/// The single-node [`RateLimits`] backend.
///
/// Locking: one std `Mutex` over all slots. Each call holds it for a few hash lookups and at
/// most six governor checks (tens of nanoseconds each), never across `.await`, so an async mutex
/// would only add cost. Backoff state is read before taking the lock. If profiling ever shows
/// contention, shard the map by site hash.
///
/// Message tokens are taken per (site, source) first, then per site. governor cannot look
/// without taking, so a refusal at the site level has already spent the source's token; that
/// errs on the slow side and never lets a limit be exceeded.
pub struct InProcessLimits {
    backoff: BackoffState,
    clock: Clock,
    idle_evict: Duration,
    slots: Arc<Mutex<Slots>>,
}

fn lock(m: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    // Counters and limiters stay consistent field by field; a panic elsewhere cannot leave a
    // half-made change that matters, so carry on with the data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InProcessLimits {
    /// Read time from tokio's clock (real time, or paused time in tests).
    pub fn new(backoff: BackoffState) -> InProcessLimits {
        InProcessLimits::build(backoff, Clock::Tokio)
    }

    /// Read time from `now` (tests, simulations). Must be monotonic.
    pub fn with_clock(
        backoff: BackoffState,
        now: impl Fn() -> Instant + Send + Sync + 'static,
    ) -> InProcessLimits {
        InProcessLimits::build(backoff, Clock::Manual(Arc::new(now)))
    }

    fn build(backoff: BackoffState, clock: Clock) -> InProcessLimits {
        InProcessLimits {
            backoff,
            clock,
            idle_evict: DEFAULT_IDLE_EVICT,
            slots: Arc::new(Mutex::new(Slots {
                sites: HashMap::new(),
                last_sweep: None,
            })),
        }
    }

    /// Forget idle slots after `idle` instead of 10 minutes (never before their limiters have
    /// refilled).
    pub fn idle_evict_after(mut self, idle: Duration) -> InProcessLimits {
        self.idle_evict = idle;
        self
    }

    /// Number of sites with a slot (for tests and a gauge).
    pub fn tracked_sites(&self) -> usize {
        lock(&self.slots).sites.len()
    }

    /// Forget idle slots now (also done automatically about once a minute).
    pub fn sweep(&self) {
        let now = self.clock.now();
        lock(&self.slots).sweep(now, self.idle_evict);
    }

    fn maybe_sweep(&self, slots: &mut Slots, now: Instant) {
        if slots
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            slots.sweep(now, self.idle_evict);
        }
    }

    /// Synchronous core of [`RateLimits::try_acquire_message`].
    pub fn message(&self, site: &str, source: &str, limits: &SiteLimits) -> Result<(), Refusal> {
        let now = self.clock.now();
        let effect = self.backoff.effective(site, source, now);
        blocked(&effect)?;
        let site_rate = throttled_rate(effect.site_throttle, limits.site.max_messages_per_second);
        let site_hour = throttled_hour(effect.site_throttle, limits.site.max_messages_per_hour);
        let src_rate = throttled_rate(
            effect.source_throttle,
            limits.per_source.max_messages_per_second,
        );
        let src_hour = throttled_hour(
            effect.source_throttle,
            limits.per_source.max_messages_per_hour,
        );

        let mut slots = lock(&self.slots);
        self.maybe_sweep(&mut slots, now);
        let s = slots.site(site, now);
        let rate_limited = |scope| move |retry_after| Refusal::RateLimited { scope, retry_after };
        s.source(source, now)
            .buckets
            .take_message(src_rate, src_hour, &self.clock, now)
            .map_err(rate_limited(Scope::Source))?;
        s.buckets
            .take_message(site_rate, site_hour, &self.clock, now)
            .map_err(rate_limited(Scope::Site))
    }

    /// Synchronous core of [`RateLimits::acquire_connection`].
    pub fn connection(
        &self,
        site: &str,
        source: &str,
        limits: &SiteLimits,
    ) -> Result<ConnectionPermit, Refusal> {
        let now = self.clock.now();
        let effect = self.backoff.effective(site, source, now);
        blocked(&effect)?;
        let site_cap = apply_connections(effect.site_throttle, limits.site.max_connections);
        let src_cap = apply_connections(effect.source_throttle, limits.per_source.max_connections);
        let site_conn_rate = QuotaKey::per_second(limits.site.max_connection_rate);
        let src_conn_rate = QuotaKey::per_second(limits.per_source.max_connection_rate);

        let mut slots = lock(&self.slots);
        self.maybe_sweep(&mut slots, now);
        let s = slots.site(site, now);
        if let Some(limit) = site_cap
            && s.open >= limit
        {
            return Err(Refusal::AtCapacity {
                scope: Scope::Site,
                limit,
            });
        }
        let src = s.source(source, now);
        if let Some(limit) = src_cap
            && src.open >= limit
        {
            return Err(Refusal::AtCapacity {
                scope: Scope::Source,
                limit,
            });
        }
        Bucket::take(&mut src.buckets.conn_rate, src_conn_rate, &self.clock, now).map_err(
            |retry_after| Refusal::RateLimited {
                scope: Scope::Source,
                retry_after,
            },
        )?;
        Bucket::take(&mut s.buckets.conn_rate, site_conn_rate, &self.clock, now).map_err(
            |retry_after| Refusal::RateLimited {
                scope: Scope::Site,
                retry_after,
            },
        )?;
        s.open += 1;
        s.source(source, now).open += 1;
        drop(slots);

        let slots = self.slots.clone();
        let (site_owned, source_owned) = (site.to_string(), source.to_string());
        Ok(ConnectionPermit::new(site, source, move || {
            let mut slots = lock(&slots);
            // Slots with open connections are never swept, so both are still there.
            if let Some(s) = slots.sites.get_mut(&site_owned) {
                s.open = s.open.saturating_sub(1);
                if let Some(src) = s.sources.get_mut(&source_owned) {
                    src.open = src.open.saturating_sub(1);
                }
            }
        }))
    }

    /// Synchronous core of [`RateLimits::open_connections`].
    pub fn open(&self, site: &str, source: Option<&str>) -> usize {
        let slots = lock(&self.slots);
        let Some(s) = slots.sites.get(site) else {
            return 0;
        };
        match source {
            None => s.open as usize,
            Some(src) => s.sources.get(src).map_or(0, |x| x.open as usize),
        }
    }
}

fn blocked(effect: &Effect) -> Result<(), Refusal> {
    if let Some(h) = &effect.suspended {
        return Err(Refusal::Suspended {
            until: h.until,
            rule: h.rule.clone(),
        });
    }
    if let Some(h) = &effect.source_disabled {
        return Err(Refusal::SourceDisabled {
            until: h.until,
            rule: h.rule.clone(),
        });
    }
    Ok(())
}

fn throttled_rate(t: Option<Throttle>, base: Option<f64>) -> Option<f64> {
    match t {
        Some(t) => t.apply_rate(base),
        None => base,
    }
}

fn throttled_hour(t: Option<Throttle>, base: Option<u64>) -> Option<u64> {
    match t {
        Some(t) => t.apply_hourly(base),
        None => base,
    }
}

fn apply_connections(t: Option<Throttle>, base: Option<u32>) -> Option<u32> {
    match t {
        Some(t) => t.apply_connections(base),
        None => base,
    }
}

impl RateLimits for InProcessLimits {
    fn try_acquire_message<'a>(
        &'a self,
        site: &'a str,
        source: &'a str,
        limits: &'a SiteLimits,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(std::future::ready(self.message(site, source, limits)))
    }

    fn acquire_connection<'a>(
        &'a self,
        site: &'a str,
        source: &'a str,
        limits: &'a SiteLimits,
    ) -> BoxFuture<'a, Result<ConnectionPermit, Refusal>> {
        Box::pin(std::future::ready(self.connection(site, source, limits)))
    }

    fn open_connections<'a>(
        &'a self,
        site: &'a str,
        source: Option<&'a str>,
    ) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(self.open(site, source)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::{BackoffRule, LimitSet, Shaping};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SITE: &str = "mx1.example.net,mx2.example.net";

    /// A clock tests move by hand.
    #[derive(Clone)]
    struct TestClock(Arc<Mutex<Instant>>);

    impl TestClock {
        fn new() -> TestClock {
            TestClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    fn limits(site: LimitSet, per_source: LimitSet) -> SiteLimits {
        SiteLimits {
            provider: None,
            site,
            per_source,
        }
    }

    fn rule(text: &str) -> BackoffRule {
        let rules = Shaping::from_toml(text, "t").unwrap().backoff_rules();
        rules[0].clone()
    }

    fn manual(backoff: BackoffState) -> (InProcessLimits, TestClock) {
        let clock = TestClock::new();
        let c = clock.clone();
        (InProcessLimits::with_clock(backoff, move || c.now()), clock)
    }

    fn no_backoff() -> BackoffState {
        BackoffState::new(Arc::from(Vec::new()))
    }

    /// Messages allowed in `window`, asking every `step`.
    fn count_allowed(
        l: &InProcessLimits,
        clock: &TestClock,
        source: &str,
        limits: &SiteLimits,
        window: Duration,
        step: Duration,
    ) -> usize {
        let end = clock.now() + window;
        let mut allowed = 0;
        while clock.now() < end {
            while l.message(SITE, source, limits).is_ok() {
                allowed += 1;
            }
            clock.advance(step);
        }
        allowed
    }

    #[tokio::test(start_paused = true)]
    async fn message_rate_honours_messages_per_second_in_paused_time() {
        let limiter = Limiter::in_process(no_backoff());
        let l = limits(
            LimitSet::default(),
            LimitSet {
                max_messages_per_second: Some(10.0),
                ..LimitSet::default()
            },
        );
        let start = tokio::time::Instant::now();
        let mut sent = 0u32;
        let mut refusals = 0u32;
        while start.elapsed() < Duration::from_secs(10) {
            match limiter.try_acquire_message(SITE, "ip-a", &l).await {
                Ok(()) => sent += 1,
                Err(r) => {
                    refusals += 1;
                    let wait = r
                        .retry_after(Instant::now())
                        .expect("rate refusals say when");
                    assert!(
                        wait > Duration::ZERO && wait <= Duration::from_millis(100),
                        "{r}"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // 10/s for 10 s plus one second's burst at the start.
        assert!(
            (100..=111).contains(&sent),
            "sent {sent} in 10 s at 10 msg/s"
        );
        assert!(refusals > 0);
        // Another source has its own per-source budget.
        assert!(limiter.try_acquire_message(SITE, "ip-b", &l).await.is_ok());
    }

    #[test]
    fn site_rate_is_shared_by_all_sources() {
        let (l, clock) = manual(no_backoff());
        let lim = limits(
            LimitSet {
                max_messages_per_second: Some(4.0),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let mut total = 0;
        let end = clock.now() + Duration::from_secs(5);
        while clock.now() < end {
            for src in ["a", "b", "c"] {
                if l.message(SITE, src, &lim).is_ok() {
                    total += 1;
                }
            }
            clock.advance(Duration::from_millis(5));
        }
        assert!(
            (20..=24).contains(&total),
            "{total} in 5 s at 4 msg/s for the site"
        );
        let r = loop {
            if let Err(r) = l.message(SITE, "a", &lim) {
                break r;
            }
        };
        assert!(
            matches!(
                r,
                Refusal::RateLimited {
                    scope: Scope::Site,
                    ..
                }
            ),
            "{r}"
        );
    }

    #[test]
    fn hourly_limit_holds_over_an_hour() {
        let (l, clock) = manual(no_backoff());
        let lim = limits(
            LimitSet {
                max_messages_per_hour: Some(600),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let n = count_allowed(
            &l,
            &clock,
            "a",
            &lim,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        assert!((600..=611).contains(&n), "{n} in one hour at 600/h");
    }

    #[test]
    fn backoff_throttle_lowers_the_rate_until_it_ends() {
        let backoff = BackoffState::new(Shaping::builtin().backoff_rules());
        let (l, clock) = manual(backoff.clone());
        let lim = limits(
            LimitSet::default(),
            LimitSet {
                max_messages_per_second: Some(20.0),
                max_connections: Some(10),
                ..LimitSet::default()
            },
        );
        let step = Duration::from_millis(10);
        let normal = count_allowed(&l, &clock, "ip-a", &lim, Duration::from_secs(10), step);
        assert!((200..=220).contains(&normal), "{normal}");

        let t = backoff
            .on_reply(
                SITE,
                "ip-a",
                421,
                "4.7.28",
                "temporarily rate limited",
                clock.now(),
            )
            .expect("google rule fires");
        let throttled = count_allowed(&l, &clock, "ip-a", &lim, Duration::from_secs(10), step);
        // Half the rate; the replaced limiter starts empty (no fresh burst).
        assert!((95..=101).contains(&throttled), "{throttled} at 10 msg/s");
        // The throttle's max_connections applies too.
        let permits: Vec<_> = (0..2)
            .map(|_| l.connection(SITE, "ip-a", &lim).unwrap())
            .collect();
        let r = l.connection(SITE, "ip-a", &lim).unwrap_err();
        assert_eq!(
            r,
            Refusal::AtCapacity {
                scope: Scope::Source,
                limit: 2
            }
        );
        drop(permits);
        // Untouched source keeps its full budget.
        assert!(count_allowed(&l, &clock, "ip-b", &lim, Duration::from_secs(1), step) >= 20);

        clock.advance(t.until.saturating_duration_since(clock.now()));
        assert_eq!(backoff.expire(clock.now()).len(), 1);
        let after = count_allowed(&l, &clock, "ip-a", &lim, Duration::from_secs(10), step);
        // Idle for most of the hour, so the slot was forgotten and starts with a full burst.
        assert!((200..=221).contains(&after), "{after} back at 20 msg/s");
    }

    #[test]
    fn suspend_and_disabled_source_refuse_until_they_end() {
        let backoff = no_backoff();
        let (l, clock) = manual(backoff.clone());
        let lim = SiteLimits::default();
        let suspend = rule(
            "[[backoff]]\nname = \"s\"\ncodes = [421]\naction = \"suspend\"\nduration = \"5m\"\n",
        );
        let disable = rule(
            "[[backoff]]\nname = \"d\"\ncodes = [554]\naction = \"disable_source\"\nduration = \"1h\"\n",
        );

        backoff.apply(SITE, "ip-a", &disable, clock.now()).unwrap();
        match l.message(SITE, "ip-a", &lim) {
            Err(Refusal::SourceDisabled { rule, until }) => {
                assert_eq!(&*rule, "d");
                assert_eq!(until, clock.now() + Duration::from_secs(3600));
            }
            other => panic!("expected SourceDisabled, got {other:?}"),
        }
        assert!(matches!(
            l.connection(SITE, "ip-a", &lim),
            Err(Refusal::SourceDisabled { .. })
        ));
        assert!(l.message(SITE, "ip-b", &lim).is_ok());

        backoff.apply(SITE, "ip-b", &suspend, clock.now()).unwrap();
        for src in ["ip-a", "ip-b", "ip-c"] {
            let r = l.connection(SITE, src, &lim).unwrap_err();
            assert!(matches!(r, Refusal::Suspended { .. }), "{src}: {r}");
            assert_eq!(r.retry_after(clock.now()), Some(Duration::from_secs(300)));
        }
        clock.advance(Duration::from_secs(300));
        assert!(l.message(SITE, "ip-b", &lim).is_ok());
        assert!(l.message(SITE, "ip-a", &lim).is_err(), "still disabled");
        clock.advance(Duration::from_secs(3300));
        assert!(l.message(SITE, "ip-a", &lim).is_ok());
    }

    #[test]
    fn dropping_a_permit_frees_its_slot() {
        let (l, _clock) = manual(no_backoff());
        let lim = limits(
            LimitSet {
                max_connections: Some(3),
                ..LimitSet::default()
            },
            LimitSet {
                max_connections: Some(2),
                ..LimitSet::default()
            },
        );
        let a1 = l.connection(SITE, "a", &lim).unwrap();
        let _a2 = l.connection(SITE, "a", &lim).unwrap();
        assert_eq!(
            l.connection(SITE, "a", &lim).unwrap_err(),
            Refusal::AtCapacity {
                scope: Scope::Source,
                limit: 2
            }
        );
        let _b1 = l.connection(SITE, "b", &lim).unwrap();
        assert_eq!(
            l.connection(SITE, "b", &lim).unwrap_err(),
            Refusal::AtCapacity {
                scope: Scope::Site,
                limit: 3
            }
        );
        assert_eq!((l.open(SITE, None), l.open(SITE, Some("a"))), (3, 2));
        assert_eq!(a1.site(), SITE);
        drop(a1);
        assert_eq!((l.open(SITE, None), l.open(SITE, Some("a"))), (2, 1));
        assert!(l.connection(SITE, "b", &lim).is_ok());
    }

    #[test]
    fn connection_rate_spaces_new_connections() {
        let (l, clock) = manual(no_backoff());
        let lim = limits(
            LimitSet {
                max_connection_rate: Some(2.0),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let mut held = Vec::new();
        held.push(l.connection(SITE, "a", &lim).unwrap());
        held.push(l.connection(SITE, "b", &lim).unwrap());
        let r = l.connection(SITE, "a", &lim).unwrap_err();
        let wait = r.retry_after(clock.now()).unwrap();
        assert!(
            matches!(
                r,
                Refusal::RateLimited {
                    scope: Scope::Site,
                    ..
                }
            ),
            "{r}"
        );
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        clock.advance(wait);
        held.push(l.connection(SITE, "a", &lim).unwrap());
        // A refused attempt did not keep a slot.
        assert_eq!(l.open(SITE, None), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn connection_permits_never_exceed_caps_under_contention() {
        const SITE_CAP: usize = 5;
        const SOURCE_CAP: usize = 2;
        let limiter = Limiter::in_process(no_backoff());
        let lim = Arc::new(limits(
            LimitSet {
                max_connections: Some(SITE_CAP as u32),
                ..LimitSet::default()
            },
            LimitSet {
                max_connections: Some(SOURCE_CAP as u32),
                ..LimitSet::default()
            },
        ));
        let sources = ["a", "b", "c", "d"];
        let site_open = Arc::new(AtomicUsize::new(0));
        let site_peak = Arc::new(AtomicUsize::new(0));
        let src_open: Arc<Vec<AtomicUsize>> =
            Arc::new(sources.iter().map(|_| AtomicUsize::new(0)).collect());
        let src_peak = Arc::new(AtomicUsize::new(0));
        let granted = Arc::new(AtomicUsize::new(0));

        let mut tasks = Vec::new();
        for t in 0..64 {
            let (limiter, lim) = (limiter.clone(), lim.clone());
            let (site_open, site_peak, src_open, src_peak, granted) = (
                site_open.clone(),
                site_peak.clone(),
                src_open.clone(),
                src_peak.clone(),
                granted.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    let k = (t + i) % sources.len();
                    let Ok(permit) = limiter.acquire_connection(SITE, sources[k], &lim).await
                    else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    granted.fetch_add(1, Ordering::SeqCst);
                    let s = site_open.fetch_add(1, Ordering::SeqCst) + 1;
                    let p = src_open[k].fetch_add(1, Ordering::SeqCst) + 1;
                    site_peak.fetch_max(s, Ordering::SeqCst);
                    src_peak.fetch_max(p, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    // Decrement before the permit releases its slot.
                    src_open[k].fetch_sub(1, Ordering::SeqCst);
                    site_open.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            granted.load(Ordering::SeqCst) > 100,
            "contention test got no permits"
        );
        assert!(site_peak.load(Ordering::SeqCst) <= SITE_CAP);
        assert!(src_peak.load(Ordering::SeqCst) <= SOURCE_CAP);
        assert_eq!(limiter.open_connections(SITE, None).await, 0);
        for s in sources {
            assert_eq!(limiter.open_connections(SITE, Some(s)).await, 0);
        }
    }

    #[test]
    fn idle_slots_are_forgotten_but_open_ones_kept() {
        let (l, clock) = manual(no_backoff());
        let lim = limits(
            LimitSet {
                max_messages_per_second: Some(5.0),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        for i in 0..1000 {
            l.message(&format!("site-{i}"), "a", &lim).unwrap();
        }
        let held = l.connection("busy-site", "a", &lim).unwrap();
        assert_eq!(l.tracked_sites(), 1001);
        clock.advance(Duration::from_secs(11 * 60));
        // The next call sweeps by itself (more than a minute since the last sweep).
        l.message("site-new", "a", &lim).unwrap();
        assert_eq!(l.tracked_sites(), 2, "busy-site and site-new remain");
        drop(held);
        clock.advance(Duration::from_secs(11 * 60));
        l.sweep();
        assert_eq!(l.tracked_sites(), 0);
    }

    #[test]
    fn extreme_rates_do_not_panic() {
        let (l, _clock) = manual(no_backoff());
        for rate in [1e-300, 1e-9, 1e12, f64::MAX] {
            let lim = limits(
                LimitSet {
                    max_messages_per_second: Some(rate),
                    max_connection_rate: Some(rate),
                    max_messages_per_hour: Some(u64::MAX),
                    ..LimitSet::default()
                },
                LimitSet::default(),
            );
            let _ = l.message(&format!("site-{rate}"), "a", &lim);
            let _ = l.connection(&format!("site-{rate}"), "a", &lim);
        }
    }

    #[test]
    fn refusals_read_well() {
        let r = Refusal::AtCapacity {
            scope: Scope::Source,
            limit: 2,
        };
        assert_eq!(r.to_string(), "source connection limit of 2 reached");
        assert_eq!(r.retry_after(Instant::now()), None);
        assert_eq!(r.as_str(), "at_capacity");
    }
}
