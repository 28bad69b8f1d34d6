//! The fuzz entry points: one function per target, taking the fuzzer's bytes.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, nightly, libFuzzer) and by the
//! stable test `tests/fuzz_corpus.rs`, which replays every committed input under
//! `fuzz/corpus/<target>/` through the same function (so a crash found once stays fixed, and CI
//! with stable Rust runs the corpora). Each function returns normally for any input; a panic
//! (including a failed invariant `assert!` here) is a finding.
//!
//! Besides "does not panic", each checks what its code promises for any input: the session's
//! output and buffers stay within the listener's limits, the DATA decoder gives the same result
//! for any chunking, a decoded spool record encodes back to the same record, the bounce parser
//! never reports more recipients than the mail holds, a rendered message stays within its limit.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use gannet::config::Config;
use gannet::message::compose::{Batch, BatchRequest, Extras, Recipient};
use gannet::message::template::TemplateLimits;
use gannet::message::{Accepted, Rejection};
use gannet::metrics::Metrics;
use gannet::smtp::data::DataDecoder;
use gannet::smtp::protocol::{Action, Protocol, ProtocolConfig};
use gannet::spool::record;

/// One fuzz entry: the fuzzer's bytes in, a panic on a finding.
pub type Entry = fn(&[u8]);

/// Target names, as in `fuzz/Cargo.toml` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("smtp_session", smtp_session),
    ("data_decoder", data_decoder),
    ("spool_record", spool_record),
    ("config", config),
    ("bounce_report", bounce_report),
    ("template", template),
];

/// Listener limits the session target runs with (small, so the fuzzer reaches them).
const MAX_LINE: usize = 512;
const MAX_MESSAGE: usize = 16 * 1024;
const MAX_RCPTS: usize = 8;

/// Built once per process: parsing the embedded config per input would dominate the run.
fn session_config() -> Arc<ProtocolConfig> {
    static CFG: OnceLock<Arc<ProtocolConfig>> = OnceLock::new();
    CFG.get_or_init(build_session_config).clone()
}

fn build_session_config() -> Arc<ProtocolConfig> {
    let config = Config::embedded_default();
    let mut listener = config.listeners[0].clone();
    listener.max_line_length = MAX_LINE;
    listener.max_message_size = MAX_MESSAGE;
    listener.max_recipients = MAX_RCPTS;
    listener.max_errors = 20;
    // Relay rights for 127.0.0.0/8 (the embedded default): the fuzzer reaches DATA without AUTH;
    // AUTH is offered too (after STARTTLS, which the harness "completes").
    Arc::new(ProtocolConfig::new(
        &config,
        &listener,
        true,
        true,
        Metrics::new(),
    ))
}

/// The SMTP session state machine (smtp-proto's command parser, sequencing, AUTH, DATA and
/// BDAT framing). The first byte picks the read size; the rest is what a client sends. The
/// socket loop's side is played here: TLS handshakes succeed, passwords are "secret", and
/// every other message is accepted.
pub fn smtp_session(data: &[u8]) {
    let Some((&seed, mut input)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(seed % 64) * 7;
    let cfg = session_config();
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let mut p = Protocol::new(cfg, ip, false);
    let mut submitted = 0u32;
    let mut steps = 0usize;
    'session: while !input.is_empty() {
        let n = chunk.min(input.len());
        let mut piece = &input[..n];
        input = &input[n..];
        loop {
            steps += 1;
            assert!(steps < 1_000_000, "the session does not make progress");
            let action = p.advance(&mut piece);
            // A pipelined group's replies are bounded: a read can hold at most `chunk` bytes,
            // and no command yields more than one short reply (EHLO's is the longest).
            assert!(
                p.output().len() <= 4096 + 512 * (chunk + 1),
                "{} bytes of replies pending",
                p.output().len()
            );
            p.clear_output();
            match action {
                Action::Read => {
                    assert!(piece.is_empty(), "Read returned with input left");
                    break;
                }
                Action::Close => {
                    assert!(p.is_closed());
                    break 'session;
                }
                Action::StartTls => {
                    // RFC 3207 §4.2: input pipelined after STARTTLS is discarded.
                    piece = &[];
                    p.tls_established();
                }
                Action::Authenticate(creds) => p.auth_result(creds.password == "secret"),
                Action::Submit(sub) => {
                    assert!(
                        !sub.envelope.rcpts.is_empty(),
                        "a message without recipients"
                    );
                    assert!(sub.envelope.rcpts.len() <= MAX_RCPTS);
                    // The Received: line plus at most the limit (bare line ends become CRLF,
                    // so the content can double).
                    assert!(
                        sub.body.len() <= 2 * MAX_MESSAGE + 4096,
                        "submission of {} bytes",
                        sub.body.len()
                    );
                    submitted += 1;
                    let result = if submitted % 2 == 1 {
                        Ok(Accepted {
                            queue_id: format!("q{submitted}"),
                        })
                    } else {
                        Err(Rejection::new(451, "4.3.0", "try again"))
                    };
                    p.submitted(result);
                }
            }
        }
    }
}

