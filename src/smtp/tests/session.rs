//! Session tests over real loopback sockets: a listener bound to 127.0.0.1:0 with a stand-in
//! acceptor that records what it is handed, spoken to through the test [`Client`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::client::{Client, tls_connector};
use super::{after_received, config};
use crate::message::{Accepted, Acceptor, Rejection, Submission};
use crate::metrics::Metrics;
use crate::smtp::{SmtpListener, generate_dev_cert};

/// Stand-in for the intake pipeline: records submissions and answers Ok (or a set rejection).
#[derive(Default)]
struct Recorder {
    submissions: Mutex<Vec<Submission>>,
    reject: Mutex<Option<Rejection>>,
}

impl Acceptor for Recorder {
    fn accept(&self, submission: Submission) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        let mut subs = self.submissions.lock().unwrap();
        subs.push(submission);
        let result = match self.reject.lock().unwrap().clone() {
            Some(r) => Err(r),
            None => Ok(Accepted {
                queue_id: format!("Q{}", subs.len()),
            }),
        };
        Box::pin(async move { result })
    }
}

impl Recorder {
    fn taken(&self) -> Vec<Submission> {
        self.submissions.lock().unwrap().clone()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum TlsSetup {
    Plain,
    StartTls,
    Implicit,
}

struct Server {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    run: JoinHandle<()>,
    metrics: Metrics,
    connector: TlsConnector,
    _dir: tempfile::TempDir,
}

/// An argon2id hash with tiny cost parameters, so tests stay fast (verification reads the
/// parameters from the hash).
fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    argon
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// Start a listener with these extra `[[listener]]` keys. A dev certificate for `localhost` is
/// always made; `tls` says how the listener uses it. User "alice" has password "secret".
async fn start(listener: &str, tls: TlsSetup) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = generate_dev_cert(&["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let tls_keys = match tls {
        TlsSetup::Plain => String::new(),
        TlsSetup::StartTls => format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        TlsSetup::Implicit => format!(
            "tls = \"implicit\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    };
    let users = format!(
        "[[smtp_user]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
        cheap_hash("secret")
    );
    let config = config(&format!("{tls_keys}{listener}"), &users);
    let recorder = Arc::new(Recorder::default());
    let metrics = Metrics::new();
    let bound = SmtpListener::bind(config, 0, recorder.clone(), metrics.clone())
        .await
        .unwrap();
    let addr = bound.local_addr();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(bound.run(shutdown.clone()));
    Server {
        addr,
        recorder,
        shutdown,
        run,
        metrics,
        connector: tls_connector(&cert),
        _dir: dir,
    }
}

impl Server {
    async fn client(&self) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.expect("220 mx.test ESMTP").await;
        c
    }

    async fn tls_client(&self) -> Client {
        let mut c = Client::connect_tls(self.addr, &self.connector).await;
        c.expect("220 mx.test ESMTP").await;
        c
    }

    /// Stop the listener and wait until every session has ended.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("run() returned after shutdown")
            .unwrap();
    }
}

const BODY: &str = "From: a@sender.test\r\nSubject: hello\r\n\r\nbody line\r\n";

#[tokio::test]
async fn full_transaction() {
    let s = start("", TlsSetup::Plain).await;
    let mut c = s.client().await;
    let ehlo = c.ehlo("client.test").await;
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let reply = c
        .send_message("a@sender.test", &["b@rcpt.test", "c@rcpt.test"], BODY)
        .await;
    assert_eq!(reply, "250 2.0.0 Ok: queued as Q1");
    c.cmd("QUIT", "221 2.0.0").await;
    c.expect_closed().await;

    let subs = s.recorder.taken();
    assert_eq!(subs.len(), 1);
    let m = &subs[0];
    assert_eq!(m.envelope.mail_from, "a@sender.test");
    assert_eq!(m.envelope.rcpts, ["b@rcpt.test", "c@rcpt.test"]);
    assert_eq!(after_received(&m.body), BODY.as_bytes());
    assert!(m.body.starts_with(
        b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Gannet) with ESMTP id "
    ));
    assert_eq!(m.origin.listener, "test");
    assert_eq!(m.origin.client_ip.to_string(), "127.0.0.1");
    assert_eq!(m.origin.helo, "client.test");
    assert_eq!(m.origin.auth_user, None);
    assert!(m.class.is_none() && m.tenant.is_none() && m.campaign.is_none());
    let metrics = s.metrics.render();
    assert!(
        // Acceptance is counted from the event stream (intake publishes `received`); the
        // session itself records only how long the durable 250 took.
        metrics.contains("gannet_accept_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gannet_accept_latency_seconds_count 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// RFC 2920: a client may send MAIL, RCPTs and DATA without waiting; replies come in order.
#[tokio::test]
async fn pipelining() {
    let s = start("", TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.send_raw(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nRCPT TO:<bad address>\r\nRCPT TO:<c@r.test>\r\nDATA\r\n")
        .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("501 5.1.3").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    // The end of one message, the next transaction and QUIT in one packet.
    c.send_raw(b"one\r\n.\r\nMAIL FROM:<d@s.test>\r\nRCPT TO:<e@r.test>\r\nDATA\r\n")
        .await;
    c.expect("250 2.0.0 Ok: queued as Q1").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send_raw(b"two\r\n.\r\nQUIT\r\n").await;
    c.expect("250 2.0.0 Ok: queued as Q2").await;
    c.expect("221").await;
    c.expect_closed().await;
    let subs = s.recorder.taken();
    assert_eq!(subs[0].envelope.rcpts, ["b@r.test", "c@r.test"]);
    assert_eq!(after_received(&subs[1].body), b"two\r\n");
    s.stop().await;
}

#[tokio::test]
async fn size_limits_give_552_5_3_4() {
    let s = start("", TlsSetup::Plain).await; // max_message_size = 1000
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test> SIZE=1001", "552 5.3.4").await;
    c.cmd("MAIL FROM:<a@s.test> SIZE=900", "250 2.1.0").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.cmd("DATA", "354").await;
    let big = format!("{}\r\n", "x".repeat(998)).repeat(3);
    c.send_raw(big.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    c.expect("552 5.3.4").await;
    // The session goes on, and chunked messages are limited too.
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.send_raw(format!("BDAT 1500 LAST\r\n{}", "y".repeat(1500)).as_bytes())
        .await;
    c.expect("552 5.3.4").await;
    c.cmd("NOOP", "250").await;
    assert!(s.recorder.taken().is_empty());
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(r#"gannet_rejected_total{code="552",listener="test"} 3"#),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn recipient_limit_gives_452_4_5_3() {
    let s = start("", TlsSetup::Plain).await; // max_recipients = 3
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<r{i}@r.test>"), "250 2.1.5").await;
    }
    c.cmd("RCPT TO:<r3@r.test>", "452 4.5.3").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"x\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    assert_eq!(s.recorder.taken()[0].envelope.rcpts.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn relay_denied_outside_relay_from() {
    let s = start(r#"relay_from = ["10.0.0.0/8"]"#, TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "250 2.1.0").await;
    c.cmd("RCPT TO:<b@elsewhere.test>", "550 5.7.1").await;
    c.cmd("DATA", "554 5.5.1").await;
    c.cmd("QUIT", "221").await;
    assert!(s.recorder.taken().is_empty(), "nothing may be submitted");
    s.stop().await;
}

#[tokio::test]
async fn require_auth_gives_530_before_auth() {
    let s = start("require_auth = true", TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "530 5.7.0").await;
    s.stop().await;
}

/// RFC 4954 §4 / RFC 3207: AUTH is offered and accepted only under TLS; after STARTTLS the
/// session starts over and AUTH PLAIN lets an outside client relay.
#[tokio::test]
async fn auth_only_after_starttls() {
    let s = start(r#"relay_from = ["10.0.0.0/8"]"#, TlsSetup::StartTls).await;
    let mut c = s.client().await;
    let ehlo = c.ehlo("client.test").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "538 5.7.11").await;
    c.cmd("STARTTLS", "220 2.0.0").await;
    c.starttls_handshake(&s.connector).await;
    c.cmd("MAIL FROM:<a@s.test>", "503 5.5.1").await; // EHLO again first
    let ehlo = c.ehlo("client.test").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235 2.7.0").await;
    c.send_message("a@s.test", &["b@elsewhere.test"], BODY)
        .await;
    let m = &s.recorder.taken()[0];
    assert_eq!(m.origin.auth_user.as_deref(), Some("alice"));
    let head = String::from_utf8_lossy(&m.body[..120]).into_owned();
    assert!(head.contains("with ESMTPSA id"), "{head}");
    s.stop().await;
}

#[tokio::test]
async fn auth_plain_and_login_failures_give_535_5_7_8() {
    let s = start(r#"relay_from = ["10.0.0.0/8"]"#, TlsSetup::Implicit).await;
    let mut c = s.tls_client().await;
    c.ehlo("client.test").await;
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await; // alice / wrong
    c.cmd("AUTH PLAIN AG1hbGxvcnkAc2VjcmV0", "535 5.7.8").await; // mallory / secret
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    c.cmd("d3Jvbmc=", "535 5.7.8").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@elsewhere.test>", "550 5.7.1").await;
    c.cmd("RSET", "250").await;
    // AUTH LOGIN success.
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    c.cmd("c2VjcmV0", "235 2.7.0").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@elsewhere.test>", "250 2.1.5").await;
    s.stop().await;
}

/// RFC 8314: an implicit-TLS listener speaks TLS from the first byte.
#[tokio::test]
async fn implicit_tls() {
    let s = start("", TlsSetup::Implicit).await;
    let mut c = s.tls_client().await;
    let ehlo = c.ehlo("client.test").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.send_message("a@s.test", &["b@r.test"], BODY).await;
    let head = String::from_utf8_lossy(&s.recorder.taken()[0].body[..120]).into_owned();
    assert!(head.contains("with ESMTPS id"), "{head}");
    s.stop().await;
}

/// A client that sends garbage instead of a TLS ClientHello loses only its own connection.
#[tokio::test]
async fn tls_garbage_closes_only_that_connection() {
    let s = start("", TlsSetup::Implicit).await;
    let mut good = s.tls_client().await;
    good.ehlo("good.test").await;

    let mut bad = Client::connect(s.addr).await;
    bad.send_raw(b"EHLO not-tls\r\n\x16\x03\x01\xff\xff garbage garbage garbage\r\n")
        .await;
    bad.expect_disconnect().await;

    good.send_message("a@s.test", &["b@r.test"], BODY).await;
    // The same on a STARTTLS listener: garbage after 220 closes that session only.
    let s2 = start("", TlsSetup::StartTls).await;
    let mut good2 = s2.client().await;
    good2.ehlo("good.test").await;
    let mut bad2 = s2.client().await;
    bad2.ehlo("bad.test").await;
    bad2.cmd("STARTTLS", "220 2.0.0").await;
    bad2.send_raw(b"\x00\x01\x02 this is not tls\r\n\r\n").await;
    bad2.expect_disconnect().await;
    good2.send_message("a@s.test", &["b@r.test"], BODY).await;
    assert_eq!(s.recorder.taken().len(), 1);
    assert_eq!(s2.recorder.taken().len(), 1);
    s.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn per_ip_session_cap_gives_421_4_7_0() {
    let s = start("max_sessions_per_ip = 2", TlsSetup::Plain).await;
    let mut first = s.client().await;
    let _second = s.client().await;
    let mut third = Client::connect(s.addr).await;
    third.expect("421 4.7.0").await;
    third.expect_closed().await;
    first.cmd("NOOP", "250").await;
    s.stop().await;
}

/// `max_sessions`: a permit is taken before accept, so a second client waits in the backlog
/// (no greeting) until the first one leaves.
#[tokio::test]
async fn max_sessions_holds_further_clients_in_the_backlog() {
    let s = start("max_sessions = 1", TlsSetup::Plain).await;
    let mut first = s.client().await;
    let mut second = Client::connect(s.addr).await;
    let early = tokio::time::timeout(Duration::from_millis(300), second.reply()).await;
    assert!(
        early.is_err(),
        "second client was served while the first held the only slot"
    );
    first.cmd("QUIT", "221").await;
    first.expect_closed().await;
    second.expect("220").await;
    second.cmd("NOOP", "250").await;
    s.stop().await;
}

#[tokio::test]
async fn command_timeout_gives_421_4_4_2() {
    let s = start(r#"command_timeout = "200ms""#, TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn data_timeout_gives_421_4_4_2_and_nothing_is_submitted() {
    let s = start(r#"data_timeout = "200ms""#, TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"partial message\r\n").await;
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    assert!(s.recorder.taken().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn client_closing_mid_data_or_mid_bdat_hands_nothing_on() {
    let s = start("", TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.send_message("a@s.test", &["b@r.test"], "first\r\n").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"half a message\r\n").await;
    drop(c);

    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.send_raw(b"BDAT 100 LAST\r\nonly some").await;
    drop(c);
    let recorder = s.recorder.clone();
    s.stop().await; // returns once both sessions have ended
    let subs = recorder.taken();
    assert_eq!(subs.len(), 1, "only the complete message is handed on");
    assert_eq!(after_received(&subs[0].body), b"first\r\n");
}

#[tokio::test]
async fn too_many_errors_gives_421_4_7_0() {
    let s = start("", TlsSetup::Plain).await; // max_errors = 5
    let mut c = s.client().await;
    for _ in 0..5 {
        c.cmd("BOGUS", "500 5.5.1").await;
    }
    c.cmd("BOGUS", "421 4.7.0").await;
    c.expect_closed().await;
    s.stop().await;
}

/// Shutdown: idle sessions get 421 4.3.2 at once; a session in DATA finishes its message,
/// gets its 250 and then 421; `run` returns only after both ended; no new connections.
#[tokio::test]
async fn shutdown_semantics() {
    let s = start("", TlsSetup::Plain).await;
    let mut idle = s.client().await;
    idle.ehlo("idle.test").await;
    let mut busy = s.client().await;
    busy.ehlo("busy.test").await;
    busy.cmd("MAIL FROM:<a@s.test>", "250").await;
    busy.cmd("RCPT TO:<b@r.test>", "250").await;
    busy.cmd("DATA", "354").await;
    busy.send_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await;

    s.shutdown.cancel();
    idle.expect("421 4.3.2").await;
    idle.expect_closed().await;
    assert!(
        !s.run.is_finished(),
        "run() returned while a message was in DATA"
    );

    busy.send_raw(b"second half\r\n.\r\n").await;
    busy.expect("250 2.0.0 Ok: queued as Q1").await;
    busy.expect("421 4.3.2").await;
    busy.expect_closed().await;

    let addr = s.addr;
    let recorder = s.recorder.clone();
    let metrics = s.metrics.clone();
    tokio::time::timeout(Duration::from_secs(10), s.run)
        .await
        .expect("run() returns once all sessions ended")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still accepting after shutdown"
    );
    let subs = recorder.taken();
    assert_eq!(subs.len(), 1);
    assert_eq!(
        after_received(&subs[0].body),
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
    );
    assert!(
        metrics
            .render()
            .contains(r#"gannet_smtp_sessions{listener="test"} 0"#)
    );
}

#[tokio::test]
async fn rejection_from_the_acceptor_is_the_reply() {
    let s = start("", TlsSetup::Plain).await;
    *s.recorder.reject.lock().unwrap() =
        Some(Rejection::new(451, "4.3.0", "spool is full, try later"));
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<a@s.test>", "250").await;
    c.cmd("RCPT TO:<b@r.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"x\r\n.\r\n").await;
    assert_eq!(c.expect("451").await, "451 4.3.0 spool is full, try later");
    s.stop().await;
}

#[tokio::test]
async fn eight_bit_body_and_smtputf8_address_accepted_intact() {
    let s = start("", TlsSetup::Plain).await;
    let mut c = s.client().await;
    c.ehlo("client.test").await;
    c.cmd(
        "MAIL FROM:<jörg@bücher.test> SMTPUTF8 BODY=8BITMIME",
        "250 2.1.0",
    )
    .await;
    c.cmd("RCPT TO:<用户@例子.广告>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    let mut body = "Subject: Grüße\r\n\r\n€uro ".as_bytes().to_vec();
    body.extend_from_slice(b"\xff\xfe raw 8-bit\r\n.\r\n");
    c.send_raw(&body).await;
    c.expect("250 2.0.0").await;
    let m = &s.recorder.taken()[0];
    assert_eq!(m.envelope.mail_from, "jörg@bücher.test");
    assert_eq!(m.envelope.rcpts, ["用户@例子.广告"]);
    assert_eq!(after_received(&m.body), &body[..body.len() - 3]);
    let head = String::from_utf8_lossy(&m.body[..120]).into_owned();
    assert!(head.contains("with UTF8SMTP id"), "{head}");
    s.stop().await;
}

/// Writes one byte every 50 ms on `stream` (a client trickling a message) until the server
/// replies; returns what it said (empty if it closed without a word). Gives up after 20 s.
async fn trickle_until_reply(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 512];
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < give_up {
        if stream.write_all(b"x").await.is_err() {
            return String::new();
        }
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(n)) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Ok(Err(_)) => return String::new(),
            Err(_) => {}
        }
    }
    "(still open after 20 s of trickling)".into()
}

/// Reads one reply (up to CRLF) from a raw stream.
async fn read_line(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut b)).await {
            Ok(Ok(1)) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 15 item 10: SIGTERM ends every session within a bounded time. A client that sent
/// BDAT before MAIL and trickles the chunk is in the command state (421 at once); a client
/// trickling a DATA message gets `shutdown_grace` to finish it, then 421 4.3.2; `run` returns
/// and nothing incomplete was handed on.
#[tokio::test]
async fn shutdown_ends_sessions_that_trickle_bytes() {
    use tokio::io::AsyncWriteExt;
    let s = start(r#"shutdown_grace = "300ms""#, TlsSetup::Plain).await;

    let mut bdat = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    read_line(&mut bdat).await;
    bdat.write_all(b"EHLO t\r\nBDAT 100000 LAST\r\nsome bytes")
        .await
        .unwrap();
    let mut data = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    read_line(&mut data).await;
    data.write_all(b"HELO t\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        read_line(&mut data).await;
    }
    // Both sessions are known to be past the commands (the EHLO reply is read below).
    loop {
        let line = read_line(&mut bdat).await;
        assert!(line.starts_with("250"), "{line:?}");
        if line.starts_with("250 ") {
            break;
        }
    }

    s.shutdown.cancel();
    let (b, d) = tokio::join!(
        trickle_until_reply(&mut bdat),
        trickle_until_reply(&mut data)
    );
    assert!(b.contains("421 4.3.2"), "BDAT-before-MAIL session: {b:?}");
    assert!(d.contains("421 4.3.2"), "trickling DATA session: {d:?}");
    let recorder = s.recorder.clone();
    tokio::time::timeout(Duration::from_secs(10), s.run)
        .await
        .expect("run() returns once the grace period ended")
        .unwrap();
    assert!(
        recorder.taken().is_empty(),
        "an incomplete message was handed on"
    );
}
