//! The JSONL files destination: one event per line in `{dir}/{prefix}.jsonl`, rotated every
//! UTC hour and by size, optionally zstd-compressed on rotation, old files deleted after
//! `retention`. Vector, Fluent Bit, Loki's promtail or Filebeat tail the live file.
//!
//! Owns: the live file and the rotated ones of its directory. Never does: read the outbox
//! (the runner hands it batches), or split a line: rotation happens between lines only.
//!
//! Restart: the live file is opened for appending; complete lines are never removed. Only an
//! incomplete last line (the process stopped mid-write) is cut back to the last newline: that
//! batch was never confirmed, so the outbox writes it again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::runner::{Destination, SendError, ShipEvent};
use crate::config::ship::JsonlConfig;

/// The files of one `[[jsonl]]`. Writing happens on blocking threads, one at a time (the
/// runner awaits each batch), so a std Mutex only guards against overlap, never contends.
pub struct JsonlFiles {
    state: Arc<Mutex<State>>,
}

struct State {
    dir: PathBuf,
    prefix: String,
    max_bytes: u64,
    zstd: bool,
    retention: Duration,
    live: Option<File>,
    size: u64,
    /// UTC hour (hours since the epoch) of the live file's first line.
    hour: u64,
}

fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 3600
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl JsonlFiles {
    /// Open the directory (created if missing) and the live file. Blocking.
    pub fn open(c: &JsonlConfig, dir: PathBuf) -> io::Result<JsonlFiles> {
        fs::create_dir_all(&dir)?;
        let mut st = State {
            dir,
            prefix: c.prefix.clone(),
            max_bytes: c.max_bytes,
            zstd: c.zstd,
            retention: c.retention,
            live: None,
            size: 0,
            hour: hour_of(SystemTime::now()),
        };
        st.open_live()?;
        st.finish_pending()?;
        Ok(JsonlFiles {
            state: Arc::new(Mutex::new(st)),
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> BoxFuture<'static, Result<T, String>> {
        let st = self.state.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut g = st.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut g)
            })
            .await
            .map_err(|e| format!("file task failed: {e}"))
        })
    }
}

