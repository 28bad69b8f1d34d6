//! Table tests of the shipped bounce rules against replies large providers actually send.
//! Sources: the providers' postmaster pages (Google "SMTP error reference", Yahoo "SMTP error
//! codes", Microsoft "NDRs in Exchange Online", Apple "iCloud mail server error codes",
//! Interia "Dlaczego wiadomość nie została dostarczona?", Orange postmaster OFR codes) and
//! replies as commonly quoted from logs (GMX/WEB.DE, Mail.ru, WP, Onet).

use super::*;

use crate::bounce::samples::REAL_REPLIES;

#[test]
fn builtin_rules_load() {
    let c = Classifier::builtin();
    assert!(c.rules.len() > 50);
    assert_eq!(c.is_hard("bad-mailbox"), Some(true));
    assert_eq!(c.is_hard("mailbox-full"), Some(false));
    for cat in [
        "bad-mailbox",
        "bad-domain",
        "inactive-mailbox",
        "mailbox-full",
        "message-too-large",
        "policy",
        "spam-content",
        "auth-failure",
        "rate-limited",
        "reputation-block",
        "routing",
        "protocol",
        "expired",
        "unknown",
    ] {
        assert!(c.is_hard(cat).is_some(), "category {cat} missing");
    }
}

#[test]
fn real_world_replies_classify_as_expected() {
    let c = Classifier::builtin();
    assert!(REAL_REPLIES.len() >= 50, "need at least 50 real replies");
    let mut failures = Vec::new();
    for (provider, line, want) in REAL_REPLIES {
        let got = c.classify_line(line, Some(*provider).filter(|p| !p.is_empty()));
        if &*got.category != *want {
            failures.push(format!(
                "[{provider}] {line}\n    want {want}, got {} (rule {:?})",
                got.category,
                got.rule.map(|r| r.to_string())
            ));
        }
        assert_eq!(got.hard, c.is_hard(want).unwrap_or(false));
    }
    assert!(
        failures.is_empty(),
        "{} of {} misclassified:\n{}",
        failures.len(),
        REAL_REPLIES.len(),
        failures.join("\n")
    );
}

#[test]
fn rule_reference_points_at_the_rule_header() {
    let c = Classifier::builtin();
    let got = c.classify_line(
        "550-5.1.1 The email account that you tried to reach does not exist.",
        Some("google"),
    );
    let rule = got.rule.expect("a rule");
    let line = DEFAULT_BOUNCE_RULES_TOML
        .lines()
        .nth(rule.line - 1)
        .expect("line exists");
    assert_eq!(line.trim(), "[[rule]]");
    let next: Vec<&str> = DEFAULT_BOUNCE_RULES_TOML
        .lines()
        .skip(rule.line)
        .take(3)
        .collect();
    assert_eq!(next[0], "provider = \"google\"");
    assert!(
        rule.to_string()
            .starts_with("built-in config/bounce_rules.toml:")
    );
}

#[test]
fn provider_rules_win_over_generic_ones() {
    let c = Classifier::builtin();
    // Outlook.com says "mailbox unavailable" for a mailbox that does not exist (5.5.0, which
    // RFC 3463 would call a protocol error).
    let line =
        "550 5.5.0 Requested action not taken: mailbox unavailable (-2034147455:308:-2147467259)";
    assert_eq!(
        &*c.classify_line(line, Some("outlook-consumer")).category,
        "bad-mailbox"
    );
    // The same words to an unknown provider still read as a bad mailbox by the text rule...
    assert_eq!(&*c.classify_line(line, None).category, "bad-mailbox");
    // ...but a provider rule can say something a generic rule would not.
    let yahoo = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1";
    assert_eq!(
        &*c.classify_line(yahoo, Some("yahoo")).category,
        "rate-limited"
    );
}

