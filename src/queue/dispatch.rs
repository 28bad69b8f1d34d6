//! Dispatcher tasks: each drains one ready queue over one outbound connection at a time.
//!
//! A task binds to a source address of the queue's pool (weighted choice), connects to the
//! site's hosts in order, and delivers jobs one after the other on the same connection until
//! the queue stays empty for the idle timeout or the per-connection message cap is reached.
//! A connection that cannot be made to any host defers its job and every job waiting in the
//! queue (they would meet the same wall), rather than hammering a dead site.

use std::net::IpAddr;
use std::sync::Arc;

use rand::Rng;

use super::{Job, Queue, ReadyQueue};
use crate::delivery::{Connection, Outcome, Reply};

/// A source address and the name it says in EHLO.
#[derive(Debug, Clone)]
struct Source {
    ip: IpAddr,
    ehlo: String,
}

fn pick_source(q: &Queue, pool: &str) -> Source {
    let cfg = &q.inner.config;
    let fallback = Source {
        ip: IpAddr::from([0, 0, 0, 0]),
        ehlo: cfg.hostname.clone(),
    };
    let Some(p) = cfg.pools.iter().find(|p| p.name == pool) else {
        return fallback;
    };
    let total: u32 = p.sources.iter().map(|s| s.weight).sum();
    if total == 0 {
        return fallback;
    }
    let mut pick = rand::thread_rng().gen_range(0..total);
    for s in &p.sources {
        if pick < s.weight {
            return Source {
                ip: s.ip,
                ehlo: s.ehlo.clone(),
            };
        }
        pick -= s.weight;
    }
    fallback
}

pub(super) fn spawn_connection(q: Queue, rq: Arc<ReadyQueue>) {
    let tasks = q.inner.tasks.clone();
    tasks.spawn(async move {
        run(&q, &rq).await;
        if rq.connection_ended() && !q.inner.shutdown.is_cancelled() {
            spawn_connection(q, rq);
        }
    });
}

async fn connect(q: &Queue, rq: &ReadyQueue, source: &Source) -> Result<Connection, Reply> {
    let dest = rq.destination();
    let mut last = Reply::new(451, "4.4.1", format!("no usable address for {}", rq.site));
    for host in &dest.hosts {
        for addr in &host.addrs {
            if !source.ip.is_unspecified() && source.ip.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            match Connection::open(
                source.ip,
                &source.ehlo,
                &host.name,
                *addr,
                &q.inner.client,
                &q.inner.tls,
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(site = %rq.site, host = %host.name, %addr, error = %e, "connection attempt failed");
                    last = e.as_reply();
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

async fn run(q: &Queue, rq: &ReadyQueue) {
    let cfg = &q.inner.config.delivery;
    let source = pick_source(q, &rq.pool);
    let source_label = source.ip.to_string();
    let mut conn: Option<Connection> = None;
    let mut sent = 0usize;
    let gauge = q
        .inner
        .metrics
        .outbound_connections
        .with_label_values(&[rq.site.as_str(), source_label.as_str()]);
    loop {
        let job = tokio::select! {
            j = rq.next(cfg.idle_timeout) => j,
            _ = q.inner.shutdown.cancelled() => None,
        };
        let Some(job) = job else { break };
        let Some(job) = q.hold_if_suspended(job, rq) else {
            continue;
        };
        if conn.is_none() {
            match connect(q, rq, &source).await {
                Ok(c) => {
                    gauge.inc();
                    conn = Some(c);
                }
                Err(reply) => {
                    q.complete_all(job, Outcome::Deferred(reply.clone()), None, None);
                    for j in rq.drain() {
                        q.complete_all(j, Outcome::Deferred(reply.clone()), None, None);
                    }
                    break;
                }
            }
        }
        let Some(c) = conn.as_mut() else { break };
        let keep = deliver(q, c, job).await;
        sent += 1;
        if !keep || c.broken || sent >= cfg.max_messages_per_connection {
            if let Some(c) = conn.take() {
                gauge.dec();
                c.quit().await;
            }
            if sent >= cfg.max_messages_per_connection {
                break; // a fresh task (and connection) picks up the rest
            }
        }
    }
    if let Some(c) = conn.take() {
        gauge.dec();
        c.quit().await;
    }
}

/// Deliver one job on an open connection. Returns false when the session failed and the
/// connection must not be reused.
async fn deliver(q: &Queue, c: &mut Connection, job: Job) -> bool {
    q.inner.in_flight.insert(
        job.id,
        (job.msg.clone(), job.domain.clone(), job.rcpts.len()),
    );
    let body = match job.msg.cached_body() {
        Some(b) => b,
        None => match q.inner.spool.read(job.msg.location).await {
            Ok(r) => Arc::new(r.body),
            Err(e) => {
                tracing::error!(queue_id = %job.msg.queue_id, error = %e, "cannot read message from the spool");
                q.inner.in_flight.remove(&job.id);
                let reply = Reply::new(451, "4.3.0", format!("local spool read error: {e}"));
                q.complete_all(job, Outcome::Deferred(reply), None, None);
                return true;
            }
        },
    };
    let max = q
        .inner
        .config
        .delivery
        .max_recipients_per_transaction
        .max(1);
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
        match c.send(&job.msg.mail_from, &addrs, &body).await {
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
    q.inner.in_flight.remove(&job.id);
    let host = c.host.clone();
    let ip = c.addr.ip();
    q.complete(job, outcomes, Some(&host), Some(ip));
    ok
}
