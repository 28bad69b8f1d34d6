//! Issue 20: the dashboards and alert rules against a real Prometheus (Debian `prometheus`,
//! installed by `scripts/test`). `promtool check rules` and `promtool check metrics` (on a live
//! scrape) pass; a Prometheus started here on a loopback port scrapes a live Gannet every
//! second during traffic and a bounce storm with `dashboards/alerts.yml` loaded; every query of
//! every dashboard panel returns data through Prometheus's HTTP API, every metric an alert rule
//! uses has series, and the hard-bounce alert fires.
//!
//! The rules are loaded as written except `for:`, set to 0s so the storm need not last minutes
//! (each `expr:` must stay on one line: this file reads them line by line).
//! Sinks .167 (a Gmail MX name) and .168 (everything else).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::gannet::http;
use crate::common::*;

const GOOGLE_MX: &str = "gmail-smtp-in.l.google.com";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every `expr` of every panel of every `dashboards/*.json`, with the file and panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo_file("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "overview, providers, pools, campaigns, system: {files:?}"
    );
    for f in files {
        let d: Value = serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("JSON");
        for p in d["panels"].as_array().expect("panels") {
            for t in p["targets"].as_array().into_iter().flatten() {
                let what = format!(
                    "{} / {}",
                    f.file_name().unwrap_or_default().to_string_lossy(),
                    p["title"].as_str().unwrap_or("?")
                );
                out.push((what, t["expr"].as_str().expect("expr").to_string()));
            }
        }
    }
    out
}

/// (alert name, expr) of every rule in `dashboards/alerts.yml`.
fn alert_rules(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(e) = l.strip_prefix("expr:") {
            out.push((name.clone(), e.trim().to_string()));
        }
    }
    out
}

