//! Inbound report parsing: what a mail that came back is — a delivery status notification
//! (RFC 3464 `message/delivery-status`, RFC 6533 `message/global-delivery-status`), one of the
//! common non-standard bounces (Exchange/Office 365, Gmail, Yahoo, qmail, Postfix, Exim,
//! Sendmail, Amazon SES, Courier, Domino...), a feedback-loop complaint (ARF, RFC 5965, also
//! with only the original headers), an auto-reply (RFC 3834) or none of these — and, with the
//! reply [`Classifier`], the category of each failed recipient.
//!
//! Owns [`Report`] (what the mail says, no judgement) and [`Analysis`] (the report classified:
//! the JSON of `gannet bounce classify --json` and `POST /api/v1/bounces/classify`). Pure code
//! over mail-parser: no I/O, no clock, no statics. Never correlates a report with a send (the
//! inbound listener does, with the VERP token or the spool) and never publishes or suppresses.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use super::classify::{Classifier, ReplyView, split_reply};
use crate::shaping::Shaping;

/// What kind of mail came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// A bounce: RFC 3464/6533 DSN or a non-standard one (see [`Report::format`]).
    Dsn,
    /// A feedback-loop complaint (RFC 5965).
    Arf,
    /// An RFC 3834 automatic reply (out of office, vacation, ...): ignored.
    AutoReply,
    /// Nothing Gannet recognises.
    NotABounce,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Dsn => "dsn",
            ReportKind::Arf => "arf",
            ReportKind::AutoReply => "auto-reply",
            ReportKind::NotABounce => "not-a-bounce",
        }
    }
}

/// One recipient a report is about, as the report states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// Original-Recipient, else Final-Recipient (DSN); Original-Rcpt-To (ARF); the address the
    /// text names (non-standard).
    pub address: String,
    /// DSN `Status` (`5.1.1`), or the enhanced code found in the text; may be empty.
    pub status: String,
    /// DSN `Diagnostic-Code` without its type (`550 5.1.1 no such user`), or the reply line
    /// the text quotes.
    pub diagnostic: String,
    /// DSN `Action` (`failed`, `delayed`), lower case; empty for non-standard bounces.
    pub action: String,
    /// DSN `Remote-MTA` host, if given.
    pub remote_mta: String,
}

/// What a returned mail says, before classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: ReportKind,
    /// `dsn` (RFC 3464/6533), `non-standard`, `arf`, or empty.
    pub format: &'static str,
    pub recipients: Vec<ReportedRecipient>,
    /// ARF `Feedback-Type` (`abuse`, `fraud`, ...).
    pub feedback_type: String,
    /// ARF `User-Agent`.
    pub user_agent: String,
    /// DSN/ARF `Reporting-MTA` (without its `dns;` type).
    pub reporting_mta: String,
    /// The Message-ID of the mail this report is about (from the returned message or headers),
    /// without angle brackets.
    pub original_message_id: String,
    /// `To` of the returned message: the recipient when a report names none.
    pub original_to: String,
    /// The returned message's headers, raw, when the report carries them (X-Gannet-* lookups).
    pub original_headers: String,
}

impl Report {
    fn new(kind: ReportKind, format: &'static str) -> Report {
        Report {
            kind,
            format,
            recipients: Vec::new(),
            feedback_type: String::new(),
            user_agent: String::new(),
            reporting_mta: String::new(),
            original_message_id: String::new(),
            original_to: String::new(),
            original_headers: String::new(),
        }
    }
}

/// Largest mail parsed; a bounce is small, so anything larger is cut (the returned message is
/// at the end and matters least).
pub const MAX_REPORT_SIZE: usize = 4 << 20;

/// Parse a returned mail. Never fails: what cannot be read is `not-a-bounce`.
pub fn parse(raw: &[u8]) -> Report {
    let raw = &raw[..raw.len().min(MAX_REPORT_SIZE)];
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Report::new(ReportKind::NotABounce, "");
    };
    if let Some(r) = parse_multipart_report(&msg) {
        return r;
    }
    if let Some(r) = parse_non_standard(&msg) {
        return r;
    }
    if is_auto_reply(&msg) {
        let mut r = Report::new(ReportKind::AutoReply, "");
        if let Some(id) = header(&msg, "In-Reply-To") {
            r.original_message_id = strip_id(id);
        }
        return r;
    }
    Report::new(ReportKind::NotABounce, "")
}

