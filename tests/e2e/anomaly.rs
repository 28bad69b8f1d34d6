//! Issue 20: complete metrics read from a live `/metrics` after real traffic, label cardinality
//! bounded however many domains and campaigns are mailed, and the anomaly detector with its
//! circuit breaker against a sink that hard-bounces part of one campaign.
//!
//! Sinks: .161 (a Gmail MX name), .162 (a provider-less domain), .163–.165 (breaker test),
//! .166 (cardinality test).

use std::collections::BTreeSet;

use crate::common::*;

/// An MX host name the shipped shaping file's `google` provider matches (`*.google.com`).
const GOOGLE_MX: &str = "gmail-smtp-in.l.google.com";

fn campaign_message(campaign: &str, subject: &str) -> Vec<u8> {
    message(
        &[("X-Gannet-Campaign", campaign), ("Subject", subject)],
        "hello",
    )
}

/// Delivered, hard-bounced and deferred recipients to a Gmail-matched site and a plain one:
/// `/metrics` shows each count exactly, by outcome, provider (`google` from the shaping file,
/// `other` for the rest), bounce category, source IP, TLS, campaign, and the deferred
/// recipient in the queue depth gauges; the system gauges have values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_by_provider_category_campaign_and_show_queue_depth() {
    let w = World::start(
        &["127.0.0.161", "127.0.0.162"],
        Zone::new()
            .mx("gm.test", 10, GOOGLE_MX)
            .a(GOOGLE_MX, "127.0.0.161")
            .mail_domain("plain.test", "127.0.0.162")
            .mail_domain("origin.test", "127.0.0.162"),
        // The deferred recipient stays queued (next try in an hour).
        |c| c.retry_schedule(&["1h"]),
    )
    .await;
    for s in &w.sinks {
        s.set_starttls(false);
    }
    let nouser = "550 5.1.1 The email account that you tried to reach does not exist.";
    w.sinks[0].reject_rcpt("x1@gm.test", nouser);
    w.sinks[0].reject_rcpt("x2@gm.test", nouser);
    w.sinks[1]
        .add_rule(Rule::new(Stage::Rcpt, "451 4.3.0 try again later").matching("later@plain.test"));

    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &[
            "a1@gm.test",
            "a2@gm.test",
            "a3@gm.test",
            "x1@gm.test",
            "x2@gm.test",
        ],
        &campaign_message("launch", "to gmail"),
    )
    .await;
    c.send(
        "s@origin.test",
        &["p1@plain.test", "p2@plain.test", "later@plain.test"],
        &campaign_message("launch", "to plain"),
    )
    .await;
    c.quit().await;
    for r in [
        "a1@gm.test",
        "a2@gm.test",
        "a3@gm.test",
        "p1@plain.test",
        "p2@plain.test",
    ] {
        w.gannet.wait_event("delivered", r, WAIT).await;
    }
    for r in ["x1@gm.test", "x2@gm.test"] {
        w.gannet.wait_event("bounced", r, WAIT).await;
    }
    w.gannet
        .wait_event("deferred", "later@plain.test", WAIT)
        .await;
    // The DSN to s@origin.test (x1 and x2 failed in one transaction) is delivered too.
    w.sinks[1]
        .wait_until(WAIT, |ts| {
            ts.iter()
                .filter(|t| t.rcpts.iter().any(|r| r == "s@origin.test"))
                .count()
                >= 1
        })
        .await
        .unwrap_or_else(|e| panic!("the DSN for x1 and x2: {e}"));
    w.gannet
        .wait_event("delivered", "s@origin.test", WAIT)
        .await;

    let g = &w.gannet;
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| async move {
        g.metric(name, labels).await
    };
    let r = "gannet_recipients_total";
    assert_eq!(
        m(r, &[("outcome", "delivered"), ("provider", "google")]).await,
        3.0
    );
    assert_eq!(
        m(r, &[("outcome", "bounced"), ("provider", "google")]).await,
        2.0
    );
    assert_eq!(
        m(
            r,
            &[
                ("outcome", "deferred"),
                ("provider", "other"),
                ("class", "promotional")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        m(r, &[("outcome", "bounced"), ("provider", "other")]).await,
        0.0
    );
    assert_eq!(
        m(
            r,
            &[
                ("outcome", "delivered"),
                ("provider", "google"),
                ("pool", "default"),
                ("class", "promotional")
            ]
        )
        .await,
        3.0
    );
    assert_eq!(
        m(
            "gannet_bounces_total",
            &[("category", "bad-mailbox"), ("provider", "google")]
        )
        .await,
        2.0
    );
    // A DSN travels in its message's campaign: it is one more `launch` delivery.
    assert_eq!(
        m(
            "gannet_campaign_recipients_total",
            &[("campaign", "launch"), ("outcome", "delivered")]
        )
        .await,
        5.0 + dsn_count(&w) as f64
    );
    assert_eq!(
        m(
            "gannet_campaign_recipients_total",
            &[("campaign", "launch"), ("outcome", "bounced")]
        )
        .await,
        2.0
    );
    assert_eq!(
        m(
            "gannet_campaign_recipients_total",
            &[("campaign", "launch"), ("outcome", "deferred")]
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "gannet_source_recipients_total",
            &[("source", "127.0.0.1"), ("outcome", "bounced")]
        )
        .await,
        2.0
    );
    assert_eq!(
        m("gannet_message_size_bytes_count", &[]).await,
        2.0 + dsn_count(&w) as f64
    );
    // Queue depth: only the deferred recipient, waiting for its retry, on a provider-less site.
    assert_eq!(m("gannet_queued_recipients", &[]).await, 1.0);
    assert_eq!(m("gannet_queue_recipients", &[]).await, 1.0);
    assert_eq!(
        m(
            "gannet_queue_recipients",
            &[
                ("state", "scheduled"),
                ("provider", "other"),
                ("class", "promotional"),
                ("pool", "default")
            ]
        )
        .await,
        1.0
    );
    let (_, text) = g.http_get("/metrics").await;
    assert!(
        text.contains("gannet_queue_oldest_age_seconds{class=\"promotional\",pool=\"default\",provider=\"other\"}"),
        "{text}"
    );
    // Deliveries without STARTTLS are counted as such (the sinks offer none).
    assert_eq!(
        m("gannet_delivered_tls_total", &[("version", "none")]).await,
        m(r, &[("outcome", "delivered")]).await
    );
    for name in [
        "gannet_process_resident_memory_bytes",
        "gannet_process_open_fds",
        "gannet_spool_used_bytes",
        "gannet_spool_free_bytes",
        "gannet_heap_in_use_bytes",
    ] {
        assert!(m(name, &[]).await > 0.0, "{name}: {text}");
    }
    assert!(
        !text.contains("gm.test") && !text.contains("plain.test") && !text.contains(GOOGLE_MX),
        "no domain or host in any label: {text}"
    );
}

/// DSNs Gannet sent (each is a `received` message of its own).
fn dsn_count(w: &World) -> usize {
    w.gannet
        .outcomes()
        .iter()
        .filter(|o| o.event == "dsn")
        .count()
}

/// Series in a `/metrics` text (sample lines).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

/// Waits until the sink has `n` recipients delivered.
async fn delivered(sink: &Sink, n: usize) {
    poll(WAIT * 4, || {
        (sink.delivered_rcpts().len() >= n).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{n} recipients should be delivered"));
}

/// The `/metrics` text once nothing is queued (queue gauges then have no series to differ by).
async fn settled(g: &Gannet) -> String {
    for _ in 0..600 {
        if g.metric("gannet_queued_recipients", &[]).await == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    g.http_get("/metrics").await.1
}

/// Mails `from..to` distinct domains (each its own MX host, so its own site), each recipient in
/// its own campaign of 40 campaigns.
async fn mail_domains(g: &Gannet, from: usize, to: usize) {
    let rcpts: Vec<String> = (from..to).map(|i| format!("u@d{i}.test")).collect();
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for (n, chunk) in rcpts.chunks(50).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let campaign = format!("c{}", (from / 50 + n) % 40);
        c.send("s@origin.test", &refs, &campaign_message(&campaign, "hi"))
            .await;
    }
    c.quit().await;
}

/// 5,000 distinct domains (scaled down from the 100,000 to keep the suite fast; each
/// domain is a site with its own MX host and connection) in 40 campaigns with
/// `[metrics] top_campaigns = 5`: the set of series after the first 500 domains (10 campaigns)
/// and after all 5,000 is the same, no domain appears in a label, and campaigns beyond the top
/// 5 are `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_however_many_domains_and_campaigns_are_mailed() {
    const N: usize = 5000;
    const FIRST: usize = 500;
    let mut zone = Zone::new().mail_domain("origin.test", "127.0.0.166");
    for i in 0..N {
        zone = zone.mail_domain(&format!("d{i}.test"), "127.0.0.166");
    }
    let w = World::start(&["127.0.0.166"], zone, |c| {
        c.extra("[metrics]\ntop_campaigns = 5\ncampaign_idle = \"1h\"")
    })
    .await;
    mail_domains(&w.gannet, 0, FIRST).await;
    delivered(&w.sinks[0], FIRST).await;
    let first = series(&settled(&w.gannet).await);
    mail_domains(&w.gannet, FIRST, N).await;
    delivered(&w.sinks[0], N).await;
    let text = settled(&w.gannet).await;
    let all = series(&text);
    let added: Vec<_> = all.difference(&first).collect();
    assert!(
        added.is_empty(),
        "4,500 more domains and 30 more campaigns add no series: {added:#?}"
    );
    assert!(!text.contains(".test\""), "no domain in a label: {text}");
    let campaigns: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.starts_with("gannet_campaign_recipients_total"))
        .filter_map(|s| s.split("campaign=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        campaigns.len(),
        6,
        "5 named campaigns and `other`: {campaigns:?}"
    );
    assert!(campaigns.contains("other"));
    eprintln!(
        "{N} domains, 40 campaigns: {} series before, {} after",
        first.len(),
        all.len()
    );
    assert!(all.len() < 600, "{} series", all.len());
}

/// The circuit breaker: a sink hard-bounces 10% of campaign `spring`'s recipients. The
/// detector raises a critical hard-bounce anomaly for spring only (not for `autumn`, mailed at
/// the same time to the same site), the breaker suspends spring naming the anomaly, autumn keeps
/// flowing while spring's later mail is held, the admins' alert mail arrives at their sink,
/// `gannet_anomaly_active` shows it, and `gannet queue resume --campaign spring` releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_suspends_the_campaign_that_hard_bounces_and_resume_releases_it() {
    let w = World::start(
        &["127.0.0.163", "127.0.0.164"],
        Zone::new()
            .mail_domain("camp.test", "127.0.0.163")
            .mail_domain("admin.test", "127.0.0.164")
            .mail_domain("origin.test", "127.0.0.164"),
        |c| {
            c.extra(
                "[anomaly]\ninterval = \"1s\"\nhard_bounce_min_sample = 40\n\
                 admins = [\"ops@admin.test\"]\nbreaker = true",
            )
        },
    )
    .await;
    let nouser = "550 5.1.1 no such user";
    for i in (0..60).step_by(10) {
        w.sinks[0].reject_rcpt(&format!("spring{i}@camp.test"), nouser);
    }
    let send = |campaign: &'static str, range: std::ops::Range<usize>| {
        let g = &w.gannet;
        async move {
            let rcpts: Vec<String> = range.map(|i| format!("{campaign}{i}@camp.test")).collect();
            let mut c = SmtpClient::connect(g.smtp_addr()).await;
            c.hello("client.test").await;
            for chunk in rcpts.chunks(10) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                c.send(
                    "news@origin.test",
                    &refs,
                    &campaign_message(campaign, "news"),
                )
                .await;
            }
            c.quit().await;
        }
    };
    // First wave: 60 of each; 6 of spring's bounce (10%).
    send("spring", 0..60).await;
    send("autumn", 0..60).await;
    w.gannet
        .wait_event("bounced", "spring50@camp.test", WAIT)
        .await;

    // The anomaly: critical, for spring, with the breaker's suspension.
    let anomaly = poll(WAIT, || {
        w.gannet
            .log_events("gannet::anomaly")
            .into_iter()
            .find(|v| v.to_string().contains("\"raised\""))
    })
    .await
    .unwrap_or_else(|| panic!("an anomaly should be raised:\n{}", w.gannet.log()));
    let s = anomaly.to_string();
    assert!(
        s.contains("hard_bounce_rate") && s.contains("critical"),
        "{s}"
    );
    assert!(s.contains("\"spring\"") && s.contains("suspended"), "{s}");
    let (_, suspensions) = w.gannet.http_get("/api/v1/queues/suspensions").await;
    assert!(
        suspensions.contains("anomaly") && suspensions.contains("hard_bounce_rate"),
        "the suspension names the anomaly: {suspensions}"
    );
    assert_eq!(
        w.gannet
            .metric(
                "gannet_anomaly_active",
                &[
                    ("campaign", "spring"),
                    ("metric", "hard_bounce_rate"),
                    ("severity", "critical")
                ]
            )
            .await,
        1.0
    );
    assert_eq!(
        w.gannet
            .metric("gannet_anomaly_active", &[("campaign", "autumn")])
            .await,
        0.0
    );

    // Second wave: autumn flows, spring is held.
    send("spring", 60..80).await;
    send("autumn", 60..80).await;
    for i in 0..80 {
        w.gannet
            .wait_event("delivered", &format!("autumn{i}@camp.test"), WAIT)
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = w
            .gannet
            .cli(&["queue", "list", "--json", "--campaign", "spring"])
            .await;
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
        let held: u64 = v["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["state"] == "suspended")
            .map(|q| q["recipients"].as_u64().unwrap_or(0))
            .sum();
        if held == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spring's second wave (20) should be held: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for i in 60..80 {
        assert!(
            w.gannet
                .outcomes_for(&format!("spring{i}@camp.test"))
                .is_empty(),
            "a held recipient is neither delivered nor deferred"
        );
    }
    // Only spring's key raised anything.
    for v in w.gannet.log_events("gannet::anomaly") {
        assert!(!v.to_string().contains("autumn"), "{v}");
    }

    // The administrators' mail, through Gannet itself.
    let alerts = w.sinks[1]
        .wait_until(WAIT, |ts| {
            ts.iter()
                .any(|t| t.rcpts.iter().any(|r| r == "ops@admin.test"))
        })
        .await
        .unwrap_or_else(|e| panic!("the alert mail should arrive: {e}"));
    let alert = alerts
        .iter()
        .find(|t| t.rcpts.iter().any(|r| r == "ops@admin.test"))
        .expect("alert");
    let subject = alert.header("subject").unwrap_or_default();
    assert!(
        subject.contains("critical") && subject.contains("spring"),
        "{subject}"
    );
    assert!(
        alert
            .text()
            .contains("gannet queue resume --campaign spring"),
        "{}",
        alert.text()
    );

    // Resume releases the held mail.
    w.gannet
        .cli(&["queue", "resume", "--campaign", "spring"])
        .await
        .assert_success();
    for i in 60..80 {
        w.gannet
            .wait_event("delivered", &format!("spring{i}@camp.test"), WAIT)
            .await;
    }
}

