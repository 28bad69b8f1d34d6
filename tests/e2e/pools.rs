//! Traffic classes and IP pools (issue 4): each class leaves through its pool's source
//! addresses with their EHLO names, weighted across a pool's sources; where the class comes
//! from (`X-Gannet-Class`, the SMTP user's default, the listener's default) and what happens
//! to an unknown one; warm-up caps with overflow to another pool or deferral.
//!
//! Sink addresses of this module: 127.0.0.2–3 (the example) and 127.0.0.111–119;
//! source addresses 127.0.0.10–11, .20, .30–31, .40–42.

use std::collections::BTreeMap;

use crate::common::*;

/// Today's date in UTC, `YYYY-MM-DD`: a warm-up that starts today is on its day 0.
fn today_utc() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

/// Messages per (source IP, EHLO name) among `ts`.
fn by_source(ts: &[Transaction]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for t in ts {
        *m.entry((t.peer.ip().to_string(), t.ehlo.clone()))
            .or_default() += 1;
    }
    m
}

/// Two destinations (sinks on 127.0.0.2 and 127.0.0.3), pool `tx` with two sources
/// (127.0.0.10 and .11, weights 1:1) and pool `promo` with one (127.0.0.20). Every message
/// gets its own connection (`max_messages_per_connection = 1`), so each one picks a source.
/// Transactional mail arrives only from .10/.11, each saying its own EHLO name, and both are
/// used; promotional only from .20 as `promo.gannet.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_leaves_only_from_its_pool_with_that_sources_ehlo() {
    let w = World::start(
        &["127.0.0.2", "127.0.0.3"],
        Zone::new()
            .mail_domain("one.test", "127.0.0.2")
            .mail_domain("two.test", "127.0.0.3"),
        |c| {
            c.extra(
                "[[pool]]\nname = \"tx\"\nsources = [\n\
                 { ip = \"127.0.0.10\", ehlo = \"tx1.gannet.test\", weight = 1 },\n\
                 { ip = \"127.0.0.11\", ehlo = \"tx2.gannet.test\", weight = 1 },\n]\n\n\
                 [[pool]]\nname = \"promo\"\n\
                 sources = [{ ip = \"127.0.0.20\", ehlo = \"promo.gannet.test\" }]\n",
            )
            .class("transactional", "tx", 10)
            .class("promotional", "promo", 0)
            .shaping("[defaults]\nmax_messages_per_connection = 1\n")
        },
    )
    .await;
    const PER: usize = 30; // per class and domain
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    for i in 0..PER {
        for domain in ["one.test", "two.test"] {
            let tx = format!("tx{i}@{domain}");
            c.send(
                "s@origin.test",
                &[&tx],
                b"X-Gannet-Class: transactional\r\nSubject: tx\r\n\r\nx\r\n",
            )
            .await;
            let promo = format!("promo{i}@{domain}");
            c.send("s@origin.test", &[&promo], b"Subject: promo\r\n\r\nx\r\n")
                .await;
        }
    }
    c.quit().await;
    let mut tx = Vec::new();
    let mut promo = Vec::new();
    for sink in &w.sinks {
        for t in sink.wait_for(2 * PER, WAIT).await {
            if t.rcpts[0].starts_with("tx") {
                tx.push(t);
            } else {
                promo.push(t);
            }
        }
    }
    let tx_sources = by_source(&tx);
    let promo_sources = by_source(&promo);
    eprintln!("pools: transactional from {tx_sources:?}, promotional from {promo_sources:?}");
    assert_eq!(tx.len(), 2 * PER);
    assert_eq!(
        promo_sources,
        BTreeMap::from([(
            ("127.0.0.20".to_string(), "promo.gannet.test".to_string()),
            2 * PER
        )]),
        "promotional mail leaves only from the promo pool's source"
    );
    let allowed = [
        ("127.0.0.10".to_string(), "tx1.gannet.test".to_string()),
        ("127.0.0.11".to_string(), "tx2.gannet.test".to_string()),
    ];
    for (source, n) in &tx_sources {
        assert!(
            allowed.contains(source),
            "{n} transactional message(s) from {source:?}: only the tx pool's sources, each \
             with its own EHLO name, may send them"
        );
    }
    for source in &allowed {
        let n = tx_sources.get(source).copied().unwrap_or(0);
        assert!(
            n >= PER / 3,
            "weights 1:1 over {} connections: {source:?} sent only {n}",
            2 * PER
        );
    }
}

/// A pool `fresh` whose only source (127.0.0.30) is on day 0 of a warm-up schedule with a cap
/// of 5 messages, and a pool `warm` (127.0.0.31) as its overflow.
fn warmup_config(c: TestConfig, on_cap: &str) -> TestConfig {
    c.extra(&format!(
        "[[pool]]\nname = \"fresh\"\noverflow = \"warm\"\non_warmup_cap = \"{on_cap}\"\n\
         sources = [{{ ip = \"127.0.0.30\", ehlo = \"fresh.gannet.test\", warmup = \"test\", \
         warmup_start = \"{}\" }}]\n\n\
         [[pool]]\nname = \"warm\"\nsources = [{{ ip = \"127.0.0.31\", ehlo = \"warm.gannet.test\" }}]\n",
        today_utc()
    ))
    .class("promotional", "fresh", 0)
    .shaping("[warmup.test]\ndefault = [5, 50, 500]\n")
}

