//! Bounces, complaints and suppression (issue 17): `gannet bounce classify` on replies.

use std::process::Command;

use serde_json::Value;

use crate::common::gannet::GANNET_BIN;

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
