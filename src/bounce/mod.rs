//! Bounces: what Gannet makes of every "no" — reply classification (`classify`, rules from
//! `config/bounce_rules.toml`) — and the delivery status notifications Gannet sends (RFC 3464)
//! when recipients fail (`dsn`, `notify_loop`).
//!
//! Invariant: a DSN owed is durable. The queue saves each failed recipient's final reply and
//! remote host as owed with its state before it asks for the DSN; `notify_loop` marks them
//! sent (and releases the message) only after intake has made the DSN itself durable. A DSN
//! that cannot be built or queued is retried with backoff (1 s doubling to 5 min), one
//! `dsn` event with status `failed` per failure, never dropped; a stop or crash before it is
//! queued leaves it owed, and recovery asks for it again.
//!
//! Never does: decide that a recipient failed or when to retry (queue/), suppress an address
//! (suppression/), or send anything itself (the DSN goes through intake like any other message,
//! from the `dsn` origin, which `[dkim_policy] reject_unsigned` does not refuse).

pub mod classify;
pub mod dsn;
pub mod inbound;
pub mod report;
#[doc(hidden)]
pub mod samples;
pub mod verp;

pub use classify::{Classification, Classifier, ReplyView, RuleRef, RulesError, split_reply};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::DSN_LISTENER;
use crate::delivery::Reply;
use crate::events::{DsnStatus, Event, EventBus, EventKind};
use crate::message::{Envelope, Origin, SharedAcceptor, Submission};
use crate::queue::{BounceRequest, QueuedMessage};
use crate::spool::Spool;

/// How `notify_loop` runs.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// `[bounce] hold_dsns`: keep every DSN owed in the spool instead of queueing it.
    pub hold: bool,
    /// First retry delay after a DSN could not be built or queued; doubles per failure.
    pub retry_first: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// Stop taking new requests (shutdown); what is not queued stays owed in the spool.
    pub shutdown: CancellationToken,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            hold: false,
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            shutdown: CancellationToken::new(),
        }
    }
}

/// The delay before retry number `failures` (1 = after the first failure).
fn retry_delay(opts: &NotifyOptions, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    opts.retry_first
        .checked_mul(factor)
        .unwrap_or(opts.retry_max)
        .min(opts.retry_max)
}

/// Turn bounce requests into DSN messages and submit them like any other mail. Runs until the
/// channel closes (and every retry has gone) or `opts.shutdown` is cancelled; a request being
/// handled then is finished first. A DSN that fails to build or queue is retried with backoff
/// and stays owed in the spool meanwhile. The failed message is released from the spool only
/// after its last owed DSN is durable. Publishes one `dsn` event per attempt (sent, failed with
/// the error, or held).
pub async fn notify_loop(
    mut rx: mpsc::Receiver<BounceRequest>,
    acceptor: SharedAcceptor,
    spool: Spool,
    hostname: String,
    bus: EventBus,
    opts: NotifyOptions,
) {
    let cx = Notifier {
        acceptor,
        spool,
        hostname,
        bus,
    };
    // Requests waiting for their retry, by due time (and a sequence number for ties).
    let mut retries: BTreeMap<(Instant, u64), (BounceRequest, u32)> = BTreeMap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let next = retries.keys().next().map(|(t, _)| *t);
        if !open && next.is_none() {
            break;
        }
        let (req, failures) = tokio::select! {
            biased;
            _ = opts.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                match retries.pop_first() {
                    Some((_, r)) => r,
                    None => continue,
                }
            }
            r = rx.recv(), if open => match r {
                Some(req) => (req, 0),
                None => {
                    open = false;
                    continue;
                }
            },
        };
        if opts.hold {
            cx.hold(&req).await;
            continue;
        }
        if let Err(error) = cx.send(&req).await {
            let failures = failures + 1;
            let delay = retry_delay(&opts, failures);
            tracing::warn!(queue_id = %req.msg.queue_id, error = %error, failures,
                retry_in_secs = delay.as_secs_f64(), "DSN not queued; it stays owed and is retried");
            cx.publish(
                &req,
                DsnStatus::Failed,
                String::new(),
                format!("{error}; retry {failures} in {}s", delay.as_secs()),
            );
            seq += 1;
            retries.insert((Instant::now() + delay, seq), (req, failures));
        }
    }
    if !retries.is_empty() {
        tracing::info!(
            owed = retries.len(),
            "DSN writer stopping with DSNs still owed; they are sent after the next start"
        );
    }
}

/// What the DSN writer needs.
struct Notifier {
    acceptor: SharedAcceptor,
    spool: Spool,
    hostname: String,
    bus: EventBus,
}

