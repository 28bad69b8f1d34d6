//! Relaying through Gannet to destination MX hosts found in DNS (issue 2, items 1 and 8):
//! independent clients in, sinks out, headers and 8-bit content intact, MX preference, implicit
//! MX, null MX, NXDOMAIN, SERVFAIL, and `[[route]]` static next hops.

use crate::common::tools::{PySend, python_send, swaks};
use crate::common::*;

/// Recipients of accepted messages at `sink`, with how many times each arrived.
fn counts(sink: &Sink) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in sink.delivered_rcpts() {
        *m.entry(r.to_lowercase()).or_insert(0) += 1;
    }
    m
}

/// Waits until every recipient in `rcpts` has a `delivered` outcome.
async fn wait_delivered(g: &Gannet, rcpts: &[&str]) -> Vec<Outcome> {
    let what = format!("delivered outcomes for {rcpts:?}");
    g.wait_outcomes(WAIT, &what, |os| {
        rcpts.iter().all(|r| {
            os.iter()
                .any(|o| o.event == "delivered" && o.recipient.eq_ignore_ascii_case(r))
        })
    })
    .await
}

/// RFC 5321 §5.1: mail for a domain goes to its MX hosts; two domains with different MX hosts
/// get their own copies, every recipient exactly once, from Python smtplib and swaks alike.
/// RFC 5321 §4.4: Gannet prepends Received:; RFC 5322 §3.6: it adds Date: and Message-ID: when
/// the client left them out, and keeps the client's own when present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_and_swaks_relay_to_the_mx_of_each_domain() {
    let w = World::start(
        &["127.0.0.31", "127.0.0.32"],
        Zone::new()
            .mail_domain("alpha.test", "127.0.0.31")
            .mx("beta.test", 10, "smtp.beta-host.test")
            .a("smtp.beta-host.test", "127.0.0.32"),
        |c| c,
    )
    .await;
    let (alpha, beta) = (&w.sinks[0], &w.sinks[1]);

    // Python smtplib: no Date, no Message-ID (Gannet must add them).
    let py_msg = message(
        &[
            ("From", "Sender <sender@origin.test>"),
            ("To", "u1@alpha.test, u2@alpha.test, u3@beta.test"),
            ("Subject", "relay test from smtplib"),
            ("X-Custom", "keep me"),
        ],
        "first line\n.a line starting with a dot\n\nlast line",
    );
    let r = python_send(
        w.gannet.smtp_addr(),
        &PySend::new(
            "sender@origin.test",
            &["u1@alpha.test", "u2@alpha.test", "u3@beta.test"],
            &py_msg,
        ),
    )
    .await;
    r.assert_ok();
    assert!(
        r.data_reply.starts_with("250 2.0.0") && r.queue_id().is_some(),
        "expected '250 2.0.0 Ok: queued as ID', got {:?}",
        r.data_reply
    );

    // swaks: brings its own Date and Message-Id (Gannet must keep them, not add a second).
    let out = swaks(
        w.gannet.smtp_addr(),
        &[
            "--from",
            "sender@origin.test",
            "--to",
            "u4@beta.test",
            "--ehlo",
            "swaks.test",
            "--header",
            "Subject: relay test from swaks",
            "--header",
            "Message-Id: <swaks-relay-1@origin.test>",
            "--body",
            "body from swaks",
        ],
    )
    .await;
    out.assert_success();

    wait_delivered(
        &w.gannet,
        &[
            "u1@alpha.test",
            "u2@alpha.test",
            "u3@beta.test",
            "u4@beta.test",
        ],
    )
    .await;
    let a = counts(alpha);
    let b = counts(beta);
    assert_eq!(
        a,
        [
            ("u1@alpha.test".to_string(), 1),
            ("u2@alpha.test".to_string(), 1)
        ]
        .into(),
        "alpha.test's MX gets u1 and u2 once each, nothing else"
    );
    assert_eq!(
        b,
        [
            ("u3@beta.test".to_string(), 1),
            ("u4@beta.test".to_string(), 1)
        ]
        .into(),
        "beta.test's MX gets u3 and u4 once each, nothing else"
    );

    // The smtplib message, as it arrived at alpha's MX.
    let t = alpha
        .messages()
        .into_iter()
        .next()
        .expect("one message at alpha");
    assert_eq!(t.mail_from, "sender@origin.test");
    assert_eq!(
        t.peer.ip().to_string(),
        "127.0.0.1",
        "bound to the pool source IP"
    );
    assert_eq!(t.ehlo, "out.gannet.test", "EHLO name of the pool source");
    let first_line = t.text().lines().next().unwrap_or_default().to_string();
    assert!(
        first_line.starts_with("Received:"),
        "Gannet must prepend its Received: header, first line was {first_line:?}\n{}",
        t.text()
    );
    assert!(
        t.headers("received")[0].contains("gannet.test"),
        "Received: names our hostname: {:?}",
        t.headers("received")
    );
    assert_eq!(
        t.headers("message-id").len(),
        1,
        "exactly one Message-ID added\n{}",
        t.text()
    );
    assert!(t.header("message-id").unwrap().starts_with('<'));
    assert_eq!(
        t.headers("date").len(),
        1,
        "exactly one Date added\n{}",
        t.text()
    );
    // Every original header and the body arrive unchanged, in order, after Gannet's additions.
    let original = String::from_utf8(py_msg.clone()).unwrap();
    let (orig_headers, orig_body) = original.split_once("\r\n\r\n").unwrap();
    let got_headers = t.header_block();
    let mut pos = 0;
    for line in orig_headers.split("\r\n") {
        match got_headers[pos..].find(line) {
            Some(i) => pos += i + line.len(),
            None => panic!("header line {line:?} lost or reordered\n{}", t.text()),
        }
    }
    assert_eq!(
        t.body(),
        orig_body.as_bytes(),
        "body must arrive byte for byte"
    );

    // The swaks message keeps its own Message-Id and Date.
    let s = beta
        .messages()
        .into_iter()
        .find(|t| t.rcpts.iter().any(|r| r == "u4@beta.test"))
        .expect("swaks message at beta");
    assert_eq!(
        s.headers("message-id"),
        ["<swaks-relay-1@origin.test>"],
        "a client's Message-ID is kept, not replaced or doubled\n{}",
        s.text()
    );
    assert_eq!(
        s.headers("date").len(),
        1,
        "swaks' Date kept, not doubled\n{}",
        s.text()
    );
    assert!(s.text().contains("body from swaks"));

    // Outcome log lines carry what operators need.
    let o = w.gannet.outcomes_for("u3@beta.test");
    let d = o.iter().find(|o| o.event == "delivered").unwrap();
    assert_eq!(d.sender, "sender@origin.test");
    assert_eq!(d.ip, "127.0.0.32", "outcome names the MX IP: {:?}", d.raw);
    assert!(
        d.reply.starts_with("250"),
        "outcome has the MX reply: {:?}",
        d.raw
    );
    assert!(
        !d.queue_id.is_empty(),
        "outcome has the queue id: {:?}",
        d.raw
    );
    assert_eq!(
        d.class, "promotional",
        "listener default class: {:?}",
        d.raw
    );
}

