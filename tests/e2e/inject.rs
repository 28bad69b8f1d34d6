//! HTTP injection of personalised batches (issue 16): `POST /api/v1/messages` renders one
//! message per recipient, hands each to the same intake as SMTP, answers per recipient only
//! after every accepted message is durable, and the sink receives exactly those messages.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::gannet::http_with_headers;
use crate::common::*;

const SINK_IP: &str = "127.0.0.61";

/// `[class.newsletter]` with the one-click unsubscribe headers, beside the harness's classes.
const NEWSLETTER: &str = "[class.newsletter]\npool = \"default\"\npriority = 0\nlist_unsubscribe = true\n\n[unsubscribe]\nbase_url = \"https://unsub.gannet.test\"\n";

async fn world(extra: &str) -> World {
    let extra = extra.to_string();
    World::start(
        &[SINK_IP],
        Zone::new().mail_domain("shop.test", SINK_IP),
        move |c| c.extra(NEWSLETTER).extra(&extra),
    )
    .await
}

fn batch(class: &str, recipients: Vec<Value>) -> Value {
    json!({
        "from": {"email": "news@brand.test", "name": "Brand Néws"},
        "subject": "{{ first_name }}, your picks",
        "text": "Hello {{ first_name }}!\n{% for p in products %}* {{ p.name }} {{ p.price }}\n{% endfor %}",
        "html": "<h1>Hello {{ first_name }}</h1><ul>{% for p in products %}<li>{{ p.name }}</li>{% endfor %}</ul>",
        "headers": {"X-Campaign-Ref": "{{ ref }}"},
        "class": class,
        "tenant": "acme",
        "campaign": "spring",
        "variant": "B",
        "substitutions": {"ref": "r-1"},
        "recipients": recipients,
    })
}

fn person(i: usize) -> Value {
    json!({
        "email": format!("user{i}@shop.test"),
        "name": format!("User Nümber {i}"),
        "substitutions": {
            "first_name": format!("First{i}"),
            "products": (0..4).map(|k| json!({"name": format!("P{i}-{k} <b>"), "price": k * 10})).collect::<Vec<_>>(),
        },
        "metadata": {"crm_id": i},
    })
}

async fn post(g: &Gannet, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, text) = http_with_headers(
        g.http_addr(),
        "POST",
        "/api/v1/messages",
        Some(body),
        headers,
    )
    .await
    .unwrap_or_else(|e| panic!("POST /api/v1/messages: {e}\n{}", g.log()));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {status} {text}"));
    (status, v)
}

/// Each recipient gets its own rendered message (text and HTML, values escaped in HTML), the
/// answer lists queue ids and Message-IDs in request order, bad recipients are refused with a
/// reason naming the problem, and promotional (list_unsubscribe) mail carries RFC 8058 headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_renders_each_recipient_and_refuses_bad_ones_individually() {
    let w = world("").await;
    let mut rcpts: Vec<Value> = (0..40).map(person).collect();
    rcpts.push(json!({"email": "nofirst@shop.test", "substitutions": {"products": []}}));
    rcpts.push(json!({"email": "bad address@shop.test", "substitutions": {"first_name": "x", "products": []}}));
    rcpts.push(json!({"email": "crlf@shop.test", "name": "Eve\r\nBcc: evil@shop.test", "substitutions": {"first_name": "x", "products": []}}));
    rcpts.push(json!({"email": "subj@shop.test", "substitutions": {"first_name": "x\r\nBcc: evil@shop.test", "products": []}}));
    let (status, v) = post(&w.gannet, &batch("newsletter", rcpts).to_string(), &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 40, "{v}");
    assert_eq!(v["rejected"], 4, "{v}");
    let results = v["results"].as_array().unwrap();
    for (i, r) in results.iter().take(40).enumerate() {
        assert_eq!(r["email"], format!("user{i}@shop.test"));
        assert_eq!(r["status"], "queued", "{r}");
        assert!(r["queue_id"].as_str().is_some_and(|q| !q.is_empty()), "{r}");
        assert!(
            r["message_id"].as_str().unwrap().ends_with("@gannet.test"),
            "{r}"
        );
    }
    let codes: Vec<&str> = results[40..]
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "undefined_variable",
            "invalid_address",
            "invalid_name",
            "header_unsafe"
        ]
    );
    assert!(
        results[40]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first_name"),
        "{}",
        results[40]
    );

    let got = w.sinks[0].wait_for(40, WAIT).await;
    assert_eq!(got.len(), 40);
    let mut seen = std::collections::BTreeSet::new();
    for t in &got {
        assert_eq!(t.rcpts.len(), 1, "one recipient per message");
        let rcpt = &t.rcpts[0];
        assert!(seen.insert(rcpt.clone()), "{rcpt} delivered twice");
        let i: usize = rcpt
            .trim_start_matches("user")
            .trim_end_matches("@shop.test")
            .parse()
            .unwrap_or_else(|_| panic!("unexpected recipient {rcpt}"));
        let p = mail_parser::MessageParser::new().parse(&t.data).unwrap();
        assert_eq!(p.subject(), Some(format!("First{i}, your picks").as_str()));
        let text = p.body_text(0).unwrap();
        assert!(text.contains(&format!("Hello First{i}!")), "{text}");
        assert!(text.contains(&format!("* P{i}-3 <b> 30")), "{text}");
        let html = p.body_html(0).unwrap();
        assert!(
            html.contains(&format!("<li>P{i}-0 &lt;b&gt;</li>")),
            "{html}"
        );
        let to = p.to().unwrap().first().unwrap();
        assert_eq!(to.name(), Some(format!("User Nümber {i}").as_str()));
        assert_eq!(t.header("X-Campaign-Ref").as_deref(), Some("r-1"));
        assert!(t.headers("bcc").is_empty() && t.headers("x-gannet-variant").is_empty());
        let lu = t.header("List-Unsubscribe").expect("List-Unsubscribe");
        assert!(lu.starts_with("<https://unsub.gannet.test/u/"), "{lu}");
        assert!(
            lu.contains("<mailto:unsub-") && lu.contains("@gannet.test>"),
            "{lu}"
        );
        assert!(
            !lu.contains("user"),
            "the token must not carry a readable address: {lu}"
        );
        assert_eq!(
            t.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert_eq!(
            t.header("Feedback-ID").as_deref(),
            Some("spring:acme:newsletter:gannet.test")
        );
    }
    assert!(
        !w.sinks[0]
            .delivered_rcpts()
            .iter()
            .any(|r| r.contains("evil"))
    );
}

