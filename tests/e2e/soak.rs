//! Soak (issue 21 item 7): `scripts/soak` drives mixed traffic (delivered, deferred then
//! expired, bounced, partial DSNs) through the real `gannet` binary into three Postfix
//! smtp-sinks (250 / 4xx / 5xx), samples RSS, open files, spool, journal, sled, suppression
//! store, send log and queue depth, and fails if a level keeps growing after the queue drains.
//!
//! The suite runs a short soak (three waves of 4 s, each drained: about 30 s) with the debug binary, and checks the
//! rule itself on samples made to grow (so a leak would fail it) and on flat ones. The hour-long
//! run is `scripts/soak --duration 1h` (README "Soak").

use std::time::Duration;

use tokio::process::Command;

use crate::common::gannet::GANNET_BIN;
use crate::common::tools::{ToolOutput, run};

const SOAK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak");

async fn soak(args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new("python3");
    cmd.arg(SOAK).args(args).env("GANNET_BIN", GANNET_BIN);
    run(cmd, None, Duration::from_secs(180)).await
}

fn column(csv: &str, name: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let i = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    lines
        .map(|l| l.split(',').nth(i).unwrap_or("0").parse().unwrap_or(0.0))
        .collect()
}

/// Three waves of mixed traffic, each drained: every outcome happened, every level sampled,
/// and nothing grew past the rule's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_of_mixed_traffic_stays_bounded_after_each_drain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("soak.csv");
    let out_s = out.to_string_lossy().to_string();
    let dir_s = dir.path().to_string_lossy().to_string();
    let o = soak(&[
        "--duration",
        "0s",
        "--min-waves",
        "3",
        "--interval",
        "1s",
        "--wave",
        "4s",
        "--max-age",
        "4s",
        "--rate",
        "20",
        "--out",
        &out_s,
        "--workdir",
        &dir_s,
    ])
    .await;
    o.assert_success();
    assert!(o.stdout.contains("soak: PASS"), "{o}");
    let csv = std::fs::read_to_string(&out).expect("samples written");
    let last = |name: &str| column(&csv, name).last().copied().unwrap_or(0.0);
    for outcome in ["delivered", "deferred", "bounced", "expired", "dsn"] {
        assert!(
            last(outcome) > 0.0,
            "no {outcome} in the soak's traffic:\n{csv}"
        );
    }
    assert!(column(&csv, "drain").iter().sum::<f64>() >= 3.0, "{csv}");
    for level in ["rss", "fds", "sendlog"] {
        assert!(last(level) > 0.0, "{level} not sampled:\n{csv}");
    }
}

/// Samples in the script's CSV format: `drains` drain points 100 s apart, each preceded by a
/// wave sample; `rss_step` bytes more RSS at every drain point.
fn samples(drains: usize, rss_step: u64) -> String {
    let mut s = String::from(
        "t,phase,drain,rss,fds,segments,journal,sled,suppression,sendlog,queue,delivered,deferred,bounced,expired,dsn,injected,refused\n",
    );
    for i in 0..drains as u64 {
        let t = 100 * (i + 1);
        let rss = 60_000_000 + rss_step * i;
        let out = 1000 * (i + 1);
        let log = 1_000_000 + 3000 * out;
        s += &format!(
            "{},wave,0,{},30,1000000,10000,100000,0,{},50,{},0,0,0,0,{},0\n",
            t - 50,
            rss + 5_000_000,
            log,
            out - 500,
            out
        );
        s += &format!(
            "{t},drain,1,{rss},20,500000,10000,100000,0,{log},0,{out},10,100,50,100,{out},0\n"
        );
    }
    s
}

/// The rule fails a run whose RSS keeps rising from drain to drain (a leak), and passes one
/// whose levels come back to the same place.
#[tokio::test]
async fn soak_rule_fails_when_rss_keeps_growing_after_drains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leak = dir.path().join("leak.csv");
    let flat = dir.path().join("flat.csv");
    std::fs::write(&leak, samples(10, 20_000_000)).expect("write");
    std::fs::write(&flat, samples(10, 0)).expect("write");
    let o = soak(&["--judge", &leak.to_string_lossy()]).await;
    o.assert_failure();
    assert!(o.stdout.contains("FAIL: rss"), "{o}");
    let o = soak(&["--judge", &flat.to_string_lossy()]).await;
    o.assert_success();
    assert!(o.stdout.contains("soak: PASS"), "{o}");
}
