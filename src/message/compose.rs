//! Personalised messages from one injection request: the request model ([`BatchRequest`]),
//! its checks and compilation ([`Batch::prepare`]), and one RFC 5322 message per recipient
//! ([`Batch::build`]) with mail-builder (multipart/alternative, encoded UTF-8 names and
//! subjects, quoted-printable/base64 bodies, `Message-ID` on Gannet's hostname, `Date`).
//!
//! Owns: what a request may contain and what a recipient's message looks like. Safety lives
//! here: addresses are checked before they reach a header or the envelope, names and rendered
//! header values with line breaks, controls or encoded-words are refused for that recipient,
//! custom header names are checked and may not replace the headers Gannet sets.
//! Never does I/O, never spools or queues (the HTTP handler hands each message to intake).

use std::collections::BTreeMap;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use minijinja::value::{Serde, Value, merge_maps};
use serde::{Deserialize, Serialize};

use super::template::{self, CompileError, RenderError, TemplateLimits, Templates};

/// `"user@example.com"` or `{"email": "user@example.com", "name": "User"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Mailbox {
    Plain(String),
    Named {
        email: String,
        #[serde(default)]
        name: Option<String>,
    },
}

impl Mailbox {
    pub fn email(&self) -> &str {
        match self {
            Mailbox::Plain(e) | Mailbox::Named { email: e, .. } => e,
        }
    }
    pub fn name(&self) -> Option<&str> {
        match self {
            Mailbox::Plain(_) => None,
            Mailbox::Named { name, .. } => name.as_deref(),
        }
    }
}

/// One recipient of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    /// This recipient's template variables; they win over the request's `substitutions`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub substitutions: serde_json::Map<String, serde_json::Value>,
    /// Opaque data for the caller; not rendered, not sent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The body of `POST /api/v1/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub from: Mailbox,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    /// Subject template (header context).
    #[serde(default)]
    pub subject: Option<String>,
    /// Plain-text body template.
    #[serde(default)]
    pub text: Option<String>,
    /// HTML body template (values auto-escaped unless marked `| safe`).
    #[serde(default)]
    pub html: Option<String>,
    /// A whole RFC 5322 message template instead of subject/text/html.
    #[serde(default)]
    pub content: Option<String>,
    /// Extra header fields; values are templates (header context).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    /// A/B label carried with each message into the spool record, events and logs.
    #[serde(default)]
    pub variant: Option<String>,
    /// Variables shared by every recipient.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub substitutions: serde_json::Map<String, serde_json::Value>,
    pub recipients: Vec<Recipient>,
}

/// A request refused as a whole (HTTP 400/413), naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub field: String,
    pub message: String,
    /// True when a size limit was passed (HTTP 413).
    pub too_large: bool,
}

impl RequestError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            field: field.into(),
            message: message.into(),
            too_large: false,
        }
    }
}

impl From<CompileError> for RequestError {
    fn from(e: CompileError) -> Self {
        RequestError {
            field: e.field().to_string(),
            too_large: matches!(e, CompileError::TooLarge { .. }),
            message: e.to_string(),
        }
    }
}

/// Why one recipient got no message; the others are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("invalid recipient address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("recipient name refused: it contains {what}; send one line of plain text")]
    InvalidName { what: String },
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("rendered message is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The recipient's JSON passed the request's shape check but not the full parse.
    #[error("recipient is not valid: {message}")]
    Malformed { message: String },
}

impl RecipientError {
    /// Machine-readable code for the per-recipient answer.
    pub fn code(&self) -> &'static str {
        match self {
            RecipientError::InvalidAddress { .. } => "invalid_address",
            RecipientError::InvalidName { .. } => "invalid_name",
            RecipientError::Render(RenderError::Undefined { .. }) => "undefined_variable",
            RecipientError::Render(RenderError::HeaderUnsafe { .. }) => "header_unsafe",
            RecipientError::Render(_) => "render_error",
            RecipientError::TooLarge { .. } => "too_large",
            RecipientError::Malformed { .. } => "invalid_json",
        }
    }
}

/// Header fields Gannet sets itself: a request may not supply them in `headers`.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "sender",
    "mime-version",
    "received",
    "return-path",
    "dkim-signature",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
];

/// Longest address accepted (RFC 5321 §4.5.3.1: path 256 incl. brackets).
const MAX_ADDRESS: usize = 254;

