//! The send log (issue 18): events kept in SQLite under the data directory, searched through
//! `GET /api/v1/events` (JSON pages, CSV and NDJSON exports), `gannet logs query`, every query
//! itself recorded; the master key checked at start.

use std::time::Duration;

use serde_json::Value;

use crate::common::gannet::GANNET_BIN;
use crate::common::tools::run;
use crate::common::*;

/// Polls `GET path` until `done` holds for its JSON, and returns it.
async fn wait_json(g: &Gannet, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, body) = g.http_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        last = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not seen in time; last answer of GET {path}:\n{last:#}");
}

/// What Python's csv module makes of `text`: one dict per row.
async fn python_csv(text: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(
        "import csv, json, sys, io\n\
         rows = list(csv.DictReader(io.StringIO(sys.stdin.read(), newline='')))\n\
         print(json.dumps(rows))",
    );
    let out = run(cmd, Some(text.as_bytes()), Duration::from_secs(60)).await;
    out.assert_success();
    serde_json::from_str::<Vec<serde_json::Map<String, Value>>>(&out.stdout)
        .unwrap_or_else(|e| panic!("python output: {e}\n{out}"))
}

/// A JSON field as the CSV shows it.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Checks that CSV rows (parsed by Python) are the JSON events, field by field.
fn assert_csv_matches_json(rows: &[serde_json::Map<String, Value>], events: &[Value]) {
    assert_eq!(rows.len(), events.len(), "CSV rows vs JSON events");
    for (row, ev) in rows.iter().zip(events) {
        let mut rest = ev.as_object().cloned().unwrap_or_default();
        for (col, val) in row {
            if col == "details" {
                continue;
            }
            assert_eq!(
                val.as_str().unwrap_or_default(),
                cell(ev.get(col)),
                "column {col} of CSV row {row:?} vs JSON {ev}"
            );
            rest.remove(col);
        }
        let details = row["details"].as_str().unwrap_or_default();
        let details: Value = if details.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(details).unwrap_or_else(|e| panic!("details {details:?}: {e}"))
        };
        assert_eq!(details, Value::Object(rest), "details column of {row:?}");
    }
}

/// GDPR accountability: a search for a person is itself recorded (who, when, whom), and the
/// CSV export parses with Python's csv module into the same rows as the JSON answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_is_recorded_and_the_csv_export_matches_the_json() {
    let w = World::start(&["127.0.0.181"], Zone::new(), |c| c).await;
    let g = &w.gannet;
    let (status, body) = g
        .http_get("/api/v1/events?recipient=Alice%40Dest.test&campaign=spring")
        .await;
    assert_eq!(status, 200, "{body}");
    // A quote, a comma and a CRLF in a value the CSV must quote.
    let (status, body) = g.http_get("/api/v1/events?campaign=a%22b%2Cc%0D%0Ad").await;
    assert_eq!(status, 200, "{body}");
    let v = wait_json(
        g,
        "/api/v1/events?type=log_access",
        "two log_access events",
        |v| v["events"].as_array().is_some_and(|e| e.len() >= 2),
    )
    .await;
    let first = &v["events"][0];
    assert_eq!(first["actor"], "loopback", "{first}");
    assert_eq!(first["action"], "events", "{first}");
    assert_eq!(first["recipient"], "Alice@Dest.test", "{first}");
    assert_eq!(first["filter"]["campaign"], "spring", "{first}");
    // Looking the person up finds the record of who looked them up.
    let v = wait_json(
        g,
        "/api/v1/events?recipient=alice%40dest.test&type=log_access",
        "the lookup of alice",
        |v| v["events"].as_array().is_some_and(|e| !e.is_empty()),
    )
    .await;
    assert_eq!(v["events"][0]["id"], first["id"]);

    let (status, json_body) = g.http_get("/api/v1/events?limit=1000").await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&json_body).unwrap();
    let events = json["events"].as_array().unwrap().clone();
    let through = events.last().unwrap()["seq"].as_u64().unwrap();
    let (status, csv) = g.http_get("/api/v1/events?format=csv").await;
    assert_eq!(status, 200, "{csv}");
    let rows = python_csv(&csv).await;
    // The export may include the log_access events of the JSON query itself; compare the
    // rows both saw.
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| r["seq"].as_str().unwrap().parse::<u64>().unwrap() <= through)
        .collect();
    assert_csv_matches_json(&rows, &events);
    assert!(
        rows.iter()
            .any(|r| r["details"].as_str().unwrap().contains("a\\\"b,c\\r\\nd")),
        "the awkward filter value survives the CSV round trip: {rows:#?}"
    );

    let (status, nd) = g.http_get("/api/v1/events?format=ndjson").await;
    assert_eq!(status, 200);
    let nd: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&nd[..events.len()], &events[..]);

    // Bad input is named.
    let (status, body) = g.http_get("/api/v1/events?since=yesterday").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"since\""), "{body}");
    let (status, body) = g.http_get("/api/v1/events?limit=0").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"limit\""), "{body}");
    let (status, body) = g.http_get("/api/v1/messages/nothing-here").await;
    assert_eq!(status, 404, "{body}");
}