/// RFC 6531 (SMTPUTF8) and RFC 6152 (8BITMIME): a UTF-8 recipient address and an 8-bit body go
/// through unchanged, and Gannet declares both to the next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_address_and_8bit_body_arrive_intact() {
    let w = World::start(
        &["127.0.0.33"],
        Zone::new().mail_domain("example.test", "127.0.0.33"),
        |c| c,
    )
    .await;
    let rcpt = "\u{3b4}\u{3bf}\u{3ba}\u{3b9}\u{3bc}\u{3ae}@example.test"; // δοκιμή@example.test
    let msg = message(
        &[
            ("From", "s\u{e9}bastien@origin.test"),
            ("To", rcpt),
            ("Subject", "\u{65e5}\u{672c}\u{8a9e} and caf\u{e9}"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
            ("Message-ID", "<utf8-1@origin.test>"),
            ("Date", "Mon, 23 Nov 2026 10:00:00 +0000"),
        ],
        "Gr\u{fc}\u{df}e, \u{3b3}\u{3b5}\u{3b9}\u{3ac} \u{3c3}\u{3bf}\u{3c5}, \u{1f426}\nline two \u{e9}\u{e8}",
    );
    python_send(
        w.gannet.smtp_addr(),
        &PySend::new("s\u{e9}bastien@origin.test", &[rcpt], &msg)
            .option("SMTPUTF8")
            .option("BODY=8BITMIME"),
    )
    .await
    .assert_ok();
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, [rcpt]);
    assert_eq!(t.mail_from, "s\u{e9}bastien@origin.test");
    let params: Vec<String> = t.mail_params.iter().map(|p| p.to_uppercase()).collect();
    assert!(
        params.iter().any(|p| p == "SMTPUTF8"),
        "RFC 6531 §3.4: a UTF-8 envelope needs MAIL FROM ... SMTPUTF8, got {params:?}"
    );
    assert!(
        params.iter().any(|p| p == "BODY=8BITMIME"),
        "RFC 6152 §3: an 8-bit body is declared with BODY=8BITMIME, got {params:?}"
    );
    // Gannet prepends Received:, so compare from the first original header on.
    let text = t.data.clone();
    let start = crate::common::sink::find(&text, b"From: ").expect("From header present");
    assert_eq!(
        &text[start..],
        &msg[..],
        "message after Received: must be byte-identical"
    );
    assert_eq!(t.headers("message-id"), ["<utf8-1@origin.test>"]);
    assert_eq!(t.headers("date").len(), 1);
}

