//! A client process: `--in-flight` threads, each making connections one after another from its
//! share until the share is done or the time budget is spent. Prints `done OK ERRORS TIMED_OUT`
//! at the end; with --hold it keeps every connection open, prints `held OK ERRORS` once all
//! are made, and waits for standard input to close first.
use std::{
    io::{self, Read as _, Write as _},
    net::Ipv4Addr,
    os::fd::{IntoRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    net,
    opts::{CloseMode, Opts, start_offset},
};

/// Longest a single connect() or read() may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    timed_out: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        if self.errors.fetch_add(1, Relaxed) == 0
            && let Ok(mut first) = self.first_error.lock()
        {
            first.get_or_insert(what);
        }
    }
}

pub fn run(o: &Opts) -> anyhow::Result<std::process::ExitCode> {
    net::raise_nofile();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(o.budget_ms.max(1));
    let pace = o.rate.map(|r| (start, r));
    let shared = Arc::new(Shared::default());
    let threads = u64::from(o.in_flight).min(o.connections);
    let mut handles = Vec::new();
    for _ in 0..threads {
        let shared = Arc::clone(&shared);
        let (share, first, sources, port, close, hold) =
            (o.connections, o.first, o.sources, o.port, o.close, o.hold);
        let job = Job {
            share,
            first,
            sources,
            port,
            close,
            hold,
            deadline,
            pace,
        };
        handles.push(
            thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || worker(&shared, &job))?,
        );
    }
    for h in handles {
        let _ = h.join();
    }
    let (ok, errors) = (shared.ok.load(Relaxed), shared.errors.load(Relaxed));
    if let Ok(first) = shared.first_error.lock()
        && let Some(first) = first.as_ref()
    {
        eprintln!("sockwatch-churn: client: {errors} errors, the first: {first}");
    }
    let mut out = io::stdout().lock();
    if o.hold {
        writeln!(out, "held {ok} {errors}")?;
        out.flush()?;
        drop(out);
        // Keep every connection open until the coordinator closes our standard input.
        let _ = io::stdin().lock().read_to_end(&mut Vec::new());
        out = io::stdout().lock();
    }
    writeln!(
        out,
        "done {ok} {errors} {}",
        u8::from(shared.timed_out.load(Relaxed))
    )?;
    out.flush()?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// What every worker thread of a client does.
#[derive(Clone, Copy)]
struct Job {
    share: u64,
    first: u64,
    sources: u32,
    port: u16,
    close: CloseMode,
    hold: bool,
    deadline: Instant,
    /// With --rate: the client's start and its connections per second.
    pace: Option<(Instant, u64)>,
}

fn worker(shared: &Shared, job: &Job) {
    let Job {
        share,
        first,
        sources,
        port,
        close,
        hold,
        deadline,
        pace,
    } = *job;
    loop {
        let i = shared.next.fetch_add(1, Relaxed);
        if i >= share {
            return;
        }
        if let Some((start, rate)) = pace {
            let at = start + start_offset(i, rate);
            if at >= deadline {
                shared.timed_out.store(true, Relaxed);
                return;
            }
            thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let now = Instant::now();
        if now >= deadline {
            shared.timed_out.store(true, Relaxed);
            return;
        }
        let timeout = (deadline - now).min(IO_TIMEOUT);
        let src = net::source(((first + i) % u64::from(sources)) as u32);
        match one(src, port, close, hold, timeout) {
            Ok(Some(held)) => {
                // Closed when the process exits.
                let _ = held.into_raw_fd();
                shared.ok.fetch_add(1, Relaxed);
            }
            Ok(None) => {
                shared.ok.fetch_add(1, Relaxed);
            }
            Err((step, e)) => shared.error(format!("{step} {src} -> 127.0.0.1:{port}: {e}")),
        }
    }
}

/// One connection from `src` (the port is chosen at connect time, so that sources share the
/// ephemeral range per destination rather than per bind); closed as `close` says, or returned
/// open with `hold`.
fn one(
    src: Ipv4Addr,
    port: u16,
    close: CloseMode,
    hold: bool,
    timeout: Duration,
) -> Result<Option<OwnedFd>, (&'static str, io::Error)> {
    let fd = net::tcp_socket().map_err(|e| ("socket", e))?;
    net::set_int(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
        .map_err(|e| ("setsockopt", e))?;
    net::set_timeout(&fd, libc::SO_SNDTIMEO, timeout).map_err(|e| ("setsockopt", e))?;
    net::bind(&fd, src, 0).map_err(|e| ("bind", e))?;
    net::connect(&fd, Ipv4Addr::LOCALHOST, port).map_err(|e| ("connect", e))?;
    if hold {
        return Ok(Some(fd));
    }
    match close {
        CloseMode::ServerFirst => {
            net::set_timeout(&fd, libc::SO_RCVTIMEO, timeout).map_err(|e| ("setsockopt", e))?;
            net::read_to_eof(&fd).map_err(|e| ("waiting for the server's close", e))?;
        }
        CloseMode::ClientFirst => {}
        CloseMode::Reset => net::set_linger_zero(&fd).map_err(|e| ("setsockopt", e))?,
    }
    drop(fd);
    Ok(None)
}