impl State {
    fn live_path(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.prefix))
    }

    fn open_live(&mut self) -> io::Result<()> {
        let path = self.live_path();
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let len = f.metadata()?.len();
        if len > 0 {
            // Cut an incomplete last line, if any (see the module doc). Only the tail is read.
            let tail = len.min(1 << 20);
            let mut buf = vec![0; tail as usize];
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(len - tail))?;
            f.read_exact(&mut buf)?;
            if buf.last() != Some(&b'\n') {
                let keep = match buf.iter().rposition(|&b| b == b'\n') {
                    Some(i) => len - tail + i as u64 + 1,
                    None if tail == len => 0,
                    // A line longer than 1 MiB without its end: keep it (never seen in practice).
                    None => len,
                };
                if keep < len {
                    tracing::warn!(target: "gannet::ship", path = %path.display(),
                        bytes = len - keep, "cutting an incomplete last line; it is written again from the outbox");
                    f.set_len(keep)?;
                    f.sync_data()?;
                }
            }
            self.hour = hour_of(f.metadata()?.modified()?);
        }
        self.size = f.metadata()?.len();
        if self.size == 0 {
            self.hour = hour_of(SystemTime::now());
        }
        self.live = Some(f);
        Ok(())
    }

    /// Rotated files are `{prefix}-{YYYYMMDDTHH}-{n}.jsonl`: the hour of their first line.
    fn rotated_name(&self, n: u32) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp((self.hour * 3600) as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "{}-{:04}{:02}{:02}T{:02}-{}.jsonl",
            self.prefix,
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            n
        )
    }

    fn is_rotated(&self, name: &str) -> bool {
        name.starts_with(&format!("{}-", self.prefix))
            && (name.ends_with(".jsonl") || name.ends_with(".jsonl.zst"))
    }

    /// Close the live file under a rotated name and start a new one.
    fn rotate(&mut self) -> io::Result<()> {
        if self.size == 0 {
            self.hour = hour_of(SystemTime::now());
            return Ok(());
        }
        if let Some(f) = self.live.take() {
            f.sync_data()?;
        }
        let mut n = 1;
        let target = loop {
            let name = self.rotated_name(n);
            let p = self.dir.join(&name);
            if !p.exists() && !self.dir.join(format!("{name}.zst")).exists() {
                break p;
            }
            n += 1;
        };
        fs::rename(self.live_path(), &target)?;
        sync_dir(&self.dir)?;
        self.open_live()?;
        if self.zstd {
            compress(&target)?;
        }
        self.prune()?;
        Ok(())
    }

    /// After a crash mid-rotation: compress rotated files still plain, drop temporaries.
    fn finish_pending(&mut self) -> io::Result<()> {
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.ends_with(".zst.tmp") && name.starts_with(&self.prefix) {
                fs::remove_file(e.path())?;
            } else if self.zstd && self.is_rotated(&name) && name.ends_with(".jsonl") {
                compress(&e.path())?;
            }
        }
        self.prune()
    }

    /// Delete rotated files older than the retention.
    fn prune(&mut self) -> io::Result<()> {
        if self.retention.is_zero() {
            return Ok(());
        }
        let now = SystemTime::now();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !self.is_rotated(&name) {
                continue;
            }
            let age = e
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            if age > self.retention {
                fs::remove_file(e.path())?;
                tracing::info!(target: "gannet::ship", file = %name, "deleted a rotated events file past its retention");
            }
        }
        Ok(())
    }

    fn rotate_if_hour_passed(&mut self) -> io::Result<()> {
        if self.size > 0 && hour_of(SystemTime::now()) != self.hour {
            self.rotate()?;
        }
        Ok(())
    }

    /// Append `lines`, rotating between lines when the next would pass `max_bytes`, then
    /// fdatasync.
    fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        self.rotate_if_hour_passed()?;
        let mut chunk: Vec<u8> =
            Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum::<usize>());
        for line in batch {
            let len = line.len() as u64 + 1;
            if self.size + chunk.len() as u64 > 0
                && self.size + chunk.len() as u64 + len > self.max_bytes
            {
                self.flush(&mut chunk)?;
                self.rotate()?;
            }
            chunk.extend_from_slice(line);
            chunk.push(b'\n');
        }
        self.flush(&mut chunk)?;
        if let Some(f) = &self.live {
            f.sync_data()?;
        }
        Ok(())
    }

    fn flush(&mut self, chunk: &mut Vec<u8>) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.live.is_none() {
            self.open_live()?;
        }
        let f = self.live.as_mut().expect("opened above");
        if let Err(e) = f.write_all(chunk) {
            // Leave whole lines only, so the retry does not glue onto a torn one.
            let _ = f.set_len(self.size);
            return Err(e);
        }
        self.size += chunk.len() as u64;
        chunk.clear();
        Ok(())
    }
}

/// `path` → `path.zst` (written to a temporary, fsynced, renamed), then `path` is removed.
fn compress(path: &Path) -> io::Result<()> {
    let mut dst = path.as_os_str().to_owned();
    dst.push(".zst");
    let dst = PathBuf::from(dst);
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let input = File::open(path)?;
        let out = File::create(&tmp)?;
        let mut enc = zstd::stream::Encoder::new(out, 3)?;
        io::copy(&mut io::BufReader::new(input), &mut enc)?;
        let out = enc.finish()?;
        out.sync_all()?;
    }
    fs::rename(&tmp, &dst)?;
    fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

impl Destination for JsonlFiles {
    fn needs_fields(&self) -> bool {
        false
    }

