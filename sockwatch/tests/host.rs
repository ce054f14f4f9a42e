//! Root integration test of `sockwatch::host`: in a network namespace of the test's own, a
//! listener with a backlog of 5 and clients it never accepts, seen through every reader of the
//! module: namespaces(), sock_diag, the fd links, the TcpExt counters and the fd limit.
use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use sockwatch::host::{self, DiagSocket, Netns};

const BACKLOG: i32 = 5;
const LISTEN: u32 = 1 << 10;
const ESTABLISHED: u32 = 1 << 1;
const SYN_RECV: u32 = 1 << 3;

/// True when the test can create namespaces. Without root it says it skipped, except in CI
/// (CI=true), where missing root is a failure.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but not running as root: the host tests cannot run");
    }
    eprintln!("SKIPPED {test}: needs root to create a network namespace (run as root)");
    false
}

/// Moves the calling thread into a new network namespace with loopback up; returns its inode.
fn enter_new_netns() -> u32 {
    // SAFETY: plain syscalls with valid arguments; unshare and the ioctls affect this thread's
    // new namespace only; the ifreq is zeroed and named.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNET),
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS lo: {}",
            io::Error::last_os_error()
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
            0,
            "SIOCSIFFLAGS lo up: {}",
            io::Error::last_os_error()
        );
    }
    let ino = fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino();
    u32::try_from(ino).expect("namespace inodes are 32-bit")
}

/// A listener on 127.0.0.1 with `backlog`: std's TcpListener always asks for 128.
fn listen_with_backlog(backlog: i32) -> TcpListener {
    // SAFETY: socket/bind/listen on a descriptor we own, with a sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            ),
            0,
            "bind: {}",
            io::Error::last_os_error()
        );
        assert_eq!(
            libc::listen(fd.as_raw_fd(), backlog),
            0,
            "listen: {}",
            io::Error::last_os_error()
        );
        TcpListener::from(fd)
    }
}

fn socket_inode(fd: &impl AsRawFd) -> u64 {
    fs::metadata(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()))
        .expect("stat socket fd")
        .ino()
}