/// A header of the top-level message, raw, trimmed.
fn header<'a>(msg: &'a Message<'_>, name: &str) -> Option<&'a str> {
    msg.headers_raw()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn strip_id(id: &str) -> String {
    id.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(['<', '>'])
        .to_string()
}

/// RFC 3464 / 6533 / 5965: a `multipart/report` whose second part is the machine-readable
/// status (or, for ARF reports without one, just the returned headers).
fn parse_multipart_report(msg: &Message<'_>) -> Option<Report> {
    let mut status_part: Option<(&str, &[u8])> = None;
    let mut returned: Option<&[u8]> = None;
    let mut report_type = msg
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(|s| s.to_ascii_lowercase());
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let t = ct.ctype().to_ascii_lowercase();
        let s = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (t.as_str(), s.as_str()) {
            ("multipart", "report") if report_type.is_none() => {
                report_type = ct.attribute("report-type").map(|s| s.to_ascii_lowercase());
            }
            ("message", "delivery-status" | "global-delivery-status" | "feedback-report")
                if status_part.is_none() =>
            {
                let kind = if s == "feedback-report" { "arf" } else { "dsn" };
                status_part = Some((kind, part.contents()));
            }
            ("message", "rfc822" | "global")
            | ("text", "rfc822-headers")
            | ("message", "global-headers")
                if returned.is_none() =>
            {
                returned = Some(part.contents());
            }
            _ => {}
        }
    }
    let report_type = report_type?;
    let mut report = match (report_type.as_str(), status_part) {
        (_, Some(("dsn", body))) => parse_dsn_fields(body),
        (_, Some((_, body))) => parse_arf_fields(body),
        ("feedback-report", None) => Report::new(ReportKind::Arf, "arf"),
        _ => return None,
    };
    if let Some(ret) = returned {
        fill_from_returned(&mut report, ret);
    }
    if report.kind == ReportKind::Arf
        && report.recipients.is_empty()
        && !report.original_to.is_empty()
    {
        report.recipients.push(ReportedRecipient {
            address: report.original_to.clone(),
            ..Default::default()
        });
    }
    Some(report)
}

/// The returned message (or only its headers): Message-ID, To and the raw header block.
fn fill_from_returned(report: &mut Report, returned: &[u8]) {
    let end = find_header_end(returned);
    let head = String::from_utf8_lossy(&returned[..end]);
    for (name, value) in header_fields(&head) {
        if name.eq_ignore_ascii_case("Message-ID") && report.original_message_id.is_empty() {
            report.original_message_id = strip_id(&value);
        } else if name.eq_ignore_ascii_case("To") && report.original_to.is_empty() {
            report.original_to = first_address(&value).unwrap_or_default();
        }
    }
    report.original_headers = head.into_owned();
}

fn find_header_end(b: &[u8]) -> usize {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|p| p + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => b.len(),
    }
}

/// Unfolded `Name: value` fields of one header block (continuation lines joined by a space).
fn header_fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Blank-line separated groups of fields (RFC 3464 §2.1: per-message, then per-recipient).
fn field_groups(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .map(header_fields)
        .filter(|g| !g.is_empty())
        .collect()
}

fn get<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `rfc822; a@b` → `a@b`; `utf-8; a@b` (RFC 6533) → `a@b`; `dns; host` → `host`.
fn typed_value(v: &str) -> String {
    let v = match v.split_once(';') {
        Some((_, rest)) => rest,
        None => v,
    };
    v.trim().trim_matches(['<', '>']).to_string()
}

