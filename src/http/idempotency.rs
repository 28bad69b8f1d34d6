//! `Idempotency-Key` for HTTP injection: a retried request gets the first answer and sends
//! nothing twice.
//!
//! Owns: the record of answered keys (`IdempotencyStore`), kept 24 hours in an append-only
//! file (`idempotency.jsonl` in the spool directory) that is fdatasync'd before the answer goes
//! out, so it survives kill -9 and restarts; the file is compacted (expired keys dropped) at
//! start. Memory holds only each key's hashes and where its answer sits in the file (an answer
//! to 10,000 recipients is ~1.5 MB; a day of them must not live in RAM): a replay reads it
//! back on a blocking thread. Keys are scoped to the API token and stored hashed. One `Mutex`
//! guards the index and the set of keys in progress: short sections, no `.await` inside; file
//! writes and reads happen on blocking threads. A cluster would put this behind Redis.
//! Answers list recipients, so each is sealed at rest (`r` = `!` + base64 of AES-256-GCM under
//! a key from the master key, `ship::seal::LineKey`; the spool's `key-check` beside the file
//! guards against another master key); lines of earlier versions (`r` in clear) still read.
//! GDPR erasure calls [`IdempotencyStore::shred`]: every answer naming the person is
//! overwritten in place with `#` (fdatasync) and its key forgotten (a retry of that request is
//! processed again, and refused for the person, who is suppressed by then).
//! Never decides what a request does; it only remembers answers.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sendlog::MasterKey;
use crate::ship::seal::{LineKey, Opened};

/// How long an answered key is remembered.
pub const KEEP_MS: u64 = 24 * 3600 * 1000;

/// How often expired keys are dropped from memory (the file is compacted at start).
const PRUNE_EVERY_MS: u64 = 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error(
        "idempotency file {path}: {source} (check the spool directory's permissions and free space)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "idempotency file {path}: the answer stored at byte {offset} is damaged ({message}); the key cannot be replayed"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        message: String,
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
    /// The answer body (JSON text), sealed (`!BASE64`; clear JSON in earlier versions).
    r: String,
}

/// What memory keeps of an answered key.
#[derive(Debug, Clone)]
struct Entry {
    t: u64,
    h: String,
    /// Where its line starts in the file, and its length (without the newline).
    offset: u64,
    len: usize,
}

/// An answer stored in the file, to be read back with [`IdempotencyStore::answer`].
#[derive(Debug, Clone)]
pub struct Stored {
    offset: u64,
    len: usize,
}

/// What `begin` found.
pub enum Begin {
    /// First time: process the request, then `finish` (or drop the guard on a refusal).
    Started(InFlight),
    /// Answered before: send this answer again.
    Answered(Stored),
    /// The same key with a different body.
    Mismatch,
    /// The same key is being processed right now.
    Busy,
}

struct State {
    answered: HashMap<String, Entry>,
    in_flight: HashSet<String>,
    last_prune: u64,
}