/// RFC 5321 §5.1: MX hosts are tried in preference order (lowest first); an unreachable one is
/// skipped for the next. Two domains: `pref.test` (10 → working, 20 → working: only the first
/// gets mail) and `fallback.test` (10 → nothing listening, 20 → working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_order_and_fallback_past_a_dead_host() {
    let w = World::start(
        &["127.0.0.34", "127.0.0.35", "127.0.0.36"],
        Zone::new()
            // Listed in reverse on purpose: order comes from preference, not the answer.
            .mx("pref.test", 20, "backup.pref.test")
            .mx("pref.test", 10, "primary.pref.test")
            .a("primary.pref.test", "127.0.0.34")
            .a("backup.pref.test", "127.0.0.35")
            .mx("fallback.test", 10, "dead.fallback.test")
            .mx("fallback.test", 20, "alive.fallback.test")
            .a("dead.fallback.test", "127.0.0.99") // nothing listens there
            .a("alive.fallback.test", "127.0.0.36"),
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    for i in 0..3 {
        let body = format!("Subject: pref {i}\r\nMessage-ID: <pref-{i}@origin.test>\r\n\r\nx\r\n");
        c.send(
            "s@origin.test",
            &[&format!("p{i}@pref.test")],
            body.as_bytes(),
        )
        .await;
    }
    c.send(
        "s@origin.test",
        &["f@fallback.test"],
        b"Subject: fallback\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    wait_delivered(
        &w.gannet,
        &[
            "p0@pref.test",
            "p1@pref.test",
            "p2@pref.test",
            "f@fallback.test",
        ],
    )
    .await;
    assert_eq!(
        w.sinks[0].delivered_rcpts().len(),
        3,
        "preference 10 gets all pref.test mail"
    );
    assert_eq!(
        w.sinks[1].connections_opened(),
        0,
        "the preference-20 host of pref.test is never contacted while 10 works"
    );
    assert_eq!(w.sinks[2].delivered_rcpts(), ["f@fallback.test"]);
    let d = w
        .gannet
        .outcomes_for("f@fallback.test")
        .into_iter()
        .find(|o| o.event == "delivered")
        .unwrap();
    assert_eq!(
        d.ip, "127.0.0.36",
        "delivered through the working MX: {:?}",
        d.raw
    );
    assert_eq!(
        d.attempt, 1,
        "falling back to the next MX happens within one attempt, not after a retry: {:?}",
        d.raw
    );
}