/// `gannet logs query` prints a table, `--json` and `--csv` from the running instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_query_prints_a_table_json_and_csv() {
    let w = World::start(&["127.0.0.182"], Zone::new(), |c| c).await;
    let g = &w.gannet;
    let (status, _) = g.http_get("/api/v1/events?recipient=bob%40dest.test").await;
    assert_eq!(status, 200);
    wait_json(
        g,
        "/api/v1/events?type=log_access",
        "the first query",
        |v| v["events"].as_array().is_some_and(|e| !e.is_empty()),
    )
    .await;
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(GANNET_BIN);
        cmd.args(["logs", "query", "--config"])
            .arg(g.config_path())
            .args(args);
        cmd
    };
    let out = run(
        cli(&["--recipient", "bob@dest.test"]),
        None,
        Duration::from_secs(60),
    )
    .await;
    out.assert_success();
    assert!(out.stdout.starts_with("time"), "{out}");
    assert!(
        out.stdout.contains("log_access") && out.stdout.contains("bob@dest.test"),
        "{out}"
    );
    let out = run(
        cli(&["--type", "log_access", "--json"]),
        None,
        Duration::from_secs(60),
    )
    .await;
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(!v["events"].as_array().unwrap().is_empty(), "{out}");
    let out = run(cli(&["--csv"]), None, Duration::from_secs(60)).await;
    out.assert_success();
    assert!(out.stdout.starts_with("seq,id,time_us,type,"), "{out}");
    let out = run(
        cli(&["--since", "not-a-time"]),
        None,
        Duration::from_secs(60),
    )
    .await;
    out.assert_failure();
    assert!(out.stderr.contains("since"), "{out}");
}

/// The master key: created 0600 on first start; a missing key for an existing send log stops
/// the start with a message naming the key file (never a silent re-key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_master_key_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut w = World::start(&["127.0.0.183"], Zone::new(), |c| c).await;
    let key = w.gannet.dir().join("gannet.key");
    let mode = std::fs::metadata(&key)
        .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    w.gannet.sigterm().await;
    std::fs::rename(&key, w.gannet.dir().join("elsewhere.key")).unwrap();
    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.arg("serve").arg("--config").arg(w.gannet.config_path());
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("gannet.key") && out.stderr.contains("restore"),
        "{out}"
    );
    assert!(!key.exists(), "no new key was made");
}

