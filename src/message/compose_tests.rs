//! Tests for message building: structure, encodings, and header injection attempts that must
//! yield no extra header and no extra recipient.

use super::*;
use mail_parser::{HeaderName, MessageParser};

fn request(v: serde_json::Value) -> BatchRequest {
    serde_json::from_value(v).unwrap()
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "from": {"email": "news@shop.example", "name": "Shöp News"},
        "subject": "Hello {{ first_name }} ☃",
        "text": "Hi {{ first_name }}\n{% for p in products %}- {{ p }}\n{% endfor %}",
        "html": "<p>Hi {{ first_name }}</p>",
        "headers": {"X-Campaign-Tag": "{{ tag }}"},
        "substitutions": {"products": ["a", "b"], "tag": "t1"},
        "recipients": []
    })
}

fn rcpt(email: &str, name: Option<&str>, subs: serde_json::Value) -> Recipient {
    serde_json::from_value(serde_json::json!({"email": email, "name": name, "substitutions": subs}))
        .unwrap()
}

fn extras() -> Extras {
    Extras {
        message_id: "abc123".into(),
        hostname: "mx.gannet.test".into(),
        date: 1_700_000_000,
        extra_headers: vec!["List-Unsubscribe-Post: List-Unsubscribe=One-Click".into()],
    }
}

#[test]
fn builds_multipart_alternative_with_encoded_utf8_and_ids() {
    let batch = Batch::prepare(&request(base()), TemplateLimits::default()).unwrap();
    let m = batch
        .build(
            &rcpt(
                "zoë@example.com".replace('ë', "e").as_str(),
                Some("Zoë Ünïcode"),
                serde_json::json!({"first_name": "Zoë"}),
            ),
            &extras(),
        )
        .unwrap();
    let text = String::from_utf8(m.clone()).unwrap();
    assert!(
        text.is_ascii(),
        "8-bit data leaked into the message:\n{text}"
    );
    assert!(text.lines().all(|l| l.len() <= 998));
    let p = MessageParser::new().parse(&m).unwrap();
    assert_eq!(p.subject(), Some("Hello Zoë ☃"));
    assert_eq!(p.message_id(), Some("abc123@mx.gannet.test"));
    assert!(p.date().is_some());
    let to = p.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("Zoë Ünïcode"));
    assert_eq!(to.address(), Some("zoe@example.com"));
    assert_eq!(p.from().unwrap().first().unwrap().name(), Some("Shöp News"));
    assert!(
        p.header_raw("Content-Type")
            .is_some_and(|c| c.contains("multipart/alternative")),
        "{text}"
    );
    assert_eq!(
        p.body_text(0).unwrap().trim_end(),
        "Hi Zoë\n- a\n- b".replace('\n', "\r\n").trim_end()
    );
    assert!(p.body_html(0).unwrap().contains("<p>Hi Zoë</p>"));
    assert_eq!(p.header_raw("X-Campaign-Tag").map(str::trim), Some("t1"));
    assert_eq!(
        p.header_raw("List-Unsubscribe-Post").map(str::trim),
        Some("List-Unsubscribe=One-Click")
    );
}

/// Every way a substitution value, a name or a custom header could try to smuggle a header
/// line: each is refused for that recipient (never passed through).
#[test]
fn header_injection_is_refused_per_recipient() {
    let attacks = [
        "x\r\nBcc: evil@attacker.example",
        "x\nBcc: evil@attacker.example",
        "x\rBcc: evil@attacker.example",
        "x\0Bcc: evil@attacker.example",
        "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.example?=",
    ];
    let batch = Batch::prepare(&request(base()), TemplateLimits::default()).unwrap();
    for a in attacks {
        // Through subject data.
        let e = batch
            .build(
                &rcpt("a@example.com", None, serde_json::json!({"first_name": a})),
                &extras(),
            )
            .unwrap_err();
        assert_eq!(e.code(), "header_unsafe", "subject data {a:?}: {e}");
        // Through a custom header's data.
        let e = batch
            .build(
                &rcpt(
                    "a@example.com",
                    None,
                    serde_json::json!({"first_name": "A", "tag": a}),
                ),
                &extras(),
            )
            .unwrap_err();
        assert_eq!(e.code(), "header_unsafe", "header data {a:?}: {e}");
        // Through the recipient's name.
        let e = batch
            .build(
                &rcpt(
                    "a@example.com",
                    Some(a),
                    serde_json::json!({"first_name": "A"}),
                ),
                &extras(),
            )
            .unwrap_err();
        assert_eq!(e.code(), "invalid_name", "name {a:?}: {e}");
        // Through the custom header template itself (static text in the request).
        let mut r = base();
        r["headers"] = serde_json::json!({ "X-Tag": a });
        let b = Batch::prepare(&request(r), TemplateLimits::default()).unwrap();
        let e = b
            .build(
                &rcpt(
                    "a@example.com",
                    None,
                    serde_json::json!({"first_name": "A"}),
                ),
                &extras(),
            )
            .unwrap_err();
        assert_eq!(e.code(), "header_unsafe", "static header {a:?}: {e}");
    }
}

