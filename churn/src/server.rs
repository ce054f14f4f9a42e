//! A server process: its own SO_REUSEPORT listener on the shared port, a few accepting threads,
//! and the close behaviour of the run. Prints `listening` once it listens (and, with --hold,
//! `accepted N` as the count grows); when standard input closes it prints `done ACCEPTED ERRORS`
//! and exits, which also closes whatever it holds.
use std::{
    io::{self, Read as _, Write as _},
    os::fd::{IntoRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    net,
    opts::{CloseMode, Opts},
};

/// Accepting threads per server process. A churned connection keeps its server thread only
/// until the client's FIN or RST arrives (client-first, reset), which on loopback is at once.
const THREADS: usize = 4;

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    errors: AtomicU64,
}

pub fn run(o: &Opts) -> anyhow::Result<std::process::ExitCode> {
    net::raise_nofile();
    let listener = net::reuseport_socket(o.port, true)
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", o.port))?;
    // Accepted sockets inherit it: no read blocks forever.
    net::set_timeout(&listener, libc::SO_RCVTIMEO, Duration::from_secs(10))?;
    let listener = Arc::new(listener);
    let counts = Arc::new(Counts::default());
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening")?;
        out.flush()?;
    }
    for _ in 0..THREADS {
        let (listener, counts, close, hold) =
            (Arc::clone(&listener), Arc::clone(&counts), o.close, o.hold);
        thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || serve(&listener, &counts, close, hold))?;
    }
    if o.hold {
        let counts = Arc::clone(&counts);
        thread::spawn(move || {
            let mut last = 0;
            loop {
                let n = counts.accepted.load(Relaxed);
                if n != last {
                    last = n;
                    let mut out = io::stdout().lock();
                    if writeln!(out, "accepted {n}")
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let _ = io::stdin().lock().read_to_end(&mut Vec::new());
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "done {} {}",
        counts.accepted.load(Relaxed),
        counts.errors.load(Relaxed)
    )?;
    out.flush()?;
    // Exiting ends the accepting threads and closes every held connection.
    std::process::exit(0)
}

fn serve(listener: &OwnedFd, counts: &Counts, close: CloseMode, hold: bool) {
    loop {
        let conn = match net::accept(listener) {
            Ok(c) => c,
            Err(e) => {
                match e.raw_os_error() {
                    // Idle (SO_RCVTIMEO), interrupted, or the client gave up first.
                    Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => {}
                    Some(libc::EMFILE | libc::ENFILE) => {
                        counts.errors.fetch_add(1, Relaxed);
                        thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        counts.errors.fetch_add(1, Relaxed);
                    }
                }
                continue;
            }
        };
        counts.accepted.fetch_add(1, Relaxed);
        if hold {
            // Closed when the process exits.
            let _ = conn.into_raw_fd();
            continue;
        }
        match close {
            CloseMode::ServerFirst => {}
            CloseMode::ClientFirst => {
                if net::read_to_eof(&conn).is_err() {
                    counts.errors.fetch_add(1, Relaxed);
                }
            }
            // The reset is the expected outcome; an EOF would do too.
            CloseMode::Reset => {
                let _ = net::read_to_eof(&conn);
            }
        }
        drop(conn);
    }
}
