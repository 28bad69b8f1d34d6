//! The event stream (issue 14), from a subscriber's seat: Gannet runs in-process
//! (`::gannet::serve::run_with`, every listener and the HTTP API on real loopback sockets, real
//! sinks and DNS) so a test can register its own subscriber before anything publishes, read
//! every event, or stop reading to show what a stuck subscriber does. The outcome log lines
//! of in-process instances are captured from `tracing` (the same JSON shape as the binary's
//! stdout) and compared with the events and with `/metrics`.
//!
//! Sink addresses: 127.0.0.141–.146.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ::gannet::events::{EventBus, EventKind, Mode, Published, Subscription};
use ::gannet::serve::{Bound, BusHook};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::gannet::{ConfigDir, http};
use crate::common::*;

/// JSON log lines of every in-process instance in this test process.
pub(crate) fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(move || LogWriter(b.clone()))
            .finish();
        // Only this module installs one; under `cargo test` all its tests share it.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captured `gannet::outcome` lines about one of `rcpts`.
fn outcome_lines(rcpts: &[&str]) -> Vec<Value> {
    let logs = captured_logs();
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "gannet::outcome")
        .filter(|v| rcpts.iter().any(|r| v["recipient"] == *r))
        .collect()
}

/// Gannet running inside the test's runtime.
pub(crate) struct InProcess {
    pub(crate) bound: Bound,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ::gannet::serve::ServeError>>,
    _dir: ConfigDir,
}

impl InProcess {
    pub(crate) async fn start(config: &TestConfig, hook: BusHook) -> InProcess {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        captured_logs();
        let dir = ConfigDir::write(config);
        let cfg = ::gannet::config::Config::load(dir.path())
            .unwrap_or_else(|e| panic!("test config refused: {e}"));
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(::gannet::serve::run_with(
            cfg,
            shutdown.clone(),
            Some(tx),
            Some(hook),
        ));
        let bound = rx.await.expect("gannet stopped before it was ready");
        InProcess {
            bound,
            shutdown,
            task,
            _dir: dir,
        }
    }

    pub(crate) fn smtp(&self) -> SocketAddr {
        self.bound.smtp[0]
    }

    /// Sample values of `name` from `GET /metrics`, by their label text.
    pub(crate) async fn metric_samples(&self, name: &str) -> BTreeMap<String, f64> {
        let (status, body) = http(self.bound.http, "GET", "/metrics", None)
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
                (metric == name).then(|| {
                    (
                        labels.trim_end_matches('}').to_string(),
                        value.parse().unwrap_or(0.0),
                    )
                })
            })
            .collect()
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(70), self.task).await;
    }
}

/// A hook that hands the bus and one subscription (registered with `mode`) to the test.
pub(crate) fn subscribe_hook(
    mode: Mode,
) -> (
    BusHook,
    tokio::sync::oneshot::Receiver<(EventBus, Subscription)>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hook: BusHook = Box::new(move |bus: &EventBus| {
        let sub = bus.subscribe("test", mode);
        let _ = tx.send((bus.clone(), sub));
    });
    (hook, rx)
}

async fn send(addr: SocketAddr, from: &str, rcpts: &[&str], subject: &str) -> String {
    let mut c = SmtpClient::connect(addr).await;
    let msg = format!(
        "From: {from}\r\nSubject: {subject}\r\nX-Gannet-Campaign: spring\r\nX-Gannet-Tenant: acme\r\n\r\nevents test\r\n"
    );
    c.send_message(from, rcpts, msg.as_bytes()).await
}

/// Reads events until `done` says the list is complete (or panics after `WAIT`).
pub(crate) async fn read_until(
    sub: &mut Subscription,
    got: &mut Vec<Published>,
    done: impl Fn(&[Published]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(got) {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(p)) => got.push(p),
            Ok(None) => panic!("the bus went away; events so far: {got:#?}"),
            Err(_) => panic!("events did not arrive within {WAIT:?}; so far: {got:#?}"),
        }
    }
}