fn parse_dsn_fields(body: &[u8]) -> Report {
    let mut report = Report::new(ReportKind::Dsn, "dsn");
    let groups = field_groups(body);
    for group in &groups {
        if let Some(m) = get(group, "Reporting-MTA")
            && report.reporting_mta.is_empty()
        {
            report.reporting_mta = typed_value(m);
        }
        let Some(final_rcpt) = get(group, "Final-Recipient") else {
            continue;
        };
        let action = get(group, "Action")
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Only failures and delays are bounces; delivered/relayed/expanded report success.
        if matches!(action.as_str(), "delivered" | "relayed" | "expanded") {
            continue;
        }
        let address = get(group, "Original-Recipient")
            .map(typed_value)
            .filter(|a| a.contains('@'))
            .unwrap_or_else(|| typed_value(final_rcpt));
        let status = get(group, "Status")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        let diagnostic = get(group, "Diagnostic-Code")
            .map(typed_value)
            .unwrap_or_default();
        let remote_mta = get(group, "Remote-MTA")
            .map(typed_value)
            .unwrap_or_default();
        report.recipients.push(ReportedRecipient {
            address,
            status,
            diagnostic,
            action,
            remote_mta,
        });
    }
    report
}

fn parse_arf_fields(body: &[u8]) -> Report {
    let mut report = Report::new(ReportKind::Arf, "arf");
    for group in field_groups(body) {
        for (name, value) in &group {
            let n = name.to_ascii_lowercase();
            match n.as_str() {
                "feedback-type" => report.feedback_type = value.trim().to_ascii_lowercase(),
                "user-agent" => report.user_agent = value.trim().to_string(),
                "reporting-mta" => report.reporting_mta = typed_value(value),
                "original-rcpt-to" => {
                    let a = value.trim().trim_matches(['<', '>']).to_string();
                    if a.contains('@') {
                        report.recipients.push(ReportedRecipient {
                            address: a,
                            ..Default::default()
                        });
                    }
                }
                _ => {}
            }
        }
    }
    report
}

/// Phrases that open a non-standard bounce's text (qmail, Exim, Sendmail, Gmail, Yahoo,
/// Exchange, Domino, Courier, ...), lower case.
const BOUNCE_PHRASES: &[&str] = &[
    "this is the qmail-send program",
    "could not be delivered to one or more of its recipients",
    "the following address(es) failed",
    "delivery to the following recipient failed",
    "delivery to the following recipients failed",
    "unable to deliver your message to the following address",
    "delivery has failed to these recipients",
    "your message couldn't be delivered",
    "your message could not be delivered",
    "your message wasn't delivered",
    "was not delivered to:",
    "the following addresses had permanent fatal errors",
    "the following recipient(s) could not be reached",
    "i'm sorry to have to inform you that your message could not",
    "message could not be delivered to the following recipients",
    "undeliverable message",
    "permanent failure for one or more recipients",
    "delivery status notification (failure)",
    "your message did not reach some or all of the intended recipients",
    "an error occurred while trying to deliver this message",
];

const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "delivery status notification",
    "failure notice",
    "returned mail",
    "mail delivery failed",
    "delivery failure",
    "mail delivery failure",
    "delivery has failed",
    "undelivered mail",
    "non remis",
    "unzustellbar",
    "nondeliverable",
    "delivery notification",
];

/// Markers after which a non-standard bounce quotes the returned message (its addresses are
/// the sender's, not failed recipients).
const RETURNED_MARKERS: &[&str] = &[
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "----- original message -----",
    "original message headers:",
    "----- original message follows -----",
    "------ original message ------",
    "--- the header of the original message is following",
    "----- message header follows -----",
    "-----original message-----",
];

