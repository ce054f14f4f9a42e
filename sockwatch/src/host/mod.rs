//! Host state that the eBPF events do not carry: network namespaces, the kernel's socket tables
//! (sock_diag), which process holds each socket, listen-queue counters and descriptor pressure.
//!
//! Events only show what changes while sockwatch runs; these snapshots show what already exists
//! (sockets older than sockwatch, full accept queues, processes close to their file limit).
//! Everything is read from /proc and netlink at the time of the call, without caching: processes
//! come and go while a scan runs, so a process that vanishes mid-scan is skipped, never an error.
//! [`sampler`] turns these snapshots into the samples the summary takes.
mod diag;
mod fds;
pub mod limits;
mod netns;
mod netstat;
mod owners;
pub mod sampler;
pub mod workload;

use std::{
    io,
    path::{Path, PathBuf},
};

pub use diag::{ALL_STATES, DiagSocket, dump_tcp, dump_tcp_each, state_mask};
pub use fds::{FdPressure, fd_pressure};
pub use netns::{Netns, namespaces};
pub use netstat::{ListenCounters, listen_counters};
pub use owners::socket_owners;

/// Why host state could not be read; each message names the file or operation and the cause.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("{}: {what}", path.display())]
    Parse { path: PathBuf, what: String },
    #[error("entering the network namespace of pid {pid} ({step}): {cause}")]
    Netns {
        pid: u32,
        step: &'static str,
        cause: io::Error,
    },
    #[error(
        "pid {pid} is no longer in network namespace {expected} (now {found}): the process exited and its pid was reused"
    )]
    NetnsChanged { pid: u32, expected: u32, found: u64 },
    #[error("sock_diag {step}: {cause}")]
    Netlink {
        step: &'static str,
        cause: io::Error,
    },
    #[error("sock_diag: malformed reply from the kernel: {0}")]
    Decode(String),
    #[error("sock_diag: state mask {mask:#x} has bits outside the kernel's TCP states 1..=12")]
    StateMask { mask: u32 },
}

impl HostError {
    fn read(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |cause| Self::Read {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// /proc/PID/<rest>.
fn proc_path(pid: u32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// The pids of /proc, ascending, so that "first found" is stable from one scan to the next.
fn pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(with_path("/proc"))? {
        let entry = entry.map_err(with_path("/proc"))?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// True when the error means the process (or its fd) went away while we looked at it: its /proc
/// entries vanish (ENOENT) or, mid-exit, refuse with ESRCH.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// True when a host-wide scan should pass over a process rather than fail: it is gone, or it is
/// not ours to inspect (without root, other users' fd and ns links are closed to us; a security
/// policy can close some even to root: on sandboxed hosts, pid 1's ns link answers EACCES).
fn skip_in_scan(e: &io::Error) -> bool {
    gone(e) || e.kind() == io::ErrorKind::PermissionDenied
}

/// Keeps the error kind (callers test for NotFound) and adds the file it concerns.
fn with_path(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.as_ref().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_cause() {
        let e = HostError::Read {
            path: "/proc/1/limits".into(),
            cause: io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = e.to_string();
        assert!(text.starts_with("reading /proc/1/limits: "), "{text}");
        assert!(text.contains("denied"), "{text}");
        assert!(!text.contains('\n'));

        let e = with_path("/proc/7/fd")(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("/proc/7/fd: "), "{e}");
        assert!(gone(&e));
        assert!(gone(&io::Error::from_raw_os_error(libc::ESRCH)));
        assert!(!gone(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(skip_in_scan(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!skip_in_scan(&io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn pids_are_numeric_and_sorted() {
        let pids = pids().unwrap();
        assert!(pids.contains(&std::process::id()));
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
    }
}
