//! The `--output` file, rotated on request: once it holds `--rotate-size` bytes or is
//! `--rotate-interval` old, it is renamed with the time of rotation (see [`names`]) and a new
//! file takes its path, just before the next record. Rotation happens between records only,
//! and every file starts with the format's header, so each file is complete and valid on its
//! own. Compression and deletion of old files run on a background thread ([`worker`]).
mod names;
mod worker;

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::{Duration, Instant},
};

pub use names::{Naming, stamp};
pub use worker::{Done, Worker};

use crate::{
    clock::WallClock,
    record::committed::CommittedFile,
    record::compress::Compression,
    record::output::{self, CreateError},
    record::sink::FileHeader,
};

/// When to rotate, and what to do with rotated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: Option<u64>,
    pub every: Option<Duration>,
    /// Rotated files kept; older ones are deleted.
    pub keep: usize,
    pub compress: Option<Compression>,
}

/// How long sockwatch waits at exit for compressions still queued before leaving the rest
/// uncompressed (complete, and readable by `report` as they are).
pub const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The live output file: complete lines only (see [`CommittedFile`]), rotated if asked.
pub struct OutputFile {
    /// The live path (a followed symbolic link resolved: rotation renames the real file).
    path: PathBuf,
    file: CommittedFile,
    header: FileHeader,
    /// This file's number in the run, from 1.
    part: u64,
    rotation: Option<Rotation>,
    naming: Naming,
    worker: Option<Sender<PathBuf>>,
    /// Bytes written to this file, header included.
    bytes: u64,
    /// Anything written after the header.
    has_records: bool,
    /// The last byte written ends a line: a rotation may happen here.
    at_boundary: bool,
    /// Written to since the last flush: the stream is not quiet.
    written_since_flush: bool,
    opened: Instant,
    /// A time rotation was due at the last flush. Writes test this rather than the clock: a
    /// clock read per record cost a tenth of the writing, and flushes come twice a second.
    time_is_due: bool,
    broken: bool,
}

fn now_unix_ns() -> i128 {
    WallClock::new().unix_ns(WallClock::monotonic_now())
}

/// Creates the output file at `path` (private, no symbolic link unless `follow_symlinks`: see
/// [`output::create`]) and writes its header. With `rotation`, also starts the worker that
/// compresses and deletes rotated files; the caller finishes it once the file is dropped.
pub fn open(
    path: &Path,
    follow_symlinks: bool,
    header: FileHeader,
    rotation: Option<Rotation>,
) -> Result<(OutputFile, Option<Worker>), CreateError> {
    let file = output::create(path, follow_symlinks)?;
    let io_error = |err| CreateError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut live = path.to_path_buf();
    let mut worker = None;
    let mut sender = None;
    if let Some(r) = &rotation {
        if !file.metadata().map_err(io_error)?.is_file() {
            return Err(CreateError::NotRotatable {
                path: path.to_path_buf(),
            });
        }
        if follow_symlinks {
            live = fs::canonicalize(path).map_err(io_error)?;
        }
        let (w, tx) = Worker::start(Naming::new(&live), r.keep, r.compress).map_err(io_error)?;
        worker = Some(w);
        sender = Some(tx);
    }
    let mut out = OutputFile {
        naming: Naming::new(&live),
        file: CommittedFile::new(file, live.clone()),
        path: live,
        header,
        part: 1,
        rotation,
        worker: sender,
        bytes: 0,
        has_records: false,
        at_boundary: true,
        written_since_flush: false,
        opened: Instant::now(),
        time_is_due: false,
        broken: false,
    };
    out.start_file(now_unix_ns()).map_err(io_error)?;
    Ok((out, worker))
}

impl OutputFile {
    fn start_file(&mut self, at_unix_ns: i128) -> io::Result<()> {
        let mut head = Vec::new();
        self.header.write(&mut head, at_unix_ns, self.part)?;
        self.file.write_all(&head)?;
        self.bytes = head.len() as u64;
        self.has_records = false;
        self.at_boundary = true;
        self.opened = Instant::now();
        self.time_is_due = false;
        Ok(())
    }

    fn size_due(&self) -> bool {
        self.rotation
            .and_then(|r| r.max_bytes)
            .is_some_and(|max| self.bytes >= max)
    }

    /// Reads the clock only when rotating by time.
    fn time_due(&self) -> bool {
        self.rotation
            .and_then(|r| r.every)
            .is_some_and(|every| self.opened.elapsed() >= every)
    }

    /// Closes the current file under its rotated name and starts a new one at the live path.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let now = now_unix_ns();
        let target = self.naming.free(now);
        // From here on a failure leaves no file to write to: say so on every later write.
        self.broken = true;
        fs::rename(&self.path, &target).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot rotate {} to {}: {e}",
                    self.path.display(),
                    target.display()
                ),
            )
        })?;
        // Never through a link planted at the path meanwhile.
        let file = output::create(&self.path, false).map_err(io::Error::other)?;
        self.file = CommittedFile::new(file, self.path.clone());
        self.part += 1;
        self.start_file(now)?;
        self.broken = false;
        if let Some(tx) = &self.worker {
            // A worker gone (it cannot panic by design) only means no compression.
            let _ = tx.send(target);
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(format!(
                "{} can no longer be written (a rotation failed)",
                self.path.display()
            )));
        }
        Ok(())
    }
}

impl Write for OutputFile {
    // A due rotation happens before the next record, never right after one: the records written
    // last (at exit, `stats` and `lost`) stay at the end of the live file, which never ends up
    // holding only its header.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        if self.at_boundary && self.has_records && (self.size_due() || self.time_is_due) {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.bytes += data.len() as u64;
        if let Some(&last) = data.last() {
            self.at_boundary = last == b'\n';
            self.has_records = true;
            self.written_since_flush = true;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        // A stream quiet for a whole flush period (half a second) still rotates on time.
        let quiet = !std::mem::take(&mut self.written_since_flush);
        self.time_is_due = self.time_due();
        if quiet && self.at_boundary && self.has_records && self.time_is_due {
            self.rotate()?;
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests;
