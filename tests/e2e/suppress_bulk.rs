//! Bulk import and export of the suppression list (issue 17 item 5: "bulk import/export as
//! CSV and JSONL" on `/api/v1/suppressions`, and `gannet suppress add|remove|list|import|
//! export`): curl against the API, the `gannet` CLI against a running instance.
//!
//! Sink addresses: 127.0.0.237, 127.0.0.228–.229.

use std::time::Duration;

use crate::common::gannet::http;
use crate::common::tools::run;
use crate::common::*;

/// `curl -sS` with `args`; returns (HTTP status, body).
async fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}"]).args(args);
    let out = run(cmd, None, Duration::from_secs(60)).await;
    out.assert_success();
    let (body, status) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no status: {out}"));
    (status.trim().parse().expect("status"), body.to_string())
}

async fn inject(g: &Gannet, to: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "from": {"email": "news@brand.test"},
        "subject": "hi",
        "text": "hello",
        "recipients": [{"email": to}],
    })
    .to_string();
    let (status, text) = http(g.http_addr(), "POST", "/api/v1/messages", Some(&body))
        .await
        .expect("POST /api/v1/messages");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["results"][0].clone()
}

async fn get_entry(g: &Gannet, address: &str) -> (u16, serde_json::Value) {
    let path = format!("/api/v1/suppressions/{}", address.replace('@', "%40"));
    let (status, text) = http(g.http_addr(), "GET", &path, None).await.expect("GET");
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// Streamed CSV import with curl: 2,000 good lines and 2 bad ones. Every good line is
/// imported, each bad one is named by its line number (422, the first one in `error`), and an
/// imported address is refused at injection. A JSONL import works the same; the export (CSV
/// and JSONL) gives back every entry, and importing the export again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_jsonl_imports_keep_every_good_line_and_exports_give_them_back() {
    let w = World::start(
        &["127.0.0.237"],
        Zone::new().mail_domain("bulk.sup.test", "127.0.0.237"),
        |c| c,
    )
    .await;
    let g = &w.gannet;
    let base = format!("http://{}", g.http_addr());
    let dir = tempfile::tempdir().expect("tmp");

    // Line 1 is the header; lines 2..=2001 are good except 501 and 1502.
    let mut csv = String::from("address,reason,tenant\r\n");
    for i in 0..2002 {
        let line = i + 2;
        match line {
            501 => csv.push_str("not-an-address,manual,*\r\n"),
            1502 => csv.push_str("x@bulk.sup.test,manual,*,extra\r\n"),
            _ => csv.push_str(&format!("U{i:05}@Bulk.sup.test,complaint,*\r\n")),
        }
    }
    let csv_path = dir.path().join("list.csv");
    std::fs::write(&csv_path, &csv).expect("write");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &format!("@{}", csv_path.display()),
        &format!("{base}/api/v1/suppressions/import"),
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["lines"], 2003, "{v}");
    assert_eq!(v["imported"], 2000, "{v}");
    assert_eq!(v["rejected"], 2, "{v}");
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [501, 1502], "{v}");
    assert_eq!(v["error"]["field"], "line 501", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not-an-address"),
        "{v}"
    );
    let (status, e) = get_entry(g, "u01999@bulk.sup.test").await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["entries"][0]["reason"], "complaint");
    assert_eq!(e["entries"][0]["source"], "import:loopback");
    let r = inject(g, "u00007@bulk.sup.test").await;
    assert_eq!(r["status"], "rejected", "{r}");

    // JSONL, all good.
    let jsonl: String = (0..500)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"address": format!("j{i}@bulk.sup.test"), "tenant": "acme", "stream": "class:promotional", "reason": "unsubscribe"})
            )
        })
        .collect();
    let jsonl_path = dir.path().join("list.jsonl");
    std::fs::write(&jsonl_path, &jsonl).expect("write");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", jsonl_path.display()),
        &format!("{base}/api/v1/suppressions/import?format=jsonl"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["imported"].as_u64(), v["created"].as_u64()),
        (Some(500), Some(500))
    );

    // Export: everything, both formats.
    let (status, csv_out) = curl(&[&format!("{base}/api/v1/suppressions/export?format=csv")]).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = csv_out.lines().collect();
    assert_eq!(
        rows[0],
        "address,tenant,stream,reason,source,created,expires"
    );
    assert_eq!(rows.len(), 1 + 2500, "header + every entry");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("j7@bulk.sup.test,acme,class:promotional,unsubscribe,")),
        "{}",
        &csv_out[..csv_out.len().min(2000)]
    );
    let (status, jsonl_out) = curl(&[
        "-H",
        "Accept: application/x-ndjson",
        &format!("{base}/api/v1/suppressions/export?reason=unsubscribe"),
    ])
    .await;
    assert_eq!(status, 200);
    let exported: Vec<serde_json::Value> = jsonl_out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(exported.len(), 500, "filtered by reason");

    // Importing the CSV export again: every line is one that exists, nothing new.
    let out_path = dir.path().join("export.csv");
    std::fs::write(&out_path, &csv_out).expect("write");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &format!("@{}", out_path.display()),
        &format!("{base}/api/v1/suppressions/import"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["imported"].as_u64(), v["created"].as_u64()),
        (Some(2500), Some(0)),
        "{v}"
    );

    // A format the server cannot tell is refused before anything is read.
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        "a@b.test",
        &format!("{base}/api/v1/suppressions/import"),
    ])
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"format\""), "{body}");
}