fn parse_non_standard(msg: &Message<'_>) -> Option<Report> {
    let subject = msg.subject().unwrap_or("").to_ascii_lowercase();
    let from = header(msg, "From").unwrap_or("").to_ascii_lowercase();
    let daemon = from.contains("mailer-daemon")
        || from.contains("postmaster")
        || from.contains("mail delivery")
        || from.contains("microsoftexchange");
    let text: String = msg
        .parts
        .iter()
        .filter(|p| matches!(p.body, PartType::Text(_)))
        .filter_map(|p| p.text_contents())
        .collect::<Vec<_>>()
        .join("\n");
    let lower = text.to_ascii_lowercase();
    let phrase = BOUNCE_PHRASES.iter().any(|p| lower.contains(p));
    let subject_says = BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s));
    if !(phrase || (daemon && subject_says)) {
        return None;
    }
    let cut = RETURNED_MARKERS
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(text.len());
    let (body, returned) = text.split_at(cut);
    let mut report = Report::new(ReportKind::Dsn, "non-standard");
    report.recipients = scan_text(body);
    // Without a Status field, the wording says whether the failure is final.
    let body_lower = body.to_ascii_lowercase();
    let delayed = ["warning only", "will be retried", "still trying", "delayed"]
        .iter()
        .any(|w| body_lower.contains(w) || subject.contains(w));
    let action = if delayed { "delayed" } else { "failed" };
    for r in &mut report.recipients {
        r.action = action.to_string();
    }
    // The reporting system: the domain of the From address (its provider's rules apply).
    if let Some(domain) =
        first_address(&from).and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_string()))
    {
        report.reporting_mta = domain.trim_end_matches('>').to_string();
    }
    // The returned message: an attached message/rfc822 or text/rfc822-headers, else the
    // quoted copy after the marker.
    let attached = msg.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            let s = ct.subtype().unwrap_or("").to_ascii_lowercase();
            (ct.ctype().eq_ignore_ascii_case("message") && (s == "rfc822" || s == "global"))
                || (ct.ctype().eq_ignore_ascii_case("text") && s == "rfc822-headers")
        })
    });
    match attached {
        Some(p) => fill_from_returned(&mut report, p.contents()),
        None if !returned.is_empty() => {
            let after = returned.split_once('\n').map(|(_, r)| r).unwrap_or("");
            let after = after.trim_start_matches(['\n', '\r']);
            fill_from_returned(&mut report, after.as_bytes());
        }
        None => {}
    }
    if report.recipients.is_empty() && !report.original_to.is_empty() {
        report.recipients.push(ReportedRecipient {
            address: report.original_to.clone(),
            action: action.to_string(),
            ..Default::default()
        });
    }
    Some(report)
}

/// Find failed recipients and the reply each got in a bounce's human-readable text: an address
/// (alone, in `<>`, or before a colon) starts a recipient; the first SMTP reply or enhanced
/// code after it (before the next address) is its reply.
fn scan_text(text: &str) -> Vec<ReportedRecipient> {
    let mut out: Vec<ReportedRecipient> = Vec::new();
    let mut open = false; // the last recipient still has no reply
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if line.is_empty() {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        let is_command_echo = lower.contains("rcpt to") || lower.contains("mail from");
        if !is_command_echo && let Some(addr) = recipient_address(line) {
            if !out.iter().any(|r| r.address.eq_ignore_ascii_case(&addr)) {
                out.push(ReportedRecipient {
                    address: addr,
                    ..Default::default()
                });
                open = true;
            }
            // The reply may follow on the same line (Postfix: `<a@b>: host ... said: 550`).
            if let Some((status, diag)) = reply_in(line) {
                set_reply(out.last_mut(), status, diag);
                open = false;
            }
            continue;
        }
        if open {
            if let Some((status, diag)) = reply_in(line) {
                set_reply(out.last_mut(), status, diag);
                open = false;
            } else if let Some(r) = out.last_mut()
                && r.diagnostic.is_empty()
                && looks_like_reason(&lower)
            {
                r.diagnostic = line.to_string();
            }
        }
    }
    out
}

fn set_reply(r: Option<&mut ReportedRecipient>, status: String, diag: String) {
    if let Some(r) = r {
        r.status = status;
        r.diagnostic = diag;
    }
}