/// RFC 5321 §5.1: a domain with no MX but an A record is its own mail host (implicit MX).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_from_the_a_record() {
    let w = World::start(
        &["127.0.0.37"],
        Zone::new().a("plain.test", "127.0.0.37"),
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["x@plain.test"],
        b"Subject: implicit\r\n\r\nx\r\n",
    )
    .await;
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, ["x@plain.test"]);
    w.gannet.wait_event("delivered", "x@plain.test", WAIT).await;
}

/// Starts Gannet with a sink for the sender's domain (where DSNs go) and nothing else.
async fn dsn_world(zone: Zone) -> World {
    World::start(
        &["127.0.0.38"],
        zone.mail_domain("origin.test", "127.0.0.38"),
        |c| c,
    )
    .await
}

/// RFC 7505 §4.2: a null MX means the domain accepts no mail: bounce at once (no retries) with
/// a DSN to the sender (RFC 3464).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_bounces_at_once_with_a_dsn() {
    let w = dsn_world(Zone::new().null_mx("nomail.test")).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "sender@origin.test",
        &["x@nomail.test"],
        b"Subject: to a null MX\r\n\r\nx\r\n",
    )
    .await;
    let b = w.gannet.wait_event("bounced", "x@nomail.test", WAIT).await;
    let all = w.gannet.outcomes_for("x@nomail.test");
    assert!(
        all.iter().all(|o| o.event != "deferred"),
        "a null MX is permanent: no deferral, got {all:?}"
    );
    assert_eq!(b.attempt, 1, "bounced on the first attempt: {:?}", b.raw);
    let dsn = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(dsn.rcpts, ["sender@origin.test"]);
    assert_dsn(dsn, "x@nomail.test", "failed");
}

/// RFC 5321 §5.1: a domain that does not exist (NXDOMAIN) cannot receive mail: bounce + DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_bounces_with_a_dsn() {
    let w = dsn_world(Zone::new()).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "sender@origin.test",
        &["x@no-such-domain.test"],
        b"Subject: to nowhere\r\n\r\nx\r\n",
    )
    .await;
    w.gannet
        .wait_event("bounced", "x@no-such-domain.test", WAIT)
        .await;
    let all = w.gannet.outcomes_for("x@no-such-domain.test");
    assert!(
        all.iter().all(|o| o.event != "deferred"),
        "NXDOMAIN is permanent: no deferral, got {all:?}"
    );
    let dsn = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_dsn(dsn, "x@no-such-domain.test", "failed");
}

/// A DNS failure (SERVFAIL) is temporary: defer and retry, never bounce; once DNS answers, the
/// message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_defers_and_delivers_once_dns_recovers() {
    let w = World::start(
        &["127.0.0.39"],
        Zone::new()
            .servfail("flaky.test")
            .mail_domain("origin.test", "127.0.0.39"),
        |c| c,
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "sender@origin.test",
        &["x@flaky.test"],
        b"Subject: dns trouble\r\n\r\nx\r\n",
    )
    .await;
    // At least two deferrals (first attempt and one retry) and no bounce.
    w.gannet
        .wait_outcomes(WAIT, "two deferrals for x@flaky.test", |os| {
            os.iter()
                .filter(|o| o.event == "deferred" && o.recipient == "x@flaky.test")
                .count()
                >= 2
        })
        .await;
    assert!(
        w.gannet
            .outcomes_for("x@flaky.test")
            .iter()
            .all(|o| o.event == "deferred"),
        "SERVFAIL must only defer"
    );
    let q = w.gannet.queue_status().await;
    assert_eq!(
        q.queued_recipients, 1,
        "the deferred recipient stays queued: {:?}",
        q.raw
    );
    assert!(
        w.sinks[0].transactions().is_empty(),
        "no DSN for a temporary failure"
    );

    w.dns.set_zone(
        Zone::new()
            .mail_domain("flaky.test", "127.0.0.39")
            .mail_domain("origin.test", "127.0.0.39"),
    );
    // Gannet keeps a temporary DNS failure in a negative cache for 30 s (src/delivery/mx.rs
    // NEGATIVE_TTL, not configurable yet), so recovery shows up only after that.
    let negative_cache = std::time::Duration::from_secs(30);
    w.gannet
        .wait_event("delivered", "x@flaky.test", negative_cache + WAIT)
        .await;
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, ["x@flaky.test"]);
}

