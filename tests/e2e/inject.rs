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
