//! An output file that only ever holds complete lines.
//!
//! Lines are buffered and written in whole batches. If a write fails (disk full, quota), the
//! file is cut back to the end of the last complete batch, so a reader never meets a torn last
//! line, and the error says so. A file removed while being written is noticed at the next flush
//! instead of silently writing into an unlinked inode.
use std::{
    fs::File,
    io::{self, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

const BATCH: usize = 1 << 16;

pub struct CommittedFile {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes known to be complete lines on disk.
    committed: u64,
    failed: bool,
}

impl CommittedFile {
    pub fn new(file: File, path: PathBuf) -> Self {
        Self {
            file,
            path,
            buf: Vec::with_capacity(BATCH * 2),
            committed: 0,
            failed: false,
        }
    }

    /// Writes every complete line buffered so far.
    fn write_lines(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{} can no longer be written (an earlier write failed)",
                self.path.display()
            )));
        }
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1) else {
            return Ok(());
        };
        match self.file.write_all(&self.buf[..end]) {
            Ok(()) => {
                self.committed += end as u64;
                self.buf.drain(..end);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                // Cut back to the last complete batch; the lines of this one are lost.
                let _ = self.file.set_len(self.committed);
                let _ = self.file.seek(SeekFrom::Start(self.committed));
                let lost = self.buf[..end].iter().filter(|&&b| b == b'\n').count();
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "writing {}: {e}; the file keeps every line written before \
                         ({lost} lines of the last batch were dropped)",
                        self.path.display()
                    ),
                ))
            }
        }
    }
}

impl Write for CommittedFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH {
            self.write_lines()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_lines()?;
        // An unlinked file accepts writes that nobody will ever read.
        if self.file.metadata()?.nlink() == 0 {
            self.failed = true;
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} was removed while sockwatch was writing to it",
                    self.path.display()
                ),
            ));
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sockwatch-committed-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_complete_lines_reach_the_file() {
        let path = temp("lines");
        let mut w = CommittedFile::new(File::create(&path).unwrap(), path.clone());
        w.write_all(b"one\ntw").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        w.write_all(b"o\n").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_removed_file_is_an_error() {
        let path = temp("removed");
        let mut w = CommittedFile::new(File::create(&path).unwrap(), path.clone());
        w.write_all(b"x\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        let e = w.flush().unwrap_err();
        assert!(e.to_string().contains("was removed"), "{e}");
        assert!(w.write_all(b"y\n").and_then(|()| w.flush()).is_err());
    }

    #[test]
    fn a_failed_write_cuts_back_to_complete_lines() {
        // /dev/full fails every write with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut w = CommittedFile::new(full, PathBuf::from("/dev/full"));
        w.write_all(b"a\nb\n").unwrap();
        let e = w.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(
            e.to_string()
                .contains("2 lines of the last batch were dropped"),
            "{e}"
        );
    }
}
