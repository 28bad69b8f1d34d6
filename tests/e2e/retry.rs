//! Temporary and permanent failures at the destination (issue 2, item 2): 4xx defers and
//! retries, 5xx bounces once with a DSN to the sender and is never retried, and a message
//! older than `max_age` bounces with a DSN.

use std::time::Duration;

use crate::common::*;

/// Longer than two retry intervals (`retry_schedule = ["1s"]`): long enough that a retry that
/// should not happen would have happened.
const TWO_RETRY_INTERVALS: Duration = Duration::from_millis(2500);

/// Sink 127.0.0.51 is the destination (dest.test), 127.0.0.52 receives DSNs (origin.test).
async fn retry_world(configure: impl FnOnce(TestConfig) -> TestConfig) -> World {
    World::start(
        &["127.0.0.51", "127.0.0.52"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.51")
            .mail_domain("origin.test", "127.0.0.52"),
        configure,
    )
    .await
}

async fn submit(g: &Gannet, from: &str, rcpts: &[&str], subject: &str) -> String {
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    let msg = format!("From: {from}\r\nSubject: {subject}\r\n\r\nretry test\r\n");
    c.send_message(from, rcpts, msg.as_bytes()).await
}

/// RFC 5321 §4.2.1/§4.5.4.1: a 451 after the body is temporary: the message stays queued and
/// is retried; the log shows `deferred` (attempt 1) then `delivered` (attempt 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_451_defers_then_the_retry_delivers() {
    let w = retry_world(|c| c).await;
    let dest = &w.sinks[0];
    dest.defer_first(1, "451 4.7.1 try later");
    submit(&w.gannet, "s@origin.test", &["r@dest.test"], "defer once").await;

    let delivered = w.gannet.wait_event("delivered", "r@dest.test", WAIT).await;
    let os = w.gannet.outcomes_for("r@dest.test");
    let events: Vec<&str> = os.iter().map(|o| o.event.as_str()).collect();
    assert_eq!(events, ["deferred", "delivered"], "outcomes: {os:#?}");
    assert!(
        os[0].reply.contains("451") && os[0].reply.contains("4.7.1"),
        "the deferral records the MX reply: {:?}",
        os[0].raw
    );
    assert_eq!(os[0].attempt, 1, "{:?}", os[0].raw);
    assert_eq!(delivered.attempt, 2, "{:?}", delivered.raw);

    let ts = dest.transactions();
    assert_eq!(ts.len(), 2, "one refused and one accepted transaction");
    assert!(!ts[0].accepted && ts[1].accepted);
    assert_eq!(dest.delivered_rcpts(), ["r@dest.test"]);
    assert!(
        w.sinks[1].transactions().is_empty(),
        "no DSN for a delivered message"
    );
}

/// A 4xx to one RCPT defers only that recipient: the other is delivered on the first attempt
/// and not sent again when the deferred one is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_451_defers_only_that_recipient() {
    let w = retry_world(|c| c).await;
    let dest = &w.sinks[0];
    dest.add_rule(
        Rule::new(Stage::Rcpt, "451 4.2.1 mailbox busy")
            .matching("slow@dest.test")
            .times(1),
    );
    submit(
        &w.gannet,
        "s@origin.test",
        &["fast@dest.test", "slow@dest.test"],
        "one slow recipient",
    )
    .await;
    w.gannet
        .wait_event("delivered", "slow@dest.test", WAIT)
        .await;
    let fast = w.gannet.outcomes_for("fast@dest.test");
    assert_eq!(
        fast.iter().map(|o| o.event.as_str()).collect::<Vec<_>>(),
        ["delivered"],
        "{fast:#?}"
    );
    let slow = w.gannet.outcomes_for("slow@dest.test");
    assert_eq!(
        slow.iter().map(|o| o.event.as_str()).collect::<Vec<_>>(),
        ["deferred", "delivered"],
        "{slow:#?}"
    );
    let mut got = dest.delivered_rcpts();
    got.sort();
    assert_eq!(
        got,
        ["fast@dest.test", "slow@dest.test"],
        "each recipient delivered exactly once"
    );
}

/// RFC 5321 §4.2.1: 5xx is permanent. The recipient bounces once (outcome `bounced`), the
/// sender gets a DSN (RFC 3464), the other recipient of the same message is delivered, and the
/// refused one is never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_550_bounces_once_with_a_dsn_and_no_retry() {
    let w = retry_world(|c| c).await;
    let (dest, origin) = (&w.sinks[0], &w.sinks[1]);
    dest.reject_rcpt("nobody@dest.test", "550 5.1.1 no such user");
    submit(
        &w.gannet,
        "s@origin.test",
        &["nobody@dest.test", "ok@dest.test"],
        "one bad recipient",
    )
    .await;
    let b = w
        .gannet
        .wait_event("bounced", "nobody@dest.test", WAIT)
        .await;
    assert!(
        b.reply.contains("550") && b.reply.contains("5.1.1"),
        "the bounce records the MX reply: {:?}",
        b.raw
    );
    w.gannet.wait_event("delivered", "ok@dest.test", WAIT).await;

    let dsn = &origin.wait_for(1, WAIT).await[0];
    assert_eq!(
        dsn.rcpts,
        ["s@origin.test"],
        "the DSN goes to the envelope sender"
    );
    assert_dsn(dsn, "nobody@dest.test", "failed");
    assert!(
        dsn.text().contains("5.1.1"),
        "the DSN carries the status 5.1.1\n{}",
        dsn.text()
    );

    tokio::time::sleep(TWO_RETRY_INTERVALS).await;
    let tries: usize = dest
        .transactions()
        .iter()
        .map(|t| {
            t.rejected_rcpts
                .iter()
                .filter(|(r, _)| r == "nobody@dest.test")
                .count()
        })
        .sum();
    assert_eq!(tries, 1, "a 5xx recipient is never retried");
    let os = w.gannet.outcomes_for("nobody@dest.test");
    assert_eq!(
        os.len(),
        1,
        "exactly one outcome for the bounced recipient: {os:#?}"
    );
    assert_eq!(origin.messages().len(), 1, "exactly one DSN");
    assert_eq!(dest.delivered_rcpts(), ["ok@dest.test"]);
}

