//! One destination's loop: read from its cursor, keep the events it takes, hand them over in
//! batches, retry with backoff, and move the cursor only after the destination took them.
//!
//! Owns: the cursor of one destination, its retry timing, its metrics. Never does: write to
//! the outbox, or know how a destination talks (that is the [`Destination`]'s).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::metrics::ShipMetrics;
use super::outbox::{Outbox, Pos};
use crate::config::ship::ShipFilter;

/// One event as a destination receives it: the JSON exactly as stored, and the fields
/// destinations route on.
///
/// The routing fields are spans of `json` (no copy, no allocation: a destination reads
/// thousands of events a second and most never look past the type); only a value holding
/// JSON escapes is unescaped, into `unescaped`.
#[derive(Debug, Clone)]
pub struct ShipEvent {
    pub json: Bytes,
    fields: [Span; FIELDS],
    unescaped: String,
    pub time_us: u64,
}

/// Where one routing field's text is: `from..to` of the JSON, or of `unescaped` when `own`.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    from: u32,
    to: u32,
    own: bool,
}

const FIELDS: usize = 5;
const ID: usize = 0;
const KIND: usize = 1;
const TENANT: usize = 2;
const CLASS: usize = 3;
const CAMPAIGN: usize = 4;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Id,
    #[serde(rename = "type")]
    Kind,
    Tenant,
    Class,
    Campaign,
    TimeUs,
    #[serde(other)]
    Other,
}

/// A string value, borrowed from the line when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Reads a line's object up to its `type` field and stops there: Gannet serialises the
/// common fields first and the event kind's own (flattened after `type`) last, so most of a
/// line's bytes are never parsed. Deserialising the whole line for five fields was ~0.8% of
/// Gannet's CPU with RabbitMQ shipping on.
struct HeadVisitor<'h> {
    json: &'h [u8],
    event: &'h mut ShipEvent,
    typed: &'h mut bool,
}

impl HeadVisitor<'_> {
    fn set(&mut self, field: usize, text: Cow<'_, str>) {
        // A borrowed value is a slice of the line itself: keep where it is.
        let within = (text.as_ptr() as usize)
            .checked_sub(self.json.as_ptr() as usize)
            .filter(|from| from + text.len() <= self.json.len());
        let span = match (&text, within) {
            (Cow::Borrowed(_), Some(from)) => Span {
                from: from as u32,
                to: (from + text.len()) as u32,
                own: false,
            },
            _ => {
                let from = self.event.unescaped.len();
                self.event.unescaped.push_str(&text);
                Span {
                    from: from as u32,
                    to: self.event.unescaped.len() as u32,
                    own: true,
                }
            }
        };
        self.event.fields[field] = span;
    }
}

impl<'de> serde::de::Visitor<'de> for HeadVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(mut self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            let field = match key {
                Key::Id => ID,
                Key::Tenant => TENANT,
                Key::Class => CLASS,
                Key::Campaign => CAMPAIGN,
                Key::Kind => KIND,
                Key::TimeUs => {
                    self.event.time_us = map.next_value()?;
                    continue;
                }
                Key::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            let text = map.next_value::<Text>()?.0;
            self.set(field, text);
            if field == KIND {
                *self.typed = true;
                // Leaving the map early makes serde_json report the unread rest as an
                // error; `typed` tells the caller that is expected.
                return Ok(());
            }
        }
        Ok(())
    }
}

impl ShipEvent {
    /// Read the routing fields of a stored line; None for a line that is not an event (not
    /// a JSON object, or one without a `type`).
    pub fn parse(json: Bytes) -> Option<ShipEvent> {
        let mut event = ShipEvent::unparsed(json.clone());
        let mut typed = false;
        let mut de = serde_json::Deserializer::from_slice(&json);
        // An error after `type` is the unread rest (see HeadVisitor); one before it, or no
        // `type` at all, is a line that is not an event.
        let _ = serde::Deserializer::deserialize_map(
            &mut de,
            HeadVisitor {
                json: &json,
                event: &mut event,
                typed: &mut typed,
            },
        );
        typed.then_some(event)
    }

