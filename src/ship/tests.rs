//! The outbox's files and one runner against an in-process destination.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, Pos};
use super::runner::{self, Destination, RunnerOptions, SendError, ShipEvent};
use crate::config::ship::ShipFilter;

fn key() -> crate::sendlog::MasterKey {
    crate::sendlog::MasterKey::from_bytes([4; 32])
}

fn line(i: u64, kind: &str) -> Vec<u8> {
    format!(
        "{{\"id\":\"e{i}\",\"time_us\":{i},\"tenant\":\"t{}\",\"type\":\"{kind}\"}}\n",
        i % 2
    )
    .into_bytes()
}

fn read_ids(o: &Outbox, from: Pos) -> Vec<String> {
    let mut r = o.reader(from);
    let mut ids = Vec::new();
    loop {
        let lines = r.read(7, o.end()).unwrap();
        if lines.is_empty() {
            return ids;
        }
        for l in lines {
            ids.push(ShipEvent::parse(l.json).unwrap().id().to_string());
        }
    }
}

#[test]
fn lines_survive_segment_rolls_and_reopen_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    for b in 0..40u64 {
        let mut buf = Vec::new();
        for i in 0..10 {
            buf.extend(line(b * 10 + i, "delivered"));
        }
        a.append(&buf, 10).unwrap();
    }
    let segs = std::fs::read_dir(tmp.path()).unwrap().count() - 1;
    assert!(segs > 3, "{segs} segments");
    let ids = read_ids(&o, Pos::default());
    assert_eq!(ids.len(), 400);
    assert_eq!(ids[399], "e399");
    let end = o.end();
    drop((o, a));
    let (o, _a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    assert_eq!(o.end(), end);
    assert_eq!(read_ids(&o, Pos::default()).len(), 400);
}

#[test]
fn a_torn_last_line_is_cut_at_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    assert_eq!(o.newest_at_open_us(), None, "a new outbox holds no event");
    a.append(&[line(1, "received"), line(2, "delivered")].concat(), 2)
        .unwrap();
    let end = o.end();
    drop((o, a));
    let seg = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\":\"e3\",\"ti").unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    assert_eq!(o.end(), end);
    assert_eq!(o.newest_at_open_us(), Some(2), "the last whole line's time");
    a.append(&line(3, "bounced"), 1).unwrap();
    assert_eq!(read_ids(&o, Pos::default()), ["e1", "e2", "e3"]);
}

#[test]
fn compaction_drops_only_segments_every_cursor_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    for i in 0..300 {
        a.append(&line(i, "delivered"), 1).unwrap();
    }
    let mut r = o.reader(Pos::default());
    let first = r.read(150, o.end()).unwrap();
    let mid = first.last().unwrap().next;
    let before = o.start();
    o.compact(mid).unwrap();
    assert!(o.start() > before && o.start() <= mid);
    // Everything from `mid` on is still there.
    let ids = read_ids(&o, mid);
    assert_eq!(ids.len(), 150);
    assert_eq!(ids[0], "e150");
    // A cursor from before the oldest segment starts at the oldest (duplicates, no gap).
    o.save_cursor("old", Pos::default()).unwrap();
    assert_eq!(o.load_cursor("old"), Some(o.start()));
    std::fs::write(o.dir().join("cursors/bad"), "garbage").unwrap();
    assert_eq!(o.load_cursor("bad"), Some(o.start()));
    assert_eq!(o.load_cursor("new"), None);
}

/// Fails `fail_first` sends with Retry, refuses batches holding `refuse_id`, records the rest.
struct Fake {
    got: Arc<Mutex<Vec<Vec<String>>>>,
    fail_first: usize,
    refuse_id: &'static str,
}

impl Destination for Fake {
    fn send<'a>(&'a mut self, batch: &'a [ShipEvent]) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err(SendError::Retry {
                    reason: "down".into(),
                    after: None,
                });
            }
            if batch.iter().any(|e| e.id() == self.refuse_id) {
                return Err(SendError::Refused {
                    reason: "410".into(),
                });
            }
            self.got
                .lock()
                .unwrap()
                .push(batch.iter().map(|e| e.id().to_string()).collect());
            Ok(())
        })
    }
}

