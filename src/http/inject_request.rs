//! Reading the body of `POST /api/v1/messages` without holding every recipient parsed at once.
//!
//! Owns: checking the whole body before anything is queued — valid JSON, the request's own
//! fields, every recipient's shape — so a fault is still one 400 naming the field
//! (`from`, `recipients[3].email`), while keeping of each recipient only where its JSON lies in
//! the body and its address. A recipient is parsed in full ([`Recipient`]) only when its
//! message is built, and dropped with it: a 10,000-recipient batch then holds its ~10 MB of
//! JSON once instead of ~60 MB of parsed maps (a `serde_json::Map` per recipient and per
//! product of its substitutions), which was most of the request's peak RSS.
//! Never does: render, spool or answer (the handler in `inject` does).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::ApiError;
use crate::message::compose::{BatchRequest, Recipient};

/// A checked request whose recipients are parsed one at a time ([`LazyBatch::recipient`]).
pub struct LazyBatch {
    /// Every field but the recipients (`recipients` is empty here).
    pub head: BatchRequest,
    /// Each recipient's address, in request order (for the answer).
    pub emails: Vec<String>,
    body: Bytes,
    /// Where each recipient's JSON object lies in `body`.
    spans: Vec<Range<usize>>,
}

impl LazyBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Parse recipient `i` in full. Its shape was checked by [`parse`], so this fails only
    /// on what the shape check does not look at (none known; the caller refuses that
    /// recipient alone).
    pub fn recipient(&self, i: usize) -> Result<Recipient, serde_json::Error> {
        serde_json::from_slice(&self.body[self.spans[i].clone()])
    }
}

/// The top level of the body as (key, raw value) pairs, in order, duplicates kept (so the
/// request's own fields are judged by `BatchRequest`'s derive exactly as before).
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (the batch)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(TopLevel(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a recipient must look like, checked without building its maps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields are read by serde's checks, not by code
struct RecipientShape<'a> {
    #[serde(borrow)]
    email: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    substitutions: AnyObject,
    #[serde(default)]
    metadata: AnyObject,
}

/// A JSON object whose contents are skipped (what `serde_json::Map` accepts).
#[derive(Default)]
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

fn invalid(field: impl Into<String>, message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_json",
        message: format!("request body is not a valid batch: {message}"),
        field: Some(field.into()),
    }
}

/// serde_json's message without its "at line L column C" (positions in a fragment of the
/// body would mislead).
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    s.strip_suffix(&suffix).map(str::to_string).unwrap_or(s)
}