/// The append-only file and where the next line goes.
struct File {
    file: std::fs::File,
    end: u64,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct IdempotencyStore {
    state: Arc<Mutex<State>>,
    path: Arc<PathBuf>,
    /// Serialises appends to the file (held on a blocking thread only).
    file: Arc<Mutex<File>>,
    key: Arc<LineKey>,
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
    /// Where the store lives for `config`: `idempotency.jsonl` in the spool directory.
    pub fn path_for(config: &crate::config::Config) -> PathBuf {
        config
            .resolve_path(&config.spool.path)
            .join("idempotency.jsonl")
    }

    /// Load `path` (absent is empty), drop expired keys and rewrite it compacted; answers are
    /// sealed under `key`. Blocking.
    pub fn open(path: &Path, key: &MasterKey) -> Result<IdempotencyStore, IdempotencyError> {
        let io = |source| IdempotencyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let now = now_ms();
        let mut kept: HashMap<String, Line> = HashMap::new();
        match std::fs::File::open(path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let Ok(line) = line else { break };
                    // A torn last line (crash mid-write) is skipped: its answer was never sent.
                    if let Ok(l) = serde_json::from_str::<Line>(&line)
                        && now.saturating_sub(l.t) < KEEP_MS
                    {
                        kept.insert(l.k.clone(), l);
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
        let mut answered = HashMap::with_capacity(kept.len());
        let mut end = 0u64;
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
            for (k, l) in kept {
                // Serialising a struct of strings and a number cannot fail.
                let text = serde_json::to_string(&l).unwrap_or_default();
                f.write_all(text.as_bytes()).map_err(io)?;
                f.write_all(b"\n").map_err(io)?;
                answered.insert(
                    k,
                    Entry {
                        t: l.t,
                        h: l.h,
                        offset: end,
                        len: text.len(),
                    },
                );
                end += text.len() as u64 + 1;
            }
            let f = f.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(IdempotencyStore {
            state: Arc::new(Mutex::new(State {
                answered,
                in_flight: HashSet::new(),
                last_prune: now,
            })),
            path: Arc::new(path.to_path_buf()),
            file: Arc::new(Mutex::new(File { file, end })),
            key: Arc::new(LineKey::with_label(key, b"gannet/v1/idempotency-answer")),
        })
    }

    /// The clear answer of a stored `r`.
    fn open_answer(key: &LineKey, r: &str) -> Option<String> {
        match key.open(r.as_bytes()) {
            Opened::Event(b) => String::from_utf8(b).ok(),
            Opened::Shredded | Opened::Damaged => None,
        }
    }

    /// GDPR erasure: overwrite in place (`#`, then fdatasync) every stored answer that
    /// mentions `needle` (lower-case), and forget those keys. Returns how many. Blocking.
    pub fn shred(&self, needle: &[u8]) -> Result<usize, IdempotencyError> {
        let io = |source| IdempotencyError::Io {
            path: self.path.to_path_buf(),
            source,
        };
        let entries: Vec<(String, u64, usize)> = match self.state.lock() {
            Ok(s) => s
                .answered
                .iter()
                .map(|(k, e)| (k.clone(), e.offset, e.len))
                .collect(),
            Err(_) => return Err(io(std::io::Error::other("idempotency state lock poisoned"))),
        };
        let f = self
            .file
            .lock()
            .map_err(|_| io(std::io::Error::other("idempotency file lock poisoned")))?;
        // Its own descriptor without O_APPEND: on Linux a pwrite to an O_APPEND file appends.
        let over = std::fs::OpenOptions::new()
            .write(true)
            .open(&*self.path)
            .map_err(io)?;
        let mut gone = Vec::new();
        for (k, offset, len) in entries {
            let mut buf = vec![0u8; len];
            if f.file.read_exact_at(&mut buf, offset).is_err() {
                continue;
            }
            let Ok(line) = serde_json::from_slice::<Line>(&buf) else {
                continue;
            };
            let names = IdempotencyStore::open_answer(&self.key, &line.r).is_some_and(|a| {
                a.to_ascii_lowercase()
                    .as_bytes()
                    .windows(needle.len())
                    .any(|w| w == needle)
            });
            if names {
                over.write_all_at(&vec![b'#'; len], offset).map_err(io)?;
                gone.push(k);
            }
        }
        if !gone.is_empty() {
            over.sync_data().map_err(io)?;
        }
        drop(f);
        if let Ok(mut s) = self.state.lock() {
            for k in &gone {
                s.answered.remove(k);
            }
        }
        Ok(gone.len())
    }

    /// Look up `key` (scoped to `token`) for a request with `body`.
    pub fn begin(&self, token: &str, key: &str, body: &[u8]) -> Begin {
        let k = hex_sha(&[token.as_bytes(), key.as_bytes()]);
        let h = hex_sha(&[body]);
        let Ok(mut s) = self.state.lock() else {
            return Begin::Busy;
        };
        if let Some(e) = s.answered.get(&k)
            && now_ms().saturating_sub(e.t) < KEEP_MS
        {
            return if e.h == h {
                Begin::Answered(Stored {
                    offset: e.offset,
                    len: e.len,
                })
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

    /// The answer stored for a key `begin` found answered.
    pub async fn answer(&self, at: Stored) -> Result<String, IdempotencyError> {
        let file = self.file.clone();
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; at.len];
            let f = file
                .lock()
                .map_err(|_| std::io::Error::other("idempotency file lock poisoned"))?;
            f.file.read_exact_at(&mut buf, at.offset)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| IdempotencyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let damaged = |message: String| IdempotencyError::Damaged {
            path: path.to_path_buf(),
            offset: at.offset,
            message,
        };
        let line = serde_json::from_slice::<Line>(&read).map_err(|e| damaged(e.to_string()))?;
        IdempotencyStore::open_answer(&self.key, &line.r).ok_or_else(|| {
            damaged("the sealed answer does not open (erased, or another master key)".into())
        })
    }

    /// Remember the answer durably (fdatasync) before it is sent.
    pub async fn finish(&self, guard: InFlight, response: String) -> Result<(), IdempotencyError> {
        let mut sealed = Vec::with_capacity(response.len() * 4 / 3 + 64);
        self.key.seal_into(response.as_bytes(), &mut sealed);
        let line = Line {
            k: guard.key.clone(),
            t: now_ms(),
            h: guard.body_hash.clone(),
            // Base64 after `!`: ASCII.
            r: String::from_utf8(sealed).unwrap_or_default(),
        };
        let (t, h) = (line.t, line.h.clone());
        let file = self.file.clone();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            // Serialising a struct of strings and a number cannot fail.
            let mut text = serde_json::to_string(&line).unwrap_or_default();
            let len = text.len();
            text.push('\n');
            let mut f = file
                .lock()
                .map_err(|_| std::io::Error::other("idempotency file lock poisoned"))?;
            let offset = f.end;
            if let Err(e) = f
                .file
                .write_all(text.as_bytes())
                .and_then(|_| f.file.sync_data())
            {
                // What reached the file may be a torn line; start the next one on a fresh line
                // so only this answer is lost (the reader skips lines that do not parse).
                if let Ok(m) = f.file.metadata() {
                    f.end = m.len();
                    if f.file.write_all(b"\n").is_ok() {
                        f.end += 1;
                    }
                }
                return Err(e);
            }
            f.end += text.len() as u64;
            Ok::<_, std::io::Error>((offset, len))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        let (offset, len) = written.map_err(|source| IdempotencyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(mut s) = self.state.lock() {
            s.answered
                .insert(guard.key.clone(), Entry { t, h, offset, len });
            let now = now_ms();
            if now.saturating_sub(s.last_prune) >= PRUNE_EVERY_MS {
                s.last_prune = now;
                s.answered.retain(|_, e| now.saturating_sub(e.t) < KEEP_MS);
            }
        }
        drop(guard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes([6; 32])
    }

    /// Answers are sealed on disk; erasure overwrites every answer naming the person and
    /// forgets its key, and leaves the others readable.
    #[tokio::test]
    async fn answers_are_sealed_and_erasure_shreds_the_persons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("idempotency.jsonl");
        let s = IdempotencyStore::open(&p, &key()).unwrap();
        for (k, answer) in [
            ("a", r#"{"results":[{"email":"Erin@X.test"}]}"#),
            ("b", r#"{"results":[{"email":"bob@x.test"}]}"#),
        ] {
            let Begin::Started(g) = s.begin("tok", k, k.as_bytes()) else {
                panic!("{k} is new")
            };
            s.finish(g, answer.into()).await.unwrap();
        }
        let disk = std::fs::read(&p).unwrap().to_ascii_lowercase();
        assert!(!disk.windows(4).any(|w| w == b"erin"), "sealed at rest");
        assert_eq!(s.shred(b"erin@x.test").unwrap(), 1);
        let disk = std::fs::read(&p).unwrap();
        let lines: Vec<&[u8]> = disk.split(|b| *b == b'\n').collect();
        assert!(lines[0].iter().all(|b| *b == b'#'), "overwritten in place");
        assert_eq!(lines.len(), 3, "same lines, nothing appended");
        assert!(matches!(s.begin("tok", "a", b"a"), Begin::Started(_)));
        assert!(answered(&s, "tok", "b", b"b").await.contains("bob@x.test"));
        drop(s);
        let s = IdempotencyStore::open(&p, &key()).unwrap();
        assert!(matches!(s.begin("tok", "a", b"a"), Begin::Started(_)));
        assert!(answered(&s, "tok", "b", b"b").await.contains("bob@x.test"));
    }

    async fn answered(s: &IdempotencyStore, token: &str, key: &str, body: &[u8]) -> String {
        match s.begin(token, key, body) {
            Begin::Answered(at) => s.answer(at).await.unwrap(),
            _ => panic!("{key} should be answered"),
        }
    }

    #[tokio::test]
    async fn answers_survive_reopen_and_mismatches_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("idempotency.jsonl");
        let s = IdempotencyStore::open(&p, &key()).unwrap();
        let Begin::Started(g) = s.begin("tok", "k1", b"body") else {
            panic!("first use must start")
        };
        assert!(matches!(s.begin("tok", "k1", b"body"), Begin::Busy));
        s.finish(g, "{\"a\":1}".into()).await.unwrap();
        assert_eq!(answered(&s, "tok", "k1", b"body").await, "{\"a\":1}");
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
        let s = IdempotencyStore::open(&p, &key()).unwrap();
        assert_eq!(answered(&s, "tok", "k1", b"body").await, "{\"a\":1}");
        // Appends after a reopen land after the compacted lines and read back.
        let Begin::Started(g) = s.begin("tok", "k3", b"three") else {
            panic!("k3 is new")
        };
        s.finish(g, "{\"three\":3}".into()).await.unwrap();
        assert_eq!(answered(&s, "tok", "k3", b"three").await, "{\"three\":3}");
        assert_eq!(answered(&s, "tok", "k1", b"body").await, "{\"a\":1}");
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
        let s = IdempotencyStore::open(&p, &key()).unwrap();
        assert!(matches!(s.begin("tok", "old", b"b"), Begin::Started(_)));
    }
}