/// Options for a test runner: `batch_size`, every event, 100 ms max delay, 4 s max backoff,
/// no backlog limit (change fields with struct update syntax).
fn opts(name: &str, batch_size: usize) -> RunnerOptions {
    RunnerOptions {
        name: name.into(),
        filter: ShipFilter::default(),
        batch_size,
        max_delay: Duration::from_millis(100),
        max_backoff: Duration::from_secs(4),
        max_backlog_bytes: 0,
    }
}

/// A runner of `dest` over `o` from its end, with metrics of its own.
struct Running {
    st: Arc<runner::RunnerState>,
    stop: CancellationToken,
    metrics: super::metrics::ShipMetrics,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_runner(o: &Outbox, dest: impl Destination + 'static, opts: RunnerOptions) -> Running {
    let st = runner::state(&opts.name, o.end());
    let stop = CancellationToken::new();
    let metrics = super::metrics::ShipMetrics::new(&prometheus::Registry::new());
    let task = tokio::spawn(runner::run(
        o.clone(),
        Box::new(dest),
        opts,
        st.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    Running {
        st,
        stop,
        metrics,
        task,
    }
}

impl Running {
    /// Wait until the runner's cursor reached the outbox's end, then stop it.
    async fn until_caught_up(self, o: &Outbox) -> super::metrics::ShipMetrics {
        while self.st.cursor() != o.end() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        self.task.await.unwrap();
        self.metrics
    }
}

#[tokio::test(start_paused = true)]
async fn runner_retries_filters_skips_refused_and_moves_its_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        got: got.clone(),
        fail_first: 3,
        refuse_id: "e4",
    };
    let filter = ShipFilter {
        events: vec!["delivered".into()],
        tenant: Some("t0".into()),
    };
    let running = spawn_runner(
        &o,
        fake,
        RunnerOptions {
            filter,
            ..opts("fake", 2)
        },
    );
    let mut buf = Vec::new();
    for i in 0..12 {
        buf.extend(line(i, if i == 6 { "bounced" } else { "delivered" }));
    }
    a.append(&buf, 12).unwrap();
    let metrics = running.until_caught_up(&o).await;
    // Tenant t0 = even ids; e6 is a bounce; the batch [e4, e8] was refused (not retried).
    assert_eq!(*got.lock().unwrap(), vec![vec!["e0", "e2"], vec!["e10"]]);
    assert_eq!(metrics.retries.with_label_values(&["fake"]).get(), 3);
    assert_eq!(metrics.failed.with_label_values(&["fake"]).get(), 2);
    assert_eq!(metrics.sent.with_label_values(&["fake"]).get(), 3);
    assert_eq!(o.load_cursor("fake"), Some(o.end()));
}

/// A batch that fills goes once it is full (a runner looks for more lines every few tens of
/// milliseconds, not at every outbox commit), not at `max_delay`; one that does not fill
/// goes at `max_delay` after its first event was read.
#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_before_max_delay_and_a_partial_one_at_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        got: got.clone(),
        fail_first: 0,
        refuse_id: "none",
    };
    let max_delay = Duration::from_secs(10);
    let running = spawn_runner(
        &o,
        fake,
        RunnerOptions {
            max_delay,
            ..opts("fill", 6)
        },
    );
    let mut append = |ids: std::ops::Range<u64>| {
        let n = ids.end - ids.start;
        let buf: Vec<u8> = ids.flat_map(|i| line(i, "delivered")).collect();
        a.append(&buf, n).unwrap();
    };
    let batches = |n: usize| {
        let got = got.clone();
        async move {
            while got.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let t0 = tokio::time::Instant::now();
    append(0..3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    append(3..6);
    batches(1).await;
    let full = t0.elapsed();
    assert!(
        full < Duration::from_secs(2),
        "the full batch went after {full:?}"
    );
    assert_eq!(got.lock().unwrap()[0], ["e0", "e1", "e2", "e3", "e4", "e5"]);

    let t1 = tokio::time::Instant::now();
    append(6..8);
    batches(2).await;
    let partial = t1.elapsed();
    assert!(
        partial >= max_delay && partial < max_delay + Duration::from_secs(1),
        "the partial batch went after {partial:?}"
    );
    assert_eq!(got.lock().unwrap()[1], ["e6", "e7"]);
    running.until_caught_up(&o).await;
}

/// Passes lines on only (like the webhook and JSONL destinations): records each batch's JSON.
struct LinesOnly {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    first_ids: Arc<Mutex<Vec<String>>>,
    /// Ids of the events after the first of each batch (empty when they were not parsed).
    later_ids: Arc<Mutex<Vec<String>>>,
}

impl Destination for LinesOnly {
    fn needs_fields(&self) -> bool {
        false
    }

    fn send<'a>(&'a mut self, batch: &'a [ShipEvent]) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.first_ids
                .lock()
                .unwrap()
                .push(batch[0].id().to_string());
            self.later_ids
                .lock()
                .unwrap()
                .extend(batch[1..].iter().map(|e| e.id().to_string()));
            self.got
                .lock()
                .unwrap()
                .extend(batch.iter().map(|e| e.json.to_vec()));
            Ok(())
        })
    }
}

