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
