//! Disk full and memory in flight (issue 21 item 3). The spool lives on a small tmpfs the first
//! test mounts. While the MX
//! defers everything, mail fills it; Gannet then answers `452 4.3.1` over SMTP and `507` over
//! HTTP instead of accepting, keeps delivering what it holds once the MX takes mail again
//! (which frees the space), accepts again, and after a kill -9 the spool reads back whole.
//!
//! Mounting needs root (CI runs as root). Without it the test says so and checks nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::gannet::http_with_headers;
use crate::common::*;

const SINK_IP: &str = "127.0.0.72";

/// One message over SMTP; the final reply (code, text), or None if the session failed.
async fn send(c: &mut SmtpClient, mid: &str, body: &str) -> Option<(u16, String)> {
    c.send_raw(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
        .await
        .ok()?;
    let (m, r, d) = (
        c.read_reply().await.ok()??,
        c.read_reply().await.ok()??,
        c.read_reply().await.ok()??,
    );
    if (m.code, r.code, d.code) != (250, 250, 354) {
        return Some((d.code, d.text()));
    }
    let msg = format!("Message-ID: <{mid}>\r\nSubject: fill\r\n\r\n{body}.\r\n");
    c.send_raw(msg.as_bytes()).await.ok()?;
    let done = c.read_reply().await.ok()??;
    Some((done.code, done.text()))
}

fn filler(bytes: usize) -> String {
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    line.repeat(bytes / line.len() + 1)
}

async fn wait_delivered(sink: &Sink, ids: &BTreeSet<String>, g: &Gannet) {
    let r = sink
        .wait_until(Duration::from_secs(60), |ts| {
            distinct_message_ids(ts).is_superset(ids)
        })
        .await;
    if let Err(e) = r {
        let got = distinct_message_ids(&sink.transactions());
        let missing: Vec<_> = ids.difference(&got).collect();
        panic!("not delivered: {missing:?}\n{e}\n{}", g.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_disk_answers_452_and_507_then_recovers_and_reads_back_whole() {
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!(
                "SKIPPED full_spool_disk...: cannot mount a tmpfs for the spool ({e}); run as root (CI does)"
            );
            return;
        }
    };
    let spool: PathBuf = fs.path().join("spool");
    let zone = Zone::new()
        .mail_domain("dest.test", SINK_IP)
        .mail_domain("origin.test", SINK_IP);
    let mut w = World::start(&[SINK_IP], zone, |c| {
        c.spool_option(&format!("path = \"{}\"", spool.display()))
            .spool_option("max_segment_bytes = 262144")
            .spool_option("min_free_bytes = 1048576")
            // The send log and the suppression list live elsewhere: only the spool fills.
            .extra("[sendlog]\npath = \"${DIR}/sendlog.sqlite\"\n\n[suppression]\npath = \"${DIR}/suppression\"")
    })
    .await;
    let sink = &w.sinks[0];
    sink.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));

    // Fill the disk: 64 KB messages until Gannet refuses one.
    let body = filler(64 * 1024);
    let mut acked = BTreeSet::new();
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("fill.test").await;
    let mut refusal = None;
    for i in 0..400 {
        let mid = format!("fill-{i}@origin.test");
        match send(&mut c, &mid, &body).await {
            Some((250, _)) => {
                acked.insert(format!("<{mid}>"));
            }
            Some((code, text)) => {
                refusal = Some((code, text));
                break;
            }
            None => panic!("session failed after {i} messages\n{}", w.gannet.log()),
        }
    }
    let (code, text) = refusal.unwrap_or_else(|| {
        panic!(
            "400 messages of 64 KB fit on an 8 MB spool?\n{}",
            w.gannet.log()
        )
    });
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("452 4.3.1"), "{text}");
    assert!(
        acked.len() >= 20,
        "{} accepted before it filled",
        acked.len()
    );

    // HTTP injection is refused as a whole with 507.
    let batch = serde_json::json!({
        "from": {"email": "news@origin.test"},
        "subject": "fill",
        "text": "hello world, this line fills the disk\n".repeat(3000),
        "recipients": [{"email": "h1@dest.test"}, {"email": "h2@dest.test"}],
    })
    .to_string();
    let (status, answer) = http_with_headers(
        w.gannet.http_addr(),
        "POST",
        "/api/v1/messages",
        Some(&batch),
        &[],
    )
    .await
    .expect("POST /api/v1/messages");
    assert_eq!(status, 507, "{answer}");
    assert!(answer.contains("insufficient_storage"), "{answer}");

    // The MX takes mail again: Gannet delivers what it holds, which frees the disk.
    sink.clear_rules();
    wait_delivered(sink, &acked, &w.gannet).await;
    // ... and accepts again (the free space is measured again within a second).
    let mut accepted_again = None;
    for i in 0..100 {
        let mid = format!("again-{i}@origin.test");
        match send(&mut c, &mid, &body).await {
            Some((250, _)) => {
                accepted_again = Some(format!("<{mid}>"));
                break;
            }
            Some((452, _)) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("unexpected {other:?}\n{}", w.gannet.log()),
        }
    }
    let again = accepted_again.unwrap_or_else(|| {
        panic!(
            "never accepted again after the disk was freed\n{}",
            w.gannet.log()
        )
    });
    let log = w.gannet.log();
    assert!(
        log.contains("spool disk full"),
        "the episode is logged\n{log}"
    );

    // Fill it part way again, kill -9, restart: every accepted message reads back and is
    // delivered, nothing is reported damaged.
    sink.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    let mut held: BTreeSet<String> = [again].into();
    for i in 0..20 {
        let mid = format!("held-{i}@origin.test");
        if let Some((250, _)) = send(&mut c, &mid, &body).await {
            held.insert(format!("<{mid}>"));
        }
    }
    assert!(held.len() > 5, "{held:?}");
    w.gannet.kill9().await;
    w.gannet.restart().await;
    sink.clear_rules();
    wait_delivered(sink, &held, &w.gannet).await;
    assert_eq!(
        w.gannet.metric("gannet_spool_damaged_records", &[]).await,
        0.0
    );
    drop(w);
    drop(fs);
}

