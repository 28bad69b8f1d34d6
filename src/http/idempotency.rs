//! `Idempotency-Key` for HTTP injection: a retried request gets the first answer and sends
//! nothing twice.
//!
//! Owns: the record of answered keys (`IdempotencyStore`), kept 24 hours, in memory and in an
//! append-only file (`idempotency.jsonl` in the spool directory) that is fdatasync'd before
//! the answer goes out, so it survives kill -9 and restarts; the file is compacted (expired
//! keys dropped) at start. Keys are scoped to the API token and stored hashed. One `Mutex`
//! guards the map and the set of keys in progress: short sections, no `.await` inside; the
//! file write happens on a blocking thread. A cluster would put this behind Redis.
//! Never decides what a request does; it only remembers answers.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long an answered key is remembered.
pub const KEEP_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error(
        "idempotency file {path}: {source} (check the spool directory's permissions and free space)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    /// SHA-256 of `token name \0 key`, hex.
    k: String,
    /// Milliseconds since the epoch when first answered.
    t: u64,
    /// SHA-256 of the request body, hex.
    h: String,
    /// The answer body (JSON text).
    r: String,
}

/// What `begin` found.
pub enum Begin {
    /// First time: process the request, then `finish` (or drop the guard on a refusal).
    Started(InFlight),
    /// Answered before: send this body again.
    Answered(String),
    /// The same key with a different body.
    Mismatch,
    /// The same key is being processed right now.
    Busy,
}

struct State {
    answered: HashMap<String, Line>,
    in_flight: HashSet<String>,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct IdempotencyStore {
    state: Arc<Mutex<State>>,
    path: Arc<PathBuf>,
    /// Serialises appends to the file (held on a blocking thread only).
    file: Arc<Mutex<Option<std::fs::File>>>,
}

/// A key in progress; dropping it without `finish` frees the key for a retry.
pub struct InFlight {
    store: IdempotencyStore,
    key: String,
    body_hash: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.store.state.lock() {
            s.in_flight.remove(&self.key);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex_sha(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

impl IdempotencyStore {
    /// Load `path` (absent is empty), drop expired keys and rewrite it compacted. Blocking.
    pub fn open(path: &Path) -> Result<IdempotencyStore, IdempotencyError> {
        let io = |source| IdempotencyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let now = now_ms();
        let mut answered = HashMap::new();
        match std::fs::File::open(path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let Ok(line) = line else { break };
                    // A torn last line (crash mid-write) is skipped: its answer was never sent.
                    if let Ok(l) = serde_json::from_str::<Line>(&line)
                        && now.saturating_sub(l.t) < KEEP_MS
                    {
                        answered.insert(l.k.clone(), l);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            for l in answered.values() {
                let mut s = serde_json::to_string(l).unwrap_or_default();
                s.push('\n');
                f.write_all(s.as_bytes()).map_err(io)?;
            }
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(IdempotencyStore {
            state: Arc::new(Mutex::new(State {
                answered,
                in_flight: HashSet::new(),
            })),
            path: Arc::new(path.to_path_buf()),
            file: Arc::new(Mutex::new(Some(file))),
        })
    }

    /// Look up `key` (scoped to `token`) for a request with `body`.
    pub fn begin(&self, token: &str, key: &str, body: &[u8]) -> Begin {
        let k = hex_sha(&[token.as_bytes(), key.as_bytes()]);
        let h = hex_sha(&[body]);
        let Ok(mut s) = self.state.lock() else {
            return Begin::Busy;
        };
        if let Some(l) = s.answered.get(&k)
            && now_ms().saturating_sub(l.t) < KEEP_MS
        {
            return if l.h == h {
                Begin::Answered(l.r.clone())
            } else {
                Begin::Mismatch
            };
        }
        if !s.in_flight.insert(k.clone()) {
            return Begin::Busy;
        }
        Begin::Started(InFlight {
            store: self.clone(),
            key: k,
            body_hash: h,
        })
    }

    /// Remember the answer durably (fdatasync) before it is sent.
    pub async fn finish(&self, guard: InFlight, response: String) -> Result<(), IdempotencyError> {
        let line = Line {
            k: guard.key.clone(),
            t: now_ms(),
            h: guard.body_hash.clone(),
            r: response,
        };
        let file = self.file.clone();
        let path = self.path.clone();
        let l2 = line.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut text = serde_json::to_string(&l2).unwrap_or_default();
            text.push('\n');
            let mut f = file
                .lock()
                .map_err(|_| std::io::Error::other("lock poisoned"))?;
            let f = f
                .as_mut()
                .ok_or_else(|| std::io::Error::other("file closed"))?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        res.map_err(|source| IdempotencyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(mut s) = self.state.lock() {
            s.answered.insert(line.k.clone(), line);
        }
        drop(guard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_survive_reopen_and_mismatches_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("idempotency.jsonl");
        let s = IdempotencyStore::open(&p).unwrap();
        let Begin::Started(g) = s.begin("tok", "k1", b"body") else {
            panic!("first use must start")
        };
        assert!(matches!(s.begin("tok", "k1", b"body"), Begin::Busy));
        s.finish(g, "{\"a\":1}".into()).await.unwrap();
        assert!(matches!(s.begin("tok", "k1", b"body"), Begin::Answered(r) if r == "{\"a\":1}"));
        assert!(matches!(s.begin("tok", "k1", b"other"), Begin::Mismatch));
        // Another token's same key is another key.
        assert!(matches!(s.begin("tok2", "k1", b"body"), Begin::Started(_)));
        // A refused request (guard dropped) frees the key.
        assert!(matches!(s.begin("tok", "k2", b"x"), Begin::Started(_)));
        assert!(matches!(s.begin("tok", "k2", b"x"), Begin::Started(_)));
        drop(s);
        // Torn tail line from a crash is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"k\":\"tor")
            .unwrap();
        let s = IdempotencyStore::open(&p).unwrap();
        assert!(matches!(s.begin("tok", "k1", b"body"), Begin::Answered(r) if r == "{\"a\":1}"));
        // Expired entries are dropped at open.
        let old = Line {
            k: hex_sha(&[b"tok", b"old"]),
            t: now_ms() - KEEP_MS - 1,
            h: hex_sha(&[b"b"]),
            r: "{}".into(),
        };
        drop(s);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "{}", serde_json::to_string(&old).unwrap()).unwrap();
        drop(f);
        let s = IdempotencyStore::open(&p).unwrap();
        assert!(matches!(s.begin("tok", "old", b"b"), Begin::Started(_)));
    }
}