#[test]
fn split_reply_table() {
    let cases: &[(&str, (u16, &str, &str))] = &[
        ("550 5.1.1 no such user", (550, "5.1.1", "no such user")),
        ("550-5.1.1 no such user", (550, "5.1.1", "no such user")),
        ("550 no such user", (550, "", "no such user")),
        ("5.1.1 no such user", (0, "5.1.1", "no such user")),
        ("554 #5.1.1 no", (554, "5.1.1", "no")),
        (
            "451 4.4.1 connection refused",
            (451, "4.4.1", "connection refused"),
        ),
        ("hello 5.1", (0, "", "hello 5.1")),
        ("550", (550, "", "")),
        ("5500 x", (0, "", "5500 x")),
        ("", (0, "", "")),
    ];
    for (line, want) in cases {
        assert_eq!(split_reply(line), *want, "{line:?}");
    }
}

#[test]
fn code_and_enhanced_patterns() {
    let p = CodePattern::parse("55x").unwrap();
    assert!(p.matches(550) && p.matches(554) && !p.matches(450) && !p.matches(0));
    assert!(CodePattern::parse("5x").is_none());
    assert!(CodePattern::parse("a50").is_none());
    let e = enhanced_regex("x.7.2[6-7]").unwrap();
    assert!(e.is_match("5.7.26") && e.is_match("4.7.27") && !e.is_match("5.7.28"));
    let e = enhanced_regex("5.1.1").unwrap();
    assert!(e.is_match("5.1.1") && !e.is_match("5.1.10"));
    assert!(enhanced_regex("5.1").is_none());
    assert!(enhanced_regex("5.(1|2).1").is_none());
}

#[test]
fn bad_rules_files_are_explained() {
    let cases: &[(&str, &str)] = &[
        (
            "[categories]\na = { hard = true }\n[[rule]]\ncategory = \"b\"\n",
            "line 3: category \"b\" is not defined",
        ),
        (
            "[categories]\na = { hard = true }\n\n[[rule]]\ncode = \"5\"\ncategory = \"a\"\n",
            "line 4: code \"5\"",
        ),
        (
            "[categories]\na = { hard = true }\n[[rule]]\ntext = \"(\"\ncategory = \"a\"\n",
            "is not a valid regex",
        ),
        (
            "[categories]\na = { hard = true }\n[[rule]]\nenhanced = \"5.1\"\ncategory = \"a\"\n",
            "enhanced \"5.1\"",
        ),
        ("[[rule]]\nbogus = 1\ncategory = \"a\"\n", "unknown field"),
    ];
    for (text, want) in cases {
        let err = Classifier::from_toml(text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert!(err.contains("t.toml"), "{err}");
    }
}

#[test]
fn connection_and_dns_failures_have_categories() {
    let c = Classifier::builtin();
    let cases = [
        ("451 4.4.1 connection refused", "routing"),
        ("451 4.4.1 no usable address for example.com", "routing"),
        ("451 4.4.2 connection reset by peer", "routing"),
        (
            "550 5.1.2 domain example.invalid does not exist (NXDOMAIN)",
            "bad-domain",
        ),
        (
            "556 5.1.10 example.com does not accept mail (null MX)",
            "bad-domain",
        ),
        (
            "554 5.4.7 message expired after 432000s in the queue; last error: 451 4.4.1 connection refused",
            "expired",
        ),
        (
            "451 4.7.5 TLS handshake failed: certificate expired",
            "routing",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(&*c.classify_line(line, None).category, want, "{line}");
    }
}

#[test]
fn provider_for_uses_shaping_then_own_blocks() {
    let c = Classifier::builtin();
    let s = Shaping::builtin();
    let mx = |h: &str| vec![h.to_string()];
    assert_eq!(
        c.provider_for(Some(&s), "gmail.com", &mx("gmail-smtp-in.l.google.com"))
            .as_deref(),
        Some("google")
    );
    assert_eq!(
        c.provider_for(Some(&s), "orange.fr", &mx("smtp-in.orange.fr"))
            .as_deref(),
        Some("orange")
    );
    assert_eq!(
        c.provider_for(Some(&s), "x.example", &mx("mx.x.example")),
        None
    );
}
