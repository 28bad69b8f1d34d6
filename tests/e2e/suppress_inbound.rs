//! The bounces listener feeding the suppression list (issue 17 items 3 and 5, end to end): a
//! bounce mail carrying a valid VERP token of a delivered message suppresses that recipient,
//! and the next injection to it is refused over SMTP (550 5.7.1 at RCPT) and HTTP; a forged
//! token or a report failing DMARC creates no entry and is logged as `inbound_rejected`.
//!
//! Sink addresses: 127.0.0.238.

use serde_json::Value;

use crate::common::gannet::http;
use crate::common::tools::swaks;
use crate::common::*;

/// A Postfix "user unknown" DSN (fixture 02, a hard `bad-mailbox`) about `rcpt`.
fn dsn_about(rcpt: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces/02-postfix-user-unknown.eml");
    std::fs::read_to_string(path)
        .expect("fixture")
        .replace("rcpt02@example.net", rcpt)
}

async fn logged(g: &Gannet, kind: &str) -> Vec<Value> {
    let (status, body) = g
        .http_get(&format!("/api/v1/events?type={kind}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until the send log holds more than `n` events of `kind`; returns them.
async fn wait_logged(g: &Gannet, kind: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = logged(g, kind).await;
        if got.len() > n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new {kind} event; have {got:#?}\n{}",
            g.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn entries(g: &Gannet, address: &str) -> (u16, Value) {
    let path = format!("/api/v1/suppressions/{}", address.replace('@', "%40"));
    let (status, text) = http(g.http_addr(), "GET", &path, None).await.expect("GET");
    (status, serde_json::from_str(&text).unwrap_or_default())
}

async fn inject(g: &Gannet, to: &str) -> Value {
    let body = serde_json::json!({
        "from": {"email": "s@origin.sup5.test"},
        "subject": "again",
        "text": "hello",
        "recipients": [{"email": to}],
    })
    .to_string();
    let (status, text) = http(g.http_addr(), "POST", "/api/v1/messages", Some(&body))
        .await
        .expect("POST /api/v1/messages");
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["results"][0].clone()
}

async fn deliver_inbound(inbound: std::net::SocketAddr, helo: &str, to: &str, mail: &str) {
    let mut c = SmtpClient::connect(inbound).await;
    c.hello(helo).await;
    c.send("", &[to], mail.as_bytes()).await;
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verp_bounce_suppresses_its_recipient_and_a_forged_or_unauthenticated_one_nothing() {
    let w = World::start(
        &["127.0.0.238"],
        Zone::new()
            .mail_domain("dest.sup5.test", "127.0.0.238")
            .mail_domain("origin.sup5.test", "127.0.0.238")
            .txt("_dmarc.evil.test", "v=DMARC1; p=reject")
            .txt("evil.test", "v=spf1 -all"),
        |c| {
            c.extra(
                "[bounce]\ndomain = \"bounces.sup5.test\"\nsecret = \"verp sup5\"\n\n\
                 [[listener]]\nname = \"bounces\"\naddress = \"127.0.0.1:${PORT_BOUNCES}\"\nrole = \"bounces\"\n",
            )
        },
    )
    .await;
    let g = &w.gannet;
    let (a, b) = ("a@dest.sup5.test", "b@dest.sup5.test");
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.sup5.test",
        &[a, b],
        b"Subject: offers\r\nFrom: s@origin.sup5.test\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let sent = w.sinks[0].wait_for(2, WAIT).await;
    let verp_of = |rcpt: &str| {
        sent.iter()
            .find(|t| t.rcpts.iter().any(|r| r == rcpt))
            .map(|t| t.mail_from.clone())
            .unwrap_or_else(|| panic!("no delivery to {rcpt}"))
    };
    let (verp_a, verp_b) = (verp_of(a), verp_of(b));
    assert!(verp_a.ends_with("@bounces.sup5.test") && verp_a != verp_b);
    let inbound = *g.listener_addrs().last().expect("bounces listener");

    // A forged token (one character changed) for b: rejected, nothing suppressed.
    let forged = {
        let (local, domain) = verp_b.split_once('@').expect("address");
        let last = &local[local.len() - 1..];
        let swap = if last == "a" { "b" } else { "a" };
        format!("{}{swap}@{domain}", &local[..local.len() - 1])
    };
    deliver_inbound(inbound, "mx.dest.sup5.test", &forged, &dsn_about(b)).await;
    let rej = wait_logged(g, "inbound_rejected", 0).await;
    assert_eq!(rej.last().expect("one")["reason"], "forged-verp");

    // b's real token, but From a domain whose DMARC fails: rejected, nothing suppressed.
    let evil = dsn_about(b).replacen(
        "From: MAILER-DAEMON@mx.example.net",
        "From: MAILER-DAEMON@evil.test",
        1,
    );
    deliver_inbound(inbound, "mx.evil.test", &verp_b, &evil).await;
    let rej = wait_logged(g, "inbound_rejected", rej.len()).await;
    assert_eq!(rej.last().expect("one")["reason"], "dmarc-fail");

    // a's real token: a bounce_report of that send, and a hard-bounce entry from it.
    deliver_inbound(inbound, "mx.dest.sup5.test", &verp_a, &dsn_about(a)).await;
    let reports = wait_logged(g, "bounce_report", 0).await;
    let report = reports.last().expect("one");
    assert_eq!(report["recipient"], a, "{report}");
    assert_eq!(report["category"], "bad-mailbox", "{report}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let entry = loop {
        let (status, v) = entries(g, a).await;
        if status == 200 {
            break v["entries"][0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{a} never suppressed\n{}",
            g.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(entry["reason"], "hard-bounce", "{entry}");
    assert_eq!(entry["tenant"], "*", "{entry}");
    assert_eq!(entry["source"], report["id"], "the entry names the report");

    // The next injection to a: refused at RCPT over SMTP, rejected over HTTP.
    let out = swaks(
        g.smtp_addr(),
        &["--from", "s@origin.sup5.test", "--to", a, "--body", "again"],
    )
    .await;
    assert!(out.all().contains("<** 550 5.7.1"), "{out}");
    let r = inject(g, a).await;
    assert_eq!(r["status"], "rejected", "{r}");

    // b has no entry and is still mailed; only one report was accepted.
    assert_eq!(entries(g, b).await.0, 404);
    let r = inject(g, b).await;
    assert_eq!(r["status"], "queued", "{r}");
    assert_eq!(logged(g, "bounce_report").await.len(), 1);
}