/// `gannet suppress add|list|remove|import|export` against a running instance: add shows up
/// in list and stops injection, remove lifts it; import of a file with one bad line imports
/// the rest, names the line and exits non-zero; export writes every entry to a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppress_cli_adds_lists_removes_imports_and_exports() {
    let w = World::start(
        &["127.0.0.237"],
        Zone::new().mail_domain("cli.sup.test", "127.0.0.237"),
        |c| c,
    )
    .await;
    let g = &w.gannet;
    let dir = tempfile::tempdir().expect("tmp");

    let out = g
        .cli(&[
            "suppress",
            "add",
            "Carol@cli.sup.test",
            "--reason",
            "spam-trap",
        ])
        .await;
    out.assert_success();
    assert!(
        out.stdout.contains("suppressed carol@cli.sup.test"),
        "{out}"
    );
    let r = inject(g, "carol@cli.sup.test").await;
    assert_eq!(r["status"], "rejected", "{r}");
    let out = g
        .cli(&["suppress", "list", "--domain", "cli.sup.test", "--json"])
        .await;
    out.assert_success();
    let listed: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["reason"], "spam-trap");
    assert_eq!(listed[0]["source"], "api:cli");
    g.cli(&["suppress", "remove", "carol@cli.sup.test"])
        .await
        .assert_success();
    let r = inject(g, "carol@cli.sup.test").await;
    assert_eq!(r["status"], "queued", "{r}");
    let out = g.cli(&["suppress", "remove", "carol@cli.sup.test"]).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("no entry for carol@cli.sup.test"),
        "{out}"
    );

    // Import: 300 lines, line 3 bad.
    let mut csv = String::new();
    for i in 0..300 {
        if i == 2 {
            csv.push_str("d@cli.sup.test,*,everything\n");
        } else {
            csv.push_str(&format!("d{i}@cli.sup.test\n"));
        }
    }
    let path = dir.path().join("in.csv");
    std::fs::write(&path, csv).expect("write");
    let out = g
        .cli(&["suppress", "import", path.to_str().expect("path")])
        .await;
    out.assert_failure();
    assert!(
        out.stdout
            .contains("300 lines read, 299 entries imported (299 new), 1 lines rejected"),
        "{out}"
    );
    assert!(
        out.stderr.contains("line 3: stream \"everything\""),
        "{out}"
    );
    let (status, _) = get_entry(g, "d299@cli.sup.test").await;
    assert_eq!(status, 200);

    // Export to a file, JSONL by its name.
    let exported = dir.path().join("out.jsonl");
    let out = g
        .cli(&[
            "suppress",
            "export",
            "-o",
            exported.to_str().expect("path"),
            "--domain",
            "cli.sup.test",
        ])
        .await;
    out.assert_success();
    let text = std::fs::read_to_string(&exported).expect("export file");
    let n = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|e| e["address"].as_str().is_some_and(|a| a.starts_with('d')))
        .count();
    assert_eq!(n, 299, "{text}");
}