/// Events of `path` about mail (not the `log_access` records of our own lookups, which a
/// search by recipient also finds) once `n` of them exist.
async fn wait_events(g: &Gannet, path: &str, n: usize) -> Vec<Value> {
    let mail = |v: &Value| -> Vec<Value> {
        v["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| e["type"] != "log_access")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let v = wait_json(g, path, &format!("{n} events"), |v| mail(v).len() >= n).await;
    mail(&v)
}

fn types(evs: &[Value]) -> Vec<&str> {
    evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// A run with a delivery, a deferral then delivery, and a bounce: every event is in the log,
/// found by recipient, by message (Message-ID or queue id) and by campaign, in time order,
/// with the MX, IPs and replies; campaign statistics count them; the CSV export of the
/// campaign parses with Python's csv into the same rows as the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_deferrals_and_bounces_are_queryable_by_recipient_message_and_campaign() {
    let w = World::start(
        &["127.0.0.184"],
        Zone::new().mail_domain("dest.test", "127.0.0.184"),
        |c| c.retry_schedule(&["1s"]),
    )
    .await;
    let g = &w.gannet;
    let sink = &w.sinks[0];
    sink.reject_rcpt("gone@dest.test", "550 5.1.1 no such user");
    sink.add_rule(
        Rule::new(Stage::Rcpt, "451 4.7.1 try again later")
            .matching("later@dest.test")
            .times(1),
    );
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    let qid = c
        .send(
            "news@origin.test",
            &["ok@dest.test", "later@dest.test", "gone@dest.test"],
            b"Subject: spring\r\nMessage-ID: <spring-1@origin.test>\r\nX-Gannet-Campaign: spring\r\nX-Gannet-Tenant: acme\r\n\r\nhello\r\n",
        )
        .await;
    c.quit().await;

    let later = wait_events(g, "/api/v1/events?recipient=later%40dest.test", 2).await;
    assert_eq!(types(&later), ["deferred", "delivered"], "{later:#?}");
    assert_eq!(later[0]["attempt"], 1);
    assert_eq!(later[1]["attempt"], 2);
    assert!(
        later[0]["reply"].as_str().unwrap().starts_with("451 4.7.1"),
        "{later:#?}"
    );
    assert_eq!(later[1]["remote_ip"], "127.0.0.184");
    assert_eq!(later[1]["sender"], "news@origin.test");
    assert_eq!(later[1]["campaign"], "spring");
    assert_eq!(later[1]["tenant"], "acme");
    assert_eq!(later[1]["queue_id"], qid.as_str());
    let gone = wait_events(g, "/api/v1/events?recipient=GONE%40dest.test", 1).await;
    // The hard bounce also puts the address on the suppression list (its own event, which
    // may or may not be logged yet).
    let gone: Vec<_> = gone
        .into_iter()
        .filter(|e| e["type"] != "suppression_changed")
        .collect();
    assert_eq!(types(&gone), ["bounced"]);
    assert!(gone[0]["reply"].as_str().unwrap().starts_with("550 5.1.1"));

    let by_msg = wait_events(
        g,
        "/api/v1/events?message_id=%3Cspring-1%40origin.test%3E",
        5,
    )
    .await;
    let by_qid = wait_events(g, &format!("/api/v1/events?message_id={qid}"), 5).await;
    assert_eq!(by_msg, by_qid);
    assert_eq!(by_msg[0]["type"], "received");
    let t: Vec<u64> = by_msg
        .iter()
        .map(|e| e["time_us"].as_u64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "time order: {t:?}");

    let (status, story) = g.http_get(&format!("/api/v1/messages/{qid}")).await;
    assert_eq!(status, 200, "{story}");
    let story: Value = serde_json::from_str(&story).unwrap();
    assert_eq!(story["message_id"], "spring-1@origin.test");
    let states: std::collections::BTreeMap<String, String> = story["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states["ok@dest.test"], "delivered");
    assert_eq!(states["later@dest.test"], "delivered");
    assert_eq!(states["gone@dest.test"], "bounced");

    let (status, stats) = g.http_get("/api/v1/campaigns/spring/stats").await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["total"]["accepted"], 3, "{stats:#}");
    assert_eq!(stats["total"]["delivered"], 2, "{stats:#}");
    assert_eq!(stats["total"]["deferred"], 1, "{stats:#}");
    assert_eq!(stats["total"]["bounced"], 1, "{stats:#}");

    let campaign = wait_events(g, "/api/v1/events?campaign=spring&limit=1000", 5).await;
    // The campaign also holds the DSN about gone@ (it inherits the campaign).
    let of_message: Vec<Value> = campaign
        .iter()
        .filter(|e| e["queue_id"] == qid.as_str())
        .cloned()
        .collect();
    assert_eq!(of_message, by_msg);
    let (status, csv) = g
        .http_get("/api/v1/events?campaign=spring&format=csv")
        .await;
    assert_eq!(status, 200);
    assert_csv_matches_json(&python_csv(&csv).await, &campaign);

    // The log's hash chain verifies while gannet runs.
    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["logs", "verify", "--config"])
        .arg(g.config_path());
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_success();
    assert!(out.stdout.contains("hash chain intact"), "{out}");
}

/// kill -9 during a run: afterwards (and after the restart redelivers what was not final),
/// every recipient the MX accepted has its `delivered` event in the send log: no final state
/// was recorded without its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_event_of_a_final_message() {
    let mut w = World::start(
        &["127.0.0.185"],
        Zone::new().mail_domain("dest.test", "127.0.0.185"),
        |c| c.delivery_option("max_connections_per_destination = 1"),
    )
    .await;
    let sink = &w.sinks[0];
    sink.set_delay(Duration::from_millis(100));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    let mut rcpts = Vec::new();
    for i in 0..15 {
        let r = format!("k{i}@dest.test");
        c.send("s@origin.test", &[r.as_str()], b"Subject: k\r\n\r\nx\r\n")
            .await;
        rcpts.push(r);
    }
    c.quit().await;
    sink.wait_for(4, WAIT).await;
    w.gannet.kill9().await;
    sink.set_delay(Duration::ZERO);
    w.gannet.restart().await;
    let accepted_of = |ts: &[Transaction]| -> std::collections::BTreeSet<String> {
        ts.iter()
            .filter(|t| t.accepted)
            .flat_map(|t| t.rcpts.iter().map(|r| r.to_lowercase()))
            .collect()
    };
    let ts = sink
        .wait_until(WAIT, |ts| accepted_of(ts).len() >= 15)
        .await
        .unwrap_or_else(|e| panic!("all 15 delivered after the restart: {e}"));
    let accepted = accepted_of(&ts);
    let g = &w.gannet;
    let evs = wait_json(
        g,
        "/api/v1/events?type=delivered&limit=1000",
        "delivered events",
        |v| {
            let got: std::collections::BTreeSet<String> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["recipient"].as_str().unwrap().to_lowercase())
                .collect();
            accepted.iter().all(|r| got.contains(r))
        },
    )
    .await;
    assert!(!evs["events"].as_array().unwrap().is_empty());
}