/// Why one DSN could not be queued (it is retried).
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("cannot build DSN: {0}")]
    Build(std::io::Error),
    #[error("intake refused the DSN: {0}")]
    Refused(String),
}

impl Notifier {
    fn publish(
        &self,
        req: &BounceRequest,
        status: DsnStatus,
        dsn_queue_id: String,
        error: String,
    ) -> u64 {
        let msg = &req.msg;
        let mut e = Event::new(EventKind::Dsn {
            status,
            dsn_queue_id,
            failed: req.failed.len() as u32,
            error,
        });
        e.queue_id = msg.queue_id.clone();
        e.message_id = msg.message_id.clone();
        e.recipient = msg.mail_from.clone();
        e.sender = msg.mail_from.clone();
        e.tenant = msg.tenant.clone();
        e.campaign = msg.campaign.clone();
        e.class = msg.class.clone();
        e.pool = req.pool.clone();
        self.bus.publish(e)
    }

    /// `[bounce] hold_dsns`: the DSN stays owed. Its state is pushed to the index files first,
    /// so the `held` event means a restart (even kill -9) will ask for it again.
    async fn hold(&self, req: &BounceRequest) {
        let s = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || s.flush_index()).await;
        tracing::info!(queue_id = %req.msg.queue_id, failed = req.failed.len(),
            "DSN held ([bounce] hold_dsns = true); it stays owed in the spool");
        self.publish(req, DsnStatus::Held, String::new(), String::new());
    }

    /// Build the DSN, have intake make it durable, then mark its recipients no longer owed
    /// (releasing the message when nothing else is left).
    async fn send(&self, req: &BounceRequest) -> Result<(), NotifyError> {
        let msg = &req.msg;
        let original = match self.spool.read(msg.location).await {
            Ok(r) => r.body,
            Err(e) => {
                tracing::warn!(queue_id = %msg.queue_id, error = %e, "original message unreadable; DSN goes without its header");
                Vec::new()
            }
        };
        let body = build_dsn(&self.hostname, msg, req, &original).map_err(NotifyError::Build)?;
        let sub = Submission {
            envelope: Envelope {
                mail_from: String::new(),
                rcpts: vec![msg.mail_from.clone()],
            },
            body,
            origin: Origin {
                listener: DSN_LISTENER.into(),
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: self.hostname.clone(),
                auth_user: None,
                api_token: None,
            },
            class: Some(msg.class.clone()),
            tenant: (!msg.tenant.is_empty()).then(|| msg.tenant.clone()),
            campaign: (!msg.campaign.is_empty()).then(|| msg.campaign.clone()),
        };
        let accepted = self
            .acceptor
            .accept(sub)
            .await
            .map_err(|e| NotifyError::Refused(e.to_string()))?;
        let seq = self.publish(req, DsnStatus::Sent, accepted.queue_id, String::new());
        let sent: Vec<u32> = req.failed.iter().map(|o| o.rcpt).collect();
        let (states, owed, done) = msg.dsn_queued(&sent);
        if done {
            // Released only once the `dsn` event is durable too.
            self.bus.wait_durable(seq).await;
            self.spool.complete(msg.location.key);
        } else {
            self.spool.record_progress(msg.location.key, &states, &owed);
        }
        Ok(())
    }
}

