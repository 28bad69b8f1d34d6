//! Operating a running instance (issue 2, item 7): `gannet queue list` / `gannet queue flush`
//! (which talk to the HTTP API of the instance their `--config` describes) and the HTTP queue
//! API itself. The retry schedule is one hour, so only a flush can make deferred mail move.

use serde_json::Value;

use crate::common::*;

/// Three recipients deferred once (2 for dest.test, 1 for other.test) and then held for an
/// hour by the retry schedule; the sink accepts everything from then on.
async fn held_world() -> World {
    let w = World::start(
        &["127.0.0.81"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.81")
            .mail_domain("other.test", "127.0.0.81"),
        |c| c.retry_schedule(&["1h"]),
    )
    .await;
    let sink = &w.sinks[0];
    sink.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["a@dest.test", "b@dest.test"],
        b"Subject: held 1\r\n\r\nx\r\n",
    )
    .await;
    c.send(
        "s@origin.test",
        &["c@other.test"],
        b"Subject: held 2\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    w.gannet
        .wait_outcomes(WAIT, "3 deferrals", |os| {
            os.iter().filter(|o| o.event == "deferred").count() >= 3
        })
        .await;
    sink.clear_rules();
    w
}

/// Total queued recipients in `gannet queue list --json` output: the API's
/// `queued_recipients`, or the sum over a list of queues.
fn json_total(v: &Value) -> Option<u64> {
    if let Some(n) = v.get("queued_recipients").and_then(Value::as_u64) {
        return Some(n);
    }
    let list = v
        .as_array()
        .or_else(|| v.get("queues").and_then(Value::as_array))?;
    Some(
        list.iter()
            .filter_map(|q| q.get("recipients").and_then(Value::as_u64))
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_and_flush_from_the_cli() {
    let w = held_world().await;

    let out = w.gannet.cli(&["queue", "list"]).await;
    out.assert_success();
    assert!(
        out.stdout.contains("dest.test") && out.stdout.contains("other.test"),
        "`queue list` shows each queued domain:\n{out}"
    );

    let out = w.gannet.cli(&["queue", "list", "--json"]).await;
    out.assert_success();
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("`queue list --json` prints JSON ({e}):\n{out}"));
    assert_eq!(json_total(&v), Some(3), "3 queued recipients in {v}");
    assert!(v.to_string().contains("dest.test") && v.to_string().contains("other.test"));

    assert!(
        w.sinks[0].messages().is_empty(),
        "nothing delivered before the flush (retry is 1 h away)"
    );
    let out = w.gannet.cli(&["queue", "flush"]).await;
    out.assert_success();
    w.sinks[0]
        .wait_until(WAIT, |ts| {
            ts.iter()
                .filter(|t| t.accepted)
                .flat_map(|t| &t.rcpts)
                .count()
                >= 3
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "flush did not deliver the held mail: {e}\n{}",
                w.gannet.log()
            )
        });
    for r in ["a@dest.test", "b@dest.test", "c@other.test"] {
        w.gannet.wait_event("delivered", r, WAIT).await;
    }

    // Delivered recipients leave the queue (the outcome may be logged a moment earlier).
    let mut v = Value::Null;
    for _ in 0..20 {
        let out = w.gannet.cli(&["queue", "list", "--json"]).await;
        out.assert_success();
        v = serde_json::from_str(out.stdout.trim()).expect("JSON");
        if json_total(&v) == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(json_total(&v), Some(0), "queue empty after delivery: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_queue_api_reports_and_flushes() {
    let w = held_world().await;
    let (status, body) = w.gannet.http_get("/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(health["status"], "ok");

    let q = w.gannet.queue_status().await;
    assert_eq!(q.queued_recipients, 3, "{:?}", q.raw);
    let dest: u64 = q
        .queues
        .iter()
        .filter(|e| e.domain == "dest.test")
        .map(|e| e.recipients)
        .sum();
    let other: u64 = q
        .queues
        .iter()
        .filter(|e| e.domain == "other.test")
        .map(|e| e.recipients)
        .sum();
    assert_eq!((dest, other), (2, 1), "per-domain counts: {:?}", q.raw);
    for e in &q.queues {
        assert_eq!(
            e.class, "promotional",
            "listener default class: {:?}",
            e.raw
        );
        // A deferred recipient waits in its domain's scheduled queue, before MX resolution:
        // the site may be null there, but the field is part of the API.
        assert!(
            e.raw.get("site").is_some(),
            "each queue has a site field: {:?}",
            e.raw
        );
    }

    w.gannet.flush().await;
    for r in ["a@dest.test", "b@dest.test", "c@other.test"] {
        w.gannet.wait_event("delivered", r, WAIT).await;
    }
    let q = w
        .gannet
        .queue_drained(std::time::Duration::from_secs(5))
        .await;
    assert_eq!(
        q.queued_recipients, 0,
        "queue empty after delivery: {:?}",
        q.raw
    );
}

/// The CLI against an instance that is not running fails with a message naming the address it
/// tried, not a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_against_a_stopped_instance_fails_clearly() {
    let mut w = World::start(
        &["127.0.0.82"],
        Zone::new().mail_domain("dest.test", "127.0.0.82"),
        |c| c,
    )
    .await;
    w.gannet.kill9().await;
    let out = w.gannet.cli(&["queue", "list"]).await;
    out.assert_failure();
    let http = w.gannet.http_addr().to_string();
    assert!(
        out.stderr.contains(&http),
        "the error names the address it tried ({http}):\n{out}"
    );
    assert!(!out.all().contains("panicked"), "no panic:\n{out}");
}

/// SHA-256 hex of `token`, as `[[api_token]] hash` wants it (computed by Python's hashlib, an
/// implementation independent of Gannet's).
async fn sha256_hex(token: &str) -> String {
    let out = crate::common::tools::python(
        "import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
        &[token],
        None,
    )
    .await;
    out.assert_success();
    out.stdout.trim().to_string()
}

/// With `[[api_token]]`s configured, admin endpoints need a bearer token with the `admin`
/// scope: none or a wrong one → 401, a token without `admin` → 403, errors as JSON
/// `{"error": {"code", "message"}}`; `/health` stays open; the CLI sends `GANNET_API_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_require_an_admin_token_when_tokens_are_configured() {
    let admin = "admin-secret-token-1";
    let reader = "logs-only-token-2";
    let (admin_hash, reader_hash) = (sha256_hex(admin).await, sha256_hex(reader).await);
    let w = World::start(
        &["127.0.0.83"],
        Zone::new().mail_domain("dest.test", "127.0.0.83"),
        |c| {
            c.extra(&format!(
                "[[api_token]]\nname = \"ops\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n\n\
                 [[api_token]]\nname = \"reader\"\nhash = \"{reader_hash}\"\nscopes = [\"logs\"]\n"
            ))
        },
    )
    .await;
    let g = &w.gannet;
    assert_eq!(g.http_get("/health").await.0, 200, "/health needs no token");

    let (status, body) = g.http_get("/api/v1/queues").await;
    assert_eq!(status, 401, "no token: 401, got {status} {body}");
    let err: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("error body is JSON ({e}): {body}"));
    assert!(
        err["error"]["code"].is_string() && err["error"]["message"].is_string(),
        "errors are {{\"error\": {{\"code\", \"message\"}}}}: {body}"
    );
    let (status, body) = g.http_get_with_token("/api/v1/queues", "wrong-token").await;
    assert_eq!(status, 401, "wrong token: 401, got {status} {body}");
    let (status, body) = g.http_get_with_token("/api/v1/queues", reader).await;
    assert_eq!(
        status, 403,
        "token without the admin scope: 403, got {status} {body}"
    );
    let (status, body) = g.http_get_with_token("/api/v1/queues", admin).await;
    assert_eq!(status, 200, "admin token: 200, got {status} {body}");

    g.cli(&["queue", "list"]).await.assert_failure();
    let out = g
        .cli_with_env(&["queue", "list", "--json"], &[("GANNET_API_TOKEN", admin)])
        .await;
    out.assert_success();
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(json_total(&v), Some(0), "{v}");
}