/// Check an address before it goes anywhere: one `@`, ASCII, no spaces, controls or characters
/// that would end or split an address in a header or an SMTP command.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("it is empty".into());
    }
    if address.len() > MAX_ADDRESS {
        return Err(format!("it is longer than {MAX_ADDRESS} characters"));
    }
    if let Some(c) = address
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == ' ')
    {
        return Err(format!(
            "it contains {:?}; only ASCII addresses without spaces or controls are accepted",
            c
        ));
    }
    if let Some(c) = address.chars().find(|c| {
        matches!(
            c,
            '<' | '>' | '(' | ')' | ',' | ';' | ':' | '"' | '[' | ']' | '\\'
        )
    }) {
        return Err(format!("it contains {c:?}"));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err("it has no @".into());
    };
    if domain.contains('@') {
        return Err("it has more than one @".into());
    }
    if local.is_empty() || local.len() > 64 {
        return Err("the local part must be 1 to 64 characters".into());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the local part has a misplaced dot".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        return Err(format!("{domain:?} is not a domain name"));
    }
    Ok(())
}

/// Check a header field name from the request (RFC 5322 ftext, not one Gannet sets).
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 76 {
        return Err("a header name must be 1 to 76 characters".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_graphic() && *c != ':')) {
        return Err(format!("header name {name:?} contains {c:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
        return Err(format!(
            "header {name:?} is set by Gannet or by the request's own fields; remove it from headers"
        ));
    }
    if lower.starts_with("x-gannet-") {
        return Err(format!(
            "header {name:?} is a Gannet control header; use the request fields (class, tenant, campaign, variant)"
        ));
    }
    Ok(())
}

/// What the caller decides per message and Gannet adds as is.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Left part of the Message-ID (`{id}@{hostname}`).
    pub message_id: String,
    pub hostname: String,
    /// Seconds since the epoch for the `Date` field.
    pub date: i64,
    /// Complete header fields (`Name: value`, no CRLF) to add, e.g. List-Unsubscribe.
    pub extra_headers: Vec<String>,
}

/// A checked, compiled request, ready to build recipients' messages. Shareable across threads.
#[derive(Debug)]
pub struct Batch {
    templates: Templates,
    shared: Value,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    header_names: Vec<String>,
    raw: bool,
}

impl Batch {
    /// Check the request's common parts and compile its templates. Recipients are checked one
    /// by one later, in [`Batch::build`].
    pub fn prepare(req: &BatchRequest, limits: TemplateLimits) -> Result<Batch, RequestError> {
        check_address(req.from.email())
            .map_err(|r| RequestError::new("from", format!("invalid from address: {r}")))?;
        if let Some(n) = req.from.name()
            && let Some(what) = template::header_unsafe(n)
        {
            return Err(RequestError::new(
                "from",
                format!("from name contains {what}"),
            ));
        }
        if let Some(r) = &req.reply_to {
            check_address(r.email()).map_err(|m| {
                RequestError::new("reply_to", format!("invalid reply_to address: {m}"))
            })?;
            if let Some(what) = r.name().and_then(template::header_unsafe) {
                return Err(RequestError::new(
                    "reply_to",
                    format!("reply_to name contains {what}"),
                ));
            }
        }
        let raw = req.content.is_some();
        if raw && (req.subject.is_some() || req.text.is_some() || req.html.is_some()) {
            return Err(RequestError::new(
                "content",
                "give either content (a whole RFC 5322 message) or subject/text/html, not both",
            ));
        }
        if !raw && req.text.is_none() && req.html.is_none() {
            return Err(RequestError::new(
                "text",
                "give text and/or html templates (or content)",
            ));
        }
        let mut sources: Vec<(String, &str)> = Vec::new();
        if let Some(c) = &req.content {
            let (head, body) = template::split_content(c);
            if !head.to_ascii_lowercase().contains("from:") {
                return Err(RequestError::new(
                    "content",
                    "content has no From: field in its header part",
                ));
            }
            sources.push((template::CONTENT_HEADERS.into(), head));
            sources.push((template::CONTENT_BODY.into(), body));
        }
        for (field, src) in [
            (template::SUBJECT, &req.subject),
            (template::TEXT, &req.text),
            (template::HTML, &req.html),
        ] {
            if let Some(s) = src {
                sources.push((field.to_string(), s.as_str()));
            }
        }
        let mut header_names = Vec::new();
        for (name, value) in &req.headers {
            check_header_name(name).map_err(|m| RequestError::new(format!("headers.{name}"), m))?;
            sources.push((format!("{}{name}", template::HEADER_PREFIX), value.as_str()));
            header_names.push(name.clone());
        }
        let templates = Templates::compile(sources, limits)?;
        Ok(Batch {
            templates,
            shared: Value::from(Serde(&req.substitutions)),
            from: req.from.clone(),
            reply_to: req.reply_to.clone(),
            header_names,
            raw,
        })
    }