/// The `received` events in the log, by queue id (the event id of each).
async fn received_ids(g: &Gannet, n: usize) -> std::collections::BTreeMap<String, String> {
    let v = wait_json(
        g,
        "/api/v1/events?type=received&limit=100",
        "received",
        |v| v["events"].as_array().is_some_and(|e| e.len() >= n),
    )
    .await;
    let evs = v["events"].as_array().unwrap();
    let by_queue: std::collections::BTreeMap<String, String> = evs
        .iter()
        .map(|e| {
            (
                e["queue_id"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_queue.len(),
        evs.len(),
        "one `received` per message: {v:#}"
    );
    by_queue
}

/// A `received` event that had not reached the send log when Gannet was killed (the spool had
/// made the message durable and the client had its 250; the send log's journal append had
/// not happened) is published again at the restart, with the id it had, and stored once: the
/// messages whose event was already in the log, and a second restart, add no copy;
/// `gannet_accepted_total` does not count the replays. The journal's append is held back by a
/// full disk: the send log lives on a small tmpfs the test fills (the spool is elsewhere, so
/// mail is still accepted), and the filler goes before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_event_lost_at_a_kill_is_published_again_once_at_restart() {
    const LOST: usize = 8;
    let fs = match Tmpfs::mount("16m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!(
                "SKIPPED a_received_event_lost_at_a_kill...: cannot mount a tmpfs for the send log ({e}); run as root (CI does)"
            );
            return;
        }
    };
    let db = fs.path().join("sendlog.sqlite");
    let mut w = World::start(
        &["127.0.0.190"],
        Zone::new().mail_domain("dest.test", "127.0.0.190"),
        |c| {
            c.retry_schedule(&["1h"])
                .extra(&format!("[sendlog]\npath = \"{}\"", db.display()))
        },
    )
    .await;
    // Every recipient stays queued: its `received` is all the log may have of it.
    w.sinks[0].add_rule(Rule::new(Stage::Rcpt, "451 4.7.1 try again later"));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    let first = c
        .send(
            "s@origin.test",
            &["r0@dest.test"],
            b"Subject: r0\r\n\r\nx\r\n",
        )
        .await;
    let before = received_ids(&w.gannet, 1).await;
    assert!(before.contains_key(&first), "{before:?}");
    w.gannet.wait_event("deferred", "r0@dest.test", WAIT).await;

    // The send log's disk is full: its journal cannot append (and retries), the spool can.
    let full = fs.keep_full("filler");
    let mut lost = Vec::new();
    // Eight: the first events after the fill may still fit in the journal file's last page
    // (tmpfs hands out whole pages), the later ones cannot.
    for i in 1..=LOST {
        let body = format!("Subject: r{i}\r\n\r\nx\r\n");
        let r = format!("r{i}@dest.test");
        lost.push(
            c.send("s@origin.test", &[r.as_str()], body.as_bytes())
                .await,
        );
    }
    // Their outcomes reach the log's queue too: the deferrals are published once tried.
    w.gannet
        .wait_event("deferred", &format!("r{LOST}@dest.test"), WAIT)
        .await;
    // The journal had not taken them all: it was still retrying its append.
    assert!(
        w.gannet.log().contains("cannot append events; retrying"),
        "{}",
        w.gannet.log()
    );
    w.gannet.kill9().await;
    drop(full);

    w.gannet.restart().await;
    let after = received_ids(&w.gannet, LOST + 1).await;
    assert_eq!(after.len(), LOST + 1, "{after:?}");
    assert_eq!(after[&first], before[&first], "the first one kept its id");
    for q in &lost {
        assert!(
            after.contains_key(q),
            "{q} has its `received` again: {after:?}"
        );
    }
    // Those the journal never had are in the log through the replay: some at least.
    let (status, body) = w
        .gannet
        .http_get("/api/v1/events?type=received&limit=100")
        .await;
    assert_eq!(status, 200, "{body}");
    let replayed = body.matches("\"replayed\":true").count();
    assert!(
        (1..=LOST).contains(&replayed),
        "{replayed} replayed: {body}"
    );
    // The replays are messages accepted before the kill: the metrics subscriber does not count
    // them again (this process accepted nothing).
    assert_eq!(
        w.gannet.metric("gannet_accepted_total", &[]).await,
        0.0,
        "replayed `received` events are not counted as accepted"
    );
    w.gannet.sigterm().await;
    w.gannet.restart().await;
    // A lookup's record commits after everything published before it (the replays come
    // before the listeners open): once it is in the log, so is any replay.
    let (status, _) = w.gannet.http_get("/api/v1/events?campaign=marker-2").await;
    assert_eq!(status, 200);
    wait_json(
        &w.gannet,
        "/api/v1/events?type=log_access&limit=1000",
        "the lookup recorded",
        |v| v.to_string().contains("marker-2"),
    )
    .await;
    assert_eq!(
        received_ids(&w.gannet, LOST + 1).await,
        after,
        "no copy after a second restart"
    );
}

/// One changed byte in a stored record: `gannet logs verify` fails and names that record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_byte_fails_verify_naming_the_record() {
    let mut w = World::start(&["127.0.0.186"], Zone::new(), |c| c).await;
    for i in 0..5 {
        let (status, _) = w
            .gannet
            .http_get(&format!("/api/v1/events?campaign=c{i}"))
            .await;
        assert_eq!(status, 200);
    }
    let evs = wait_json(
        &w.gannet,
        "/api/v1/events?type=log_access",
        "5 lookups",
        |v| v["events"].as_array().is_some_and(|e| e.len() >= 5),
    )
    .await["events"]
        .as_array()
        .unwrap()
        .clone();
    let target = evs[2]["seq"].as_u64().unwrap();
    let target_id = evs[2]["id"].as_str().unwrap().to_string();
    w.gannet.sigterm().await;
    let db = w.gannet.dir().join("spool").join("sendlog.sqlite");
    let db = if db.exists() {
        db
    } else {
        find_file(w.gannet.dir(), "sendlog.sqlite").expect("sendlog.sqlite in the instance dir")
    };
    // Flip one byte of the stored (sealed) data of that record.
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             d = bytearray(c.execute('SELECT data FROM events WHERE seq = ?', (int(sys.argv[2]),)).fetchone()[0])\n\
             d[len(d) // 2] ^= 1\n\
             c.execute('UPDATE events SET data = ? WHERE seq = ?', (bytes(d), int(sys.argv[2])))\n\
             c.commit()",
        )
        .arg(&db)
        .arg(target.to_string());
    run(cmd, None, Duration::from_secs(60))
        .await
        .assert_success();
    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["logs", "verify", "--config"])
        .arg(w.gannet.config_path());
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_failure();
    assert!(
        out.stderr.contains(&format!("seq {target} ")) && out.stderr.contains(&target_id),
        "{out}"
    );
}

