//! Encryption at rest of the spool and erasure down to the bytes (issue 18 items 3 and 4):
//! after `gannet gdpr erase` no file under the data directory holds the person's address in
//! clear, base64 or quoted-printable, while other recipients' mail is still delivered and a
//! restart still recovers the queue; a data directory copied without the key file shows
//! nothing personal and cannot be started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::gannet::{ConfigDir, http_with_headers};
use crate::common::*;

/// The forms an address takes in mail and logs: clear, base64 (of the address alone, as a
/// MIME or token encoder writes it) and quoted-printable (`@` as `=40`). Lower-cased; the
/// search is case-insensitive.
fn forms(address: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(address);
    vec![
        address.to_ascii_lowercase().into_bytes(),
        address
            .replace('@', "=40")
            .to_ascii_lowercase()
            .into_bytes(),
        // The base64 text up to its last whole 4-character group (padding varies with what
        // follows the address in a longer encoded run).
        b64[..b64.len() / 4 * 4]
            .trim_end_matches('=')
            .to_ascii_lowercase()
            .into_bytes(),
    ]
}

/// Every file under `dir`, walked entirely (sled, SQLite and its WAL, segments, journal, ...).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// (file, needle) for every file under `dir` that holds one of `needles` (case-insensitive).
fn hits(dir: &Path, needles: &[Vec<u8>]) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    walk(dir, &mut files);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let lower = bytes.to_ascii_lowercase();
        for n in needles {
            if lower.windows(n.len()).any(|w| w == n.as_slice()) {
                out.push((f.clone(), String::from_utf8_lossy(n).into_owned()));
            }
        }
    }
    out
}

/// One HTTP injection of a message to `to` (campaign `spoolcrypt`), with an idempotency key.
async fn inject(g: &Gannet, to: &str, text: &str) -> Value {
    let body = json!({
        "from": {"email": "news@dest.test"},
        "subject": "Hello {{ first_name }}",
        "text": text,
        "campaign": "spoolcrypt",
        "recipients": [{"email": to, "substitutions": {"first_name": "Erin"}}],
    })
    .to_string();
    let (status, answer) =
        // With an Idempotency-Key: its answer (which lists the recipient) is kept 24 h.
        http_with_headers(g.http_addr(), "POST", "/api/v1/messages", Some(&body), &[("Idempotency-Key", &format!("k-{to}"))])
            .await
            .unwrap_or_else(|e| panic!("POST /api/v1/messages: {e}\n{}", g.log()));
    let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["results"][0]["status"], "queued", "{v:#}");
    v
}

