//! Bounce categories on outcomes and the suppression list (issue 17 items 1, 4, 5): Gannet runs
//! in-process (see `events.rs`) against a scripted sink that answers with real provider replies
//! (`bounce::samples`), so every event can be read and checked.
//!
//! Sink addresses: 127.0.0.231–.234.

use std::collections::HashMap;

use ::gannet::bounce::samples::REAL_REPLIES;
use ::gannet::events::{EventKind, Mode, Published};

use crate::common::gannet::http;
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

/// `[class.newsletter]` with one-click unsubscribe headers.
const NEWSLETTER: &str = "[class.newsletter]\npool = \"default\"\npriority = 0\nlist_unsubscribe = true\n\n[unsubscribe]\nbase_url = \"https://unsub.gannet.test\"\n";

fn newsletter(to: &str) -> String {
    serde_json::json!({
        "from": {"email": "news@brand.test"},
        "subject": "picks",
        "text": "hello",
        "class": "newsletter",
        "tenant": "acme",
        "campaign": "spring",
        "recipients": [{"email": to}],
    })
    .to_string()
}

async fn inject(g: &Gannet, to: &str) -> serde_json::Value {
    let (status, text) = http(
        g.http_addr(),
        "POST",
        "/api/v1/messages",
        Some(&newsletter(to)),
    )
    .await
    .unwrap_or_else(|e| panic!("POST /api/v1/messages: {e}\n{}", g.log()));
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["results"][0].clone()
}

/// Send-log events of one recipient, waiting until `done` holds.
async fn events_until(
    g: &Gannet,
    rcpt: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/events?recipient={}", rcpt.replace('@', "%40"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http(g.http_addr(), "GET", &path, None)
            .await
            .expect("GET /api/v1/events");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events of {rcpt} never got there: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Issue 17 Show (RFC 8058): `curl -X POST` with `List-Unsubscribe=One-Click` on a delivered
/// message's List-Unsubscribe URL answers 200 (no redirect) at once; afterwards a message that
/// was already queued for the address (the sink deferring it) is not delivered (`suppressed`,
/// stage `delivery`), and new mail to it is refused over HTTP (that recipient's result) and
/// SMTP (550 5.7.1), while another address is still delivered. `GET` shows a page with a
/// button and no address; an altered token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_stops_queued_and_new_mail_to_the_address() {
    let w = World::start(
        &["127.0.0.232"],
        Zone::new().mail_domain("shop.sup.test", "127.0.0.232"),
        |c| c.extra(NEWSLETTER).retry_schedule(&["1s"]),
    )
    .await;
    let g = &w.gannet;
    let sink = &w.sinks[0];
    let alice = "alice@shop.sup.test";
    let r = inject(g, alice).await;
    assert_eq!(r["status"], "queued", "{r}");
    let got = sink.wait_for(1, WAIT).await;
    let lu = got[0].header("List-Unsubscribe").expect("List-Unsubscribe");
    let url = lu
        .split(',')
        .map(|p| p.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|p| p.starts_with("https://"))
        .expect("https URL");
    let path = url.trim_start_matches("https://unsub.gannet.test");
    assert!(path.starts_with("/u/"), "{url}");

    // A second message to alice sits in the queue: the sink defers her.
    sink.add_rule(Rule::new(Stage::Rcpt, "451 4.2.1 try later").matching(alice));
    let queued = inject(g, alice).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    events_until(g, alice, |es| es.iter().any(|e| e["type"] == "deferred")).await;

    // The confirmation page: a form posting the one-click body, no address in it.
    let base = format!("http://{}", g.http_addr());
    let page = std::process::Command::new("curl")
        .args(["-sS", &format!("{base}{path}")])
        .output()
        .expect("run curl");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("<form method=\"post\""), "{page}");
    assert!(
        page.contains("List-Unsubscribe") && page.contains("One-Click"),
        "{page}"
    );
    assert!(
        !page.contains("alice") && !page.contains("<script"),
        "{page}"
    );

    // The one-click POST, as a mailbox provider sends it.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-X",
            "POST",
            "--data",
            "List-Unsubscribe=One-Click",
            &format!("{base}{path}"),
        ])
        .output()
        .expect("run curl");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(answer, "200", "200 and no redirect: {answer}\n{}", g.log());

    // The queued one is dropped before its next attempt, never delivered.
    sink.clear_rules();
    let events = events_until(g, alice, |es| {
        es.iter()
            .any(|e| e["type"] == "suppressed" && e["stage"] == "delivery")
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "unsubscribed" && e["via"] == "one-click"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "suppression_changed" && e["reason"] == "unsubscribe"),
        "{events:#?}"
    );

    // New mail: refused over HTTP (the recipient's result) and SMTP.
    let r = inject(g, alice).await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("suppression list"),
        "{r}"
    );
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<news@brand.test>", "250").await;
    c.cmd(&format!("RCPT TO:<{alice}>"), "250").await;
    let msg = b"From: news@brand.test\r\nX-Gannet-Class: newsletter\r\nX-Gannet-Tenant: acme\r\nSubject: again\r\n\r\nhi\r\n";
    let reply = c.data(msg, "550").await;
    assert!(reply.text().contains("5.7.1"), "{}", reply.text());
    c.quit().await;

    // Someone else still gets mail, and alice got exactly the first message.
    let bob = inject(g, "bob@shop.sup.test").await;
    assert_eq!(bob["status"], "queued", "{bob}");
    sink.wait_for(2, WAIT).await;
    let to_alice = sink
        .messages()
        .iter()
        .filter(|t| t.rcpts.iter().any(|r| r == alice))
        .count();
    assert_eq!(to_alice, 1, "only the message sent before the opt-out");

    // An altered token is refused.
    let mut bad = path.to_string();
    let last = bad.pop().expect("token");
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = http(
        g.http_addr(),
        "POST",
        &bad,
        Some("List-Unsubscribe=One-Click"),
    )
    .await
    .expect("POST");
    assert_eq!(status, 404);
}

