//! Event shipping (issue 19): every event to JSONL files and signed webhooks through the
//! durable outbox, across restarts and kill -9, checked by independent readers (a Python
//! HTTP receiver verifying signatures; the files parsed line by line).
//!
//! Sink addresses: 127.0.0.171–.179.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::tools::{SCRIPTS_DIR, smtp_source};
use crate::common::*;

const WAIT: Duration = Duration::from_secs(90);

/// Every line of every events file in `dir` (rotated `.zst` ones decompressed), oldest file
/// first; panics on a line that is not a JSON object or a file that ends mid-line.
fn jsonl_lines(dir: &Path, prefix: &str) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    // Rotated files sort by name (hour, then number); the live file is the newest.
    let live = dir.join(format!("{prefix}.jsonl"));
    files.retain(|p| *p != live && !p.to_string_lossy().ends_with(".tmp"));
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let stem = name.trim_end_matches(".zst").trim_end_matches(".jsonl");
        let (hour, n) = stem.rsplit_once('-').unwrap();
        (hour.to_string(), n.parse::<u32>().unwrap())
    });
    files.push(live);
    let mut out = Vec::new();
    for p in files {
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let text = if p.to_string_lossy().ends_with(".zst") {
            zstd::stream::decode_all(&bytes[..]).expect("valid zstd")
        } else {
            bytes
        };
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            p.display()
        );
        for l in text.lines() {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a line is not JSON ({e}): {l}", p.display()));
            assert!(v["id"].is_string() && v["type"].is_string(), "{l}");
            out.push(v);
        }
    }
    out
}

fn count_type(lines: &[Value], t: &str) -> usize {
    lines.iter().filter(|v| v["type"] == t).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_rotation_under_load_splits_or_loses_no_line_and_a_restart_appends() {
    const N: usize = 300;
    let w = World::start(
        &["127.0.0.171"],
        Zone::new().mail_domain("ship.test", "127.0.0.171"),
        |c| {
            c.extra(
                "[[jsonl]]\ndir = \"${DIR}/events\"\nmax_bytes = 16384\nzstd = true\n\n\
                 [[jsonl]]\nname = \"plain\"\ndir = \"${DIR}/plain\"\nprefix = \"delivered\"\nevents = [\"delivered\"]\n",
            )
        },
    )
    .await;
    let dir = w.gannet.dir().join("events");
    let plain = w.gannet.dir().join("plain");
    smtp_source(
        w.gannet.smtp_addr(),
        N,
        10,
        "load@origin.test",
        "r@ship.test",
        400,
    )
    .await
    .assert_success();
    let lines = poll(WAIT, || {
        let l = jsonl_lines(&dir, "events");
        (count_type(&l, "delivered") >= N).then_some(l)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{} delivered lines of {N}\n{}",
            count_type(&jsonl_lines(&dir, "events"), "delivered"),
            w.gannet.log()
        )
    });
    assert_eq!(count_type(&lines, "received"), N);
    assert_eq!(count_type(&lines, "delivered"), N);
    let ids: BTreeSet<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "no event twice without a crash");
    let rotated = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".jsonl.zst")
        })
        .count();
    assert!(
        rotated >= 5,
        "{N} messages in 16 KiB files rotated only {rotated} times"
    );
    // The filtered destination took the deliveries only, in the same order.
    let only = poll(WAIT, || {
        let l = jsonl_lines(&plain, "delivered");
        (l.len() >= N).then_some(l)
    })
    .await
    .expect("the delivered-only file has every delivery");
    assert_eq!(only.len(), N);
    assert!(only.iter().all(|v| v["type"] == "delivered"));
    let delivered_ids: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "delivered")
        .map(|v| &v["id"])
        .collect();
    assert_eq!(
        only.iter().map(|v| &v["id"]).collect::<Vec<_>>(),
        delivered_ids
    );

    // A restart appends: every line written before it is still there, in place.
    let plain_before = std::fs::read(plain.join("delivered.jsonl")).unwrap();
    let mut g = w.gannet;
    g.sigterm().await;
    g.restart().await;
    smtp_source(g.smtp_addr(), 10, 2, "load@origin.test", "r@ship.test", 400)
        .await
        .assert_success();
    let after = poll(WAIT, || {
        let l = jsonl_lines(&dir, "events");
        (count_type(&l, "delivered") >= N + 10).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("deliveries after the restart not written\n{}", g.log()));
    assert_eq!(
        &after[..lines.len()],
        &lines[..],
        "earlier lines kept, in order"
    );
    assert_eq!(count_type(&after, "received"), N + 10);
    let plain_after = poll(WAIT, || {
        let b = std::fs::read(plain.join("delivered.jsonl")).unwrap();
        (b.len() > plain_before.len()).then_some(b)
    })
    .await
    .expect("the live file grows after the restart");
    assert!(
        plain_after.starts_with(&plain_before),
        "the live file was appended to, never truncated"
    );
}