/// Transactional mail (no list_unsubscribe) gets no one-click headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batches_get_no_one_click_headers() {
    let w = world("").await;
    let (status, v) = post(
        &w.gannet,
        &batch("transactional", vec![person(1)]).to_string(),
        &[],
    )
    .await;
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    let got = w.sinks[0].wait_for(1, WAIT).await;
    assert!(
        got[0].header("List-Unsubscribe").is_none(),
        "{}",
        got[0].text()
    );
    assert!(got[0].header("Feedback-ID").is_none());
}

/// Whole-request errors: template syntax → 400 naming the template and line; more recipients
/// than `[inject] max_recipients` → 413 stating the limit; malformed JSON → 400 naming the
/// field; unknown class → 400. Nothing is queued for a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_whole_with_the_field_named() {
    let w = world("[inject]\nmax_recipients = 5\n").await;
    let g = &w.gannet;

    let mut b = batch("newsletter", vec![person(1)]);
    b["html"] = json!("<p>ok</p>\n<p>{{ first_name }</p>");
    let (s, v) = post(g, &b.to_string(), &[]).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "html", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 2"),
        "{v}"
    );

    let (s, v) = post(
        g,
        &batch("newsletter", (0..6).map(person).collect()).to_string(),
        &[],
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["field"], "recipients");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 5"),
        "{v}"
    );

    let mut b = batch("newsletter", vec![person(1)]);
    b["recipients"][0]["email"] = json!(42);
    let (s, v) = post(g, &b.to_string(), &[]).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "recipients[0].email", "{v}");

    let (s, v) = post(g, "{\"from\": \"a@b.test\", \"recipients\": [", &[]).await;
    assert_eq!(s, 400, "{v}");
    let mut b = batch("newsletter", vec![person(1)]);
    b.as_object_mut().unwrap().remove("from");
    let (s, v) = post(g, &b.to_string(), &[]).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("from")),
        "{v}"
    );

    let (s, v) = post(g, &batch("nosuch", vec![person(1)]).to_string(), &[]).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("class")),
        "{v}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.sinks[0].transactions().len(),
        0,
        "nothing is sent for a refused request"
    );
}

/// 401 without a token, 403 with a token that lacks the `inject` scope, 200 with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_are_enforced() {
    use sha2::Digest;
    let hash = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let (inject_hash, admin_hash) = (hash("inject-secret"), hash("admin-secret"));
    let tokens = format!(
        "[[api_token]]\nname = \"campaigns\"\nhash = \"{inject_hash}\"\nscopes = [\"inject\"]\n\n[[api_token]]\nname = \"ops\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n"
    );
    let w = world(&tokens).await;
    let body = batch("newsletter", vec![person(1)]).to_string();
    let (s, v) = post(&w.gannet, &body, &[]).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = post(
        &w.gannet,
        &body,
        &[("Authorization", "Bearer admin-secret")],
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = post(
        &w.gannet,
        &body,
        &[("Authorization", "Bearer inject-secret")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// [`post`] through curl with a generous time limit, for large batches: the harness client
/// gives up after 10 s, which a 10,000-recipient request on a loaded 2-core CI machine can
/// take.
/// The newsletter batch of `n` people, posted; asserts every recipient was accepted.
async fn post_newsletter(g: &Gannet, n: usize) -> Value {
    let (s, v) = post_large(
        g,
        batch("newsletter", (0..n).map(person).collect()).to_string(),
        &[],
    )
    .await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (200, Some(n as u64)),
        "{}",
        v["results"][0]
    );
    v
}

async fn post_large(g: &Gannet, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "--max-time",
        "300",
        "-X",
        "POST",
        "--data-binary",
        "@-",
    ])
    .args(["-H", "Content-Type: application/json"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg(format!("http://{}/api/v1/messages", g.http_addr()));
    let (status, _, text) = tokio::task::spawn_blocking(move || run_curl(cmd, &body))
        .await
        .expect("curl task");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {status} {text}\n{}", g.log()));
    (status, v)
}

/// The `Message-ID` header values (with angle brackets) of every queued recipient of an answer.
fn answered_ids(v: &Value) -> std::collections::BTreeSet<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "queued")
        .map(|r| format!("<{}>", r["message_id"].as_str().unwrap()))
        .collect()
}

