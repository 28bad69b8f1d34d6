//! The suppression list at SMTP intake (issue 17 item 5, "RCPT refused with 550 5.7.1 or
//! accepted-and-dropped, per config"): `[suppression] smtp_action = "reject"` refuses a
//! suppressed recipient at `RCPT TO`, `"drop"` accepts it and never sends; both are recorded as
//! `suppressed` events. An SMTP user bound to a tenant (`[[smtp_user]] tenant`) also has that
//! tenant's entries refused at `RCPT TO`. Clients: Python smtplib, swaks and a raw socket.
//!
//! Sink addresses: 127.0.0.235–.236, 127.0.0.227.

use crate::common::gannet::http;
use crate::common::tools::{PySend, python_send, swaks};
use crate::common::*;

/// Adds a manual global suppression of `address` through the API.
async fn suppress(g: &Gannet, address: &str) {
    let body = serde_json::json!({ "address": address }).to_string();
    let (status, text) = http(g.http_addr(), "POST", "/api/v1/suppressions", Some(&body))
        .await
        .expect("POST /api/v1/suppressions");
    assert_eq!(status, 201, "{text}");
}

/// Send-log events of `rcpt`, waiting until `done` holds.
async fn events_until(
    g: &Gannet,
    rcpt: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/events?recipient={}", rcpt.replace('@', "%40"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http(g.http_addr(), "GET", &path, None)
            .await
            .expect("GET /api/v1/events");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events of {rcpt} never got there: {events:#?}\n{}",
            g.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn msg(subject: &str) -> Vec<u8> {
    message(
        &[("From", "news@brand.test"), ("Subject", subject)],
        "hello",
    )
}

/// `smtp_action = "reject"` (the default): smtplib's RCPT of a suppressed address gets
/// 550 5.7.1 while the other recipient is accepted and delivered alone; swaks sending only to
/// the suppressed address is refused at RCPT and never reaches DATA; each refusal is a
/// `suppressed` event (stage `smtp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_recipient_is_refused_at_rcpt() {
    let w = World::start(
        &["127.0.0.235"],
        Zone::new().mail_domain("shop.rcpt.test", "127.0.0.235"),
        |c| c,
    )
    .await;
    let g = &w.gannet;
    let gone = "gone@shop.rcpt.test";
    let ok = "ok@shop.rcpt.test";
    suppress(g, "Gone@Shop.rcpt.test").await;

    let r = python_send(
        g.smtp_addr(),
        &PySend::new("news@brand.test", &[gone, ok], &msg("two")),
    )
    .await;
    assert!(
        r.ok,
        "the other recipient is accepted: {:?}\n{}",
        r.error, r.output
    );
    let (code, text) = r
        .refused
        .get(gone)
        .cloned()
        .unwrap_or_else(|| panic!("{gone} not refused at RCPT: {:?}\n{}", r.refused, r.output));
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1") && text.contains("suppression list"),
        "{text}"
    );
    let got = w.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, [ok], "delivered to the other recipient only");

    let out = swaks(
        g.smtp_addr(),
        &["--from", "news@brand.test", "--to", gone, "--body", "hi"],
    )
    .await;
    assert!(!out.success(), "swaks must fail: {out}");
    let all = out.all();
    assert!(all.contains("<** 550 5.7.1"), "refused at RCPT: {all}");
    assert!(!all.contains("354"), "never reached DATA: {all}");

    let events = events_until(g, gone, |es| {
        es.iter()
            .filter(|e| e["type"] == "suppressed" && e["stage"] == "smtp")
            .count()
            >= 2
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| e["type"] != "delivered" && e["type"] != "received"),
        "{events:#?}"
    );
    // Nothing else arrived at the sink.
    assert_eq!(w.sinks[0].messages().len(), 1);
}

