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
        // The shape.
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