/// The DATA decoder (CRLF.CRLF only, dot-unstuffing, smtp-proto#14): feeding the same bytes in
/// two different chunkings must give the same content, the same end and the same rest.
pub fn data_decoder(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode_in_chunks(input, usize::MAX);
    let split = decode_in_chunks(input, 1 + usize::from(seed % 16));
    assert_eq!(whole, split, "chunking changed the decoded message");
    let (content, done, rest) = whole;
    if done {
        assert!(rest <= input.len());
        // The terminator is CRLF.CRLF; what ends DATA is never a bare LF.
        let consumed = &input[..input.len() - rest];
        assert!(
            consumed.ends_with(b".\r\n"),
            "ended on {:?}",
            &consumed[consumed.len().saturating_sub(5)..]
        );
    }
    assert!(content.len() <= input.len() * 2 + 2);
    let _ = gannet::smtp::data::has_bare_line_ends(&content);
    let mut normalised = Vec::new();
    gannet::smtp::data::append_normalised(&content, &mut normalised);
    assert!(
        !gannet::smtp::data::has_bare_line_ends(&normalised),
        "normalised content still has a bare CR or LF"
    );
}

/// (content, ended, bytes left after the end) decoding `input` in reads of `chunk` bytes.
fn decode_in_chunks(input: &[u8], chunk: usize) -> (Vec<u8>, bool, usize) {
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = pos.saturating_add(chunk).min(input.len());
        let mut piece = &input[pos..end];
        let done = d.feed(&mut piece, &mut out);
        if done {
            let rest = piece.len() + (input.len() - end);
            return (out, true, rest);
        }
        assert!(piece.is_empty(), "feed stopped before the end of its input");
        pos = end;
    }
    (out, false, 0)
}

/// The spool's record reader: a scan of arbitrary segment bytes, and a decode of arbitrary
/// payload bytes behind a valid header and checksum (so the fuzzer gets past the CRC). A
/// record that decodes must encode back to itself, plain and sealed. Sealed records are opened
/// with a fixed key.
pub fn spool_record(data: &[u8]) {
    let key = gannet::spool::SpoolKey::new(gannet::sendlog::MasterKey::from_bytes([7; 32]));
    let found = record::scan_with(data, Some(&key));
    let mut expect = 0usize;
    for f in &found {
        let (offset, len) = match f {
            record::Found::Record { offset, len, .. }
            | record::Found::Damaged { offset, len, .. }
            | record::Found::Shredded { offset, len } => (*offset, *len),
            record::Found::TornTail { offset, .. } => (*offset, data.len() - offset),
        };
        assert_eq!(offset, expect, "scan skipped or overlapped bytes");
        assert!(len > 0, "an empty stretch");
        expect = offset + len;
    }
    assert_eq!(expect, data.len(), "scan did not cover the segment");

    let mut framed = Vec::with_capacity(data.len() + record::HEADER_LEN);
    framed.extend_from_slice(&record::MAGIC.to_le_bytes());
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(rec) = record::decode(&framed) {
        let again = record::decode(&record::encode(&rec)).expect("an encoded record decodes");
        assert_eq!(rec, again, "a record changed through encode and decode");
        let sealed = record::encode_sealed(&rec, &key);
        let opened = record::decode_with(&sealed, Some(&key)).expect("a sealed record opens");
        assert_eq!(rec, opened, "a record changed through sealing and opening");
    }
}