/// Metric names (`gannet_...`) a query uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("gannet_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        names.insert(expr[start..end].to_string());
        i = end;
    }
    names
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A Prometheus server on a loopback port, killed on drop.
struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_path = dir.path().join("alerts.yml");
        std::fs::write(&rules_path, rules).expect("write rules");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: gannet\n    static_configs: [{{targets: [\"{target}\"]}}]\n",
            rules = rules_path.display().to_string()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's prometheus)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while !matches!(http(addr, "GET", "/-/ready", None).await, Ok((200, _))) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus on {addr} not ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// `GET /api/v1/query?query=EXPR`: the result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let (status, body) = http(self.addr, "GET", &path, None).await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn firing(&self) -> Vec<String> {
        let Ok((_, body)) = http(self.addr, "GET", "/api/v1/alerts", None).await else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `promtool ARGS` with `stdin`; (success, output).
async fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().await.expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_alert_rules() {
    let path = repo_file("dashboards/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", &path.to_string_lossy()], None).await;
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&path).expect("alerts.yml");
    let rules = alert_rules(&text);
    assert!(rules.len() >= 10, "{rules:?}");
    // Every rule tells whoever is paged what to do.
    assert_eq!(
        text.matches("runbook:").count(),
        rules.len(),
        "one runbook annotation per rule"
    );
}

/// Live traffic, a bounce storm, a real Prometheus: see the module doc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_the_bounce_alert_fires_in_prometheus() {
    let w = World::start(
        &["127.0.0.167", "127.0.0.168"],
        Zone::new()
            .mx("gm.test", 10, GOOGLE_MX)
            .a(GOOGLE_MX, "127.0.0.167")
            .mail_domain("plain.test", "127.0.0.168")
            .mail_domain("origin.test", "127.0.0.168")
            .mail_domain("admin.test", "127.0.0.168"),
        |c| {
            c.retry_schedule(&["1h"])
                .file(
                    "k.pem",
                    std::fs::read(repo_file("tests/fixtures/dkim/rsa2048.pem")).expect("key"),
                )
                // A signing domain, so the sending-domain check gauges exist.
                .extra(
                    "[[dkim]]\ndomain = \"origin.test\"\nselector = \"s1\"\n\
                     algorithm = \"rsa-sha256\"\nkey = \"${DIR}/k.pem\"\n",
                )
                .extra("[dkim_policy]\ncheck_interval = \"1s\"\n")
                // A source on a warm-up schedule (its pool carries no class: nothing is sent).
                .extra(
                    "[[pool]]\nname = \"fresh\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"fresh.test\", \
                     name = \"fresh1\", warmup = \"standard\", warmup_start = \"2026-01-01\" }]\n",
                )
                .extra(
                    "[anomaly]\ninterval = \"1s\"\nhard_bounce_min_sample = 20\n\
                     admins = [\"ops@admin.test\"]",
                )
                // An event destination, so the shipping panels and alerts have series.
                .extra("[[jsonl]]\ndir = \"${DIR}/events\"\n")
        },
    )
    .await;
    let g = &w.gannet;
    // The Gmail site offers STARTTLS, the other does not: both sides of the TLS share.
    w.sinks[0].set_starttls(true);
    w.sinks[1].set_starttls(false);

    // promtool's linter on a live scrape.
    let (_, scrape) = g.http_get("/metrics").await;
    let (ok, out) = promtool(&["check", "metrics"], Some(&scrape)).await;
    assert!(ok, "promtool check metrics:\n{out}");

    let rules_text = std::fs::read_to_string(repo_file("dashboards/alerts.yml")).expect("rules");
    let quick_rules: String = rules_text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prom = Prometheus::start(g.http_addr(), &quick_rules).await;

    // Normal traffic: two campaigns to both sites, one recipient deferred (stays queued), one
    // submission refused (unknown class).
    let nouser = "550 5.1.1 The email account that you tried to reach does not exist.";
    for i in 0..60 {
        w.sinks[0].reject_rcpt(&format!("storm{i}@gm.test"), nouser);
    }
    // One ordinary hard bounce first: a counter's first sample is where Prometheus starts
    // counting, so the hard-bounce series must exist before the storm (as it would in
    // production long before any storm).
    w.sinks[0].reject_rcpt("spring0@gm.test", nouser);
    w.sinks[1].add_rule(Rule::new(Stage::Rcpt, "451 4.3.0 later").matching("later@plain.test"));
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for (campaign, domain) in [("spring", "gm.test"), ("autumn", "plain.test")] {
        let rcpts: Vec<String> = (0..40).map(|i| format!("{campaign}{i}@{domain}")).collect();
        let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let msg = message(
            &[("X-Gannet-Campaign", campaign), ("Subject", "hi")],
            "hello",
        );
        c.send("news@origin.test", &refs, &msg).await;
    }
    c.send(
        "news@origin.test",
        &["later@plain.test"],
        &message(&[("Subject", "later")], "x"),
    )
    .await;
    c.cmd("MAIL FROM:<news@origin.test>", "250").await;
    c.cmd("RCPT TO:<nope@plain.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"X-Gannet-Class: no-such-class\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        .await
        .expect("send DATA");
    c.expect("550").await;
    w.gannet
        .wait_event("deferred", "later@plain.test", WAIT)
        .await;
    w.gannet
        .wait_event("bounced", "spring0@gm.test", WAIT)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while prom
        .query("gannet_bounces_total{hard=\"true\"}")
        .await
        .map_or(true, |r| r.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never scraped the bounce"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The storm: 60 of 120 recipients of campaign `storm` to the Gmail site hard-bounce.
    let rcpts: Vec<String> = (0..120).map(|i| format!("storm{i}@gm.test")).collect();
    for chunk in rcpts.chunks(40) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let msg = message(&[("X-Gannet-Campaign", "storm"), ("Subject", "storm")], "x");
        c.send("news@origin.test", &refs, &msg).await;
    }
    c.quit().await;
    w.gannet
        .wait_event("bounced", "storm59@gm.test", WAIT)
        .await;

    // The bounce alert fires in Prometheus.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let firing = prom.firing().await;
        if firing.iter().any(|a| a == "GannetHardBounceRateCritical") {
            assert!(
                firing.iter().any(|a| a == "GannetHardBounceRateWarning"),
                "{firing:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GannetHardBounceRateCritical should fire; firing: {firing:?}; ratio: {:?}",
            prom.query("sum by (pool, provider) (rate(gannet_bounces_total{hard=\"true\"}[10m]))")
                .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every panel's query returns data (rates need two scrapes in their range: retry until a
    // deadline, then report every query still empty).
    let queries = dashboard_queries();
    let mut missing: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        missing.clear();
        for (what, expr) in &queries {
            match prom.query(expr).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => missing.push(format!("{what}: no data for {expr}")),
                Err(e) => missing.push(format!("{what}: {expr}: {e}")),
            }
        }
        for (name, expr) in alert_rules(&rules_text) {
            for metric in metric_names(&expr) {
                let q = format!("count({{__name__=\"{metric}\"}})");
                match prom.query(&q).await {
                    Ok(r) if !r.is_empty() => {}
                    other => {
                        missing.push(format!("alert {name}: no series of {metric} ({other:?})"))
                    }
                }
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} queries without data:\n{}",
        missing.len(),
        queries.len(),
        missing.join("\n")
    );
}