/// `smtp_action = "drop"`: swaks to a suppressed and a clean address is accepted (250 at RCPT
/// for both) and delivered to the clean one only; smtplib sending only to the suppressed
/// address gets `250 ... queued as S...` and nothing is sent; the `suppressed` event carries
/// that id. Checked against a later message that is delivered (so the sink had its chance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_accepts_a_suppressed_recipient_and_never_sends_to_it() {
    let w = World::start(
        &["127.0.0.236"],
        Zone::new().mail_domain("shop.drop.test", "127.0.0.236"),
        |c| c.extra("[suppression]\nsmtp_action = \"drop\"\n"),
    )
    .await;
    let g = &w.gannet;
    let gone = "gone@shop.drop.test";
    let ok = "ok@shop.drop.test";
    suppress(g, gone).await;

    let out = swaks(
        g.smtp_addr(),
        &[
            "--from",
            "news@brand.test",
            "--to",
            &format!("{gone},{ok}"),
            "--body",
            "both",
        ],
    )
    .await;
    out.assert_success();
    assert!(!out.all().contains("<** "), "nothing refused: {out}");
    let got = w.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, [ok], "the suppressed recipient is left out");

    let r = python_send(
        g.smtp_addr(),
        &PySend::new("news@brand.test", &[gone], &msg("only gone")),
    )
    .await;
    r.assert_ok();
    let id = r.queue_id().expect("queued as ID");
    assert!(id.starts_with('S'), "{}", r.data_reply);
    let events = events_until(g, gone, |es| {
        es.iter()
            .filter(|e| e["type"] == "suppressed" && e["stage"] == "smtp")
            .count()
            >= 2
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "suppressed" && e["queue_id"] == id.as_str()),
        "{events:#?}"
    );
    // A later message is delivered: the dropped one never was.
    python_send(
        g.smtp_addr(),
        &PySend::new("news@brand.test", &[ok], &msg("later")),
    )
    .await
    .assert_ok();
    w.sinks[0].wait_for(2, WAIT).await;
    let to_gone = w.sinks[0]
        .messages()
        .iter()
        .filter(|t| t.rcpts.iter().any(|r| r == gone))
        .count();
    assert_eq!(to_gone, 0);
    assert_eq!(w.sinks[0].messages().len(), 2);
}

/// Tenant-scoped entries at RCPT: an SMTP user with `tenant = "acme"` (AUTH under STARTTLS)
/// gets 550 5.7.1 at `RCPT TO` for an address suppressed for tenant acme only, while another
/// recipient is accepted and delivered (with the user's tenant); a client without a tenant
/// (relaying from loopback) is not refused at RCPT for that address, and an address suppressed
/// for another tenant is not refused for the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_suppression_is_refused_at_rcpt_for_that_tenants_smtp_user() {
    let hash = crate::common::gannet::hash_password("tenant-pass").await;
    let w = World::start(
        &["127.0.0.227"],
        Zone::new().mail_domain("shop.tenant.test", "127.0.0.227"),
        |c| {
            c.listener_option("tls_cert = \"${CERT}\"")
                .listener_option("tls_key = \"${KEY}\"")
                .extra(&format!(
                    "[[smtp_user]]\nname = \"crm\"\npassword_hash = \"{hash}\"\ntenant = \"acme\"\n"
                ))
        },
    )
    .await;
    let g = &w.gannet;
    let gone = "gone@shop.tenant.test";
    let other = "other@shop.tenant.test";
    let ok = "ok@shop.tenant.test";
    for (address, tenant) in [(gone, "acme"), (other, "zeta")] {
        let body = serde_json::json!({ "address": address, "tenant": tenant }).to_string();
        let (status, text) = http(g.http_addr(), "POST", "/api/v1/suppressions", Some(&body))
            .await
            .expect("POST /api/v1/suppressions");
        assert_eq!(status, 201, "{text}");
    }

    // Without a tenant at RCPT the acme entry cannot apply yet.
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("app.test").await;
    c.cmd("MAIL FROM:<news@brand.test>", "250").await;
    c.cmd(&format!("RCPT TO:<{gone}>"), "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("QUIT", "221").await;

    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("app.test").await;
    c.starttls().await;
    c.cmd("EHLO app.test", "250").await;
    let plain = crate::common::tools::base64_lite::encode(b"\0crm\0tenant-pass");
    c.cmd(&format!("AUTH PLAIN {plain}"), "235").await;
    c.cmd("MAIL FROM:<news@brand.test>", "250").await;
    let r = c.cmd(&format!("RCPT TO:<{gone}>"), "550 5.7.1").await;
    assert!(r.text().contains("suppression list"), "{}", r.text());
    c.cmd(&format!("RCPT TO:<{other}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{ok}>"), "250").await;
    c.data(&msg("tenant"), "250").await;
    c.cmd("QUIT", "221").await;

    let got = w.sinks[0].wait_for(1, WAIT).await;
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, [ok, other], "the refused recipient is not sent to");
    let events = events_until(g, gone, |es| {
        es.iter()
            .any(|e| e["type"] == "suppressed" && e["stage"] == "smtp")
    })
    .await;
    let refused = events
        .iter()
        .find(|e| e["type"] == "suppressed")
        .expect("suppressed");
    assert_eq!(refused["tenant"], "acme", "{refused}");
    assert_eq!(refused["scope"], "acme", "{refused}");
}