/// `[[route]]` sends a domain to a fixed `host:port` without looking up its MX (like a Postfix
/// transport map): the domain has no DNS records at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_sends_a_domain_to_its_static_next_hop() {
    let (port, sinks) = bind_sinks(&["127.0.0.40", "127.0.0.41"]).await;
    let (hub, mx) = (&sinks[0], &sinks[1]);
    let dns = TestDns::start(
        // other.test resolves normally; routed.test has no records (a lookup would bounce).
        Zone::new().mail_domain("other.test", "127.0.0.41"),
    )
    .await;
    let cfg = TestConfig::new(&dns, port)
        .route("routed.test", &format!("127.0.0.40:{port}"))
        .build();
    let g = Gannet::start(&cfg).await;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["a@routed.test"],
        b"Subject: routed\r\n\r\nx\r\n",
    )
    .await;
    c.send(
        "s@origin.test",
        &["b@other.test"],
        b"Subject: not routed\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let t = &hub.wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, ["a@routed.test"]);
    mx.wait_for(1, WAIT).await;
    assert_eq!(
        mx.delivered_rcpts(),
        ["b@other.test"],
        "unrouted domains still use MX"
    );
    assert_eq!(hub.delivered_rcpts(), ["a@routed.test"]);
    assert!(
        !dns.queries()
            .iter()
            .any(|q| q.name == "routed.test" && q.qtype == "MX"),
        "a routed domain needs no MX lookup: {:?}",
        dns.queries()
    );
}

/// Postfix's `smtp-source` (4 parallel sessions, 40 messages) through Gannet: every message
/// arrives exactly once, and Gannet never opens more connections to the destination than
/// `max_connections_per_destination` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_burst_arrives_complete_within_the_connection_cap() {
    let w = World::start(
        &["127.0.0.42"],
        Zone::new().mail_domain("burst.test", "127.0.0.42"),
        |c| c.delivery_option("max_connections_per_destination = 2"),
    )
    .await;
    let sink = &w.sinks[0];
    // A slow site, so that deliveries overlap and the cap matters.
    sink.set_delay(std::time::Duration::from_millis(50));
    crate::common::tools::smtp_source(
        w.gannet.smtp_addr(),
        40,
        4,
        "load@origin.test",
        "r@burst.test",
        2000,
    )
    .await
    .assert_success();
    w.gannet
        .wait_outcomes(WAIT, "40 delivered outcomes", |os| {
            os.iter().filter(|o| o.event == "delivered").count() >= 40
        })
        .await;
    let accepted: usize = sink.messages().iter().map(|t| t.rcpts.len()).sum();
    assert_eq!(accepted, 40, "each of the 40 messages arrives exactly once");
    assert!(
        sink.max_concurrent() <= 2,
        "max_connections_per_destination = 2, but the sink saw {} at once",
        sink.max_concurrent()
    );
}

/// `[delivery] opportunistic_tls` (default on): when the MX offers STARTTLS, Gannet uses it
/// (RFC 3207), without verifying the certificate (ours is self-signed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_starttls_to_the_mx() {
    let w = World::start(
        &["127.0.0.43"],
        Zone::new().mail_domain("tls.test", "127.0.0.43"),
        |c| c,
    )
    .await;
    w.sinks[0].set_starttls(true);
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["x@tls.test"],
        b"Subject: tls out\r\n\r\nx\r\n",
    )
    .await;
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert!(t.tls, "Gannet should have used the offered STARTTLS");
}

