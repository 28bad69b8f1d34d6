//! The group-commit writer's storage seam: the few file-system calls it makes to create a
//! segment, append to it and make both durable.
//!
//! Owns nothing but the calls. The real implementation ([`OsStorage`]) is plain `std::fs`;
//! tests put their own behind the same trait to count syncs or inject failures (a directory
//! fsync that fails, a full disk), which a real file system will not do on demand.
//!
//! Never does: framing, checksums or batching (record.rs and writer.rs), reading segments back
//! (the start-up scan and `Spool::read` read files directly), or anything asynchronous: every
//! call blocks and is made from the writer's own thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Where the writer's segment files live. One instance is shared by the writer thread only.
pub(crate) trait Storage: Send + Sync + 'static {
    /// Create a new, empty segment file for appending; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Make the directory's entries (a created or removed file) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Remove a file the writer created but gave up on.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// An open segment file, appended to only.
pub(crate) trait SegmentFile: Send {
    /// Append all of `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Make everything appended so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The real file system.
pub(crate) struct OsStorage;

impl Storage for OsStorage {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        super::fsync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

struct OsFile(File);

impl SegmentFile for OsFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
