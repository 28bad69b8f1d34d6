//! Per-destination shaping (issue 4): connection and rate limits from a test shaping file,
//! priority of transactional over promotional mail at a slow site, adaptive backoff on
//! `421 4.7.28`, and operator queue control (suspend, resume, purge) by campaign and site.
//!
//! Every test writes its own shaping file (`TestConfig::shaping`), which replaces the
//! built-in `config/shaping.toml` as a whole, so limits and rules are exactly what the test
//! says. Sink addresses of this module: 127.0.0.121–139.

use std::time::{Duration, SystemTime};

use crate::common::tools::smtp_source;
use crate::common::*;

/// The largest number of messages in any stretch of time, beyond what a steady `rate` would
/// allow in that stretch: `max over i <= j of (j - i + 1) - rate * (t[j] - t[i])` over sorted
/// arrival times. A GCRA limiter with burst `b` keeps this at most `b`.
fn excess_over_rate(times: &[Duration], rate: f64) -> f64 {
    let mut best = f64::MIN;
    let mut max_start = f64::MIN; // max over i <= j of rate * t[i] - i
    for (j, t) in times.iter().enumerate() {
        let x = rate * t.as_secs_f64();
        max_start = max_start.max(x - j as f64);
        best = best.max((j + 1) as f64 + max_start - x);
    }
    best
}

/// Most messages whose arrival falls in any window `[t, t + window)`.
fn max_in_window(times: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut i = 0;
    for j in 0..times.len() {
        while times[j] - times[i] >= window {
            i += 1;
        }
        best = best.max(j - i + 1);
    }
    best
}

/// Thousands of messages from Postfix `smtp-source` (20 parallel sessions into Gannet) to one
/// destination whose shaping override says `max_connections = 3` and
/// `max_messages_per_second = 300`: the sink never sees more than 3 connections at once, and
/// the arrivals never run ahead of 300 msg/s by more than the limiter's burst.
///
/// The exact bound (src/shaping/limiter.rs, `QuotaKey::per_second`): a GCRA with one token per
/// 1/300 s and a burst of one second's worth (300), so any stretch of T seconds holds at most
/// 300 + 300·T messages — 600 in any 1 s window, and over the whole run the last message
/// cannot arrive earlier than (N − 300) / 300 s after the first. Arrival times are taken at the
/// sink, after the token, so a little slack covers the jitter of the delivery itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_message_rate_hold_over_thousands_of_messages() {
    const N: usize = 2500;
    const RATE: f64 = 300.0;
    const BURST: f64 = 300.0;
    const CAP: usize = 3;
    let w = World::start(
        &["127.0.0.121"],
        Zone::new().mail_domain("rate.test", "127.0.0.121"),
        |c| {
            c.shaping(
                "[domain.\"rate.test\"]\nmax_connections = 3\nmax_messages_per_second = 300\n",
            )
        },
    )
    .await;
    let sink = &w.sinks[0];
    smtp_source(
        w.gannet.smtp_addr(),
        N,
        20,
        "load@origin.test",
        "r@rate.test",
        300,
    )
    .await
    .assert_success();
    let ts = sink
        .wait_until(Duration::from_secs(90), |ts| {
            ts.iter().filter(|t| t.accepted).count() >= N
        })
        .await
        .unwrap_or_else(|e| panic!("waiting for {N} messages: {e}"));
    let mut times: Vec<Duration> = ts
        .iter()
        .filter(|t| t.accepted)
        .map(|t| t.elapsed)
        .collect();
    times.sort();
    let max_conc = sink.max_concurrent();
    let peak_1s = max_in_window(&times, Duration::from_secs(1));
    let excess = excess_over_rate(&times, RATE);
    let span = times[times.len() - 1] - times[0];
    eprintln!(
        "rate test: {N} messages over {:.2}s, max concurrent connections {max_conc}, \
         connections opened {}, peak in any 1 s window {peak_1s}, excess over {RATE}/s {excess:.1}, \
         per-second counts {:?}",
        span.as_secs_f64(),
        sink.connections_opened(),
        sink.per_second_counts()
    );
    assert_eq!(ts.len(), N, "every message arrives once, none refused");
    assert!(
        max_conc <= CAP,
        "max_connections = {CAP}, but the sink saw {max_conc} connections at once"
    );
    // Jitter between taking the token and the sink's reply: 100 ms worth of messages.
    let slack = RATE * 0.1;
    assert!(
        excess <= BURST + slack,
        "max_messages_per_second = {RATE}: arrivals ran {excess:.0} messages ahead of the rate \
         (the limiter's burst is {BURST}); peak in a 1 s window {peak_1s}"
    );
    assert!(
        peak_1s as f64 <= BURST + RATE + slack,
        "at most {BURST} + {RATE} messages in any 1 s window, saw {peak_1s}"
    );
}