    /// The event with its JSON only (routing fields empty).
    fn unparsed(json: Bytes) -> ShipEvent {
        ShipEvent {
            json,
            fields: [Span::default(); FIELDS],
            unescaped: String::new(),
            time_us: 0,
        }
    }

    fn field(&self, f: usize) -> &str {
        let Span { from, to, own } = self.fields[f];
        let range = from as usize..to as usize;
        if own {
            self.unescaped.get(range).unwrap_or("")
        } else {
            // Valid UTF-8: it was read as a &str from these bytes.
            self.json
                .get(range)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("")
        }
    }

    /// The event's stable id (receivers deduplicate on it).
    pub fn id(&self) -> &str {
        self.field(ID)
    }

    /// The event type (`delivered`, `bounced`, ...).
    pub fn kind(&self) -> &str {
        self.field(KIND)
    }

    pub fn tenant(&self) -> &str {
        self.field(TENANT)
    }

    pub fn class(&self) -> &str {
        self.field(CLASS)
    }

    pub fn campaign(&self) -> &str {
        self.field(CAMPAIGN)
    }
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Try the same batch again later (timeouts, 5xx, 429, a broker that is down).
    #[error("{reason}")]
    Retry {
        reason: String,
        /// The destination asked for this wait (HTTP `Retry-After`).
        after: Option<Duration>,
    },
    /// The destination refused the batch for good (HTTP 4xx other than 408/429): counted
    /// as failed, logged, and skipped.
    #[error("{reason}")]
    Refused { reason: String },
}

/// A place events are shipped to.
pub trait Destination: Send {
    /// Hand over `batch` (in outbox order). Ok only when the destination has taken all of it
    /// (durably, as far as it can say so).
    fn send<'a>(&'a mut self, batch: &'a [ShipEvent]) -> BoxFuture<'a, Result<(), SendError>>;

    /// Called when nothing arrived for a while (hourly rotation of a quiet file).
    fn idle(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// False for a destination that only passes each event's JSON on: then, unless a filter
    /// needs them, the routing fields are read from the first event of each batch only (its
    /// time for the lag gauge, its id for logs) and left empty in the others.
    fn needs_fields(&self) -> bool {
        true
    }
}

/// How one runner batches and retries.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub name: String,
    pub filter: ShipFilter,
    pub batch_size: usize,
    pub max_delay: Duration,
    pub max_backoff: Duration,
    /// Skip the oldest events past this many bytes behind; 0 = never (see
    /// `max_backlog_bytes` in the config).
    pub max_backlog_bytes: u64,
}

/// What housekeeping reads of a runner (lowest cursor for compaction, gauges).
pub struct RunnerState {
    pub name: String,
    cursor_byte: AtomicU64,
    cursor_event: AtomicU64,
    /// `time_us` of the oldest event handed over and not yet taken; 0 when none.
    oldest_unsent_us: AtomicU64,
}

impl RunnerState {
    pub fn cursor(&self) -> Pos {
        Pos {
            byte: self.cursor_byte.load(Ordering::Acquire),
            event: self.cursor_event.load(Ordering::Acquire),
        }
    }

    fn set_cursor(&self, p: Pos) {
        self.cursor_event.store(p.event, Ordering::Release);
        self.cursor_byte.store(p.byte, Ordering::Release);
    }