/// Days since the Unix epoch now (UTC), for warm-up start dates in tests.
fn epoch_day() -> i64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 86_400) as i64
}

/// A recipient whose domain does not exist counts one permanent DNS error; one transaction to
/// the Gmail site is one `gannet_delivery_attempt_seconds{provider="google"}` observation; a
/// source on day 10 of the 21-day `standard` warm-up shows `gannet_warmup_day 10` and
/// `gannet_warmup_schedule_length 21`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_errors_attempt_durations_and_warmup_progress_are_exported() {
    // Ten days ago, as YYYY-MM-DD (civil from days: Howard Hinnant's algorithm).
    let z = epoch_day() - 10 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let start = format!("{y:04}-{m:02}-{d:02}");
    let w = World::start(
        &["127.0.0.169"],
        Zone::new()
            .mx("gm2.test", 10, GOOGLE_MX)
            .a(GOOGLE_MX, "127.0.0.169")
            .mail_domain("origin.test", "127.0.0.169"),
        |c| {
            c.extra(&format!(
                "[[pool]]\nname = \"fresh\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"fresh.test\", \
                 name = \"fresh1\", warmup = \"standard\", warmup_start = \"{start}\" }}]\n"
            ))
        },
    )
    .await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["a@gm2.test", "b@gm2.test", "c@nx.test"],
        &campaign_message("x", "hi"),
    )
    .await;
    c.quit().await;
    w.gannet.wait_event("delivered", "b@gm2.test", WAIT).await;
    w.gannet.wait_event("bounced", "c@nx.test", WAIT).await;
    let g = &w.gannet;
    assert_eq!(
        g.metric("gannet_dns_errors_total", &[("kind", "permanent")])
            .await,
        1.0
    );
    assert_eq!(
        g.metric("gannet_dns_errors_total", &[("kind", "temporary")])
            .await,
        0.0
    );
    assert_eq!(
        g.metric(
            "gannet_delivery_attempt_seconds_count",
            &[("provider", "google")]
        )
        .await,
        1.0,
        "a and b went in one transaction"
    );
    assert_eq!(
        g.metric("gannet_warmup_day", &[("source", "fresh1")]).await,
        10.0
    );
    assert_eq!(
        g.metric("gannet_warmup_schedule_length", &[("source", "fresh1")])
            .await,
        21.0
    );
    assert_eq!(g.metric("gannet_warmup_sources", &[]).await, 1.0);
}
