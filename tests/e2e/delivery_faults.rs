//! Delivery faults of issue 15 (items 3, 4 and 7): each test is named after the fault it guards
//! against and failed on the main branch before its fix.
//!
//! - item 7: a STARTTLS that fails falls back to plaintext at the opportunistic level, and
//!   defers where `[delivery] require_tls` demands encryption;
//! - item 4: loops — a message over `hop_limit` is refused at DATA; an MX that is Gannet's own
//!   listener (or loopback, by default) bounces 5.4.6. The harness sets `[delivery]
//!   loopback_is_self = false` because sinks are MX hosts on 127.0.0.x.
//! - item 3: a renumbered MX (its A record changed in the test DNS) gets the next delivery at
//!   its new address, after `gannet queue flush` and, without one, once the records' TTL
//!   (`[dns] min_ttl`) has run out.

use crate::common::*;

/// Item 7, RFC 3207 §4.1 / Postfix `smtp_tls_security_level = may`: a host that offers
/// STARTTLS but whose handshake fails gets the message in plaintext on a fresh connection (it
/// was deferred until expiry before), and Gannet records that the delivery was not encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_handshake_failure_falls_back_to_plaintext() {
    let w = World::start(
        &["127.0.0.211"],
        Zone::new().mail_domain("badtls.test", "127.0.0.211"),
        |c| c,
    )
    .await;
    w.sinks[0].set_tls_broken(true);
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["x@badtls.test"],
        b"Subject: tls fallback\r\n\r\nx\r\n",
    )
    .await;
    let o = w
        .gannet
        .wait_event("delivered", "x@badtls.test", WAIT)
        .await;
    assert_eq!(
        o.attempt, 1,
        "delivered on the first attempt, not after a deferral"
    );
    let msgs = w.sinks[0].messages();
    assert_eq!(msgs.len(), 1, "{}", w.sinks[0].transcript());
    assert!(!msgs[0].tls, "the fallback session is plaintext");
    let transcript = w.sinks[0].transcript();
    assert!(
        transcript.contains("TLS handshake broken on purpose"),
        "STARTTLS was tried first:\n{transcript}"
    );
    let fallbacks = w.gannet.log_events("gannet::tls");
    assert!(
        fallbacks.iter().any(|v| {
            let s = v.to_string();
            s.contains("tls_fallback")
                && s.contains("mx.badtls.test")
                && s.contains("not be encrypted")
        }),
        "a log line should record that the delivery went unencrypted and why:\n{}",
        w.gannet.log()
    );
}

/// Item 7, the other half: with `[delivery] require_tls = true` a failed STARTTLS is not
/// bypassed; the recipient is deferred and nothing reaches the host in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_failure_defers_when_tls_is_required() {
    let w = World::start(
        &["127.0.0.212"],
        Zone::new().mail_domain("musttls.test", "127.0.0.212"),
        |c| c.delivery_option("require_tls = true"),
    )
    .await;
    w.sinks[0].set_tls_broken(true);
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["x@musttls.test"],
        b"Subject: tls required\r\n\r\nx\r\n",
    )
    .await;
    let o = w
        .gannet
        .wait_event("deferred", "x@musttls.test", WAIT)
        .await;
    assert!(o.reply.starts_with("451 4.4.1"), "{}", o.reply);
    assert!(
        o.reply.contains("TLS"),
        "the reply names the TLS failure: {}",
        o.reply
    );
    assert!(
        w.sinks[0].transactions().is_empty(),
        "no transaction may be sent in plaintext:\n{}",
        w.sinks[0].transcript()
    );
}

/// `n` made-up `Received:` headers, then a small message.
fn message_with_hops(n: usize) -> Vec<u8> {
    let mut m = String::new();
    for i in 0..n {
        m.push_str(&format!(
            "Received: from hop{i}.test by hop{}.test; Thu, 3 Dec 2026 21:00:00 +0000\r\n",
            i + 1
        ));
    }
    m.push_str("Subject: hops\r\n\r\nbody\r\n");
    m.into_bytes()
}

