//! Network namespaces, found through the processes inside them.
//!
//! A namespace has no name of its own to open: it is reached through /proc/PID/ns/net of a
//! process inside it, and identified by that file's inode (the `netns` of every event).
use std::{collections::HashSet, fs, io, os::fd::AsRawFd, os::unix::fs::MetadataExt, thread};

use super::{HostError, pids, proc_path, skip_in_scan, with_path};

/// A network namespace, reachable through a process inside it. The inode identifies the
/// namespace; the pid is only a way in, checked against the inode each time it is used, since
/// the process may exit and its pid be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Netns {
    /// As in `ls -iL /proc/PID/ns/net`, and in the events' `netns`.
    pub inode: u32,
    pub pid: u32,
}

impl Netns {
    /// The namespace of a process known from elsewhere (an event's pid, a child we started),
    /// without scanning all of /proc.
    pub fn of_pid(pid: u32) -> Result<Self, HostError> {
        let path = proc_path(pid, "ns/net");
        let inode = ns_inode(&path).map_err(HostError::read(&path))?;
        Ok(Self { inode, pid })
    }
}

/// One entry per distinct network namespace on the host (from /proc/*/ns/net), each with the
/// lowest pid inside it; processes that vanish while scanning (and zombies, which have no
/// namespaces left) are skipped, and so are processes we may not inspect (other users' without
/// root, any that a security policy hides). A namespace
/// without processes (kept alive by a bind mount or an open descriptor only) is not found.
pub fn namespaces() -> io::Result<Vec<Netns>> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for pid in pids()? {
        let path = proc_path(pid, "ns/net");
        match ns_inode(&path) {
            Ok(inode) => {
                if seen.insert(inode) {
                    found.push(Netns { inode, pid });
                }
            }
            Err(e) if skip_in_scan(&e) => continue,
            Err(e) => return Err(with_path(&path)(e)),
        }
    }
    Ok(found)
}

/// The namespace inode behind a /proc ns link. Namespace inodes are 32-bit in the kernel
/// (`ns_common.inum`); anything wider is not a namespace file.
fn ns_inode(path: &std::path::Path) -> io::Result<u32> {
    inode_u32(fs::metadata(path)?.ino())
}

fn inode_u32(ino: u64) -> io::Result<u32> {
    u32::try_from(ino).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("inode {ino} is not a namespace inode"),
        )
    })
}

/// Runs `make` on a short-lived thread that has joined `ns`, and returns what it made. Sockets
/// keep the namespace they were created in, so a socket made here answers for `ns` from any
/// thread; the thread then exits, so no other thread of the process ever changes namespace.
pub(super) fn in_netns<T: Send>(
    ns: &Netns,
    what: &'static str,
    make: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, HostError> {
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name("sockwatch-netns".into())
            .spawn_scoped(s, || enter_and_make(ns, what, make))
            .map_err(|cause| HostError::Netns {
                pid: ns.pid,
                step: "starting a thread",
                cause,
            })?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn enter_and_make<T>(
    ns: &Netns,
    what: &'static str,
    make: impl FnOnce() -> io::Result<T>,
) -> Result<T, HostError> {
    let path = proc_path(ns.pid, "ns/net");
    let file = fs::File::open(&path).map_err(HostError::read(&path))?;
    // The pid may have been reused since `ns` was found: check the namespace we actually hold.
    let found = file.metadata().map_err(HostError::read(&path))?.ino();
    if found != u64::from(ns.inode) {
        return Err(HostError::NetnsChanged {
            pid: ns.pid,
            expected: ns.inode,
            found,
        });
    }
    // SAFETY: setns on a descriptor we hold open; it changes this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(HostError::Netns {
            pid: ns.pid,
            step: "setns",
            cause: io::Error::last_os_error(),
        });
    }
    make().map_err(|cause| HostError::Netns {
        pid: ns.pid,
        step: what,
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_wider_than_32_bits_are_rejected() {
        assert_eq!(inode_u32(4026531840).unwrap(), 4026531840);
        let e = inode_u32(1 << 40).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn own_namespace_is_found() {
        // Reading one's own ns link needs no privileges.
        let own = Netns::of_pid(std::process::id()).unwrap();
        let all = namespaces().unwrap();
        assert!(
            all.iter().any(|n| n.inode == own.inode),
            "{own:?} in {all:?}"
        );
        let mut inodes: Vec<_> = all.iter().map(|n| n.inode).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), all.len(), "one entry per namespace");
    }

    #[test]
    fn a_reused_pid_is_caught_before_setns() {
        let own = Netns::of_pid(std::process::id()).unwrap();
        let stale = Netns {
            inode: own.inode ^ 1,
            pid: own.pid,
        };
        let e = in_netns(&stale, "nothing", || Ok(())).unwrap_err();
        assert!(
            matches!(e, HostError::NetnsChanged { pid, expected, found }
                if pid == own.pid && expected == stale.inode && found == u64::from(own.inode)),
            "{e}"
        );
    }

    #[test]
    fn missing_process_is_a_read_error() {
        // Above the kernel's pid_max limit (4194304), so never a live process.
        let e = Netns::of_pid(u32::MAX).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("reading /proc/{}/ns/net: ", u32::MAX)),
            "{e}"
        );
    }
}