/// Polls `GET /api/v1/events?...` until `n` events of `type` exist for `rcpt`.
async fn wait_type(g: &Gannet, rcpt: &str, kind: &str, n: usize) {
    let path = format!(
        "/api/v1/events?recipient={}&type={kind}",
        rcpt.replace('@', "%40")
    );
    for _ in 0..600 {
        let (status, body) = g.http_get(&path).await;
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if v["events"].as_array().map_or(0, Vec::len) >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {n} {kind} events for {rcpt}\n{}", g.log());
}

/// Issue 18, "after an erasure": mail to Erin was delivered (SMTP), is queued behind a 4xx
/// (SMTP, shared with another recipient, and HTTP), bounced (a DSN, and a suppression entry
/// from the hard bounce, plus a manual one over the API); a webhook whose receiver is down
/// keeps every event about her in the send log's journal (which shipping reads). After `gannet
/// gdpr erase`, every file under the data directory is searched for her address in clear,
/// base64 and quoted-printable: none holds it (the spool's segments are sealed and the
/// records only she needed are shredded; the owed-DSN replies are sealed; the send log is
/// shredded; the suppression list keys on keyed hashes and its sealed copies' keys are
/// zeroed; the journal's sealed lines about her, which the webhook has not taken, are
/// overwritten). The other recipient is still delivered after a kill -9 and restart, which
/// recovers the queue from the sealed spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erasure_no_file_of_the_data_directory_holds_the_address() {
    // A webhook to a port nobody listens on: its events stay in the journal.
    let down = free_port();
    let hook = format!(
        "[[webhook]]\nname = \"down\"\nurl = \"http://127.0.0.1:{down}/hook\"\n\
         secret = \"whsec_0123456789abcdef\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n"
    );
    let mut w = World::start(
        &["127.0.0.197"],
        Zone::new().mail_domain("dest.test", "127.0.0.197"),
        |c| c.retry_schedule(&["1h"]).extra(&hook),
    )
    .await;
    let erin = "Erin.Spool@dest.test";
    let other = "other.keep@dest.test";
    let sink = &w.sinks[0];
    let msg = |subject: &str| message(&[("Subject", subject)], &format!("Dear {erin},\r\nhello"));

    // Delivered.
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send("news@dest.test", &[erin], &msg("delivered")).await;
    wait_type(&w.gannet, erin, "delivered", 1).await;

    // Queued behind a 4xx: once over SMTP with another recipient, once over HTTP.
    sink.add_rule(
        Rule::new(Stage::Rcpt, "451 4.2.0 <erin.spool@dest.test> busy")
            .matching(erin)
            .times(2),
    );
    sink.reject_rcpt(other, "451 4.2.0 mailbox busy, try later");
    c.send("news@dest.test", &[erin, other], &msg("queued smtp"))
        .await;
    inject(
        &w.gannet,
        erin,
        "Dear {{ first_name }} (erin.spool@dest.test), queued",
    )
    .await;
    wait_type(&w.gannet, erin, "deferred", 2).await;

    // Bounced: a DSN to the sender, and a suppression entry (hard bounce).
    sink.add_rule(
        Rule::new(
            Stage::Rcpt,
            "550 5.1.1 <erin.spool@dest.test>: no such user",
        )
        .matching(erin),
    );
    c.send("news@dest.test", &[erin], &msg("bounced")).await;
    c.quit().await;
    wait_type(&w.gannet, erin, "bounced", 1).await;
    // The DSN to the sender, which names her, was delivered.
    wait_type(&w.gannet, "news@dest.test", "delivered", 1).await;
    // A manual entry too, scoped to a tenant and stream, then removed and added again (old
    // versions of removed rows stay in SQLite's WAL until overwritten).
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/suppressions".to_string(),
            Some(json!({"address": erin, "tenant": "acme", "stream": "list:news"}).to_string()),
        ),
        (
            "DELETE",
            format!(
                "/api/v1/suppressions/{}?tenant=acme&stream=list:news",
                erin.replace('@', "%40")
            ),
            None,
        ),
        (
            "POST",
            "/api/v1/suppressions".to_string(),
            Some(json!({"address": erin, "tenant": "acme"}).to_string()),
        ),
    ] {
        let (status, answer) =
            http_with_headers(w.gannet.http_addr(), method, &path, body.as_deref(), &[])
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            status == 200 || status == 201,
            "{method} {path}: {status} {answer}"
        );
    }
    let (_, entries) = w.gannet.http_get("/api/v1/suppressions?prefix=erin").await;
    let v: Value = serde_json::from_str(&entries).unwrap_or_default();
    assert_eq!(v["entries"].as_array().map_or(0, Vec::len), 2, "{entries}");
    assert!(entries.to_lowercase().contains("erin.spool"), "{entries}");
    // The send log's journal holds her events for the webhook (down): its cursor is there.
    let journal = w.gannet.dir().join("spool").join("sendlog.journal");
    assert!(
        journal.join("cursors").join("down").exists(),
        "{}",
        w.gannet.log()
    );

    let out = w.gannet.cli(&["gdpr", "erase", erin]).await;
    out.assert_success();
    assert!(out.stdout.contains("2 queued recipients dropped"), "{out}");
    // The delivered, the HTTP-injected and the bounced message were hers alone; the DSN to
    // the sender names her.
    assert!(out.stdout.contains("4 spool records shredded"), "{out}");
    assert!(out.stdout.contains("2 suppression entries"), "{out}");
    assert!(!out.stdout.contains(" 0 outbox events"), "{out}");
    assert!(out.stdout.contains("1 idempotent answers"), "{out}");

    // kill -9, so nothing is tidied at shutdown, then look at every byte.
    w.gannet.kill9().await;
    let data = w.gannet.dir().join("spool");
    let found = hits(&data, &forms(erin));
    assert!(
        found.is_empty(),
        "the erased address is still in {found:#?}"
    );

    // A restart recovers the queue: the other recipient is still queued, then delivered.
    w.gannet.restart().await;
    let q = w.gannet.queue_status().await;
    assert_eq!(q.queued_recipients, 1, "{q:?}");
    sink.clear_rules();
    let out = w.gannet.cli(&["queue", "flush"]).await;
    out.assert_success();
    wait_type(&w.gannet, other, "delivered", 1).await;
    let delivered: Vec<_> = sink
        .transactions()
        .into_iter()
        .filter(|t| t.accepted && t.rcpts.iter().any(|r| r.eq_ignore_ascii_case(other)))
        .collect();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].text().contains("queued smtp"));
    // And nothing of Erin came back with the restart.
    let found = hits(&data, &forms(erin));
    assert!(found.is_empty(), "after the restart: {found:#?}");
}

