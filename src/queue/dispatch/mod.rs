//! Dispatcher tasks: each drains one ready queue over one outbound connection at a time.
//!
//! A task picks a source address of the queue's pool (weighted, skipping sources that backoff
//! disabled for this site), takes a connection permit from the shaping limiter (per-site and
//! per-(site, source) caps and connection rate), connects to the site's hosts in order, and
//! delivers jobs one after the other on that connection, taking a message token before each
//! (msg/s, msg/h), until the queue stays empty for the idle timeout or the per-connection cap
//! is reached. Every negative reply is shown to the backoff rules. A source over its warm-up
//! cap sends the job to the pool's overflow pool or defers it, per `on_warmup_cap`.
//!
//! Before opening a connection, a task asks the queue to re-resolve the site's hosts when
//! their records have expired (`Report::refresh`); a job whose domain moved to another site is
//! handed back to be queued there. An open connection to an address the site no longer has is
//! closed rather than reused.
//!
//! A connection that cannot be made to any host defers its job and every job waiting in the
//! queue (they would meet the same wall), rather than hammering a dead site.
//!
//! Limits and backoff state are kept per (site, pool) — the ready queue's `shaping_key` — the
//! way PowerMTA applies `max-smtp-out` per VirtualMTA: each traffic class's pool has its own
//! connection budget toward a site, so promotional traffic can never take the connections a
//! transactional message needs, and a provider throttling the promotional IPs does not slow
//! the transactional ones.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

mod context;

pub(crate) use context::{
    Context, JobResult, RefreshFuture, Refreshed, Report, publish_transition,
};

use super::{Job, ReadyQueue, Via};
use crate::config::WarmupCapAction;
use crate::delivery::{Connection, Outcome, Reply};
use crate::shaping::{ConnectionPermit, Day, Refusal, source_name};

/// A source address, the name it says in EHLO, and its name for limits and logs.
#[derive(Debug, Clone)]
struct Source {
    ip: IpAddr,
    ehlo: String,
    name: String,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Weighted choice among the pool's sources that backoff has not disabled for this site.
fn pick_source(cx: &Context, rq: &ReadyQueue) -> Result<Source, Reply> {
    let cfg = &cx.config;
    let Some(p) = cfg.pools.iter().find(|p| p.name == rq.pool) else {
        return Ok(Source {
            ip: IpAddr::from([0, 0, 0, 0]),
            ehlo: cfg.hostname.clone(),
            name: "default".into(),
        });
    };
    let t = now();
    let usable: Vec<_> = p
        .sources
        .iter()
        .map(|s| (s, source_name(s)))
        .filter(|(_, name)| {
            cx.backoff
                .effective(&rq.shaping_key, name, t)
                .source_disabled
                .is_none()
        })
        .collect();
    let total: u32 = usable.iter().map(|(s, _)| s.weight).sum();
    if total == 0 {
        return Err(Reply::new(
            451,
            "4.7.0",
            format!(
                "every source of pool {} is disabled for {} by a backoff rule",
                rq.pool, rq.site
            ),
        ));
    }
    let mut pick = rand::thread_rng().gen_range(0..total);
    for (s, name) in &usable {
        if pick < s.weight {
            return Ok(Source {
                ip: s.ip,
                ehlo: s.ehlo.clone(),
                name: name.clone(),
            });
        }
        pick -= s.weight;
    }
    Err(Reply::new(451, "4.3.0", "no source chosen"))
}

/// Where an attempt that made no connection was headed.
fn via_queue(rq: &ReadyQueue, source: Option<&Source>) -> Via {
    Via {
        site: rq.site.clone(),
        pool: rq.pool.clone(),
        source_ip: source.map(|s| s.ip).filter(|ip| !ip.is_unspecified()),
        provider: rq.limits.provider.clone(),
        ..Via::default()
    }
}

/// Where an attempt on an open connection went.
fn via_conn(rq: &ReadyQueue, o: &Open) -> Via {
    let c = &o.conn;
    Via {
        site: rq.site.clone(),
        pool: rq.pool.clone(),
        mx_host: c.host.clone(),
        remote_ip: Some(c.addr.ip()),
        source_ip: Some(c.source_ip).filter(|ip| !ip.is_unspecified()),
        tls: c
            .tls_params()
            .map(|(version, cipher)| crate::events::TlsInfo {
                version: version.to_string(),
                cipher: cipher.to_string(),
            }),
        provider: rq.limits.provider.clone(),
    }
}

fn refusal_reply(r: &Refusal, site: &str) -> Reply {
    Reply::new(451, "4.7.0", format!("delivery to {site} held back: {r}"))
}

/// Start a dispatcher task for `rq` (the queue calls this when a ready queue needs one).
pub(crate) fn spawn_connection(cx: Arc<Context>, rq: Arc<ReadyQueue>) {
    let tasks = cx.tasks.clone();
    tasks.spawn(async move {
        run(&cx, &rq).await;
        if rq.connection_ended() && !cx.shutdown.is_cancelled() {
            spawn_connection(cx, rq);
        }
    });
}

async fn connect(cx: &Context, rq: &ReadyQueue, source: &Source) -> Result<Connection, Reply> {
    let dest = rq.destination();
    let mut last = Reply::new(451, "4.4.1", format!("no usable address for {}", rq.site));
    for host in &dest.connection_order() {
        for addr in &host.addrs {
            if !source.ip.is_unspecified() && source.ip.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            match Connection::open(
                source.ip,
                &source.ehlo,
                &host.name,
                *addr,
                &cx.client,
                &cx.tls,
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(site = %rq.site, host = %host.name, %addr, error = %e, "connection attempt failed");
                    let r = e.as_reply();
                    cx.observe_reply(&rq.shaping_key, &source.name, &r);
                    last = r;
                    last.code = last.code.clamp(400, 499);
                    if last.enhanced.starts_with('5') {
                        last.enhanced.replace_range(0..1, "4");
                    }
                }
            }
        }
    }
    Err(last)
}