/// Recipients of the accepted transactions at a sink, each with how often it arrived.
fn arrivals(sink: &Sink) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for t in sink.messages() {
        for r in &t.rcpts {
            *m.entry(r.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Issue 16, Idempotency-Key: the same request retried with its key gets the first answer and
/// queues nothing, also after kill -9 and a restart (the key is durable before the first
/// answer goes out); the same key with another body is 422. The sink defers until the end so
/// the only copies it accepts are those Gannet queued: one per recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_with_its_idempotency_key_sends_nothing_twice_across_a_restart() {
    let mut w = world("").await;
    w.sinks[0].add_rule(Rule::new(Stage::Data, "451 4.7.1 try later"));
    let body = batch("newsletter", (0..5).map(person).collect()).to_string();
    let key = [("Idempotency-Key", "batch-2026-12-04-a")];
    let (s1, first) = post(&w.gannet, &body, &key).await;
    assert_eq!((s1, first["accepted"].as_u64()), (200, Some(5)), "{first}");
    let (s2, again) = post(&w.gannet, &body, &key).await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(again, first, "a retry gets the first answer, byte for byte");

    w.gannet.kill9().await;
    w.sinks[0].clear_rules();
    w.gannet.restart().await;
    let (s3, after) = post(&w.gannet, &body, &key).await;
    assert_eq!(s3, 200, "{after}");
    assert_eq!(after, first, "the key survives kill -9 and a restart");

    let mut other = batch("newsletter", (0..5).map(person).collect());
    other["campaign"] = json!("summer");
    let (s4, v) = post(&w.gannet, &other.to_string(), &key).await;
    assert_eq!(s4, 422, "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_reused", "{v}");
    assert_eq!(v["error"]["field"], "Idempotency-Key", "{v}");

    // A fresh key is a fresh batch: it is sent (proves the replays above were not refusals).
    let (s5, fresh) = post(&w.gannet, &body, &[("Idempotency-Key", "batch-b")]).await;
    assert_eq!((s5, fresh["accepted"].as_u64()), (200, Some(5)), "{fresh}");
    let mut want = answered_ids(&first);
    want.extend(answered_ids(&fresh));
    assert_eq!(want.len(), 10);
    w.sinks[0]
        .wait_until(WAIT, |ts| distinct_message_ids(ts).is_superset(&want))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = w.gannet.queue_drained(WAIT).await;
    assert_eq!(q.queued_recipients, 0, "{:?}", q.raw);
    let got = distinct_message_ids(&w.sinks[0].transactions());
    assert_eq!(got, want, "exactly the two batches' messages arrive");
    let per = arrivals(&w.sinks[0]);
    assert!(
        per.values().all(|n| *n == 2),
        "each recipient exactly once per batch: {per:?}"
    );
}

/// Issue 16, Idempotency-Key: two identical requests with one key at the same time never both
/// send; the loser is told `409` (still in progress) or gets the winner's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_with_one_key_send_once() {
    let w = world("").await;
    let n = 1500;
    let body = batch("transactional", (0..n).map(person).collect()).to_string();
    let key = [("Idempotency-Key", "concurrent-1")];
    let (a, b) = tokio::join!(
        post_large(&w.gannet, body.clone(), &key),
        post_large(&w.gannet, body.clone(), &key)
    );
    let statuses = (a.0, b.0);
    eprintln!("concurrent duplicates answered {statuses:?}");
    let winner = match statuses {
        (200, 409) => &a.1,
        (409, 200) => &b.1,
        (200, 200) => {
            assert_eq!(a.1, b.1, "both 200: the second must be the first's answer");
            &a.1
        }
        _ => panic!("unexpected statuses {statuses:?}: {} / {}", a.1, b.1),
    };
    for (s, v) in [&a, &b] {
        if *s == 409 {
            assert_eq!(v["error"]["code"], "idempotency_key_in_progress", "{v}");
        }
    }
    assert_eq!(winner["accepted"].as_u64(), Some(n as u64), "{winner}");
    let want = answered_ids(winner);
    w.sinks[0]
        .wait_until(WAIT * 2, |ts| distinct_message_ids(ts).is_superset(&want))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = w.gannet.queue_drained(WAIT).await;
    assert_eq!(q.queued_recipients, 0, "{:?}", q.raw);
    assert_eq!(
        w.sinks[0].messages().len(),
        n,
        "one copy per recipient (statuses {statuses:?})"
    );
}

/// Issue 16: the answer is sent only when every accepted message is durable, so kill -9 right
/// after it loses nothing: after the restart every queued recipient is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_the_answer_loses_no_accepted_recipient() {
    let mut w = world("").await;
    // Nothing leaves before the kill: every message must come from the spool after restart.
    w.sinks[0].add_rule(Rule::new(Stage::Mail, "421 4.7.0 not now"));
    let body = batch("newsletter", (0..300).map(person).collect()).to_string();
    let (s, v) = post_large(&w.gannet, body, &[]).await;
    w.gannet.kill9().await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(300)), "{v}");
    let want = answered_ids(&v);
    assert_eq!(want.len(), 300);

    w.sinks[0].clear_rules();
    w.gannet.restart().await;
    w.sinks[0]
        .wait_until(WAIT * 2, |ts| distinct_message_ids(ts).is_superset(&want))
        .await
        .unwrap_or_else(|e| {
            let got = distinct_message_ids(&w.sinks[0].transactions());
            panic!(
                "{} of 300 accepted recipients never arrived\n{e}",
                want.difference(&got).count()
            )
        });
}