/// Sends `n` promotional messages to `m{i}@{domain}`.
async fn send_many(g: &Gannet, domain: &str, n: usize) -> Vec<String> {
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    let mut rcpts = Vec::new();
    for i in 0..n {
        let r = format!("m{i}@{domain}");
        c.send("s@origin.test", &[&r], b"Subject: news\r\n\r\nx\r\n")
            .await;
        rcpts.push(r);
    }
    c.quit().await;
    rcpts
}

/// `on_warmup_cap = "overflow"`: of 20 messages, the warming source sends its day-0 cap of 5;
/// the other 15 leave through the overflow pool's source, none is deferred, and
/// `gannet_warmup_capped_total` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_cap_overflows_to_the_overflow_pool() {
    let w = World::start(
        &["127.0.0.111"],
        Zone::new().mail_domain("warmup.test", "127.0.0.111"),
        |c| warmup_config(c, "overflow"),
    )
    .await;
    send_many(&w.gannet, "warmup.test", 20).await;
    let ts = w.sinks[0].wait_for(20, WAIT).await;
    let sources = by_source(&ts);
    eprintln!("warm-up overflow: {sources:?}");
    assert_eq!(
        sources,
        BTreeMap::from([
            (("127.0.0.30".into(), "fresh.gannet.test".into()), 5),
            (("127.0.0.31".into(), "warm.gannet.test".into()), 15),
        ]),
        "5 (the day-0 cap) from the warming source, the rest through the overflow pool"
    );
    assert!(
        !w.gannet.outcomes().iter().any(|o| o.event != "delivered"),
        "overflow sends at once, nothing is deferred"
    );
    assert_eq!(
        w.gannet
            .metric(
                "gannet_warmup_capped_total",
                &[("source", "127.0.0.30"), ("action", "overflow")]
            )
            .await,
        15.0
    );
}

/// `on_warmup_cap = "defer"` (with an overflow pool configured, which must then stay unused):
/// of 20 messages the warming source sends 5; the other 15 are deferred again and again and
/// stay queued; nothing leaves from another pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_cap_defers_the_rest_when_told_to() {
    let w = World::start(
        &["127.0.0.112"],
        Zone::new().mail_domain("warmup.test", "127.0.0.112"),
        |c| warmup_config(c, "defer"),
    )
    .await;
    let rcpts = send_many(&w.gannet, "warmup.test", 20).await;
    // Every capped recipient deferred twice (first attempt and a retry a second later).
    let os = w
        .gannet
        .wait_outcomes(WAIT, "15 recipients deferred twice", |os| {
            rcpts
                .iter()
                .filter(|r| {
                    os.iter()
                        .filter(|o| o.event == "deferred" && &o.recipient == *r)
                        .count()
                        >= 2
                })
                .count()
                >= 15
        })
        .await;
    let ts = w.sinks[0].messages();
    let sources = by_source(&ts);
    eprintln!("warm-up defer: {sources:?}");
    assert_eq!(
        sources,
        BTreeMap::from([(("127.0.0.30".into(), "fresh.gannet.test".into()), 5)]),
        "only the day-0 cap of 5 leaves, and only from the warming source"
    );
    let delivered: Vec<&Outcome> = os.iter().filter(|o| o.event == "delivered").collect();
    assert_eq!(delivered.len(), 5, "{delivered:#?}");
    let deferred: Vec<&Outcome> = os.iter().filter(|o| o.event == "deferred").collect();
    assert!(
        deferred.iter().all(|o| o.reply.starts_with("4")),
        "capped mail is deferred (temporary): {deferred:#?}"
    );
    assert!(!os.iter().any(|o| o.event == "bounced"));
    assert_eq!(
        w.gannet.queue_status().await.queued_recipients,
        15,
        "the capped messages stay queued"
    );
    assert!(
        w.gannet
            .metric(
                "gannet_warmup_capped_total",
                &[("source", "127.0.0.30"), ("action", "defer")]
            )
            .await
            >= 15.0
    );
}