/// Promotional messages in the priority tests: the 20,000.
const PROMO: usize = 20_000;
/// Connections to the slow site (per pool source), and the sink's delay per message.
const SLOW_CONNECTIONS: usize = 4;
const SLOW_DELAY: Duration = Duration::from_millis(100);

/// Queues `PROMO` promotional messages (default class) to `r@slow.test` with smtp-source,
/// then one `X-Gannet-Class: transactional` message to `tx@slow.test`, and waits for the
/// transactional one at the sink. Returns how many promotional messages the sink accepted
/// between Gannet's 250 for the transactional message and its arrival.
async fn promo_delivered_before_tx(w: &World) -> usize {
    let sink = &w.sinks[0];
    sink.set_delay(SLOW_DELAY);
    let out = smtp_source(
        w.gannet.smtp_addr(),
        PROMO,
        20,
        "promo@origin.test",
        "r@slow.test",
        300,
    )
    .await;
    out.assert_success();
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "tx@origin.test",
        &["tx@slow.test"],
        b"X-Gannet-Class: transactional\r\nSubject: your receipt\r\n\r\nthanks\r\n",
    )
    .await;
    let at_injection = sink.transactions().len();
    c.quit().await;
    let is_tx = |t: &Transaction| t.accepted && t.rcpts.iter().any(|r| r == "tx@slow.test");
    let ts = sink
        .wait_until(Duration::from_secs(45), |ts| ts.iter().any(is_tx))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the transactional message did not arrive within 45 s while {} promotional \
                 ones did: it waits behind the promotional backlog\n{}",
                sink.messages().len(),
                e.lines().next().unwrap_or_default()
            )
        });
    let tx_index = ts.iter().position(is_tx).expect("checked above");
    let before = ts[at_injection.min(tx_index)..tx_index]
        .iter()
        .filter(|t| t.accepted)
        .count();
    eprintln!(
        "priority: {PROMO} promotional queued, {} delivered before the transactional one was \
         accepted, {before} more before it arrived ({} connections max)",
        at_injection,
        sink.max_concurrent()
    );
    before
}

/// Transactional and promotional share one pool: 20,000 promotional messages wait for a slow
/// site (100 ms per message, 4 connections); a transactional message queued after them takes
/// the next free connection (its priority lane is served first), so at most the messages
/// already in flight plus one per other connection arrive before it — never the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_overtakes_a_promotional_backlog_in_a_shared_pool() {
    let w = World::start(
        &["127.0.0.122"],
        Zone::new().mail_domain("slow.test", "127.0.0.122"),
        |c| {
            // Both classes on the `default` pool (TestConfig's default), priorities 10 and 0.
            c.shaping(&format!(
                "[domain.\"slow.test\"]\nmax_connections = {SLOW_CONNECTIONS}\n"
            ))
        },
    )
    .await;
    let before = promo_delivered_before_tx(&w).await;
    assert!(
        before <= 2 * SLOW_CONNECTIONS,
        "{before} promotional messages arrived after the transactional one was queued and \
         before it; with {SLOW_CONNECTIONS} connections at most {} may (one delivery cycle)",
        2 * SLOW_CONNECTIONS
    );
    assert!(w.sinks[0].max_concurrent() <= SLOW_CONNECTIONS);
}

