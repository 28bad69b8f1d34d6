//! What a dispatcher may use, and the one way it hands a job back.
//!
//! [`Context`] holds the shaping handles (limiter, backoff, warm-up — built by `serve`), the
//! delivery client's options and TLS connector, the spool (read-only use: bodies not in the
//! cache), the event bus (backoff transitions) and metrics (connection gauges, limiter
//! refusals). It never holds the queue's state: each job a dispatcher takes is reported
//! exactly once through [`Report`] as a [`JobResult`], and the queue decides what follows.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::{Job, ReadyQueue, Via};
use crate::config::Config;
use crate::delivery::{ClientOptions, Destination, Outcome, Reply};
use crate::events::{Event, EventBus, EventKind};
use crate::metrics::Metrics;
use crate::shaping::{BackoffState, Limiter, Transition, Warmup};
use crate::spool::Spool;

/// A dispatcher's result for one job it took from a ready queue: reported exactly once.
pub(crate) enum JobResult {
    /// Attempted (or given up on before a connection): one outcome per recipient of the job,
    /// in `job.rcpts` order, and where the attempt went.
    Done {
        job: Job,
        outcomes: Vec<Outcome>,
        via: Via,
    },
    /// Its source is over today's warm-up cap: queue it for `dest` through `pool`.
    Overflow {
        job: Job,
        dest: Destination,
        pool: String,
    },
    /// A suspension that came after it was queued holds it: park it.
    Held {
        job: Job,
        site: String,
        pool: String,
    },
}

/// The queue side of a dispatcher: where results go. Implemented by the queue.
pub(crate) trait Report: Send + Sync + 'static {
    /// Hand back a job (exactly once per job taken).
    fn report(&self, result: JobResult);
    /// Whether a suspension holds `job` on its way through `rq`.
    fn is_suspended(&self, job: &Job, rq: &ReadyQueue) -> bool;
    /// A job is on a connection now (`true`) or no longer (`false`), for listings.
    fn in_flight(&self, job: &Job, delivering: bool);
    /// Before a new connection for `rq` with a job of `domain`: re-resolve the site's hosts
    /// if they expired (the queue owns resolution and its cache).
    fn refresh<'a>(&'a self, rq: &'a ReadyQueue, domain: &'a str) -> RefreshFuture<'a>;
}

/// How a dispatcher should go on with a job after the destination was checked.
pub(crate) enum Refreshed {
    /// The ready queue's hosts are current (or were just replaced): connect.
    Current,
    /// The job's domain now resolves to another site: queue it there.
    Moved(Destination),
    /// The domain cannot be resolved (and no previous answer is within its grace).
    Failed(Outcome),
}

/// What [`Report::refresh`] returns.
pub(crate) type RefreshFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Refreshed> + Send + 'a>>;

/// Everything a dispatcher task needs (see the module doc). Shared by all dispatchers.
pub(crate) struct Context {
    /// Pools (sources, EHLO names, overflow) and the hostname.
    pub config: Arc<Config>,
    pub limiter: Limiter,
    pub backoff: BackoffState,
    pub warmup: Warmup,
    pub client: ClientOptions,
    pub tls: tokio_rustls::TlsConnector,
    pub spool: Spool,
    pub bus: EventBus,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub report: Arc<dyn Report>,
    /// VERP return paths (`[bounce] domain`): one transaction per recipient, each with its own
    /// signed envelope sender. None: the message's own sender.
    pub verp: Option<crate::bounce::verp::VerpKey>,
}

impl Context {
    /// The same outcome for every recipient of `job`.
    pub(crate) fn done_all(&self, job: Job, outcome: Outcome, via: &Via) {
        let outcomes = vec![outcome; job.rcpts.len()];
        self.report.report(JobResult::Done {
            job,
            outcomes,
            via: via.clone(),
        });
    }

    /// Show a negative reply from `site` (via `source`) to the backoff rules.
    pub(crate) fn observe_reply(&self, site: &str, source: &str, reply: &Reply) {
        if let Some(t) = self.backoff.on_reply(
            site,
            source,
            reply.code,
            &reply.enhanced,
            &reply.text,
            tokio::time::Instant::now().into_std(),
        ) {
            publish_transition(&self.bus, &t);
        }
    }
}

/// Publish a backoff state change (logged and counted by the subscribers).
pub(crate) fn publish_transition(bus: &EventBus, t: &Transition) {
    // Backoff state is kept per (site, pool): the key is `site|pool`.
    let (site, pool) = t.site.split_once('|').unwrap_or((t.site.as_str(), ""));
    let mut e = Event::new(EventKind::Backoff {
        change: t.kind.as_str().to_string(),
        action: t.action.as_str().to_string(),
        site: site.to_string(),
        source: t.source.clone().unwrap_or_default(),
        rule: t.rule.to_string(),
        seconds: t.duration.as_secs(),
    });
    e.pool = pool.to_string();
    bus.publish(e);
}
