//! Issue 21 item 3: receiving servers that misbehave. One Gannet delivers to seven sites at
//! once, each a sink with one fault: it drops the connection mid-DATA, answers 421 at the
//! greeting, tarpits (accepts TCP, never speaks), trickles its replies one byte per write, sends
//! a 10 MB greeting line, breaks TLS after STARTTLS, or holds its reply to the final dot past
//! Gannet's data timeout. Every message ends as its policy says (deferred for a fault that
//! leaves the outcome unknown or refused for now; delivered where the fault is only slowness or
//! a TLS failure at the opportunistic level), each attempt's outcome is logged once, and
//! Gannet's outbound connections and resident memory stay below a generous ceiling throughout.
//! Then the sinks behave, the queue is flushed, and every deferred message is delivered exactly
//! once.
//!
//! Sink addresses: 127.0.0.241–.247.

use std::time::Duration;

use crate::common::*;

/// (domain, sink IP, what the sink does, outcome of the first attempt).
const SITES: &[(&str, &str, Fault, &str)] = &[
    (
        "drop.bad.test",
        "127.0.0.241",
        Fault::DropMidData,
        "deferred",
    ),
    (
        "greet421.bad.test",
        "127.0.0.242",
        Fault::Greeting421,
        "deferred",
    ),
    ("tarpit.bad.test", "127.0.0.243", Fault::Tarpit, "deferred"),
    (
        "trickle.bad.test",
        "127.0.0.244",
        Fault::Trickle,
        "delivered",
    ),
    (
        "hugeline.bad.test",
        "127.0.0.245",
        Fault::HugeLine,
        "deferred",
    ),
    ("badtls.bad.test", "127.0.0.246", Fault::BadTls, "delivered"),
    (
        "slowdot.bad.test",
        "127.0.0.247",
        Fault::SlowDot,
        "deferred",
    ),
];

/// Messages per site: more than one connection's worth for the tarpit, so its connection cap
/// (`max_connections_per_destination`, 20 by default) is what bounds Gannet's sockets.
const PER_SITE: usize = 3;
const TARPIT_MESSAGES: usize = 30;

/// Ceilings ("bounded", not a tight figure): every site at its connection cap, and a process
/// that never buffers a 10 MB reply per connection.
const MAX_CONNECTIONS: f64 = 7.0 * 20.0;
const MAX_RSS: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Fault {
    DropMidData,
    Greeting421,
    Tarpit,
    Trickle,
    HugeLine,
    BadTls,
    SlowDot,
}

fn misbehave(sink: &Sink, fault: Fault) {
    match fault {
        Fault::DropMidData => sink.set_drop_mid_data(true),
        Fault::Greeting421 => sink.add_rule(Rule::new(
            Stage::Connect,
            "421 4.3.2 service not available, closing channel",
        )),
        Fault::Tarpit => sink.set_tarpit(true),
        Fault::Trickle => sink.set_trickle(true),
        // One 10 MB greeting line (RFC 5321 §4.5.3.1.5 allows 512 bytes per reply line).
        Fault::HugeLine => sink.add_rule(Rule::new(
            Stage::Connect,
            &format!("220 {}", "x".repeat(10 * 1024 * 1024)),
        )),
        Fault::BadTls => sink.set_tls_broken(true),
        // Longer than the harness's `data_timeout` (10 s).
        Fault::SlowDot => sink.set_delay(Duration::from_secs(25)),
    };
}

fn rcpt(domain: &str, i: usize) -> String {
    format!("r{i}@{domain}")
}

fn messages_for(domain: &str) -> usize {
    if domain.starts_with("tarpit.") {
        TARPIT_MESSAGES
    } else {
        PER_SITE
    }
}