/// Check the whole body and index its recipients. Errors are 400 `invalid_json` naming the
/// field, as `inject::parse_request` words them.
pub fn parse(body: Bytes) -> Result<LazyBatch, ApiError> {
    let top: TopLevel =
        serde_json::from_slice(&body).map_err(|e| invalid("body", e.to_string()))?;
    // The request's own fields, judged by `BatchRequest` with an empty recipient list in
    // place of the real one (which is checked below, one recipient at a time).
    let mut head = String::with_capacity(body.len().min(1 << 20));
    let mut recipients: Option<&RawValue> = None;
    head.push('{');
    for (k, v) in &top.0 {
        if k == "recipients" {
            if recipients.is_some() {
                return Err(invalid(
                    "recipients",
                    "duplicate field `recipients`".to_string(),
                ));
            }
            recipients = Some(v);
        }
        if head.len() > 1 {
            head.push(',');
        }
        // A key re-encoded is valid JSON whatever it holds.
        head.push_str(&serde_json::to_string(k).unwrap_or_default());
        head.push(':');
        head.push_str(if k == "recipients" { "[]" } else { v.get() });
    }
    head.push('}');
    let head = super::inject::parse_request(head.as_bytes()).map_err(|mut e| {
        if let Some(m) = e.message.rfind(" at line ") {
            e.message.truncate(m);
        }
        e
    })?;
    let raw: Vec<&RawValue> = match recipients {
        Some(r) => serde_json::from_str(r.get())
            .map_err(|e| invalid("recipients", without_position(&e)))?,
        None => Vec::new(),
    };
    let base = body.as_ptr() as usize;
    let mut spans = Vec::with_capacity(raw.len());
    let mut emails = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let de = &mut serde_json::Deserializer::from_str(r.get());
        let shape: RecipientShape = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = without_position(e.inner());
            let field = if path.is_empty() || path == "." {
                match message.split('`').nth(1) {
                    Some(name) if message.starts_with("missing field") => {
                        format!("recipients[{i}].{name}")
                    }
                    _ => format!("recipients[{i}]"),
                }
            } else {
                format!("recipients[{i}].{path}")
            };
            invalid(field, message)
        })?;
        emails.push(shape.email.into_owned());
        // `r` borrows from `body` (serde_json hands out slices of its input).
        let start = (r.get().as_ptr() as usize).wrapping_sub(base);
        spans.push(start..start + r.get().len());
    }
    drop(raw);
    drop(top);
    Ok(LazyBatch {
        head,
        emails,
        body,
        spans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    const HEAD: &str = r#""from": "a@b.test", "text": "hi {{ name }}""#;

    #[test]
    fn recipients_parse_one_at_a_time_with_their_data() {
        let b = parse(body(&format!(
            r#"{{{HEAD}, "recipients": [{{"email": "x@y.test", "substitutions": {{"p": [1, {{"q": "r"}}]}}}}, {{"email": "z\u0040y.test", "name": "Z"}}]}}"#
        )))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(b.len(), 2);
        assert!(b.head.recipients.is_empty());
        assert_eq!(b.head.from.email(), "a@b.test");
        assert_eq!(b.emails, ["x@y.test", "z@y.test"]);
        let r0 = b.recipient(0).unwrap();
        assert_eq!(r0.substitutions["p"][1]["q"], "r");
        let r1 = b.recipient(1).unwrap();
        assert_eq!(
            (r1.email.as_str(), r1.name.as_deref()),
            ("z@y.test", Some("Z"))
        );
    }

    /// The field at fault is named as the fully parsed request named it.
    #[test]
    fn faults_name_the_field() {
        let cases = [
            (r#"[1]"#.to_string(), "body"),
            (
                r#"{"from": "a@b.test", "recipients": ["#.to_string(),
                "body",
            ),
            (format!(r#"{{{HEAD}}}"#), "recipients"),
            (r#"{"text": "x", "recipients": []}"#.to_string(), "from"),
            (
                format!(r#"{{{HEAD}, "nosuch": 1, "recipients": []}}"#),
                "nosuch",
            ),
            (
                format!(r#"{{{HEAD}, "headers": {{"X-A": 5}}, "recipients": []}}"#),
                "headers.X-A",
            ),
            (format!(r#"{{{HEAD}, "recipients": {{}}}}"#), "recipients"),
            (
                format!(r#"{{{HEAD}, "recipients": [], "recipients": []}}"#),
                "recipients",
            ),
            (
                format!(r#"{{{HEAD}, "recipients": [{{"email": "a@b.test"}}, {{"email": 42}}]}}"#),
                "recipients[1].email",
            ),
            (
                format!(r#"{{{HEAD}, "recipients": [{{"name": "n"}}]}}"#),
                "recipients[0].email",
            ),
            (
                format!(r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "x": 1}}]}}"#),
                "recipients[0].x",
            ),
            (
                format!(
                    r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "substitutions": [1]}}]}}"#
                ),
                "recipients[0].substitutions",
            ),
            (
                format!(r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "metadata": null}}]}}"#),
                "recipients[0].metadata",
            ),
            (format!(r#"{{{HEAD}, "recipients": [7]}}"#), "recipients[0]"),
        ];
        for (text, field) in cases {
            let e = match parse(body(&text)) {
                Ok(_) => panic!("{text}: accepted"),
                Err(e) => e,
            };
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{text}");
            assert_eq!(e.field.as_deref(), Some(field), "{text}: {}", e.message);
            assert_eq!(e.code, "invalid_json", "{text}");
        }
    }

    /// The lazy check accepts exactly what the full parse accepts (same requests, same fields).
    #[test]
    fn agrees_with_the_full_parse() {
        let bodies = [
            format!(
                r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "name": null, "substitutions": {{}}, "metadata": {{"k": [1]}}}}]}}"#
            ),
            format!(r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "name": 3}}]}}"#),
            format!(r#"{{{HEAD}, "recipients": [{{"email": "a@b.test", "substitutions": "s"}}]}}"#),
            format!(r#"{{{HEAD}, "recipients": []}}"#),
            format!(r#"{{{HEAD}, "tenant": null, "recipients": []}}"#),
        ];
        for text in bodies {
            let full = super::super::inject::parse_request(text.as_bytes());
            let lazy = parse(body(&text));
            assert_eq!(full.is_ok(), lazy.is_ok(), "{text}");
            if let (Err(a), Err(b)) = (full, lazy) {
                assert_eq!(a.field, b.field, "{text}");
            }
        }
    }
}