    fn send<'a>(&'a mut self, batch: &'a [ShipEvent]) -> BoxFuture<'a, Result<(), SendError>> {
        // Shares each line (a reference count each), no copy.
        let lines: Vec<Bytes> = batch.iter().map(|e| e.json.clone()).collect();
        let fut = self.blocking(move |st| st.write(&lines));
        Box::pin(async move {
            match fut.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SendError::Retry {
                    reason: format!("cannot write the events file: {e}"),
                    after: None,
                }),
                Err(e) => Err(SendError::Retry {
                    reason: e,
                    after: None,
                }),
            }
        })
    }

    fn idle(&mut self) -> BoxFuture<'_, ()> {
        let fut = self.blocking(|st| {
            st.rotate_if_hour_passed()?;
            st.prune()
        });
        Box::pin(async move {
            if let Ok(Err(e)) = fut.await {
                tracing::warn!(target: "gannet::ship", error = %e, "events file rotation failed; retried later");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_bytes: u64, zstd: bool) -> JsonlConfig {
        toml::from_str(&format!(
            "dir = \"unused\"\nmax_bytes = {max_bytes}\nzstd = {zstd}\n"
        ))
        .unwrap()
    }

    fn read_all(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        // Rotated files by (hour, number), the live file last.
        names.sort_by_key(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let stem = name
                .trim_end_matches(".zst")
                .trim_end_matches(".jsonl")
                .to_string();
            match stem.rsplit_once('-') {
                Some((hour, n)) => (0, hour.to_string(), n.parse::<u32>().unwrap()),
                None => (1, String::new(), 0),
            }
        });
        let mut lines = Vec::new();
        for p in names {
            let bytes = fs::read(&p).unwrap();
            let text = if p.extension().is_some_and(|e| e == "zst") {
                zstd::stream::decode_all(&bytes[..]).unwrap()
            } else {
                bytes
            };
            let text = String::from_utf8(text).unwrap();
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{p:?} ends mid-line"
            );
            lines.extend(text.lines().map(str::to_string));
        }
        lines
    }

    #[test]
    fn rotation_by_size_never_splits_or_loses_a_line() {
        let tmp = tempfile::tempdir().unwrap();
        for zstd in [false, true] {
            let dir = tmp.path().join(format!("z{zstd}"));
            let c = config(4096, zstd);
            let files = JsonlFiles::open(&c, dir.clone()).unwrap();
            let mut n = 0;
            for b in 0..50 {
                let batch: Vec<Bytes> = (0..37)
                    .map(|i| {
                        n += 1;
                        format!(
                            "{{\"id\":\"{n}\",\"pad\":\"{}\"}}",
                            "x".repeat((b * 7 + i) % 90)
                        )
                        .into_bytes()
                        .into()
                    })
                    .collect();
                files.state.lock().unwrap().write(&batch).unwrap();
            }
            drop(files);
            let lines = read_all(&dir);
            assert_eq!(lines.len(), n);
            for (i, l) in lines.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["id"], (i + 1).to_string(), "lines in order, none lost");
            }
            let rotated = fs::read_dir(&dir).unwrap().count() - 1;
            assert!(rotated > 10, "rotated {rotated} times");
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                assert!(
                    fs::metadata(&p).unwrap().len() <= 4096
                        || p.extension().is_some_and(|e| e == "zst")
                );
                if !p.ends_with("events.jsonl") {
                    assert_eq!(zstd, p.to_string_lossy().ends_with(".zst"), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn reopening_appends_and_cuts_only_a_torn_last_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let c = config(1 << 20, false);
        let files = JsonlFiles::open(&c, dir.clone()).unwrap();
        files
            .state
            .lock()
            .unwrap()
            .write(&[
                Bytes::from_static(b"{\"id\":\"1\"}"),
                Bytes::from_static(b"{\"id\":\"2\"}"),
            ])
            .unwrap();
        drop(files);
        // A crash mid-write left half a line.
        let live = dir.join("events.jsonl");
        let mut f = OpenOptions::new().append(true).open(&live).unwrap();
        f.write_all(b"{\"id\":\"3\",\"tr").unwrap();
        drop(f);
        let files = JsonlFiles::open(&c, dir.clone()).unwrap();
        files
            .state
            .lock()
            .unwrap()
            .write(&[Bytes::from_static(b"{\"id\":\"3\"}")])
            .unwrap();
        assert_eq!(
            fs::read_to_string(&live).unwrap(),
            "{\"id\":\"1\"}\n{\"id\":\"2\"}\n{\"id\":\"3\"}\n"
        );
    }
}
