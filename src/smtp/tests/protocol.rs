//! Table tests of the sans-I/O session: byte chunks in, replies and submissions out. Each
//! table row is one client conversation; the harness plays the socket loop (a stand-in
//! acceptor, a password check that accepts "secret", a TLS handshake that always works).

use std::net::IpAddr;
use std::sync::Arc;

use super::{after_received, config, show};
use crate::message::{Accepted, Rejection, Submission};
use crate::metrics::Metrics;
use crate::smtp::protocol::{Action, Protocol, ProtocolConfig};

struct Opts {
    listener: &'static str,
    ip: &'static str,
    implicit_tls: bool,
    starttls: bool,
    auth: bool,
    reject: Option<Rejection>,
}

const DEFAULT: Opts = Opts {
    listener: "",
    ip: "127.0.0.1",
    implicit_tls: false,
    starttls: false,
    auth: false,
    reject: None,
};

struct Harness {
    proto: Protocol,
    /// Client chunks and server writes in order, for failure messages.
    transcript: Vec<String>,
    /// The concatenation of everything the server wrote.
    written: Vec<u8>,
    /// Server writes (one per flush point: input drained, TLS start, close).
    writes: Vec<String>,
    submissions: Vec<Submission>,
    closed: bool,
    reject: Option<Rejection>,
    metrics: Metrics,
}

impl Harness {
    fn new(opts: Opts) -> Harness {
        let config = config(opts.listener, "");
        let metrics = Metrics::new();
        let cfg = ProtocolConfig::new(
            &config,
            &config.listeners[0],
            opts.starttls,
            opts.auth,
            metrics.clone(),
        );
        let ip: IpAddr = opts.ip.parse().unwrap();
        let mut h = Harness {
            proto: Protocol::new(Arc::new(cfg), ip, opts.implicit_tls),
            transcript: Vec::new(),
            written: Vec::new(),
            writes: Vec::new(),
            submissions: Vec::new(),
            closed: false,
            reject: opts.reject,
            metrics,
        };
        h.flush();
        h
    }

    fn flush(&mut self) {
        let out = self.proto.output().to_vec();
        self.proto.clear_output();
        if !out.is_empty() {
            self.transcript.push(format!("S: {}", show(&out)));
            self.writes.push(String::from_utf8_lossy(&out).into_owned());
            self.written.extend_from_slice(&out);
        }
    }

    /// Feed one chunk as if it came from one read, and play the socket loop until the
    /// protocol wants more input or closes.
    fn feed(&mut self, chunk: &[u8]) {
        self.transcript.push(format!("C: {}", show(chunk)));
        if self.closed {
            return;
        }
        let mut input = chunk;
        loop {
            match self.proto.advance(&mut input) {
                Action::Read => {
                    assert!(input.is_empty(), "Read with input left");
                    self.flush();
                    return;
                }
                Action::Close => {
                    self.flush();
                    self.closed = true;
                    return;
                }
                Action::StartTls => {
                    self.flush();
                    if !input.is_empty() {
                        self.transcript
                            .push(format!("(discarded after STARTTLS: {})", show(input)));
                    }
                    input = &[];
                    self.transcript.push("(tls handshake)".into());
                    self.proto.tls_established();
                }
                Action::Authenticate(c) => {
                    self.proto
                        .auth_result(c.user == "alice" && c.password == "secret");
                }
                Action::Submit(s) => {
                    self.submissions.push(*s);
                    let result = match &self.reject {
                        Some(r) => Err(r.clone()),
                        None => Ok(Accepted {
                            queue_id: format!("Q{}", self.submissions.len()),
                        }),
                    };
                    self.proto.submitted(result);
                }
            }
        }
    }

    fn feed_all(&mut self, chunks: &[&[u8]]) {
        for c in chunks {
            self.feed(c);
        }
    }

    /// Every reply, one string per reply (multi-line replies joined with `\n`).
    fn replies(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.written);
        let mut out = Vec::new();
        let mut current = String::new();
        for line in text.split_terminator("\r\n") {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(line);
            if line.as_bytes().get(3) != Some(&b'-') {
                out.push(std::mem::take(&mut current));
            }
        }
        out
    }

    /// Assert the replies start with these prefixes, in order, and there are no others.
    #[track_caller]
    fn expect(&self, what: &str, prefixes: &[&str]) {
        let replies = self.replies();
        let ok = replies.len() == prefixes.len()
            && replies.iter().zip(prefixes).all(|(r, p)| r.starts_with(p));
        if !ok {
            panic!(
                "{what}: expected replies {prefixes:?}\n got {replies:?}\n--- exchange ---\n{}",
                self.transcript.join("\n")
            );
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.submissions
            .iter()
            .map(|s| show(after_received(&s.body)))
            .collect()
    }
}

