//! Which process holds each socket, from /proc/*/fd.
//!
//! sock_diag gives a socket's inode but not its process; the fd links are the only place where
//! the two meet (a link to a socket reads `socket:[INODE]`).
use std::{collections::HashMap, fs, io};

use super::{pids, proc_path, skip_in_scan, with_path};

/// Which process holds each socket inode (from /proc/*/fd links "socket:[N]"), to name the
/// owner of sockets that no event attributed (older than sockwatch, or never accepted). A
/// socket shared by several processes (inherited over fork, passed over a unix socket) goes to
/// the lowest pid. Processes that vanish while scanning, and those we may not inspect (other
/// users' without root, any that a security policy hides), are skipped.
pub fn socket_owners() -> io::Result<HashMap<u64, u32>> {
    let mut owners = HashMap::new();
    for pid in pids()? {
        let dir = proc_path(pid, "fd");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if skip_in_scan(&e) => continue,
            Err(e) => return Err(with_path(&dir)(e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                // The process exited while its directory was being read.
                Err(e) if skip_in_scan(&e) => break,
                Err(e) => return Err(with_path(&dir)(e)),
            };
            let target = match fs::read_link(entry.path()) {
                Ok(target) => target,
                // The descriptor was closed since the directory was read.
                Err(e) if skip_in_scan(&e) => continue,
                Err(e) => return Err(with_path(entry.path())(e)),
            };
            if let Some(inode) = target.to_str().and_then(socket_inode) {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    Ok(owners)
}

/// The inode of an fd link target `socket:[N]`; None for anything else (files, pipes,
/// `anon_inode:[eventfd]`, ...).
fn socket_inode(target: &str) -> Option<u64> {
    let digits = target.strip_prefix("socket:[")?.strip_suffix(']')?;
    // parse() alone would also take a leading '+'.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_are_parsed() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(
            socket_inode("socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn other_links_are_not_sockets() {
        for target in [
            "/dev/null",
            "pipe:[123]",
            "anon_inode:[eventfd]",
            "socket:[]",
            "socket:[12",
            "socket:[-1]",
            "socket:[+1]",
            "socket:[1 2]",
            "socket:[99999999999999999999]",
            "/tmp/socket:[5]",
        ] {
            assert_eq!(socket_inode(target), None, "{target}");
        }
    }

    #[test]
    fn own_socket_is_found() {
        use std::os::unix::fs::MetadataExt;
        // A unix socket pair needs no privileges and no network.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let owners = socket_owners().unwrap();
        assert_eq!(owners.get(&inode), Some(&std::process::id()));
    }
}