fn looks_like_reason(lower: &str) -> bool {
    [
        "not found",
        "unknown",
        "does not exist",
        "doesn't exist",
        "couldn't be found",
        "no such",
        "not listed",
        "quota",
        "full",
        "disabled",
        "rejected",
        "refused",
        "blocked",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// An address that a line presents as a recipient: the whole line, `<addr>` (optionally with a
/// trailing colon), or `addr:` at the start.
fn recipient_address(line: &str) -> Option<String> {
    let l = line.trim().trim_end_matches(':').trim();
    let candidate = if let Some(rest) = l.strip_prefix('<') {
        rest.split_once('>').map(|(a, _)| a)?
    } else {
        let first = l.split_whitespace().next()?;
        let first = first.trim_end_matches([':', ',', ';']);
        let second = l.split_whitespace().nth(1).unwrap_or("");
        // `a@b`, `a@b:` and Exchange's `a@b on 03/12/2026 10:05`.
        if first.len() == l.len() || l.split_whitespace().count() == 1 || second == "on" {
            first
        } else {
            return None;
        }
    };
    let c = candidate.trim();
    let (local, domain) = c.rsplit_once('@')?;
    if local.is_empty()
        || !domain.contains('.')
        || c.contains(char::is_whitespace)
        || c.starts_with("mailto:")
    {
        return None;
    }
    Some(c.to_string())
}

/// The SMTP reply a line quotes: `550 5.1.1 text`, `550-5.1.1 text`, `#5.1.1 text`
/// (Exchange), `5.1.1 text`, anywhere in the line. Returns (enhanced status, reply text).
fn reply_in(line: &str) -> Option<(String, String)> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let at_word = i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.';
        if at_word && (b[i] == b'4' || b[i] == b'5') {
            let rest = &line[i..];
            let (code, enhanced, text) = split_reply(rest);
            if code != 0 && rest.len() > 3 {
                let diag = rest.trim().trim_end_matches(['\'', ')', '"']).to_string();
                let status = if enhanced.is_empty() {
                    format!("{}.0.0", code / 100)
                } else {
                    enhanced.to_string()
                };
                let _ = text;
                return Some((status, diag));
            }
            if code == 0 && !enhanced.is_empty() {
                return Some((enhanced.to_string(), rest.trim().to_string()));
            }
        }
        if at_word && b[i] == b'#' {
            let token: &str = line[i + 1..]
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or("");
            let (_, enhanced, _) = split_reply(token);
            if !enhanced.is_empty() {
                let diag = line.trim().trim_matches(['<', '>']).to_string();
                return Some((enhanced.to_string(), diag));
            }
        }
        i += 1;
    }
    None
}

fn first_address(v: &str) -> Option<String> {
    if let Some(start) = v.find('<') {
        let rest = &v[start + 1..];
        if let Some(end) = rest.find('>') {
            let a = rest[..end].trim();
            if a.contains('@') {
                return Some(a.to_string());
            }
        }
    }
    v.split([',', ' ', '\t'])
        .map(|s| s.trim().trim_matches(['"', '<', '>']))
        .find(|s| s.contains('@'))
        .map(str::to_string)
}

/// RFC 3834 §5 (Auto-Submitted other than `no`) and the de-facto headers and subjects of
/// vacation responders (X-Autoreply, X-Autorespond, Precedence: auto_reply, Microsoft's
/// X-Auto-Response-Suppress on an "Automatic reply").
fn is_auto_reply(msg: &Message<'_>) -> bool {
    if let Some(v) = header(msg, "Auto-Submitted") {
        let v = v.to_ascii_lowercase();
        if !v.starts_with("no") {
            return true;
        }
    }
    if header(msg, "X-Autoreply").is_some()
        || header(msg, "X-Autorespond").is_some()
        || header(msg, "X-Autoresponder").is_some()
    {
        return true;
    }
    let precedence = header(msg, "Precedence").unwrap_or("").to_ascii_lowercase();
    if precedence == "auto_reply" {
        return true;
    }
    let subject = msg.subject().unwrap_or("").to_ascii_lowercase();
    let auto_subject = [
        "out of office",
        "out of the office",
        "automatic reply",
        "auto:",
        "autoreply",
        "auto-reply",
        "auto reply",
        "vacation",
        "abwesenheitsnotiz",
        "réponse automatique",
        "odpowiedź automatyczna",
    ]
    .iter()
    .any(|s| subject.contains(s));
    auto_subject && (matches!(precedence.as_str(), "bulk" | "junk") || subject.len() < 200)
}

/// One recipient with its verdict: the JSON element of `recipients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysedRecipient {
    pub address: String,
    pub status: String,
    pub diagnostic: String,
    pub category: String,
    pub hard: bool,
    /// Rule (file:line) that gave the category; null for complaints and when no rule matched.
    pub rule: Option<String>,
}