/// Transactional and promotional in separate pools (separate source IPs, each with its own
/// connection budget towards the site): the promotional backlog fills its own 4 connections;
/// the transactional message gets a connection of its own at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_overtakes_a_promotional_backlog_through_its_own_pool() {
    let w = World::start(
        &["127.0.0.123"],
        Zone::new().mail_domain("slow.test", "127.0.0.123"),
        |c| {
            c.pool("tx", &[("127.0.0.124", "tx.gannet.test")])
                .class("transactional", "tx", 10)
                .shaping(&format!(
                    "[domain.\"slow.test\"]\nper_source = {{ max_connections = {SLOW_CONNECTIONS} }}\n"
                ))
        },
    )
    .await;
    let before = promo_delivered_before_tx(&w).await;
    let sink = &w.sinks[0];
    let tx = sink
        .messages()
        .into_iter()
        .find(|t| t.rcpts.iter().any(|r| r == "tx@slow.test"))
        .expect("arrived");
    assert_eq!(
        tx.peer.ip().to_string(),
        "127.0.0.124",
        "through the tx pool"
    );
    assert!(
        before <= 2 * SLOW_CONNECTIONS,
        "{before} promotional messages arrived after the transactional one was queued and \
         before it; its own pool should have sent it within one delivery ({} at most)",
        2 * SLOW_CONNECTIONS
    );
}

/// Separate pools under a connection cap for the site (`max_connections = 4`, as a provider
/// preset or an operator override sets it). The cap applies per (site, pool), as PowerMTA
/// applies `max-smtp-out` per VirtualMTA (README, "Traffic classes, pools and shaping"): the
/// promotional backlog fills its own 4 connections and the transactional pool still has its
/// own. DESIGN.md: "Transactional mail never waits behind promotional mail."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_pool_has_its_own_budget_under_a_site_connection_cap() {
    let w = World::start(
        &["127.0.0.125"],
        Zone::new().mail_domain("slow.test", "127.0.0.125"),
        |c| {
            c.pool("tx", &[("127.0.0.126", "tx.gannet.test")])
                .class("transactional", "tx", 10)
                .shaping(&format!(
                    "[domain.\"slow.test\"]\nmax_connections = {SLOW_CONNECTIONS}\n"
                ))
        },
    )
    .await;
    let before = promo_delivered_before_tx(&w).await;
    assert!(
        before <= 2 * SLOW_CONNECTIONS,
        "{before} promotional messages arrived after the transactional one was queued and \
         before it ({} at most)",
        2 * SLOW_CONNECTIONS
    );
    let most = w.sinks[0].max_concurrent();
    assert!(
        most <= 2 * SLOW_CONNECTIONS,
        "{SLOW_CONNECTIONS} connections per pool, two pools: the sink saw {most} at once"
    );
}

/// When a `gannet::shaping` log line was written (its `timestamp`).
fn log_time(v: &serde_json::Value) -> SystemTime {
    let ts = v["timestamp"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("log timestamp {ts:?}: {e} in {v}"))
}

/// Gmail's reply when it rate-limits a sending IP.
const GMAIL_421: &str = "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of \
    unsolicited mail originating from your IP address. To protect our users from spam, mail \
    sent from your IP address has been temporarily rate limited.";

