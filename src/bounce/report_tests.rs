//! Every fixture under `tests/fixtures/bounces/` against its `X-Fixture-Expect` header, and
//! tables for the pieces (field parsing, reply finding, auto-reply headers).

use super::*;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bounces");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn expectation(raw: &[u8]) -> std::collections::HashMap<String, String> {
    let text = String::from_utf8_lossy(raw);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Fixture-Expect:"))
        .expect("X-Fixture-Expect header");
    line.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_fixture_is_recognised_as_its_header_says() {
    let classifier = Classifier::builtin();
    let shaping = crate::shaping::Shaping::builtin();
    let all = fixtures();
    assert!(all.len() >= 30, "at least 30 fixtures, found {}", all.len());
    let mut failures = Vec::new();
    for (name, raw) in &all {
        let want = expectation(raw);
        let text = String::from_utf8_lossy(raw);
        assert!(text.contains("X-Fixture-Origin:"), "{name}: origin noted");
        let a = analyse(raw, &classifier, Some(&shaping));
        let got_kind = a.kind.as_str();
        let mut problems = Vec::new();
        if got_kind != want["kind"] {
            problems.push(format!("kind {got_kind} != {}", want["kind"]));
        }
        let want_msgid = &want["msgid"];
        if a.original_message_id.as_deref().unwrap_or("") != want_msgid {
            problems.push(format!(
                "message id {:?} != {want_msgid}",
                a.original_message_id
            ));
        }
        if !want["rcpt"].is_empty() {
            match a.recipients.as_slice() {
                [r] => {
                    if r.address != want["rcpt"] {
                        problems.push(format!("address {} != {}", r.address, want["rcpt"]));
                    }
                    if r.status != want["status"] {
                        problems.push(format!("status {} != {}", r.status, want["status"]));
                    }
                    if r.category != want["category"] {
                        problems.push(format!(
                            "category {} != {} (diagnostic {:?})",
                            r.category, want["category"], r.diagnostic
                        ));
                    }
                }
                other => problems.push(format!("one recipient expected, got {other:?}")),
            }
        } else if !a.recipients.is_empty() {
            problems.push(format!("no recipients expected, got {:?}", a.recipients));
        }
        if let Some(f) = want.get("feedback")
            && a.feedback_type.as_deref() != Some(f.as_str())
        {
            problems.push(format!("feedback type {:?} != {f}", a.feedback_type));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn replies_are_found_in_bounce_text() {
    let table: &[(&str, Option<(&str, &str)>)] = &[
        (
            "Remote host said: 550 5.1.1 unknown",
            Some(("5.1.1", "550 5.1.1 unknown")),
        ),
        ("550-5.7.1 blocked", Some(("5.7.1", "550-5.7.1 blocked"))),
        (
            "<ex.example.net #5.1.1>",
            Some(("5.1.1", "ex.example.net #5.1.1")),
        ),
        (
            "554 delivery error: dd",
            Some(("5.0.0", "554 delivery error: dd")),
        ),
        ("host 192.0.2.25 said hello", None),
        ("Sent:\t03/12/2026 10:00", None),
    ];
    for (line, want) in table {
        let got = reply_in(line);
        assert_eq!(
            got.as_ref().map(|(s, d)| (s.as_str(), d.as_str())),
            *want,
            "{line}"
        );
    }
}

#[test]
fn recipient_lines() {
    let table: &[(&str, Option<&str>)] = &[
        ("<a@example.net>:", Some("a@example.net")),
        ("a@example.net", Some("a@example.net")),
        ("a@example.net on 03/12/2026 10:05", Some("a@example.net")),
        (
            "<a@example.net>: host mx[1.2.3.4] said: 550",
            Some("a@example.net"),
        ),
        ("Subject: hello a@example.net", None),
        ("mailto:a@example.net", None),
    ];
    for (line, want) in table {
        assert_eq!(recipient_address(line).as_deref(), *want, "{line}");
    }
}

#[test]
fn dsn_success_actions_are_not_bounces() {
    let body = b"Reporting-MTA: dns; a.example\r\n\r\nFinal-Recipient: rfc822; x@example.net\r\nAction: delivered\r\nStatus: 2.0.0\r\n";
    let r = parse_dsn_fields(body);
    assert!(r.recipients.is_empty());
    assert_eq!(r.reporting_mta, "a.example");
}

#[test]
fn garbage_is_not_a_bounce() {
    for raw in [&b""[..], b"\x00\xff", b"no headers at all"] {
        assert_eq!(parse(raw).kind, ReportKind::NotABounce);
    }
}