/// Defer `job` and everything waiting in the queue with the same reply.
fn defer_all(cx: &Context, rq: &ReadyQueue, job: Job, reply: Reply) {
    let via = via_queue(rq, None);
    cx.done_all(job, Outcome::Deferred(reply.clone()), &via);
    for j in rq.drain() {
        cx.done_all(j, Outcome::Deferred(reply.clone()), &via);
    }
}

/// Ask the limiter until it says yes, waiting out rate limits and full connection slots.
/// Err when backoff holds the site or source (the caller defers), or shutdown began.
async fn ask_limiter<T, F, Fut>(cx: &Context, rq: &ReadyQueue, mut ask: F) -> Result<T, Reply>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Refusal>>,
{
    loop {
        let r = match ask().await {
            Ok(v) => return Ok(v),
            Err(r) => r,
        };
        cx.metrics
            .limiter_refusals
            .with_label_values(&[r.as_str()])
            .inc();
        if matches!(
            r,
            Refusal::Suspended { .. } | Refusal::SourceDisabled { .. }
        ) {
            return Err(refusal_reply(&r, &rq.site));
        }
        // None: a connection slot frees when another connection ends; poll gently.
        let wait = r
            .retry_after(now())
            .unwrap_or(Duration::from_millis(50))
            .clamp(Duration::from_millis(1), Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cx.shutdown.cancelled() => {
                return Err(Reply::new(451, "4.3.2", "shutting down"));
            }
        }
    }
}

async fn permit_for(
    cx: &Context,
    rq: &ReadyQueue,
    source: &Source,
) -> Result<ConnectionPermit, Reply> {
    ask_limiter(cx, rq, || {
        cx.limiter
            .acquire_connection(&rq.shaping_key, &source.name, &rq.limits)
    })
    .await
}

async fn message_token(cx: &Context, rq: &ReadyQueue, source: &Source) -> Result<(), Reply> {
    ask_limiter(cx, rq, || {
        cx.limiter
            .try_acquire_message(&rq.shaping_key, &source.name, &rq.limits)
    })
    .await
}