/// Names with address syntax stay a display name: one To address, the recipient's own.
#[test]
fn names_cannot_add_recipients() {
    let batch = Batch::prepare(&request(base()), TemplateLimits::default()).unwrap();
    for name in [
        "Evil, <evil@attacker.example>",
        "\"a\" <evil@attacker.example>, b",
        "x@y.example; evil@attacker.example",
        "Bob (comment) <evil@attacker.example>",
    ] {
        let m = batch
            .build(
                &rcpt(
                    "a@example.com",
                    Some(name),
                    serde_json::json!({"first_name": "A"}),
                ),
                &extras(),
            )
            .unwrap();
        let p = MessageParser::new().parse(&m).unwrap();
        let to: Vec<_> = p.to().unwrap().iter().collect();
        assert_eq!(to.len(), 1, "{name:?}:\n{}", String::from_utf8_lossy(&m));
        assert_eq!(to[0].address(), Some("a@example.com"));
        assert_eq!(to[0].name(), Some(name));
        assert!(p.bcc().is_none() && p.cc().is_none());
        let names: Vec<_> = p.headers().iter().map(|h| h.name.clone()).collect();
        assert_eq!(names.iter().filter(|n| **n == HeaderName::To).count(), 1);
    }
}

#[test]
fn bad_addresses_are_that_recipients_error() {
    let batch = Batch::prepare(&request(base()), TemplateLimits::default()).unwrap();
    for bad in [
        "",
        "no-at",
        "a@b@c.example",
        "a b@example.com",
        "a@example.com\r\nRCPT TO:<x@y.example>",
        "a@example.com>, <evil@attacker.example",
        "a@localhost",
        "a@-bad.example",
        ".a@example.com",
        "ü@example.com",
    ] {
        let e = batch
            .build(
                &rcpt(bad, None, serde_json::json!({"first_name": "A"})),
                &extras(),
            )
            .unwrap_err();
        assert_eq!(e.code(), "invalid_address", "{bad:?}");
    }
    assert!(check_address("first.last+tag@sub.example.co.uk").is_ok());
}

#[test]
fn missing_variable_is_that_recipients_error() {
    let batch = Batch::prepare(&request(base()), TemplateLimits::default()).unwrap();
    let e = batch
        .build(
            &rcpt("a@example.com", None, serde_json::json!({})),
            &extras(),
        )
        .unwrap_err();
    assert_eq!(e.code(), "undefined_variable");
    assert!(e.to_string().contains("first_name"), "{e}");
}

#[test]
fn request_checks_name_the_field() {
    let table: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"from": "bad"}), "from"),
        (serde_json::json!({"reply_to": "x y@z.example"}), "reply_to"),
        (serde_json::json!({"headers": {"Bcc": "x"}}), "headers.Bcc"),
        (
            serde_json::json!({"headers": {"Content-Type": "x"}}),
            "headers.Content-Type",
        ),
        (
            serde_json::json!({"headers": {"X-Gannet-Class": "x"}}),
            "headers.X-Gannet-Class",
        ),
        (
            serde_json::json!({"headers": {"Bad Name": "x"}}),
            "headers.Bad Name",
        ),
        (serde_json::json!({"html": "<p>\n{% if %}"}), "html"),
        (serde_json::json!({"text": null, "html": null}), "text"),
        (
            serde_json::json!({"content": "From: a@b.example\n\nhi"}),
            "content",
        ),
    ];
    for (patch, field) in table {
        let mut r = base();
        for (k, v) in patch.as_object().unwrap() {
            r[k] = v.clone();
        }
        let e = Batch::prepare(&request(r), TemplateLimits::default()).unwrap_err();
        assert_eq!(e.field, field, "{patch}: {e}");
    }
}

#[test]
fn raw_content_templates_keep_headers_safe_and_use_crlf() {
    let r = serde_json::json!({
        "from": "news@shop.example",
        "content": "From: news@shop.example\nTo: {{ email }}\nSubject: Hi {{ first_name }}\n\nHello {{ first_name }}\nbye\n",
        "recipients": []
    });
    let batch = Batch::prepare(&request(r), TemplateLimits::default()).unwrap();
    let m = batch
        .build(
            &rcpt(
                "a@example.com",
                None,
                serde_json::json!({"first_name": "Ann"}),
            ),
            &extras(),
        )
        .unwrap();
    let s = String::from_utf8(m).unwrap();
    assert_eq!(
        s,
        "From: news@shop.example\r\nTo: a@example.com\r\nSubject: Hi Ann\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello Ann\r\nbye\r\n"
    );
    let e = batch
        .build(
            &rcpt(
                "a@example.com",
                None,
                serde_json::json!({"first_name": "x\nBcc: e@v.example"}),
            ),
            &extras(),
        )
        .unwrap_err();
    assert_eq!(e.code(), "header_unsafe");
}

#[test]
fn rendered_size_is_bounded() {
    let mut r = base();
    r["text"] = serde_json::json!("{% for i in range(2000) %}{{ big }}{% endfor %}");
    r["substitutions"]["big"] = serde_json::json!("x".repeat(2000));
    let batch = Batch::prepare(&request(r), TemplateLimits::default()).unwrap();
    let e = batch
        .build(
            &rcpt(
                "a@example.com",
                None,
                serde_json::json!({"first_name": "A"}),
            ),
            &extras(),
        )
        .unwrap_err();
    assert_eq!(e.code(), "too_large", "{e}");
    assert!(e.to_string().contains("2097152"), "{e}");
}