/// A site answers `421 4.7.28 ... rate limited` to the first three messages. The backoff rule
/// of the test shaping file (throttle this source to 5 msg/s and 1 connection for 3 s) fires:
/// a `started` transition is logged and counted, at most 5 msg/s (plus the limiter's burst
/// and what was already in flight) arrive while it lasts although hundreds are waiting, an
/// `ended` transition follows the configured 3 s, and the backlog drains at full speed. The
/// refused messages are deferred, never bounced, and delivered on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_reply_starts_a_backoff_that_slows_delivery_and_ends_on_time() {
    const N: usize = 300;
    const THROTTLED_RATE: f64 = 5.0;
    const DURATION: Duration = Duration::from_secs(3);
    const CONNECTIONS: usize = 4;
    let w = World::start(
        &["127.0.0.127"],
        Zone::new().mail_domain("limited.test", "127.0.0.127"),
        |c| {
            c.shaping(&format!(
                "[domain.\"limited.test\"]\nmax_connections = {CONNECTIONS}\n\n\
                 [[backoff]]\nname = \"test-ip-rate-limited\"\ncodes = [421, 450, 451]\n\
                 enhanced = [\"4.7.28\"]\naction = \"throttle\"\nscope = \"source\"\n\
                 max_rate = {THROTTLED_RATE}\nmax_connections = 1\nduration = \"3s\"\n"
            ))
        },
    )
    .await;
    let sink = &w.sinks[0];
    sink.add_rule(Rule::new(Stage::Data, GMAIL_421).times(3));
    smtp_source(
        w.gannet.smtp_addr(),
        N,
        10,
        "bulk@origin.test",
        "r@limited.test",
        300,
    )
    .await
    .assert_success();
    let ts = sink
        .wait_until(Duration::from_secs(60), |ts| {
            ts.iter().filter(|t| t.accepted).count() >= N
        })
        .await
        .unwrap_or_else(|e| panic!("waiting for {N} messages: {e}"));

    // Transitions in the log.
    let events: Vec<serde_json::Value> = w
        .gannet
        .log_events("gannet::shaping")
        .into_iter()
        .filter(|v| v["event"] == "backoff" && v["rule"] == "test-ip-rate-limited")
        .collect();
    let of_kind =
        |k: &str| -> Vec<&serde_json::Value> { events.iter().filter(|v| v["kind"] == k).collect() };
    let started = of_kind("started");
    assert_eq!(
        started.len(),
        1,
        "one backoff started by the 421 4.7.28 replies: {events:#?}"
    );
    let started = started[0];
    assert_eq!(started["action"], "throttle", "{started}");
    assert_eq!(started["source"], "127.0.0.1", "scope = source: {started}");
    let last_set = of_kind("started")
        .into_iter()
        .chain(of_kind("extended"))
        .map(log_time)
        .max()
        .expect("started");
    let ended_at = poll(Duration::from_secs(15), || {
        w.gannet
            .log_events("gannet::shaping")
            .into_iter()
            .find(|v| v["kind"] == "ended" && v["rule"] == "test-ip-rate-limited")
    })
    .await
    .unwrap_or_else(|| panic!("no `ended` transition logged: {events:#?}"));
    let ended_at = log_time(&ended_at);
    let lasted = ended_at.duration_since(last_set).unwrap_or_default();
    assert!(
        lasted >= DURATION - Duration::from_millis(50) && lasted <= DURATION * 3,
        "the throttle lasts the rule's 3 s after the last matching reply, then ends (logged \
         within the 1 s expiry tick); it ended {lasted:?} after"
    );
    assert!(
        w.gannet
            .metric(
                "gannet_backoff_transitions_total",
                &[("kind", "started"), ("rule", "test-ip-rate-limited")]
            )
            .await
            >= 1.0
    );
    assert!(
        w.gannet
            .metric(
                "gannet_backoff_transitions_total",
                &[("kind", "ended"), ("rule", "test-ip-rate-limited")]
            )
            .await
            >= 1.0
    );

    // The rate while throttled, against what waited. The window ends a little before the
    // throttle surely does, so a late log timestamp cannot pull the full-speed drain into it.
    let start = log_time(started);
    let end = last_set + DURATION - Duration::from_millis(250);
    let window = end.duration_since(start).unwrap_or_default();
    let during = ts
        .iter()
        .filter(|t| t.accepted && t.at >= start && t.at < end)
        .count();
    let after = ts
        .iter()
        .filter(|t| t.accepted && t.at >= last_set + DURATION)
        .count();
    let bound = (THROTTLED_RATE * window.as_secs_f64()).ceil() as usize // the throttled rate
        + THROTTLED_RATE as usize // its burst
        + CONNECTIONS; // tokens taken just before the throttle began
    eprintln!(
        "backoff: {during} messages accepted in the {window:?} after `started` (bound {bound}), \
         {after} after it ended; ended {lasted:?} after the last matching reply; per-second {:?}",
        sink.per_second_counts()
    );
    assert!(
        during <= bound,
        "throttled to {THROTTLED_RATE} msg/s, yet {during} messages arrived in {window:?}"
    );
    assert!(
        after >= N / 2,
        "most of the backlog was still waiting when the throttle ended ({after} arrived after)"
    );

    // Outcomes: deferred, never bounced, all delivered.
    let os = w
        .gannet
        .wait_outcomes(WAIT, "N delivered outcomes", |os| {
            os.iter().filter(|o| o.event == "delivered").count() >= N
        })
        .await;
    let deferred: Vec<&Outcome> = os.iter().filter(|o| o.event == "deferred").collect();
    assert_eq!(
        deferred
            .iter()
            .filter(|o| o.reply.starts_with("421 4.7.28"))
            .count(),
        3,
        "the three 421 4.7.28 replies defer their messages: {deferred:#?}"
    );
    assert!(
        !os.iter().any(|o| o.event == "bounced"),
        "nothing bounces on a rate limit"
    );
    for d in &deferred {
        assert!(
            os.iter()
                .any(|o| o.event == "delivered" && o.queue_id == d.queue_id),
            "deferred message {} is delivered later",
            d.queue_id
        );
    }
    assert_eq!(
        ts.iter().filter(|t| t.accepted).count(),
        N,
        "each message arrives exactly once"
    );
}

