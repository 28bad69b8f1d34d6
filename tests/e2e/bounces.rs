//! Bounces, complaints and suppression (issue 17): `gannet bounce classify` on replies and on
//! the returned mails of `tests/fixtures/bounces/`, and `POST /api/v1/bounces/classify`.

use std::process::Command;

use serde_json::Value;

use crate::common::gannet::GANNET_BIN;
use crate::common::{Rule, SmtpClient, Stage, WAIT, World, Zone};

fn gannet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(GANNET_BIN)
        .args(args)
        .output()
        .expect("run gannet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 17 item 6: `--reply "..." [--mx HOST]` → category, hard/soft and the rule's file:line.
#[test]
fn classify_reply_names_category_hardness_and_rule() {
    let (ok, out, err) = gannet(&[
        "bounce",
        "classify",
        "--reply",
        "550-5.1.1 The email account that you tried to reach does not exist.",
        "--mx",
        "gmail-smtp-in.l.google.com",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("category: bad-mailbox"), "{out}");
    assert!(out.contains("hard:     yes"), "{out}");
    assert!(out.contains("provider: google"), "{out}");
    let rule = out
        .lines()
        .find_map(|l| l.strip_prefix("rule:"))
        .expect("rule line")
        .trim();
    let (file, line) = rule.rsplit_once(':').expect("file:line");
    assert_eq!(file, "built-in config/bounce_rules.toml");
    let line: usize = line.parse().expect("line number");
    let rules = include_str!("../../config/bounce_rules.toml");
    assert_eq!(rules.lines().nth(line - 1), Some("[[rule]]"));
    assert_eq!(rules.lines().nth(line), Some("provider = \"google\""));

    // A Yahoo deferral is soft, JSON on request; --mx picks Yahoo's own rule.
    let (ok, out, err) = gannet(&[
        "bounce",
        "classify",
        "--json",
        "--reply",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
        "--mx",
        "mta5.am0.yahoodns.net",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["category"], "rate-limited");
    assert_eq!(v["hard"], false);
    assert_eq!(v["provider"], "yahoo");
}

/// A replaced rules file (`[bounce] rules_file`) is used, and a broken one is refused with the
/// file and line.
#[test]
fn classify_uses_the_configured_rules_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[categories]\nfunny = { hard = true }\n\n[[rule]]\ntext = \"banana\"\ncategory = \"funny\"\n",
    )
    .expect("write rules");
    let cfg = dir.path().join("gannet.toml");
    std::fs::write(
        &cfg,
        "[bounce]\nrules_file = \"rules.toml\"\n\n[[pool]]\nname = \"default\"\n\
         sources = [{ ip = \"127.0.0.1\", ehlo = \"h.test\" }]\n\n[class.promotional]\npool = \"default\"\n",
    )
    .expect("write config");
    let cfg = cfg.to_str().expect("utf-8 path");
    let (ok, out, err) = gannet(&[
        "bounce",
        "classify",
        "-c",
        cfg,
        "--reply",
        "550 banana split",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("category: funny"), "{out}");
    assert!(out.contains("rules.toml:4"), "{out}");

    std::fs::write(&rules, "[categories]\n[[rule]]\ncategory = \"nope\"\n").expect("write");
    let (ok, _, err) = gannet(&["bounce", "classify", "-c", cfg, "--reply", "550 x"]);
    assert!(!ok);
    assert!(err.contains("rules.toml, line 2"), "{err}");
    assert!(err.contains("\"nope\" is not defined"), "{err}");
}

fn bounce_fixtures() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bounces");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
}

/// Issue 17 item 6: `gannet bounce classify --json FILE ...` prints, for every fixture, the
/// JSON `POST /api/v1/bounces/classify` answers for the same bytes (one code path), in the
/// issue's shape; `-` reads stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_files_cli_and_api_answer_the_same_json() {
    let files = bounce_fixtures();
    assert!(files.len() >= 30, "{} fixtures", files.len());
    let mut args = vec!["bounce", "classify", "--json"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (ok, out, err) = gannet(&args);
    assert!(ok, "{err}");
    let cli: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(cli.len(), files.len(), "one JSON line per file:\n{out}");

    let w = World::start(&["127.0.0.82"], Zone::new(), |c| c).await;
    for (path, from_cli) in files.iter().zip(&cli) {
        let text = std::fs::read_to_string(path).expect("fixture is UTF-8");
        let (status, body) = w
            .gannet
            .http_post("/api/v1/bounces/classify", Some(&text))
            .await;
        assert_eq!(status, 200, "{}: {body}", path.display());
        let from_api: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(&from_api, from_cli, "{}", path.display());
        // The issue's shape.
        let kind = from_api["kind"].as_str().expect("kind");
        assert!(
            ["dsn", "arf", "auto-reply", "not-a-bounce"].contains(&kind),
            "{kind}"
        );
        assert!(from_api.get("feedback_type").is_some());
        assert!(from_api.get("original_message_id").is_some());
        for r in from_api["recipients"].as_array().expect("recipients") {
            for key in [
                "address",
                "status",
                "diagnostic",
                "category",
                "hard",
                "rule",
            ] {
                assert!(
                    r.get(key).is_some(),
                    "{}: {key} missing in {r}",
                    path.display()
                );
            }
        }
    }

    // stdin, and an empty body is a 400 naming the field.
    let first = std::fs::read(&files[0]).expect("read");
    let mut child = Command::new(GANNET_BIN)
        .args(["bounce", "classify", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&first)
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v, cli[0]);
    let (status, body) = w
        .gannet
        .http_post("/api/v1/bounces/classify", Some(""))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"body\""), "{body}");
}