/// A Python process holding the send log's SQLite write lock (`BEGIN IMMEDIATE`) until it is
/// killed: Gannet's send-log writer waits behind it while everything else goes on.
pub(crate) async fn hold_write_lock(dir: &std::path::Path) -> tokio::process::Child {
    let db = find_file(dir, "sendlog.sqlite").expect("sendlog.sqlite");
    let mut holder = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()",
        )
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut out = tokio::io::BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
        .await
        .expect("read from the lock holder");
    assert_eq!(line.trim(), "locked");
    holder
}

pub(crate) fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// Files under `dir` whose bytes contain any of `needles`.
fn files_containing(dir: &std::path::Path, needles: &[Vec<u8>]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_containing(&p, needles));
        } else if let Ok(bytes) = std::fs::read(&p) {
            let lower = bytes.to_ascii_lowercase();
            if needles
                .iter()
                .any(|n| lower.windows(n.len()).any(|w| w == n.as_slice()))
            {
                out.push(p);
            }
        }
    }
    out
}

/// GDPR Art. 15 then 17: the access export lists the person's messages with provider and
/// outcome; after `gannet gdpr erase` their rows read back erased (no address, no reply),
/// the send-log files hold the address in no form (plain, base64, quoted-printable), campaign
/// statistics are unchanged, the erasure is recorded without the address, and the hash chain
/// still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_the_person_and_keeps_counts_and_chain() {
    let w = World::start(
        &["127.0.0.187"],
        Zone::new().mail_domain("dest.test", "127.0.0.187"),
        |c| c,
    )
    .await;
    let g = &w.gannet;
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    let qid = c
        .send(
            "news@origin.test",
            &["erin.erasable@dest.test", "keep@dest.test"],
            b"Subject: hi\r\nX-Gannet-Campaign: autumn\r\n\r\nhello\r\n",
        )
        .await;
    c.quit().await;
    wait_events(g, "/api/v1/events?campaign=autumn&type=delivered", 2).await;

    let (status, export) = g
        .http_get("/api/v1/subjects/erin.erasable%40dest.test")
        .await;
    assert_eq!(status, 200, "{export}");
    let export: Value = serde_json::from_str(&export).unwrap();
    assert_eq!(
        export["messages"][0]["queue_id"],
        qid.as_str(),
        "{export:#}"
    );
    assert_eq!(export["messages"][0]["outcome"], "delivered", "{export:#}");
    assert_eq!(
        export["messages"][0]["remote_ip"], "127.0.0.187",
        "{export:#}"
    );
    assert!(export["retention_days"].as_u64().is_some() && export["purposes"].is_array());
    let (_, stats_before) = g.http_get("/api/v1/campaigns/autumn/stats").await;

    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["gdpr", "erase", "Erin.Erasable@dest.test", "--config"])
        .arg(g.config_path());
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_success();

    let rows = wait_events(g, "/api/v1/events?recipient=erin.erasable%40dest.test", 1).await;
    for r in &rows {
        assert_eq!(r["erased"], true, "{r}");
        assert_eq!(r["recipient"], "", "{r}");
        assert!(r.get("reply").is_none(), "{r}");
    }
    let keep = wait_events(g, "/api/v1/events?recipient=keep%40dest.test", 1).await;
    assert_eq!(
        keep[0]["recipient"], "keep@dest.test",
        "others stay readable"
    );
    let (_, stats_after) = g.http_get("/api/v1/campaigns/autumn/stats").await;
    assert_eq!(stats_before, stats_after);
    let erased = wait_events(g, "/api/v1/events?type=erased", 1).await;
    assert!(
        !erased[0].to_string().to_lowercase().contains("erin"),
        "{erased:?}"
    );

    use base64::Engine;
    let addr = "erin.erasable@dest.test";
    let needles: Vec<Vec<u8>> = vec![
        addr.as_bytes().to_vec(),
        "erin.erasable=40dest.test".as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(addr)
            .to_ascii_lowercase()
            .into_bytes(),
    ];
    let db_dir = w.gannet.dir().join("spool");
    let hits = files_containing(&db_dir, &needles);
    let sendlog_hits: Vec<_> = hits
        .iter()
        .filter(|p| p.to_string_lossy().contains("sendlog"))
        .collect();
    assert!(sendlog_hits.is_empty(), "address found in {sendlog_hits:?}");
    if !hits.is_empty() {
        eprintln!("erasure: the address is still in (not the send log): {hits:?}");
    }

    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["logs", "verify", "--config"])
        .arg(g.config_path());
    run(cmd, None, Duration::from_secs(60))
        .await
        .assert_success();
}

/// Runs `gannet logs verify` against `g`'s config.
async fn logs_verify(g: &Gannet) -> crate::common::tools::ToolOutput {
    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["logs", "verify", "--config"])
        .arg(g.config_path());
    run(cmd, None, Duration::from_secs(60)).await
}

