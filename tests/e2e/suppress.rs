//! Bounce categories on outcomes and the suppression list (issue 17 items 1, 4, 5): Gannet runs
//! in-process (see `events.rs`) against a scripted sink that answers with real provider replies
//! (`bounce::samples`), so every event can be read and checked.
//!
//! Sink addresses: 127.0.0.231–.234.

use std::collections::HashMap;

use ::gannet::bounce::samples::REAL_REPLIES;
use ::gannet::events::{EventKind, Mode, Published};

use crate::common::*;
use crate::events::{InProcess, read_until, subscribe_hook};

/// An MX host name each provider's MX patterns match (shaping.toml or bounce_rules.toml), so
/// the site Gannet delivers to is recognised as that provider.
fn provider_mx(provider: &str) -> &'static str {
    match provider {
        "google" => "aspmx.l.google.com",
        "yahoo" => "mta5.am0.yahoodns.net",
        "outlook-consumer" => "eur.olc.protection.outlook.com",
        "microsoft365" => "contoso-com.mail.protection.outlook.com",
        "icloud" => "mx01.mail.icloud.com",
        "united-internet" => "mx00.gmx.net",
        "orange" => "smtp-in.orange.fr",
        "mailru" => "mxs.mail.ru",
        "wp" => "mx.wp.pl",
        "onet" => "mx.poczta.onet.pl",
        "interia" => "mx.poczta.interia.pl",
        "" => "mx.generic.sup.test",
        other => panic!("no MX host for provider {other:?}: add one to provider_mx"),
    }
}

/// `550-5.1.1 text` (the first line of a multi-line reply) as a one-line reply.
fn one_line(reply: &str) -> String {
    match reply.as_bytes().get(3) {
        Some(b'-') => format!("{} {}", &reply[..3], &reply[4..]),
        _ => reply.to_string(),
    }
}

