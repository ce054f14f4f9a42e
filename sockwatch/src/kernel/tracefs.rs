//! Making tracefs available for the syscall tracepoints without touching the host's mounts.
//!
//! When tracefs is not mounted, sockwatch mounts it inside a private mount namespace of its
//! own: the host's mount table never changes, and the mount disappears with the process, even
//! if it is killed.
use std::{ffi::CString, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({step}: {cause}); mount it with `mount -t tracefs tracefs {TRACEFS}`"
    )]
    Mount {
        step: &'static str,
        cause: io::Error,
    },
}

fn populated(dir: &str) -> bool {
    Path::new(dir)
        .join("events")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
}

/// Where tracefs is mounted (after [`ensure`]).
pub fn root() -> &'static Path {
    if populated(TRACEFS) || !populated(DEBUGFS_TRACING) {
        Path::new(TRACEFS)
    } else {
        Path::new(DEBUGFS_TRACING)
    }
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracefs {
    AlreadyMounted,
    MountedPrivately,
}

/// Makes tracefs available at [`TRACEFS`]. Must run before any thread is started: a mount
/// namespace can only be unshared by a single-threaded process.
pub fn ensure() -> Result<Tracefs, TracefsError> {
    if populated(TRACEFS) || populated(DEBUGFS_TRACING) {
        return Ok(Tracefs::AlreadyMounted);
    }
    let err = |step| move |cause| TracefsError::Mount { step, cause };
    // SAFETY: plain syscalls with valid, NUL-terminated arguments.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS)).map_err(err("unshare(CLONE_NEWNS)"))?;
        // Keep our mounts from propagating back to the host.
        let root = CString::new("/").unwrap_or_default();
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))
        .map_err(err("making / private"))?;
        let fstype = CString::new("tracefs").unwrap_or_default();
        let target = CString::new(TRACEFS).unwrap_or_default();
        check(libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
        .map_err(err("mount -t tracefs"))?;
    }
    Ok(Tracefs::MountedPrivately)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