/// A report classified: exactly the JSON of `gannet bounce classify --json FILE` and
/// `POST /api/v1/bounces/classify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub kind: ReportKind,
    pub recipients: Vec<AnalysedRecipient>,
    pub feedback_type: Option<String>,
    pub original_message_id: Option<String>,
}

/// Category given to every recipient of an ARF complaint.
pub const COMPLAINT_CATEGORY: &str = "complaint";

/// Classify each recipient of a report with the reply rules (provider rules of the
/// `Remote-MTA` first, when `shaping` or the rules file knows it).
pub fn classify_report(
    report: &Report,
    classifier: &Classifier,
    shaping: Option<&Shaping>,
) -> Analysis {
    let recipients = report
        .recipients
        .iter()
        .map(|r| {
            if report.kind == ReportKind::Arf {
                return AnalysedRecipient {
                    address: r.address.clone(),
                    status: String::new(),
                    diagnostic: String::new(),
                    category: COMPLAINT_CATEGORY.to_string(),
                    hard: true,
                    rule: None,
                };
            }
            let c = classify_recipient(r, &report.reporting_mta, classifier, shaping);
            AnalysedRecipient {
                address: r.address.clone(),
                status: r.status.clone(),
                diagnostic: r.diagnostic.clone(),
                category: c.category.to_string(),
                hard: c.hard,
                rule: c.rule.map(|r| r.to_string()),
            }
        })
        .collect();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Analysis {
        kind: report.kind,
        recipients,
        feedback_type: opt(&report.feedback_type),
        original_message_id: opt(&report.original_message_id),
    }
}

/// The reply of one reported recipient, classified. The code comes from the diagnostic, else
/// from the status class (`5.x.x` → 550, `4.x.x` → 450); the enhanced code from the status,
/// else the diagnostic. The provider is the one of the `Remote-MTA`, else of the reporting
/// system, else of the recipient's domain.
pub fn classify_recipient(
    r: &ReportedRecipient,
    reporting_mta: &str,
    classifier: &Classifier,
    shaping: Option<&Shaping>,
) -> super::Classification {
    let (dcode, denh, dtext) = split_reply(&r.diagnostic);
    let status_class = r.status.as_bytes().first().copied();
    let code = if dcode != 0 {
        dcode
    } else {
        match status_class {
            Some(b'5') => 550,
            Some(b'4') => 450,
            _ if r.action == "failed" => 550,
            _ if r.action == "delayed" => 450,
            _ => 0,
        }
    };
    let enhanced = if !r.status.is_empty() && r.status != "5.0.0" && r.status != "4.0.0" {
        r.status.as_str()
    } else if !denh.is_empty() {
        denh
    } else {
        r.status.as_str()
    };
    let text = if dtext.is_empty() {
        &r.diagnostic
    } else {
        dtext
    };
    let hosts: Vec<String> = [r.remote_mta.as_str(), reporting_mta]
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| h.to_string())
        .collect();
    let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let provider = classifier.provider_for(shaping, domain, &hosts);
    classifier.classify(
        ReplyView {
            code,
            enhanced,
            text,
        },
        provider.as_deref(),
    )
}

/// What classifying a report needs, loaded once (`serve` shares the queue's rules and shaping
/// data; the CLI loads them from the config); shared behind an `Arc` by the API and the inbound
/// listener.
pub struct ReportRules {
    pub classifier: std::sync::Arc<Classifier>,
    pub shaping: Option<std::sync::Arc<Shaping>>,
}

impl ReportRules {
    /// Parse and classify one returned mail.
    pub fn analyse(&self, raw: &[u8]) -> Analysis {
        analyse(raw, &self.classifier, self.shaping.as_deref())
    }
}

/// Parse and classify in one step: the shared code path of the CLI, the API and the inbound
/// listener.
pub fn analyse(raw: &[u8], classifier: &Classifier, shaping: Option<&Shaping>) -> Analysis {
    classify_report(&parse(raw), classifier, shaping)
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