    /// Build one recipient's message (CRLF line ends, ready for intake).
    pub fn build(&self, rcpt: &Recipient, extras: &Extras) -> Result<Vec<u8>, RecipientError> {
        check_address(&rcpt.email).map_err(|reason| RecipientError::InvalidAddress {
            address: rcpt.email.clone(),
            reason,
        })?;
        if let Some(what) = rcpt.name.as_deref().and_then(template::header_unsafe) {
            return Err(RecipientError::InvalidName { what });
        }
        let own = minijinja::context! {
            email => rcpt.email.as_str(),
            name => rcpt.name.as_deref(),
        };
        // merge_maps: the last map holding a key wins.
        let ctx = merge_maps([
            self.shared.clone(),
            own,
            Value::from(Serde(&rcpt.substitutions)),
        ]);
        let limit = self.templates.limits().max_rendered_bytes;
        let mut size = 0usize;
        let mut render = |field: &str| -> Result<Option<String>, RecipientError> {
            let out = self.templates.render(field, &ctx)?;
            size += out.as_ref().map_or(0, String::len);
            if size > limit {
                return Err(RecipientError::TooLarge { size, limit });
            }
            Ok(out)
        };
        if self.raw {
            let head = render(template::CONTENT_HEADERS)?.unwrap_or_default();
            let body = render(template::CONTENT_BODY)?.unwrap_or_default();
            let mut msg = Vec::with_capacity(head.len() + body.len() + 256);
            push_crlf(&mut msg, &head);
            if !msg.ends_with(b"\r\n") && !msg.is_empty() {
                msg.extend_from_slice(b"\r\n");
            }
            for h in &self.header_names {
                let field = format!("{}{h}", template::HEADER_PREFIX);
                let v = render(&field)?.unwrap_or_default();
                one_line(&field, &v)?;
                let mut line = Vec::new();
                Text::new(v).write_header_line(h, &mut line);
                msg.extend_from_slice(&line);
            }
            for h in &extras.extra_headers {
                msg.extend_from_slice(h.as_bytes());
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"\r\n");
            push_crlf(&mut msg, &body);
            return Ok(msg);
        }
        let subject = render(template::SUBJECT)?;
        if let Some(s) = &subject {
            one_line(template::SUBJECT, s)?;
        }
        let text = render(template::TEXT)?;
        let html = render(template::HTML)?;
        let from = match self.from.name() {
            Some(n) => Address::new_address(Some(n.to_string()), self.from.email().to_string()),
            None => Address::new_address(None::<String>, self.from.email().to_string()),
        };
        let to = Address::new_address(rcpt.name.clone(), rcpt.email.clone());
        let mut b = MessageBuilder::new()
            .from(from)
            .to(to)
            .message_id(MessageId::new(format!(
                "{}@{}",
                extras.message_id, extras.hostname
            )))
            .date(Date::new(extras.date));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(Address::new_address(
                r.name().map(str::to_string),
                r.email().to_string(),
            ));
        }
        if let Some(s) = subject {
            b = b.subject(Text::new(s));
        }
        for h in &self.header_names {
            let field = format!("{}{h}", template::HEADER_PREFIX);
            let v = render(&field)?.unwrap_or_default();
            one_line(&field, &v)?;
            b = b.header(h.clone(), Text::new(v));
        }
        for h in &extras.extra_headers {
            if let Some((name, value)) = h.split_once(':') {
                b = b.header(name.to_string(), Raw::new(value.trim().to_string()));
            }
        }
        if let Some(t) = text {
            b = b.text_body(t);
        }
        if let Some(h) = html {
            b = b.html_body(h);
        }
        let out = b.write_to_vec().map_err(|e| {
            RecipientError::Render(RenderError::Other {
                field: "message".into(),
                line: 0,
                message: e.to_string(),
            })
        })?;
        if out.len() > limit {
            return Err(RecipientError::TooLarge {
                size: out.len(),
                limit,
            });
        }
        Ok(out)
    }
}

/// A rendered header value (template text included) must be one line of plain text.
fn one_line(field: &str, value: &str) -> Result<(), RecipientError> {
    match template::header_unsafe(value) {
        Some(what) => Err(RecipientError::Render(RenderError::HeaderUnsafe {
            field: field.to_string(),
            what,
        })),
        None => Ok(()),
    }
}

/// Append text converting bare LF (and bare CR) to CRLF.
fn push_crlf(out: &mut Vec<u8>, text: &str) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
}

/// Writes `Name: value` with mail-builder's encoding and folding.
trait HeaderLine {
    fn write_header_line(&self, name: &str, out: &mut Vec<u8>);
}

impl HeaderLine for Text<'_> {
    fn write_header_line(&self, name: &str, out: &mut Vec<u8>) {
        use mail_builder::headers::Header;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        self.write_header(out, name.len() + 2);
    }
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;