/// A destination that only passes lines on gets every line whole and in order, with the
/// first event of each batch read (its id for logs) and the others passed on unparsed; a
/// filter still reads every event.
#[tokio::test(start_paused = true)]
async fn a_lines_only_destination_gets_every_line_whole_and_filters_still_apply() {
    for (filter, want) in [
        (ShipFilter::default(), (0..12).collect::<Vec<u64>>()),
        (
            ShipFilter {
                events: Vec::new(),
                tenant: Some("t1".into()),
            },
            (0..12).filter(|i| i % 2 == 1).collect(),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let first_ids = Arc::new(Mutex::new(Vec::new()));
        let later_ids = Arc::new(Mutex::new(Vec::new()));
        let filtered = filter.tenant.is_some();
        let dest = LinesOnly {
            got: got.clone(),
            first_ids: first_ids.clone(),
            later_ids: later_ids.clone(),
        };
        let running = spawn_runner(
            &o,
            dest,
            RunnerOptions {
                filter,
                ..opts("lines", 4)
            },
        );
        let mut buf = Vec::new();
        for i in 0..12 {
            buf.extend(line(i, "delivered"));
        }
        a.append(&buf, 12).unwrap();
        running.until_caught_up(&o).await;
        let lines: Vec<Vec<u8>> = want
            .iter()
            .map(|&i| {
                let mut l = line(i, "delivered");
                l.pop();
                l
            })
            .collect();
        assert_eq!(*got.lock().unwrap(), lines);
        let firsts = first_ids.lock().unwrap().clone();
        assert!(
            !firsts.is_empty() && firsts.iter().all(|id| !id.is_empty()),
            "{firsts:?}"
        );
        // Without a filter the rest of each batch is passed on unparsed; a filter parses all.
        let later = later_ids.lock().unwrap().clone();
        assert!(!later.is_empty(), "batches of more than one event");
        assert!(
            later.iter().all(|id| id.is_empty() != filtered),
            "filtered {filtered}: {later:?}"
        );
    }
}

fn read_all_recent(
    r: &mut super::outbox::Reader,
    o: &Outbox,
    max: usize,
) -> Vec<super::outbox::Line> {
    let mut out = Vec::new();
    while let Some(lines) = r.read_recent(max, o.end()) {
        out.extend(lines);
    }
    out
}

/// A reader that keeps up gets from memory exactly what the files hold (same JSON, same
/// positions), batch after batch and within `max`; before the batches in memory (after a
/// reopen) it is sent to the files; an erasure empties the memory so the erased event is
/// read from the files, shredded, and not shipped.
#[test]
fn recent_lines_in_memory_match_the_files_and_erasure_empties_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        buf.extend(line(i, "delivered"));
    }
    a.append(&buf, 5).unwrap();
    drop((o, a));
    // Reopened: nothing in memory, the first five are read from the files.
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    let start = Pos::default();
    assert!(o.reader(start).read_recent(100, o.end()).is_none());
    let mut mem = o.reader(o.end());
    for b in 0..6u64 {
        let mut buf = Vec::new();
        for i in 0..7 {
            buf.extend(line(5 + b * 7 + i, "delivered"));
        }
        a.append(&buf, 7).unwrap();
    }
    let from_mem = read_all_recent(&mut mem, &o, 3);
    assert_eq!(mem.pos(), o.end());
    assert!(o.reader(o.end()).read(100, o.end()).unwrap().is_empty());
    let mut disk = o.reader(start);
    let mut from_disk = Vec::new();
    loop {
        let l = disk.read(100, o.end()).unwrap();
        if l.is_empty() {
            break;
        }
        from_disk.extend(l);
    }
    assert_eq!(from_disk.len(), 47);
    let pairs = |v: &[super::outbox::Line]| -> Vec<(Vec<u8>, Pos)> {
        v.iter().map(|l| (l.json.to_vec(), l.next)).collect()
    };
    assert_eq!(pairs(&from_mem), pairs(&from_disk[5..]));
    // Never past the `end` it is given.
    let mut r = o.reader(from_disk[5].next);
    let part = r.read_recent(100, from_disk[10].next).unwrap();
    assert_eq!(part.len(), 5);
    assert_eq!(r.pos(), from_disk[10].next);
    // Erasure of e20: from memory nothing; from the files every line but e20.
    let at = from_disk[4].next;
    assert_eq!(o.shred(b"\"e20\"").unwrap(), 1);
    assert!(o.reader(at).read_recent(100, o.end()).is_none());
    let ids = read_ids(&o, at);
    assert_eq!(ids.len(), 41);
    assert!(!ids.contains(&"e20".to_string()));
    // New commits are in memory again.
    let before = o.end();
    a.append(&line(99, "delivered"), 1).unwrap();
    let got = o.reader(before).read_recent(100, o.end()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(ShipEvent::parse(got[0].json.clone()).unwrap().id(), "e99");
}