/// Samples Gannet's outbound connection gauge and RSS until `done`; returns the peaks.
async fn peaks_while(g: &Gannet, mut done: impl FnMut() -> bool) -> (f64, u64) {
    let (mut conns, mut rss) = (0.0f64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        conns = conns.max(g.metric("gannet_outbound_connections", &[]).await);
        rss = rss.max(g.rss_bytes().unwrap_or(0));
        if done() || tokio::time::Instant::now() > deadline {
            return (conns, rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_receivers_end_in_policy_outcomes_with_bounded_connections_and_memory() {
    let ips: Vec<&str> = SITES.iter().map(|s| s.1).collect();
    let mut zone = Zone::new();
    for (domain, ip, _, _) in SITES {
        zone = zone.mail_domain(domain, *ip);
    }
    // Retries only when the test flushes: each attempt's outcome is then easy to count.
    let w = World::start(&ips, zone, |c| c.retry_schedule(&["1h"]).max_age("2h")).await;
    for (i, (_, _, fault, _)) in SITES.iter().enumerate() {
        misbehave(&w.sinks[i], *fault);
    }

    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    for (domain, _, _, _) in SITES {
        for i in 0..messages_for(domain) {
            let to = rcpt(domain, i);
            c.send(
                "s@origin.test",
                &[to.as_str()],
                format!("Subject: fault {domain} {i}\r\n\r\nbody\r\n").as_bytes(),
            )
            .await;
        }
    }
    c.quit().await;

    // Attempt 1: every recipient gets exactly the outcome its site's fault calls for.
    let total: usize = SITES.iter().map(|s| messages_for(s.0)).sum();
    let first_done = || {
        let os = w.gannet.outcomes();
        SITES.iter().all(|(d, _, _, _)| {
            (0..messages_for(d)).all(|i| {
                let r = rcpt(d, i);
                os.iter().any(|o| o.recipient == r && o.attempt == 1)
            })
        })
    };
    let (conns, rss) = peaks_while(&w.gannet, first_done).await;
    let outcomes = w
        .gannet
        .wait_outcomes(WAIT, "a first outcome for every recipient", |os| {
            os.iter().filter(|o| o.attempt == 1).count() >= total
        })
        .await;
    for (domain, _, fault, want) in SITES {
        for i in 0..messages_for(domain) {
            let r = rcpt(domain, i);
            let first: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.recipient == r && o.attempt == 1)
                .collect();
            assert_eq!(
                first.len(),
                1,
                "{fault:?}: attempt 1 of {r} logged {} times: {first:?}",
                first.len()
            );
            assert_eq!(
                first[0].event, *want,
                "{fault:?}: {r} should be {want} after the first attempt: {:?}",
                first[0].raw
            );
        }
    }
    assert!(
        conns <= MAX_CONNECTIONS,
        "gannet_outbound_connections peaked at {conns} (ceiling {MAX_CONNECTIONS})"
    );
    assert!(
        rss <= MAX_RSS,
        "Gannet's RSS peaked at {} MiB (ceiling {} MiB)",
        rss >> 20,
        MAX_RSS >> 20
    );
    let tarpit = &w.sinks[2];
    assert!(
        tarpit.max_concurrent() <= 20,
        "the tarpit held {} connections at once: the per-destination cap did not hold",
        tarpit.max_concurrent()
    );

    // The sinks recover; a flush retries every deferred recipient now.
    for sink in &w.sinks {
        sink.behave();
    }
    // The held final replies of the slow site are released (Gannet gave up on them): the sink
    // records those as discarded, never as delivered.
    w.gannet.flush().await;
    let outcomes = w
        .gannet
        .wait_outcomes(WAIT, "every recipient delivered", |os| {
            SITES.iter().all(|(d, _, _, _)| {
                (0..messages_for(d)).all(|i| {
                    let r = rcpt(d, i);
                    os.iter()
                        .any(|o| o.recipient == r && o.event == "delivered")
                })
            })
        })
        .await;
    for (i, (domain, _, fault, _)) in SITES.iter().enumerate() {
        let accepted = w.sinks[i].delivered_rcpts();
        for n in 0..messages_for(domain) {
            let r = rcpt(domain, n);
            let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.recipient == r).collect();
            let delivered = mine.iter().filter(|o| o.event == "delivered").count();
            assert_eq!(
                delivered, 1,
                "{fault:?}: {r} delivered {delivered} times: {mine:?}"
            );
            let mut attempts: Vec<u64> = mine.iter().map(|o| o.attempt).collect();
            attempts.sort();
            attempts.dedup();
            assert_eq!(
                attempts.len(),
                mine.len(),
                "{fault:?}: an attempt of {r} was logged twice: {mine:?}"
            );
            let copies = accepted.iter().filter(|a| **a == r).count();
            assert_eq!(
                copies,
                1,
                "{fault:?}: the sink accepted {r} {copies} times\n{}",
                w.sinks[i].transcript()
            );
        }
    }
    let q = w.gannet.queue_drained(WAIT).await;
    assert_eq!(q.queued_recipients, 0, "{:?}", q.raw);
}