/// Runs a Python snippet with the send-log database path and `args` as arguments.
async fn python_db(script: &str, db: &std::path::Path, args: &[String]) -> String {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(db).args(args);
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_success();
    out.stdout.trim().to_string()
}

/// Signed checkpoints (issue 18, tamper evidence): a record changed and the whole chain after
/// it recomputed (which the hash chain alone cannot see) fails `gannet logs verify` at the
/// first checkpoint after the change, naming that record; a checkpoint whose signature was
/// altered fails as forged, naming its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_catch_a_rewritten_chain_and_a_forged_checkpoint() {
    let mut w = World::start(&["127.0.0.188"], Zone::new(), |c| {
        c.extra("[sendlog]\ncheckpoint_interval = \"0s\"")
    })
    .await;
    for i in 0..6 {
        let (status, _) = w
            .gannet
            .http_get(&format!("/api/v1/events?campaign=cp{i}"))
            .await;
        assert_eq!(status, 200);
        // Separate commits, so there are several checkpoints.
        wait_json(
            &w.gannet,
            "/api/v1/events?type=log_access",
            "the lookup recorded",
            |v| v["events"].as_array().is_some_and(|e| e.len() > i),
        )
        .await;
    }
    w.gannet.sigterm().await;
    let db = find_file(w.gannet.dir(), "sendlog.sqlite").expect("sendlog.sqlite");
    let ok = logs_verify(&w.gannet).await;
    ok.assert_success();
    assert!(ok.stdout.contains("signed checkpoints valid"), "{ok}");
    let n: u64 = python_db(
        "import sqlite3, sys\n\
         print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM checkpoints').fetchone()[0])",
        &db,
        &[],
    )
    .await
    .parse()
    .unwrap();
    assert!(n >= 3, "{n} checkpoints");

    // A forged checkpoint: one byte of its signature changed.
    let forged = python_db(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         seq, sig = c.execute('SELECT seq, signature FROM checkpoints ORDER BY seq LIMIT 1 OFFSET 1').fetchone()\n\
         s = bytearray(sig); s[5] ^= 1\n\
         c.execute('UPDATE checkpoints SET signature = ? WHERE seq = ?', (bytes(s), seq))\n\
         c.commit()\n\
         print(seq)",
        &db,
        &[],
    )
    .await;
    let out = logs_verify(&w.gannet).await;
    out.assert_failure();
    assert!(
        out.stderr.contains(&format!("seq {forged} ")) && out.stderr.contains("forged"),
        "{out}"
    );
    // Put the signature back: verify passes again.
    python_db(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         sig = c.execute('SELECT signature FROM checkpoints WHERE seq = ?', (int(sys.argv[2]),)).fetchone()[0]\n\
         s = bytearray(sig); s[5] ^= 1\n\
         c.execute('UPDATE checkpoints SET signature = ? WHERE seq = ?', (bytes(s), int(sys.argv[2])))\n\
         c.commit()",
        &db,
        std::slice::from_ref(&forged),
    )
    .await;
    logs_verify(&w.gannet).await.assert_success();

    // One byte of the first record changed and every hash after it recomputed: the chain is
    // consistent again, the first checkpoint is not.
    let first_cp = python_db(
        "import sqlite3, sys, hashlib, struct\n\
         c = sqlite3.connect(sys.argv[1])\n\
         rows = c.execute('SELECT seq, id, time_us, type, queue_id, message_id, tenant, campaign, class, pool, attempt, variant, site, category, rcpt_hash, sender_hash, rcpt, sender, data_key, data, prev FROM events ORDER BY seq').fetchall()\n\
         prev = rows[0][20]\n\
         for r in rows:\n\
         \x20   cols = list(r[1:20])\n\
         \x20   if r[0] == rows[0][0]:\n\
         \x20       d = bytearray(cols[18]); d[len(d) // 2] ^= 1; cols[18] = bytes(d)\n\
         \x20   h = hashlib.sha256(prev)\n\
         \x20   for i, v in enumerate(cols):\n\
         \x20       if i in (1, 9): v = struct.pack('>q', v)\n\
         \x20       elif isinstance(v, str): v = v.encode()\n\
         \x20       if v is None: h.update(b'\\xff\\xff\\xff\\xff')\n\
         \x20       else: h.update(struct.pack('>I', len(v))); h.update(v)\n\
         \x20   new = h.digest()\n\
         \x20   c.execute('UPDATE events SET data = ?, prev = ?, hash = ? WHERE seq = ?', (cols[18], prev, new, r[0]))\n\
         \x20   prev = new\n\
         c.commit()\n\
         print(c.execute('SELECT MIN(seq) FROM checkpoints').fetchone()[0])",
        &db,
        &[],
    )
    .await;
    let out = logs_verify(&w.gannet).await;
    out.assert_failure();
    assert!(
        out.stderr.contains(&format!("seq {first_cp} "))
            && out.stderr.contains("does not match the signed checkpoint"),
        "{out}"
    );
}