/// `/api/v1/suppressions`: add (manual, global), get, list pages through every entry with a
/// cursor and filters, an added address is refused at injection, delete lifts it; bad input
/// names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppression_api_adds_lists_pages_and_deletes() {
    let w = World::start(
        &["127.0.0.233"],
        Zone::new().mail_domain("shop.sup.test", "127.0.0.233"),
        |c| c.extra(NEWSLETTER),
    )
    .await;
    let g = &w.gannet;
    let call = |method: &'static str, path: String, body: Option<String>| async move {
        let (status, text) = http(g.http_addr(), method, &path, body.as_deref())
            .await
            .expect("API call");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, v)
    };
    for i in 0..25 {
        let body = serde_json::json!({"address": format!("User{i:02}@Shop.sup.test")}).to_string();
        let (status, v) = call("POST", "/api/v1/suppressions".into(), Some(body)).await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["entry"]["reason"], "manual");
        assert_eq!(v["entry"]["address"], format!("user{i:02}@shop.sup.test"));
    }
    let (status, v) = call(
        "POST",
        "/api/v1/suppressions".into(),
        Some(r#"{"address": "no-at-sign"}"#.into()),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["field"], "address");

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/suppressions?limit=10&domain=shop.sup.test{cursor}");
        let (status, v) = call("GET", path, None).await;
        assert_eq!(status, 200, "{v}");
        for e in v["entries"].as_array().expect("entries") {
            seen.push(e["address"].as_str().expect("address").to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25, "{seen:?}");

    let (status, v) = call(
        "GET",
        "/api/v1/suppressions/USER07%40shop.sup.test".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entries"][0]["tenant"], "*");

    let r = inject(g, "user07@shop.sup.test").await;
    assert_eq!(r["status"], "rejected", "{r}");
    let (status, v) = call(
        "DELETE",
        "/api/v1/suppressions/user07%40shop.sup.test".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let r = inject(g, "user07@shop.sup.test").await;
    assert_eq!(r["status"], "queued", "{r}");
    let (status, _) = call(
        "GET",
        "/api/v1/suppressions/user07%40shop.sup.test".into(),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

/// Issue 17 review 4d: a 421 at RCPT for one recipient (its text about that mailbox) closes the
/// connection; the recipients after it in the same pipelined transaction were never answered
/// and are deferred as a connection problem (`routing`), not with the 421's `mailbox-full`
/// (which would count towards their soft-bounce suppression). All are retried and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_after_a_421_at_rcpt_do_not_inherit_its_category() {
    let w = World::start(
        &["127.0.0.234"],
        Zone::new().mail_domain("shop.c421.test", "127.0.0.234"),
        |c| c.retry_schedule(&["1s"]),
    )
    .await;
    let g = &w.gannet;
    let first = "full@shop.c421.test";
    let later = ["b@shop.c421.test", "c@shop.c421.test"];
    w.sinks[0].add_rule(
        Rule::new(
            Stage::Rcpt,
            "421 4.2.2 <full@shop.c421.test>: mailbox full, over quota",
        )
        .matching(first)
        .times(1),
    );
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    let msg = b"From: s@origin.c421.test\r\nSubject: three\r\n\r\nthree recipients\r\n";
    c.send("s@origin.c421.test", &[first, later[0], later[1]], msg)
        .await;
    c.quit().await;
    let mut categories = Vec::new();
    for rcpt in [first].iter().chain(later.iter()) {
        let events = events_until(g, rcpt, |es| es.iter().any(|e| e["type"] == "delivered")).await;
        let deferred: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["type"] == "deferred").collect();
        assert_eq!(deferred.len(), 1, "{rcpt}: {events:#?}");
        categories.push((rcpt.to_string(), deferred[0]["category"].clone()));
    }
    assert_eq!(categories[0].1, "mailbox-full", "{categories:?}");
    for (rcpt, cat) in &categories[1..] {
        assert_eq!(
            cat, "routing",
            "{rcpt} got the 421's category: {categories:?}"
        );
    }
}