    /// Seconds the oldest event not yet taken has waited (0 when caught up).
    pub fn lag_seconds(&self) -> f64 {
        let t = self.oldest_unsent_us.load(Ordering::Acquire);
        if t == 0 {
            return 0.0;
        }
        (now_us().saturating_sub(t)) as f64 / 1e6
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// The starting cursor of `name`: saved, else the end (a new destination takes events from
/// now on). Blocking.
pub fn initial_cursor(outbox: &Outbox, name: &str) -> std::io::Result<Pos> {
    match outbox.load_cursor(name) {
        Some(p) => Ok(p),
        None => {
            let end = outbox.end();
            outbox.save_cursor(name, end)?;
            Ok(end)
        }
    }
}

/// Register the runner's state at `at` (before housekeeping starts).
pub fn state(name: &str, at: Pos) -> Arc<RunnerState> {
    Arc::new(RunnerState {
        name: name.to_string(),
        cursor_byte: AtomicU64::new(at.byte),
        cursor_event: AtomicU64::new(at.event),
        oldest_unsent_us: AtomicU64::new(0),
    })
}

fn takes(filter: &ShipFilter, e: &ShipEvent) -> bool {
    (filter.events.is_empty() || filter.events.iter().any(|k| k == e.kind()))
        && filter.tenant.as_deref().is_none_or(|t| t == e.tenant())
}

/// Exponential backoff from 1 s to `max`, "equal jitter": half fixed, half random, so many
/// endpoints that failed together do not retry together.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(20))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// How often a busy destination's cursor file is rewritten. A batch taken since the last save
/// is sent again after a crash (receivers deduplicate on the id); writing the file after every
/// batch cost four syscalls and a thread hop per batch per destination. The cursor is also
/// saved whenever the destination has caught up and at every stop.
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a started batch that is not full looks for more lines before its `max_delay`:
/// a full batch goes at most this late.
const FILL_LOOK: Duration = Duration::from_millis(50);

/// Run one destination until `stop`. What it has not confirmed, and what it confirmed within
/// [`CURSOR_SAVE_INTERVAL`] before a crash, is sent again after a restart.
pub async fn run(
    outbox: Outbox,
    dest: Box<dyn Destination>,
    opts: RunnerOptions,
    st: Arc<RunnerState>,
    metrics: ShipMetrics,
    stop: CancellationToken,
) {
    let mut dest = dest;
    let name = opts.name.clone();
    let saved = run_batches(&outbox, dest.as_mut(), opts, &st, metrics, stop, None).await;
    if st.cursor() != saved {
        save(&outbox, &name, st.cursor()).await;
    }
}

/// [`run`] over an outbox nothing appends to any more, until the destination has taken
/// everything it holds: returns the destination then, None when `stop` came first (the
/// cursor is saved either way).
pub async fn drain(
    outbox: Outbox,
    mut dest: Box<dyn Destination>,
    opts: RunnerOptions,
    st: Arc<RunnerState>,
    metrics: ShipMetrics,
    stop: CancellationToken,
) -> Option<Box<dyn Destination>> {
    let name = opts.name.clone();
    let end = outbox.end();
    let saved = run_batches(&outbox, dest.as_mut(), opts, &st, metrics, stop, Some(end)).await;
    if st.cursor() != saved {
        save(&outbox, &name, st.cursor()).await;
    }
    (st.cursor().byte >= end.byte).then_some(dest)
}

/// The batches of [`run`], until `stop` (or, with `until`, once the cursor reached it);
/// returns the cursor last written to the cursor file.
async fn run_batches(
    outbox: &Outbox,
    dest: &mut dyn Destination,
    opts: RunnerOptions,
    st: &RunnerState,
    metrics: ShipMetrics,
    stop: CancellationToken,
    until: Option<Pos>,
) -> Pos {
    let name = opts.name.clone();
    let sent = metrics.sent.with_label_values(&[&name]);
    let failed = metrics.failed.with_label_values(&[&name]);
    let retries = metrics.retries.with_label_values(&[&name]);
    let skipped = metrics.skipped.with_label_values(&[&name]);
    let mut cursor = st.cursor();
    let mut saved = cursor;
    let mut saved_at = tokio::time::Instant::now();
    let mut reader = Some(outbox.reader(cursor));
    let mut end_rx = outbox.watch_end();
    let idle_every = Duration::from_secs(30);
    let fields =
        dest.needs_fields() || !opts.filter.events.is_empty() || opts.filter.tenant.is_some();
    'batches: loop {
        if let Some(to) = too_far_behind(outbox, cursor, opts.max_backlog_bytes) {
            skip(&name, &skipped, cursor, to, opts.max_backlog_bytes);
            cursor = to;
            st.set_cursor(cursor);
            reader = Some(outbox.reader(cursor));
            save(outbox, &name, cursor).await;
            (saved, saved_at) = (cursor, tokio::time::Instant::now());
        }
        // Gather a batch: what is there, then wait up to max_delay for more to fill it.
        let mut batch: Vec<ShipEvent> = Vec::new();
        let mut next = cursor;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let end = *end_rx.borrow_and_update();
            let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let want = opts.batch_size - batch.len();
            // While a started batch waits for `max_delay`, new lines are read once they can
            // fill it or at the deadline, not at every outbox commit (each read is a hop to a
            // blocking thread, and under load the outbox commits every few milliseconds).
            let read_now =
                batch.is_empty() || due || end.event.saturating_sub(next.event) >= want as u64;
            if next.byte < end.byte && read_now {
                // A destination that keeps up finds its lines in memory; otherwise they are
                // read from the files on a blocking thread.
                let recent = reader
                    .as_mut()
                    .expect("reader is put back after each read")
                    .read_recent(want, end);
                let lines = match recent {
                    Some(lines) => Ok(lines),
                    None => {
                        let mut r = reader.take().expect("reader is put back after each read");
                        let res = tokio::task::spawn_blocking(move || {
                            let lines = r.read(want, end);
                            (r, lines)
                        })
                        .await;
                        let (r, lines) = match res {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!(target: "gannet::ship", destination = %name, error = %e,
                                    "outbox reader task failed; this destination stops until restart");
                                return saved;
                            }
                        };
                        reader = Some(r);
                        lines
                    }
                };
                let lines = match lines {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(target: "gannet::ship", destination = %name, error = %e,
                            "cannot read the outbox; retrying in 1s");
                        *reader.as_mut().expect("just put back") = outbox.reader(next);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = stop.cancelled() => return saved,
                        }
                    }
                };
                let read_to = reader.as_ref().expect("put back above").pos();
                if lines.is_empty() && read_to.byte > next.byte {
                    // Only erased (shredded) or damaged lines: step over them.
                    next = read_to;
                    continue;
                }
                if lines.is_empty() {
                    // Nothing readable yet (a line still being written): look again shortly.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                        _ = stop.cancelled() => return saved,
                    }
                }
                // At most `want` lines: the batch never overflows.
                for l in lines {
                    next = l.next;
                    if !fields && !batch.is_empty() {
                        // Every line the outbox opens is an event Gannet serialised (a sealed
                        // line is authenticated), so the others of the batch are not read.
                        batch.push(ShipEvent::unparsed(l.json));
                        continue;
                    }
                    match ShipEvent::parse(l.json) {
                        Some(e) if takes(&opts.filter, &e) => batch.push(e),
                        Some(_) => {}
                        None => tracing::warn!(target: "gannet::ship", destination = %name,
                            "outbox line is not an event; skipped"),
                    }
                }
                if batch.len() >= opts.batch_size {
                    break;
                }
                continue;
            }
            if batch.is_empty() {
                if next != cursor {
                    // Only events this destination does not take: move on quietly.
                    cursor = next;
                    st.set_cursor(cursor);
                }
                if until.is_some_and(|u| cursor.byte >= u.byte) {
                    return saved;
                }
                // Caught up: the cursor file catches up too, within the save interval.
                let save_due = saved_at + CURSOR_SAVE_INTERVAL;
                tokio::select! {
                    r = end_rx.changed() => if r.is_err() { return saved },
                    _ = tokio::time::sleep_until(save_due), if saved != cursor => {
                        save(outbox, &name, cursor).await;
                        (saved, saved_at) = (cursor, tokio::time::Instant::now());
                    }
                    _ = tokio::time::sleep(idle_every) => dest.idle().await,
                    _ = stop.cancelled() => return saved,
                }
                continue;
            }
            if due {
                break;
            }
            let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + opts.max_delay);
            // A started batch looks for more every FILL_LOOK (and at the deadline, when what
            // arrived meanwhile is read and the batch goes), not at every outbox commit: under
            // load the journal commits every 10 ms or so, and a wake-up per commit was up to a
            // hundred a second per destination, most for nothing.
            let look = (tokio::time::Instant::now() + FILL_LOOK).min(d);
            tokio::select! {
                _ = tokio::time::sleep_until(look) => {}
                _ = stop.cancelled() => return saved,
            }
        }
        if batch.is_empty() {
            continue;
        }
        st.oldest_unsent_us
            .store(batch[0].time_us.max(1), Ordering::Release);
        let mut failures = 0u32;
        loop {
            let r = tokio::select! {
                r = dest.send(&batch) => r,
                _ = stop.cancelled() => return saved,
            };
            match r {
                Ok(()) => {
                    sent.inc_by(batch.len() as u64);
                    break;
                }
                Err(SendError::Refused { reason }) => {
                    failed.inc_by(batch.len() as u64);
                    tracing::error!(target: "gannet::ship", destination = %name,
                        events = batch.len(), first_id = %batch[0].id(), %reason,
                        "destination refused the batch for good; not retried (fix the receiver, the events stay in the send log)");
                    break;
                }
                Err(SendError::Retry { reason, after }) => {
                    retries.inc();
                    let mut wait = backoff(failures, opts.max_backoff);
                    if let Some(a) = after {
                        wait = wait.max(a.min(Duration::from_secs(3600)));
                    }
                    failures = failures.saturating_add(1);
                    tracing::warn!(target: "gannet::ship", destination = %name,
                        events = batch.len(), %reason, retry_in_ms = wait.as_millis() as u64,
                        "destination did not take the batch; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return saved,
                    }
                    if too_far_behind(outbox, cursor, opts.max_backlog_bytes).is_some() {
                        // Down for long: the batch goes with what is skipped at the top.
                        st.oldest_unsent_us.store(0, Ordering::Release);
                        continue 'batches;
                    }
                }
            }
        }
        cursor = next;
        st.set_cursor(cursor);
        st.oldest_unsent_us.store(0, Ordering::Release);
        if saved_at.elapsed() >= CURSOR_SAVE_INTERVAL {
            save(outbox, &name, cursor).await;
            (saved, saved_at) = (cursor, tokio::time::Instant::now());
        }
    }
}

