//! In-process pipeline tests: intake → spool → queue → delivery client → a small scripted sink.
//! The black-box tests over the real binary live in tests/e2e.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::MxResolver;
use crate::intake::Intake;
use crate::message::{Acceptor, Envelope, Origin, Submission};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::spool::Spool;

#[derive(Default)]
struct SinkLog {
    /// (mail from, rcpts, data)
    messages: Vec<(String, Vec<String>, String)>,
    rcpt_attempts: usize,
}

/// A scripted sink: `rcpt_reply(attempt_no, rcpt)` decides each RCPT reply.
async fn sink(
    rcpt_reply: impl Fn(usize, &str) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<SinkLog>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(SinkLog::default()));
    let rcpt_reply = Arc::new(rcpt_reply);
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let log = log2.clone();
            let rcpt_reply = rcpt_reply.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let (mut from, mut rcpts) = (String::new(), Vec::new());
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let up = line.to_ascii_uppercase();
                    let reply = if up.starts_with("EHLO") {
                        "250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n".to_string()
                    } else if up.starts_with("MAIL") {
                        from = line.trim().to_string();
                        rcpts.clear();
                        "250 ok\r\n".into()
                    } else if up.starts_with("RCPT") {
                        let n = {
                            let mut l = log.lock().unwrap();
                            l.rcpt_attempts += 1;
                            l.rcpt_attempts
                        };
                        let rep = rcpt_reply(n, line.trim());
                        if rep.starts_with('2') {
                            rcpts.push(line.trim().to_string());
                        }
                        rep
                    } else if up.starts_with("DATA") {
                        if rcpts.is_empty() {
                            "554 no valid recipients\r\n".into()
                        } else {
                            w.write_all(b"354 go\r\n").await.unwrap();
                            let mut data = String::new();
                            loop {
                                line.clear();
                                r.read_line(&mut line).await.unwrap();
                                if line == ".\r\n" {
                                    break;
                                }
                                data.push_str(&line);
                            }
                            log.lock()
                                .unwrap()
                                .messages
                                .push((from.clone(), rcpts.clone(), data));
                            "250 queued\r\n".into()
                        }
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        "250 ok\r\n".into()
                    };
                    w.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, log)
}

async fn pipeline(dir: &std::path::Path, sink: SocketAddr, extra: &str) -> (Intake, Queue) {
    let (intake, queue, _) = pipeline_with_events(dir, sink, extra).await;
    (intake, queue)
}

/// [`pipeline`], plus a lossless subscription to every event it publishes.
async fn pipeline_with_events(
    dir: &std::path::Path,
    sink: SocketAddr,
    extra: &str,
) -> (Intake, Queue, crate::events::Subscription) {
    let text = format!(
        "hostname = \"gannet.test\"\n\
         [spool]\npath = \"{}\"\n\
         [delivery]\nretry_schedule = [\"200ms\"]\nretry_jitter = 0.0\nidle_timeout = \"200ms\"\n{extra}\n\
         [[route]]\ndomain = \"*\"\nhost = \"{sink}\"\n\
         [[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"out.test\" }}]\n\
         [class.promotional]\npool = \"p\"\n",
        dir.display()
    );
    let config = Arc::new(Config::from_toml(&text, "test").unwrap());
    let metrics = Metrics::new();
    let (spool, _) = Spool::open(&config.spool, dir, metrics.clone()).unwrap();
    let resolver = MxResolver::new(&config).unwrap();
    let bus = crate::events::EventBus::new(&metrics.registry);
    let events = bus.subscribe("test", crate::events::Mode::Lossless { bound: 100_000 });
    let (queue, bounce_rx) = Queue::start(
        config.clone(),
        spool.clone(),
        resolver,
        metrics.clone(),
        bus.clone(),
        crate::queue::Shapers::in_process(
            crate::shaping::Shaping::from_config(&config).unwrap(),
            &config,
        )
        .unwrap(),
        None,
        CancellationToken::new(),
    )
    .unwrap();
    let intake = Intake::new(config.clone(), queue.clone(), None, metrics, bus.clone());
    tokio::spawn(crate::bounce::notify_loop(
        bounce_rx,
        Arc::new(intake.clone()),
        spool,
        "gannet.test".into(),
        bus,
        crate::bounce::NotifyOptions::default(),
    ));
    (intake, queue, events)
}

