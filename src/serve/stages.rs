//! Start-up stage timing: one `start-up stage done` log line per stage of `serve`, with the
//! milliseconds the stage took and the milliseconds since the process began serving, so a slow
//! restart (a big send log, journal or spool) shows which stage to look at.
//!
//! Owns only the clock of the current start; never decides anything.

use std::time::Instant;

/// The clock of one start: [`Stages::done`] logs the stage just finished.
pub struct Stages {
    started: Instant,
    last: Instant,
}

impl Stages {
    pub fn new() -> Stages {
        let now = Instant::now();
        Stages {
            started: now,
            last: now,
        }
    }

    /// Log that `stage` finished (elapsed since the previous stage and since the start).
    pub fn done(&mut self, stage: &'static str) {
        let now = Instant::now();
        tracing::info!(
            target: "gannet::startup",
            stage,
            stage_ms = now.duration_since(self.last).as_millis() as u64,
            since_start_ms = now.duration_since(self.started).as_millis() as u64,
            "start-up stage done"
        );
        self.last = now;
    }
}
