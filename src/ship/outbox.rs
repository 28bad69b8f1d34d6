//! The durable outbox: append-only segment files of events (one JSON object per line) that
//! every destination reads at its own cursor.
//!
//! Owns: the segment files and their list, the durable end position (published to readers
//! through a `watch` channel), cursor files, and deleting segments every destination has
//! passed. Never does: talk to a destination, or decide what one takes.
//!
//! Written by hand (not sled): sled's flush is not durable (CRATES.md), and what is needed is
//! small: append + fdatasync of whole lines, read forward from a position, drop whole files.
//!
//! Layout under the outbox directory: `{byte:020}-{event:020}.seg` (the position of the
//! segment's first line: bytes and events since the outbox was created), `cursors/{name}`
//! (`"{byte} {event}\n"`: where that destination goes on). A line is durable, and visible to
//! readers, only after the fdatasync that covers it; a torn last line (a crash mid-write) was
//! never acknowledged to the bus and is cut off at the next start.
//!
//! Lines are sealed at rest (`seal`: one outbox key from the master key, `key-check` holds its
//! fingerprint and another key is refused at open); readers get the clear JSON. GDPR erasure
//! reaches the outbox through [`Outbox::shred`], which overwrites the person's pending lines
//! in place with `#` (same length, so every position and count stays true) and fdatasyncs;
//! readers step over shredded lines.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::seal::{LineKey, Opened, SHREDDED};
use crate::sendlog::MasterKey;

/// A place in the outbox: bytes and lines since it was created. Both only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub byte: u64,
    pub event: u64,
}

/// Why the outbox cannot be opened or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "outbox {path}: {source} (check the directory exists and is writable, `[outbox] path`)"
    )]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] crate::sendlog::keys::KeyCheckError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct Segment {
    start: Pos,
    path: PathBuf,
}

/// The cheap, cloneable handle readers, the appender and housekeeping share.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// Segments oldest first; the last one is the one being appended to. A std Mutex: held
    /// only to look up or change the list, never across I/O of a whole batch.
    segments: Mutex<Vec<Segment>>,
    /// The durable end: everything before it is fsynced and may be read.
    end: watch::Sender<Pos>,
    /// The time of the newest event on disk when the outbox was opened (see
    /// [`Outbox::newest_at_open_us`]).
    newest_at_open_us: Option<u64>,
    key: LineKey,
    /// Held while an erasure rewrites lines, so two erasures do not interleave.
    shredding: Mutex<()>,
    /// The last committed batches in clear (see [`Recent`]). A std Mutex: held to push or
    /// drop a batch and to copy out a reader's lines, never across I/O.
    recent: Mutex<Recent>,
    /// Every reader compaction waits for, and the oldest position it still needs (see
    /// [`Outbox::hold`]). A std Mutex: held to update or read the map, never across I/O.
    holds: Mutex<std::collections::BTreeMap<String, Pos>>,
    /// People being erased: lines naming them are written shredded until the deadline (see
    /// [`Outbox::shred_arriving`]). Empty nearly always; looked at once per batch.
    arriving: Mutex<Vec<(Vec<u8>, std::time::Instant)>>,
}

/// At most this many bytes of clear lines are kept in memory for readers that keep up.
const RECENT_BYTES: usize = 4 << 20;

/// The batches committed last, in clear, so a destination that keeps up (the usual case)
/// reads its lines from memory: no read on a blocking thread, no base64 decoding, no
/// opening of the seal, once per destination per event. A destination further behind than
/// [`RECENT_BYTES`] reads the files. Erasure empties it (before and after it overwrites
/// lines on disk), so an erased event is not shipped from here either.
#[derive(Default)]
struct Recent {
    /// Oldest first, each starting where the one before ended.
    batches: std::collections::VecDeque<RecentBatch>,
    bytes: usize,
}

