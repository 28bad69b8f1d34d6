//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! entry functions (`fuzz/src/entries.rs`, compiled into this test as a module), on stable Rust.
//!
//! cargo-fuzz needs nightly; CI has stable only. This test keeps every input the fuzzer found
//! interesting (and every crasher added after a fix) running in the normal suite: a regression
//! that makes one of them panic or break an entry function's invariant fails here, naming the
//! file. `fuzz/README.md` says how to run the fuzzer itself.

#[path = "../fuzz/src/entries.rs"]
#[allow(dead_code)]
mod entries;

use std::path::PathBuf;

/// Runs every file of `fuzz/corpus/<target>/` through the target; fails on an empty corpus
/// (the directory is part of the test).
fn replay(target: &str) {
    let entry = entries::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz entry named {target}"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // bounce_report's seeds are the bounce fixtures themselves (not a copy of them).
    let dirs = match target {
        "bounce_report" => vec![root.join("tests/fixtures/bounces")],
        _ => vec![root.join("fuzz/corpus").join(target)],
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in &dirs {
        files.extend(
            std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    assert!(!files.is_empty(), "{dirs:?} hold no inputs");
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let result = std::panic::catch_unwind(|| entry(&data));
        if result.is_err() {
            panic!(
                "fuzz target {target} failed on {} (reproduce: cargo +nightly fuzz run {target} {})",
                file.display(),
                file.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_corpus_replayed_here() {
    let names: Vec<&str> = entries::TARGETS.iter().map(|(n, _)| *n).collect();
    let manifest =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for entry {name}"
        );
    }
}

#[test]
fn smtp_session_corpus() {
    replay("smtp_session");
}

#[test]
fn data_decoder_corpus() {
    replay("data_decoder");
}

#[test]
fn spool_record_corpus() {
    replay("spool_record");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn bounce_report_corpus() {
    replay("bounce_report");
}

#[test]
fn template_corpus() {
    replay("template");
}