/// Compaction waits for the slowest registered reader (one journal, several readers) and
/// does nothing while none is registered.
#[test]
fn held_compaction_keeps_what_the_slowest_reader_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    for i in 0..300 {
        a.append(&line(i, "delivered"), 1).unwrap();
    }
    assert_eq!(
        o.compact_held().unwrap(),
        0,
        "no reader registered: nothing goes"
    );
    let mid = {
        let mut r = o.reader(Pos::default());
        r.read(150, o.end()).unwrap().last().unwrap().next
    };
    o.hold("fast", o.end());
    o.hold("slow", Pos::default());
    assert_eq!(
        o.compact_held().unwrap(),
        0,
        "the slow reader needs everything"
    );
    o.hold("slow", mid);
    assert!(o.compact_held().unwrap() > 0);
    assert!(o.start() <= mid);
    assert_eq!(read_ids(&o, mid)[0], "e150");
    o.hold("fast", mid);
    o.hold("slow", o.end());
    assert_eq!(
        o.compact_held().unwrap(),
        0,
        "the other one is the slowest now"
    );
}

/// An outbox nothing appends to any more (left from before shipping read the send log's
/// journal) is drained: the destination gets every line from its cursor, the drain returns
/// the destination at the end, even when the last lines were erased (shredded), and the
/// cursor is saved there.
#[tokio::test(start_paused = true)]
async fn a_drain_ships_what_is_left_and_steps_over_a_shredded_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    let mut buf = Vec::new();
    for i in 0..6 {
        buf.extend(line(i, "delivered"));
    }
    buf.extend(
        b"{\"id\":\"e6\",\"time_us\":6,\"type\":\"delivered\",\"recipient\":\"gone@x.test\"}\n",
    );
    buf.extend(
        b"{\"id\":\"e7\",\"time_us\":7,\"type\":\"bounced\",\"recipient\":\"gone@x.test\"}\n",
    );
    a.append(&buf, 8).unwrap();
    drop(a);
    assert_eq!(o.shred(b"gone@x.test").unwrap(), 2);
    let from = {
        let mut r = o.reader(Pos::default());
        r.read(2, o.end()).unwrap().last().unwrap().next
    };
    let got = Arc::new(Mutex::new(Vec::new()));
    let st = runner::state("fake", from);
    let back = runner::drain(
        o.clone(),
        Box::new(Fake {
            got: got.clone(),
            fail_first: 1,
            refuse_id: "none",
        }),
        opts("fake", 3),
        st.clone(),
        super::metrics::ShipMetrics::new(&prometheus::Registry::new()),
        CancellationToken::new(),
    )
    .await;
    assert!(back.is_some(), "drained: the destination comes back");
    let ids: Vec<String> = got.lock().unwrap().concat();
    assert_eq!(ids, ["e2", "e3", "e4", "e5"]);
    assert_eq!(st.cursor(), o.end());
    assert_eq!(o.load_cursor("fake"), Some(o.end()));
}

