//! Gauges of state, set when `/metrics` is scraped: queue depth and oldest age per class, pool
//! and provider, suspensions, backoff and warm-up, the spool's disk, and this process's memory
//! and open files.
//!
//! Owns only the setting of those gauges from values handed in; the HTTP handler collects them
//! through the stages' handles (the queue's `depth()`, the shaping handles) and calls
//! [`system`] on a blocking thread (it reads files). Never does: keep state between scrapes.

use std::path::Path;

use super::Metrics;

/// One group of queued recipients, as the queue reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depth {
    pub class: String,
    pub pool: String,
    /// Shaping provider name, `other`, or `unrouted` (not yet resolved to a site).
    pub provider: String,
    /// `ready`, `scheduled`, `resolving`, `in-flight`, `suspended`.
    pub state: &'static str,
    pub recipients: usize,
    pub oldest_secs: u64,
}

impl Metrics {
    /// Replace the queue depth gauges with `rows` (groups no longer queued disappear).
    pub fn set_queue_depth(&self, rows: &[Depth]) {
        self.queue_depth.reset();
        self.queue_oldest.reset();
        for r in rows {
            self.queue_depth
                .with_label_values(&[&r.class, &r.pool, &r.provider, r.state])
                .add(r.recipients as i64);
            let oldest = self
                .queue_oldest
                .with_label_values(&[&r.class, &r.pool, &r.provider]);
            if r.oldest_secs as i64 > oldest.get() {
                oldest.set(r.oldest_secs as i64);
            }
        }
    }
}

impl Metrics {
    /// Set the warm-up gauges: (source, day of its schedule, days in the schedule).
    pub fn set_warmup_progress(&self, progress: &[(String, i64, usize)]) {
        for (source, day, days) in progress {
            self.warmup_day.with_label_values(&[source]).set(*day);
            self.warmup_schedule_days
                .with_label_values(&[source])
                .set(*days as i64);
        }
    }
}

/// Spool disk use and free space, resident memory and open files. Blocking (reads the spool
/// directory and /proc): call it from `spawn_blocking`.
pub fn system(m: &Metrics, spool_dir: &Path) {
    m.spool_used_bytes.set(dir_bytes(spool_dir) as i64);
    if let Ok(free) = fs2::available_space(spool_dir) {
        m.spool_free_bytes.set(free as i64);
    }
    if let Some(rss) = resident_bytes() {
        m.process_rss_bytes.set(rss as i64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        m.process_open_fds.set(fds.count() as i64);
    }
    if let Some(h) = heap() {
        m.heap_in_use_bytes.set(h.in_use as i64);
        m.heap_free_bytes.set(h.free as i64);
    }
}

/// What the allocator holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// In live allocations, including blocks large enough to get an mmap of their own.
    pub in_use: u64,
    /// Free in the arenas: counted in RSS until given back (`malloc_trim`).
    pub free: u64,
}

/// glibc's `mallinfo2` (Linux/glibc only; `None` elsewhere). It walks every arena under its
/// lock, so call it on a blocking thread and not per message. Hand-written: two libc fields,
/// no maintained crate wraps it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap() -> Option<Heap> {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let i = unsafe { libc::mallinfo2() };
    Some(Heap {
        in_use: (i.uordblks + i.hblkhd) as u64,
        free: i.fordblks as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap() -> Option<Heap> {
    None
}

/// Bytes of the files under `dir` (segments, index, send log...): a few large files, so a
/// walk per scrape is cheap.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Resident set size from the `VmRSS:` line of /proc/self/status (Linux, in kB). Hand-written
/// rather than the prometheus crate's `process` feature: that pulls in procfs for two numbers
/// read from two files.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
