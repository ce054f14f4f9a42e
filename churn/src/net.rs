//! Thin wrappers over the socket calls the load needs (libc; IPv4 loopback only), and the
//! process set-up: a new network namespace with its loopback up, and the open-file limit.
use std::{
    io,
    mem::{size_of, zeroed},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, bail};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all zeroes is valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A blocking IPv4 TCP socket.
pub fn tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    setsockopt(fd.as_raw_fd(), level, name, &v)
}

/// SO_SNDTIMEO (bounds a blocking connect) or SO_RCVTIMEO (bounds accept and read).
pub fn set_timeout(fd: &OwnedFd, name: libc::c_int, d: Duration) -> io::Result<()> {
    // Zero would mean "forever".
    let d = d.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, name, &tv)
}

/// Makes close() send a RST instead of a FIN.
pub fn set_linger_zero(fd: &OwnedFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

pub fn bind(fd: &OwnedFd, ip: Ipv4Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(ip, port);
    // SAFETY: sa is a valid sockaddr_in of the given length.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn connect(fd: &OwnedFd, ip: Ipv4Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(ip, port);
    // SAFETY: as in bind.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: zeroed sockaddr_in is valid; getsockname writes at most `len` bytes.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) })?;
    Ok(u16::from_be(sa.sin_port))
}

/// A socket on 127.0.0.1:`port` with SO_REUSEPORT (so that every server process can bind the
/// same port), listening when `listen` is set.
pub fn reuseport_socket(port: u16, listen: bool) -> io::Result<OwnedFd> {
    let fd = tcp_socket()?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    bind(&fd, Ipv4Addr::LOCALHOST, port)?;
    if listen {
        // The kernel caps the backlog at net.core.somaxconn.
        // SAFETY: plain syscall on a descriptor we own.
        check(unsafe { libc::listen(fd.as_raw_fd(), 65535) })?;
    }
    Ok(fd)
}

pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the descriptor is owned from here on.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads until the peer closes (Ok) or the connection fails (Err, e.g. ECONNRESET).
pub fn read_to_eof(fd: &OwnedFd) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Ok(()),
            n if n > 0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Moves this thread (and the processes it starts from now on) into a new network namespace,
/// and brings its loopback up: 127.0.0.0/8 is then usable, and only by us.
pub fn enter_new_netns() -> anyhow::Result<()> {
    // SAFETY: plain syscall; affects only the calling thread (the main thread, before any
    // other thread or child exists).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "cannot create a network namespace ({e}): --new-netns needs root (CAP_SYS_ADMIN); \
             run as root or drop --new-netns"
        );
    }
    loopback_up().context("cannot bring up lo in the new network namespace")
}

/// Moves this thread (and the processes it starts from now on) into the network namespace at
/// `path`, and brings its loopback up.
pub fn join_netns(path: &std::path::Path) -> anyhow::Result<()> {
    let ns = std::fs::File::open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    // SAFETY: plain syscall on a descriptor we own; affects only the calling thread (the main
    // thread, before any other thread or child exists).
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "cannot join network namespace {} ({e}): --netns needs root (CAP_SYS_ADMIN) and a \
             network namespace file",
            path.display()
        );
    }
    loopback_up().context("cannot bring up lo in the network namespace")
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: as above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOC[GS]IFFLAGS read and write an ifreq; ifru_flags is the member they use.
    unsafe {
        check(libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFFLAGS as _,
            &raw mut req,
        ))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCSIFFLAGS as _,
            &raw mut req,
        ))?;
    }
    Ok(())
}

/// The inode of our network namespace (as in `ls -i /proc/self/ns/net`; sockwatch's `netns`).
pub fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_nofile() -> u64 {
    // SAFETY: rlimit is plain data, written by getrlimit.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl = raised;
        }
    }
    rl.rlim_cur
}

/// Size of this namespace's ephemeral port range (net.ipv4.ip_local_port_range).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u64>);
            match (it.next()?, it.next()?) {
                (Ok(lo), Ok(hi)) if hi >= lo => Some(hi - lo + 1),
                _ => None,
            }
        })
        .unwrap_or(28232)
}

/// Client source address `k` (0-based): 127.0.0.1, 127.0.0.2, ...
pub fn source(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + k)
}

/// Asks the kernel to kill this process when the thread that started it exits, so that no child
/// outlives its coordinator.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: async-signal-safe syscall, fine between fork and exec.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_count_up_from_loopback() {
        assert_eq!(source(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source(3), Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(source(253), Ipv4Addr::new(127, 0, 0, 254));
    }
}