#[test]
fn lines_naming_a_person_being_erased_are_written_shredded() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 1 << 20, &key()).unwrap();
    a.append(&line(1, "delivered"), 1).unwrap();
    let start = o.end();
    o.shred_arriving(b"erin@example.test", std::time::Duration::from_secs(60));
    let mut buf = line(2, "delivered");
    buf.extend(b"{\"id\":\"e3\",\"recipient\":\"Erin@Example.test\",\"type\":\"delivered\"}\n");
    buf.extend(line(4, "bounced"));
    a.append(&buf, 3).unwrap();
    // Neither the reader of the batch in memory nor one of the files sees her line.
    let mut mem = o.reader(start);
    let recent: Vec<String> = mem
        .read_recent(100, o.end())
        .unwrap()
        .into_iter()
        .map(|l| ShipEvent::parse(l.json).unwrap().id().to_string())
        .collect();
    assert_eq!(recent, ["e2", "e4"]);
    assert_eq!(mem.pos(), o.end());
    assert_eq!(read_ids(&o, start), ["e2", "e4"]);
    // On disk her line is filler, the others sealed; positions count it as a line.
    let mut on_disk = Vec::new();
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            on_disk.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(
        on_disk
            .split(|b| *b == b'\n')
            .any(|l| !l.is_empty() && l.iter().all(|b| *b == b'#'))
    );
    assert_eq!(o.end().event, 4);
    // Other people's lines are written as always.
    o.shred_arriving(b"", std::time::Duration::from_secs(60));
    a.append(&line(5, "delivered"), 1).unwrap();
    assert_eq!(read_ids(&o, start), ["e2", "e4", "e5"]);
}

#[test]
fn routing_fields_are_read_from_an_events_serialised_line() {
    use crate::events::{Event, EventKind};
    let mut e = Event::new(EventKind::Flushed {
        actor: "cli".into(),
        released: 7,
    });
    e.tenant = "acme \"eu\"".into(); // escaped in JSON: not borrowed
    e.class = "bulk".into();
    e.campaign = "spring".into();
    let json = bytes::Bytes::from(serde_json::to_vec(&e).unwrap());
    let s = ShipEvent::parse(json.clone()).unwrap();
    assert_eq!(
        (s.id(), s.kind(), s.tenant()),
        (e.id.as_str(), "flushed", "acme \"eu\"")
    );
    assert_eq!((s.class(), s.campaign()), ("bulk", "spring"));
    assert_eq!((s.time_us, s.json), (e.time_us, json));
    for bad in [
        "",
        "[]",
        "{}",
        "{\"id\":\"x\"}",
        "not json",
        "{\"id\":3,\"type\":\"x\"}",
    ] {
        assert!(
            ShipEvent::parse(bytes::Bytes::from(bad)).is_none(),
            "{bad:?} is not an event"
        );
    }
}

/// With `max_backlog_bytes`, a destination that stays down is moved on past whole segments of
/// its oldest events (counted and logged) instead of holding the outbox's disk: what it gets
/// afterwards is every event from a segment start on, and skipped + delivered = appended.
#[tokio::test(start_paused = true)]
async fn a_destination_down_for_long_skips_its_oldest_events_past_max_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, mut a) = Outbox::open(tmp.path(), 4096, &key()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        got: got.clone(),
        fail_first: 6,
        refuse_id: "",
    };
    let running = spawn_runner(
        &o,
        fake,
        RunnerOptions {
            max_backlog_bytes: 8192,
            ..opts("slow", 10)
        },
    );
    let append = |a: &mut super::outbox::Appender, from: u64| {
        let mut buf = Vec::new();
        for i in from..from + 10 {
            buf.extend(line(i, "delivered"));
        }
        a.append(&buf, 10).unwrap();
    };
    append(&mut a, 0);
    let retries = running.metrics.retries.with_label_values(&["slow"]);
    while retries.get() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Down, and now far behind: 300 events in segments of 4 KiB.
    for from in (10..300).step_by(10) {
        append(&mut a, from);
    }
    assert!(o.end().byte > 4 * 8192, "{:?}", o.end());
    let metrics = running.until_caught_up(&o).await;
    let got: Vec<String> = got.lock().unwrap().concat();
    let skipped = metrics.skipped.with_label_values(&["slow"]).get();
    assert!(
        skipped >= 10,
        "the first batch, at least, was skipped: {skipped}"
    );
    assert_eq!(skipped + got.len() as u64, 300, "none lost silently");
    let first: u64 = got[0][1..].parse().unwrap();
    let want: Vec<String> = (first..300).map(|i| format!("e{i}")).collect();
    assert_eq!(got, want, "everything from the skip point on, in order");
    assert_eq!(o.load_cursor("slow"), Some(o.end()));
}