/// A message to more recipients than `max_recipients_per_transaction` (here 100) goes out in
/// several transactions; every recipient arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_recipients_are_split_into_transactions() {
    let w = World::start(
        &["127.0.0.44"],
        Zone::new().mail_domain("many.test", "127.0.0.44"),
        |c| c,
    )
    .await;
    let rcpts: Vec<String> = (0..150).map(|i| format!("r{i}@many.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message("s@origin.test", &refs, b"Subject: many\r\n\r\nx\r\n")
        .await;
    let sink = &w.sinks[0];
    sink.wait_until(WAIT, |ts| {
        ts.iter()
            .filter(|t| t.accepted)
            .map(|t| t.rcpts.len())
            .sum::<usize>()
            >= 150
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut got = sink.delivered_rcpts();
    got.sort();
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(got, want, "each of the 150 recipients exactly once");
    let biggest = sink.messages().iter().map(|t| t.rcpts.len()).max().unwrap();
    assert!(
        biggest <= 100,
        "a transaction carried {biggest} > 100 recipients"
    );
}

/// RFC 5321 §2.4: the local part is case-sensitive; Gannet must not change it. A 5 MB message
/// arrives byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_part_case_and_a_large_body_are_preserved() {
    let w = World::start(
        &["127.0.0.45"],
        Zone::new().mail_domain("case.test", "127.0.0.45"),
        |c| c,
    )
    .await;
    let mut msg = b"Subject: big\r\nMessage-ID: <big@origin.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n".to_vec();
    let line: Vec<u8> = (0..76).map(|i| b'A' + (i % 26) as u8).collect();
    while msg.len() < 5 * 1024 * 1024 {
        msg.extend_from_slice(&line);
        msg.extend_from_slice(b"\r\n");
    }
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message("Sender.Name@Origin.Test", &["John.Doe@case.test"], &msg)
        .await;
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, ["John.Doe@case.test"], "local part case kept");
    assert_eq!(t.mail_from, "Sender.Name@Origin.Test");
    let start = crate::common::sink::find(&t.data, b"Subject: big").expect("original headers");
    assert!(
        t.data[start..] == msg[..],
        "5 MB body arrives byte-identical"
    );
}

/// `hostname` names Gannet everywhere it introduces itself (config: "SMTP greeting,
/// Received:, Message-ID, DSN reporting MTA"): the greeting, the Message-ID it adds, and the
/// DSN's own Message-ID — never the machine's host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_hostname_names_gannet_everywhere() {
    let w = dsn_world(Zone::new().null_mx("nomail.test")).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.expect("220 gannet.test").await;
    c.cmd("EHLO client.test", "250").await;
    c.send(
        "sender@origin.test",
        &["x@nomail.test"],
        b"Subject: no message-id\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let dsn = &w.sinks[0].wait_for(1, WAIT).await[0];
    let text = dsn.text();
    assert!(
        text.contains("Reporting-MTA: dns; gannet.test"),
        "DSN Reporting-MTA:\n{text}"
    );
    let added = text
        .lines()
        .skip_while(|l| {
            !l.to_ascii_lowercase()
                .starts_with("content-type: text/rfc822-headers")
        })
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        added.ends_with("@gannet.test>"),
        "the Message-ID Gannet added to the original: {added:?}"
    );
    let own = dsn.header("message-id").unwrap_or_default();
    assert!(
        own.ends_with("@gannet.test>"),
        "the DSN's own Message-ID must use the configured hostname, got {own:?}"
    );
}

/// Control headers: `X-Gannet-Class` picks the traffic class, `X-Gannet-Tenant` and
/// `X-Gannet-Campaign` label the message; all `X-Gannet-*` headers are removed before the
/// message leaves (they are instructions to Gannet, not content for recipients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_headers_set_class_tenant_campaign_and_are_stripped() {
    let w = World::start(
        &["127.0.0.46"],
        Zone::new().mail_domain("ctl.test", "127.0.0.46"),
        |c| c,
    )
    .await;
    let msg = b"X-Gannet-Class: transactional\r\nSubject: receipt\r\nX-Gannet-Tenant: acme\r\nX-Gannet-Campaign: spring-sale\r\nx-gannet-unknown: secret\r\n\r\nthanks\r\n";
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message("s@origin.test", &["r@ctl.test"], msg).await;
    let d = w.gannet.wait_event("delivered", "r@ctl.test", WAIT).await;
    assert_eq!(d.class, "transactional", "{:?}", d.raw);
    assert_eq!(d.raw["tenant"], "acme", "{:?}", d.raw);
    assert_eq!(d.raw["campaign"], "spring-sale", "{:?}", d.raw);
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    let headers = t.header_block().to_ascii_lowercase();
    assert!(
        !headers.contains("x-gannet-"),
        "X-Gannet-* headers must not leave Gannet:\n{}",
        t.header_block()
    );
    assert_eq!(t.header("subject").as_deref(), Some("receipt"));
    assert!(t.text().ends_with("\r\n\r\nthanks\r\n"));
}