/// Wait until shipping's journal (or outbox) has taken at least `n` events
/// (`gannet_outbox_appended_total`).
async fn wait_appended(g: &Gannet, n: usize) {
    let mut got = 0.0;
    for _ in 0..600 {
        got = g.metric("gannet_outbox_appended_total", &[]).await;
        if got >= n as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("shipping holds {got} events, not {n}\n{}", g.log());
}

/// The Python receiver of `scripts/webhook_receiver.py`, killed on drop.
struct Receiver {
    child: tokio::process::Child,
}

impl Receiver {
    async fn start(port: u16, secret: &str, out: &Path) -> Receiver {
        let child = tokio::process::Command::new("python3")
            .arg(format!("{SCRIPTS_DIR}/webhook_receiver.py"))
            .arg(port.to_string())
            .arg(secret)
            .arg(out)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        // Listening once a TCP connect succeeds.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Receiver { child }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn received_posts(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver lines are JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_event_signed_across_a_receiver_outage_and_kill9() {
    const N: usize = 20;
    const SECRET: &str = "whsec_0123456789abcdef";
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("posts.jsonl");
    let hooks = format!(
        "[[webhook]]\nname = \"crm\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\n\
         batch_size = 7\nmax_delay = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"5s\"\n\n\
         [[webhook]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{port}/gone\"\nsecret = \"{SECRET}\"\n\
         events = [\"delivered\"]\nbatch_size = 5\nmax_delay = \"100ms\"\nmax_backoff = \"1s\"\n"
    );
    let mut w = World::start(
        &["127.0.0.172"],
        Zone::new().mail_domain("ship.test", "127.0.0.172"),
        |c| c.extra(&hooks),
    )
    .await;
    // The receiver is down: mail flows anyway, events wait in the outbox.
    smtp_source(
        w.gannet.smtp_addr(),
        N,
        4,
        "load@origin.test",
        "r@ship.test",
        300,
    )
    .await
    .assert_success();
    w.sinks[0].wait_for(N, WAIT).await;
    wait_appended(&w.gannet, 2 * N).await;
    assert!(
        w.gannet
            .metric("gannet_ship_backlog_events", &[("destination", "crm")])
            .await
            > 0.0
            || w.gannet
                .metric("gannet_ship_retries_total", &[("destination", "crm")])
                .await
                > 0.0,
        "the down endpoint shows as backlog or retries"
    );
    // Gannet dies (kill -9) while the receiver is down, then both come back.
    w.gannet.kill9().await;
    let _rx = Receiver::start(port, SECRET, &out).await;
    w.gannet.restart().await;

    let posts = poll(WAIT, || {
        let p = received_posts(&out);
        let hook: BTreeSet<String> = p
            .iter()
            .filter(|v| v["path"] == "/hook")
            .map(|v| v["event"]["id"].as_str().unwrap().to_string())
            .collect();
        let types: Vec<&str> = p
            .iter()
            .filter(|v| v["path"] == "/hook")
            .map(|v| v["event"]["type"].as_str().unwrap())
            .collect();
        let n = |t| types.iter().filter(|x| **x == t).count();
        (hook.len() >= 2 * N && n("received") >= N && n("delivered") >= N).then_some(p)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not every event arrived: {} posts\n{}",
            received_posts(&out).len(),
            w.gannet.log()
        )
    });
    // Every POST verified with the documented algorithm.
    assert!(
        posts.iter().all(|v| v["sig_ok"] == true),
        "a signature did not verify"
    );
    // Duplicates (allowed after kill -9) carry the same id and the same content.
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for p in posts.iter().filter(|v| v["path"] == "/hook") {
        let id = p["event"]["id"].as_str().unwrap().to_string();
        if let Some(prev) = by_id.insert(id, &p["event"]) {
            assert_eq!(prev, &p["event"], "a duplicate id with other content");
        }
    }
    // Every message: its received and its delivered event (a delivery repeated after the
    // kill -9 would be a new event with its own id; each message has at least one).
    let qids = |t: &str| -> BTreeSet<String> {
        by_id
            .values()
            .filter(|e| e["type"] == t)
            .map(|e| e["queue_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(qids("received").len(), N);
    assert_eq!(qids("delivered"), qids("received"));

    // The 410 endpoint: every batch posted once, none retried.
    let delivered_ids: BTreeSet<String> = by_id
        .iter()
        .filter(|(_, e)| e["type"] == "delivered")
        .map(|(id, _)| id.clone())
        .collect();
    let gone_ok = poll(WAIT, || {
        let g: BTreeSet<String> = received_posts(&out)
            .into_iter()
            .filter(|v| v["path"] == "/gone")
            .map(|v| v["event"]["id"].as_str().unwrap().to_string())
            .collect();
        g.is_superset(&delivered_ids).then_some(())
    })
    .await;
    assert!(
        gone_ok.is_some(),
        "the 410 endpoint got every delivered event"
    );
    // Longer than the endpoint's max_backoff (1s): a retry would have come by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gone_posts: Vec<Value> = received_posts(&out)
        .into_iter()
        .filter(|v| v["path"] == "/gone")
        .collect();
    assert!(gone_posts.iter().all(|v| v["event"]["type"] == "delivered"));
    let gone: Vec<String> = gone_posts
        .iter()
        .map(|v| v["event"]["id"].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<&String> = gone.iter().collect();
    assert_eq!(gone.len(), distinct.len(), "410 is not retried: {gone:?}");
    assert_eq!(
        w.gannet
            .metric("gannet_ship_failed_total", &[("destination", "gone")])
            .await,
        gone.len() as f64
    );
    // Caught up: no backlog left for the live endpoint.
    let mut backlog = 1.0;
    for _ in 0..100 {
        backlog = w
            .gannet
            .metric("gannet_ship_backlog_events", &[("destination", "crm")])
            .await;
        if backlog == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backlog, 0.0);
}

/// What a switch of `[sendlog] enabled` left behind for a webhook ("crm") that was down
/// across it: the posted events, and the spool directory to look at.
struct Switched {
    w: World,
    spool: std::path::PathBuf,
    posts: Vec<Value>,
    _rx: Receiver,
    _out: tempfile::TempDir,
}

/// N messages from `before@origin.test` with the send log `on_before` and the webhook's
/// receiver down (their events wait where the destination reads them), a graceful stop, the
/// send log switched, the receiver up, N more from `after@origin.test`. Asserts every message
/// of both arrived and the first N's events all before any of the second's (`first` names
/// where those waited).
async fn switch_send_log_across_an_outage(ip: &str, on_before: bool, first: &str) -> Switched {
    const N: usize = 8;
    const SECRET: &str = "whsec_0123456789abcdef";
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("posts.jsonl");
    let hook = format!(
        "[[webhook]]\nname = \"crm\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\n\
         batch_size = 5\nmax_delay = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"5s\"\n"
    );
    let sendlog_off = "\n[sendlog]\nenabled = false\n";
    let off_at_first = if on_before { "" } else { sendlog_off };
    let mut w = World::start(&[ip], Zone::new().mail_domain("ship.test", ip), |c| {
        c.extra(&format!("{hook}{off_at_first}"))
    })
    .await;
    let spool = w.gannet.dir().join("spool");
    async fn send(addr: std::net::SocketAddr, from: &str) {
        smtp_source(addr, N, 2, from, "r@ship.test", 200)
            .await
            .assert_success();
    }
    send(w.gannet.smtp_addr(), "before@origin.test").await;
    w.sinks[0].wait_for(N, WAIT).await;
    wait_appended(&w.gannet, 2 * N).await;
    // Where the destination reads while the receiver is down.
    let waiting = if on_before {
        spool.join("sendlog.journal").join("cursors").join("crm")
    } else {
        spool.join("outbox").join("key-check")
    };
    assert!(waiting.exists(), "{}", waiting.display());
    w.gannet.sigterm().await;

    let text = std::fs::read_to_string(w.gannet.config_path()).unwrap();
    let switched = if on_before {
        format!("{text}{sendlog_off}")
    } else {
        assert!(text.contains(sendlog_off));
        text.replace(sendlog_off, "")
    };
    std::fs::write(w.gannet.config_path(), switched).unwrap();
    let rx = Receiver::start(port, SECRET, &out).await;
    w.gannet.restart().await;
    send(w.gannet.smtp_addr(), "after@origin.test").await;
    w.sinks[0].wait_for(2 * N, WAIT).await;

    let sender_of = |e: &Value| e["sender"].as_str().unwrap_or_default().to_string();
    let posts = poll(WAIT, || {
        let p: Vec<Value> = received_posts(&out)
            .into_iter()
            .filter(|v| v["path"] == "/hook")
            .map(|v| v["event"].clone())
            .collect();
        let received = p.iter().filter(|e| e["type"] == "received").count();
        (received >= 2 * N).then_some(p)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not every event arrived: {} posts\n{}",
            received_posts(&out).len(),
            w.gannet.log()
        )
    });
    let received = |from: &str| {
        posts
            .iter()
            .filter(|e| e["type"] == "received" && sender_of(e) == from)
            .map(|e| e["queue_id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(received("before@origin.test").len(), N, "{first}'s events");
    assert_eq!(received("after@origin.test").len(), N, "the later events");
    // All of the first N's events before any of the later ones.
    let first_after = posts
        .iter()
        .position(|e| sender_of(e) == "after@origin.test")
        .unwrap();
    let last_before = posts
        .iter()
        .rposition(|e| sender_of(e) == "before@origin.test")
        .unwrap();
    assert!(last_before < first_after, "{first}'s events first");
    assert!(posts.iter().all(|e| !e["id"].as_str().unwrap().is_empty()));
    Switched {
        w,
        spool,
        posts,
        _rx: rx,
        _out: out_dir,
    }
}

/// Issue 19, one journal: with the send log on, shipping keeps no outbox of its own; its
/// destinations read the send log's journal at their cursors (one sealed append and one
/// fdatasync per batch of events, whoever reads them). An outbox written before (the send
/// log off, the receiver down) is shipped first after the switch, then deleted: nothing is
/// lost, and its events arrive before the ones that came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_read_the_send_log_journal_after_draining_an_old_outbox() {
    let s = switch_send_log_across_an_outage("127.0.0.173", false, "the old outbox").await;
    // Drained, the old outbox is deleted; the cursor lives beside the journal now.
    poll(WAIT, || (!s.spool.join("outbox").exists()).then_some(()))
        .await
        .unwrap_or_else(|| panic!("the old outbox is still there\n{}", s.w.gannet.log()));
    let cursor = s.spool.join("sendlog.journal").join("cursors").join("crm");
    assert!(cursor.exists(), "{} events", s.posts.len());
}

/// The other way round: destinations behind in the send log's journal when the send log is
/// turned off get those events first from the journal, then the new ones from shipping's own
/// outbox; the journal stays (the send log takes it up again when turned back on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_send_log_off_ships_what_destinations_had_left_in_its_journal() {
    let s = switch_send_log_across_an_outage("127.0.0.174", true, "the journal").await;
    // The journal is the send log's: kept; the destination reads its own outbox now.
    assert!(s.spool.join("sendlog.journal").join("key-check").exists());
    assert!(s.spool.join("outbox").join("cursors").join("crm").exists());
}

/// An erasure while a delivery to the person is in flight (the MX holds its final reply):
/// the delivery's outcome is published after the erasure's pass over the journal, and its
/// line is written shredded, so no event shipped after the erasure names the person. (Before,
/// that line was appended in full, sealed under the journal's key, and shipped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_naming_a_person_published_after_their_erasure_began_are_not_shipped() {
    let w = World::start(
        &["127.0.0.176"],
        Zone::new().mail_domain("ship.test", "127.0.0.176"),
        |c| c.extra("[[jsonl]]\ndir = \"${DIR}/events\"\n"),
    )
    .await;
    let sink = &w.sinks[0];
    let erin = "Erin.Inflight@ship.test";
    let other = "other@ship.test";
    sink.set_delay(Duration::from_secs(120));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "news@origin.test",
        &[erin],
        &message(&[("Subject", "in flight")], "hello"),
    )
    .await;
    sink.wait_pending(1, WAIT).await;

    let out = w.gannet.cli(&["gdpr", "erase", erin]).await;
    out.assert_success();
    // The held reply goes out now: the attempt's outcome comes after the erasure.
    sink.set_delay(Duration::ZERO);
    poll(WAIT, || {
        sink.transactions()
            .iter()
            .any(|t| t.rcpts.iter().any(|r| r.eq_ignore_ascii_case(erin)))
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the held delivery never finished\n{}", w.gannet.log()));
    // Mail after it: once its delivery is in the file, everything before it is too.
    c.send(
        "news@origin.test",
        &[other],
        &message(&[("Subject", "after")], "hello"),
    )
    .await;
    c.quit().await;
    let dir = w.gannet.dir().join("events");
    let lines = poll(WAIT, || {
        let l = jsonl_lines(&dir, "events");
        l.iter()
            .any(|e| e["type"] == "delivered" && e["recipient"] == other)
            .then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("the later delivery was not shipped\n{}", w.gannet.log()));
    let erased_at = lines
        .iter()
        .position(|e| e["type"] == "erased")
        .unwrap_or_else(|| panic!("no erased event in {lines:#?}"));
    let needle = erin.to_ascii_lowercase();
    let named: Vec<&Value> = lines[erased_at..]
        .iter()
        .filter(|e| e.to_string().to_ascii_lowercase().contains(&needle))
        .collect();
    assert!(
        named.is_empty(),
        "shipped after the erasure, naming the person: {named:#?}"
    );
}