/// Two imports of the same 30,000 addresses at the same time: every address is created once,
/// so the two answers' `created` counts add up to 30,000 (each line is new to exactly one of
/// them), and both report 30,000 imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_count_each_new_entry_once() {
    let w = World::start(
        &["127.0.0.228"],
        Zone::new().mail_domain("race.sup.test", "127.0.0.228"),
        |c| c,
    )
    .await;
    let g = &w.gannet;
    let url = format!(
        "http://{}/api/v1/suppressions/import?format=csv",
        g.http_addr()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("same.csv");
    let csv: String = (0..30_000)
        .map(|i| format!("r{i}@race.sup.test\n"))
        .collect();
    std::fs::write(&path, csv).expect("write");
    let data = format!("@{}", path.display());
    let args = [
        "-X",
        "POST",
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &data,
        &url,
    ];
    let ((s1, b1), (s2, b2)) = tokio::join!(curl(&args), curl(&args));
    let v1: serde_json::Value = serde_json::from_str(&b1).expect("json");
    let v2: serde_json::Value = serde_json::from_str(&b2).expect("json");
    assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
    assert_eq!(
        (v1["imported"].as_u64(), v2["imported"].as_u64()),
        (Some(30_000), Some(30_000))
    );
    let created =
        v1["created"].as_u64().expect("created") + v2["created"].as_u64().expect("created");
    assert_eq!(
        created, 30_000,
        "each address is new to one import only: {v1} {v2}"
    );
}

/// An export that fails half-way (an entry the store cannot read, put there while Gannet was
/// stopped) does not end like a complete one: the entries before it arrive, then the chunked
/// body is cut off without its last chunk, so curl fails (exit 18, "transfer closed with
/// outstanding read data") instead of handing over a silently shortened list; JSONL carries
/// a last line saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_fails_half_way_is_cut_off_not_ended() {
    let mut w = World::start(
        &["127.0.0.229"],
        Zone::new().mail_domain("cut.sup.test", "127.0.0.229"),
        |c| c,
    )
    .await;
    let base = format!("http://{}", w.gannet.http_addr());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("list.csv");
    let csv: String = (0..12_000)
        .map(|i| format!("e{i:05}@cut.sup.test\n"))
        .collect();
    std::fs::write(&path, csv).expect("write");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &format!("@{}", path.display()),
        &format!("{base}/api/v1/suppressions/import"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");

    // A value no version of Gannet wrote, in a row in the middle of the list (listings and
    // exports go in row order, the order of the import).
    w.gannet.sigterm().await;
    {
        let db = rusqlite::Connection::open(
            w.gannet
                .dir()
                .join("spool")
                .join("suppression")
                .join("list.sqlite"),
        )
        .expect("open store");
        let changed = db
            .execute(
                "UPDATE entries SET v = x'07676172626167650a' \
                 WHERE id = (SELECT id FROM entries ORDER BY id LIMIT 1 OFFSET 6000)",
                [],
            )
            .expect("update");
        assert_eq!(changed, 1);
    }
    w.gannet.restart().await;
    let base = format!("http://{}", w.gannet.http_addr());

    for format in ["jsonl", "csv"] {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "-sS",
            &format!("{base}/api/v1/suppressions/export?format={format}"),
        ]);
        let out = run(cmd, None, Duration::from_secs(60)).await;
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(18),
            "curl must see a cut-off body ({format}): {}",
            out.stderr
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        let addresses = lines.iter().filter(|l| l.contains("@cut.sup.test")).count();
        assert!(
            (5_000..=8_001).contains(&addresses),
            "{format}: the entries before the broken one arrive ({addresses})"
        );
        if format == "jsonl" {
            let last: serde_json::Value =
                serde_json::from_str(lines.last().expect("a line")).expect("json");
            assert_eq!(last["error"]["code"], "export_stopped", "{last}");
        }
    }
    assert!(
        w.gannet.log().contains("suppression export stopped"),
        "{}",
        w.gannet.log()
    );
}