/// `[[route]]` by host name (resolved through A), the `*` catch-all for every other domain,
/// and a route to a dead host defers (temporary) instead of bouncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_name_catch_all_and_dead_next_hop() {
    let (port, sinks) = bind_sinks(&["127.0.0.47", "127.0.0.48"]).await;
    let (named, catch_all) = (&sinks[0], &sinks[1]);
    let dns = TestDns::start(
        Zone::new()
            .a("relay.hub.test", "127.0.0.47")
            // Would win if the catch-all route were ignored:
            .mail_domain("anything.test", "127.0.0.49"),
    )
    .await;
    let cfg = TestConfig::new(&dns, port)
        .route("named.test", &format!("relay.hub.test:{port}"))
        .route("dead.test", &format!("127.0.0.99:{port}"))
        .route("*", &format!("127.0.0.48:{port}"))
        .build();
    let g = Gannet::start(&cfg).await;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for rcpt in ["a@named.test", "b@anything.test", "c@dead.test"] {
        c.send("s@origin.test", &[rcpt], b"Subject: routes\r\n\r\nx\r\n")
            .await;
    }
    c.quit().await;
    named.wait_for(1, WAIT).await;
    catch_all.wait_for(1, WAIT).await;
    assert_eq!(named.delivered_rcpts(), ["a@named.test"]);
    assert_eq!(catch_all.delivered_rcpts(), ["b@anything.test"]);
    let d = g.wait_event("deferred", "c@dead.test", WAIT).await;
    assert!(
        d.reply.starts_with('4'),
        "a dead next hop is temporary: {:?}",
        d.raw
    );
    assert!(
        g.outcomes_for("c@dead.test")
            .iter()
            .all(|o| o.event == "deferred"),
        "never bounced"
    );
}

/// A class maps to a pool, and a pool's source decides the local address and EHLO name of the
/// outbound connection: transactional mail leaves from 127.0.0.2 as `tx.gannet.test`,
/// promotional from 127.0.0.1 as `out.gannet.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_leaves_through_its_pool_source() {
    let w = World::start(
        &["127.0.0.49"],
        Zone::new().mail_domain("pools.test", "127.0.0.49"),
        |c| {
            c.pool("tx", &[("127.0.0.2", "tx.gannet.test")])
                .class("transactional", "tx", 10)
        },
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["tx@pools.test"],
        b"X-Gannet-Class: transactional\r\nSubject: tx\r\n\r\nx\r\n",
    )
    .await;
    c.send(
        "s@origin.test",
        &["promo@pools.test"],
        b"Subject: promo\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let ts = w.sinks[0].wait_for(2, WAIT).await;
    let by = |rcpt: &str| {
        ts.iter()
            .find(|t| t.rcpts.iter().any(|r| r == rcpt))
            .unwrap_or_else(|| panic!("no message for {rcpt}"))
            .clone()
    };
    let tx = by("tx@pools.test");
    assert_eq!(
        (tx.peer.ip().to_string().as_str(), tx.ehlo.as_str()),
        ("127.0.0.2", "tx.gannet.test")
    );
    let promo = by("promo@pools.test");
    assert_eq!(
        (promo.peer.ip().to_string().as_str(), promo.ehlo.as_str()),
        ("127.0.0.1", "out.gannet.test")
    );
}
