//! Nothing accepted is lost (issue 2, items 3 and 6): after `250` a message survives kill -9
//! and a graceful SIGTERM shutdown, and is delivered after restart (at least once: duplicates
//! are allowed after a crash, losses are not).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

/// Submits `n` messages on one connection with Message-IDs `<{tag}-{i}@origin.test>`;
/// returns the Message-IDs. Each got `250 ... queued as` before this returns.
async fn submit_many(g: &Gannet, tag: &str, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for i in 0..n {
        let mid = format!("<{tag}-{i}@origin.test>");
        c.send_raw(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<burst@dest.test>\r\nDATA\r\n")
        .await
        .ok()?;
    let mail = c.read_reply().await.ok()??;
    let rcpt = c.read_reply().await.ok()??;
    let data = c.read_reply().await.ok()??;
    if mail.code != 250 || rcpt.code != 250 || data.code != 354 {
        return Some(false);
    }
    let body = format!("Message-ID: {mid}\r\nSubject: burst\r\n\r\nx\r\n.\r\n");
    c.send_raw(body.as_bytes()).await.ok()?;
    let done = c.read_reply().await.ok()??;
    Some(done.code == 250)
}

/// kill -9 in the middle of a burst of parallel submissions (6 sessions, group commit at
/// work, a torn record at the spool's tail likely): every message that got its `250` before
/// the kill is delivered after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_parallel_submissions_loses_no_acknowledged_message() {
    use std::sync::{Arc, Mutex};
    let (zone, ips) = one_sink_world();
    let mut w = World::start(&ips, zone, |c| c).await;
    let sink = &w.sinks[0];
    sink.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..6 {
        let acked = acked.clone();
        let addr = w.gannet.smtp_addr();
        tasks.push(tokio::spawn(async move {
            let mut c = SmtpClient::connect(addr).await;
            c.hello("burst.test").await;
            for i in 0..10_000 {
                let mid = format!("<burst-{task}-{i}@origin.test>");
                match try_send(&mut c, &mid).await {
                    Some(true) => {
                        acked.lock().unwrap().insert(mid);
                    }
                    Some(false) => {}
                    None => return,
                }
            }
        }));
    }
    let enough = poll(WAIT, || (acked.lock().unwrap().len() >= 120).then_some(())).await;
    assert!(enough.is_some(), "120 messages accepted within {WAIT:?}");
    w.gannet.kill9().await;
    for t in tasks {
        let _ = t.await;
    }
    let ids = acked.lock().unwrap().clone();

    sink.clear_rules();
    w.gannet.restart().await;
    let ts = wait_all_delivered(sink, &ids).await;
    eprintln!(
        "kill9_during_parallel_submissions: {} acknowledged before the kill, {} distinct delivered",
        ids.len(),
        distinct_message_ids(&ts).len()
    );
}
