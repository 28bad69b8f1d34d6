//! Tests for the SMTP server: `protocol` drives the sans-I/O state machine with tables of byte
//! chunks; `session` speaks SMTP to real listeners on 127.0.0.1 through `client`.

mod client;
mod protocol;
mod session;

use std::sync::Arc;

use crate::config::Config;

/// A valid config with one listener named "test" on 127.0.0.1 port 0 and small limits.
/// `listener` holds extra `key = value` lines for it, replacing the defaults of the same key;
/// `tail` is appended (e.g. `[[smtp_user]]` blocks).
pub(super) fn config(listener: &str, tail: &str) -> Arc<Config> {
    let defaults = [
        ("name", r#""test""#),
        ("address", r#""127.0.0.1:0""#),
        ("relay_from", r#"["127.0.0.0/8", "::1/128"]"#),
        ("max_message_size", "1000"),
        ("max_recipients", "3"),
        ("max_line_length", "512"),
        ("max_errors", "5"),
    ];
    let overridden = |key: &str| {
        listener
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
    };
    let mut keys = String::new();
    for (key, value) in defaults {
        if !overridden(key) {
            keys.push_str(&format!("{key} = {value}\n"));
        }
    }
    let text = format!(
        r#"hostname = "mx.test"

[[listener]]
{keys}{listener}

[[pool]]
name = "p"
sources = [{{ ip = "127.0.0.1", ehlo = "h" }}]

[class.c]
pool = "p"

{tail}
"#
    );
    Arc::new(Config::from_toml(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}")))
}

/// Printable form of protocol bytes for transcripts.
pub(super) fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => s.push_str("\\r"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The message content after the `Received:` field the listener prepends.
pub(super) fn after_received(body: &[u8]) -> &[u8] {
    assert!(
        body.starts_with(b"Received: from "),
        "body does not start with Received: {}",
        show(body)
    );
    let mut at = 0;
    loop {
        let p = at + memchr::memmem::find(&body[at..], b"\r\n").expect("Received ends in CRLF");
        if !matches!(body.get(p + 2), Some(b' ' | b'\t')) {
            return &body[p + 2..];
        }
        at = p + 2;
    }
}