/// Issue 17 Show: a scripted sink answers every real-world reply of `bounce::samples` (≥ 50,
/// from Gmail, Yahoo, Outlook, iCloud, GMX/WEB.DE, Orange, Mail.ru, WP, Onet, Interia) at RCPT,
/// each to its own recipient on a domain whose MX host is that provider's. Every recipient's
/// `deferred` / `bounced` event carries the expected category, `hard` and the provider; soft
/// (4xx) ones are retried and delivered; hard ones (and only they) are suppressed
/// (`suppression_changed`, reason `hard-bounce`); `gannet_bounces_total` counts the bounces by
/// category and provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_provider_replies_are_classified_on_outcome_events_and_soft_ones_retried() {
    assert!(REAL_REPLIES.len() >= 50);
    let (port, sinks) = bind_sinks(&["127.0.0.231"]).await;
    let sink = &sinks[0];
    let mut zone = Zone::new().mail_domain("origin.sup.test", "127.0.0.231");
    let mut by_domain: HashMap<String, Vec<String>> = HashMap::new();
    let mut expect: HashMap<String, (&str, &str, u16)> = HashMap::new();
    for (i, (provider, reply, category)) in REAL_REPLIES.iter().enumerate() {
        let domain = format!(
            "p-{}.sup.test",
            if provider.is_empty() {
                "generic"
            } else {
                provider
            }
        );
        if !by_domain.contains_key(&domain) {
            let mx = provider_mx(provider);
            zone = zone.mx(&domain, 10, mx).a(mx, "127.0.0.231");
        }
        let rcpt = format!("r{i}@{domain}");
        let line = one_line(reply);
        let code: u16 = line[..3].parse().expect("reply code");
        let rule = Rule::new(Stage::Rcpt, &line).matching(&rcpt);
        // Soft replies once (the retry is accepted); permanent ones every time.
        sink.add_rule(if code < 500 { rule.times(1) } else { rule });
        expect.insert(rcpt.clone(), (provider, category, code));
        by_domain.entry(domain).or_default().push(rcpt);
    }
    let dns = TestDns::start(zone).await;
    let (hook, rx) = subscribe_hook(Mode::Lossless { bound: 100_000 });
    // The shipped providers, without the backoff rules (a Gmail 4.7.28 would throttle the
    // source for an hour and this test is about categories, not pacing).
    let shaping = "[[provider]]\nname = \"google\"\nmx = [\"*.google.com\"]\n\
        [[provider]]\nname = \"yahoo\"\nmx = [\"*.yahoodns.net\"]\n\
        [[provider]]\nname = \"outlook-consumer\"\nmx = [\"*.olc.protection.outlook.com\"]\n\
        [[provider]]\nname = \"microsoft365\"\nmx = [\"*.protection.outlook.com\"]\n\
        [[provider]]\nname = \"icloud\"\nmx = [\"*.mail.icloud.com\"]\n\
        [[provider]]\nname = \"united-internet\"\nmx = [\"*.gmx.net\", \"*.web.de\"]\n";
    let config = TestConfig::new(&dns, port)
        .retry_schedule(&["1s"])
        .shaping(shaping);
    let g = InProcess::start(&config, hook).await;
    let (_bus, mut sub) = rx.await.expect("hook ran");

    // One message per recipient: a 421 closes the connection, and the transaction's other
    // recipients would be deferred with that reply instead of their own.
    let mut c = SmtpClient::connect(g.smtp()).await;
    c.hello("client.test").await;
    for rcpt in by_domain.values().flatten() {
        let msg = b"From: s@origin.sup.test\r\nSubject: replies\r\n\r\nreal replies\r\n";
        c.send("s@origin.sup.test", &[rcpt.as_str()], msg).await;
    }
    c.quit().await;
    let soft = expect.values().filter(|(_, _, code)| *code < 500).count();
    let hard = expect.len() - soft;
    let mut got: Vec<Published> = Vec::new();
    read_until(&mut sub, &mut got, |ps| {
        let n = |t: &str| {
            ps.iter()
                .filter(|p| p.event.type_name() == t && expect.contains_key(&p.event.recipient))
                .count()
        };
        n("bounced") == hard && n("delivered") == soft
    })
    .await;
    // Every hard one is put on the suppression list by the policy (and said so).
    let hard_rcpts: Vec<String> = got
        .iter()
        .filter(|p| matches!(p.event.kind, EventKind::Bounced { hard: true, .. }))
        .map(|p| p.event.recipient.clone())
        .collect();
    assert!(hard_rcpts.len() >= 15, "{hard_rcpts:?}");
    read_until(&mut sub, &mut got, |ps| {
        hard_rcpts.iter().all(|r| {
            ps.iter().any(|p| {
                &p.event.recipient == r
                    && matches!(&p.event.kind, EventKind::SuppressionChanged { reason, change, .. } if reason == "hard-bounce" && change == "added")
            })
        })
    })
    .await;
    let suppressed: Vec<&str> = got
        .iter()
        .filter(|p| p.event.type_name() == "suppression_changed")
        .map(|p| p.event.recipient.as_str())
        .collect();
    assert_eq!(
        suppressed.len(),
        hard_rcpts.len(),
        "only hard bounces: {suppressed:?}"
    );

    let mut wrong = Vec::new();
    for p in &got {
        let e = &p.event;
        let Some((provider, want, code)) = expect.get(&e.recipient) else {
            continue;
        };
        let want_hard = ::gannet::bounce::Classifier::builtin()
            .is_hard(want)
            .expect("category defined");
        let (category, hard, got_provider) = match &e.kind {
            EventKind::Deferred {
                category, provider, ..
            } => {
                assert!(*code < 500, "{e:?}");
                (category, false, provider)
            }
            EventKind::Bounced {
                category,
                hard,
                provider,
                ..
            } => {
                assert!(*code >= 500, "{e:?}");
                (category, *hard, provider)
            }
            _ => continue,
        };
        if category != want || got_provider != provider || (*code >= 500 && hard != want_hard) {
            wrong.push(format!(
                "{}: [{provider}] want {want} (hard {want_hard}), got [{got_provider}] {category} (hard {hard}): {}",
                e.recipient,
                e.kind.reply().unwrap_or_default()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} misclassified on events:\n{}",
        wrong.len(),
        expect.len(),
        wrong.join("\n")
    );

    // Soft ones were retried and delivered; no recipient got a final bounce after a 4xx.
    for (rcpt, (_, _, code)) in &expect {
        let types: Vec<&str> = got
            .iter()
            .filter(|p| &p.event.recipient == rcpt)
            .map(|p| p.event.type_name())
            .filter(|t| *t != "suppression_changed")
            .collect();
        if *code < 500 {
            assert_eq!(types, ["deferred", "delivered"], "{rcpt}");
        } else {
            assert_eq!(types, ["bounced"], "{rcpt}");
        }
    }

    // The metric: one series per (category, class, pool, provider), summing to the bounces.
    let samples = g.metric_samples("gannet_bounces_total").await;
    let total: f64 = samples.values().sum();
    assert!(total >= hard as f64, "{samples:#?}");
    assert!(
        samples
            .keys()
            .any(|k| k.contains("category=\"bad-mailbox\"") && k.contains("provider=\"google\"")),
        "{samples:#?}"
    );
    assert!(
        samples.keys().all(|k| !k.contains("sup.test")),
        "no domain labels: {samples:#?}"
    );
    g.stop().await;
}