/// GDPR Art. 17, the rest of the promise: mail still queued for the person (deferred by the
/// sink, waiting for its retry) is dropped and recorded as `purged` while their co-recipient
/// stays queued untouched; their clear suppression entries are replaced by one keyed by the
/// address hash, which refuses a new injection to them (550 5.7.1) without keeping the
/// address; campaign statistics are unchanged and the log still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_drops_queued_mail_and_refuses_the_person_by_keyed_hash() {
    let w = World::start(
        &["127.0.0.189"],
        Zone::new().mail_domain("dest.test", "127.0.0.189"),
        |c| c.retry_schedule(&["1h"]),
    )
    .await;
    let g = &w.gannet;
    let sink = &w.sinks[0];
    let erin = "erin.queued@dest.test";
    sink.reject_rcpt(erin, "451 4.2.0 mailbox busy, try later");
    sink.reject_rcpt("later@dest.test", "451 4.2.0 mailbox busy, try later");
    // A clear entry in another tenant's scope (does not stop this mail): erasure removes it.
    let (status, body) = g
        .http_post(
            "/api/v1/suppressions",
            Some(&format!(
                r#"{{"address": "{erin}", "tenant": "other", "reason": "manual"}}"#
            )),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");

    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    let msg = b"Subject: hi\r\nX-Gannet-Campaign: winter\r\n\r\nhello\r\n";
    c.send("news@origin.test", &[erin, "later@dest.test"], msg)
        .await;
    c.send("news@origin.test", &[erin], msg).await;
    c.quit().await;
    wait_events(g, "/api/v1/events?campaign=winter&type=deferred", 3).await;
    let (_, stats_before) = g.http_get("/api/v1/campaigns/winter/stats").await;

    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["gdpr", "erase", erin, "--config"])
        .arg(g.config_path());
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_success();
    assert!(
        out.stdout.contains("2 queued recipients dropped")
            && out.stdout.contains("1 suppression entries"),
        "{out}"
    );

    // Both of erin's queued recipients were purged and recorded; later@ is still queued.
    let purged = wait_events(g, "/api/v1/events?campaign=winter&type=purged", 2).await;
    assert_eq!(purged.len(), 2, "{purged:?}");
    for p in &purged {
        assert_eq!(p["erased"], true, "{p}");
    }
    let q = g.queue_status().await;
    assert_eq!(q.queued_recipients, 1, "only later@ stays queued: {q:?}");
    // The clear entry is gone; the keyed-hash entry lists no address.
    let (_, list) = g.http_get("/api/v1/suppressions?prefix=erin").await;
    assert!(!list.contains("erin"), "{list}");

    // New mail to erin is refused as suppressed; someone else's is accepted.
    let msg = b"Subject: again\r\n\r\nhello again\r\n";
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<news@origin.test>", "250").await;
    // Refused at RCPT (an erasure covers every tenant and stream: [suppression] smtp_action
    // = "reject" answers those at RCPT).
    let reply = c
        .cmd(&format!("RCPT TO:<{}>", erin.to_uppercase()), "550")
        .await;
    assert!(
        reply.text().contains("5.7.1") && reply.text().contains("erasure"),
        "{}",
        reply.text()
    );
    c.cmd("RSET", "250").await;
    c.send("news@origin.test", &["fresh@dest.test"], msg).await;
    c.quit().await;
    let suppressed = wait_events(g, "/api/v1/events?type=suppressed", 1).await;
    // Recorded, sealed under a key nobody keeps.
    assert_eq!(suppressed[0]["erased"], true, "{suppressed:?}");
    assert_eq!(suppressed[0]["recipient"], "", "{suppressed:?}");

    let (_, stats_after) = g.http_get("/api/v1/campaigns/winter/stats").await;
    assert_eq!(stats_before, stats_after);
    let mut cmd = tokio::process::Command::new(GANNET_BIN);
    cmd.args(["logs", "verify", "--config"])
        .arg(g.config_path());
    run(cmd, None, Duration::from_secs(60))
        .await
        .assert_success();
}

/// Lines in the send log's journal files (`sendlog.journal/*.seg`): (all, shredded). Each
/// line is one event, sealed; an erased one is all `#`.
fn journal_lines(dir: &std::path::Path) -> (usize, usize) {
    let journal = find_dir(dir, "sendlog.journal").expect("sendlog.journal in the instance dir");
    let (mut all, mut shredded) = (0, 0);
    for e in std::fs::read_dir(&journal).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "seg") {
            let bytes = std::fs::read(&p).unwrap();
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                all += 1;
                if line.iter().all(|&b| b == b'#') {
                    shredded += 1;
                }
            }
        }
    }
    (all, shredded)
}

