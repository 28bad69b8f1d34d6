//! Scale (issue 21 item 6), shown on a small queue: what a million queued recipients need to
//! stay within memory and start delivering soon after a restart. The measurements themselves
//! (1M recipients behind a 4xx sink: RSS, disk, restart to first delivery, drain rate) are
//! `benches/scale.py` (README "Scale").
//!
//! Sink addresses: 127.0.0.213–.214.

use std::net::SocketAddr;

use ::gannet::events::{Mode, Published};

use crate::common::*;
use crate::events::{InProcess, read_until, subscribe_hook};

async fn send(addr: SocketAddr, rcpt: &str, subject: &str) {
    let mut c = SmtpClient::connect(addr).await;
    let msg = format!("From: s@sc-origin.test\r\nSubject: {subject}\r\n\r\nscale test\r\n");
    c.send_message("s@sc-origin.test", &[rcpt], msg.as_bytes())
        .await;
}

fn count(got: &[Published], kind: &str, rcpt: &str) -> usize {
    got.iter()
        .filter(|p| p.event.type_name() == kind && p.event.recipient == rcpt)
        .count()
}

/// A queue released all at once (a blocked provider accepts again) makes outcomes faster than
/// a lossless subscriber (the send log) records them; each one waiting is an event and a
/// spool state change in memory (1M recipients drained to ~1 GB RSS before). So a delivery
/// connection waits before its next job while a lossless subscriber is past its bound, as
/// intake does: ten deferred messages come due with the subscriber stuck, and only as many
/// are delivered as the bound lets through; once it reads again, every one is delivered,
/// each outcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_waits_while_a_lossless_subscriber_is_past_its_bound() {
    let (port, sinks) = bind_sinks(&["127.0.0.213"]).await;
    let sink = &sinks[0];
    sink.add_rule(Rule::new(Stage::Rcpt, "451 4.3.0 not yet"));
    let dns = TestDns::start(Zone::new().mail_domain("sc-backlog.test", "127.0.0.213")).await;
    let (hook, rx) = subscribe_hook(Mode::Lossless { bound: 3 });
    let config = TestConfig::new(&dns, port)
        .retry_schedule(&["2s"])
        .delivery_option("max_connections_per_destination = 1");
    let g = InProcess::start(&config, hook).await;
    let (bus, mut sub) = rx.await.expect("hook ran");

    // Ten messages, each deferred once while the subscriber keeps up.
    let rcpts: Vec<String> = (0..10).map(|i| format!("r{i}@sc-backlog.test")).collect();
    let mut got = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        send(g.smtp(), r, &format!("m{i}")).await;
        read_until(&mut sub, &mut got, |ps| count(ps, "deferred", r) > 0).await;
    }
    // The receiver accepts again; the subscriber stops reading. The retries come due.
    sink.clear_rules();
    assert!(
        poll(WAIT, || bus.over_bound().then_some(()))
            .await
            .is_some(),
        "the subscriber falls behind its bound of 3"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let delivered = sink.delivered_rcpts().len();
    assert!(
        delivered <= 4,
        "delivery went on past the stuck subscriber's bound: {delivered} delivered"
    );

    // Reading again lets the rest through: each recipient delivered once, no event lost.
    read_until(&mut sub, &mut got, |ps| {
        rcpts.iter().all(|r| count(ps, "delivered", r) > 0)
    })
    .await;
    sink.wait_for(10, WAIT).await;
    for r in &rcpts {
        assert_eq!(count(&got, "delivered", r), 1, "{r}");
    }
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.seq, got[0].seq + i as u64, "no event missing");
    }
    g.stop().await;
}

/// Memory a burst used goes back to the OS once the burst is over: glibc keeps freed memory in
/// its arenas, so without a trim RSS stays at the burst's peak (with 1M recipients queued, the
/// backlog of outcomes the send log worked through stayed in RSS). Two waves of 1 MiB
/// messages pass through (the first raises glibc's mmap threshold, so the second is served
/// from the arenas); afterwards Gannet says it returned free heap memory and its RSS after
/// the trim is below its RSS before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_freed_after_a_burst_is_returned_to_the_os() {
    let (port, sinks) = bind_sinks(&["127.0.0.214"]).await;
    let dns = TestDns::start(Zone::new().mail_domain("sc-burst.test", "127.0.0.214")).await;
    let g = Gannet::start_config(&TestConfig::new(&dns, port)).await;
    let line = "x".repeat(998);
    let body = format!("{line}\r\n").repeat(1024);
    let mut sent = 0;
    for wave in [4usize, 32] {
        let sends: Vec<_> = (0..wave)
            .map(|i| {
                let msg =
                    format!("From: s@sc-origin.test\r\nSubject: burst {sent} {i}\r\n\r\n{body}");
                let addr = g.smtp_addr();
                tokio::spawn(async move {
                    let mut c = SmtpClient::connect(addr).await;
                    c.send_message("s@sc-origin.test", &["r@sc-burst.test"], msg.as_bytes())
                        .await;
                })
            })
            .collect();
        for s in sends {
            s.await.expect("sender task");
        }
        sent += wave;
        sinks[0].wait_for(sent, WAIT).await;
    }
    let trimmed = poll(WAIT, || {
        g.log_events("gannet::memory").into_iter().find(|e| {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            n("rss_after") < n("rss_before")
        })
    })
    .await;
    assert!(
        trimmed.is_some(),
        "no trim of free heap memory that lowered RSS after a 36 MiB burst; memory log: {:?}",
        g.log_events("gannet::memory")
    );
}