/// Issue 17 item 2: with `[bounce] domain`, every delivery's envelope sender is its own
/// `b-<token>@domain` (one transaction per recipient); the token decodes (with this instance's
/// key) to exactly that message and recipient; an altered one decodes to nothing; the events
/// keep the original sender, and a DSN still goes to the original sender from `<>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verp_return_paths_name_one_send_and_dsns_still_reach_the_sender() {
    let w = World::start(
        &["127.0.0.83"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.83")
            .mail_domain("origin.test", "127.0.0.83"),
        |c| c.extra("[bounce]\ndomain = \"bounces.test\"\nsecret = \"verp test secret\"\n"),
    )
    .await;
    let sink = &w.sinks[0];
    sink.add_rule(Rule::new(Stage::Rcpt, "550 5.1.1 no such user").matching("gone@dest.test"));
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["a@dest.test", "gone@dest.test", "b@dest.test"],
        b"Subject: verp\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let a = w.gannet.wait_event("delivered", "a@dest.test", WAIT).await;
    let b = w.gannet.wait_event("delivered", "b@dest.test", WAIT).await;
    let gone = w.gannet.wait_event("bounced", "gone@dest.test", WAIT).await;
    assert_eq!(a.sender, "s@origin.test", "events keep the original sender");
    assert_eq!(a.queue_id, b.queue_id);

    // Two deliveries to dest.test and the DSN to origin.test.
    let ts = sink.wait_for(3, WAIT).await;
    let dsn = ts
        .iter()
        .find(|t| t.rcpts == ["s@origin.test"])
        .unwrap_or_else(|| panic!("a DSN to the original sender: {ts:#?}"));
    assert_eq!(dsn.mail_from, "", "DSNs come from the null sender");
    let deliveries: Vec<_> = ts.iter().filter(|t| t.rcpts != ["s@origin.test"]).collect();
    assert_eq!(deliveries.len(), 2, "{ts:#?}");
    let mut seen_senders = Vec::new();
    for (rcpt, index) in [("a@dest.test", 0), ("b@dest.test", 2)] {
        let t = deliveries
            .iter()
            .find(|t| t.rcpts == [rcpt])
            .unwrap_or_else(|| panic!("one transaction for {rcpt} alone: {deliveries:#?}"));
        let from = &t.mail_from;
        let (local, domain) = from.split_once('@').expect("an address");
        assert_eq!(domain, "bounces.test");
        let token = local.strip_prefix("b-").expect("b- prefix");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{from}"
        );
        let out = w.gannet.cli(&["bounce", "verp", "--json", from]).await;
        out.assert_success();
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
        assert_eq!(v["queue_id"], a.queue_id.as_str(), "{from}");
        assert_eq!(v["recipient_index"], index, "{from}");
        seen_senders.push(from.clone());
    }
    assert_ne!(seen_senders[0], seen_senders[1]);
    // The bounced recipient was tried with its own return path too (index 1).
    assert_eq!(gone.queue_id, a.queue_id);

    // One changed character: not ours.
    let forged = {
        let s = &seen_senders[0];
        let i = 5;
        let c = if &s[i..i + 1] == "a" { "b" } else { "a" };
        format!("{}{c}{}", &s[..i], &s[i + 1..])
    };
    let out = w.gannet.cli(&["bounce", "verp", &forged]).await;
    assert!(!out.success(), "{forged} decoded: {}", out.stdout);
    assert!(out.stderr.contains("not a VERP address"), "{}", out.stderr);
}