struct RecentBatch {
    start: Pos,
    /// The clear JSON lines, each ended by `\n` (the appender's buffer, shared).
    clear: Bytes,
    /// Per line: where it ends in `clear` (before its newline) and where the next line
    /// starts in the outbox.
    lines: Vec<(usize, Pos)>,
}

impl RecentBatch {
    fn end(&self) -> Pos {
        self.lines.last().map_or(self.start, |l| l.1)
    }
}

/// Owned by the one task that appends (one writer per outbox).
pub struct Appender {
    outbox: Outbox,
    file: File,
    size: u64,
    end: Pos,
    segment_bytes: u64,
    /// The batch being written, sealed (reused between batches).
    sealed: Vec<u8>,
}

fn segment_name(p: Pos) -> String {
    format!("{:020}-{:020}.seg", p.byte, p.event)
}

fn parse_segment_name(name: &str) -> Option<Pos> {
    let stem = name.strip_suffix(".seg")?;
    let (b, e) = stem.split_once('-')?;
    Some(Pos {
        byte: b.parse().ok()?,
        event: e.parse().ok()?,
    })
}

/// `time_us` of the last line of `whole` (complete lines), if it has one that opens and
/// parses.
fn last_line_time_us(whole: &[u8], key: &LineKey) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Time {
        time_us: u64,
    }
    let body = whole.strip_suffix(b"\n")?;
    let start = memchr::memrchr(b'\n', body).map_or(0, |i| i + 1);
    let Opened::Event(json) = key.open(&body[start..]) else {
        return None;
    };
    serde_json::from_slice::<Time>(&json)
        .ok()
        .map(|t| t.time_us)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Outbox {
    /// Where the master key's fingerprint is kept (what `[storage] key_file` protects).
    pub fn key_check_path(dir: &Path) -> PathBuf {
        dir.join("key-check")
    }

    /// Open (or create) the outbox in `dir`, sealing under `key` (refused when the outbox
    /// was written with another one), cutting a torn last line. Blocking.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        key: &MasterKey,
    ) -> Result<(Outbox, Appender), OutboxError> {
        fs::create_dir_all(dir.join("cursors")).map_err(io_err(dir))?;
        crate::sendlog::keys::check_key_file(
            &Outbox::key_check_path(dir),
            key,
            b"gannet/v1/outbox-key-check",
        )?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            if let Some(start) = name.to_str().and_then(parse_segment_name) {
                segments.push(Segment {
                    start,
                    path: entry.path(),
                });
            }
        }
        segments.sort_by_key(|s| s.start);
        if segments.is_empty() {
            let start = Pos::default();
            let path = dir.join(segment_name(start));
            File::create(&path).map_err(io_err(&path))?;
            sync_dir(dir).map_err(io_err(dir))?;
            segments.push(Segment { start, path });
        }
        let last = segments.last().cloned().expect("one segment at least");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(&last.path))?;
        let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < data.len() {
            tracing::warn!(target: "gannet::ship", path = %last.path.display(),
                bytes = data.len() - whole,
                "outbox: cutting an incomplete last line (written when the process stopped; it was never acknowledged)");
            file.set_len(whole as u64).map_err(io_err(&last.path))?;
            file.sync_data().map_err(io_err(&last.path))?;
        }
        let lines = memchr::memchr_iter(b'\n', &data[..whole]).count() as u64;
        let line_key = LineKey::new(key);
        let newest_at_open_us = match last_line_time_us(&data[..whole], &line_key) {
            Some(t) => Some(t),
            // An empty segment after others was created when the one before it filled up,
            // right after that one's last line.
            None if last.start.event > 0 => fs::metadata(&last.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_micros() as u64),
            None => None,
        };
        let end = Pos {
            byte: last.start.byte + whole as u64,
            event: last.start.event + lines,
        };
        let (tx, _) = watch::channel(end);
        let outbox = Outbox {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                segments: Mutex::new(segments),
                end: tx,
                newest_at_open_us,
                key: line_key,
                shredding: Mutex::new(()),
                recent: Mutex::new(Recent::default()),
                holds: Mutex::default(),
                arriving: Mutex::default(),
            }),
        };
        let appender = Appender {
            outbox: outbox.clone(),
            file,
            size: whole as u64,
            end,
            segment_bytes,
            sealed: Vec::new(),
        };
        Ok((outbox, appender))
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.shared
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.shared.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time (`time_us`) of the newest event the outbox held when it was opened; None
    /// when it had never held one. At start-up, what a replay of possibly lost events starts
    /// from (`intake::received`).
    pub fn newest_at_open_us(&self) -> Option<u64> {
        self.shared.newest_at_open_us
    }

    /// The durable end now.
    pub fn end(&self) -> Pos {
        *self.shared.end.borrow()
    }

    /// Told every time the durable end moves.
    pub fn watch_end(&self) -> watch::Receiver<Pos> {
        self.shared.end.subscribe()
    }

    /// The oldest position still held.
    pub fn start(&self) -> Pos {
        self.segments().first().map(|s| s.start).unwrap_or_default()
    }

    /// Where a reader can jump to leave out what lies before `byte`: the start of the oldest
    /// segment beginning at or after it, else of the newest segment (the one appended to).
    pub fn segment_start_from(&self, byte: u64) -> Pos {
        let segs = self.segments();
        segs.iter()
            .find(|s| s.start.byte >= byte)
            .or(segs.last())
            .map(|s| s.start)
            .unwrap_or_default()
    }

    /// Bytes held in segment files (what some destination has not passed yet, give or take
    /// one segment).
    pub fn retained_bytes(&self) -> u64 {
        self.end().byte - self.start().byte
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Reader `holder` still needs everything from `from` on: [`Outbox::compact_held`] keeps
    /// it. One journal serves several readers (the send log's ingester and every shipping
    /// destination), so each says where it stands and segments go only once all have passed
    /// them. Register every reader before the first compaction (at open): a reader not yet
    /// registered is not waited for.
    pub fn hold(&self, holder: &str, from: Pos) {
        let mut h = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        match h.get_mut(holder) {
            Some(p) => *p = from,
            None => {
                h.insert(holder.to_string(), from);
            }
        }
    }

    /// Delete every segment every registered reader ([`Outbox::hold`]) has passed; nothing
    /// when none is registered. Returns how many went. Blocking.
    pub fn compact_held(&self) -> io::Result<usize> {
        let min = {
            let h = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
            h.values().min().copied()
        };
        match min {
            Some(min) => self.compact(min),
            None => Ok(0),
        }
    }

    /// Delete every segment that ends at or before `min` (the lowest position any reader
    /// needs). The segment being appended to stays. Blocking.
    pub fn compact(&self, min: Pos) -> io::Result<usize> {
        let doomed: Vec<PathBuf> = {
            let mut segs = self.segments();
            let mut doomed = Vec::new();
            while segs.len() > 1 && segs[1].start.byte <= min.byte {
                doomed.push(segs.remove(0).path);
            }
            doomed
        };
        for p in &doomed {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(doomed.len())
    }

    /// The saved cursor of destination `name`, kept within what the outbox holds: None when
    /// it has none yet (a new destination). A damaged cursor file starts at the oldest
    /// event held (duplicates, never a gap). Blocking.
    pub fn load_cursor(&self, name: &str) -> Option<Pos> {
        let path = self.cursor_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(target: "gannet::ship", path = %path.display(), error = %e,
                    "cannot read the cursor; starting at the oldest event held");
                return Some(self.start());
            }
        };
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        let p = match (it.next(), it.next()) {
            (Some(Ok(byte)), Some(Ok(event))) => Pos { byte, event },
            _ => {
                tracing::warn!(target: "gannet::ship", path = %path.display(),
                    "damaged cursor file; starting at the oldest event held");
                return Some(self.start());
            }
        };
        Some(p.clamp(self.start(), self.end()))
    }

    /// Save destination `name`'s cursor (write + rename; not fsynced: losing it after a crash
    /// means sending some events again, which at-least-once allows). Blocking.
    pub fn save_cursor(&self, name: &str, p: Pos) -> io::Result<()> {
        let path = self.cursor_path(name);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{} {}\n", p.byte, p.event))?;
        fs::rename(&tmp, &path)
    }

    fn cursor_path(&self, name: &str) -> PathBuf {
        self.shared.dir.join("cursors").join(name)
    }

    /// Names of every saved cursor (to warn about destinations no longer configured).
    pub fn cursor_names(&self) -> Vec<String> {
        fs::read_dir(self.shared.dir.join("cursors"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Write the lines of events naming `needle` (a lowercased address) that are appended
    /// within `window` from now shredded: nothing readable of them reaches the disk or a
    /// destination. An erasure calls it before it shreds what is already written, so the
    /// events of deliveries in flight to the person, and of their purge, cannot slip in
    /// after that pass. (The send log's ingester takes its events from memory, so it still
    /// records them, sealed under the person's key and shredded with it; only a restart
    /// before it took them would leave them out.)
    pub fn shred_arriving(&self, needle: &[u8], window: std::time::Duration) {
        let mut a = self
            .shared
            .arriving
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        a.push((needle.to_vec(), std::time::Instant::now() + window));
    }

    /// `lines` with every line that names a person of [`Outbox::shred_arriving`] filled
    /// with [`SHREDDED`]; None when none does (the usual case: no erasure in the window).
    fn shred_arriving_in(&self, lines: &Bytes) -> Option<Bytes> {
        let needles: Vec<Vec<u8>> = {
            let mut a = self
                .shared
                .arriving
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if a.is_empty() {
                return None;
            }
            let now = std::time::Instant::now();
            a.retain(|(n, until)| *until > now && !n.is_empty());
            if a.is_empty() {
                return None;
            }
            a.iter().map(|(n, _)| n.clone()).collect()
        };
        let lower = lines.to_ascii_lowercase();
        let mut out: Option<Vec<u8>> = None;
        let mut at = 0;
        for nl in memchr::memchr_iter(b'\n', &lower) {
            let line = &lower[at..nl];
            if needles.iter().any(|n| names(line, n)) {
                out.get_or_insert_with(|| lines.to_vec())[at..nl].fill(SHREDDED);
            }
            at = nl + 1;
        }
        out.map(Bytes::from)
    }

    /// GDPR erasure: overwrite in place, with `#` and an fdatasync, every line held (up to
    /// the durable end) whose event mentions `needle` (lower-case; compared with the event's
    /// lower-cased JSON, so an address in any field or reply text counts). The person's events
    /// that no destination has taken yet are never shipped; positions do not move. Returns
    /// how many lines were shredded. Blocking.
    pub fn shred(&self, needle: &[u8]) -> io::Result<usize> {
        self.shred_until(needle, None)
    }

    /// [`Outbox::shred`] of the lines before `until` only (None: the durable end). The send
    /// log's journal shreds what its ingester has moved into SQLite, never a line it has not
    /// stored yet. Blocking.
    pub fn shred_until(&self, needle: &[u8], until: Option<Pos>) -> io::Result<usize> {
        let _one = self
            .shared
            .shredding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Readers take lines from the files from now on. Emptied again at the end: a batch
        // committed meanwhile at or before `end` has its lines shredded on disk below.
        *self.recent() = Recent::default();
        let end = until.map_or_else(|| self.end(), |u| u.min(self.end()));
        let segments: Vec<Segment> = self.segments().clone();
        let mut total = 0;
        for (i, seg) in segments.iter().enumerate() {
            let limit = segments
                .get(i + 1)
                .map_or(end.byte, |next| next.start.byte)
                .saturating_sub(seg.start.byte);
            let file = match OpenOptions::new().read(true).write(true).open(&seg.path) {
                Ok(f) => f,
                // Deleted meanwhile: every destination had passed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut data = Vec::new();
            (&file).take(limit).read_to_end(&mut data)?;
            let mut n = 0;
            let mut at = 0usize;
            for nl in memchr::memchr_iter(b'\n', &data) {
                let line = &data[at..nl];
                if let Opened::Event(json) = self.shared.key.open(line)
                    && names(&json.to_ascii_lowercase(), needle)
                {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(&vec![SHREDDED; line.len()], at as u64)?;
                    n += 1;
                }
                at = nl + 1;
            }
            if n > 0 {
                file.sync_data()?;
                total += n;
            }
        }
        *self.recent() = Recent::default();
        Ok(total)
    }

    /// A reader positioned at `at`.
    pub fn reader(&self, at: Pos) -> Reader {
        Reader {
            outbox: self.clone(),
            pos: at,
            file: None,
            buf: Vec::new(),
        }
    }
}

/// Whether an event's lower-cased JSON names the person `needle` (a lower-cased address) in
/// any field or reply text: what both erasure passes ([`Outbox::shred_until`] on what is
/// written, [`Outbox::shred_arriving`] on what arrives) compare. An empty needle names no one.
fn names(lower_json: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(lower_json, needle).is_some()
}

/// Events as the outbox's lines: one JSON object and `\n` each. An event that cannot be
/// written as JSON is logged and left out; returns the lines and how many there are.
pub fn encode_lines<'a>(
    events: impl IntoIterator<Item = &'a crate::events::Event>,
    log: &str,
) -> (Vec<u8>, u64) {
    let events = events.into_iter();
    // ~500 bytes per typical event: a batch's buffer grows once or twice, not per event.
    let mut buf = Vec::with_capacity(events.size_hint().0 * 512);
    let mut count = 0u64;
    for e in events {
        match serde_json::to_writer(&mut buf, e) {
            Ok(()) => {
                buf.push(b'\n');
                count += 1;
            }
            Err(err) => tracing::error!(error = %err, id = %e.id, log,
                "an event cannot be written as JSON; it is left out of this log"),
        }
    }
    (buf, count)
}

impl Appender {
    /// [`Appender::append`] on a blocking thread, retried until it succeeds: a failing disk is
    /// logged (as an `E`, whose message says what to check for this journal; `log` names it)
    /// and retried after 100 ms, doubling up
    /// to 10 s. The caller acks nothing meanwhile, so `EventBus::wait_durable` and `admit`
    /// hold the line. If the blocking task panics the appender is gone: this never returns and
    /// the events stay unacknowledged.
    pub async fn append_until_durable<E: From<OutboxError> + std::fmt::Display>(
        mut self,
        lines: Bytes,
        count: u64,
        log: &'static str,
    ) -> (Appender, Pos) {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let b = lines.clone();
            let r = tokio::task::spawn_blocking(move || {
                let r = self.append_shared(&b, count);
                (self, r)
            })
            .await;
            match r {
                Ok((a, Ok(end))) => return (a, end),
                Ok((a, Err(e))) => {
                    let e = E::from(e);
                    tracing::error!(error = %e, events = count, log,
                        "cannot append events; retrying (intake and queue state changes wait meanwhile)");
                    self = a;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
                Err(e) => {
                    tracing::error!(error = %e, log,
                        "the appender panicked; events are no longer recorded in this log");
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    }
}

impl Appender {
    /// Append whole lines of event JSON (`lines` ends in `\n`, holds `count` of them), each
    /// sealed, and fdatasync them; then readers may see them. Blocking.
    pub fn append(&mut self, lines: &[u8], count: u64) -> Result<Pos, OutboxError> {
        self.append_shared(&Bytes::copy_from_slice(lines), count)
    }

    /// [`Appender::append`] of a buffer the caller shares: the batch kept in clear for
    /// readers ([`Recent`]) is that buffer, not a copy of it. Blocking.
    pub fn append_shared(&mut self, lines: &Bytes, count: u64) -> Result<Pos, OutboxError> {
        if lines.is_empty() {
            return Ok(self.end);
        }
        let shredded = self.outbox.shred_arriving_in(lines);
        let lines = shredded.as_ref().unwrap_or(lines);
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.clear();
        let start = self.end;
        let mut ends = Vec::with_capacity(count as usize);
        let mut at = 0;
        for nl in memchr::memchr_iter(b'\n', lines) {
            let line = &lines[at..nl];
            if line.first() == Some(&SHREDDED) {
                // Written as erasure leaves a line: readers step over it.
                sealed.extend_from_slice(line);
            } else {
                self.outbox.shared.key.seal_into(line, &mut sealed);
            }
            sealed.push(b'\n');
            at = nl + 1;
            let next = Pos {
                byte: start.byte + sealed.len() as u64,
                event: start.event + ends.len() as u64 + 1,
            };
            ends.push((nl, next));
        }
        let r = self.append_sealed(&sealed, count, || RecentBatch {
            start,
            clear: lines.clone(),
            lines: ends,
        });
        self.sealed = sealed;
        r
    }

    fn append_sealed(
        &mut self,
        lines: &[u8],
        count: u64,
        recent: impl FnOnce() -> RecentBatch,
    ) -> Result<Pos, OutboxError> {
        if self.size > 0 && self.size + lines.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        let path = self.current_path();
        if let Err(e) = self
            .file
            .write_all(lines)
            .and_then(|()| self.file.sync_data())
        {
            // The file may hold part of the batch: cut back so the next try starts clean.
            let _ = self.file.set_len(self.size);
            return Err(OutboxError::Io { path, source: e });
        }
        self.size += lines.len() as u64;
        self.end = Pos {
            byte: self.end.byte + lines.len() as u64,
            event: self.end.event + count,
        };
        {
            // Before readers learn of the new end, so one woken by it finds the batch here.
            let batch = recent();
            let mut r = self.outbox.recent();
            if batch.end() == self.end && r.batches.back().is_none_or(|b| b.end() == batch.start) {
                r.bytes += batch.clear.len();
                r.batches.push_back(batch);
            } else {
                // Not contiguous (`count` did not match the lines): start over from here.
                *r = Recent::default();
            }
            while r.bytes > RECENT_BYTES && r.batches.len() > 1 {
                let old = r.batches.pop_front().expect("more than one");
                r.bytes -= old.clear.len();
            }
        }
        self.outbox.shared.end.send_replace(self.end);
        Ok(self.end)
    }

    fn current_path(&self) -> PathBuf {
        self.outbox
            .segments()
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    fn roll(&mut self) -> Result<(), OutboxError> {
        let dir = self.outbox.shared.dir.clone();
        let path = dir.join(segment_name(self.end));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(0).map_err(io_err(&path))?;
        sync_dir(&dir).map_err(io_err(&dir))?;
        self.outbox.segments().push(Segment {
            start: self.end,
            path,
        });
        self.file = file;
        self.size = 0;
        Ok(())
    }
}

/// One line read from the outbox: the event's JSON (without the newline) and where the next
/// line starts.
#[derive(Debug, Clone)]
pub struct Line {
    /// A slice of the shared clear batch when read from memory: every destination reading
    /// the same line shares one copy of it.
    pub json: Bytes,
    pub next: Pos,
}

/// Reads forward from a position; owned by one destination's runner.
pub struct Reader {
    outbox: Outbox,
    pos: Pos,
    /// The open segment: its start and the buffered file.
    file: Option<(Pos, BufReader<File>)>,
    buf: Vec<u8>,
}

impl Reader {
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// Up to `max` lines from the current position, never past `end`, from the batches
    /// committed last ([`Recent`]); None when the position is not among them (read the files
    /// with [`Reader::read`]). Never blocks: call it on the runtime.
    pub fn read_recent(&mut self, max: usize, end: Pos) -> Option<Vec<Line>> {
        let recent = self.outbox.recent();
        let first = recent
            .batches
            .partition_point(|b| b.end().byte <= self.pos.byte);
        let mut out = Vec::new();
        let mut pos = self.pos;
        for b in recent.batches.iter().skip(first) {
            if b.start.byte > pos.byte {
                break;
            }
            // The line that starts at `pos`.
            let mut i = b.lines.partition_point(|l| l.1.byte <= pos.byte);
            let starts_here = if i == 0 {
                b.start.byte == pos.byte
            } else {
                b.lines[i - 1].1.byte == pos.byte
            };
            if !starts_here {
                break;
            }
            while i < b.lines.len() && out.len() < max && b.lines[i].1.byte <= end.byte {
                let from = if i == 0 { 0 } else { b.lines[i - 1].0 + 1 };
                let (to, next) = b.lines[i];
                // A line shredded as it was written (an erasure's window) is stepped over.
                if b.clear.get(from) != Some(&SHREDDED) {
                    out.push(Line {
                        json: b.clear.slice(from..to),
                        next,
                    });
                }
                pos = next;
                i += 1;
            }
            if i < b.lines.len() {
                break;
            }
        }
        if out.is_empty() {
            return None;
        }
        drop(recent);
        self.pos = pos;
        // The open file's offset is stale now; the next read from the files reopens it.
        self.file = None;
        Some(out)
    }

    /// Up to `max` lines from the current position, never past the durable `end`. Blocking.
    pub fn read(&mut self, max: usize, end: Pos) -> io::Result<Vec<Line>> {
        let mut out = Vec::new();
        while out.len() < max && self.pos.byte < end.byte {
            if self.file.is_none() {
                let seg = {
                    let segs = self.outbox.segments();
                    // A position before the oldest segment (compacted): start at the oldest.
                    if let Some(first) = segs.first()
                        && self.pos.byte < first.start.byte
                    {
                        self.pos = first.start;
                    }
                    segs.iter()
                        .rev()
                        .find(|s| s.start.byte <= self.pos.byte)
                        .cloned()
                };
                let Some(seg) = seg else { break };
                let mut f = File::open(&seg.path)?;
                f.seek(SeekFrom::Start(self.pos.byte - seg.start.byte))?;
                self.file = Some((seg.start, BufReader::with_capacity(256 * 1024, f)));
            }
            let (_, r) = self.file.as_mut().expect("opened above");
            self.buf.clear();
            let n = r.read_until(b'\n', &mut self.buf)?;
            if n == 0 || self.buf.last() != Some(&b'\n') {
                // End of this segment: the next one starts here. (An unfinished line cannot
                // be seen: it is past `end`.)
                self.file = None;
                if n > 0 {
                    break;
                }
                let next_exists = self
                    .outbox
                    .segments()
                    .iter()
                    .any(|s| s.start.byte == self.pos.byte);
                if !next_exists {
                    break;
                }
                continue;
            }
            self.pos = Pos {
                byte: self.pos.byte + n as u64,
                event: self.pos.event + 1,
            };
            self.buf.pop();
            match self.outbox.shared.key.open(&self.buf) {
                Opened::Event(json) => out.push(Line {
                    json: Bytes::from(json),
                    next: self.pos,
                }),
                // Erased: nothing to ship; the position moves on.
                Opened::Shredded => {}
                Opened::Damaged => {
                    tracing::error!(target: "gannet::ship", event = self.pos.event - 1,
                        "outbox line cannot be opened (damaged); skipped");
                }
            }
        }
        Ok(out)
    }
}