fn find_dir(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(f) = find_dir(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// The send log's durability is its journal: events acknowledged there (appended and
/// fdatasynced) while the SQLite database cannot be written (a Python process holds its
/// write lock) and Gannet is then killed with SIGKILL are in the log after the restart,
/// each exactly once (counted by event id). `deferred` events are never published again at
/// recovery, so only the journal can bring them back; the attempts after the restart get
/// another reply and are told apart by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_the_journal_but_not_in_the_database_at_a_kill_are_stored_once() {
    let mut w = World::start(
        &["127.0.0.193"],
        Zone::new().mail_domain("dest.test", "127.0.0.193"),
        |c| c.retry_schedule(&["1h"]),
    )
    .await;
    w.sinks[0].add_rule(Rule::new(Stage::Rcpt, "451 4.7.1 before the kill"));
    let mut holder = hold_write_lock(w.gannet.dir()).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    let mut qids = Vec::new();
    for i in 0..4 {
        let r = format!("j{i}@dest.test");
        qids.push(
            c.send("s@origin.test", &[r.as_str()], b"Subject: j\r\n\r\nx\r\n")
                .await,
        );
    }
    c.quit().await;
    for i in 0..4 {
        w.gannet
            .wait_event("deferred", &format!("j{i}@dest.test"), WAIT)
            .await;
    }
    // 4 `received` + 4 `deferred` appended and fdatasynced (each line is one event).
    let dir = w.gannet.dir().to_path_buf();
    poll(WAIT, || (journal_lines(&dir).0 >= 8).then_some(()))
        .await
        .unwrap_or_else(|| panic!("8 journal lines: {:?}", journal_lines(&dir)));
    w.gannet.kill9().await;
    holder.kill().await.unwrap();
    drop(holder);
    w.sinks[0].clear_rules();
    w.sinks[0].add_rule(Rule::new(Stage::Rcpt, "451 4.7.1 after the restart"));
    w.gannet.restart().await;

    let v = wait_json(
        &w.gannet,
        "/api/v1/events?limit=1000",
        "the events of before the kill",
        |_| true,
    )
    .await;
    let evs = v["events"].as_array().unwrap();
    let mut ids: Vec<&str> = evs.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event id stored twice: {v:#}");
    let before: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "deferred" && e["reply"].to_string().contains("before the kill"))
        .collect();
    let mut rcpts: Vec<&str> = before
        .iter()
        .map(|e| e["recipient"].as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "j0@dest.test",
            "j1@dest.test",
            "j2@dest.test",
            "j3@dest.test"
        ],
        "each deferral of before the kill once: {v:#}"
    );
    for q in &qids {
        assert_eq!(
            evs.iter()
                .filter(|e| e["type"] == "received" && e["queue_id"] == q.as_str())
                .count(),
            1,
            "one `received` for {q}: {v:#}"
        );
    }
    logs_verify(&w.gannet).await.assert_success();
}

/// The database takes the journal in large, rare transactions (`ingest_interval` of an hour
/// here), yet a query sees every event published before it, and an erasure moves the
/// person's journal-only events into the database first: the erasure counts them, campaign
/// statistics include them, and the journal's lines naming the person are overwritten (no
/// file of the send log holds the address in any form; the chain still verifies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_erasure_see_events_still_only_in_the_journal() {
    let w = World::start(
        &["127.0.0.194"],
        Zone::new().mail_domain("dest.test", "127.0.0.194"),
        |c| c.extra("[sendlog]\ningest_interval = \"1h\""),
    )
    .await;
    let g = &w.gannet;
    let send = |rcpts: &'static [&'static str]| async move {
        let mut c = SmtpClient::connect(g.smtp_addr()).await;
        c.hello("client.test").await;
        c.send(
            "news@origin.test",
            rcpts,
            b"Subject: hi\r\nX-Gannet-Campaign: winter\r\n\r\nhello\r\n",
        )
        .await;
        c.quit().await;
    };
    send(&["erin.journal@dest.test", "keep@dest.test"]).await;
    g.wait_event("delivered", "erin.journal@dest.test", WAIT)
        .await;
    g.wait_event("delivered", "keep@dest.test", WAIT).await;
    // One query, no polling: it waits for what was published before it.
    let (status, body) = g
        .http_get("/api/v1/events?campaign=winter&type=delivered")
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2, "{v:#}");

    // A second message to the person, in the journal only when the erasure starts.
    send(&["erin.journal@dest.test"]).await;
    g.wait_outcomes(WAIT, "two deliveries to erin", |os| {
        os.iter()
            .filter(|o| o.event == "delivered" && o.recipient == "erin.journal@dest.test")
            .count()
            >= 2
    })
    .await;
    let (_, shredded_before) = journal_lines(g.dir());
    assert_eq!(shredded_before, 0);
    let (status, body) = g
        .http_post(
            "/api/v1/erasures",
            Some(r#"{"address": "Erin.Journal@dest.test"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let erased: Value = serde_json::from_str(&body).unwrap();
    assert!(
        erased["erased"]["send_log_rows"].as_u64() >= Some(2),
        "both deliveries counted, the second from the journal: {erased:#}"
    );
    let (status, stats) = g.http_get("/api/v1/campaigns/winter/stats").await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["total"]["delivered"], 3,
        "three deliveries counted: {stats:#}"
    );
    let (_, shredded) = journal_lines(g.dir());
    assert!(
        shredded >= 2,
        "the person's journal lines overwritten: {shredded}"
    );
    use base64::Engine;
    let addr = "erin.journal@dest.test";
    let needles: Vec<Vec<u8>> = vec![
        addr.as_bytes().to_vec(),
        "erin.journal=40dest.test".as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(addr)
            .to_ascii_lowercase()
            .into_bytes(),
    ];
    let hits: Vec<_> = files_containing(g.dir(), &needles)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("sendlog"))
        .collect();
    assert!(hits.is_empty(), "address found in {hits:?}");
    logs_verify(g).await.assert_success();
}
