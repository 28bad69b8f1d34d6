//! Hands the memory the allocator keeps free back to the operating system.
//!
//! glibc's malloc keeps what a burst freed (a million queued outcomes waiting for the send
//! log, a queue released all at once) in its arenas for reuse; only the free top of each heap
//! is ever returned by itself, so RSS stays at the burst's peak long after the work is done
//! (~60 MB of the ~350 MB measured with 1M recipients queued, issue 21 item 6).
//! Every [`CHECK_EVERY`] this task asks the allocator how much it holds free
//! (`mallinfo2`) and, past [`TRIM_ABOVE`], calls `malloc_trim(0)`, which returns every whole
//! free page of every arena (`madvise(MADV_DONTNEED)`). Both walk the arenas' free lists, so
//! they run on a blocking thread and only as often as that.
//!
//! Hand-written rather than a crate: two libc calls; no maintained crate wraps them, and an
//! allocator of its own (jemalloc, mimalloc) would change every hot path's costs to fix this.
//!
//! Owns nothing but its timer; never changes what anything allocates.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Free bytes held by the allocator past which they are given back.
pub const TRIM_ABOVE: usize = 16 << 20;

/// Free bytes the allocator holds in its arenas (glibc's `mallinfo2().fordblks`).
fn free_heap_bytes() -> usize {
    crate::metrics::gauges::heap().map_or(0, |h| h.free as usize)
}

/// Give the free pages back; true when the allocator returned any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim is safe to call at any time from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// One look: trim when more than `above` bytes are free. Blocking.
fn check(above: usize) {
    let free = free_heap_bytes();
    if free <= above {
        return;
    }
    let before = crate::metrics::gauges::resident_bytes().unwrap_or(0);
    let returned = trim();
    let after = crate::metrics::gauges::resident_bytes().unwrap_or(0);
    tracing::info!(
        target: "gannet::memory",
        heap_free_bytes = free,
        rss_before = before,
        rss_after = after,
        returned,
        "returned free heap memory to the operating system"
    );
}

/// Run until `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = tokio::task::spawn_blocking(|| check(TRIM_ABOVE)).await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