/// The DSN message for `req`'s failed recipients of `msg`.
fn build_dsn(
    hostname: &str,
    msg: &Arc<QueuedMessage>,
    req: &BounceRequest,
    original: &[u8],
) -> std::io::Result<Vec<u8>> {
    let arrival = httpdate::fmt_http_date(
        UNIX_EPOCH
            + Duration::from_millis(
                msg.received_at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
            ),
    )
    .replace("GMT", "+0000");
    let replies: Vec<Reply> = req
        .failed
        .iter()
        .map(|o| Reply::new(o.code, &o.enhanced, o.text.clone()))
        .collect();
    let input = dsn::DsnInput {
        reporting_mta: hostname,
        to: &msg.mail_from,
        queue_id: &msg.queue_id,
        arrival_date: arrival,
        failed: req
            .failed
            .iter()
            .zip(&replies)
            .map(|(o, reply)| dsn::FailedRecipient {
                address: msg.rcpts.get(o.rcpt as usize).map_or("", String::as_str),
                reply,
                remote_host: o.remote_host.as_deref(),
            })
            .collect(),
        original,
    };
    dsn::build(&input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SpoolConfig;
    use crate::message::{Accepted, Acceptor, Rejection};
    use crate::metrics::Metrics;
    use crate::spool::{DsnOwed, MessageRecord, RcptState};
    use futures::future::BoxFuture;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses the first `fail` submissions (451), then accepts; keeps what it accepted.
    struct FlakyAcceptor {
        fail: usize,
        calls: AtomicUsize,
        accepted: Mutex<Vec<Submission>>,
    }

    impl Acceptor for FlakyAcceptor {
        fn accept(&self, sub: Submission) -> BoxFuture<'static, Result<Accepted, Rejection>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let r = if n < self.fail {
                Err(Rejection::new(
                    451,
                    "4.3.1",
                    "spool busy, try again shortly",
                ))
            } else {
                self.accepted.lock().unwrap().push(sub);
                Ok(Accepted {
                    queue_id: format!("DSN{n}"),
                })
            };
            Box::pin(async move { r })
        }
    }

    #[test]
    fn retry_delay_doubles_from_one_second_to_five_minutes() {
        let o = NotifyOptions::default();
        let secs: Vec<u64> = [1, 2, 3, 4, 9, 10, 40, u32::MAX]
            .iter()
            .map(|f| retry_delay(&o, *f).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 256, 300, 300, 300]);
    }

    /// Issue 15 item 5: a DSN that fails to queue is retried with backoff, never dropped; each
    /// failure is a `dsn` event with status failed and the error; the DSN arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dsn_refused_twice_is_retried_until_queued() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let config = SpoolConfig {
            path: dir.path().to_path_buf(),
            ..SpoolConfig::default()
        };
        let (spool, _) = Spool::open(&config, dir.path(), metrics.clone()).unwrap();
        let record = MessageRecord {
            received_at_ms: 1,
            mail_from: "s@a.test".into(),
            rcpts: vec!["ok@b.test".into(), "bad@b.test".into()],
            class: "promotional".into(),
            tenant: String::new(),
            campaign: String::new(),
            body: b"Subject: orig\r\n\r\nbody\r\n".to_vec(),
            attrs: Default::default(),
        };
        let loc = spool.append(&record).await.unwrap();
        let owed = vec![DsnOwed {
            rcpt: 1,
            code: 550,
            enhanced: "5.1.1".into(),
            text: "no such user".into(),
            remote_host: Some("mx.b.test".into()),
        }];
        let states = vec![RcptState::Delivered, RcptState::Failed];
        spool.record_progress(loc.key, &states, &owed);
        let (msg, _) = QueuedMessage::from_record(loc, record, states);
        let msg = Arc::new(msg.with_owed_dsns(owed.clone()));

        let bus = EventBus::new(&metrics.registry);
        let mut events = bus.subscribe("test", crate::events::Mode::Lossless { bound: 100 });
        let acceptor = Arc::new(FlakyAcceptor {
            fail: 2,
            calls: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(4);
        let opts = NotifyOptions {
            retry_first: Duration::from_millis(10),
            ..NotifyOptions::default()
        };
        let task = tokio::spawn(notify_loop(
            rx,
            acceptor.clone(),
            spool.clone(),
            "gannet.test".into(),
            bus.clone(),
            opts,
        ));
        tx.send(BounceRequest {
            msg: msg.clone(),
            failed: owed,
            pool: "p".into(),
        })
        .await
        .unwrap();
        drop(tx);
        // The loop ends once the channel is closed and no retry is left.
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the DSN writer finishes once the DSN is queued")
            .unwrap();

        assert_eq!(acceptor.calls.load(Ordering::SeqCst), 3);
        let accepted = acceptor.accepted.lock().unwrap();
        assert_eq!(accepted.len(), 1, "one DSN queued");
        let dsn = String::from_utf8_lossy(&accepted[0].body);
        assert!(dsn.contains("Final-Recipient: rfc822; bad@b.test"), "{dsn}");
        assert!(!dsn.contains("ok@b.test"), "{dsn}");
        assert_eq!(accepted[0].origin.listener, DSN_LISTENER);
        assert_eq!(accepted[0].envelope.mail_from, "");

        let mut statuses = Vec::new();
        while let Some(p) = events.try_recv() {
            if let EventKind::Dsn { status, error, .. } = &p.event.kind {
                statuses.push(*status);
                if *status == DsnStatus::Failed {
                    assert!(
                        error.contains("4.3.1"),
                        "the event names the error: {error}"
                    );
                }
            }
        }
        assert_eq!(
            statuses,
            [DsnStatus::Failed, DsnStatus::Failed, DsnStatus::Sent]
        );
        assert!(
            msg.owed_dsns().is_empty(),
            "nothing owed after the DSN is queued"
        );
    }
}
