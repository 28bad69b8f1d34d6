//! Issue 15 item 2: a DSN owed is never lost. Recipient A is delivered, B is refused with 550;
//! the DSN is held (`[bounce] hold_dsns = true`, so the stop comes before it is queued);
//! Gannet is stopped (SIGTERM, or kill -9), the hold is lifted and Gannet restarted: the
//! sender's DSN about B arrives exactly once, and A is not delivered again. Sinks 127.0.0.151
//! (dest.test) and 127.0.0.152 (origin.test, receives DSNs).

use std::time::Duration;

use crate::common::*;

/// Long enough for a retry (`retry_schedule = ["1s"]`) or a duplicate DSN that should not
/// happen to have happened.
const QUIET: Duration = Duration::from_millis(2500);

const HOLD: &str = "[bounce]\nhold_dsns = true\n";

#[derive(Debug, Clone, Copy)]
enum Stop {
    Sigterm,
    Kill9,
}

async fn owed_dsn_survives(stop: Stop) {
    let w = World::start(
        &["127.0.0.151", "127.0.0.152"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.151")
            .mail_domain("origin.test", "127.0.0.152"),
        |c| c.extra(HOLD),
    )
    .await;
    let (dest, origin) = (&w.sinks[0], &w.sinks[1]);
    dest.reject_rcpt("b@dest.test", "550 5.1.1 no such user");
    let mut g = w.gannet;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.send_message(
        "s@origin.test",
        &["a@dest.test", "b@dest.test"],
        b"From: s@origin.test\r\nSubject: owed\r\n\r\nbody\r\n",
    )
    .await;
    g.wait_event("delivered", "a@dest.test", WAIT).await;
    g.wait_event("bounced", "b@dest.test", WAIT).await;
    // The DSN is owed and its state is in the index files: now stop.
    g.wait_outcomes(WAIT, "the DSN held", |os| {
        os.iter()
            .any(|o| o.event == "dsn" && o.get("status") == "held")
    })
    .await;
    assert!(
        origin.transactions().is_empty(),
        "no DSN before the stop (it is held)"
    );
    match stop {
        Stop::Sigterm => {
            let status = g.sigterm().await;
            assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
        }
        Stop::Kill9 => g.kill9().await,
    }
    let text = std::fs::read_to_string(g.config_path()).expect("read config");
    std::fs::write(
        g.config_path(),
        text.replace("hold_dsns = true", "hold_dsns = false"),
    )
    .expect("rewrite config");
    g.restart().await;

    let dsn = &origin.wait_for(1, WAIT).await[0];
    assert_eq!(dsn.rcpts, ["s@origin.test"], "the DSN goes to the sender");
    assert_dsn(dsn, "b@dest.test", "failed");
    assert!(
        dsn.text().contains("5.1.1") && dsn.text().contains("no such user"),
        "the DSN carries B's final reply, saved across the restart\n{}",
        dsn.text()
    );
    assert!(
        !dsn.text().contains("a@dest.test"),
        "A was delivered: the DSN does not name it\n{}",
        dsn.text()
    );
    g.wait_outcomes(WAIT, "the DSN sent", |os| {
        os.iter()
            .any(|o| o.event == "dsn" && o.get("status") == "sent")
    })
    .await;

    // Once more: the DSN was queued, so the original is released and nothing is owed.
    let status = g.sigterm().await;
    assert!(status.success(), "{status:?}");
    g.restart().await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(origin.messages().len(), 1, "exactly one DSN");
    assert_eq!(
        dest.delivered_rcpts(),
        ["a@dest.test"],
        "A is delivered once, never again after a restart"
    );
    let dsn_lines = g
        .outcomes()
        .into_iter()
        .filter(|o| o.event == "dsn" && o.get("status") == "sent")
        .count();
    assert_eq!(dsn_lines, 1, "one `dsn` sent event\n{}", g.log());
}

/// Today's fault: SIGTERM aborted the DSN task and recovery re-queued only pending
/// recipients, so a DSN not yet queued at the stop was never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_owed_at_sigterm_is_sent_once_after_restart() {
    owed_dsn_survives(Stop::Sigterm).await;
}

/// Today's fault: B's `Failed` state was saved before its DSN was durable, so a crash in
/// between lost the DSN for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_owed_at_kill9_is_sent_once_after_restart() {
    owed_dsn_survives(Stop::Kill9).await;
}