/// Events of `type` from the send log (`GET /api/v1/events`), oldest first.
async fn logged(g: &crate::common::Gannet, kind: &str) -> Vec<Value> {
    let (status, body) = g
        .http_get(&format!("/api/v1/events?type={kind}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until the send log holds more than `n` events of `kind`; returns them.
async fn wait_logged(g: &crate::common::Gannet, kind: &str, n: usize, what: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = logged(g, kind).await;
        if got.len() > n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new {kind} event for {what}; have {got:#?}\n{}",
            g.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn expectation(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("X-Fixture-Expect:"))
        .expect("X-Fixture-Expect")
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Issue 17 items 3 and 4: a real send through Gannet to a sink (so the VERP token is real),
/// then every fixture delivered over SMTP to the `role = "bounces"` listener: bounces (to the
/// VERP address) become `bounce_report` events of that send with the fixture's category, ARF
/// reports (to the FBL address, correlated by the returned Message-ID) `complaint` events,
/// auto-replies and ordinary mail `inbound_rejected`. A forged VERP token and a report failing
/// DMARC create nothing but `inbound_rejected`; other addresses get 550 5.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_listener_correlates_classifies_and_rejects() {
    let w = World::start(
        &["127.0.0.84"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.84")
            .mail_domain("origin.test", "127.0.0.84")
            .txt("_dmarc.evil.test", "v=DMARC1; p=reject")
            .txt("evil.test", "v=spf1 -all"),
        |c| {
            c.extra(
                "[bounce]\ndomain = \"bounces.test\"\nsecret = \"verp e2e\"\nfbl_addresses = [\"fbl@bounces.test\"]\n\n\
                 [[listener]]\nname = \"bounces\"\naddress = \"127.0.0.1:${PORT_BOUNCES}\"\nrole = \"bounces\"\n",
            )
        },
    )
    .await;
    let sink = &w.sinks[0];
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "s@origin.test",
        &["a@dest.test"],
        b"Subject: offers\r\nFrom: s@origin.test\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    let sent = w.gannet.wait_event("delivered", "a@dest.test", WAIT).await;
    let ts = sink.wait_for(1, WAIT).await;
    let message_id = ts[0]
        .header("message-id")
        .expect("Gannet adds a Message-ID")
        .trim()
        .trim_matches(['<', '>'])
        .to_string();
    let verp = ts[0].mail_from.clone();
    assert!(verp.ends_with("@bounces.test"), "{verp}");
    let inbound = *w.gannet.listener_addrs().last().expect("bounces listener");

    // Only VERP, FBL and mailto addresses; nothing is relayed.
    let mut c = SmtpClient::connect(inbound).await;
    c.hello("mx.example.net").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<postmaster2@bounces.test>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<a@dest.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;

    let addr_re = regex::Regex::new(r"[^\s<>;:()]+@example\.net").expect("regex");
    let id_re = regex::Regex::new(r"orig-\d\d@gannet\.test").expect("regex");
    let mut failures = Vec::new();
    for path in bounce_fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("fixture");
        let want = expectation(&text);
        let text = addr_re.replace_all(&text, "a@dest.test");
        let text = id_re.replace_all(&text, message_id.as_str()).into_owned();
        let (kind_type, to) = match want["kind"].as_str() {
            "dsn" => ("bounce_report", verp.as_str()),
            "arf" => ("complaint", "fbl@bounces.test"),
            _ => ("inbound_rejected", verp.as_str()),
        };
        let before = logged(&w.gannet, kind_type).await.len();
        let mut c = SmtpClient::connect(inbound).await;
        c.hello("mx.example.net").await;
        c.send("", &[to], text.as_bytes()).await;
        c.quit().await;
        let events = wait_logged(&w.gannet, kind_type, before, &name).await;
        let e = events.last().expect("one more");
        let mut problems = Vec::new();
        match kind_type {
            "bounce_report" | "complaint" => {
                if e["queue_id"] != sent.queue_id.as_str() {
                    problems.push(format!("queue_id {} != {}", e["queue_id"], sent.queue_id));
                }
                if e["recipient"] != "a@dest.test" {
                    problems.push(format!("recipient {}", e["recipient"]));
                }
                if kind_type == "bounce_report" && e["category"] != want["category"].as_str() {
                    problems.push(format!(
                        "category {} != {}",
                        e["category"], want["category"]
                    ));
                }
            }
            _ => {
                let reason = if want["kind"] == "auto-reply" {
                    "auto-reply"
                } else {
                    "not-a-bounce"
                };
                if e["reason"] != reason {
                    problems.push(format!("reason {} != {reason}", e["reason"]));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {} in {e}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // A forged token and a report failing DMARC: nothing but inbound_rejected.
    let reports_before = logged(&w.gannet, "bounce_report").await.len();
    let dsn = std::fs::read_to_string(bounce_fixtures()[1].clone()).expect("fixture");
    let dsn = addr_re.replace_all(&dsn, "a@dest.test").into_owned();
    let forged = {
        let (local, domain) = verp.split_once('@').unwrap();
        let last = &local[local.len() - 1..];
        let swap = if last == "a" { "b" } else { "a" };
        format!("{}{swap}@{domain}", &local[..local.len() - 1])
    };
    let rejected_before = logged(&w.gannet, "inbound_rejected").await.len();
    let mut c = SmtpClient::connect(inbound).await;
    c.hello("mx.example.net").await;
    c.send("", &[forged.as_str()], dsn.as_bytes()).await;
    c.quit().await;
    let rej = wait_logged(
        &w.gannet,
        "inbound_rejected",
        rejected_before,
        "forged VERP",
    )
    .await;
    assert_eq!(rej.last().unwrap()["reason"], "forged-verp");

    let evil = dsn.replacen(
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        "From: MAILER-DAEMON@evil.test (Mail Delivery System)",
        1,
    );
    assert_ne!(evil, dsn, "fixture 02 has the expected From line");
    let rejected_before = rej.len();
    let mut c = SmtpClient::connect(inbound).await;
    c.hello("mx.evil.test").await;
    c.send("", &[verp.as_str()], evil.as_bytes()).await;
    c.quit().await;
    let rej = wait_logged(&w.gannet, "inbound_rejected", rejected_before, "DMARC fail").await;
    assert_eq!(rej.last().unwrap()["reason"], "dmarc-fail");
    assert_eq!(
        logged(&w.gannet, "bounce_report").await.len(),
        reports_before,
        "a forged or unauthenticated report created a bounce_report"
    );
}

/// Issue 17 item 4, mailto variant: mail to `unsub-<token>@hostname` on the bounces listener
/// publishes `unsubscribed` (via `mailto`) for the token's recipient, tenant and list; an
/// altered token publishes only `inbound_rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailto_unsubscribe_on_the_bounces_listener() {
    use ::gannet::suppression::token::{Claims, UnsubscribeKey, mailto_address};
    let w = World::start(&["127.0.0.85"], Zone::new(), |c| {
        c.extra(
            "[unsubscribe]\nsecret = \"mailto e2e\"\n\n\
             [[listener]]\nname = \"bounces\"\naddress = \"127.0.0.1:${PORT_BOUNCES}\"\nrole = \"bounces\"\n",
        )
    })
    .await;
    let inbound = *w.gannet.listener_addrs().last().expect("bounces listener");
    let key = UnsubscribeKey::from_secret("mailto e2e");
    let token = key
        .issue(&Claims {
            address: "reader@dest.test".into(),
            tenant: Some("acme".into()),
            scope: "list:weekly".into(),
            campaign: Some("w49".into()),
            issued: 20_000,
        })
        .expect("token");
    let to = mailto_address(&token, "gannet.test");
    let mut c = SmtpClient::connect(inbound).await;
    c.hello("mx.dest.test").await;
    c.send(
        "reader@dest.test",
        &[to.as_str()],
        b"From: reader@dest.test\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n",
    )
    .await;
    c.quit().await;
    let ev = wait_logged(&w.gannet, "unsubscribed", 0, "mailto unsubscribe").await;
    let e = &ev[0];
    assert_eq!(e["via"], "mailto", "{e}");
    assert_eq!(e["recipient"], "reader@dest.test", "{e}");
    assert_eq!(e["tenant"], "acme", "{e}");
    assert_eq!(e["scope"], "acme", "{e}");
    assert_eq!(e["list"], "weekly", "{e}");

    // One changed character in the token: nothing but inbound_rejected.
    let mut altered = token.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    let to = mailto_address(&altered, "gannet.test");
    let mut c = SmtpClient::connect(inbound).await;
    c.hello("mx.dest.test").await;
    c.send(
        "reader@dest.test",
        &[to.as_str()],
        b"From: reader@dest.test\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n",
    )
    .await;
    c.quit().await;
    let rej = wait_logged(&w.gannet, "inbound_rejected", 0, "altered token").await;
    assert_eq!(rej[0]["reason"], "forged-unsubscribe-token");
    assert_eq!(logged(&w.gannet, "unsubscribed").await.len(), 1);
}
