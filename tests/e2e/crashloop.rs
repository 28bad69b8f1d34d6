//! Crash loops (issue 21 item 1): mail pours in over SMTP and HTTP while Gannet is killed with
//! SIGKILL at chosen moments and restarted, again and again. Afterwards every message that got
//! `250` (SMTP) or `queued` (HTTP) has reached the sink at least once (counted per Message-ID),
//! nothing that got an error reply or never finished its DATA has, and the duplicates are
//! counted and reported per kill.
//!
//! The moments, taken in turn: a random instant under load; right after a client saw `250`;
//! while a client is in the middle of DATA (its half message must never be delivered); while
//! clients wait for their group commit (final dot sent, no reply yet); right after the sink
//! answered `250` to a delivery (the state Gannet has not recorded yet: the duplicate window);
//! right after the spool started a new segment (segments are small, so rotation is frequent).
//!
//! `crash_loop_short` (3 kills) runs in the suite; `crash_loop_long` (`#[ignore]`, 50 kills by
//! default) is what `scripts/crashloop` runs (see README "Crash loops").

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::common::gannet::http_with_headers;
use crate::common::*;

const SINK_IP: &str = "127.0.0.71";

/// What one crash loop does.
#[derive(Debug, Clone)]
struct Plan {
    kills: usize,
    /// Concurrent SMTP injecting sessions.
    smtp_sessions: usize,
    /// Concurrent HTTP injecting clients (batches of `http_batch` recipients).
    http_clients: usize,
    http_batch: usize,
    /// Load between a restart and the next trigger (random in this range).
    load_ms: (u64, u64),
    /// `[spool] max_segment_bytes`: small, so segments rotate often.
    segment_bytes: u64,
    /// Message body filler, bytes.
    body_bytes: usize,
    /// TOML appended to Gannet's config.
    extra: String,
}

/// The moments a kill is aimed at, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    Random,
    AfterClient250,
    DuringData,
    DuringCommit,
    AfterSink250,
    AfterRotation,
}

const MOMENTS: [Moment; 6] = [
    Moment::AfterSink250,
    Moment::Random,
    Moment::AfterClient250,
    Moment::DuringData,
    Moment::DuringCommit,
    Moment::AfterRotation,
];

/// What the clients were told, by Message-ID (angle brackets stripped).
#[derive(Default)]
struct Ledger {
    /// Got `250` (SMTP) or `queued` (HTTP): must be delivered at least once.
    acked: BTreeSet<String>,
    /// Got an error reply: must never be delivered.
    refused: BTreeSet<String>,
    /// Their DATA was cut off before the final dot: must never be delivered.
    partial: BTreeSet<String>,
    /// Sent, but the connection died before an answer: either outcome is allowed.
    unanswered: usize,
    smtp_acked: usize,
    http_acked: usize,
}

/// Shared between the injectors and the killer.
struct Shared {
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    /// Bumped on every `250` a client sees.
    acks: watch::Sender<u64>,
    /// SMTP clients that sent the final dot and wait for the reply (a group commit).
    awaiting_commit: AtomicUsize,
    next_id: AtomicUsize,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn strip(mid: &str) -> String {
    mid.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// A minimal SMTP client that never panics: Gannet dies under it on purpose.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Option<Client> {
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let _ = s.set_nodelay(true);
        let mut c = Client {
            r: BufReader::new(s),
        };
        if c.reply().await? != 220 {
            return None;
        }
        c.r.get_mut().write_all(b"EHLO crash.test\r\n").await.ok()?;
        (c.reply().await? == 250).then_some(c)
    }

    /// One reply's code; None when the connection failed or went silent.
    async fn reply(&mut self) -> Option<u16> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            let code = line.get(..3)?.parse().ok()?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(code);
            }
        }
    }

    async fn write(&mut self, b: &[u8]) -> Option<()> {
        self.r.get_mut().write_all(b).await.ok()
    }
}