/// Issue 18, "a data directory copied without the key file": with mail delivered, queued
/// behind a 4xx and injected over HTTP, a copy of the data directory (taken after kill -9)
/// holds no recipient, sender, subject or body text in any form, and a Gannet given that copy
/// without the key file refuses to start (it never makes a new key for existing data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_copied_without_the_key_shows_nothing_personal() {
    let mut w = World::start(
        &["127.0.0.198"],
        Zone::new().mail_domain("dest.test", "127.0.0.198"),
        |c| c.retry_schedule(&["1h"]),
    )
    .await;
    let sink = &w.sinks[0];
    sink.reject_rcpt("waiting.person@dest.test", "451 4.2.0 busy");
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    let body = message(
        &[("Subject", "Private subject line")],
        "Confidential body words",
    );
    c.send(
        "sender.person@dest.test",
        &["delivered.person@dest.test", "waiting.person@dest.test"],
        &body,
    )
    .await;
    c.quit().await;
    inject(
        &w.gannet,
        "injected.person@dest.test",
        "Confidential body words",
    )
    .await;
    wait_type(&w.gannet, "delivered.person@dest.test", "delivered", 1).await;
    wait_type(&w.gannet, "injected.person@dest.test", "delivered", 1).await;
    wait_type(&w.gannet, "waiting.person@dest.test", "deferred", 1).await;
    w.gannet.kill9().await;

    let copy = ConfigDir::write(&TestConfig::new(&w.dns, w.port).retry_schedule(&["1h"]));
    let copied = copy.dir().join("spool");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(w.gannet.dir().join("spool"))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!copy.dir().join("gannet.key").exists());

    let mut needles = Vec::new();
    for a in [
        "sender.person@dest.test",
        "delivered.person@dest.test",
        "waiting.person@dest.test",
        "injected.person@dest.test",
        "news@dest.test",
    ] {
        needles.extend(forms(a));
    }
    needles.push(b"private subject line".to_vec());
    needles.push(b"confidential body words".to_vec());
    let found = hits(&copied, &needles);
    assert!(found.is_empty(), "readable without the key: {found:#?}");

    let out = copy.run(&["serve"], Duration::from_secs(60)).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("gannet.key") && out.stderr.contains("restore"),
        "{out}"
    );
    assert!(
        !copy.dir().join("gannet.key").exists(),
        "no new key was made"
    );
}