/// The listener-wide budget of bytes in flight, over real sockets: with 1.5 MB for the
/// listener, a session holding 1 MB of DATA leaves too little for another's 800 KB message,
/// which gets `452 4.3.1` (and is never delivered); once the first is answered its bytes are
/// given back (`gannet_smtp_inflight_bytes` shows it) and the second is taken on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_budget_of_bytes_in_flight_answers_452() {
    let zone = Zone::new()
        .mail_domain("dest.test", SINK_IP)
        .mail_domain("origin.test", SINK_IP);
    let w = World::start(&[SINK_IP], zone, |c| {
        c.listener_option("max_message_size = 1048576")
            .listener_option("max_inflight_bytes = 1572864")
    })
    .await;
    let held = || async {
        w.gannet
            .metric("gannet_smtp_inflight_bytes", &[("listener", "default")])
            .await
    };
    let mut a = SmtpClient::connect(w.gannet.smtp_addr()).await;
    a.hello("a.test").await;
    a.cmd("MAIL FROM:<s@origin.test>", "250").await;
    a.cmd("RCPT TO:<r@dest.test>", "250").await;
    a.cmd("DATA", "354").await;
    let big = format!(
        "Message-ID: <budget-a@origin.test>\r\nSubject: big\r\n\r\n{}",
        filler(1_000_000)
    );
    a.send_raw(big.as_bytes()).await.expect("write DATA");
    let mut holding = 0.0;
    for _ in 0..300 {
        holding = held().await;
        if holding >= 1_000_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        holding >= 1_000_000.0,
        "the first session's DATA is held: {holding}"
    );

    let mut b = SmtpClient::connect(w.gannet.smtp_addr()).await;
    b.hello("b.test").await;
    let body = filler(800_000);
    let refused = send(&mut b, "budget-b1@origin.test", &body).await;
    let (code, text) = refused.expect("an answer");
    assert!(
        code == 452 && text.starts_with("452 4.3.1"),
        "over the listener's budget: {text}"
    );

    a.send_raw(b".\r\n").await.expect("final dot");
    a.expect("250").await;
    assert_eq!(held().await, 0.0, "answered: nothing held");
    let (code, text) = send(&mut b, "budget-b2@origin.test", &body)
        .await
        .expect("an answer");
    assert_eq!(code, 250, "{text}");

    let ids: BTreeSet<String> = ["<budget-a@origin.test>", "<budget-b2@origin.test>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    wait_delivered(&w.sinks[0], &ids, &w.gannet).await;
    w.gannet.queue_drained(WAIT).await;
    let got = distinct_message_ids(&w.sinks[0].transactions());
    assert!(
        !got.contains("<budget-b1@origin.test>"),
        "the refused message is not delivered: {got:?}"
    );
}