fn smtp_message(mid: &str, refused: bool, body_bytes: usize) -> String {
    let mut m = String::new();
    if refused {
        // Over the hop limit (50): intake refuses it with 554 5.4.6 after the final dot.
        for i in 0..60 {
            m += &format!(
                "Received: from hop{i}.test by hop{i}.test; Fri, 4 Dec 2026 10:00:00 +0000\r\n"
            );
        }
    }
    m += &format!(
        "From: s@origin.test\r\nTo: r@dest.test\r\nMessage-ID: <{mid}>\r\nSubject: crash loop\r\n\r\n"
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\r\n";
    let mut n = 0;
    while n < body_bytes {
        m += line;
        n += line.len();
    }
    m += ".\r\n";
    m
}

/// One SMTP injecting session, reconnecting whenever Gannet dies under it. Every 25th
/// message is one Gannet must refuse.
async fn smtp_injector(addr: SocketAddr, shared: Arc<Shared>, task: usize, body_bytes: usize) {
    let mut client: Option<Client> = None;
    while !shared.stop.load(Ordering::Acquire) {
        let Some(c) = client.as_mut() else {
            client = Client::connect(addr).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let refused = n % 25 == 24;
        let mid = format!("cl-s{task}-{n}@origin.test");
        let ok = async {
            c.write(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
                .await?;
            let (m, r, d) = (c.reply().await?, c.reply().await?, c.reply().await?);
            Some((m, r, d))
        }
        .await;
        let Some((250, 250, 354)) = ok else {
            // Refused before the body, or the connection is gone: start over.
            client = None;
            continue;
        };
        let msg = smtp_message(&mid, refused, body_bytes);
        if c.write(msg.as_bytes()).await.is_none() {
            shared.ledger().unanswered += 1;
            client = None;
            continue;
        }
        shared.awaiting_commit.fetch_add(1, Ordering::AcqRel);
        let reply = c.reply().await;
        shared.awaiting_commit.fetch_sub(1, Ordering::AcqRel);
        let mut l = shared.ledger();
        match reply {
            Some(250) => {
                l.acked.insert(mid);
                l.smtp_acked += 1;
                drop(l);
                shared.acks.send_modify(|v| *v += 1);
            }
            Some(_) => {
                l.refused.insert(mid);
            }
            None => {
                l.unanswered += 1;
                drop(l);
                client = None;
            }
        }
    }
}

/// One HTTP injecting client: `POST /api/v1/messages` batches; each recipient answered
/// `queued` is acknowledged (its Message-ID is in the answer).
async fn http_injector(addr: SocketAddr, shared: Arc<Shared>, batch: usize) {
    while !shared.stop.load(Ordering::Acquire) {
        let n = shared.next_id.fetch_add(batch, Ordering::Relaxed);
        let rcpts: Vec<serde_json::Value> = (0..batch)
            .map(|i| serde_json::json!({"email": format!("h{}@dest.test", n + i)}))
            .collect();
        let body = serde_json::json!({
            "from": {"email": "news@origin.test"},
            "subject": "crash loop",
            "text": "hello from the crash loop\n",
            "recipients": rcpts,
        })
        .to_string();
        match http_with_headers(addr, "POST", "/api/v1/messages", Some(&body), &[]).await {
            Ok((200, text)) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let mut l = shared.ledger();
                let mut acked = 0;
                for r in v["results"].as_array().into_iter().flatten() {
                    if r["status"] == "queued"
                        && let Some(mid) = r["message_id"].as_str()
                    {
                        l.acked.insert(strip(mid));
                        acked += 1;
                    }
                }
                l.http_acked += acked;
                drop(l);
                if acked > 0 {
                    shared.acks.send_modify(|v| *v += 1);
                }
            }
            Ok(_) => {}
            Err(_) => {
                shared.ledger().unanswered += batch;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The moment `m` has come (or a generous time passed: the kill happens anyway).
async fn wait_for_moment(m: Moment, w: &World, shared: &Shared, partial_seq: usize) {
    let give_up = Duration::from_secs(10);
    match m {
        Moment::Random => {
            let ms = rand::thread_rng().gen_range(0..400);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Moment::AfterClient250 => {
            let mut rx = shared.acks.subscribe();
            rx.borrow_and_update();
            let _ = tokio::time::timeout(give_up, rx.changed()).await;
        }
        Moment::DuringData => {
            // Half a message on a session of our own; the other sessions carry on.
            let mid = format!("cl-partial-{partial_seq}@origin.test");
            if let Some(mut c) = Client::connect(w.gannet.smtp_addr()).await {
                let head = c
                    .write(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
                    .await;
                let ok = head.is_some()
                    && c.reply().await == Some(250)
                    && c.reply().await == Some(250)
                    && c.reply().await == Some(354);
                if ok {
                    let half = format!(
                        "From: s@origin.test\r\nMessage-ID: <{mid}>\r\nSubject: half\r\n\r\nfirst half\r\n"
                    );
                    if c.write(half.as_bytes()).await.is_some() {
                        shared.ledger().partial.insert(mid);
                        // Keep the session open across the kill.
                        std::mem::forget(c);
                    }
                }
            }
        }
        Moment::DuringCommit => {
            let _ = poll(give_up, || {
                (shared.awaiting_commit.load(Ordering::Acquire) > 0).then_some(())
            })
            .await;
        }
        Moment::AfterSink250 => {
            let sink = &w.sinks[0];
            let before = sink.with_transactions(accepted);
            let _ = sink.wait_until(give_up, |ts| accepted(ts) > before).await;
        }
        Moment::AfterRotation => {
            let dir = w.gannet.dir().join("spool").join("segments");
            let names = || -> BTreeSet<std::ffi::OsString> {
                std::fs::read_dir(&dir)
                    .map(|d| d.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default()
            };
            let before = names();
            let deadline = Instant::now() + give_up;
            while Instant::now() < deadline {
                if names().difference(&before).next().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

fn accepted(ts: &[Transaction]) -> usize {
    ts.iter().filter(|t| t.accepted).count()
}

/// What a crash loop found.
#[derive(Debug)]
struct Report {
    kills: usize,
    acked: usize,
    smtp_acked: usize,
    http_acked: usize,
    refused: usize,
    partial: usize,
    unanswered: usize,
    deliveries: usize,
    distinct: usize,
    lost: Vec<String>,
    wrongly_delivered: Vec<String>,
    duplicates: usize,
    /// Kills per moment.
    moments: BTreeMap<String, usize>,
    secs: f64,
}

impl Report {
    fn per_kill(&self) -> f64 {
        self.duplicates as f64 / self.kills.max(1) as f64
    }

    fn text(&self) -> String {
        format!(
            "crash loop: {} kills survived in {:.0} s ({:?}); {} acknowledged ({} SMTP, {} HTTP), {} refused, {} cut off in DATA, {} unanswered; {} deliveries of {} distinct messages; lost {}; delivered despite an error reply {}; duplicates {} ({:.1} per kill)",
            self.kills,
            self.secs,
            self.moments,
            self.acked,
            self.smtp_acked,
            self.http_acked,
            self.refused,
            self.partial,
            self.unanswered,
            self.deliveries,
            self.distinct,
            self.lost.len(),
            self.wrongly_delivered.len(),
            self.duplicates,
            self.per_kill(),
        )
    }
}

async fn crash_loop(plan: Plan) -> Report {
    let started = Instant::now();
    let zone = Zone::new()
        .mail_domain("dest.test", SINK_IP)
        .mail_domain("origin.test", SINK_IP);
    let segment = format!("max_segment_bytes = {}", plan.segment_bytes);
    let mut w = World::start(&[SINK_IP], zone, |c| {
        c.spool_option(&segment).extra(&plan.extra)
    })
    .await;
    let (acks, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::default()),
        stop: AtomicBool::new(false),
        acks,
        awaiting_commit: AtomicUsize::new(0),
        next_id: AtomicUsize::new(0),
    });
    let mut tasks = Vec::new();
    for t in 0..plan.smtp_sessions {
        let addr = w.gannet.smtp_addr();
        tasks.push(tokio::spawn(smtp_injector(
            addr,
            shared.clone(),
            t,
            plan.body_bytes,
        )));
    }
    for _ in 0..plan.http_clients {
        let addr = w.gannet.http_addr();
        tasks.push(tokio::spawn(http_injector(
            addr,
            shared.clone(),
            plan.http_batch,
        )));
    }
    let mut moments: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..plan.kills {
        let load = rand::thread_rng().gen_range(plan.load_ms.0..=plan.load_ms.1);
        tokio::time::sleep(Duration::from_millis(load)).await;
        let m = MOMENTS[k % MOMENTS.len()];
        wait_for_moment(m, &w, &shared, k).await;
        w.gannet.kill9().await;
        *moments.entry(format!("{m:?}")).or_default() += 1;
        eprintln!(
            "crash loop: kill {} of {} ({m:?}) after {:.1} s; {} acknowledged so far",
            k + 1,
            plan.kills,
            started.elapsed().as_secs_f64(),
            shared.ledger().acked.len()
        );
        w.gannet.restart().await;
    }
    // A little more load after the last restart, then stop injecting.
    tokio::time::sleep(Duration::from_millis(plan.load_ms.0)).await;
    shared.stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }

    let (acked, refused, partial) = {
        let l = shared.ledger();
        (l.acked.clone(), l.refused.clone(), l.partial.clone())
    };
    let sink = &w.sinks[0];
    let wait = Duration::from_secs(120 + acked.len() as u64 / 50);
    // The check runs on every delivery: look only at transactions not seen yet (a full scan
    // each time would be quadratic in a long run's tens of thousands of messages).
    let mut seen = 0;
    let mut missing = acked.clone();
    let _ = sink
        .wait_until(wait, |ts| {
            for t in &ts[seen..] {
                if t.accepted
                    && let Some(mid) = t.header("message-id")
                {
                    missing.remove(&strip(&mid));
                }
            }
            seen = ts.len();
            missing.is_empty()
        })
        .await;
    // Every outcome recorded, so no delivery is still on its way.
    w.gannet.queue_drained(Duration::from_secs(60)).await;
    let counts: BTreeMap<String, usize> = sink.with_transactions(|ts| {
        let mut counts = BTreeMap::new();
        for t in ts.iter().filter(|t| t.accepted) {
            if let Some(mid) = t.header("message-id") {
                *counts.entry(strip(&mid)).or_default() += 1;
            }
        }
        counts
    });
    let lost: Vec<String> = acked
        .iter()
        .filter(|m| !counts.contains_key(*m))
        .cloned()
        .collect();
    let wrongly_delivered: Vec<String> = refused
        .iter()
        .chain(partial.iter())
        .filter(|m| counts.contains_key(*m))
        .cloned()
        .collect();
    let l = shared.ledger();
    Report {
        kills: plan.kills,
        acked: acked.len(),
        smtp_acked: l.smtp_acked,
        http_acked: l.http_acked,
        refused: refused.len(),
        partial: partial.len(),
        unanswered: l.unanswered,
        deliveries: counts.values().sum(),
        distinct: counts.len(),
        lost,
        wrongly_delivered,
        duplicates: counts.values().map(|c| c - 1).sum(),
        moments,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn check(r: &Report, plan: &Plan) {
    eprintln!("{}", r.text());
    if let Ok(path) = std::env::var("GANNET_CRASHLOOP_REPORT") {
        let _ = std::fs::write(path, r.text() + "\n");
    }
    assert!(
        r.lost.is_empty(),
        "{} acknowledged message(s) never delivered: {:?}\n{}",
        r.lost.len(),
        r.lost.iter().take(20).collect::<Vec<_>>(),
        r.text()
    );
    assert!(
        r.wrongly_delivered.is_empty(),
        "delivered although refused or cut off in DATA: {:?}\n{}",
        r.wrongly_delivered,
        r.text()
    );
    assert!(
        r.refused > 0,
        "the loop refused some messages: {}",
        r.text()
    );
    assert!(
        r.smtp_acked > 0 && (plan.http_clients == 0 || r.http_acked > 0),
        "both ways in were exercised: {}",
        r.text()
    );
}

/// Three kills at different moments, with SMTP and HTTP load: nothing acknowledged is lost,
/// nothing refused or half-sent is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_short() {
    let plan = Plan {
        kills: 3,
        smtp_sessions: 4,
        http_clients: 1,
        http_batch: 10,
        load_ms: (300, 800),
        segment_bytes: 64 * 1024,
        body_bytes: 1024,
        extra: String::new(),
    };
    let r = crash_loop(plan.clone()).await;
    check(&r, &plan);
}

/// The long run: `GANNET_CRASHLOOP_KILLS` kills (default 50) under full load
/// (`GANNET_CRASHLOOP_SESSIONS` SMTP sessions, default 16, and 2 HTTP clients). Run by
/// `scripts/crashloop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/crashloop"]
async fn crash_loop_long() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let plan = Plan {
        kills: env("GANNET_CRASHLOOP_KILLS", 50),
        smtp_sessions: env("GANNET_CRASHLOOP_SESSIONS", 16),
        http_clients: env("GANNET_CRASHLOOP_HTTP", 2),
        http_batch: 20,
        load_ms: (1000, 3000),
        segment_bytes: 256 * 1024,
        body_bytes: 2048,
        extra: std::env::var("GANNET_CRASHLOOP_EXTRA")
            .unwrap_or_default()
            .replace("\\n", "\n"),
    };
    let r = crash_loop(plan.clone()).await;
    check(&r, &plan);
}
