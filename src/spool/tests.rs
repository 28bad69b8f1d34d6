use super::*;
use crate::config::SpoolConfig;

fn rec(n: usize) -> MessageRecord {
    MessageRecord {
        received_at_ms: 1,
        mail_from: "s@a.test".into(),
        rcpts: vec![format!("r{n}@b.test"), format!("q{n}@c.test")],
        class: "promotional".into(),
        tenant: String::new(),
        campaign: String::new(),
        body: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
        attrs: Default::default(),
    }
}

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.to_path_buf(),
        max_segment_bytes: 4096,
        ..SpoolConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (spool, rec0) = Spool::open(&cfg(dir.path()), dir.path(), metrics.clone()).unwrap();
    assert!(rec0.is_empty());
    let mut tasks = Vec::new();
    for n in 0..200 {
        let s = spool.clone();
        tasks.push(tokio::spawn(async move {
            (n, s.append(&rec(n)).await.unwrap())
        }));
    }
    let mut locs = Vec::new();
    for t in tasks {
        locs.push(t.await.unwrap());
    }
    for (n, loc) in &locs {
        assert_eq!(spool.read(*loc).await.unwrap(), rec(*n));
    }
    // Group commit: fewer fdatasyncs than messages.
    assert!(
        metrics.spool_commits.get() < 200,
        "{}",
        metrics.spool_commits.get()
    );
    // Small segments: sequential appends past max_segment_bytes rotate to new files.
    for n in 0..40 {
        spool.append(&rec(n)).await.unwrap();
    }
    assert!(spool.segment_count() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_requeues_pending_and_skips_done() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    let a = spool.append(&rec(1)).await.unwrap();
    let b = spool.append(&rec(2)).await.unwrap();
    let c = spool.append(&rec(3)).await.unwrap();
    spool.complete(a.key);
    spool.record_states(b.key, &[RcptState::Delivered, RcptState::Pending]);
    spool.flush_index();
    drop(spool);
    tokio::time::sleep(Duration::from_millis(50)).await; // writer thread and sled let go

    let (_spool, recovered) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    let keys: Vec<_> = recovered.iter().map(|r| r.location.key).collect();
    assert_eq!(keys, vec![b.key, c.key]);
    assert_eq!(
        recovered[0].states,
        vec![RcptState::Delivered, RcptState::Pending]
    );
    assert_eq!(recovered[1].states, vec![RcptState::Pending; 2]);
    assert_eq!(recovered[1].record.rcpts, rec(3).rcpts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_rebuilds_every_message_as_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    for n in 0..5 {
        spool.append(&rec(n)).await.unwrap();
    }
    drop(spool);
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (_s, recovered) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    assert_eq!(recovered.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_ignored_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    let a = spool.append(&rec(1)).await.unwrap();
    drop(spool);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let path = segment_path(&dir.path().join("segments"), a.key.segment);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    use std::io::Write;
    f.write_all(&record::encode(&rec(2))[..20]).unwrap();
    let (_s, recovered) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].record.rcpts, rec(1).rcpts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sealed_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&cfg(dir.path()), dir.path(), Metrics::new()).unwrap();
    let mut keys = Vec::new();
    for n in 0..50 {
        keys.push(spool.append(&rec(n)).await.unwrap().key);
    }
    let before = spool.segment_count();
    for k in keys {
        spool.complete(k);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Only the active segment can remain.
    assert!(
        spool.segment_count() <= 1,
        "{before} -> {}",
        spool.segment_count()
    );
    let files = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert!(files <= 1, "{files} segment files left");
}