/// RFC 5321 §3.8: a `421` reply means the server is closing the channel. The sink answers the
/// first message's end of DATA with `421 4.7.28` and closes; with one connection allowed and a
/// second message waiting, Gannet must open a new connection for it, not send it down the
/// closed one (which defers an innocent message with "connection closed by server" and delays
/// it by a whole retry interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_reply_closes_the_connection_and_the_next_message_gets_a_new_one() {
    let w = World::start(
        &["127.0.0.128"],
        Zone::new().mail_domain("closing.test", "127.0.0.128"),
        |c| c.shaping("[domain.\"closing.test\"]\nmax_connections = 1\n"),
    )
    .await;
    let sink = &w.sinks[0];
    sink.set_delay(Duration::from_millis(300));
    sink.add_rule(Rule::new(Stage::Data, GMAIL_421).times(1));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    for rcpt in ["first@closing.test", "second@closing.test"] {
        c.send(
            "s@origin.test",
            &[rcpt],
            b"Subject: one connection\r\n\r\nx\r\n",
        )
        .await;
    }
    c.quit().await;
    w.gannet
        .wait_event("delivered", "second@closing.test", WAIT)
        .await;
    let second = w.gannet.outcomes_for("second@closing.test");
    assert!(
        second.iter().all(|o| o.event == "delivered"),
        "the second message is delivered on its first attempt over a new connection, not \
         deferred on the closed one: {second:#?}"
    );
    w.gannet
        .wait_event("delivered", "first@closing.test", WAIT)
        .await;
}

/// Sends one message per recipient, each labelled `X-Gannet-Campaign: campaign`, in one SMTP
/// session.
async fn send_campaign(g: &Gannet, campaign: &str, rcpts: &[&str]) {
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for r in rcpts {
        let subject = format!("{campaign} news for {r}");
        let msg = message(
            &[("X-Gannet-Campaign", campaign), ("Subject", &subject)],
            "hello",
        );
        c.send("news@origin.test", &[r], &msg).await;
    }
    c.quit().await;
}

/// `gannet queue list --json ARGS...`, parsed.
async fn queue_list(g: &Gannet, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["queue", "list", "--json"];
    all.extend_from_slice(args);
    let out = g.cli(&all).await;
    out.assert_success();
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("`queue list --json` prints JSON ({e}):\n{out}"))
}

/// Recipients per `state` in a `queue list --json` answer, e.g. `{"suspended": 4}`.
fn recipients_by_state(v: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for q in v["queues"].as_array().into_iter().flatten() {
        let state = q["state"].as_str().unwrap_or_default().to_string();
        *m.entry(state).or_default() += q["recipients"].as_u64().unwrap_or(0);
    }
    m
}