/// Item 4, RFC 5321 §6.3: a message with more `Received:` headers than `hop_limit` (default 50,
/// counting the one Gannet adds) is a mail loop. Gannet refuses it at DATA with 554 5.4.6 (the
/// sending MTA is still connected and bounces it to its sender; no DSN of ours joins the loop);
/// it accepted and relayed it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_hop_limit_is_refused_as_a_loop() {
    let w = World::start(
        &["127.0.0.215"],
        Zone::new().mail_domain("hops.test", "127.0.0.215"),
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    // 49 + Gannet's own = 50 headers: at the limit, still fine.
    c.send("s@origin.test", &["ok@hops.test"], &message_with_hops(49))
        .await;
    // 50 + Gannet's own = 51: one too many.
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<loop@hops.test>", "250").await;
    let r = c.data(&message_with_hops(50), "554").await;
    assert!(
        r.text().contains("5.4.6") && r.text().contains("hop_limit"),
        "{}",
        r.text()
    );
    c.quit().await;
    w.gannet.wait_event("delivered", "ok@hops.test", WAIT).await;
    assert!(
        w.gannet.outcomes_for("loop@hops.test").is_empty(),
        "the looping message must not be queued"
    );
    assert_eq!(w.sinks[0].messages().len(), 1);
}

/// Item 4, Postfix's "mail for D loops back to myself": a domain whose MX points at Gannet's
/// own listener address is bounced 5.4.6 at once. Before the fix Gannet delivered the message
/// to itself, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_pointing_at_our_own_listener_bounces_as_a_loop() {
    let dns = TestDns::start(
        Zone::new()
            .mail_domain("loop.test", "127.0.0.1")
            .mail_domain("origin.test", "127.0.0.216"),
    )
    .await;
    let (port, sinks) = bind_sinks(&["127.0.0.216"]).await;
    // Gannet listens on 127.0.0.1:P and delivers to port P of every MX host (the sink for the
    // sender's DSN listens on P' and gets its mail through a route).
    let cfg = TestConfig::new(&dns, 0)
        .route("origin.test", &format!("127.0.0.216:{port}"))
        .build()
        .replace(
            "address = \"${SMTP}\"",
            "address = \"127.0.0.1:${PORT_self}\"",
        )
        .replace("\nport = 0\n", "\nport = ${PORT_self}\n");
    let g = Gannet::start(&cfg).await;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["x@loop.test"],
        b"Subject: loop\r\n\r\nx\r\n",
    )
    .await;
    let o = g.wait_event("bounced", "x@loop.test", WAIT).await;
    assert!(
        o.reply.starts_with("554 5.4.6")
            && o.reply.contains("mail for loop.test loops back to myself"),
        "{}",
        o.reply
    );
    assert!(
        g.outcomes_for("x@loop.test")
            .iter()
            .all(|o| o.event == "bounced"),
        "never delivered to ourselves: {:?}",
        g.outcomes_for("x@loop.test")
    );
    let dsn = &sinks[0].wait_for(1, WAIT).await[0];
    assert_dsn(dsn, "x@loop.test", "failed");
    assert!(dsn.text().contains("5.4.6"), "{}", dsn.text());
}