/// A child process we started, killed by its pid and reaped however the test ends.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Dumps until `done` accepts the result: the server side of a loopback handshake completes in
/// softirq, possibly just after connect() returned. Bounded in time.
fn dump_until(
    ns: &Netns,
    states: u32,
    what: &str,
    done: impl Fn(&[DiagSocket]) -> bool,
) -> Vec<DiagSocket> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = host::dump_tcp(ns, states).expect("dump_tcp");
        if done(&sockets) {
            return sockets;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen after 5 s: {sockets:#?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn host_state_of_a_listener_with_unaccepted_connections() {
    if !root_or_skip("host_state_of_a_listener_with_unaccepted_connections") {
        return;
    }
    // A thread of its own: unshare changes the calling thread, which must not be the process's
    // main thread (the one /proc/PID/ns/net shows), and it ends with the test.
    thread::Builder::new()
        .name("host-netns".into())
        .spawn(in_own_netns)
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn in_own_netns() {
    let netns = enter_new_netns();
    let listener = listen_with_backlog(BACKLOG);
    let addr = listener.local_addr().expect("local_addr");
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();

    // A process in the namespace: this thread is not one, so namespaces() cannot see it.
    let child = Sleeper(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let child_pid = child.0.id();

    // namespaces(): ours, reached through the child, the only process in it.
    let all = host::namespaces().expect("namespaces");
    let ns = all
        .iter()
        .find(|n| n.inode == netns)
        .copied()
        .unwrap_or_else(|| panic!("netns {netns} not in {all:?}"));
    assert_eq!(ns.pid, child_pid);
    assert_eq!(Netns::of_pid(child_pid).expect("of_pid"), ns);
    let own = Netns::of_pid(std::process::id()).expect("own netns");
    assert_ne!(own.inode, netns, "the process's main thread stayed outside");
    assert!(all.iter().any(|n| n.inode == own.inode));

    // The listener: accept queue 2 deep, limit 5.
    let listeners = dump_until(&ns, LISTEN, "accept queue of 2", |s| {
        s.len() == 1 && s[0].recv_queue == 2
    });
    let l = &listeners[0];
    assert_eq!(l.netns, netns);
    assert_eq!(l.state, 10);
    assert_eq!(l.local, addr);
    assert_eq!(l.peer, SocketAddr::from(SocketAddrV4::new(0.into(), 0)));
    assert_eq!((l.recv_queue, l.send_queue), (2, BACKLOG as u32));
    let listener_inode = socket_inode(&listener);
    assert_eq!(l.inode, listener_inode);

    // ESTABLISHED: the 2 clients and the 2 server sides waiting in the accept queue.
    let established = dump_until(&ns, ESTABLISHED, "4 established sockets", |s| s.len() == 4);
    assert!(established.iter().all(|s| s.state == 1 && s.netns == netns));
    let client_side: Vec<_> = established.iter().filter(|s| s.peer == addr).collect();
    let server_side: Vec<_> = established.iter().filter(|s| s.local == addr).collect();
    assert_eq!(
        (client_side.len(), server_side.len()),
        (2, 2),
        "{established:#?}"
    );
    for c in &clients {
        let local = c.local_addr().expect("client addr");
        let inode = socket_inode(c);
        let seen = client_side
            .iter()
            .find(|s| s.local == local)
            .unwrap_or_else(|| panic!("client {local} not in {established:#?}"));
        assert_eq!(seen.inode, inode);
        assert!(
            server_side.iter().any(|s| s.peer == local),
            "server side of {local} not in {established:#?}"
        );
    }
    // Not accepted yet, so no file and no inode.
    assert!(server_side.iter().all(|s| s.inode == 0), "{server_side:#?}");

    // The fd links: this process holds the listener and the clients.
    let owners = host::socket_owners().expect("socket_owners");
    assert_eq!(owners.get(&listener_inode), Some(&std::process::id()));
    for c in &clients {
        assert_eq!(owners.get(&socket_inode(c)), Some(&std::process::id()));
    }

    // TcpExt counters of the fresh namespace: nothing overflowed yet.
    let before = host::listen_counters(child_pid).expect("listen_counters");
    assert_eq!((before.overflows, before.drops), (0, 0));

    // Fill the queue: the kernel queues one more than the backlog (full means more than it).
    let more: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    dump_until(&ns, LISTEN, "accept queue of 6", |s| {
        s.len() == 1 && s[0].recv_queue == 6
    });
    // The next SYN is dropped and counted; the client gives up quickly.
    let refused = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(refused.is_err(), "connected to a full queue");
    let after = host::listen_counters(child_pid).expect("listen_counters");
    assert!(after.overflows >= 1, "{after:?}");
    assert!(after.drops >= after.overflows, "{after:?}");
    drop(more);

    dual_stack_client_is_reported_as_ipv4(&ns);
    request_sockets_are_syn_recv(&ns);

    // This process's descriptors against its limit, and the child's.
    let fds = host::fd_pressure(std::process::id()).expect("fd_pressure");
    assert!(fds.open > 0 && fds.limit > fds.open, "{fds:?}");
    let child_fds = host::fd_pressure(child_pid).expect("child fd_pressure");
    assert!(child_fds.open > 0 && child_fds.limit > 0, "{child_fds:?}");
    drop(child);
}

/// An IPv4 client of a dual-stack listener: the server side is an IPv6 socket with v4-mapped
/// addresses, reported as IPv4; the listener itself stays `[::]`.
fn dual_stack_client_is_reported_as_ipv4(ns: &Netns) {
    let listener = match TcpListener::bind("[::]:0") {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            eprintln!("IPv6 is disabled: dual-stack normalisation not checked on the kernel");
            return;
        }
        Err(e) => panic!("bind [::]:0: {e}"),
    };
    let port = listener.local_addr().expect("local_addr").port();
    let v4 = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let client = TcpStream::connect(v4).expect("connect to the dual-stack listener");
    let client_addr = client.local_addr().expect("client addr");

    let on_port = |s: &DiagSocket| s.local.port() == port;
    let listeners = dump_until(ns, LISTEN, "the dual-stack listener", |s| {
        s.iter().any(on_port)
    });
    let l = listeners.iter().find(|s| on_port(s)).expect("listener");
    assert_eq!(l.local, listener.local_addr().expect("local_addr"));
    assert_eq!(l.peer, "[::]:0".parse().expect("addr"));

    let established = dump_until(ns, ESTABLISHED, "the dual-stack server side", |s| {
        s.iter().any(on_port)
    });
    let server = established
        .iter()
        .find(|s| on_port(s))
        .expect("server side");
    assert_eq!((server.local, server.peer), (v4, client_addr));
}

/// A handshake the server has not finished: with TCP_DEFER_ACCEPT the listener keeps its request
/// socket (NEW_SYN_RECV, 12) until the client sends data. The kernel reports it as SYN_RECV (3),
/// with no inode.
fn request_sockets_are_syn_recv(ns: &Netns) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let seconds: libc::c_int = 30;
    // SAFETY: setsockopt on a descriptor we own, with an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
    let addr = listener.local_addr().expect("local_addr");
    let client = TcpStream::connect(addr).expect("connect");
    let client_addr = client.local_addr().expect("client addr");

    let at_listener = |s: &DiagSocket| s.local == addr;
    let pending = dump_until(ns, SYN_RECV, "the request socket", |s| {
        s.iter().any(at_listener)
    });
    let r = pending
        .iter()
        .find(|s| at_listener(s))
        .expect("request socket");
    assert_eq!((r.state, r.peer, r.inode), (3, client_addr, 0));
    // Asked for as NEW_SYN_RECV (12), the same socket still comes back labelled SYN_RECV.
    let by_own_state = host::dump_tcp(ns, 1 << 12).expect("dump_tcp");
    assert_eq!(
        by_own_state
            .iter()
            .filter(|s| at_listener(s))
            .collect::<Vec<_>>(),
        [r]
    );
}