/// Where a destination more than `max` bytes behind goes on (whole segments skipped, so
/// it is left at most `max` behind, or one segment when that is larger); None within the
/// limit, or with no limit (0).
fn too_far_behind(outbox: &Outbox, cursor: Pos, max: u64) -> Option<Pos> {
    if max == 0 || outbox.end().byte.saturating_sub(cursor.byte) <= max {
        return None;
    }
    let to = outbox.segment_start_from(outbox.end().byte - max);
    (to.byte > cursor.byte).then_some(to)
}

fn skip(name: &str, skipped: &prometheus::IntCounter, from: Pos, to: Pos, max: u64) {
    let events = to.event - from.event;
    skipped.inc_by(events);
    tracing::error!(target: "gannet::ship", destination = %name, events, bytes = to.byte - from.byte,
        max_backlog_bytes = max, from_event = from.event, to_event = to.event,
        "destination fell more than max_backlog_bytes behind; its oldest events were skipped (they stay in the send log; raise max_backlog_bytes or fix the receiver)");
}

async fn save(outbox: &Outbox, name: &str, p: Pos) {
    let o = outbox.clone();
    let n = name.to_string();
    match tokio::task::spawn_blocking(move || o.save_cursor(&n, p)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(target: "gannet::ship", destination = %name, error = %e,
            "cannot save the cursor; events may be sent again after a restart"),
        Err(e) => tracing::warn!(target: "gannet::ship", destination = %name, error = %e,
            "cursor task failed"),
    }
}