fn submission(from: &str, rcpts: &[&str]) -> Submission {
    Submission {
        envelope: Envelope {
            mail_from: from.into(),
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        },
        body: b"From: a@s.test\r\nSubject: t\r\n\r\nhello\r\n.dot line\r\n".to_vec(),
        origin: Origin {
            listener: "default".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "c".into(),
            auth_user: None,
            api_token: None,
        },
        class: None,
        tenant: None,
        campaign: None,
    }
}

async fn wait_for(log: &Arc<Mutex<SinkLog>>, n: usize) {
    for _ in 0..200 {
        if log.lock().unwrap().messages.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "sink got {} messages, wanted {n}",
        log.lock().unwrap().messages.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_each_recipient_once_with_headers_added() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|_, _| "250 ok\r\n".into()).await;
    let (intake, q, mut events) = pipeline_with_events(dir.path(), addr, "").await;
    let a = intake
        .accept(submission(
            "s@s.test",
            &["a@d1.test", "b@d1.test", "c@d2.test"],
        ))
        .await
        .unwrap();
    assert!(!a.queue_id.is_empty());
    // Every recipient reaches a final outcome: three `delivered` events.
    let mut outcomes = Vec::new();
    while outcomes
        .iter()
        .filter(|(t, _): &&(String, String)| t == "delivered")
        .count()
        < 3
    {
        let p = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("three deliveries within 10 s")
            .expect("bus alive");
        if p.event.kind.reply().is_some() {
            outcomes.push((p.event.type_name().to_string(), p.event.recipient.clone()));
        }
    }
    // Nothing is left to deliver again: the queue is empty and no outcome but `delivered`.
    assert!(
        q.list(&crate::queue::Filter::default())
            .await
            .queues
            .is_empty()
    );
    let mut rcpts: Vec<&str> = outcomes.iter().map(|(_, r)| r.as_str()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["a@d1.test", "b@d1.test", "c@d2.test"],
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|(t, _)| t == "delivered"),
        "{outcomes:?}"
    );
    wait_for(&log, 2).await;
    let l = log.lock().unwrap();
    // Each recipient was offered to the sink exactly once (one per domain transaction).
    let mut sent: Vec<String> = l.messages.iter().flat_map(|m| m.1.clone()).collect();
    sent.sort();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(l.rcpt_attempts, 3, "no recipient was tried twice");
    assert_eq!(l.messages.len(), 2, "one transaction per recipient domain");
    let data = &l.messages[0].2;
    assert!(data.contains("Message-ID: <"), "{data}");
    assert!(data.contains("Date: "), "{data}");
    assert!(
        data.contains("\r\n..dot line\r\n"),
        "dot-stuffed on the wire: {data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_then_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|n, _| {
        if n == 1 {
            "451 4.7.1 try later\r\n".into()
        } else {
            "250 ok\r\n".into()
        }
    })
    .await;
    let (intake, _q) = pipeline(dir.path(), addr, "").await;
    intake
        .accept(submission("s@s.test", &["a@d1.test"]))
        .await
        .unwrap();
    wait_for(&log, 1).await;
    assert_eq!(log.lock().unwrap().rcpt_attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_sends_one_dsn_and_no_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|_, l| {
        if l.contains("bad@") {
            "550 5.1.1 no such user\r\n".into()
        } else {
            "250 ok\r\n".into()
        }
    })
    .await;
    let (intake, _q) = pipeline(dir.path(), addr, "").await;
    intake
        .accept(submission("sender@s.test", &["bad@d1.test"]))
        .await
        .unwrap();
    wait_for(&log, 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let l = log.lock().unwrap();
    assert_eq!(l.messages.len(), 1, "only the DSN arrives");
    let (from, rcpts, data) = &l.messages[0];
    assert_eq!(from, "MAIL FROM:<>");
    assert!(rcpts[0].contains("sender@s.test"));
    assert!(data.contains("Status: 5.1.1"), "{data}");
    assert_eq!(l.rcpt_attempts, 2, "bad@ once, DSN once: no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|_, l| {
        if l.contains("slow@") {
            "451 4.7.1 later\r\n".into()
        } else {
            "250 ok\r\n".into()
        }
    })
    .await;
    let (intake, _q) = pipeline(dir.path(), addr, "max_age = \"1s\"").await;
    intake
        .accept(submission("sender@s.test", &["slow@d1.test"]))
        .await
        .unwrap();
    wait_for(&log, 1).await;
    let l = log.lock().unwrap();
    assert!(
        l.messages[0].2.contains("Status: 5.4.7"),
        "{}",
        l.messages[0].2
    );
    assert!(l.rcpt_attempts >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_campaign_waits_then_drains_on_resume_and_purge_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|_, _| "250 ok\r\n".into()).await;
    let (intake, q) = pipeline(dir.path(), addr, "").await;
    let f = crate::queue::Filter {
        campaign: Some("spring".into()),
        ..Default::default()
    };
    q.suspend(f.clone(), "test");
    let mut held = submission("s@s.test", &["a@d1.test"]);
    held.campaign = Some("spring".into());
    intake.accept(held).await.unwrap();
    let mut other = submission("s@s.test", &["b@d1.test"]);
    other.campaign = Some("autumn".into());
    intake.accept(other).await.unwrap();
    wait_for(&log, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.lock().unwrap().messages.len(),
        1,
        "suspended campaign held"
    );
    let listing = q.list(&f).await;
    assert_eq!(listing.queues.len(), 1);
    assert_eq!(listing.queues[0].state, "suspended");
    let (removed, released) = q.resume(&f, "test");
    assert_eq!((removed, released), (1, 1));
    wait_for(&log, 2).await;

    // Purge: a held campaign is deleted and never delivered.
    let g = crate::queue::Filter {
        campaign: Some("winter".into()),
        ..Default::default()
    };
    q.suspend(g.clone(), "test");
    let mut w = submission("s@s.test", &["c@d1.test", "d@d1.test"]);
    w.campaign = Some("winter".into());
    intake.accept(w).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(q.purge(&g, "test").await, 2);
    q.resume(&g, "test");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.lock().unwrap().messages.len(), 2);
    assert_eq!(q.list(&g).await.queues.len(), 0);
}