/// Apply the warm-up cap of `source`. Returns the job back when it may be sent from it.
fn warmup_gate(cx: &Context, rq: &ReadyQueue, source: &Source, job: Job) -> Option<Job> {
    if !cx.warmup.is_warming(&source.name) {
        return Some(job);
    }
    let provider = rq.limits.provider.as_deref();
    match cx.warmup.try_take(
        &source.name,
        provider,
        Day::from_system_time(std::time::SystemTime::now()),
    ) {
        crate::shaping::WarmupDecision::Allowed => Some(job),
        crate::shaping::WarmupDecision::Capped { cap } => {
            let pool = cx.config.pools.iter().find(|p| p.name == rq.pool);
            let overflow = pool
                .filter(|p| p.on_warmup_cap == WarmupCapAction::Overflow)
                .and_then(|p| p.overflow.clone());
            match overflow {
                Some(o) => {
                    cx.metrics
                        .warmup_capped
                        .with_label_values(&[source.name.as_str(), "overflow"])
                        .inc();
                    tracing::debug!(source = %source.name, site = %rq.site, overflow = %o, "warm-up cap reached; overflowing");
                    cx.report.report(JobResult::Overflow {
                        job,
                        dest: rq.destination(),
                        pool: o,
                    });
                }
                None => {
                    cx.metrics
                        .warmup_capped
                        .with_label_values(&[source.name.as_str(), "defer"])
                        .inc();
                    let reply = Reply::new(
                        451,
                        "4.7.0",
                        format!(
                            "warm-up cap of {cap} messages today reached for source {} at {}",
                            source.name,
                            provider.unwrap_or(&rq.site)
                        ),
                    );
                    cx.done_all(job, Outcome::Deferred(reply), &via_queue(rq, Some(source)));
                }
            }
            None
        }
    }
}

struct Open {
    conn: Connection,
    source: Source,
    _permit: ConnectionPermit,
    sent: usize,
}

/// The `provider` label of the site's connections: the shaping provider, else `other` (a
/// label per site would grow with every domain mailed).
fn provider_label(rq: &ReadyQueue) -> &str {
    rq.limits.provider.as_deref().unwrap_or("other")
}

async fn close(cx: &Context, rq: &ReadyQueue, open: Open) {
    cx.metrics
        .outbound_connections
        .with_label_values(&[provider_label(rq), open.source.name.as_str()])
        .dec();
    open.conn.quit().await;
}

async fn run(cx: &Context, rq: &ReadyQueue) {
    let max_per_conn = rq.limits.max_messages_per_connection().max(1) as usize;
    let idle = rq.limits.idle_timeout();
    let mut open: Option<Open> = None;
    loop {
        // Outcomes already made are recorded before more are made. Publishing never waits,
        // so with a large queue (a million recipients released at once after a blocked
        // provider recovers) delivery would outrun the send log, and every outcome waiting
        // for it is an event and a spool state change held in memory (issue 21: ~1 GB while
        // 1M recipients drained). Past the lossless subscribers' bound a connection waits
        // here before taking its next job, as intake waits before accepting.
        tokio::select! {
            _ = cx.bus.admit() => {}
            _ = cx.shutdown.cancelled() => break,
        }
        let job = tokio::select! {
            j = rq.next(idle) => j,
            _ = cx.shutdown.cancelled() => None,
        };
        let Some(job) = job else { break };
        let job = if cx.report.is_suspended(&job, rq) {
            cx.report.report(JobResult::Held {
                job,
                site: rq.site.clone(),
                pool: rq.pool.clone(),
            });
            continue;
        } else {
            job
        };
        // A connection to an address the site no longer has (renumbered MX) is not reused.
        if let Some(o) = open.take_if(|o| !rq.has_address(o.conn.addr)) {
            close(cx, rq, o).await;
        }
        if open.is_none() {
            // Expired hosts are resolved again before a new connection.
            match cx.report.refresh(rq, &job.domain).await {
                Refreshed::Current => {}
                Refreshed::Moved(dest) => {
                    cx.report.report(JobResult::Overflow {
                        job,
                        dest,
                        pool: rq.pool.clone(),
                    });
                    continue;
                }
                Refreshed::Failed(outcome) => {
                    cx.done_all(job, outcome, &via_queue(rq, None));
                    continue;
                }
            }
            let source = match pick_source(cx, rq) {
                Ok(s) => s,
                Err(reply) => {
                    defer_all(cx, rq, job, reply);
                    break;
                }
            };
            let permit = match permit_for(cx, rq, &source).await {
                Ok(p) => p,
                Err(reply) => {
                    defer_all(cx, rq, job, reply);
                    break;
                }
            };
            match connect(cx, rq, &source).await {
                Ok(conn) => {
                    cx.metrics
                        .outbound_connections
                        .with_label_values(&[provider_label(rq), source.name.as_str()])
                        .inc();
                    open = Some(Open {
                        conn,
                        source,
                        _permit: permit,
                        sent: 0,
                    });
                }
                Err(reply) => {
                    defer_all(cx, rq, job, reply);
                    break;
                }
            }
        }
        let Some(o) = open.as_mut() else { break };
        let Some(job) = warmup_gate(cx, rq, &o.source, job) else {
            continue;
        };
        if let Err(reply) = message_token(cx, rq, &o.source).await {
            cx.done_all(job, Outcome::Deferred(reply), &via_conn(rq, o));
            if let Some(o) = open.take() {
                close(cx, rq, o).await;
            }
            continue;
        }
        let keep = deliver(cx, rq, o, job).await;
        o.sent += 1;
        if !keep || o.conn.broken || o.sent >= max_per_conn {
            let renew = o.sent >= max_per_conn;
            if let Some(o) = open.take() {
                close(cx, rq, o).await;
            }
            if renew {
                break; // a fresh task (and connection) picks up the rest
            }
        }
    }
    if let Some(o) = open.take() {
        close(cx, rq, o).await;
    }
}

