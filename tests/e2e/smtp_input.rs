//! What clients send that Gannet must refuse (issue 2, items 4 and 5): relaying for outsiders,
//! garbage, over-long lines, truncated DATA, out-of-order pipelining, bad BDAT sizes, TLS
//! handshake garbage, and size/recipient limits. In every case: the right reply code, other
//! clients are served meanwhile, and nothing from the broken transaction is queued or sent.
//!
//! Recipients of broken transactions are `bad...@dest.test`; control messages that must get
//! through use `good...@dest.test`.

use std::net::IpAddr;
use std::time::Duration;

use crate::common::tools::{PySend, Reply, python_send};
use crate::common::*;

/// Sink 127.0.0.71 is dest.test's MX. The default listener offers STARTTLS (test certificate);
/// a second listener speaks implicit TLS on `${PORT_TLS}`.
async fn input_world(configure: impl FnOnce(TestConfig) -> TestConfig) -> World {
    World::start(
        &["127.0.0.71"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.71")
            .mail_domain("origin.test", "127.0.0.71"),
        |c| {
            configure(
                c.listener_option("tls_cert = \"${CERT}\"")
                    .listener_option("tls_key = \"${KEY}\"")
                    .extra(
                        "[[listener]]\nname = \"implicit\"\naddress = \"127.0.0.1:${PORT_TLS}\"\n\
                         tls = \"implicit\"\ntls_cert = \"${CERT}\"\ntls_key = \"${KEY}\"\n\
                         relay_from = [\"127.0.0.1/32\"]\ndefault_class = \"promotional\"\n",
                    ),
            )
        },
    )
    .await
}

/// Another client, on its own connection, gets a message through (to `good-{tag}@dest.test`)
/// and it reaches the sink: the server keeps serving while a broken session is open.
async fn another_client_is_served(w: &World, tag: &str) {
    let rcpt = format!("good-{tag}@dest.test");
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let msg = format!("Subject: control {tag}\r\nMessage-ID: <{tag}@origin.test>\r\n\r\nok\r\n");
    c.send_message("s@origin.test", &[&rcpt], msg.as_bytes())
        .await;
    w.sinks[0]
        .wait_until(WAIT, |ts| {
            ts.iter().any(|t| t.accepted && t.rcpts.contains(&rcpt))
        })
        .await
        .unwrap_or_else(|e| panic!("control message {rcpt} not delivered: {e}"));
}

/// Nothing addressed to a `bad...` recipient was logged, delivered or left queued.
async fn nothing_from_the_broken_transaction(w: &World) {
    let bad_out: Vec<_> = w
        .gannet
        .outcomes()
        .into_iter()
        .filter(|o| o.recipient.starts_with("bad"))
        .collect();
    assert!(
        bad_out.is_empty(),
        "outcomes for a broken transaction: {bad_out:#?}"
    );
    let bad_sent: Vec<_> = w.sinks[0]
        .transactions()
        .into_iter()
        .filter(|t| t.rcpts.iter().any(|r| r.starts_with("bad")))
        .collect();
    assert!(
        bad_sent.is_empty(),
        "broken transaction was relayed: {bad_sent:#?}"
    );
    // Control messages are delivered by now; the queue drains to zero.
    let q = w.gannet.queue_drained(Duration::from_secs(10)).await;
    assert_eq!(
        q.queued_recipients, 0,
        "something is still queued: {:?}",
        q.raw
    );
}

/// Reads replies until the server closes the connection, stays silent for 3 s, or `max`
/// replies came. Returns the replies and whether the connection was closed.
async fn drain_replies(c: &mut SmtpClient, max: usize) -> (Vec<Reply>, bool) {
    c.set_timeout(Duration::from_secs(3));
    let mut replies = Vec::new();
    while replies.len() < max {
        match c.read_reply().await {
            Ok(Some(r)) => replies.push(r),
            Ok(None) => return (replies, true),
            Err(_) => break,
        }
    }
    c.set_timeout(Duration::from_secs(30));
    (replies, false)
}

/// RFC 5321 §3.6.2 / RFC 2505: a client outside `relay_from` that has not authenticated may
/// not relay: `550 5.7.1` at RCPT, nothing queued, nothing sent — whether it speaks raw SMTP or
/// Python smtplib.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_relay_attempt_from_outside_relay_from_is_refused() {
    let w = input_world(|c| c.relay_from(&["127.0.0.1/32"])).await;
    let outsider: IpAddr = "127.0.0.5".parse().unwrap();

    let mut c = SmtpClient::connect_from(outsider, w.gannet.smtp_addr()).await;
    c.hello("outsider.test").await;
    c.send_line("MAIL FROM:<spammer@outside.test>").await;
    let mail = c.read_reply().await.expect("reply to MAIL").expect("open");
    if mail.starts_with("550 5.7.1") {
        // Refusing already at MAIL is fine too.
    } else {
        assert_eq!(
            mail.code,
            250,
            "MAIL: {:?}\n{}",
            mail.text(),
            c.transcript()
        );
        c.cmd("RCPT TO:<bad-relay@dest.test>", "550 5.7.1").await;
        c.cmd("RCPT TO:<bad-relay2@dest.test>", "550 5.7.1").await;
        c.send_line("DATA").await;
        let data = c.read_reply().await.expect("reply to DATA").expect("open");
        assert!(
            data.code == 503 || data.code == 554,
            "DATA without an accepted recipient: 503/554, got {:?}\n{}",
            data.text(),
            c.transcript()
        );
    }
    c.quit().await;

    let r = python_send(
        w.gannet.smtp_addr(),
        &PySend {
            source_ip: Some("127.0.0.5".into()),
            ..PySend::new(
                "spammer@outside.test",
                &["bad-relay3@dest.test"],
                b"Subject: relay me\r\n\r\nspam\r\n",
            )
        },
    )
    .await;
    assert!(
        !r.ok,
        "smtplib from 127.0.0.5 must be refused: {}",
        r.output
    );
    let refused_code = r
        .refused
        .get("bad-relay3@dest.test")
        .map(|(code, _)| *code)
        .or(r.code);
    assert_eq!(refused_code, Some(550), "{:?}\n{}", r.refused, r.output);

    let q = w.gannet.queue_status().await;
    assert_eq!(q.queued_recipients, 0, "nothing queued: {:?}", q.raw);
    another_client_is_served(&w, "relay").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// Deterministic bytes that are no SMTP command: 20 lines of 100 bytes with NULs and high bytes.
fn garbage_lines() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut out = Vec::new();
    for _ in 0..20 {
        for _ in 0..100 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let b = (x >> 24) as u8;
            out.push(if b == b'\r' || b == b'\n' {
                0
            } else {
                b | 0x80
            });
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Binary garbage gets 5xx replies (never 2xx), and after `max_errors` (10) the session is
/// closed with 421; the server keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_gets_errors_then_421_and_close() {
    let w = input_world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("garbage.test").await;
    let _ = c.send_raw(&garbage_lines()).await;
    let (replies, closed) = drain_replies(&mut c, 20).await;
    assert!(
        !replies.is_empty(),
        "garbage gets replies\n{}",
        c.transcript()
    );
    for r in &replies {
        assert!(
            r.code == 421 || (500..600).contains(&r.code),
            "garbage must never get {}: {}\n{}",
            r.code,
            r.text(),
            c.transcript()
        );
    }
    assert!(
        closed && replies.last().is_some_and(|r| r.starts_with("421 4.")),
        "after max_errors (10) bad commands: '421 4.x.x' and close\n{}",
        c.transcript()
    );
    another_client_is_served(&w, "garbage").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 5321 §4.5.3.1.4: a command line over the limit (here 100 kB) gets `500 5.5.2`; the
/// session either goes on or is closed, and the server is not harmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_line_gets_500_5_5_2() {
    let w = input_world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("longline.test").await;
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    let long = format!("RCPT TO:<bad-{}@dest.test>\r\n", "a".repeat(100 * 1024));
    let _ = c.send_raw(long.as_bytes()).await;
    another_client_is_served(&w, "longline-meanwhile").await;
    c.expect("500 5.5.2").await;
    c.send_line("NOOP").await;
    match c.read_reply().await {
        Ok(Some(r)) if r.code == 250 => {}
        Ok(None) => {} // closing after an over-long line is acceptable
        other => panic!(
            "after 500 5.5.2: NOOP → 250 or close, got {other:?}\n{}",
            c.transcript()
        ),
    }
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 5321 §4.1.1.4: a message is complete only at CRLF.CRLF. A client that disconnects in the
/// middle of DATA leaves nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_without_the_final_dot_then_disconnect_queues_nothing() {
    let w = input_world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("truncated.test").await;
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<bad-truncated@dest.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: never finished\r\n\r\nthis body has no end\r\n.not the end\r\n")
        .await
        .unwrap();
    another_client_is_served(&w, "truncated-meanwhile").await;
    c.disconnect();
    another_client_is_served(&w, "truncated-after").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 2920 (PIPELINING) and RFC 5321 §4.1.4: commands out of order in one pipelined write get
/// `503 5.5.1` each, in order, without derailing the session; a correct pipelined transaction
/// afterwards works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_out_of_order_get_503() {
    let w = input_world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let ehlo = c.hello("pipeline.test").await;
    assert!(
        ehlo.extensions().iter().any(|e| e == "PIPELINING"),
        "PIPELINING offered: {ehlo:?}"
    );
    c.send_raw(
        b"RCPT TO:<bad-early@dest.test>\r\nDATA\r\nMAIL FROM:<s@origin.test>\r\nMAIL FROM:<s@origin.test>\r\nDATA\r\nRSET\r\n",
    )
    .await
    .unwrap();
    c.expect("503 5.5.1").await; // RCPT before MAIL
    let data = c.expect("5").await; // DATA before MAIL
    assert!(
        data.starts_with("503 5.5.1") || data.starts_with("554 5.5.1"),
        "DATA out of sequence: 503 5.5.1 (or 554 5.5.1), got {:?}",
        data.text()
    );
    c.expect("250").await; // MAIL
    c.expect("503 5.5.1").await; // nested MAIL
    let data = c.expect("5").await; // DATA without RCPT
    assert!(
        data.starts_with("503 5.5.1") || data.starts_with("554 5.5.1"),
        "DATA without recipients: 503 5.5.1 (or 554 5.5.1), got {:?}",
        data.text()
    );
    c.expect("250").await; // RSET

    // A well-formed pipelined transaction on the same session still works.
    c.send_raw(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<good-pipelined@dest.test>\r\nDATA\r\n")
        .await
        .unwrap();
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.send_raw(b"Subject: pipelined\r\n\r\nok\r\n.\r\n")
        .await
        .unwrap();
    c.expect("250 2.0.0").await;
    c.quit().await;
    w.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(w.sinks[0].delivered_rcpts(), ["good-pipelined@dest.test"]);
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 3030 (CHUNKING): BDAT with a size that is not a number gets 501; BDAT before MAIL gets
/// 503 (after its chunk is read); a chunk over `max_message_size` gets `552 5.3.4`; a chunk cut
/// short by a disconnect queues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_with_wrong_sizes() {
    let w = input_world(|c| c.listener_option("max_message_size = 10000")).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let ehlo = c.hello("bdat.test").await;
    assert!(
        ehlo.extensions().iter().any(|e| e == "CHUNKING"),
        "CHUNKING offered (RFC 3030): {ehlo:?}"
    );
    c.send_raw(b"BDAT 4 LAST\r\nabcd").await.unwrap();
    c.expect("503 5.5.1").await;
    c.cmd("BDAT not-a-number LAST", "501").await;

    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<bad-bdat-big@dest.test>", "250").await;
    let mut big = b"BDAT 20000 LAST\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 20000));
    let _ = c.send_raw(&big).await;
    match c.read_reply().await {
        Ok(Some(r)) if r.starts_with("552 5.3.4") => {
            // The session survives: the whole chunk was consumed.
            c.cmd("RSET", "250").await;
            c.quit().await;
        }
        other => panic!(
            "a BDAT chunk over max_message_size: 552 5.3.4, got {other:?}\n{}",
            c.transcript()
        ),
    }

    // Declared 100 bytes, sent 10, then gone.
    let mut short = SmtpClient::connect(w.gannet.smtp_addr()).await;
    short.hello("bdat.test").await;
    short.cmd("MAIL FROM:<s@origin.test>", "250").await;
    short.cmd("RCPT TO:<bad-bdat-short@dest.test>", "250").await;
    short
        .send_raw(b"BDAT 100 LAST\r\n0123456789")
        .await
        .unwrap();
    another_client_is_served(&w, "bdat-meanwhile").await;
    short.disconnect();
    another_client_is_served(&w, "bdat-after").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 3207: after `220` to STARTTLS, bytes that are not a TLS handshake end that connection
/// (no crash, no plaintext session continues); the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_after_starttls_closes_only_that_connection() {
    let w = input_world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let ehlo = c.hello("tlsgarbage.test").await;
    assert!(
        ehlo.extensions().iter().any(|e| e == "STARTTLS"),
        "STARTTLS offered when a certificate is configured: {ehlo:?}"
    );
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<bad-tls@dest.test>", "250").await;
    // RFC 3207 §4.2: STARTTLS resets the transaction; send garbage instead of a ClientHello.
    let _ = c
        .starttls_then_raw(
            b"\x16\x03\x01\xff\xffthis is not a TLS handshake\r\nMAIL FROM:<x@y>\r\n",
        )
        .await;
    c.expect_closed().await;

    // A real STARTTLS session works meanwhile.
    let mut ok = SmtpClient::connect(w.gannet.smtp_addr()).await;
    ok.hello("tls.test").await;
    ok.starttls().await;
    ok.cmd("EHLO tls.test", "250").await;
    ok.send(
        "s@origin.test",
        &["good-starttls@dest.test"],
        b"Subject: over tls\r\n\r\nok\r\n",
    )
    .await;
    ok.quit().await;
    another_client_is_served(&w, "tls-after").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// RFC 8314 implicit TLS: plaintext SMTP sent to the TLS port ends that connection; a real TLS
/// client (Python `SMTP_SSL`) is served on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_implicit_tls_listener_is_dropped() {
    let w = input_world(|c| c).await;
    let tls_addr = w.gannet.listener_addrs()[1];
    let mut c = SmtpClient::connect(tls_addr).await;
    let _ = c
        .send_raw(
            b"EHLO plain.test\r\nMAIL FROM:<s@origin.test>\r\nRCPT TO:<bad-implicit@dest.test>\r\n",
        )
        .await;
    c.expect_closed().await;

    let r = python_send(
        tls_addr,
        &PySend {
            implicit_tls: true,
            ..PySend::new(
                "s@origin.test",
                &["good-implicit@dest.test"],
                b"Subject: implicit tls\r\n\r\nok\r\n",
            )
        },
    )
    .await;
    r.assert_ok();
    let mut raw = SmtpClient::connect_tls(tls_addr).await;
    raw.send_message(
        "s@origin.test",
        &["good-implicit-raw@dest.test"],
        b"Subject: implicit tls raw\r\n\r\nok\r\n",
    )
    .await;
    w.sinks[0].wait_for(2, WAIT).await;
    another_client_is_served(&w, "implicit-after").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// Listener limits: too many recipients → `452 4.5.3` (RFC 5321 §4.5.3.1.10), a message over
/// `max_message_size` → `552 5.3.4`, both for a declared SIZE (RFC 1870) and for DATA that
/// turns out too big; nothing of the refused message is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_and_size_limits() {
    let w = input_world(|c| {
        c.listener_option("max_recipients = 2")
            .listener_option("max_message_size = 10000")
    })
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let ehlo = c.hello("limits.test").await;
    assert!(
        ehlo.extensions()
            .iter()
            .any(|e| e.starts_with("SIZE 10000")),
        "SIZE advertises max_message_size: {ehlo:?}"
    );
    c.cmd("MAIL FROM:<s@origin.test> SIZE=20000", "552 5.3.4")
        .await;

    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<bad-big1@dest.test>", "250").await;
    c.cmd("RCPT TO:<bad-big2@dest.test>", "250").await;
    c.cmd("RCPT TO:<bad-big3@dest.test>", "452 4.5.3").await;
    let mut big = b"Subject: too big\r\n\r\n".to_vec();
    for _ in 0..200 {
        big.extend_from_slice(&[b'y'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    c.data(&big, "552 5.3.4").await;
    c.cmd("RSET", "250").await;
    c.quit().await;
    another_client_is_served(&w, "limits").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// SMTP smuggling (CVE-2023-51766 and kin): only `<CRLF>.<CRLF>` ends DATA (RFC 5321
/// §4.1.1.4). A bare-LF or bare-CR "end of data" followed by a second transaction must stay
/// inside the first message: one 250, one message, no smuggled recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_end_of_data_does_not_start_a_second_transaction() {
    let w = input_world(|c| c).await;
    for (i, fake_end) in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n"]
        .iter()
        .enumerate()
    {
        let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
        c.hello("smuggler.test").await;
        c.cmd("MAIL FROM:<s@origin.test>", "250").await;
        c.cmd(&format!("RCPT TO:<good-carrier{i}@dest.test>"), "250")
            .await;
        c.cmd("DATA", "354").await;
        let mut body = format!("Subject: carrier {i}\r\n\r\nhello").into_bytes();
        body.extend_from_slice(fake_end);
        body.extend_from_slice(
            format!(
                "MAIL FROM:<evil@origin.test>\r\nRCPT TO:<bad-smuggled{i}@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
            )
            .as_bytes(),
        );
        c.send_raw(&body).await.unwrap();
        // Either the whole thing is one message (250) or refused as malformed (5xx); never
        // 250 followed by replies to the smuggled commands.
        let first = c.expect("").await;
        assert!(
            first.code == 250 || (500..600).contains(&first.code),
            "fake end {fake_end:?}: one reply for the whole DATA, got {:?}\n{}",
            first.text(),
            c.transcript()
        );
        c.send_line("QUIT").await;
        let (rest, _) = drain_replies(&mut c, 10).await;
        assert!(
            rest.len() == 1 && rest[0].code == 221,
            "fake end {fake_end:?}: after the DATA reply only QUIT's 221 may follow, got {rest:?}\n{}",
            c.transcript()
        );
    }
    another_client_is_served(&w, "smuggling").await;
    nothing_from_the_broken_transaction(&w).await;
}

/// `max_sessions_per_ip`: one connection too many gets `421 4.7.0` and is closed; the others
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_the_per_ip_limit_get_421() {
    let w = input_world(|c| c.listener_option("max_sessions_per_ip = 2")).await;
    let mut a = SmtpClient::connect(w.gannet.smtp_addr()).await;
    a.hello("a.test").await;
    let mut b = SmtpClient::connect(w.gannet.smtp_addr()).await;
    b.hello("b.test").await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    a.cmd("NOOP", "250").await;
    a.quit().await;
    // A slot is free again once a session ends (the server may need a moment to notice).
    let mut served = false;
    for _ in 0..50 {
        let mut d = SmtpClient::connect(w.gannet.smtp_addr()).await;
        match d.read_reply().await {
            Ok(Some(r)) if r.code == 220 => {
                d.cmd("EHLO d.test", "250").await;
                d.quit().await;
                served = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(served, "a new session is accepted after one ended");
    b.quit().await;
}

/// `command_timeout`: a client that goes silent gets `421 4.4.2` and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out_with_421() {
    let w = input_world(|c| c.listener_option("command_timeout = \"1s\"")).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("silent.test").await;
    c.set_timeout(Duration::from_secs(10));
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
}

/// SMTP AUTH (RFC 4954): offered only under TLS; a wrong password gets `535 5.7.8`; a client
/// outside `relay_from` may relay once authenticated (the contrast to the open-relay test);
/// `require_auth` refuses MAIL before AUTH with `530 5.7.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_clients_may_relay_from_anywhere() {
    let hash = crate::common::gannet::hash_password("s3cret-pass").await;
    let w = input_world(|c| {
        c.listener_option("require_auth = true").extra(&format!(
            "[[smtp_user]]\nname = \"app\"\npassword_hash = \"{hash}\"\n"
        ))
    })
    .await;
    let plain = crate::common::tools::auth_plain;
    let outsider: IpAddr = "127.0.0.5".parse().unwrap();
    let mut c = SmtpClient::connect_from(outsider, w.gannet.smtp_addr()).await;
    let ehlo = c.hello("app.test").await;
    assert!(
        !ehlo.extensions().iter().any(|e| e.starts_with("AUTH")),
        "AUTH is not offered before TLS: {ehlo:?}"
    );
    c.cmd("MAIL FROM:<app@origin.test>", "530 5.7.0").await;
    c.starttls().await;
    let ehlo = c.cmd("EHLO app.test", "250").await;
    assert!(
        ehlo.extensions()
            .iter()
            .any(|e| e.starts_with("AUTH") && e.contains("PLAIN")),
        "AUTH PLAIN offered under TLS: {ehlo:?}"
    );
    c.cmd(
        &format!("AUTH PLAIN {}", plain("app", "wrong")),
        "535 5.7.8",
    )
    .await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain("app", "s3cret-pass")),
        "235 2.7.0",
    )
    .await;
    c.send(
        "app@origin.test",
        &["good-auth@dest.test"],
        b"Subject: authenticated\r\n\r\nok\r\n",
    )
    .await;
    c.quit().await;
    let t = &w.sinks[0].wait_for(1, WAIT).await[0];
    assert_eq!(t.rcpts, ["good-auth@dest.test"]);
    assert!(
        t.headers("received")[0].contains("ESMTPSA"),
        "RFC 3848: Received says ESMTPSA for TLS + AUTH: {:?}",
        t.headers("received")
    );
}