/// Config parsing and validation: any text gives a value or an error with a message, never a
/// panic. The same text goes to the three operator-edited files: `gannet.toml`, the shaping
/// presets (`config/shaping.toml`) and the bounce rules (`config/bounce_rules.toml`).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(c) => {
            let _ = c.fallback_class();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Err(e) = gannet::shaping::Shaping::from_toml(text, "shaping.toml") {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = gannet::bounce::classify::Classifier::from_toml(text, "bounce_rules.toml") {
        assert!(!e.to_string().is_empty());
    }
}

/// Returned-mail parsing (RFC 3464/6533 DSNs, non-standard bounces, ARF, auto-replies) and
/// its classification, the path every inbound bounce takes.
pub fn bounce_report(data: &[u8]) {
    // Built once per process: compiling the rules per input would dominate the run.
    static RULES: OnceLock<gannet::bounce::classify::Classifier> = OnceLock::new();
    let classifier = RULES.get_or_init(gannet::bounce::classify::Classifier::builtin);
    let a = gannet::bounce::report::analyse(data, classifier, None);
    let json = serde_json::to_string(&a).expect("an analysis serialises");
    assert!(!json.is_empty());
}

/// Template rendering for HTTP injection (minijinja in header and HTML context, header-safety
/// checks, mail-builder). Input: a JSON `BatchRequest` when it parses as one; otherwise the text
/// is split at NUL bytes into subject, text and html templates, rendered for recipients whose
/// variables carry CR/LF, encoded-words and markup.
pub fn template(data: &[u8]) {
    let limits = TemplateLimits {
        max_template_bytes: 64 * 1024,
        max_rendered_bytes: 256 * 1024,
        fuel: 50_000,
    };
    let (req, own_headers): (BatchRequest, bool) = match serde_json::from_slice(data) {
        // A request's own raw `content` may hold any header it likes.
        Ok(r) => (r, true),
        Err(_) => {
            let Ok(text) = std::str::from_utf8(data) else {
                return;
            };
            let mut parts = text.splitn(3, '\0');
            let subject = parts.next().map(str::to_string);
            let body = parts.next().map(str::to_string);
            let html = parts.next().map(str::to_string);
            let req = serde_json::json!({
                "from": {"email": "news@origin.test", "name": "News"},
                "subject": subject,
                "text": body.or_else(|| Some("{{ name }}".into())),
                "html": html,
                "headers": {"X-Campaign-Ref": "{{ ref }}"},
                "substitutions": {"ref": "r-1", "items": [1, 2, 3], "name": "shared"},
                "recipients": [
                    {"email": "a@dest.test", "name": "A", "substitutions": {"name": "x\r\nBcc: evil@x.test"}},
                    {"email": "b@dest.test", "substitutions": {"name": "=?utf-8?q?x?=", "ref": "<b>&"}},
                    {"email": "c@dest.test", "substitutions": {"name": "plain", "ref": "ok"}}
                ]
            });
            match serde_json::from_value(req) {
                Ok(r) => (r, false),
                Err(_) => return,
            }
        }
    };
    let Ok(batch) = Batch::prepare(&req, limits) else {
        return;
    };
    let extras = Extras {
        message_id: "fuzz".into(),
        hostname: "gannet.test".into(),
        date: 1_700_000_000,
        extra_headers: vec!["List-Unsubscribe: <mailto:u@gannet.test>".into()],
    };
    for rcpt in req.recipients.iter().take(4) {
        check_built(&batch, rcpt, &extras, limits, own_headers);
    }
}

fn check_built(
    batch: &Batch,
    rcpt: &Recipient,
    extras: &Extras,
    limits: TemplateLimits,
    own_headers: bool,
) {
    let Ok(msg) = batch.build(rcpt, extras) else {
        return;
    };
    // Bodies are encoded (base64/QP) after the limit is checked on rendered text.
    assert!(
        msg.len() <= limits.max_rendered_bytes * 2 + 64 * 1024,
        "message of {} bytes",
        msg.len()
    );
    if own_headers {
        return;
    }
    // Header injection: every header line is a field or a folded continuation; a rendered
    // value never starts a field of its own (`Bcc:` from a variable).
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    for line in head.split("\r\n") {
        assert!(
            !line.to_ascii_lowercase().starts_with("bcc:"),
            "a Bcc: field appeared in the header:\n{head}"
        );
    }
}
