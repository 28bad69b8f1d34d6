//! DKIM signing and sending-domain checks through the real binary (issue 3): what a receiver
//! sees and what an operator runs.
//!
//! - Mail relayed through Gannet's SMTP listener carries RSA-2048 and Ed25519 signatures that
//!   dkimpy verifies with keys fetched from the loopback DNS (and OpenDKIM verifies too), for the
//!   awkward message shapes: MIME, 8-bit, over-long lines, leading dots, trailing blank lines,
//!   no final CRLF, submitted with DATA and with BDAT.
//! - Key rotation by `active_from` / `active_until` without a restart.
//! - `gannet check-domain` (CLI, `--json`, and `GET /api/v1/domains/{d}/check`) names exactly the
//!   failing item and the record to publish.
//! - Bad keys stop `gannet serve` at once, naming `dkim[i]` and the file.
//! - `gannet dkim keygen` writes a 0600 key whose printed record verifies Gannet's signatures.
//! - `[dkim_policy]` `reject_unsigned` and `fallback_domain`; `gannet_domain_check_ok` metrics.
//! - Gannet's own DSNs under `reject_unsigned`: signed with the host name's key, else exempt.
//!
//! Keys are the fixtures in `tests/fixtures/dkim/`; their DNS records are derived from the PEM
//! files with `openssl`, never with Gannet. Signatures are checked with dkimpy
//! (`scripts/dkim_verify.py`, keys from the test DNS) and `opendkim -t`. Sink IPs
//! 127.0.0.101–.110; pool sources whose reverse DNS is checked are in 192.0.2.0/24 (see `OUT1`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use tokio::process::Command;

use crate::common::gannet::{ConfigDir, GANNET_BIN};
use crate::common::tools::{python_script, run};
use crate::common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");

pub(crate) fn fixture_path(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let p = fixture_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read fixture {}: {e}", p.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    Ed25519,
}

/// `v=DKIM1; k=...; p=...` for the public half of the private key in `pem`, computed by
/// `openssl pkey -pubout` (independent of Gannet): SubjectPublicKeyInfo for RSA, the raw 32
/// bytes for Ed25519 (RFC 8463).
pub(crate) async fn public_record(pem: &Path, kind: KeyType) -> String {
    let mut c = std::process::Command::new("openssl");
    c.arg("pkey")
        .arg("-in")
        .arg(pem)
        .arg("-pubout")
        .arg("-outform")
        .arg("DER");
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("openssl task")
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl pkey -pubout {}: {}",
        pem.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let der = out.stdout;
    match kind {
        KeyType::Rsa => format!("v=DKIM1; k=rsa; p={}", B64.encode(&der)),
        KeyType::Ed25519 => {
            assert_eq!(der.len(), 44, "Ed25519 SubjectPublicKeyInfo is 44 bytes");
            format!("v=DKIM1; k=ed25519; p={}", B64.encode(&der[12..]))
        }
    }
}

/// The tags of a DKIM-Signature value (whitespace removed from values).
fn sig_tags(value: &str) -> BTreeMap<String, String> {
    value
        .split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

/// The tags of every DKIM-Signature of a delivered message, in header order.
fn sig_list(t: &Transaction) -> Vec<BTreeMap<String, String>> {
    t.headers("dkim-signature")
        .iter()
        .map(|v| sig_tags(v))
        .collect()
}

/// `(d, s, a, c)` tags of a signature.
type SigId = (String, String, String, String);

fn sig_id(d: &str, s: &str, a: &str, c: &str) -> SigId {
    (d.into(), s.into(), a.into(), c.into())
}

/// One signature as dkimpy judged it.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) d: String,
    pub(crate) s: String,
    pub(crate) a: String,
    pub(crate) c: String,
    pub(crate) ok: bool,
    pub(crate) error: Option<String>,
}

/// Verifies every DKIM-Signature of each message with dkimpy, which fetches the keys from `dns`
/// (tests/e2e/scripts/dkim_verify.py). Returns, per message, its signatures in header order.
pub(crate) async fn dkimpy_verify(
    dns: &TestDns,
    messages: &[(String, Vec<u8>)],
) -> Vec<Vec<Checked>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<String> = messages
        .iter()
        .enumerate()
        .map(|(i, (_, data))| {
            let p = dir.path().join(format!("{i}.eml"));
            std::fs::write(&p, data).expect("write message file");
            p.display().to_string()
        })
        .collect();
    let input = serde_json::json!({"dns": dns.addr.to_string(), "files": files});
    let out = python_script("dkim_verify.py", &[], Some(input.to_string().as_bytes())).await;
    let v: Value = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("dkim_verify.py printed no JSON:\n{out}"));
    let s = |x: &Value, k: &str| x.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    v["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| {
            f["signatures"]
                .as_array()
                .expect("signatures array")
                .iter()
                .map(|sig| Checked {
                    d: s(sig, "d"),
                    s: s(sig, "s"),
                    a: s(sig, "a"),
                    c: s(sig, "c"),
                    ok: sig["ok"].as_bool().unwrap_or(false),
                    error: sig["error"].as_str().map(str::to_string),
                })
                .collect()
        })
        .collect()
}