/// An `X-Gannet-Class` naming no configured class is refused at the end of DATA with
/// `550 5.7.0` (the message was already sent, so the reply comes after it), and nothing is
/// queued; the session goes on, and a good message's `X-Gannet-Tenant` / `X-Gannet-Campaign`
/// appear in its outcome while every `X-Gannet-*` header is gone at the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_class_is_refused_after_data_and_labels_travel_with_the_message() {
    let w = World::start(
        &["127.0.0.113"],
        Zone::new().mail_domain("labels.test", "127.0.0.113"),
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<refused@labels.test>", "250").await;
    let reply = c
        .data(
            b"X-Gannet-Class: platinum\r\nSubject: unknown class\r\n\r\nx\r\n",
            "550 5.7.0",
        )
        .await;
    assert!(
        reply.text().contains("platinum"),
        "the refusal names the unknown class: {}",
        reply.text()
    );
    let msg = message(
        &[
            ("X-Gannet-Tenant", "acme"),
            ("Subject", "labelled"),
            ("X-Gannet-Campaign", "launch-2026"),
            ("X-Gannet-Class", "transactional"),
        ],
        "hello",
    );
    c.send("s@origin.test", &["ok@labels.test"], &msg).await;
    c.quit().await;

    let d = w
        .gannet
        .wait_event("delivered", "ok@labels.test", WAIT)
        .await;
    assert_eq!(d.class, "transactional", "{}", d.raw);
    assert_eq!(d.raw["tenant"], "acme", "{}", d.raw);
    assert_eq!(d.raw["campaign"], "launch-2026", "{}", d.raw);
    let ts = w.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].rcpts, ["ok@labels.test"]);
    assert!(
        !ts[0]
            .header_block()
            .to_ascii_lowercase()
            .contains("x-gannet-"),
        "no X-Gannet-* header leaves Gannet:\n{}",
        ts[0].header_block()
    );
    assert_eq!(ts[0].header("subject").as_deref(), Some("labelled"));
    assert!(
        w.gannet.outcomes_for("refused@labels.test").is_empty(),
        "the refused message was never queued"
    );
    let q = w.gannet.queue_drained(WAIT).await;
    assert_eq!(q.queued_recipients, 0, "{:?}", q.raw);
}

/// One message to `rcpt` on an open session, with `X-Gannet-Class: class` when given.
async fn send_with_class(c: &mut SmtpClient, rcpt: &str, class: Option<&str>) {
    let mut m = Vec::new();
    if let Some(class) = class {
        m.extend_from_slice(format!("X-Gannet-Class: {class}\r\n").as_bytes());
    }
    m.extend_from_slice(b"Subject: which class\r\n\r\nx\r\n");
    c.send("s@origin.test", &[rcpt], &m).await;
}

/// Where the class comes from, first match wins: `X-Gannet-Class`, then the authenticated SMTP
/// user's `default_class`, then the listener's `default_class`. Each class has its own pool,
/// so the source address at the sink shows the class too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_comes_from_the_header_then_the_smtp_user_then_the_listener() {
    let hash = crate::common::gannet::hash_password("app-pass-1").await;
    let w = World::start(
        &["127.0.0.114"],
        Zone::new().mail_domain("classes.test", "127.0.0.114"),
        |c| {
            c.listener_option("tls_cert = \"${CERT}\"")
                .listener_option("tls_key = \"${KEY}\"")
                .pool("tx", &[("127.0.0.40", "tx.gannet.test")])
                .pool("promo", &[("127.0.0.41", "promo.gannet.test")])
                .pool("notify", &[("127.0.0.42", "notify.gannet.test")])
                .class("transactional", "tx", 10)
                .class("promotional", "promo", 0)
                .class("notifications", "notify", 5)
                .extra(&format!(
                    "[[smtp_user]]\nname = \"app\"\npassword_hash = \"{hash}\"\n\
                     default_class = \"notifications\"\n"
                ))
        },
    )
    .await;
    // Not authenticated: the listener's default (promotional), or the header.
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    send_with_class(&mut c, "listener@classes.test", None).await;
    send_with_class(&mut c, "header@classes.test", Some("transactional")).await;
    c.quit().await;
    // Authenticated as `app`: its default (notifications), or the header.
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    let plain = crate::common::tools::base64_lite::encode(b"\0app\0app-pass-1");
    c.cmd(&format!("AUTH PLAIN {plain}"), "235").await;
    send_with_class(&mut c, "user@classes.test", None).await;
    send_with_class(&mut c, "user-header@classes.test", Some("promotional")).await;
    c.quit().await;

    let ts = w.sinks[0].wait_for(4, WAIT).await;
    let expected = [
        ("listener@classes.test", "promotional", "127.0.0.41"),
        ("header@classes.test", "transactional", "127.0.0.40"),
        ("user@classes.test", "notifications", "127.0.0.42"),
        ("user-header@classes.test", "promotional", "127.0.0.41"),
    ];
    for (rcpt, class, ip) in expected {
        let d = w.gannet.wait_event("delivered", rcpt, WAIT).await;
        assert_eq!(d.class, class, "{rcpt}: {}", d.raw);
        let t = ts
            .iter()
            .find(|t| t.rcpts.iter().any(|r| r == rcpt))
            .unwrap_or_else(|| panic!("{rcpt} not at the sink"));
        assert_eq!(
            t.peer.ip().to_string(),
            ip,
            "{rcpt} ({class}) leaves from its pool"
        );
    }
}
