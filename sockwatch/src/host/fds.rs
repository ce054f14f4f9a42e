//! Descriptor pressure of a process, from /proc/PID/fd and /proc/PID/limits.
use std::fs;

use super::{HostError, proc_path};

/// Open file descriptors against RLIMIT_NOFILE (soft) of a process: a server at its limit fails
/// accept() with EMFILE while connections pile up in its accept queue, so the two numbers
/// explain `accept_failed` events before they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPressure {
    pub pid: u32,
    pub open: u64,
    /// The soft limit, the one the kernel enforces; u64::MAX when unlimited.
    pub limit: u64,
}

/// Counts the open descriptors of /proc/PID/fd and reads the soft "Max open files" of
/// /proc/PID/limits. Both are read from the process's side, so they hold for processes in
/// other namespaces and containers too.
pub fn fd_pressure(pid: u32) -> Result<FdPressure, HostError> {
    let open = open_fds(pid)?;
    let path = proc_path(pid, "limits");
    let text = fs::read_to_string(&path).map_err(HostError::read(&path))?;
    let limit = nofile_soft_limit(&text).map_err(|what| HostError::Parse { path, what })?;
    Ok(FdPressure { pid, open, limit })
}

/// Since Linux 6.2 the size of /proc/PID/fd is the number of open descriptors: a server holding
/// hundreds of thousands of connections is not listed at every interval. 0 (an older kernel, or
/// no descriptor at all) falls back to listing.
fn open_fds(pid: u32) -> Result<u64, HostError> {
    let dir = proc_path(pid, "fd");
    let size = fs::metadata(&dir).map_err(HostError::read(&dir))?.len();
    if size > 0 {
        return Ok(size);
    }
    listed_fds(pid)
}

fn listed_fds(pid: u32) -> Result<u64, HostError> {
    let dir = proc_path(pid, "fd");
    let mut open = 0u64;
    for entry in fs::read_dir(&dir).map_err(HostError::read(&dir))? {
        entry.map_err(HostError::read(&dir))?;
        open += 1;
    }
    // Listing our own fd directory takes a descriptor of its own, which is not the caller's.
    if pid == std::process::id() {
        open = open.saturating_sub(1);
    }
    Ok(open)
}

/// The soft limit from the line `Max open files  SOFT  HARD  files`.
fn nofile_soft_limit(limits: &str) -> Result<u64, String> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or("no \"Max open files\" line")?;
    let soft = line
        .split_whitespace()
        .next()
        .ok_or("\"Max open files\" has no values")?;
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse()
        .map_err(|e| format!("\"Max open files\" soft limit {soft:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max processes             95594                95594                processes 
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn soft_limit_is_read() {
        assert_eq!(nofile_soft_limit(LIMITS).unwrap(), 1024);
        assert_eq!(
            nofile_soft_limit("Max open files unlimited unlimited files\n").unwrap(),
            u64::MAX
        );
    }

    #[test]
    fn malformed_limits_are_explained() {
        assert_eq!(
            nofile_soft_limit("Max processes 1 1 processes\n").unwrap_err(),
            "no \"Max open files\" line"
        );
        assert_eq!(
            nofile_soft_limit("Max open files\n").unwrap_err(),
            "\"Max open files\" has no values"
        );
        let e = nofile_soft_limit("Max open files lots 2 files\n").unwrap_err();
        assert!(
            e.starts_with("\"Max open files\" soft limit \"lots\": "),
            "{e}"
        );
    }

    #[test]
    fn own_pressure_matches_getrlimit() {
        let p = fd_pressure(std::process::id()).unwrap();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let expected = if rl.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            rl.rlim_cur
        };
        assert_eq!(p.limit, expected);
        // The test harness's output at least.
        assert!(p.open > 0, "{p:?}");
    }

    #[test]
    fn open_descriptors_are_counted_exactly() {
        use std::process::Stdio;
        // A still process of our own: its standard descriptors, and whatever the test runner
        // let it inherit.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let by_size = open_fds(pid);
        let listed = listed_fds(pid);
        let _ = child.kill();
        let _ = child.wait();
        let (by_size, listed) = (by_size.unwrap(), listed.unwrap());
        assert!(listed >= 3, "{listed}");
        assert_eq!(
            by_size, listed,
            "the size of /proc/PID/fd is its number of entries"
        );
    }

    #[test]
    fn missing_process_is_a_read_error() {
        let e = fd_pressure(u32::MAX).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("reading /proc/{}/fd: ", u32::MAX)),
            "{e}"
        );
    }
}