/// `curl -i` a POST of `body` to `path` with `headers`: (status, response header block, body).
fn curl(g: &Gannet, path: &str, body: &str, headers: &[&str]) -> (u16, String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-i", "-X", "POST", "--data-binary", "@-"])
        .args(["-H", "Content-Type: application/json"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{}{path}", g.http_addr()));
    run_curl(cmd, body)
}

/// Runs a prepared curl command with `body` on stdin and splits its `-i` output.
fn run_curl(mut cmd: std::process::Command, body: &str) -> (u16, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run curl (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Interim answers (`100 Continue` to a large body) come first, each with its blank line.
    let mut rest = text.as_str();
    let (head, body) = loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or_else(|| {
            panic!(
                "curl: no response: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if head.starts_with("HTTP/1.1 1") {
            rest = body;
            continue;
        }
        break (head, body);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("curl: bad status line in {head}"));
    (status, head.to_string(), body.to_string())
}

/// Issue 16 item 5: a token over its `rate` gets 429 with `Retry-After` (another token is not
/// slowed by it), and a token's `allowed_classes` / `allowed_from_domains` hold for HTTP
/// injection as for SMTP: each recipient outside them is refused 5.7.1, nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_and_its_allowed_classes_and_domains_hold() {
    use sha2::Digest;
    let hash = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let tokens = format!(
        "[[api_token]]\nname = \"slow\"\nhash = \"{}\"\nscopes = [\"inject\"]\nrate = \"2/m\"\n\n\
         [[api_token]]\nname = \"brand\"\nhash = \"{}\"\nscopes = [\"inject\"]\n\
         allowed_classes = [\"newsletter\"]\nallowed_from_domains = [\"brand.test\"]\n",
        hash("slow-secret"),
        hash("brand-secret")
    );
    let w = world(&tokens).await;
    let body = batch("newsletter", vec![person(1)]).to_string();
    let slow = "Authorization: Bearer slow-secret";
    for _ in 0..2 {
        let (s, _, b) = curl(&w.gannet, "/api/v1/messages", &body, &[slow]);
        assert_eq!(s, 200, "{b}");
    }
    let (s, head, b) = curl(&w.gannet, "/api/v1/messages", &body, &[slow]);
    assert_eq!(s, 429, "{head}\n{b}");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"));
    assert!((1..=30).contains(&retry), "{head}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");

    let brand = "Authorization: Bearer brand-secret";
    let (s, _, b) = curl(&w.gannet, "/api/v1/messages", &body, &[brand]);
    assert_eq!(s, 200, "another token is not limited by slow's rate: {b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
    let (_, _, b) = curl(
        &w.gannet,
        "/api/v1/messages",
        &batch("transactional", vec![person(2)]).to_string(),
        &[brand],
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["results"][0]["error"]["code"], "smtp_5_7_1", "{v}");
    assert!(
        v["results"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("transactional"),
        "{v}"
    );
    let mut other_from = batch("newsletter", vec![person(3)]);
    other_from["from"] = json!("news@elsewhere.test");
    let (_, _, b) = curl(
        &w.gannet,
        "/api/v1/messages",
        &other_from.to_string(),
        &[brand],
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["results"][0]["error"]["code"], "smtp_5_7_1", "{v}");
    assert!(
        v["results"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere.test"),
        "{v}"
    );
    // Two from slow, one from brand: person 1 three times, nothing for persons 2 and 3.
    w.sinks[0].wait_for(3, WAIT).await;
    let per = arrivals(&w.sinks[0]);
    assert_eq!(
        per.keys().collect::<Vec<_>>(),
        ["user1@shop.test"],
        "{per:?}"
    );
}

/// Issue 16 Show: one request with 10,000 recipients → 10,000 distinct messages at the sink,
/// each with its own rendered data in text and HTML, one-click headers (promotional class),
/// DKIM-signed: every message carries a signature for brand.test and dkimpy verifies a random
/// sample of 400 of them (all 10,000 would take minutes of Python); recipient 10,001 over the
/// default limit of 10,000 → 413 stating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_recipients_become_ten_thousand_signed_personal_messages() {
    use crate::dkim::{KeyType, dkimpy_verify, fixture, fixture_path, public_record};
    use rand::seq::SliceRandom;
    let record = public_record(&fixture_path("rsa2048.pem"), KeyType::Rsa).await;
    let w = World::start(
        &[SINK_IP],
        Zone::new()
            .mail_domain("shop.test", SINK_IP)
            .txt("s1._domainkey.brand.test", &record),
        |c| {
            c.file("brand.pem", fixture("rsa2048.pem")).extra(NEWSLETTER).extra(
                "[[dkim]]\ndomain = \"brand.test\"\nselector = \"s1\"\nalgorithm = \"rsa-sha256\"\nkey = \"${DIR}/brand.pem\"\n",
            )
        },
    )
    .await;
    const N: usize = 10_000;
    let (s, v) = post_large(
        &w.gannet,
        batch("newsletter", (0..=N).map(person).collect()).to_string(),
        &[],
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 10000"),
        "{v}"
    );
    assert_eq!(v["error"]["field"], "recipients", "{v}");

    let v = post_newsletter(&w.gannet, N).await;
    let want = answered_ids(&v);
    assert_eq!(want.len(), N, "10,000 distinct Message-IDs");
    w.sinks[0]
        .wait_until(Duration::from_secs(300), |ts| {
            ts.iter().filter(|t| t.accepted).count() >= N
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = w.sinks[0].messages();
    assert_eq!(distinct_message_ids(&got), want);
    let mut seen = std::collections::BTreeSet::new();
    for t in &got {
        let rcpt = &t.rcpts[0];
        assert!(seen.insert(rcpt.clone()), "{rcpt} twice");
        let i: usize = rcpt
            .trim_start_matches("user")
            .trim_end_matches("@shop.test")
            .parse()
            .unwrap_or_else(|_| panic!("unexpected recipient {rcpt}"));
        let p = mail_parser::MessageParser::new().parse(&t.data).unwrap();
        assert_eq!(p.subject(), Some(format!("First{i}, your picks").as_str()));
        let text = p.body_text(0).unwrap();
        assert!(
            text.contains(&format!("Hello First{i}!"))
                && text.contains(&format!("* P{i}-3 <b> 30")),
            "{rcpt}: {text}"
        );
        let html = p.body_html(0).unwrap();
        assert!(
            html.contains(&format!("<li>P{i}-2 &lt;b&gt;</li>")),
            "{rcpt}: {html}"
        );
        assert!(t.header("List-Unsubscribe").is_some(), "{rcpt}");
        assert_eq!(
            t.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let sig = t
            .header("DKIM-Signature")
            .unwrap_or_else(|| panic!("{rcpt} unsigned"));
        let h = sig.to_ascii_lowercase();
        assert!(h.contains("d=brand.test"), "{sig}");
        for signed in ["list-unsubscribe", "list-unsubscribe-post", "feedback-id"] {
            assert!(h.contains(signed), "{signed} must be signed: {sig}");
        }
    }
    assert_eq!(seen.len(), N);

    let mut sample: Vec<&Transaction> = got.iter().collect();
    sample.shuffle(&mut rand::thread_rng());
    let sample: Vec<(String, Vec<u8>)> = sample
        .into_iter()
        .take(400)
        .map(|t| (t.rcpts[0].clone(), t.data.clone()))
        .collect();
    let checked = dkimpy_verify(&w.dns, &sample).await;
    let bad: Vec<String> = sample
        .iter()
        .zip(&checked)
        .filter(|(_, sigs)| sigs.len() != 1 || !sigs[0].ok || sigs[0].d != "brand.test")
        .map(|((r, _), sigs)| format!("{r}: {sigs:?}"))
        .collect();
    assert!(bad.is_empty(), "{} of 400 fail dkimpy: {bad:?}", bad.len());
}

/// Issue 16 Speed (peak RSS): a batch is a bounded pipeline. The body is checked whole before
/// anything is queued, but each recipient is parsed only when its message is rendered and is
/// let go once intake has answered for it, so the recipients held parsed at once
/// (`gannet_inject_held_recipients_peak`) stay near `[inject] concurrency` (8 here: at most
/// 8 waiting for intake, 8 in intake, one per render thread), not the batch's 3,000; none is
/// held after the answer, and every recipient is still answered and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_holds_only_a_bounded_number_of_recipients_at_once() {
    const N: usize = 3_000;
    let w = world("[inject]\nconcurrency = 8\n").await;
    let v = post_newsletter(&w.gannet, N).await;
    assert_eq!(answered_ids(&v).len(), N);
    assert_eq!(
        v["results"][N - 1]["email"],
        format!("user{}@shop.test", N - 1)
    );
    let peak = w
        .gannet
        .metric("gannet_inject_held_recipients_peak", &[])
        .await;
    assert!(
        (1.0..=8.0 + 8.0 + 4.0).contains(&peak),
        "{peak} recipients held parsed at once with concurrency 8 (all {N} would mean the batch is held whole)"
    );
    assert_eq!(
        w.gannet.metric("gannet_inject_held_recipients", &[]).await,
        0.0
    );
    w.sinks[0]
        .wait_until(Duration::from_secs(300), |ts| {
            ts.iter().filter(|t| t.accepted).count() >= N
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 16 Show, header injection: through the recipient's `name`, subject data and custom
/// header values (`\r\n`, `\n`, `\r`, NUL, DEL, NEL, encoded-words whole or split over two
/// values, Unicode line separators) and through a raw `content` template. Each attempt is
/// refused for its recipient or encoded; at the sink no message has an extra header field and
/// no extra recipient appears. A header *name* with a line break refuses the whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_through_names_subjects_and_custom_headers_adds_nothing() {
    let w = world("").await;
    let attacks: &[(&str, &str)] = &[
        ("crlf", "x\r\nBcc: evil@shop.test"),
        ("lf", "x\nBcc: evil@shop.test"),
        ("cr", "x\rBcc: evil@shop.test"),
        ("nul", "x\0Bcc: evil@shop.test"),
        ("del", "x\u{7f}y"),
        ("nel", "x\u{85}Bcc: evil@shop.test"),
        ("ew", "=?utf-8?q?x=0D=0ABcc:_evil@shop.test?="),
        ("ewb", "=?UTF-8?B?eA0KQmNjOiBldmlsQHNob3AudGVzdA==?="),
        ("crlf-fold", "x\r\n Bcc: evil@shop.test"),
    ];
    // Where the value goes: the recipient's name, the subject's data, a custom header's data.
    let mut rcpts = Vec::new();
    let mut expect_refused = Vec::new();
    for (tag, value) in attacks {
        for place in ["name", "subject", "header"] {
            let email = format!("{place}-{tag}@shop.test");
            let mut subs = json!({"first_name": "Ann", "products": [], "ref": "r-1"});
            let mut r = json!({"email": email});
            match place {
                "name" => r["name"] = json!(value),
                "subject" => subs["first_name"] = json!(value),
                _ => subs["ref"] = json!(value),
            }
            r["substitutions"] = subs;
            rcpts.push(r);
            expect_refused.push(email);
        }
    }
    // Harmless look-alikes are delivered, encoded: a Unicode line separator, a tab, and an
    // encoded-word split over two values (the whole subject is checked, so it is refused).
    rcpts.push(json!({"email": "ls@shop.test", "name": "Ann\u{2028}Bcc: evil@shop.test",
        "substitutions": {"first_name": "Ann\u{2029}Bcc: evil@shop.test", "products": [], "ref": "r\u{2028}x"}}));
    rcpts.push(json!({"email": "tab@shop.test", "name": "Ann\tLee",
        "substitutions": {"first_name": "Ann\tLee", "products": [], "ref": "r\t1"}}));
    let mut b = batch("newsletter", rcpts);
    b["subject"] = json!("{{ first_name }}{{ tail | default('') }}, your picks");
    b["recipients"]
        .as_array_mut()
        .unwrap()
        .push(json!({"email": "split@shop.test", "substitutions": {
            "first_name": "=?utf-8?q?", "tail": "x=0D=0ABcc:_evil@shop.test?=", "products": [], "ref": "r"}}));
    expect_refused.push("split@shop.test".to_string());
    let (s, v) = post(&w.gannet, &b.to_string(), &[]).await;
    assert_eq!(s, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        let email = r["email"].as_str().unwrap();
        if expect_refused.iter().any(|e| e == email) {
            assert_eq!(r["status"], "rejected", "{email} must be refused: {r}");
            let code = r["error"]["code"].as_str().unwrap();
            assert!(
                code == "header_unsafe" || code == "invalid_name",
                "{email}: {r}"
            );
        } else {
            assert_eq!(r["status"], "queued", "{email}: {r}");
        }
    }
    assert_eq!(v["accepted"], 2, "{v}");

    // A raw RFC 5322 template: values in its header part are checked the same way.
    let raw = json!({
        "from": "news@brand.test",
        "content": "From: news@brand.test\nTo: {{ email }}\nSubject: Hi {{ first_name }}\n\nHello {{ first_name }}\n",
        "class": "newsletter",
        "recipients": [
            {"email": "raw-ok@shop.test", "substitutions": {"first_name": "Ann"}},
            {"email": "raw-lf@shop.test", "substitutions": {"first_name": "x\nBcc: evil@shop.test"}},
            {"email": "raw-cr@shop.test", "substitutions": {"first_name": "x\rBcc: evil@shop.test"}},
            {"email": "raw-ew@shop.test", "substitutions": {"first_name": "=?utf-8?q?=0ABcc:_evil@shop.test?="}},
        ],
    });
    let (s, v) = post(&w.gannet, &raw.to_string(), &[]).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");

    // A header name with a line break: the whole request is refused, naming the field.
    let mut b = batch("newsletter", vec![person(1)]);
    b["headers"] = json!({"X-A\r\nBcc": "evil@shop.test"});
    let (s, v) = post(&w.gannet, &b.to_string(), &[]).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("headers."),
        "{v}"
    );

    let got = w.sinks[0].wait_for(3, WAIT).await;
    let allowed = [
        "received",
        "from",
        "to",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "x-campaign-ref",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
    ];
    let mut rcpts: Vec<String> = Vec::new();
    for t in &got {
        rcpts.extend(t.rcpts.iter().cloned());
        let p = mail_parser::MessageParser::new().parse(&t.data).unwrap();
        let names: Vec<String> = p
            .headers()
            .iter()
            .map(|h| h.name().to_ascii_lowercase())
            .collect();
        for n in &names {
            assert!(
                allowed.contains(&n.as_str()),
                "unexpected header {n:?} in\n{}",
                t.text()
            );
        }
        for once in ["from", "to", "subject"] {
            assert_eq!(
                names.iter().filter(|n| *n == once).count(),
                1,
                "{once} once in\n{}",
                t.text()
            );
        }
        let to: Vec<String> = p
            .to()
            .unwrap()
            .iter()
            .filter_map(|a| a.address().map(str::to_string))
            .collect();
        assert_eq!(to, t.rcpts, "{}", t.text());
    }
    rcpts.sort();
    assert_eq!(rcpts, ["ls@shop.test", "raw-ok@shop.test", "tab@shop.test"]);
    let ls = got.iter().find(|t| t.rcpts[0] == "ls@shop.test").unwrap();
    let p = mail_parser::MessageParser::new().parse(&ls.data).unwrap();
    assert_eq!(
        p.subject(),
        Some("Ann\u{2029}Bcc: evil@shop.test, your picks"),
        "the separator is kept inside the encoded subject"
    );
}

/// Issue 16 item 5: `[http] tls_cert` / `tls_key` (the same PEM files as SMTP listeners) put
/// the API on HTTPS: curl with `--cacert` injects a batch that is delivered; plain HTTP on the
/// port and a client that does not trust the certificate get no answer from the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_speaks_https_with_the_configured_certificate() {
    let w = World::start(
        &[SINK_IP],
        Zone::new().mail_domain("shop.test", SINK_IP),
        |c| {
            c.extra(NEWSLETTER)
                .http_option("tls_cert = \"${CERT}\"")
                .http_option("tls_key = \"${KEY}\"")
        },
    )
    .await;
    let port = w.gannet.http_addr().port();
    let ca = w.gannet.dir().join("cert.pem");
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let curl_tls = |extra: &[&str], path: &str| {
        let mut c = std::process::Command::new("curl");
        c.args(["--cacert", ca.to_str().unwrap()])
            .args(extra)
            .arg(url(path));
        c
    };
    // Wait for the TLS side (the harness only saw the port open).
    let health = poll(WAIT, || {
        let out = curl_tls(&["-sS"], "/health").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .expect("GET /health over https");
    assert!(health.contains("\"ok\""), "{health}");

    let mut cmd = curl_tls(
        &[
            "-sS",
            "-i",
            "-X",
            "POST",
            "--data-binary",
            "@-",
            "-H",
            "Content-Type: application/json",
        ],
        "/api/v1/messages",
    );
    cmd.arg("--fail-with-body");
    let (status, _, body) = run_curl(cmd, &batch("newsletter", vec![person(7)]).to_string());
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
    let got = w.sinks[0].wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["user7@shop.test"]);

    // Not trusted: curl refuses the certificate (exit 60); plain HTTP gets no HTTP answer.
    let out = std::process::Command::new("curl")
        .args(["-sS", &url("/health")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/health"),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plain HTTP must not be answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Issue 16 item 7: `gannet inject FILE.json` posts the batch to the configured HTTP listener
/// and prints a table (email, status, queue id, Message-ID or error); `--json` prints the
/// answer; `--idempotency-key` makes a rerun answer the same without sending; a refused
/// recipient makes the exit status 1 and shows its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gannet_inject_posts_a_file_and_prints_a_table_or_json() {
    let w = world("").await;
    let g = &w.gannet;
    let file = g.dir().join("batch.json");
    std::fs::write(
        &file,
        batch("newsletter", vec![person(1), person(2)]).to_string(),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let out = g.cli(&["inject", f, "--idempotency-key", "cli-1"]).await;
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("EMAIL")
            && lines[0].contains("STATUS")
            && lines[0].contains("QUEUE ID"),
        "{}",
        out.stdout
    );
    for (i, email) in ["user1@shop.test", "user2@shop.test"].iter().enumerate() {
        let cols: Vec<&str> = lines[i + 1].split_whitespace().collect();
        assert_eq!(cols[0], *email, "{}", out.stdout);
        assert_eq!(cols[1], "queued", "{}", out.stdout);
        assert!(cols[3].ends_with("@gannet.test"), "{}", out.stdout);
    }
    assert!(out.stdout.contains("2 queued, 0 refused"), "{}", out.stdout);

    let again = g
        .cli(&["inject", f, "--idempotency-key", "cli-1", "--json"])
        .await;
    again.assert_success();
    let v: Value =
        serde_json::from_str(again.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {again}"));
    assert_eq!(v["accepted"], 2, "{v}");
    let first_qid = lines[1].split_whitespace().nth(2).unwrap();
    assert_eq!(
        v["results"][0]["queue_id"], first_qid,
        "the replay is the first answer"
    );

    let mut bad = batch("newsletter", vec![person(3)]);
    bad["recipients"]
        .as_array_mut()
        .unwrap()
        .push(json!({"email": "nofirst@shop.test", "substitutions": {"products": []}}));
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = g.cli(&["inject", f]).await;
    out.assert_failure();
    assert!(
        out.stdout.contains("nofirst@shop.test") && out.stdout.contains("undefined_variable"),
        "{out}"
    );
    assert!(
        out.stderr.contains("1 of 2 recipients were refused"),
        "{out}"
    );

    // A whole-request error names the field; nothing is printed as a table.
    std::fs::write(&file, "{\"from\": 1}").unwrap();
    let out = g.cli(&["inject", f]).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("HTTP 400") && out.stderr.contains("field from"),
        "{out}"
    );

    // user1, user2 once each (the rerun sent nothing), then user3.
    w.sinks[0].wait_for(3, WAIT).await;
    let per = arrivals(&w.sinks[0]);
    assert_eq!(
        per.into_iter().collect::<Vec<_>>(),
        [
            ("user1@shop.test".to_string(), 1),
            ("user2@shop.test".to_string(), 1),
            ("user3@shop.test".to_string(), 1)
        ]
    );
}

/// Issue 16 item 6: `GET /api/v1/openapi.json` is an OpenAPI 3.1 document generated from the
/// handlers; every operation it lists is routed (none reaches the "no such endpoint" fallback
/// or a 405), and schemathesis (PyPI; scripts/test installs it) fuzzes every operation of a
/// live Gannet: no 5xx, no answer that breaks the schema or its content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_the_api_and_schemathesis_finds_no_violation() {
    let w = world("").await;
    let g = &w.gannet;
    let (s, text) = g.http_get("/api/v1/openapi.json").await;
    assert_eq!(s, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/messages",
        "/api/v1/queues",
        "/api/v1/events",
        "/api/v1/suppressions",
        "/api/v1/suppressions/{address}",
        "/api/v1/bounces/classify",
        "/api/v1/erasures",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert!(
        doc["components"]["schemas"]["BatchRequest"]["properties"]["recipients"].is_object(),
        "the injection body is described from its type"
    );
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let uri = path
                .replace("{domain}", "example.test")
                .replace("{id}", "x")
                .replace("{campaign}", "c")
                .replace("{address}", "a@b.test");
            let body = (method != "get").then_some("{}");
            let (status, answer) =
                http_with_headers(g.http_addr(), &method.to_uppercase(), &uri, body, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
            assert!(
                status != 405 && !answer.contains("no such endpoint"),
                "{method} {path} is documented but not routed: {status} {answer}"
            );
        }
    }
    let url = format!("http://{}/api/v1/openapi.json", g.http_addr());
    let mut cmd = tokio::process::Command::new("schemathesis");
    cmd.args(["run", &url, "--checks"])
        .arg("not_a_server_error,response_schema_conformance,content_type_conformance")
        .args(["-n", "15", "--seed", "16", "--workers", "2", "--no-color"])
        .current_dir(g.dir());
    let out = crate::common::tools::run(cmd, None, Duration::from_secs(600)).await;
    assert!(
        out.success(),
        "schemathesis found problems:\n{}\n{}",
        out.stdout,
        g.log()
            .chars()
            .rev()
            .take(5000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
}