/// A 5xx after the body bounces every recipient of that transaction, with one DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_554_bounces_with_a_dsn() {
    let w = retry_world(|c| c).await;
    let (dest, origin) = (&w.sinks[0], &w.sinks[1]);
    dest.add_rule(Rule::new(Stage::Data, "554 5.7.1 message refused as spam"));
    submit(&w.gannet, "s@origin.test", &["r@dest.test"], "refused body").await;
    w.gannet.wait_event("bounced", "r@dest.test", WAIT).await;
    let dsn = &origin.wait_for(1, WAIT).await[0];
    assert_dsn(dsn, "r@dest.test", "failed");
    tokio::time::sleep(TWO_RETRY_INTERVALS).await;
    assert_eq!(dest.transactions().len(), 1, "a 5xx body is never retried");
}

/// A message still undeliverable after `max_age` bounces with a DSN (RFC 3464 `Action:
/// failed`), after having been deferred, and is dropped from the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_after_max_age_bounces_with_a_dsn() {
    let w = retry_world(|c| c.max_age("4s")).await;
    let (dest, origin) = (&w.sinks[0], &w.sinks[1]);
    dest.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    submit(
        &w.gannet,
        "s@origin.test",
        &["late@dest.test"],
        "never accepted",
    )
    .await;
    let b = w.gannet.wait_event("bounced", "late@dest.test", WAIT).await;
    let os = w.gannet.outcomes_for("late@dest.test");
    assert!(
        os.iter().filter(|o| o.event == "deferred").count() >= 2,
        "retried before expiring: {os:#?}"
    );
    assert_eq!(
        os.iter().filter(|o| o.event == "bounced").count(),
        1,
        "one bounce: {os:#?}"
    );
    assert!(
        b.attempt >= 2,
        "bounce comes after several attempts: {:?}",
        b.raw
    );
    let dsn = &origin.wait_for(1, WAIT).await[0];
    assert_eq!(dsn.rcpts, ["s@origin.test"]);
    assert_dsn(dsn, "late@dest.test", "failed");
    // The expired recipient leaves the queue (the DSN itself may still be on its way out).
    let mut q = w.gannet.queue_status().await;
    for _ in 0..50 {
        if !q.queues.iter().any(|e| e.domain == "dest.test") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = w.gannet.queue_status().await;
    }
    assert!(
        !q.queues.iter().any(|e| e.domain == "dest.test"),
        "expired mail leaves the queue: {:?}",
        q.raw
    );
    let attempts = dest.transactions().len();
    tokio::time::sleep(TWO_RETRY_INTERVALS).await;
    assert_eq!(
        dest.transactions().len(),
        attempts,
        "no attempts after expiry"
    );
}

/// RFC 5321 §6.1 / RFC 3464: a message with the null sender (`MAIL FROM:<>`, itself a bounce)
/// that bounces produces no DSN — otherwise bounces could loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_of_a_null_sender_message_sends_no_dsn() {
    let w = retry_world(|c| c).await;
    let (dest, origin) = (&w.sinks[0], &w.sinks[1]);
    dest.reject_rcpt("nobody@dest.test", "550 5.1.1 no such user");
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<nobody@dest.test>", "250").await;
    c.data(b"Subject: a bounce\r\n\r\nx\r\n", "250").await;
    c.quit().await;
    let b = w
        .gannet
        .wait_event("bounced", "nobody@dest.test", WAIT)
        .await;
    assert_eq!(
        b.sender, "",
        "the outcome shows the null sender: {:?}",
        b.raw
    );
    tokio::time::sleep(TWO_RETRY_INTERVALS).await;
    assert!(
        origin.transactions().is_empty() && dest.messages().is_empty(),
        "no DSN may be sent for a null-sender message"
    );
    let all = w.gannet.outcomes();
    assert_eq!(
        all.len(),
        1,
        "the bounce is the only outcome (no DSN was queued): {all:#?}"
    );
}

/// RFC 3463 §2 / RFC 2034 §4: an enhanced status code's class agrees with its reply code
/// (2.x.x with 2yz, 4.x.x with 4yz, 5.x.x with 5yz). Checked on every outcome of a deferral,
/// a bounce and an expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_replies_have_consistent_status_classes() {
    let w = retry_world(|c| c.max_age("2s")).await;
    let dest = &w.sinks[0];
    dest.reject_rcpt("nobody@dest.test", "550 5.1.1 no such user");
    dest.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    submit(
        &w.gannet,
        "s@origin.test",
        &["nobody@dest.test", "late@dest.test"],
        "classes",
    )
    .await;
    w.gannet.wait_event("bounced", "late@dest.test", WAIT).await;
    for o in w.gannet.outcomes() {
        if o.reply.is_empty() {
            continue;
        }
        let code = o.reply.chars().next();
        let enhanced = o
            .reply
            .split_whitespace()
            .nth(1)
            .and_then(|e| e.chars().next());
        assert_eq!(
            code, enhanced,
            "reply {:?} mixes classes ({} outcome for {})",
            o.reply, o.event, o.recipient
        );
    }
}