/// One message to three recipients of dest.test: `ok` is delivered at once, `later` is
/// deferred once (451 at RCPT) and delivered by the retry, `gone` is refused (550 at RCPT) and
/// gets a DSN to the sender at origin.test. The subscriber sees exactly: `received`; then, in
/// recipient order, `delivered(ok)`, `deferred(later)`, `bounced(gone)` (attempt 1); `dsn`
/// (sent) after the bounce; `delivered(later)` (attempt 2) after its deferral — each once,
/// with the common fields and the delivery facts (site, MX host, remote and source IP, TLS,
/// reply) filled. The `gannet::outcome` log lines and `gannet_recipients_total` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_delivered_deferred_and_bounced_gives_each_event_once_in_order() {
    let (port, sinks) = bind_sinks(&["127.0.0.141", "127.0.0.142"]).await;
    let (dest, origin) = (&sinks[0], &sinks[1]);
    dest.set_starttls(true);
    dest.add_rule(
        Rule::new(Stage::Rcpt, "451 4.2.1 mailbox busy")
            .matching("later@ev-dest.test")
            .times(1),
    );
    dest.reject_rcpt("gone@ev-dest.test", "550 5.1.1 no such user");
    let dns = TestDns::start(
        Zone::new()
            .mail_domain("ev-dest.test", "127.0.0.141")
            .mail_domain("ev-origin.test", "127.0.0.142"),
    )
    .await;
    let (hook, rx) = subscribe_hook(Mode::Lossless { bound: 10_000 });
    let g = InProcess::start(&TestConfig::new(&dns, port), hook).await;
    let (_bus, mut sub) = rx.await.expect("hook ran");

    let rcpts = ["ok@ev-dest.test", "later@ev-dest.test", "gone@ev-dest.test"];
    let queue_id = send(g.smtp(), "s@ev-origin.test", &rcpts, "three fates").await;
    let mut got = Vec::new();
    // Done when `later` is delivered, the DSN event is out and the DSN itself is delivered.
    read_until(&mut sub, &mut got, |ps| {
        let has = |f: &dyn Fn(&Published) -> bool| ps.iter().any(f);
        has(&|p| p.event.recipient == "later@ev-dest.test" && p.event.type_name() == "delivered")
            && has(&|p| p.event.type_name() == "dsn")
            && has(&|p| {
                p.event.recipient == "s@ev-origin.test" && p.event.type_name() == "delivered"
            })
    })
    .await;
    origin.wait_for(1, WAIT).await;

    // Sequence numbers: strictly increasing, no gap (lossless, nothing else published).
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "gap or disorder: {got:#?}");
    }
    let ours: Vec<&Published> = got
        .iter()
        .filter(|p| p.event.queue_id == queue_id)
        .collect();
    let seen: Vec<(String, String, u32)> = ours
        .iter()
        .map(|p| {
            (
                p.event.type_name().to_string(),
                p.event.recipient.clone(),
                p.event.attempt,
            )
        })
        .collect();
    let pos = |t: &str, r: &str, a: u32| {
        seen.iter()
            .position(|x| x.0 == t && x.1 == r && x.2 == a)
            .unwrap_or_else(|| panic!("no {t} event for {r} (attempt {a}): {seen:#?}"))
    };
    assert_eq!(
        seen.len(),
        6,
        "exactly six events about the message: {seen:#?}"
    );
    assert_eq!(seen[0], ("received".into(), String::new(), 0), "{seen:#?}");
    assert_eq!(
        &seen[1..4],
        &[
            ("delivered".into(), "ok@ev-dest.test".into(), 1),
            ("deferred".into(), "later@ev-dest.test".into(), 1),
            ("bounced".into(), "gone@ev-dest.test".into(), 1),
        ],
        "the first attempt's outcomes, in recipient order: {seen:#?}"
    );
    assert!(pos("dsn", "s@ev-origin.test", 0) > pos("bounced", "gone@ev-dest.test", 1));
    assert!(pos("delivered", "later@ev-dest.test", 2) > pos("deferred", "later@ev-dest.test", 1));

    // Common fields on every event of the message.
    let received = &ours[0].event;
    assert!(!received.message_id.is_empty() && received.message_id.contains('@'));
    for p in &ours {
        let e = &p.event;
        assert_eq!(e.queue_id, queue_id);
        assert_eq!(e.message_id, received.message_id, "{e:#?}");
        assert_eq!(e.sender, "s@ev-origin.test", "{e:#?}");
        assert_eq!(
            (
                e.tenant.as_str(),
                e.campaign.as_str(),
                e.class.as_str(),
                e.pool.as_str()
            ),
            ("acme", "spring", "promotional", "default"),
            "{e:#?}"
        );
        assert_eq!(e.id.len(), 36, "UUID: {e:#?}");
        assert!(e.time_us > 1_700_000_000_000_000, "{e:#?}");
    }
    match &received.kind {
        EventKind::Received {
            listener,
            client_ip,
            size,
            recipients,
            ..
        } => {
            assert_eq!(listener, "default");
            assert_eq!(client_ip, "127.0.0.1");
            assert!(*size > 0);
            assert_eq!(*recipients, 3);
        }
        k => panic!("first event is not `received`: {k:?}"),
    }
    for p in &ours {
        match &p.event.kind {
            EventKind::Delivered {
                site,
                mx_host,
                remote_ip,
                source_ip,
                tls,
                reply,
                ..
            } => {
                assert_eq!(site, "mx.ev-dest.test");
                assert_eq!(mx_host.trim_end_matches('.'), "mx.ev-dest.test");
                assert_eq!(remote_ip, "127.0.0.141");
                assert_eq!(source_ip, "127.0.0.1");
                let tls = tls.as_ref().expect("delivered over STARTTLS");
                assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
                assert!(!tls.cipher.is_empty(), "{tls:?}");
                assert!(reply.starts_with("250"), "{reply}");
            }
            EventKind::Deferred {
                reply,
                remote_ip,
                retry_in_secs,
                ..
            } => {
                assert!(reply.starts_with("451 4.2.1"), "{reply}");
                assert_eq!(remote_ip, "127.0.0.141");
                assert!(*retry_in_secs <= 1);
            }
            EventKind::Bounced { reply, mx_host, .. } => {
                assert!(reply.starts_with("550 5.1.1"), "{reply}");
                assert_eq!(mx_host.trim_end_matches('.'), "mx.ev-dest.test");
            }
            EventKind::Dsn {
                status,
                dsn_queue_id,
                failed,
                ..
            } => {
                assert_eq!(*status, ::gannet::events::DsnStatus::Sent);
                assert!(!dsn_queue_id.is_empty());
                assert_eq!(*failed, 1);
            }
            EventKind::Received { .. } => {}
            k => panic!("unexpected event about the message: {k:?}"),
        }
    }

    // The outcome log lines say the same, line for line.
    let all_rcpts = [rcpts[0], rcpts[1], rcpts[2], "s@ev-origin.test"];
    let lines = poll(WAIT, || {
        let l = outcome_lines(&all_rcpts);
        (l.len() >= 6).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("outcome lines: {:#?}", outcome_lines(&all_rcpts)));
    let line_view: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("").to_string(),
                v["recipient"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let event_view: Vec<(String, String)> = got
        .iter()
        .filter(|p| p.event.kind.reply().is_some() || p.event.type_name() == "dsn")
        .map(|p| (p.event.type_name().to_string(), p.event.recipient.clone()))
        .collect();
    assert_eq!(
        line_view, event_view,
        "log lines follow the events one to one"
    );

    // And the counters agree with both.
    let counters = g.metric_samples("gannet_recipients_total").await;
    let count = |outcome: &str| {
        counters
            .iter()
            .filter(|(l, _)| l.contains(&format!("outcome=\"{outcome}\"")))
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    for outcome in ["delivered", "deferred", "bounced"] {
        let n = event_view.iter().filter(|(t, _)| t == outcome).count();
        assert_eq!(count(outcome), n as f64, "{outcome}: {counters:?}");
    }
    assert_eq!(
        count("delivered"),
        3.0,
        "ok, later and the DSN: {counters:?}"
    );
    let accepted = g.metric_samples("gannet_accepted_total").await;
    assert_eq!(
        accepted.values().sum::<f64>(),
        2.0,
        "the message and its DSN, each counted once: {accepted:?}"
    );
    drop(sub);
    g.stop().await;
}

/// A lossy subscriber that never reads does not hold anything up: 30 messages are all
/// delivered while its queue (4 events) stays full, and every event it could not take is
/// counted in `gannet_events_dropped_total{subscriber="test"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lossy_subscriber_does_not_slow_delivery_and_its_drops_are_counted() {
    let (port, sinks) = bind_sinks(&["127.0.0.143"]).await;
    let dns = TestDns::start(Zone::new().mail_domain("ev-lossy.test", "127.0.0.143")).await;
    let (hook, rx) = subscribe_hook(Mode::Lossy { capacity: 4 });
    let g = InProcess::start(&TestConfig::new(&dns, port), hook).await;
    let (_bus, stuck) = rx.await.expect("hook ran");
    const N: usize = 30;
    for i in 0..N {
        let rcpt = format!("r{i}@ev-lossy.test");
        send(g.smtp(), "s@ev-lossy.test", &[rcpt.as_str()], "lossy").await;
    }
    sinks[0].wait_for(N, WAIT).await;
    // Every message: one `received`, one `delivered` (published just after the sink's 250).
    let deadline = tokio::time::Instant::now() + WAIT;
    let total = loop {
        let events = g.metric_samples("gannet_events_total").await;
        let total: f64 = events.values().sum();
        if total >= (2 * N) as f64 || tokio::time::Instant::now() > deadline {
            assert_eq!(total, (2 * N) as f64, "{events:?}");
            break total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dropped = g.metric_samples("gannet_events_dropped_total").await;
    assert_eq!(
        dropped.get("subscriber=\"test\"").copied(),
        Some(total - 4.0),
        "all but the 4 queued events dropped and counted: {dropped:?}"
    );
    drop(stuck);
    g.stop().await;
}

/// A lossless subscriber that stops reading pushes back on acceptance: once it is more than
/// its bound (3 events) behind, the next message gets no reply to its DATA (the session
/// waits; nothing is refused or lost); as soon as the subscriber reads again the message is
/// accepted and delivered, and the subscriber has every event, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lossless_subscriber_holds_back_acceptance_and_loses_nothing() {
    let (port, sinks) = bind_sinks(&["127.0.0.144"]).await;
    let dns = TestDns::start(Zone::new().mail_domain("ev-lossless.test", "127.0.0.144")).await;
    let (hook, rx) = subscribe_hook(Mode::Lossless { bound: 3 });
    let g = InProcess::start(&TestConfig::new(&dns, port), hook).await;
    let (bus, mut sub) = rx.await.expect("hook ran");

    // Two messages: received + delivered each = 4 unread events > bound 3.
    send(
        g.smtp(),
        "s@ev-lossless.test",
        &["a@ev-lossless.test"],
        "one",
    )
    .await;
    send(
        g.smtp(),
        "s@ev-lossless.test",
        &["b@ev-lossless.test"],
        "two",
    )
    .await;
    sinks[0].wait_for(2, WAIT).await;
    assert!(
        poll(WAIT, || bus.over_bound().then_some(()))
            .await
            .is_some(),
        "4 unread events are over the bound of 3"
    );

    let addr = g.smtp();
    let third = tokio::spawn(async move {
        send(addr, "s@ev-lossless.test", &["c@ev-lossless.test"], "three").await
    });
    // While the subscriber does not read, the third message is not accepted (the client
    // still waits for its reply) and nothing new reaches the sink.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !third.is_finished(),
        "acceptance waits for the stuck subscriber"
    );
    assert_eq!(sinks[0].messages().len(), 2);

    // Reading again releases it.
    let mut got = Vec::new();
    read_until(&mut sub, &mut got, |ps| {
        ps.iter().any(|p| {
            p.event.recipient == "c@ev-lossless.test" && p.event.type_name() == "delivered"
        })
    })
    .await;
    let queue_id = tokio::time::timeout(WAIT, third)
        .await
        .expect("third message accepted once the subscriber reads")
        .expect("send task");
    assert!(!queue_id.is_empty());
    sinks[0].wait_for(3, WAIT).await;
    let kinds: Vec<(u64, String, String)> = got
        .iter()
        .map(|p| {
            (
                p.seq,
                p.event.type_name().to_string(),
                p.event.recipient.clone(),
            )
        })
        .collect();
    for (i, k) in kinds.iter().enumerate() {
        assert_eq!(k.0, i as u64 + 1, "every event, no gap: {kinds:#?}");
    }
    for r in ["a", "b", "c"] {
        let rcpt = format!("{r}@ev-lossless.test");
        assert_eq!(
            kinds
                .iter()
                .filter(|k| k.1 == "delivered" && k.2 == rcpt)
                .count(),
            1,
            "{kinds:#?}"
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| k.1 == "received").count(),
        3,
        "{kinds:#?}"
    );
    g.stop().await;
}
