//! The background half of rotation: compressing rotated files and deleting the oldest beyond
//! --rotate-keep, in order, off the thread that writes events.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use super::names::Naming;
use crate::record::compress::{self, CompressError, Compression};

/// What the worker did, and what it could not do (none of it fatal: a file it could not
/// compress stays, complete, uncompressed).
#[derive(Debug, Default)]
pub struct Done {
    pub compressed: u64,
    pub deleted: u64,
    pub problems: Vec<String>,
    /// Rotated files left uncompressed because sockwatch was exiting.
    pub left_uncompressed: u64,
    /// The worker was still busy when sockwatch stopped waiting.
    pub unfinished: bool,
}

impl Done {
    /// What the user should hear of (warnings, not errors: every file is complete).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.iter().take(5).cloned().collect();
        if self.problems.len() > 5 {
            out.push(format!(
                "{} more rotation problems",
                self.problems.len() - 5
            ));
        }
        if self.left_uncompressed > 0 {
            out.push(format!(
                "{} rotated files left uncompressed: compression was still running at exit \
                 (they are complete; compress them yourself if needed)",
                self.left_uncompressed
            ));
        }
        out
    }
}

/// Handle to the worker thread. The output file sends it each file it rotates; dropping that
/// sender lets the worker finish its queue and stop.
pub struct Worker {
    done: Receiver<Done>,
    cancel: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Worker {
    pub fn start(
        naming: Naming,
        keep: usize,
        codec: Option<Compression>,
    ) -> std::io::Result<(Self, Sender<PathBuf>)> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let (done_tx, done) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let thread = thread::Builder::new()
            .name("sockwatch-rotate".into())
            .spawn(move || {
                let mut done = Done::default();
                for path in rx {
                    if let Some(codec) = codec {
                        if stop.load(Ordering::Relaxed) {
                            done.left_uncompressed += 1;
                            continue;
                        }
                        match compress::compress_file(&path, codec, &stop) {
                            Ok(Some(_)) => done.compressed += 1,
                            Ok(None) => {}
                            Err(CompressError::Cancelled { .. }) => done.left_uncompressed += 1,
                            Err(e) => done.problems.push(format!("{e}; left uncompressed")),
                        }
                    }
                    match naming.prune(keep) {
                        Ok(deleted) => done.deleted += deleted.len() as u64,
                        Err(e) => done
                            .problems
                            .push(format!("cannot delete old rotated files: {e}")),
                    }
                }
                let _ = done_tx.send(done);
            })?;
        Ok((
            Self {
                done,
                cancel,
                thread,
            },
            tx,
        ))
    }

    /// Waits until the worker has done everything queued, at most `wait`; then asks it to stop
    /// (a compression in progress is abandoned, its file left complete and uncompressed) and
    /// waits a little more. Call once every sender is dropped.
    pub fn finish(self, wait: Duration) -> Done {
        let deadline = Instant::now() + wait;
        let received = match self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(d) => Ok(d),
            Err(RecvTimeoutError::Timeout) => {
                self.cancel.store(true, Ordering::Relaxed);
                // Cancelling takes one chunk of compression at most.
                self.done.recv_timeout(Duration::from_secs(5))
            }
            Err(e) => Err(e),
        };
        match received {
            Ok(mut d) => {
                let _ = self.thread.join();
                d.unfinished = self.cancel.load(Ordering::Relaxed) && d.left_uncompressed > 0;
                d
            }
            Err(_) => Done {
                unfinished: true,
                problems: vec!["the rotation worker did not finish in time".into()],
                ..Done::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn compresses_in_order_and_keeps_n() {
        let d = std::env::temp_dir().join(format!("sockwatch-worker-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let naming = Naming::new(&d.join("conns.jsonl"));
        let (worker, tx) = Worker::start(naming.clone(), 2, Some(Compression::Gzip)).unwrap();
        let files: Vec<PathBuf> = (0..4)
            .map(|n| {
                let p = naming.name("20261121T101500Z", n);
                fs::write(&p, format!("line {n}\n")).unwrap();
                p
            })
            .collect();
        for p in files {
            tx.send(p).unwrap();
        }
        drop(tx);
        let done = worker.finish(Duration::from_secs(30));
        // After the first compression, pruning deletes it and the second, still queued: the
        // worker then skips that one.
        assert_eq!((done.compressed, done.deleted), (3, 2), "{done:?}");
        assert!(done.problems.is_empty() && !done.unfinished, "{done:?}");
        let mut left: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "conns.20261121T101500Z.2.jsonl.gz",
                "conns.20261121T101500Z.3.jsonl.gz"
            ]
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