/// Deliver one job on an open connection. Returns false when the session failed and the
/// connection must not be reused.
async fn deliver(cx: &Context, rq: &ReadyQueue, o: &mut Open, job: Job) -> bool {
    cx.report.in_flight(&job, true);
    let body = match job.msg.cached_body() {
        Some(b) => b,
        None => match cx.spool.read(job.msg.location).await {
            Ok(r) => Arc::new(r.body),
            Err(e) => {
                tracing::error!(queue_id = %job.msg.queue_id, error = %e, "cannot read message from the spool");
                cx.report.in_flight(&job, false);
                let reply = Reply::new(451, "4.3.0", format!("local spool read error: {e}"));
                cx.done_all(
                    job,
                    Outcome::Deferred(reply),
                    &via_queue(rq, Some(&o.source)),
                );
                return true;
            }
        },
    };
    // VERP gives every recipient its own envelope sender, so one recipient per transaction.
    // The null sender (DSNs) stays null (RFC 3464 §2), and Gannet's own DSNs still go to the
    // record's mail_from, never to the VERP address.
    let verp = cx.verp.as_ref().filter(|_| !job.msg.mail_from.is_empty());
    let max = if verp.is_some() {
        1
    } else {
        rq.limits.max_recipients_per_transaction().max(1) as usize
    };
    let mut outcomes = Vec::with_capacity(job.rcpts.len());
    let mut ok = true;
    for chunk in job.rcpts.chunks(max) {
        if !ok {
            let r = Reply::new(
                451,
                "4.4.2",
                "session ended before this recipient was tried",
            );
            outcomes.extend(chunk.iter().map(|_| Outcome::Deferred(r.clone())));
            continue;
        }
        let addrs: Vec<&str> = chunk
            .iter()
            .map(|i| job.msg.rcpts[*i as usize].as_str())
            .collect();
        let sender = match verp {
            Some(k) => std::borrow::Cow::Owned(k.address(crate::bounce::verp::VerpTarget {
                key: job.msg.location.key,
                rcpt: chunk[0],
            })),
            None => std::borrow::Cow::Borrowed(job.msg.mail_from.as_str()),
        };
        let started = std::time::Instant::now();
        let sent = o.conn.send(&sender, &addrs, &body).await;
        cx.metrics
            .attempt_duration
            .with_label_values(&[provider_label(rq)])
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(t) => outcomes.extend(t.rcpts.into_iter().map(Outcome::from_reply)),
            Err(e) => {
                let r = e.as_reply();
                let r = if r.is_permanent() {
                    Reply::new(451, "4.4.2", r.to_string())
                } else {
                    r
                };
                outcomes.extend(chunk.iter().map(|_| Outcome::Deferred(r.clone())));
                ok = false;
            }
        }
    }
    cx.report.in_flight(&job, false);
    for out in &outcomes {
        if !matches!(out, Outcome::Delivered(_)) {
            cx.observe_reply(&rq.shaping_key, &o.source.name, out.reply());
        }
    }
    let via = via_conn(rq, o);
    cx.report.report(JobResult::Done { job, outcomes, via });
    ok
}