/// Panics unless every message carries exactly the signatures `expected` (`(d, s, a, c)`, any
/// order) and dkimpy verifies all of them.
async fn assert_verified(
    dns: &TestDns,
    messages: &[(String, Vec<u8>)],
    expected: &dyn Fn(&str) -> Vec<SigId>,
) {
    let results = dkimpy_verify(dns, messages).await;
    let mut problems = Vec::new();
    for ((label, data), sigs) in messages.iter().zip(&results) {
        let got: BTreeSet<SigId> = sigs
            .iter()
            .map(|c| (c.d.clone(), c.s.clone(), c.a.clone(), c.c.clone()))
            .collect();
        let want: BTreeSet<_> = expected(label).into_iter().collect();
        let failed: Vec<&Checked> = sigs.iter().filter(|c| !c.ok).collect();
        if got != want || sigs.len() != want.len() || !failed.is_empty() {
            let lines: Vec<String> = sigs
                .iter()
                .map(|c| {
                    format!(
                        "   d={} s={} a={} c={}: {}",
                        c.d,
                        c.s,
                        c.a,
                        c.c,
                        if c.ok {
                            "pass".to_string()
                        } else {
                            format!("FAIL ({})", c.error.as_deref().unwrap_or("?"))
                        }
                    )
                })
                .collect();
            problems.push(format!(
                "== {label}: want {want:?}, got:\n{}\n--- message as delivered ---\n{}",
                lines.join("\n"),
                String::from_utf8_lossy(data)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} delivered messages do not verify with dkimpy:\n{}",
        problems.len(),
        messages.len(),
        problems.join("\n")
    );
}

/// Runs `opendkim -t` (OpenDKIM's test mode) over the messages with `keys` (owner name, TXT
/// value) as its TestPublicKeys; returns what it printed for each message.
async fn opendkim_verify(keys: &[(String, String)], messages: &[(String, Vec<u8>)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let keyfile = dir.path().join("keys.txt");
    let lines: String = keys.iter().map(|(n, v)| format!("{n} {v}\n")).collect();
    std::fs::write(&keyfile, lines).expect("write opendkim keys");
    let conf = dir.path().join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode v\nSyslog no\nTestPublicKeys {}\nMinimumKeyBits 1024\n",
            keyfile.display()
        ),
    )
    .expect("write opendkim.conf");
    let mut files = Vec::new();
    for (i, (_, data)) in messages.iter().enumerate() {
        let p = dir.path().join(format!("m{i}.eml"));
        std::fs::write(&p, data).expect("write message");
        files.push(p.display().to_string());
    }
    let mut cmd = Command::new(opendkim_bin());
    cmd.arg("-x").arg(&conf).arg("-t").arg(files.join(","));
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.all()
}

fn opendkim_bin() -> String {
    for p in ["/usr/sbin/opendkim", "/usr/bin/opendkim"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    "opendkim".to_string()
}

/// Splits a message at the header/body boundary: (headers incl. the empty line, body).
fn body_of(data: &[u8]) -> &[u8] {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |i| &data[i + 4..])
}

/// The header fields of a message (each with its continuation lines, CRLF-terminated) and the
/// rest (the empty line and the body).
fn split_fields(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    while pos < data.len() && !data[pos..].starts_with(b"\r\n") {
        let mut end = pos;
        loop {
            let nl = data[end..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(data.len(), |i| end + i + 2);
            end = nl;
            if end >= data.len() || !matches!(data[end], b' ' | b'\t') {
                break;
            }
        }
        fields.push(&data[pos..end]);
        pos = end;
    }
    (fields, &data[pos..])
}

/// For each DKIM-Signature of `data`: its tags and a copy of the message that keeps only that
/// signature (signatures never cover each other, so each copy still verifies).
fn one_signature_each(data: &[u8]) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
    let (fields, rest) = split_fields(data);
    let is_sig = |f: &[u8]| f.to_ascii_lowercase().starts_with(b"dkim-signature:");
    fields
        .iter()
        .enumerate()
        .filter(|(_, f)| is_sig(f))
        .map(|(i, f)| {
            let value = String::from_utf8_lossy(&f[15..]).into_owned();
            let mut copy = Vec::with_capacity(data.len());
            for (j, g) in fields.iter().enumerate() {
                if j == i || !is_sig(g) {
                    copy.extend_from_slice(g);
                }
            }
            copy.extend_from_slice(rest);
            (sig_tags(&value), copy)
        })
        .collect()
}

/// Whether every header field starts `Name: v` with exactly one space after the colon (what
/// a milter hands on unchanged).
fn one_space_after_colons(data: &[u8]) -> bool {
    split_fields(data).0.iter().all(|f| {
        f.iter().position(|b| *b == b':').is_some_and(|i| {
            f.get(i + 1) == Some(&b' ') && !matches!(f.get(i + 2), Some(b' ' | b'\t' | b'\r'))
        })
    })
}

/// An RFC 3339 instant for `[[dkim]] active_from` / `active_until`.
fn rfc3339(unix_secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .expect("valid time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A `[[dkim]]` entry; `extra` lines go inside it.
fn dkim_entry(domain: &str, selector: &str, algorithm: &str, key: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{algorithm}\"\n\
         key = \"{key}\"\n"
    );
    for l in extra {
        s.push_str(l);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// 1. Signatures verify, for the awkward message shapes
// ---------------------------------------------------------------------------------------------

/// How a test message is handed to Gannet.
#[derive(Debug, Clone, Copy)]
enum Submit {
    /// DATA (the client dot-stuffs).
    Data,
    /// DATA with `MAIL FROM ... BODY=8BITMIME`.
    Data8bit,
    /// BDAT in two chunks (split in the middle), the message byte for byte.
    Bdat,
}

/// The message shapes of issue 3, item 1: (label, how sent, message without From, which is
/// added per signing domain).
fn awkward_messages() -> Vec<(&'static str, Submit, Vec<u8>)> {
    let long_line: String = (0..2500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    vec![
        (
            // No Message-ID or Date: Gannet adds them before signing, and signs them. The
            // X-Gannet-Campaign control header is removed before signing. Folded header,
            // odd spacing and case for relaxed header canonicalisation.
            "plain",
            Submit::Data,
            b"To: Someone <plain@dest.test>\r\n\
              SUBJECT:   A folded\r\n\tsubject   line\r\n\
              X-Gannet-Campaign: spring\r\n\
              \r\n\
              Hello  there,\t \r\n\
              \r\n\
              a plain text body with  double  spaces and trailing blanks   \r\n"
                .to_vec(),
        ),
        (
            "multipart",
            Submit::Data,
            b"To: multipart@dest.test\r\n\
              Subject: alternative\r\n\
              MIME-Version: 1.0\r\n\
              Content-Type: multipart/alternative; boundary=\"b1=_x\"\r\n\
              \r\n\
              This is a MIME message.\r\n\
              \r\n\
              --b1=_x\r\n\
              Content-Type: text/plain; charset=us-ascii\r\n\
              \r\n\
              Plain part.\r\n\
              \r\n\
              --b1=_x\r\n\
              Content-Type: text/html; charset=utf-8\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n\
              \r\n\
              <p>HTML part =E2=9C=93 with a soft=\r\n\
               break</p>\r\n\
              \r\n\
              --b1=_x--\r\n"
                .to_vec(),
        ),
        (
            "utf8",
            Submit::Data8bit,
            "To: utf8@dest.test\r\n\
             Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             Grüße aus Köln — 日本語のテキスト — emoji 🐦\r\n\
             ÄÖÜ äöü ß\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            // RFC 5322 §2.1.1 limits lines to 998 characters; a client that sends more gets
            // it relayed as-is or refused, never silently changed after signing.
            "longline-data",
            Submit::Data,
            format!("To: longline@dest.test\r\nSubject: long line\r\n\r\nbefore\r\n{long_line}\r\nafter\r\n")
                .into_bytes(),
        ),
        (
            "longline-bdat",
            Submit::Bdat,
            format!("To: longline@dest.test\r\nSubject: long line (BDAT)\r\n\r\n{long_line}\r\n{long_line}\r\n")
                .into_bytes(),
        ),
        (
            // Leading dots: dot-stuffed on the way in and on the way out (RFC 5321 §4.5.2).
            "dots",
            Submit::Data,
            b"To: dots@dest.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\n. space\r\nend\r\n"
                .to_vec(),
        ),
        (
            // Trailing empty and whitespace-only lines (RFC 6376 §3.4.3/§3.4.4).
            "trailing-blank",
            Submit::Data,
            b"To: trailing@dest.test\r\nSubject: trailing blank lines\r\n\r\ntext\r\n\r\n   \r\n\t\r\n \t \r\n\r\n\r\n"
                .to_vec(),
        ),
        (
            // No CRLF after the last line: only possible with BDAT (RFC 3030).
            "no-final-crlf",
            Submit::Bdat,
            b"To: nocrlf@dest.test\r\nSubject: no final CRLF\r\n\r\nfirst line\r\nlast line without CRLF"
                .to_vec(),
        ),
        (
            "empty-body",
            Submit::Data,
            b"To: empty@dest.test\r\nSubject: empty body\r\n\r\n".to_vec(),
        ),
        (
            // No empty line at all: the body is optional (RFC 5322 §3.5).
            "headers-only",
            Submit::Data,
            b"To: headers-only@dest.test\r\nSubject: no body, no separator\r\n".to_vec(),
        ),
    ]
}

/// The From header of the `i`th test message: the forms a From domain must be found in
/// (display names with commas, encoded words, comments, folding, odd case and spacing).
fn from_line(i: usize, domain: &str) -> String {
    let forms = [
        "From: Sender <s@{d}>",
        "From: \"Sender, The\" <s@{d}>",
        "From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <s@{d}>",
        "FROM: s@{d}",
        "From: s@{d} (a comment)",
        "From: A rather long display name that is\r\n folded <s@{d}>",
        "from:<s@{d}>",
    ];
    format!("{}\r\n", forms[i % forms.len()].replace("{d}", domain))
}

/// Sends one message on an open session (EHLO said), DATA or BDAT; expects 250.
async fn submit(c: &mut SmtpClient, from: &str, rcpts: &[String], how: Submit, message: &[u8]) {
    let param = match how {
        Submit::Data8bit => " BODY=8BITMIME",
        _ => "",
    };
    c.cmd(&format!("MAIL FROM:<{from}>{param}"), "250").await;
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    match how {
        Submit::Data | Submit::Data8bit => {
            c.data(message, "250").await;
        }
        Submit::Bdat => {
            let (a, b) = message.split_at(message.len() / 2);
            let mut first = format!("BDAT {}\r\n", a.len()).into_bytes();
            first.extend_from_slice(a);
            c.send_raw(&first).await.expect("send BDAT chunk");
            c.expect("250").await;
            let mut last = format!("BDAT {} LAST\r\n", b.len()).into_bytes();
            last.extend_from_slice(b);
            c.send_raw(&last).await.expect("send BDAT LAST chunk");
            c.expect("250").await;
        }
    }
}

/// Issue 3, item 1: every message relayed through the SMTP listener carries one RSA-2048 and
/// one Ed25519 signature of its From domain, and both verify with dkimpy using the keys
/// published in (loopback) DNS, and with OpenDKIM. Messages are submitted with DATA and with
/// BDAT, and delivered to two MXs, one of which also offers CHUNKING (dest.test, chunk.test).
/// Two From domains: relaxed/relaxed (the default) and simple/simple. The body arrives exactly
/// as submitted (a missing final CRLF may be added); the verifier is shown to catch a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_signatures_verify_with_dkimpy_for_every_message_shape() {
    let records = [
        ("rsa._domainkey.relaxed.test", "rsa2048.pem", KeyType::Rsa),
        (
            "ed._domainkey.relaxed.test",
            "ed25519.pem",
            KeyType::Ed25519,
        ),
        ("rsa._domainkey.simple.test", "rsa2048-b.pem", KeyType::Rsa),
        (
            "ed._domainkey.simple.test",
            "ed25519-b.pem",
            KeyType::Ed25519,
        ),
    ];
    let mut zone = Zone::new()
        .mail_domain("dest.test", "127.0.0.101")
        .mail_domain("chunk.test", "127.0.0.102");
    let mut published = Vec::new();
    for (name, file, kind) in records {
        let value = public_record(&fixture_path(file), kind).await;
        zone = zone.txt(name, &value);
        published.push((name.to_string(), value));
    }
    let w = World::start(&["127.0.0.101", "127.0.0.102"], zone, |c| {
        c.file("rsa-a.pem", fixture("rsa2048.pem"))
            .file("ed-a.pem", fixture("ed25519.pem"))
            .file("rsa-b.pem", fixture("rsa2048-b.pem"))
            .file("ed-b.pem", fixture("ed25519-b.pem"))
            .extra(&dkim_entry(
                "relaxed.test",
                "rsa",
                "rsa-sha256",
                "${DIR}/rsa-a.pem",
                &[],
            ))
            .extra(&dkim_entry(
                "relaxed.test",
                "ed",
                "ed25519-sha256",
                "${DIR}/ed-a.pem",
                &[],
            ))
            .extra(&dkim_entry(
                "simple.test",
                "rsa",
                "rsa-sha256",
                "${DIR}/rsa-b.pem",
                &["canonicalization = \"simple/simple\""],
            ))
            .extra(&dkim_entry(
                "simple.test",
                "ed",
                "ed25519-sha256",
                "${DIR}/ed-b.pem",
                &["canonicalization = \"simple/simple\""],
            ))
    })
    .await;
    w.sinks[1].set_chunking(true);

    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    let ehlo = c.hello("client.test").await;
    for ext in ["8BITMIME", "CHUNKING"] {
        assert!(
            ehlo.extensions().iter().any(|e| e == ext),
            "Gannet offers {ext}: {ehlo:?}"
        );
    }
    let mut submitted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for domain in ["relaxed", "simple"] {
        for (i, (label, how, msg)) in awkward_messages().into_iter().enumerate() {
            let key = format!("{label}-{domain}");
            let mut full = from_line(i, &format!("{domain}.test")).into_bytes();
            full.extend_from_slice(&msg);
            let rcpts = vec![format!("{key}@dest.test"), format!("{key}@chunk.test")];
            submit(&mut c, &format!("s@{domain}.test"), &rcpts, how, &full).await;
            submitted.insert(key, full);
        }
    }
    c.quit().await;

    let n = submitted.len();
    let mut delivered: Vec<(String, Vec<u8>)> = Vec::new();
    for (sink, via) in w.sinks.iter().zip(["dest.test", "chunk.test"]) {
        for t in sink.wait_for(n, WAIT).await {
            let rcpt = t.rcpts.first().cloned().unwrap_or_default();
            let key = rcpt.split('@').next().unwrap_or_default().to_string();
            let sent = submitted
                .get(&key)
                .unwrap_or_else(|| panic!("unexpected delivery to {rcpt}"));
            // The body is untouched (SMTP may add the final CRLF a BDAT message lacked).
            let got = body_of(&t.data);
            let want = body_of(sent);
            assert!(
                got == want || (!want.ends_with(b"\r\n") && got == [want, b"\r\n"].concat()),
                "{key} via {via}: body changed in transit\n--- sent ---\n{}\n--- delivered ---\n{}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got)
            );
            if key.starts_with("plain-") {
                let h = sig_tags(&t.headers("dkim-signature")[0])["h"].to_ascii_lowercase();
                let names: Vec<&str> = h.split(':').collect();
                assert!(
                    names.contains(&"message-id") && names.contains(&"date"),
                    "the Message-ID and Date Gannet adds are signed: h={h}"
                );
                assert!(
                    names.iter().filter(|n| **n == "from").count() >= 2,
                    "From is over-signed (listed once more than present): h={h}"
                );
                assert!(
                    t.header("x-gannet-campaign").is_none(),
                    "X-Gannet-* headers are removed before delivery\n{}",
                    t.text()
                );
            }
            delivered.push((format!("{key} via {via}"), t.data.clone()));
        }
    }

    let expected = |label: &str| {
        let (domain, c) = if label.contains("-relaxed ") {
            ("relaxed.test", "relaxed/relaxed")
        } else {
            ("simple.test", "simple/simple")
        };
        vec![
            sig_id(domain, "rsa", "rsa-sha256", c),
            sig_id(domain, "ed", "ed25519-sha256", c),
        ]
    };
    assert_verified(&w.dns, &delivered, &expected).await;

    // The verifier is not vacuous: one changed body byte fails both signatures.
    let (label, data) = delivered
        .iter()
        .find(|(l, _)| l.starts_with("plain-relaxed"))
        .expect("plain message delivered");
    let at = crate::common::sink::find(data, b"Hello").expect("body text") + 4;
    let mut tampered = data.clone();
    tampered[at] = b'O';
    let checked = dkimpy_verify(&w.dns, &[(label.clone(), tampered)]).await;
    assert!(
        checked[0].len() == 2 && checked[0].iter().all(|c| !c.ok),
        "a tampered copy of {label} must fail both signatures: {:?}",
        checked[0]
    );

    // OpenDKIM, an independent C implementation, agrees. It reports only the first signature
    // of a message, so each signature is checked in a copy that keeps only that one. Left out:
    // simple header canonicalisation of messages with a header not written `Name: value` (one
    // space after the colon), which `opendkim -t` cannot check because its milter emulation
    // rewrites that space; it fails the same way on signatures made by dkimpy.
    let mut single = Vec::new();
    let mut skipped = 0;
    for (label, data) in &delivered {
        for (tags, copy) in one_signature_each(data) {
            if tags["c"].starts_with("simple") && !one_space_after_colons(&copy) {
                skipped += 1;
                continue;
            }
            single.push((format!("{label} s={}", tags["s"]), tags, copy));
        }
    }
    assert!(
        single.len() >= 3 * skipped,
        "most signatures are checked by OpenDKIM ({} checked, {skipped} left out)",
        single.len()
    );
    let copies: Vec<(String, Vec<u8>)> = single
        .iter()
        .map(|(l, _, d)| (l.clone(), d.clone()))
        .collect();
    let report = opendkim_verify(&published, &copies).await;
    for (i, (label, tags, _)) in single.iter().enumerate() {
        let needle = format!("m{i}.eml: verification (s={}, d={}, ", tags["s"], tags["d"]);
        let line = report.lines().find(|l| l.contains(&format!("/m{i}.eml:")));
        assert!(
            line.is_some_and(|l| l.contains(&needle) && l.ends_with("succeeded")),
            "OpenDKIM did not verify {label}: {line:?}\n--- opendkim ---\n{report}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Rotation without restart
// ---------------------------------------------------------------------------------------------

/// Issue 3, item 2: two keys of one domain with adjacent windows (`active_until` of the old
/// selector = `active_from` of the new one, an instant a few seconds after start). A message
/// accepted before the switch is signed by selector `a` only, one accepted after it by `b`
/// only, by the same process; `t=` shows on which side of the switch each was signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_selector_at_the_configured_instant_without_restart() {
    // Whole seconds, so that the t= tag (seconds) tells exactly which window applied.
    let switch = unix_now().ceil() as u64 + 8;
    let zone = Zone::new()
        .mail_domain("dest.test", "127.0.0.103")
        .txt(
            "a._domainkey.rot.test",
            &public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await,
        )
        .txt(
            "b._domainkey.rot.test",
            &public_record(&fixture_path("ed25519.pem"), KeyType::Ed25519).await,
        );
    let until = format!("active_until = \"{}\"", rfc3339(switch));
    let from = format!("active_from = \"{}\"", rfc3339(switch));
    let w = World::start(&["127.0.0.103"], zone, |c| {
        c.file("a.pem", fixture("rsa2048.pem"))
            .file("b.pem", fixture("ed25519.pem"))
            .extra(&dkim_entry(
                "rot.test",
                "a",
                "rsa-sha256",
                "${DIR}/a.pem",
                &[&until],
            ))
            .extra(&dkim_entry(
                "rot.test",
                "b",
                "ed25519-sha256",
                "${DIR}/b.pem",
                &[&from],
            ))
    })
    .await;
    let pid = w.gannet.pid();

    let send = |label: &'static str| {
        let addr = w.gannet.smtp_addr();
        async move {
            let msg = format!(
                "From: r@rot.test\r\nTo: {label}@dest.test\r\nSubject: {label}\r\n\r\n{label}\r\n"
            );
            SmtpClient::connect(addr)
                .await
                .send_message(
                    "r@rot.test",
                    &[&format!("{label}@dest.test")],
                    msg.as_bytes(),
                )
                .await;
        }
    };
    send("before").await;
    let before = w.sinks[0].wait_for(1, WAIT).await.remove(0);
    let sigs = sig_list(&before);
    let t_before: u64 = sigs[0]["t"].parse().expect("t= is a number");
    assert!(
        t_before < switch,
        "test setup: Gannet signed the first message at t={t_before}, not before the switch at \
         {switch}; the machine is too slow for this test's 8 s margin"
    );
    assert_eq!(
        sigs.iter().map(|s| s["s"].as_str()).collect::<Vec<_>>(),
        ["a"],
        "before {}: signed by selector a only\n{}",
        rfc3339(switch),
        before.text()
    );

    // Wall-clock time is what this feature is about: wait for the switch itself.
    let wait = switch as f64 - unix_now() + 0.2;
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    send("after").await;
    let after = w.sinks[0]
        .wait_for(2, WAIT)
        .await
        .into_iter()
        .find(|t| t.rcpts == ["after@dest.test"])
        .expect("the second message arrived");
    let sigs = sig_list(&after);
    assert_eq!(
        sigs.iter().map(|s| s["s"].as_str()).collect::<Vec<_>>(),
        ["b"],
        "after {}: signed by selector b only\n{}",
        rfc3339(switch),
        after.text()
    );
    let t_after: u64 = sigs[0]["t"].parse().expect("t= is a number");
    assert!(
        t_after >= switch,
        "t={t_after} is after the switch {switch}"
    );
    assert_eq!(w.gannet.pid(), pid, "the same Gannet process signed both");

    let delivered = vec![
        ("before".to_string(), before.data.clone()),
        ("after".to_string(), after.data.clone()),
    ];
    assert_verified(&w.dns, &delivered, &|label| {
        if label == "before" {
            vec![sig_id("rot.test", "a", "rsa-sha256", "relaxed/relaxed")]
        } else {
            vec![sig_id("rot.test", "b", "ed25519-sha256", "relaxed/relaxed")]
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. check-domain: CLI (--json and human) and HTTP
// ---------------------------------------------------------------------------------------------

// Pool source addresses of the check-domain test: TEST-NET-1 (RFC 5737), not 127.0.0.x,
// because hickory-resolver answers every 127.0.0.0/8 reverse lookup itself ("localhost",
// RFC 6761) without asking the configured DNS. No mail is delivered from them.
const OUT1: &str = "192.0.2.104";
const OUT2: &str = "192.0.2.105";

/// DNS for the check-domain test: `good.test` is right in every respect (SPF with both pool
/// addresses, both DKIM keys, DMARC, forward-confirmed PTRs); each other domain is right except
/// for the one thing its name says.
async fn checks_zone(ptrs: bool) -> Zone {
    let rsa = public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await;
    let rsa_b = public_record(&fixture_path("rsa2048-b.pem"), KeyType::Rsa).await;
    let ed = public_record(&fixture_path("ed25519.pem"), KeyType::Ed25519).await;
    let spf = format!("v=spf1 ip4:{OUT1} ip4:{OUT2} -all");
    let dmarc = |d: &str| format!("v=DMARC1; p=reject; rua=mailto:dmarc@{d}");
    let mut z = Zone::new()
        .mail_domain("dest.test", "127.0.0.106")
        .txt("good.test", &spf)
        .txt("s1._domainkey.good.test", &rsa)
        .txt("s2._domainkey.good.test", &ed)
        .txt("_dmarc.good.test", &dmarc("good.test"))
        .txt("bounce.other.test", &spf)
        .txt("spfmissing.test", &format!("v=spf1 ip4:{OUT1} -all"))
        .txt("spfall.test", "v=spf1 -all")
        .txt("wrongkey.test", &spf)
        .txt("s1._domainkey.wrongkey.test", &rsa_b)
        .txt("nodkim.test", &spf)
        .txt("nodmarc.test", &spf)
        .txt("s1._domainkey.nodmarc.test", &rsa)
        .a("out1.checks.test", OUT1)
        .a("out2.checks.test", OUT2);
    for d in ["spfmissing.test", "spfall.test"] {
        z = z.txt(&format!("s1._domainkey.{d}"), &rsa);
    }
    for d in [
        "spfmissing.test",
        "spfall.test",
        "wrongkey.test",
        "nodkim.test",
    ] {
        z = z.txt(&format!("_dmarc.{d}"), &dmarc(d));
    }
    if ptrs {
        z = z
            .ptr(OUT1, "out1.checks.test")
            .ptr(OUT2, "out2.checks.test");
    } else {
        // OUT1's PTR names a host that does not resolve back to it; OUT2 has no PTR at all.
        z = z
            .ptr(OUT1, "stale.checks.test")
            .a("stale.checks.test", "127.0.0.99");
    }
    z
}

/// `(check, subject)` pairs of findings.
type Findings = BTreeSet<(String, String)>;

/// `(check, subject)` of every failing finding of a report (JSON as printed by `--json` or
/// served by the HTTP API).
fn failing(report: &Value) -> Findings {
    report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("report without checks: {report}"))
        .iter()
        .filter(|c| c["ok"] == Value::Bool(false))
        .map(|c| {
            (
                c["check"].as_str().unwrap_or("").to_string(),
                c["subject"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> Findings {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `gannet check-domain ARGS --json`: the parsed report; the exit status must be 0 exactly
/// when nothing fails.
async fn check_json(g: &Gannet, args: &[&str]) -> Value {
    let mut all = vec!["check-domain"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = g.cli(&all).await;
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check-domain --json printed no JSON ({e}):\n{out}"));
    let fails = failing(&v);
    assert_eq!(
        out.success(),
        fails.is_empty(),
        "exit status is non-zero exactly when a check fails (failing: {fails:?})\n{out}"
    );
    v
}

/// The finding `(check, subject)` of a report.
fn finding<'a>(report: &'a Value, check: &str, subject: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["check"] == check && c["subject"] == subject)
        })
        .unwrap_or_else(|| panic!("no {check} finding for {subject} in {report:#}"))
}

/// The quoted strings of the first line of `text` that contains `marker`, concatenated (the
/// TXT value of a zone-file line).
fn quoted_after(text: &str, marker: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in:\n{text}"));
    let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    assert!(
        strings.iter().all(|s| s.len() <= 255),
        "TXT strings are at most 255 bytes: {line}"
    );
    strings.concat()
}

/// Issue 3, item 3: `gannet check-domain --json`, the human report and
/// `GET /api/v1/domains/{domain}/check` against the loopback DNS. A correct domain passes every
/// check (SPF for each pool address, each DKIM selector, DMARC, alignment, forward-confirmed
/// PTR for each pool address); each broken domain fails exactly the check it breaks, and the
/// report names the item and the record to publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_domain_names_exactly_what_is_wrong_and_the_record_to_fix() {
    let mut cfg_keys = String::new();
    cfg_keys += &dkim_entry("good.test", "s1", "rsa-sha256", "${DIR}/rsa.pem", &[]);
    cfg_keys += &dkim_entry("good.test", "s2", "ed25519-sha256", "${DIR}/ed.pem", &[]);
    for d in [
        "spfmissing.test",
        "spfall.test",
        "wrongkey.test",
        "nodkim.test",
        "nodmarc.test",
    ] {
        cfg_keys += &dkim_entry(d, "s1", "rsa-sha256", "${DIR}/rsa.pem", &[]);
    }
    let w = World::start(&["127.0.0.106"], checks_zone(true).await, |c| {
        c.sources(&[(OUT1, "out1.checks.test")])
            .pool("second", &[(OUT2, "out2.checks.test")])
            .class("transactional", "second", 10)
            .file("rsa.pem", fixture("rsa2048.pem"))
            .file("ed.pem", fixture("ed25519.pem"))
            .extra(&cfg_keys)
    })
    .await;
    let g = &w.gannet;

    // All pass, and every kind of check was made for every subject.
    let good = check_json(g, &["good.test"]).await;
    assert_eq!(failing(&good), set(&[]), "good.test passes:\n{good:#}");
    for (check, subject) in [
        ("spf", OUT1),
        ("spf", OUT2),
        ("dkim", "s1._domainkey.good.test"),
        ("dkim", "s2._domainkey.good.test"),
        ("dmarc", "good.test"),
        ("alignment", "dkim d=good.test"),
        ("alignment", "return-path good.test"),
        ("ptr", OUT1),
        ("ptr", OUT2),
    ] {
        finding(&good, check, subject);
    }
    assert_eq!(good["domain"], "good.test");
    assert_eq!(good["signing_domain"], "good.test");
    let human = g.cli(&["check-domain", "good.test"]).await;
    human.assert_success();
    assert!(
        human.stdout.contains("All 9 checks passed"),
        "human report says all passed:\n{human}"
    );

    let rsa = public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await;
    // (domain, extra args, exactly the failing findings, what the human report must show).
    let cases: Vec<(&str, Vec<&str>, Findings, Vec<String>)> = vec![
        (
            "spfmissing.test",
            vec![],
            set(&[("spf", OUT2)]),
            vec![format!(
                "publish spfmissing.test. TXT \"v=spf1 ip4:{OUT1} ip4:{OUT2} -all\""
            )],
        ),
        (
            "spfall.test",
            vec![],
            set(&[("spf", OUT1), ("spf", OUT2)]),
            vec![format!(
                "publish spfall.test. TXT \"v=spf1 ip4:{OUT1} ip4:{OUT2} -all\" (replacing \"v=spf1 -all\")"
            )],
        ),
        (
            "wrongkey.test",
            vec![],
            set(&[("dkim", "s1._domainkey.wrongkey.test")]),
            vec!["publish s1._domainkey.wrongkey.test. 3600 IN TXT".into()],
        ),
        (
            "nodkim.test",
            vec![],
            set(&[("dkim", "s1._domainkey.nodkim.test")]),
            vec!["publish s1._domainkey.nodkim.test. 3600 IN TXT".into()],
        ),
        (
            "nodmarc.test",
            vec![],
            set(&[("dmarc", "nodmarc.test")]),
            vec!["publish _dmarc.nodmarc.test. TXT \"v=DMARC1;".into()],
        ),
        (
            "good.test",
            vec!["--return-path", "bounce.other.test"],
            set(&[("alignment", "return-path bounce.other.test")]),
            vec!["MAIL FROM (Return-Path) address".into()],
        ),
    ];
    for (domain, extra, want, shows) in &cases {
        let mut args = vec![*domain];
        args.extend(extra.iter().copied());
        let report = check_json(g, &args).await;
        assert_eq!(
            &failing(&report),
            want,
            "check-domain {args:?}: exactly these fail\n{report:#}"
        );
        for (check, subject) in want {
            let f = finding(&report, check, subject);
            assert!(
                f["detail"].as_str().is_some_and(|d| !d.is_empty())
                    && f["fix"].as_str().is_some_and(|d| !d.is_empty()),
                "a failing finding says what is wrong and how to fix it: {f:#}"
            );
        }

        let mut hargs = vec!["check-domain"];
        hargs.extend(args.iter().copied());
        let human = g.cli(&hargs).await;
        human.assert_failure();
        for (check, subject) in want {
            assert!(
                human
                    .stdout
                    .lines()
                    .any(|l| l.contains("FAIL") && l.contains(check) && l.contains(subject)),
                "human report has a FAIL line for {check} {subject}:\n{human}"
            );
        }
        for s in shows {
            assert!(
                human.stdout.contains(s),
                "human report of {args:?} shows {s:?}:\n{human}"
            );
        }
        if domain.contains("dkim") || domain.contains("key") {
            // The record to publish is the one for the configured private key.
            let marker = format!("publish s1._domainkey.{domain}.");
            assert_eq!(
                quoted_after(&human.stdout, &marker),
                rsa,
                "the fix publishes the public half of the configured key"
            );
        }
    }
    let spf_fix = finding(&check_json(g, &["spfmissing.test"]).await, "spf", OUT2)["fix"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(spf_fix.contains(&format!("ip4:{OUT2}")), "{spf_fix}");

    // The HTTP endpoint (admin; loopback needs no token) serves the same report.
    for (path, want) in [
        ("/api/v1/domains/good.test/check", set(&[])),
        (
            "/api/v1/domains/spfmissing.test/check",
            set(&[("spf", OUT2)]),
        ),
        (
            "/api/v1/domains/good.test/check?return_path=bounce.other.test",
            set(&[("alignment", "return-path bounce.other.test")]),
        ),
    ] {
        let (status, body) = g.http_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(failing(&v), want, "GET {path}\n{v:#}");
    }
    let (status, body) = g.http_get("/api/v1/domains/not..valid/check").await;
    assert_eq!(status, 400, "an invalid domain is a 400: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(v["error"]["field"], "domain", "{body}");

    // Reverse DNS broken: OUT1's PTR does not resolve back, OUT2 has none.
    w.dns.set_zone(checks_zone(false).await);
    let report = check_json(g, &["good.test"]).await;
    assert_eq!(
        failing(&report),
        set(&[("ptr", OUT1), ("ptr", OUT2)]),
        "{report:#}"
    );
    let human = g.cli(&["check-domain", "good.test"]).await;
    human.assert_failure();
    for s in [
        "105.2.0.192.in-addr.arpa. PTR out2.checks.test.".to_string(),
        format!("publish stale.checks.test. A {OUT1}"),
    ] {
        assert!(human.stdout.contains(&s), "PTR fix shows {s:?}:\n{human}");
    }
    let (status, body) = g.http_get("/api/v1/domains/good.test/check").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(failing(&v), set(&[("ptr", OUT1), ("ptr", OUT2)]));
}

// ---------------------------------------------------------------------------------------------
// 4. Unusable keys stop `gannet serve` at start
// ---------------------------------------------------------------------------------------------

/// (algorithm, key file name, contents or None for a missing file, words the error names).
type BadKey = (
    &'static str,
    &'static str,
    Option<Vec<u8>>,
    Vec<&'static str>,
);

/// A config with a good key as `dkim[0]` and `bad` (algorithm, key file name under `${DIR}`,
/// contents or None for a file that does not exist) as `dkim[1]`.
async fn bad_key_config(algorithm: &str, file: &str, contents: Option<Vec<u8>>) -> ConfigDir {
    let dns = TestDns::start(Zone::new()).await;
    let mut c = TestConfig::new(&dns, 25)
        .file("good.pem", fixture("rsa2048.pem"))
        .extra(&dkim_entry(
            "good.test",
            "s1",
            "rsa-sha256",
            "${DIR}/good.pem",
            &[],
        ))
        .extra(&dkim_entry(
            "bad.test",
            "s1",
            algorithm,
            &format!("${{DIR}}/{file}"),
            &[],
        ));
    if let Some(bytes) = contents {
        c = c.file(file, bytes);
    }
    ConfigDir::write(&c)
}

/// Issue 3, item 4: `gannet serve` with an unusable key exits non-zero at once (well before
/// the 20 s limit; nothing is served) with one message naming `dkim[1]`, the domain, the key
/// file and the problem. An unknown algorithm is a config error naming the value and the
/// accepted ones; `gannet check-config` refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_keys_stop_serve_at_start_with_a_message_naming_key_and_file() {
    // (algorithm, file, contents, words the message must contain besides dkim[1] and path)
    let cases: Vec<BadKey> = vec![
        (
            "rsa-sha256",
            "broken.pem",
            Some(fixture("broken.pem")),
            vec!["no PEM private key"],
        ),
        (
            "rsa-sha256",
            "rsa512.pem",
            Some(fixture("rsa512.pem")),
            vec!["512 bits", "1024"],
        ),
        (
            "rsa-sha256",
            "rsa1024.pem",
            Some(fixture("rsa1024.pem")),
            vec!["1024 bits", "gannet dkim keygen"],
        ),
        (
            "rsa-sha256",
            "ec.pem",
            Some(fixture("ec-p256.pem")),
            vec!["not RSA or Ed25519"],
        ),
        (
            "ed25519-sha256",
            "rsa-as-ed.pem",
            Some(fixture("rsa2048.pem")),
            vec!["2048-bit RSA key", "Ed25519"],
        ),
        (
            "rsa-sha256",
            "missing.pem",
            None,
            vec!["cannot read key file"],
        ),
        (
            "rsa-sha256",
            "empty.pem",
            Some(Vec::new()),
            vec!["no PEM private key"],
        ),
    ];
    for (algorithm, file, contents, words) in cases {
        let cd = bad_key_config(algorithm, file, contents).await;
        let out = cd.run(&["serve"], Duration::from_secs(20)).await;
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "serve with {file} ({algorithm}) must exit non-zero at start:\n{out}"
        );
        let path = cd.dir().join(file).display().to_string();
        let msg = out.stderr.clone();
        for w in ["dkim[1]", "bad.test", path.as_str()].iter().chain(&words) {
            assert!(msg.contains(w), "{file}: the error names {w:?}:\n{out}");
        }
        assert!(
            !msg.contains("panicked"),
            "{file}: a clear error, not a panic:\n{out}"
        );
    }

    let cd = bad_key_config("rsa-sha1", "good2.pem", Some(fixture("rsa2048.pem"))).await;
    for cmd in ["serve", "check-config"] {
        let out = cd.run(&[cmd], Duration::from_secs(20)).await;
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "{cmd} with algorithm rsa-sha1 must fail:\n{out}"
        );
        let path = cd.path().display().to_string();
        for w in [
            "rsa-sha1",
            "algorithm",
            "rsa-sha256",
            "ed25519-sha256",
            path.as_str(),
        ] {
            assert!(
                out.stderr.contains(w),
                "{cmd}: the error names {w:?}:\n{out}"
            );
        }
    }
}

/// `gannet check-config` ("check a configuration file and exit") accepts a config only if
/// `serve` would start with it: an unusable DKIM key must fail it with the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_the_keys_serve_refuses() {
    for (file, contents) in [
        ("broken.pem", Some(fixture("broken.pem"))),
        ("rsa512.pem", Some(fixture("rsa512.pem"))),
        ("missing.pem", None),
    ] {
        let cd = bad_key_config("rsa-sha256", file, contents).await;
        let out = cd.run(&["check-config"], Duration::from_secs(20)).await;
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "check-config with key {file} must fail as serve does:\n{out}"
        );
        let path = cd.dir().join(file).display().to_string();
        assert!(
            out.stderr.contains("dkim[1]") && out.stderr.contains(&path),
            "check-config names dkim[1] and {path}:\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. gannet dkim keygen
// ---------------------------------------------------------------------------------------------

/// `gannet dkim keygen ARGS...` (no config needed).
async fn keygen(args: &[&str]) -> crate::common::ToolOutput {
    let mut cmd = Command::new(GANNET_BIN);
    cmd.arg("dkim").arg("keygen").args(args);
    run(cmd, None, Duration::from_secs(60)).await
}

/// The zone-file line `keygen` printed: (owner name, TXT strings).
fn printed_record(stdout: &str) -> (String, Vec<String>) {
    let line = stdout
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .unwrap_or_else(|| panic!("keygen printed no record line:\n{stdout}"));
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = words.take(3).collect();
    assert_eq!(rest, ["3600", "IN", "TXT"], "zone-file line: {line}");
    let strings: Vec<String> = line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(
        !strings.is_empty() && strings.iter().all(|s| s.len() <= 255),
        "TXT character-strings of at most 255 bytes (RFC 1035 §3.3): {line}"
    );
    (name, strings)
}

/// Issue 3, item 5: `gannet dkim keygen` for RSA and Ed25519 writes the private key with mode
/// 0600 and prints a zone-file record that parses, whose `p=` is the public half of the key
/// written (as openssl derives it); Gannet then signs with those keys and dkimpy verifies the
/// signatures against the printed records served from DNS. keygen never overwrites a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_keys_sign_mail_that_verifies_against_the_printed_records() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut zone = Zone::new().mail_domain("dest.test", "127.0.0.109");
    let mut keys = Vec::new();
    for (alg, selector, kind, config_alg) in [
        ("rsa", "k-rsa", KeyType::Rsa, "rsa-sha256"),
        ("ed25519", "k-ed", KeyType::Ed25519, "ed25519-sha256"),
    ] {
        let path = dir.path().join(format!("{selector}.pem"));
        let p = path.display().to_string();
        let out = keygen(&[
            "--domain",
            "KeyGen.Test",
            "--selector",
            selector,
            "--algorithm",
            alg,
            "--out",
            &p,
        ])
        .await;
        out.assert_success();
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("keygen wrote no {p}: {e}\n{out}"))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{p} is private (0600), got {:o}",
            mode & 0o777
        );

        let (name, strings) = printed_record(&out.stdout);
        assert_eq!(name, format!("{selector}._domainkey.keygen.test."));
        let value = strings.concat();
        let tags = sig_tags(&value);
        assert_eq!(tags.get("v").map(String::as_str), Some("DKIM1"), "{value}");
        assert_eq!(tags.get("k").map(String::as_str), Some(alg), "{value}");
        let p_tag = tags.get("p").cloned().unwrap_or_default();
        assert!(B64.decode(&p_tag).is_ok(), "p= is base64: {value}");
        let expected = public_record(&path, kind).await;
        assert_eq!(
            sig_tags(&expected)["p"],
            p_tag,
            "the printed p= is the public half of the key written to {p}"
        );
        zone = zone.txt(&name, &value);
        keys.push((selector, config_alg, p.clone()));

        // Never overwrites: the second run fails and the key stays as it was.
        let before = std::fs::read(&path).expect("read key");
        let again = keygen(&[
            "--domain",
            "keygen.test",
            "--selector",
            selector,
            "--algorithm",
            alg,
            "--out",
            &p,
        ])
        .await;
        again.assert_failure();
        assert!(again.stderr.contains(&p), "names the file: {again}");
        assert_eq!(std::fs::read(&path).expect("read key"), before);
    }

    let w = World::start(&["127.0.0.109"], zone, |mut c| {
        for (selector, alg, path) in &keys {
            c = c.extra(&dkim_entry("keygen.test", selector, alg, path, &[]));
        }
        c
    })
    .await;
    let msg = b"From: k@keygen.test\r\nTo: r@dest.test\r\nSubject: keygen\r\n\r\nsigned with fresh keys\r\n";
    SmtpClient::connect(w.gannet.smtp_addr())
        .await
        .send_message("k@keygen.test", &["r@dest.test"], msg)
        .await;
    let t = w.sinks[0].wait_for(1, WAIT).await.remove(0);
    assert_verified(&w.dns, &[("keygen".into(), t.data.clone())], &|_| {
        vec![
            sig_id("keygen.test", "k-rsa", "rsa-sha256", "relaxed/relaxed"),
            sig_id("keygen.test", "k-ed", "ed25519-sha256", "relaxed/relaxed"),
        ]
    })
    .await;

    // check-domain agrees that the published records match the keys.
    let report = check_json(&w.gannet, &["keygen.test"]).await;
    for s in [
        "k-rsa._domainkey.keygen.test",
        "k-ed._domainkey.keygen.test",
    ] {
        assert_eq!(finding(&report, "dkim", s)["ok"], true, "{report:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. [dkim_policy]
// ---------------------------------------------------------------------------------------------

/// Issue 3, item 6: with `reject_unsigned = true`, a message whose From domain has no key (or
/// that has no From) gets `550 5.7.x` at the end of DATA and nothing is queued or delivered; on the same session, mail
/// from the keyed domain (and from a subdomain of it, signed by the parent) is accepted and
/// signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_unsigned_refuses_mail_without_a_key_at_end_of_data() {
    let zone = Zone::new().mail_domain("dest.test", "127.0.0.107").txt(
        "s1._domainkey.keyed.test",
        &public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await,
    );
    let w = World::start(&["127.0.0.107"], zone, |c| {
        c.file("k.pem", fixture("rsa2048.pem"))
            .extra(&dkim_entry(
                "keyed.test",
                "s1",
                "rsa-sha256",
                "${DIR}/k.pem",
                &[],
            ))
            .extra("[dkim_policy]\nreject_unsigned = true\ncheck_interval = \"0s\"\n")
    })
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<s@keyed.test>", "250").await;
    c.cmd("RCPT TO:<unsigned@dest.test>", "250").await;
    let reply = c
        .data(
            b"From: s@nokey.test\r\nTo: unsigned@dest.test\r\nSubject: no key\r\n\r\nx\r\n",
            "550 5.7.",
        )
        .await;
    assert!(
        reply.text().contains("nokey.test"),
        "the refusal names the From domain: {reply:?}"
    );
    // No From header at all: no domain to pick a key by, refused as well.
    c.cmd("MAIL FROM:<s@keyed.test>", "250").await;
    c.cmd("RCPT TO:<unsigned@dest.test>", "250").await;
    c.data(
        b"To: unsigned@dest.test\r\nSubject: no From\r\n\r\nx\r\n",
        "550 5.7.",
    )
    .await;
    let q = w.gannet.queue_status().await;
    assert_eq!(q.queued_recipients, 0, "nothing queued: {:?}", q.raw);

    // The session goes on; keyed mail is accepted and signed.
    for (from, rcpt) in [
        ("s@keyed.test", "keyed@dest.test"),
        ("s@news.keyed.test", "sub@dest.test"),
    ] {
        let msg = format!("From: {from}\r\nTo: {rcpt}\r\nSubject: keyed\r\n\r\nx\r\n");
        c.send(from, &[rcpt], msg.as_bytes()).await;
    }
    c.quit().await;
    let got = w.sinks[0].wait_for(2, WAIT).await;
    let mut delivered = Vec::new();
    for t in &got {
        assert_eq!(t.rcpts.len(), 1);
        assert_ne!(
            t.rcpts[0], "unsigned@dest.test",
            "the refused message never leaves"
        );
        delivered.push((t.rcpts[0].clone(), t.data.clone()));
    }
    assert_verified(&w.dns, &delivered, &|_| {
        vec![sig_id("keyed.test", "s1", "rsa-sha256", "relaxed/relaxed")]
    })
    .await;
    assert!(
        w.gannet.outcomes_for("unsigned@dest.test").is_empty(),
        "no outcome for the refused recipient"
    );
    assert_eq!(
        w.sinks[0].messages().len(),
        2,
        "exactly the two keyed messages"
    );
}

/// `reject_unsigned = true`, a key for the sender's domain `keyed.test`, and (when
/// `hostname_key`) one for Gannet's host name `gannet.test`: a recipient refused with 550 gets
/// the sender a DSN (From MAILER-DAEMON@gannet.test). Sinks 127.0.0.153 (dest.test) and
/// 127.0.0.154 (keyed.test, receives the DSN). Returns the world and the DSN.
async fn dsn_under_reject_unsigned(hostname_key: bool) -> (World, Transaction) {
    let mut zone = Zone::new()
        .mail_domain("dest.test", "127.0.0.153")
        .mail_domain("keyed.test", "127.0.0.154")
        .txt(
            "s1._domainkey.keyed.test",
            &public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await,
        );
    if hostname_key {
        zone = zone.txt(
            "host._domainkey.gannet.test",
            &public_record(&fixture_path("ed25519.pem"), KeyType::Ed25519).await,
        );
    }
    let w = World::start(&["127.0.0.153", "127.0.0.154"], zone, |c| {
        let mut c = c
            .file("k.pem", fixture("rsa2048.pem"))
            .file("h.pem", fixture("ed25519.pem"))
            .extra(&dkim_entry(
                "keyed.test",
                "s1",
                "rsa-sha256",
                "${DIR}/k.pem",
                &[],
            ));
        if hostname_key {
            c = c.extra(&dkim_entry(
                "gannet.test",
                "host",
                "ed25519-sha256",
                "${DIR}/h.pem",
                &[],
            ));
        }
        c.extra("[dkim_policy]\nreject_unsigned = true\ncheck_interval = \"0s\"\n")
    })
    .await;
    w.sinks[0].reject_rcpt("gone@dest.test", "550 5.1.1 no such user");
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "s@keyed.test",
        &["gone@dest.test"],
        b"From: s@keyed.test\r\nTo: gone@dest.test\r\nSubject: keyed\r\n\r\nx\r\n",
    )
    .await;
    let dsn = w.sinks[1].wait_for(1, WAIT).await[0].clone();
    assert_dsn(&dsn, "gone@dest.test", "failed");
    assert!(
        dsn.header("from")
            .unwrap_or_default()
            .contains("MAILER-DAEMON@gannet.test"),
        "{}",
        dsn.text()
    );
    (w, dsn)
}

/// Issue 15 item 5: with `reject_unsigned = true` and no key for the host name, Gannet's own
/// DSN is exempt from the policy and reaches the sender (it used to be refused and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_without_a_hostname_key_is_not_blocked_by_reject_unsigned() {
    let (w, dsn) = dsn_under_reject_unsigned(false).await;
    assert!(
        dsn.headers("dkim-signature").is_empty(),
        "no key applies to gannet.test: the DSN goes unsigned\n{}",
        dsn.text()
    );
    let sent = w
        .gannet
        .wait_outcomes(WAIT, "a `dsn` sent line", |os| {
            os.iter()
                .any(|o| o.event == "dsn" && o.get("status") == "sent")
        })
        .await;
    assert!(
        !sent
            .iter()
            .any(|o| o.event == "dsn" && o.get("status") == "failed"),
        "the DSN was never refused: {sent:#?}"
    );
}

/// Issue 15 item 5: with `reject_unsigned = true` and a key for the host name, Gannet's own
/// DSN is signed with it (d=gannet.test), and dkimpy verifies the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_is_signed_with_the_hostname_key_under_reject_unsigned() {
    let (w, dsn) = dsn_under_reject_unsigned(true).await;
    assert_verified(&w.dns, &[("dsn".into(), dsn.data.clone())], &|_| {
        vec![sig_id(
            "gannet.test",
            "host",
            "ed25519-sha256",
            "relaxed/relaxed",
        )]
    })
    .await;
}

/// Issue 3, item 6: with `fallback_domain`, mail whose From domain has no key is signed with
/// `d=` the fallback domain (a third-party signature that verifies), and is not refused even
/// with `reject_unsigned` on. The key's `headers` and `expire` shape `h=` and `x=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_domain_signs_mail_from_domains_without_a_key() {
    let zone = Zone::new().mail_domain("dest.test", "127.0.0.108").txt(
        "fb._domainkey.fallback.test",
        &public_record(&fixture_path("ed25519.pem"), KeyType::Ed25519).await,
    );
    let w = World::start(&["127.0.0.108"], zone, |c| {
        c.file("fb.pem", fixture("ed25519.pem"))
            .extra(&dkim_entry(
                "fallback.test",
                "fb",
                "ed25519-sha256",
                "${DIR}/fb.pem",
                &[
                    "expire = \"1h\"",
                    "headers = [\"From\", \"Subject\", \"X-Mailer-Id\", \"List-Id\"]",
                ],
            ))
            .extra(
                "[dkim_policy]\nfallback_domain = \"fallback.test\"\nreject_unsigned = true\n\
                 check_interval = \"0s\"\n",
            )
    })
    .await;
    let msg = b"From: Brand <news@customer.test>\r\nTo: r@dest.test\r\nSubject: fb\r\n\
                X-Mailer-Id: 42\r\n\r\nbody\r\n";
    SmtpClient::connect(w.gannet.smtp_addr())
        .await
        .send_message("bounce@customer.test", &["r@dest.test"], msg)
        .await;
    let t = w.sinks[0].wait_for(1, WAIT).await.remove(0);
    assert_verified(&w.dns, &[("fallback".into(), t.data.clone())], &|_| {
        vec![sig_id(
            "fallback.test",
            "fb",
            "ed25519-sha256",
            "relaxed/relaxed",
        )]
    })
    .await;

    // The entry's `headers` and `expire`: h= lists the configured fields present (List-Id is
    // not) plus From once more; x= is t= + 1 h.
    let tags = &sig_list(&t)[0];
    let h: Vec<String> = tags["h"]
        .split(':')
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let mut sorted = h.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["from", "from", "subject", "x-mailer-id"],
        "h={}",
        tags["h"]
    );
    let (t_tag, x_tag): (u64, u64) = (
        tags["t"].parse().expect("t="),
        tags.get("x")
            .and_then(|x| x.parse().ok())
            .expect("x= present"),
    );
    assert_eq!(x_tag - t_tag, 3600, "x= is t= plus expire (1h)");
}

// ---------------------------------------------------------------------------------------------
// 7. gannet_domain_check_ok on /metrics
// ---------------------------------------------------------------------------------------------

/// `gannet_domain_check_ok` samples on /metrics: (domain, check) → value.
fn domain_check_gauges(metrics: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("gannet_domain_check_ok{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert((label("domain"), label("check")), v);
        }
    }
    out
}

/// Issue 3, item 7: with a short `check_interval`, `gannet_domain_check_ok{domain,check}`
/// appears on /metrics for every check of every configured DKIM domain: 1 where the check
/// passes, 0 where it fails; fixing the DNS turns the gauge to 1 at a later run, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_check_gauges_on_metrics_follow_the_dns() {
    // The default pool sends from 192.0.2.110 (TEST-NET-1: see OUT1); no mail is sent here.
    let ip = "192.0.2.110";
    let rsa = public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await;
    let zone = |fixed: bool| {
        let mut z = Zone::new()
            .mail_domain("dest.test", "127.0.0.110")
            .ptr(ip, "out.metrics.test")
            .a("out.metrics.test", ip);
        for d in ["ok.test", "nodmarc.test"] {
            z = z
                .txt(d, &format!("v=spf1 ip4:{ip} -all"))
                .txt(&format!("s1._domainkey.{d}"), &rsa);
        }
        z = z.txt("_dmarc.ok.test", "v=DMARC1; p=none");
        if fixed {
            z = z.txt("_dmarc.nodmarc.test", "v=DMARC1; p=quarantine");
        }
        z
    };
    let w = World::start(&["127.0.0.110"], zone(false), |c| {
        c.sources(&[(ip, "out.metrics.test")])
            .file("k.pem", fixture("rsa2048.pem"))
            .extra(&dkim_entry(
                "ok.test",
                "s1",
                "rsa-sha256",
                "${DIR}/k.pem",
                &[],
            ))
            .extra(&dkim_entry(
                "nodmarc.test",
                "s1",
                "rsa-sha256",
                "${DIR}/k.pem",
                &[],
            ))
            .extra("[dkim_policy]\ncheck_interval = \"1s\"\n")
    })
    .await;
    let kinds = ["spf", "dkim", "dmarc", "alignment", "ptr"];
    let wait_gauges = |what: &'static str, want: BTreeMap<(String, String), f64>| {
        let g = &w.gannet;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (status, body) = g.http_get("/metrics").await;
                assert_eq!(status, 200);
                let got = domain_check_gauges(&body);
                if want.iter().all(|(k, v)| got.get(k) == Some(v)) {
                    return got;
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!(
                        "{what}: gannet_domain_check_ok never showed {want:?}\nlast seen: {got:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut want = BTreeMap::new();
    for d in ["ok.test", "nodmarc.test"] {
        for k in kinds {
            let v = if d == "nodmarc.test" && k == "dmarc" {
                0.0
            } else {
                1.0
            };
            want.insert((d.to_string(), k.to_string()), v);
        }
    }
    let got = wait_gauges("first run", want.clone()).await;
    let domains: BTreeSet<&str> = got.keys().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        domains,
        BTreeSet::from(["nodmarc.test", "ok.test"]),
        "only the configured DKIM domains are checked"
    );

    w.dns.set_zone(zone(true));
    want.insert(("nodmarc.test".into(), "dmarc".into()), 1.0);
    wait_gauges("after publishing _dmarc.nodmarc.test", want).await;
}