/// Waits until `gannet queue list --json ARGS` shows `n` recipients in `state` (the queue
/// settles: resolution, recovery after a restart); panics with the last listing after
/// [`WAIT`].
async fn wait_listed(g: &Gannet, args: &[&str], state: &str, n: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = queue_list(g, args).await;
        if recipients_by_state(&v).get(state) == Some(&n) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("`queue list {args:?}` should show {n} recipients {state}, got {v:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two domains on the site `bigmail.test` (MX mx1.bigmail.test → sink 0), and `b.test` and
/// the senders' `origin.test` (sink 1).
async fn control_world(ips: [&str; 2]) -> World {
    World::start(
        &ips,
        Zone::new()
            .mx("a.test", 10, "mx1.bigmail.test")
            .mx("a2.test", 10, "mx1.bigmail.test")
            .a("mx1.bigmail.test", ips[0])
            .mail_domain("b.test", ips[1])
            // The sender's domain: a DSN to news@origin.test would arrive at sink 1.
            .mail_domain("origin.test", ips[1]),
        |c| c.shaping(""),
    )
    .await
}

fn rcpts_of(sink: &Sink) -> Vec<String> {
    let mut v = sink.delivered_rcpts();
    v.sort();
    v
}

/// `gannet queue suspend --campaign spring --site bigmail.test`: spring's mail to the site's
/// domains (a.test, a2.test) is held — not deferred, not delivered — while another campaign
/// to that site and spring's mail to another site flow. `queue list` shows it suspended; the
/// suspension survives a restart; `gannet queue resume` with the same filter lets it drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_a_campaign_for_one_site_survives_restart_and_resumes() {
    let mut w = control_world(["127.0.0.131", "127.0.0.132"]).await;
    let filter = ["--campaign", "spring", "--site", "bigmail.test"];
    let mut args = vec!["queue", "suspend"];
    args.extend_from_slice(&filter);
    w.gannet.cli(&args).await.assert_success();

    let held = ["s1@a.test", "s2@a.test", "s3@a.test", "s4@a2.test"];
    send_campaign(&w.gannet, "spring", &held).await;
    send_campaign(&w.gannet, "spring", &["s5@b.test", "s6@b.test"]).await;
    send_campaign(&w.gannet, "autumn", &["f1@a.test", "f2@a2.test"]).await;
    w.sinks[1].wait_for(2, WAIT).await;
    w.sinks[0].wait_for(2, WAIT).await;
    assert_eq!(rcpts_of(&w.sinks[1]), ["s5@b.test", "s6@b.test"]);
    assert_eq!(
        rcpts_of(&w.sinks[0]),
        ["f1@a.test", "f2@a2.test"],
        "only the other campaign reaches bigmail.test"
    );

    wait_listed(&w.gannet, &["--campaign", "spring"], "suspended", 4).await;
    let (status, body) = w.gannet.http_get("/api/v1/queues?campaign=spring").await;
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        recipients_by_state(&api).get("suspended"),
        Some(&4),
        "{api:#}"
    );
    for o in w.gannet.outcomes() {
        assert!(
            !held.contains(&o.recipient.as_str()),
            "a suspension neither defers nor delivers: {:?}",
            o.raw
        );
    }

    // Stop (SIGTERM) and start again: the suspension and the held mail are still there.
    w.gannet.sigterm().await;
    w.gannet.restart().await;
    let (_, body) = w.gannet.http_get("/api/v1/queues/suspensions").await;
    assert!(
        body.contains("spring") && body.contains("bigmail.test"),
        "the suspension survives a restart: {body}"
    );
    send_campaign(&w.gannet, "autumn", &["f3@a.test"]).await;
    w.sinks[0].wait_for(3, WAIT).await;
    wait_listed(&w.gannet, &["--campaign", "spring"], "suspended", 4).await;
    assert_eq!(
        rcpts_of(&w.sinks[0]),
        ["f1@a.test", "f2@a2.test", "f3@a.test"],
        "still nothing of spring at bigmail.test after the restart"
    );

    let mut args = vec!["queue", "resume"];
    args.extend_from_slice(&filter);
    let out = w.gannet.cli(&args).await;
    out.assert_success();
    w.sinks[0].wait_for(7, WAIT).await;
    let mut expected: Vec<&str> = held.to_vec();
    expected.extend(["f1@a.test", "f2@a2.test", "f3@a.test"]);
    expected.sort();
    assert_eq!(rcpts_of(&w.sinks[0]), expected, "resumed mail drains once");
    for r in held {
        w.gannet.wait_event("delivered", r, WAIT).await;
    }
    let (_, body) = w.gannet.http_get("/api/v1/queues/suspensions").await;
    assert!(!body.contains("spring"), "resume removed it: {body}");
}