/// Item 4: with the production default `loopback_is_self = true`, an MX on any loopback address
/// is Gannet itself (a `MX 10 localhost` mistake) and bounces 5.4.6; a `[[route]]` to loopback
/// is an operator's explicit choice and is still delivered. The other e2e tests turn the switch
/// off because their MX hosts are sinks on 127.0.0.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_on_loopback_bounces_as_a_loop_but_a_route_does_not() {
    let (port, sinks) = bind_sinks(&["127.0.0.217"]).await;
    let dns = TestDns::start(Zone::new().mail_domain("lo.test", "127.0.0.217")).await;
    let cfg = TestConfig::new(&dns, port)
        .delivery_option("loopback_is_self = true")
        .route("routed-lo.test", &format!("127.0.0.217:{port}"));
    let g = Gannet::start_config(&cfg).await;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.send("s@origin.test", &["x@lo.test"], b"Subject: lo\r\n\r\nx\r\n")
        .await;
    c.send(
        "s@origin.test",
        &["y@routed-lo.test"],
        b"Subject: routed\r\n\r\ny\r\n",
    )
    .await;
    c.quit().await;
    let o = g.wait_event("bounced", "x@lo.test", WAIT).await;
    assert!(
        o.reply.starts_with("554 5.4.6") && o.reply.contains("loops back to myself"),
        "{}",
        o.reply
    );
    g.wait_event("delivered", "y@routed-lo.test", WAIT).await;
    assert_eq!(sinks[0].delivered_rcpts(), ["y@routed-lo.test"]);
}

/// Sends one message to `rcpt` through Gannet.
async fn send_to(g: &Gannet, rcpt: &str) {
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &[rcpt],
        b"Subject: renumbered\r\n\r\nx\r\n",
    )
    .await;
}

/// Item 3: after an MX host is renumbered (its A record moves from 127.0.0.221 to .222) and
/// the operator runs `gannet queue flush`, the next message goes to the new address. Before
/// the fix the site's ready queue kept the addresses resolved for its first message until
/// restart, so it went to the old host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renumbered_mx_gets_the_next_delivery_after_queue_flush() {
    let w = World::start(
        &["127.0.0.221", "127.0.0.222"],
        Zone::new().mail_domain("renum.test", "127.0.0.221"),
        |c| c,
    )
    .await;
    let (old, new) = (&w.sinks[0], &w.sinks[1]);
    send_to(&w.gannet, "first@renum.test").await;
    w.gannet
        .wait_event("delivered", "first@renum.test", WAIT)
        .await;
    assert_eq!(old.delivered_rcpts(), ["first@renum.test"]);

    w.dns
        .set_zone(Zone::new().mail_domain("renum.test", "127.0.0.222"));
    w.gannet.cli(&["queue", "flush"]).await.assert_success();
    send_to(&w.gannet, "second@renum.test").await;
    let o = w
        .gannet
        .wait_event("delivered", "second@renum.test", WAIT)
        .await;
    assert_eq!(
        new.delivered_rcpts(),
        ["second@renum.test"],
        "the next delivery goes to the new address (outcome: {o:?})\nold host:\n{}",
        old.transcript()
    );
    assert_eq!(
        old.delivered_rcpts(),
        ["first@renum.test"],
        "nothing more reaches the old address"
    );
}

/// Item 3 without an operator: a recipient deferred by the old host is retried at the new
/// address once the records' TTL has run out (`[dns] min_ttl = 1s` here; the test zone's TTL
/// is 1 s). Before the fix every retry went to the old address until the mail expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renumbered_mx_gets_the_retry_once_the_ttl_runs_out() {
    let w = World::start(
        &["127.0.0.223", "127.0.0.224"],
        Zone::new().mail_domain("moved.test", "127.0.0.223"),
        |c| {
            c.dns_option("min_ttl = \"1s\"")
                .dns_option("max_ttl = \"1s\"")
                .retry_schedule(&["2s"])
        },
    )
    .await;
    let (old, new) = (&w.sinks[0], &w.sinks[1]);
    // The old host is being retired: it defers everything.
    old.add_rule(Rule::new(Stage::Rcpt, "451 4.3.2 moving house, try later"));
    send_to(&w.gannet, "x@moved.test").await;
    w.gannet.wait_event("deferred", "x@moved.test", WAIT).await;
    w.dns
        .set_zone(Zone::new().mail_domain("moved.test", "127.0.0.224"));
    let o = w.gannet.wait_event("delivered", "x@moved.test", WAIT).await;
    assert_eq!(
        new.delivered_rcpts(),
        ["x@moved.test"],
        "the retry went to the new address: {o:?}"
    );
}
