//! Delivery faults of issue 15 (items 3, 4 and 7): each test is named after the fault it guards
//! against and failed on the main branch before its fix.
//!
//! - item 7: a STARTTLS that fails falls back to plaintext at the opportunistic level, and
//!   defers where `[delivery] require_tls` demands encryption;

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