/// Issue 15 item 3: the ready-queue and destination maps are pruned. After mail to many
/// domains (over two sites) is delivered, the sweep drops every idle ready queue and every
/// destination past its grace, and mail routed afterwards still goes out (a fresh queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_maps_are_pruned_once_their_mail_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = sink(|_, _| "250 ok\r\n".into()).await;
    let (other_addr, other_log) = sink(|_, _| "250 ok\r\n".into()).await;
    let extra = format!(
        "ready_queue_idle = \"0s\"\n\
         [[route]]\ndomain = \"other.test\"\nhost = \"{other_addr}\""
    );
    let (intake, q) = pipeline(dir.path(), addr, &extra).await;
    let domains: Vec<String> = (0..40).map(|i| format!("r@d{i}.test")).collect();
    let mut rcpts: Vec<&str> = domains.iter().map(String::as_str).collect();
    rcpts.push("r@other.test");
    intake.accept(submission("s@s.test", &rcpts)).await.unwrap();
    wait_for(&log, 40).await;
    wait_for(&other_log, 1).await;
    let busy = q.routing_stats();
    assert_eq!(
        (busy.ready_queues, busy.destinations),
        (2, 41),
        "one ready queue per site, one cached answer per domain: {busy:?}"
    );
    // Far enough ahead that every answer is past max_ttl + stale_grace. Ready queues go as soon
    // as their connection has closed (idle_timeout 200 ms; wait for it, no timing asserted).
    let later = std::time::Instant::now() + Duration::from_secs(3 * 3600);
    let mut left = q.sweep_routing(later);
    for _ in 0..400 {
        if left.ready_queues == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        left = q.sweep_routing(later);
    }
    assert_eq!(left, crate::queue::RoutingStats::default(), "{left:?}");
    // A sweep never costs mail: the next message makes a fresh queue and is delivered.
    intake
        .accept(submission("s@s.test", &["again@d0.test"]))
        .await
        .unwrap();
    wait_for(&log, 41).await;
    assert_eq!(q.routing_stats().ready_queues, 1);
}