const EHLO: &[u8] = b"EHLO client.test\r\n";
const MAIL: &[u8] = b"MAIL FROM:<a@sender.test>\r\n";
const RCPT: &[u8] = b"RCPT TO:<b@rcpt.test>\r\n";
const MSG: &[u8] = b"Subject: t\r\n\r\nhello\r\n.\r\n";

/// (what, chunks, expected reply prefixes, expected message contents after Received:)
type Row = (
    &'static str,
    &'static [&'static [u8]],
    &'static [&'static str],
    &'static [&'static str],
);

const TABLE: &[Row] = &[
    (
        "full transaction, one command per read",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", MSG, b"QUIT\r\n"],
        &["220 mx.test", "250-mx.test", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0 Ok: queued as Q1", "221 2.0.0"],
        &["Subject: t\\r\\n\\r\\nhello\\r\\n"],
    ),
    (
        "whole session in one read (client does not wait for 354)",
        &[b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221"],
        &["hi\\r\\n"],
    ),
    (
        "commands split across reads",
        &[b"EH", b"LO client.test\r", b"\nMAIL FROM:<a@", b"sender.test>\r\nRC", b"PT TO:<b@rcpt.test>", b"\r\n", b"DA", b"TA\r\n", b"x\r\n.", b"\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["x\\r\\n"],
    ),
    (
        "commands may end in a bare LF",
        &[b"EHLO c\nMAIL FROM:<a@s.test>\nRCPT TO:<b@r.test>\nNOOP\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0"],
        &[],
    ),
    (
        "empty message: '.' right after 354 (smtp-proto#14)",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b".\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &[""],
    ),
    (
        "leading '..' on the first line is unstuffed (smtp-proto#14)",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"..dot first\r\n..\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &[".dot first\\r\\n.\\r\\n"],
    ),
    (
        "bare-LF smuggling: \\n.\\n does not end DATA; the smuggled commands are content",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"Subject: s\r\n\r\nhi\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<victim@y.test>\nDATA\nforged\n.\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["Subject: s\\r\\n\\r\\nhi\\r\\n.\\r\\nMAIL FROM:<evil@x.test>\\r\\nRCPT TO:<victim@y.test>\\r\\nDATA\\r\\nforged\\r\\n.\\r\\n"],
    ),
    (
        "smuggling with CRLF . CR CR LF: not the end of data",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"hi\r\n.\r\r\nRSET\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["hi\\r\\n\\r\\n\\r\\nRSET\\r\\n"],
    ),
    (
        "bare CR and bare LF in content become CRLF in what is handed on",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"a\nb\rc\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["a\\r\\nb\\r\\nc\\r\\n"],
    ),
    (
        "8-bit content passes intact",
        &[EHLO, b"MAIL FROM:<a@s.test> BODY=8BITMIME\r\n", RCPT, b"DATA\r\n", b"Subject: caf\xc3\xa9\r\n\r\n\xe2\x82\xac \xff\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["Subject: café\\r\\n\\r\\n€ \\xff\\r\\n"],
    ),
    (
        "commands pipelined after the end of data are answered after the 250, in order",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"one\r\n.\r\nMAIL FROM:<c@s.test>\r\nRCPT TO:<d@r.test>\r\nDATA\r\n", b"two\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0 Ok: queued as Q1", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0 Ok: queued as Q2"],
        &["one\\r\\n", "two\\r\\n"],
    ),
    (
        "BDAT chunks",
        &[EHLO, MAIL, RCPT, b"BDAT 5\r\nhello", b"BDAT 8 LAST\r\n world\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 5 octets received", "250 2.0.0 Ok: queued as Q1"],
        &["hello world\\r\\n"],
    ),
    (
        "BDAT chunk split over reads, pipelined with MAIL/RCPT",
        &[b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nBDAT 13 LAST\r\nabc", b"def\r\n", b"ghi", b"\r\nNOOP\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: queued as Q1", "250 2.0.0"],
        &["abcdef\\r\\nghi\\r\\n"],
    ),
    (
        "BDAT content is not dot-unstuffed and gets a final CRLF",
        &[EHLO, MAIL, RCPT, b"BDAT 8 LAST\r\n..\r\n.\r\nx"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0"],
        &["..\\r\\n.\\r\\nx\\r\\n"],
    ),
    (
        "BDAT size larger than what is sent: the count frames the chunk, the rest is commands",
        &[EHLO, MAIL, RCPT, b"BDAT 10 LAST\r\nhello\r\nQUIT\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0", "500 5.5.1"],
        &["hello\\r\\nQUI\\r\\n"],
    ),
    (
        "BDAT size smaller than what is sent: the surplus is parsed as a command",
        &[EHLO, MAIL, RCPT, b"BDAT 3 LAST\r\nhello\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0", "500 5.5.1"],
        &["hel\\r\\n"],
    ),
    (
        "BDAT 0 LAST ends a chunked message",
        &[EHLO, MAIL, RCPT, b"BDAT 4\r\nab\r\n", b"BDAT 0 LAST\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 4 octets", "250 2.0.0 Ok: queued"],
        &["ab\\r\\n"],
    ),
    (
        "BDAT 0 LAST alone is an empty message",
        &[EHLO, MAIL, RCPT, b"BDAT 0 LAST\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: queued"],
        &[""],
    ),
    (
        "BDAT without MAIL: chunk bytes are read and dropped, then 503",
        &[EHLO, b"BDAT 6\r\nNOOP\r\nNOOP\r\n"],
        &["220", "250-", "503 5.5.1", "250 2.0.0"],
        &[],
    ),
    (
        "DATA after BDAT is refused",
        &[EHLO, MAIL, RCPT, b"BDAT 2\r\nab", b"DATA\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 2 octets", "503 5.5.1"],
        &[],
    ),
    (
        "over-long command line: 500 5.5.2 and the session continues",
        &[EHLO, b"NOOP ", &[b'x'; 600], b"\r\nNOOP\r\n"],
        &["220", "250-", "500 5.5.2", "250 2.0.0"],
        &[],
    ),
    (
        "binary garbage is an unknown command, the session continues",
        &[b"\x00\x01\xff\xfe\x80garbage\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", EHLO],
        &["220", "500 5.5.1", "500 5.5.1", "250-"],
        &[],
    ),
    (
        "bad sequence: MAIL before EHLO, RCPT before MAIL, DATA before RCPT, nested MAIL",
        &[MAIL, EHLO, RCPT, b"DATA\r\n", MAIL, MAIL],
        &["220", "503 5.5.1", "250-", "503 5.5.1", "503 5.5.1", "250 2.1.0", "503 5.5.1"],
        &[],
    ),
    (
        "DATA before RCPT, pipelined: 503 for DATA and the body lines are commands",
        &[EHLO, b"MAIL FROM:<a@s.test>\r\nDATA\r\n"],
        &["220", "250-", "250 2.1.0", "503 5.5.1"],
        &[],
    ),
    (
        "syntax errors and unknown commands",
        &[EHLO, b"MAIL FROM:nobrackets@x\r\n", b"RCPT\r\n", b"FROB\r\n", b"EHLO\r\n"],
        &["220", "250-", "501 5.5.4", "501 5.5.4", "500 5.5.1", "501 5.5.4"],
        &[],
    ),
    (
        "bad addresses",
        &[EHLO, b"MAIL FROM:<a b@c>\r\n", MAIL, b"RCPT TO:<not an address>\r\n", b"RCPT TO:<>\r\n"],
        &["220", "250-", "501 5.1.7", "250 2.1.0", "501 5.1.3", "501 5.1.3"],
        &[],
    ),
    (
        "unadvertised parameters get 555 5.5.4",
        &[EHLO, b"MAIL FROM:<a@s.test> RET=FULL\r\n", b"MAIL FROM:<a@s.test> BODY=BINARYMIME\r\n", b"MAIL FROM:<a@s.test> FROB=1\r\n", MAIL, b"RCPT TO:<b@r.test> NOTIFY=NEVER\r\n"],
        &["220", "250-", "555 5.5.4", "555 5.5.4", "555 5.5.4", "250 2.1.0", "555 5.5.4"],
        &[],
    ),
    (
        "SIZE= over the limit is refused at MAIL",
        &[EHLO, b"MAIL FROM:<a@s.test> SIZE=1001\r\n", b"MAIL FROM:<a@s.test> SIZE=1000\r\n"],
        &["220", "250-", "552 5.3.4", "250 2.1.0"],
        &[],
    ),
    (
        "DATA content over the limit: read to the end, then 552 5.3.4, nothing handed on",
        &[EHLO, MAIL, RCPT, b"DATA\r\n", &[b'x'; 700], b"\r\n", &[b'y'; 700], b"\r\n.\r\n", MAIL, RCPT, b"DATA\r\n", b"small\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
        &["small\\r\\n"],
    ),
    (
        "BDAT over the limit: every chunk is read, each answered 552 5.3.4",
        &[EHLO, MAIL, RCPT, b"BDAT 600\r\n", &[b'x'; 600], b"BDAT 600\r\n", &[b'y'; 600], b"BDAT 10 LAST\r\n0123456789NOOP\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0 600 octets", "552 5.3.4", "552 5.3.4", "250 2.0.0"],
        &[],
    ),
    (
        "too many recipients: 452 4.5.3, the message goes to the accepted ones",
        &[EHLO, MAIL, b"RCPT TO:<1@r.test>\r\nRCPT TO:<2@r.test>\r\nRCPT TO:<3@r.test>\r\nRCPT TO:<4@r.test>\r\nDATA\r\n", b"m\r\n.\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354", "250 2.0.0"],
        &["m\\r\\n"],
    ),
    (
        "RSET clears the transaction",
        &[EHLO, MAIL, RCPT, b"RSET\r\nDATA\r\n"],
        &["220", "250-", "250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"],
        &[],
    ),
    (
        "VRFY 252, NOOP, HELP, EXPN not implemented",
        &[EHLO, b"VRFY someone\r\nNOOP\r\nHELP\r\nEXPN list\r\n"],
        &["220", "250-", "252 2.5.0", "250 2.0.0", "214 2.0.0", "502 5.5.1"],
        &[],
    ),
    (
        "STARTTLS and AUTH are refused when not offered",
        &[EHLO, b"STARTTLS\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"],
        &["220", "250-", "502 5.5.1", "502 5.5.1"],
        &[],
    ),
    (
        "non-ASCII addresses need SMTPUTF8",
        &[EHLO, b"MAIL FROM:<j\xc3\xb6rg@s.test>\r\n", b"MAIL FROM:<j\xc3\xb6rg@s.test> SMTPUTF8\r\n", b"RCPT TO:<\xce\xb4@\xce\xb4.test>\r\n"],
        &["220", "250-", "553 5.6.7", "250 2.1.0", "250 2.1.5"],
        &[],
    ),
    (
        "invalid UTF-8 in an address is refused",
        &[EHLO, b"MAIL FROM:<a\xff@s.test> SMTPUTF8\r\n"],
        &["220", "250-", "501 5.1.7"],
        &[],
    ),
    (
        "QUIT closes; nothing after it is read",
        &[b"QUIT\r\nNOOP\r\n", b"NOOP\r\n"],
        &["220", "221 2.0.0"],
        &[],
    ),
];

#[test]
fn protocol_table() {
    for (what, chunks, replies, bodies) in TABLE {
        let mut h = Harness::new(DEFAULT);
        h.feed_all(chunks);
        h.expect(what, replies);
        assert_eq!(
            h.bodies(),
            bodies.to_vec(),
            "{what}\n{}",
            h.transcript.join("\n")
        );
    }
}

/// Every row gives the same replies and messages when the client sends one byte per read.
#[test]
fn protocol_table_byte_by_byte() {
    for (what, chunks, replies, bodies) in TABLE {
        let mut h = Harness::new(DEFAULT);
        for b in chunks.concat() {
            h.feed(&[b]);
        }
        h.expect(what, replies);
        assert_eq!(h.bodies(), bodies.to_vec(), "{what} (byte by byte)");
    }
}

/// RFC 2920: replies to a pipelined group are written together, once the input is drained.
#[test]
fn pipelined_group_gets_one_write() {
    let mut h = Harness::new(DEFAULT);
    h.feed(EHLO);
    let before = h.writes.len();
    h.feed(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nRCPT TO:<c@r.test>\r\nDATA\r\n");
    assert_eq!(h.writes.len(), before + 1, "{:?}", h.writes);
    let last = h.writes.last().unwrap();
    assert!(
        last.starts_with("250 2.1.0")
            && last.contains("250 2.1.5")
            && last.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{last:?}"
    );
}

/// A 100 kB line arriving in 8 kB reads gives one 500 5.5.2; nothing past the limit is kept.
#[test]
fn hundred_kb_line() {
    let mut h = Harness::new(DEFAULT);
    h.feed(EHLO);
    let mut line = b"MAIL FROM:<".to_vec();
    line.extend(std::iter::repeat_n(b'a', 100_000));
    line.extend_from_slice(b"@x.test>\r\n");
    for chunk in line.chunks(8192) {
        h.feed(chunk);
    }
    h.feed(b"NOOP\r\n");
    h.expect("100 kB line", &["220", "250-", "500 5.5.2", "250 2.0.0"]);
    assert!(
        h.proto.buffered_line_capacity() <= 2 * 512,
        "line buffer grew past the limit"
    );
}

/// A line one byte under, at, and over the limit (512 with CRLF).
#[test]
fn line_limit_is_exact() {
    for (len, expect) in [(511, "250 2.0.0"), (512, "250 2.0.0"), (513, "500 5.5.2")] {
        let mut line = b"NOOP ".to_vec();
        line.resize(len - 2, b'x');
        line.extend_from_slice(b"\r\n");
        for chunks in [
            vec![line.clone()],
            line.chunks(100).map(|c| c.to_vec()).collect(),
        ] {
            let mut h = Harness::new(DEFAULT);
            for c in &chunks {
                h.feed(c);
            }
            h.expect(&format!("line of {len} bytes"), &["220", expect]);
        }
    }
}

#[test]
fn too_many_errors_closes_with_421() {
    let mut h = Harness::new(DEFAULT); // max_errors = 5
    h.feed(b"X\r\nX\r\nX\r\nX\r\nX\r\nX\r\nNOOP\r\n");
    h.feed(b"NOOP\r\n");
    h.expect(
        "sixth error",
        &["220", "500", "500", "500", "500", "500", "421 4.7.0"],
    );
    assert!(h.closed);
}

#[test]
fn relay_denied_outside_relay_from() {
    let mut h = Harness::new(Opts {
        ip: "192.0.2.7",
        ..DEFAULT
    });
    h.feed_all(&[EHLO, MAIL, RCPT, b"DATA\r\n"]);
    h.expect(
        "relay",
        &["220", "250-", "250 2.1.0", "550 5.7.1", "554 5.5.1"],
    );
    assert!(h.submissions.is_empty());
    let rendered = h.metrics.render();
    assert!(
        rendered.contains(r#"gannet_rejected_total{code="550",listener="test"} 1"#),
        "{rendered}"
    );
}

#[test]
fn ipv4_mapped_client_matches_ipv4_relay_network() {
    let mut h = Harness::new(Opts {
        ip: "::ffff:127.0.0.9",
        ..DEFAULT
    });
    h.feed_all(&[EHLO, MAIL, RCPT]);
    h.expect("mapped", &["220", "250-", "250 2.1.0", "250 2.1.5"]);
}

#[test]
fn require_auth_refuses_mail_before_auth() {
    let mut h = Harness::new(Opts {
        listener: "require_auth = true",
        ..DEFAULT
    });
    h.feed_all(&[EHLO, MAIL]);
    h.expect("require_auth", &["220", "250-", "530 5.7.0"]);
}

#[test]
fn starttls_discards_pipelined_commands_and_resets_the_session() {
    let mut h = Harness::new(Opts {
        starttls: true,
        auth: true,
        ..DEFAULT
    });
    h.feed(EHLO);
    assert!(h.writes.last().unwrap().contains("\r\n250 STARTTLS\r\n"));
    assert!(
        !h.writes.last().unwrap().contains("AUTH"),
        "AUTH offered before TLS"
    );
    // Command injection (CVE-2011-0411 style): MAIL after STARTTLS in the same packet.
    h.feed(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    h.feed(MAIL);
    h.feed(EHLO);
    h.expect(
        "starttls",
        &["220", "250-", "220 2.0.0", "503 5.5.1", "250-"],
    );
    let ehlo = h.writes.last().unwrap();
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    h.feed(b"STARTTLS\r\n");
    h.expect(
        "second starttls",
        &["220", "250-", "220 2.0.0", "503 5.5.1", "250-", "503 5.5.1"],
    );
}

#[test]
fn auth_before_tls_is_refused() {
    let mut h = Harness::new(Opts {
        starttls: true,
        auth: true,
        ..DEFAULT
    });
    h.feed_all(&[EHLO, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"]);
    h.expect("auth before tls", &["220", "250-", "538 5.7.11"]);
}

fn tls_auth_harness() -> Harness {
    let mut h = Harness::new(Opts {
        ip: "192.0.2.7", // outside relay_from: only AUTH allows relaying
        implicit_tls: true,
        auth: true,
        ..DEFAULT
    });
    h.feed(EHLO);
    h
}

#[test]
fn auth_plain_success_allows_relay() {
    let mut h = tls_auth_harness();
    // "\0alice\0secret"
    h.feed_all(&[
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        MAIL,
        RCPT,
        b"DATA\r\n",
        b"x\r\n.\r\n",
    ]);
    h.expect(
        "auth plain",
        &[
            "220",
            "250-",
            "235 2.7.0",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
        ],
    );
    let s = &h.submissions[0];
    assert_eq!(s.origin.auth_user.as_deref(), Some("alice"));
    let received = show(&s.body);
    assert!(received.contains("with ESMTPSA id"), "{received}");
}

#[test]
fn auth_plain_without_initial_response() {
    let mut h = tls_auth_harness();
    h.feed_all(&[b"AUTH PLAIN\r\n", b"AGFsaWNlAHNlY3JldA==\r\n"]);
    h.expect("auth plain 334", &["220", "250-", "334", "235 2.7.0"]);
}

#[test]
fn auth_plain_failure() {
    let mut h = tls_auth_harness();
    // "\0alice\0wrong"
    h.feed_all(&[b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n", MAIL, RCPT]);
    h.expect(
        "auth plain fail",
        &["220", "250-", "535 5.7.8", "250 2.1.0", "550 5.7.1"],
    );
}

#[test]
fn auth_login_success_and_failure() {
    let mut h = tls_auth_harness();
    // alice / wrong, then alice / secret
    h.feed_all(&[b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"d3Jvbmc=\r\n"]);
    h.feed_all(&[
        b"AUTH LOGIN YWxpY2U=\r\n",
        b"c2VjcmV0\r\n",
        b"AUTH LOGIN\r\n",
    ]);
    h.expect(
        "auth login",
        &[
            "220",
            "250-",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0",
            "503 5.5.1",
        ],
    );
}

#[test]
fn auth_cancel_and_garbage() {
    let mut h = tls_auth_harness();
    h.feed_all(&[
        b"AUTH LOGIN\r\n",
        b"*\r\n",
        b"AUTH PLAIN\r\n",
        b"!!!\r\n",
        b"AUTH CRAM-MD5\r\n",
    ]);
    h.expect(
        "auth cancel",
        &[
            "220",
            "250-",
            "334",
            "501 5.7.0",
            "334",
            "501 5.5.2",
            "504 5.5.4",
        ],
    );
}

#[test]
fn received_line_names_helo_ip_host_and_protocol() {
    for (helo, mail, ip, with) in [
        (&b"HELO old.test\r\n"[..], MAIL, "127.0.0.1", "SMTP"),
        (EHLO, MAIL, "127.0.0.1", "ESMTP"),
        (
            EHLO,
            &b"MAIL FROM:<a@s.test> SMTPUTF8\r\n"[..],
            "::1",
            "UTF8SMTP",
        ),
    ] {
        let mut h = Harness::new(Opts { ip, ..DEFAULT });
        h.feed_all(&[helo, mail, RCPT, b"DATA\r\n", b"x\r\n.\r\n"]);
        let body = String::from_utf8_lossy(&h.submissions[0].body).into_owned();
        let literal = if ip.contains(':') {
            format!("[IPv6:{ip}]")
        } else {
            format!("[{ip}]")
        };
        let helo_name = String::from_utf8_lossy(&helo[5..helo.len() - 2]).into_owned();
        let head = format!(
            "Received: from {helo_name} ({literal})\r\n\tby mx.test (Gannet) with {with} id {}-1;\r\n\t",
            h.proto.session_id()
        );
        assert!(body.starts_with(&head), "{body:?}\nexpected start {head:?}");
        let date_line = body[head.len()..].split("\r\n").next().unwrap();
        assert!(
            date_line.ends_with(" +0000") && date_line.len() > 20,
            "{date_line:?}"
        );
        assert_eq!(h.submissions[0].origin.helo, helo_name);
        assert_eq!(h.submissions[0].origin.listener, "test");
    }
}

#[test]
fn smtputf8_envelope_and_body_handed_on_intact() {
    let mut h = Harness::new(DEFAULT);
    let mail = "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8\r\n";
    let rcpt = "RCPT TO:<用户@例子.广告>\r\n";
    let body = "Subject: ünïcödé\r\n\r\nпривет 🌍\r\n.\r\n";
    h.feed_all(&[
        EHLO,
        mail.as_bytes(),
        rcpt.as_bytes(),
        b"DATA\r\n",
        body.as_bytes(),
    ]);
    h.expect(
        "utf8",
        &["220", "250-", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
    );
    let s = &h.submissions[0];
    assert_eq!(s.envelope.mail_from, "δοκιμή@παράδειγμα.δοκιμή");
    assert_eq!(s.envelope.rcpts, vec!["用户@例子.广告".to_string()]);
    assert_eq!(
        after_received(&s.body),
        "Subject: ünïcödé\r\n\r\nпривет 🌍\r\n".as_bytes()
    );
}

#[test]
fn acceptor_rejection_is_relayed() {
    for (rejection, expect) in [
        (
            Rejection::new(451, "4.3.0", "spool full"),
            "451 4.3.0 spool full",
        ),
        (
            Rejection::new(550, "5.7.1", "suppressed\r\nInjected: x"),
            "550 5.7.1 suppressed  Injected: x",
        ),
        (
            Rejection::new(550, "4.0.0", "class mismatch"),
            "550 5.0.0 class mismatch",
        ),
        (
            Rejection::new(200, "2.0.0", "nonsense"),
            "451 4.0.0 nonsense",
        ),
    ] {
        let mut h = Harness::new(Opts {
            reject: Some(rejection),
            ..DEFAULT
        });
        h.feed_all(&[EHLO, MAIL, RCPT, b"DATA\r\n", b"x\r\n.\r\n", MAIL]);
        h.expect(
            "rejection",
            &[
                "220",
                "250-",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                expect,
                "250 2.1.0",
            ],
        );
    }
}

#[test]
fn acceptor_421_closes_the_session() {
    let mut h = Harness::new(Opts {
        reject: Some(Rejection::new(421, "4.3.2", "shutting down")),
        ..DEFAULT
    });
    h.feed_all(&[EHLO, MAIL, RCPT, b"DATA\r\n", b"x\r\n.\r\nNOOP\r\n"]);
    h.expect(
        "421 from acceptor",
        &[
            "220",
            "250-",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "421 4.3.2 shutting down",
        ],
    );
    assert!(h.closed);
}

#[test]
fn shutdown_and_timeout_replies_close_the_session() {
    let mut h = Harness::new(DEFAULT);
    h.proto.shutting_down();
    h.feed(b"NOOP\r\n");
    h.expect("shutdown", &["220", "421 4.3.2"]);
    assert!(h.closed);

    let mut h = Harness::new(DEFAULT);
    h.proto.timed_out();
    h.feed(b"");
    h.expect("timeout", &["220", "421 4.4.2"]);
    assert!(h.closed);
}

#[test]
fn in_body_only_while_reading_content() {
    let mut h = Harness::new(DEFAULT);
    h.feed_all(&[EHLO, MAIL, RCPT]);
    assert!(!h.proto.in_body());
    h.feed(b"DATA\r\n");
    assert!(h.proto.in_body());
    h.feed(b"x\r\n.\r\n");
    assert!(!h.proto.in_body());
    h.feed_all(&[MAIL, RCPT, b"BDAT 5\r\nab"]);
    assert!(h.proto.in_body());
    h.feed(b"cde");
    assert!(!h.proto.in_body());
}

/// Property (a seeded stand-in for a fuzz target): however the bytes are split into reads,
/// the replies and the messages handed on are the same, and nothing panics. Inputs are random
/// strings of SMTP-ish tokens, line ends, dots and garbage.
#[test]
fn chunking_never_changes_the_outcome() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r\n.\r\r\n",
        b"EHLO x\r\n",
        b"HELO y\r\n",
        b"MAIL FROM:<a@b.c>\r\n",
        b"MAIL FROM:<a@b.c> SIZE=5000\r\n",
        b"RCPT TO:<d@e.f>\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY z\r\n",
        b"AUTH PLAIN\r\n",
        b"abc",
        b"\x00\xff\xc3",
        &[b'x'; 300],
        b"QUIT\r\n",
        b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
        b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 7 LAST\r\n",
    ];
    let mut rng = StdRng::seed_from_u64(0x6a77e7);
    let mut messages = 0;
    for case in 0..400 {
        let mut input = Vec::new();
        if rng.gen_bool(0.9) {
            input.extend_from_slice(b"EHLO x\r\n");
        }
        for _ in 0..rng.gen_range(1..80) {
            let t = TOKENS[rng.gen_range(0..TOKENS.len())];
            if t == b"QUIT\r\n" && rng.gen_bool(0.8) {
                continue;
            }
            input.extend_from_slice(t);
        }
        let opts = || Opts {
            listener: "max_errors = 100000",
            ..DEFAULT
        };
        let mut whole = Harness::new(opts());
        whole.feed(&input);
        let mut split = Harness::new(opts());
        let mut at = 0;
        while at < input.len() {
            let n = rng.gen_range(1..=24).min(input.len() - at);
            split.feed(&input[at..at + n]);
            at += n;
        }
        assert_eq!(
            show(&whole.written),
            show(&split.written),
            "case {case}: replies differ for input {}",
            show(&input)
        );
        assert_eq!(
            whole.bodies(),
            split.bodies(),
            "case {case}: {}",
            show(&input)
        );
        assert!(
            split.proto.buffered_line_capacity() <= 2 * 512,
            "case {case}"
        );
        messages += whole.submissions.len();
    }
    // The generator must reach the DATA/BDAT paths, or the property says little.
    assert!(messages > 50, "only {messages} messages were generated");
}

/// Issue 15 item 11: `a@` (an empty domain) is refused at MAIL and RCPT: RFC 5321 §4.1.2 needs
/// a domain after `@`.
#[test]
fn empty_domain_is_refused_at_mail_and_rcpt() {
    let mut h = Harness::new(DEFAULT);
    h.feed_all(&[EHLO, b"MAIL FROM:<a@>\r\n", MAIL, b"RCPT TO:<a@>\r\n"]);
    h.expect(
        "empty domain",
        &["220", "250-", "501 5.1.7", "250 2.1.0", "501 5.1.3"],
    );
}

/// Issue 15 item 11: RFC 5321 §4.5.1: `RCPT TO:<postmaster>` (no domain, any case) must be
/// accepted, even from a client without relay rights, and goes to the configured postmaster.
/// `<>` stays refused as a recipient.
#[test]
fn rcpt_to_bare_postmaster_is_accepted_and_goes_to_the_postmaster_address() {
    let mut h = Harness::new(Opts {
        ip: "192.0.2.1",
        ..DEFAULT
    });
    h.feed_all(&[
        EHLO,
        MAIL,
        b"RCPT TO:<PostMaster>\r\n",
        b"RCPT TO:<>\r\n",
        b"RCPT TO:<someone@else.test>\r\n",
        b"DATA\r\n",
        b"Subject: hi\r\n\r\nx\r\n.\r\n",
    ]);
    h.expect(
        "postmaster",
        &[
            "220",
            "250-",
            "250 2.1.0",
            "250 2.1.5",
            "501 5.1.3",
            "550 5.7.1",
            "354",
            "250 2.0.0",
        ],
    );
    assert_eq!(h.submissions[0].envelope.rcpts, ["postmaster@mx.test"]);
}

/// Issue 15 item 6: smtp-proto removes the quotes of a quoted local part; the envelope keeps
/// them (re-quoted per RFC 5321 Quoted-string), so `"x> NOTIFY=NEVER"@d` cannot turn into a
/// parameter at the next hop.
#[test]
fn quoted_local_parts_are_kept_quoted_in_the_envelope() {
    let mut h = Harness::new(DEFAULT);
    h.feed_all(&[
        EHLO,
        b"MAIL FROM:<\"s e\"@s.test>\r\n",
        b"RCPT TO:<\"a b\"@d.test>\r\n",
        b"RCPT TO:<\"x> NOTIFY=NEVER\"@d.test>\r\n",
        b"RCPT TO:<\"plain\"@d.test>\r\n",
        b"DATA\r\n",
        b"Subject: q\r\n\r\nx\r\n.\r\n",
    ]);
    h.expect(
        "quoted",
        &[
            "220",
            "250-",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0",
        ],
    );
    let env = &h.submissions[0].envelope;
    assert_eq!(env.mail_from, "\"s e\"@s.test");
    assert_eq!(
        env.rcpts,
        [
            "\"a b\"@d.test",
            "\"x> NOTIFY=NEVER\"@d.test",
            "plain@d.test"
        ]
    );
}

/// Issue 15 item 10: a BDAT chunk before MAIL is skipped (the session stays in step with the
/// client) but the session is in the command state while it is: a shutdown ends it at once
/// instead of waiting for a client that trickles the bytes.
#[test]
fn bdat_before_mail_is_503_and_leaves_the_session_in_the_command_state() {
    let mut h = Harness::new(DEFAULT);
    h.feed_all(&[EHLO, b"BDAT 1000000 LAST\r\n", b"MAIL FROM:<x"]);
    assert!(
        !h.proto.in_body(),
        "a refused chunk counts as message content"
    );
    h.proto.shutting_down();
    h.feed(b"");
    h.expect("shutdown while skipping", &["220", "250-", "421 4.3.2"]);
    assert!(h.closed);

    let mut h = Harness::new(DEFAULT);
    h.feed_all(&[EHLO, b"BDAT 8\r\nMAIL F", b"\r\nNOOP\r\n"]);
    h.expect(
        "503 then commands",
        &["220", "250-", "503 5.5.1", "250 2.0.0"],
    );
}

/// Issue 21 item 2: the listener-wide budget of bytes in flight (`max_inflight_bytes`). Two
/// sessions of one listener (budget 1,500 bytes, messages up to 1,000): while the first holds
/// 900 bytes of DATA, the second's 800-byte message gets `452 4.3.1` (its content discarded,
/// the session usable); once the first is answered its bytes are given back and the second
/// session's next message is taken. BDAT is held to the same budget.
#[test]
fn listener_budget_of_bytes_in_flight_answers_452() {
    let config = config("max_inflight_bytes = 1500", "");
    let cfg = Arc::new(ProtocolConfig::new(
        &config,
        &config.listeners[0],
        false,
        false,
        Metrics::new(),
    ));
    let budget = cfg.budget.clone().expect("a budget is configured");
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = Protocol::new(cfg.clone(), ip, false);
    let mut b = Protocol::new(cfg, ip, false);
    // Feed `chunk`; the submissions answered 250 and the replies written.
    let feed = |p: &mut Protocol, chunk: &[u8]| -> (usize, String) {
        let mut input = chunk;
        let mut submitted = 0;
        loop {
            match p.advance(&mut input) {
                Action::Read | Action::Close => break,
                Action::Submit(_) => {
                    submitted += 1;
                    p.submitted(Ok(Accepted {
                        queue_id: "Q".into(),
                    }));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let out = String::from_utf8_lossy(p.output()).into_owned();
        p.clear_output();
        (submitted, out)
    };
    let head = b"EHLO c.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n";
    feed(&mut a, head);
    feed(&mut b, head);
    let body = |n: usize| "x".repeat(n - 2) + "\r\n";
    feed(&mut a, body(900).as_bytes());
    assert!(budget.used() >= 900, "{}", budget.used());
    let (n, out) = feed(&mut b, (body(800) + ".\r\n").as_bytes());
    assert_eq!(n, 0, "{out}");
    assert!(out.starts_with("452 4.3.1 "), "{out}");
    let (n, out) = feed(&mut a, b".\r\n");
    assert_eq!(n, 1, "{out}");
    assert_eq!(budget.used(), 0, "answered: nothing held");
    let again = format!(
        "MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n{}.\r\n",
        body(800)
    );
    let (n, out) = feed(&mut b, again.as_bytes());
    assert_eq!(n, 1, "the session is usable after a 452: {out}");
    // BDAT: a chunk over what is left is refused with 452 and the transaction ends.
    feed(&mut a, b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n");
    feed(&mut a, format!("BDAT 900\r\n{}", body(900)).as_bytes());
    let (n, out) = feed(
        &mut b,
        format!(
            "MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 800 LAST\r\n{}",
            body(800)
        )
        .as_bytes(),
    );
    assert_eq!(n, 0, "{out}");
    assert!(out.contains("452 4.3.1 "), "{out}");
    drop(a);
    assert_eq!(
        budget.used(),
        0,
        "a session that goes away gives its bytes back"
    );
}