/// `gannet queue purge --campaign winter` on a suspended campaign: every held recipient gets a
/// `purged` outcome (with its campaign), none is delivered, no DSN goes to the sender, and the
/// queue is empty — also after a restart and after the suspension is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_a_suspended_campaign_logs_purged_and_empties_the_queue() {
    let mut w = control_world(["127.0.0.133", "127.0.0.134"]).await;
    w.gannet
        .cli(&["queue", "suspend", "--campaign", "winter"])
        .await
        .assert_success();
    let doomed = [
        "w1@a.test",
        "w2@a.test",
        "w3@a2.test",
        "w4@b.test",
        "w5@b.test",
    ];
    send_campaign(&w.gannet, "winter", &doomed).await;
    send_campaign(&w.gannet, "autumn", &["f1@a.test"]).await;
    w.gannet.wait_event("delivered", "f1@a.test", WAIT).await;
    wait_listed(&w.gannet, &["--campaign", "winter"], "suspended", 5).await;

    let out = w
        .gannet
        .cli(&["queue", "purge", "--campaign", "winter"])
        .await;
    out.assert_success();
    assert!(out.stdout.contains('5'), "purge says how many: {out}");
    let os = w
        .gannet
        .wait_outcomes(WAIT, "5 purged outcomes", |os| {
            os.iter().filter(|o| o.event == "purged").count() >= 5
        })
        .await;
    for r in doomed {
        let mine: Vec<&Outcome> = os.iter().filter(|o| o.recipient == r).collect();
        assert!(
            mine.len() == 1 && mine[0].event == "purged" && mine[0].raw["campaign"] == "winter",
            "{r}: exactly one `purged` outcome with its campaign: {mine:#?}"
        );
    }
    let status = w.gannet.queue_drained(WAIT).await;
    assert_eq!(
        status.queued_recipients, 0,
        "the queue is empty: {:#}",
        status.raw
    );
    let listed = queue_list(&w.gannet, &["--campaign", "winter"]).await;
    assert!(
        recipients_by_state(&listed).is_empty(),
        "nothing of winter left: {listed:#}"
    );

    // Lifting the suspension and restarting bring nothing back.
    w.gannet
        .cli(&["queue", "resume", "--campaign", "winter"])
        .await
        .assert_success();
    w.gannet.sigterm().await;
    w.gannet.restart().await;
    send_campaign(&w.gannet, "autumn", &["f2@b.test"]).await;
    w.gannet.wait_event("delivered", "f2@b.test", WAIT).await;
    assert_eq!(w.gannet.queue_status().await.queued_recipients, 0);
    assert_eq!(
        rcpts_of(&w.sinks[0]),
        ["f1@a.test"],
        "no winter mail delivered"
    );
    assert_eq!(
        rcpts_of(&w.sinks[1]),
        ["f2@b.test"],
        "no winter mail delivered"
    );
    for s in &w.sinks {
        assert!(
            s.transactions().iter().all(|t| !t.mail_from.is_empty()),
            "a purge sends no DSN"
        );
    }
    assert!(
        !w.gannet
            .outcomes()
            .iter()
            .any(|o| o.event == "dsn"
                || (doomed.contains(&o.recipient.as_str()) && o.event != "purged")),
        "only purged outcomes for winter, no DSN"
    );
}
