//! Root integration tests for accept attribution, accept failures, connect failures and
//! namespaces. The server runs in a separate process (this test binary re-executed in server
//! mode), so the accepting pid differs from the connecting one, and its file limit and cgroup
//! are its own.
mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    os::unix::fs::MetadataExt,
    thread,
};

use common::{
    assert_nothing_lost, root_or_skip,
    server::{Cgroup, SERVER_THREAD_COMM, Server},
    trace_in_new_netns,
};
use serde_json::Value;

const SMALL_MAPS: &[&str] = &["--max-sockets", "65536"];

/// Entry point of the server process: does nothing in a normal test run.
#[test]
fn server_process_entry_point() {
    common::server::entry_point();
}

fn me() -> u64 {
    u64::from(std::process::id())
}

fn port_set(events: &[&Value], key: &str) -> BTreeSet<u64> {
    events.iter().filter_map(|e| e[key].as_u64()).collect()
}

#[test]
fn accept_events_name_the_accepting_process_and_its_cgroup() {
    if !root_or_skip("accept_events_name_the_accepting_process_and_its_cgroup") {
        return;
    }
    const N: usize = 4;
    let (t, (server_pid, cgroup_id, port, clients)) = trace_in_new_netns(SMALL_MAPS, || {
        let cgroup = Cgroup::new("accept");
        let cgroup_id = cgroup.as_ref().map(Cgroup::id);
        let mut server = Server::start(cgroup);
        let port = server.listen("127.0.0.1:0");
        let clients: Vec<u16> = (0..N)
            .map(|_| {
                let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                c.local_addr().expect("addr").port()
            })
            .collect();
        server.ask(&format!("accept {N}"));
        let pid = server.pid();
        server.stop();
        (pid, cgroup_id, port, clients)
    });
    assert_ne!(server_pid, me());
    let client_ports: BTreeSet<u64> = clients.iter().map(|&p| u64::from(p)).collect();

    let accepts = t.of_kind("accept");
    assert_eq!(accepts.len(), N, "{accepts:?}");
    assert_eq!(port_set(&accepts, "peer_port"), client_ports);
    for a in &accepts {
        assert_eq!(a["pid"].as_u64(), Some(server_pid), "{a}");
        // The accepting thread: libtest names it after the entry point (15 bytes kept).
        assert_eq!(a["comm"], SERVER_THREAD_COMM);
        assert_eq!(a["local_addr"], "127.0.0.1");
        assert_eq!(a["local_port"].as_u64(), Some(u64::from(port)));
        assert_eq!(a["peer_addr"], "127.0.0.1");
        assert_eq!(a["netns"].as_u64(), Some(t.netns));
        if let Some(id) = cgroup_id {
            assert_eq!(
                a["cgroup_id"].as_u64(),
                Some(id),
                "accepting process's cgroup"
            );
        }
    }
    let connects = t.of_kind("connect");
    assert_eq!(port_set(&connects, "local_port"), client_ports);
    assert!(connects.iter().all(|c| c["pid"].as_u64() == Some(me())));
    if let Some(id) = cgroup_id {
        assert!(connects.iter().all(|c| c["cgroup_id"].as_u64() != Some(id)));
    }
    // The listener and the accepted sockets' closes belong to the server process too.
    let listen = t.of_kind("listen");
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0]["pid"].as_u64(), Some(server_pid));
    let passive_closes: Vec<&Value> = t
        .of_kind("close")
        .into_iter()
        .filter(|c| c["direction"] == "passive")
        .collect();
    assert_eq!(passive_closes.len(), N);
    assert!(
        passive_closes
            .iter()
            .all(|c| c["pid"].as_u64() == Some(server_pid))
    );
    assert_nothing_lost(&t.lost);
}

#[test]
fn emfile_accept_failures_leave_connections_queued() {
    if !root_or_skip("emfile_accept_failures_leave_connections_queued") {
        return;
    }
    const QUEUED: usize = 2;
    const FAILS: usize = 3;
    let (t, (server_pid, port, clients)) = trace_in_new_netns(SMALL_MAPS, || {
        let mut server = Server::start(None);
        let port = server.listen("127.0.0.1:0");
        server.ask("fill-fds");
        let clients: Vec<TcpStream> = (0..QUEUED)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        server.ask(&format!("fail {FAILS}"));
        // The failed accepts did not reset the queued connections: they are still open.
        for c in &clients {
            c.set_nonblocking(true).expect("nonblocking");
            let e = (&*c).read(&mut [0u8; 1]).expect_err("no data, no EOF");
            assert_eq!(
                e.kind(),
                io::ErrorKind::WouldBlock,
                "connection was reset: {e}"
            );
        }
        let ports: Vec<u16> = clients
            .iter()
            .map(|c| c.local_addr().expect("addr").port())
            .collect();
        server.ask("restore-fds");
        drop(clients);
        // Once fds are available again, the very same connections are accepted.
        server.ask(&format!("accept {QUEUED}"));
        let pid = server.pid();
        server.stop();
        (pid, port, ports)
    });
    let failures = t.of_kind("accept_failed");
    assert_eq!(failures.len(), FAILS, "{failures:?}");
    for f in &failures {
        assert_eq!(f["errno"], "EMFILE");
        assert_eq!(f["pid"].as_u64(), Some(server_pid));
        assert_eq!(f["local_addr"], "127.0.0.1");
        assert_eq!(f["local_port"].as_u64(), Some(u64::from(port)));
    }
    let client_ports: BTreeSet<u64> = clients.iter().map(|&p| u64::from(p)).collect();
    let accepts = t.of_kind("accept");
    assert_eq!(port_set(&accepts, "peer_port"), client_ports);
    // No close of a queued connection before it was finally accepted.
    let last_failure = t
        .events
        .iter()
        .rposition(|e| e["event"] == "accept_failed")
        .expect("failures");
    let first_close = t.events.iter().position(|e| e["event"] == "close");
    assert!(
        first_close.is_none_or(|c| c > last_failure),
        "{:?}",
        t.events
    );
    assert_nothing_lost(&t.lost);
}

#[test]
fn nonblocking_eagain_is_counted_not_reported() {
    if !root_or_skip("nonblocking_eagain_is_counted_not_reported") {
        return;
    }
    const TRIES: u64 = 5;
    let (t, ()) = trace_in_new_netns(SMALL_MAPS, || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        for _ in 0..TRIES {
            let e = l.accept().expect_err("nothing to accept");
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
    });
    assert!(t.of_kind("accept_failed").is_empty(), "{:?}", t.events);
    // The counter is host-wide: other traffic can only add to it.
    assert!(
        t.stats["accept_would_block"].as_u64().unwrap_or(0) >= TRIES,
        "{}",
        t.stats
    );
    assert_nothing_lost(&t.lost);
}

#[test]
fn connect_error_before_any_packet_is_a_connect_failed() {
    if !root_or_skip("connect_error_before_any_packet_is_a_connect_failed") {
        return;
    }
    let (t, (netns, err)) = trace_in_new_netns(SMALL_MAPS, || {
        // A namespace whose loopback never came up has no route at all: connect() fails
        // before any packet is sent.
        thread::scope(|s| {
            thread::Builder::new()
                .name("sw-noroute".into())
                .spawn_scoped(s, || {
                    // SAFETY: unshare affects this thread only.
                    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                    let ns = fs::metadata("/proc/thread-self/ns/net")
                        .expect("netns")
                        .ino();
                    (
                        ns,
                        TcpStream::connect("127.0.0.1:80").expect_err("no route"),
                    )
                })
                .expect("spawn")
                .join()
                .expect("thread")
        })
    });
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
    let events = t.in_netns(netns);
    let kinds = common::kinds(events.iter().copied());
    assert_eq!(
        kinds,
        ["connect_failed"],
        "no SYN left, so no connect: {events:?}"
    );
    let f = events[0];
    assert_eq!(f["reason"], "unreachable");
    assert_eq!(f["errno"], "ENETUNREACH");
    assert_eq!(f["peer_addr"], "127.0.0.1");
    assert_eq!(f["peer_port"], 80);
    assert_eq!(f["family"], "ipv4");
    assert_eq!(f["pid"].as_u64(), Some(me()));
    assert_eq!(f["comm"], "sw-noroute");
    assert_nothing_lost(&t.lost);
}

#[test]
fn a_fast_open_syn_does_not_hide_the_threads_next_connect_failure() {
    if !root_or_skip("a_fast_open_syn_does_not_hide_the_threads_next_connect_failure") {
        return;
    }
    let (t, (netns, port, err)) = trace_in_new_netns(SMALL_MAPS, || {
        let netns = fs::metadata("/proc/thread-self/ns/net")
            .expect("netns")
            .ino();
        // TCP Fast Open for client and server, in this namespace only.
        fs::write("/proc/sys/net/ipv4/tcp_fastopen", "3").expect("enable TCP Fast Open");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let queue: libc::c_int = 16;
        let to = common::loopback_v4(port);
        // SAFETY: plain socket syscalls on fds we own, with initialised buffers.
        let client = unsafe {
            let rc = libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN,
                (&queue as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            assert_eq!(rc, 0, "TCP_FASTOPEN: {}", io::Error::last_os_error());
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let client: TcpStream = std::os::fd::FromRawFd::from_raw_fd(fd);
            // The SYN leaves from sendto(), not connect(): no connect() exit takes this
            // thread's connecting socket.
            let sent = libc::sendto(
                fd,
                b"x".as_ptr().cast(),
                1,
                libc::MSG_FASTOPEN,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(sent, 1, "sendto: {}", io::Error::last_os_error());
            client
        };
        let (mut server, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).expect("read");
        drop((client, server));
        // The same thread's next connect() fails before any packet: no route from here.
        let err = TcpStream::connect("10.1.2.3:80").expect_err("no route");
        common::wait_connections_settled();
        (netns, port, err)
    });
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
    let events = t.in_netns(netns);
    let failed: Vec<&&Value> = events
        .iter()
        .filter(|e| e["event"] == "connect_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["errno"], "ENETUNREACH");
    assert_eq!(failed[0]["peer_addr"], "10.1.2.3");
    assert_eq!(failed[0]["peer_port"], 80);
    // The Fast Open connection itself, reported by its state changes.
    let connects = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["peer_port"].as_u64() == Some(u64::from(port)))
        .count();
    assert_eq!(connects, 1, "{events:?}");
    assert_nothing_lost(&t.lost);
}

#[test]
fn unanswered_syns_are_a_connect_failed_timeout() {
    if !root_or_skip("unanswered_syns_are_a_connect_failed_timeout") {
        return;
    }
    let (t, err) = trace_in_new_netns(SMALL_MAPS, || {
        // Loopback down after it was up: the route stays, the SYNs go nowhere. One retry
        // (TCP_SYNCNT=1) makes the kernel give up after about 3 s.
        common::set_loopback(false);
        let err = connect_raw(None, Some(1), "127.0.0.1:80".parse().unwrap()).expect_err("timeout");
        common::set_loopback(true);
        err
    });
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    let kinds = common::kinds(&t.events);
    assert_eq!(
        kinds,
        ["connect", "connect_failed", "close"],
        "{:?}",
        t.events
    );
    let f = &t.events[1];
    assert_eq!(f["reason"], "timeout");
    assert_eq!(f["errno"], "ETIMEDOUT");
    for e in &t.events {
        assert_eq!(e["pid"].as_u64(), Some(me()), "{e}");
        assert_eq!(e["comm"], "sw-netns");
        assert_eq!(e["peer_port"], 80);
        assert_eq!(e["local_port"], t.events[0]["local_port"]);
    }
    assert!(t.events[2]["duration_ns"].as_u64().unwrap_or(0) > 1_000_000_000);
    assert_nothing_lost(&t.lost);
}

/// The same addresses and ports in two namespaces: every event lands in its own namespace.
#[test]
fn same_tuples_in_two_namespaces_are_told_apart() {
    if !root_or_skip("same_tuples_in_two_namespaces_are_told_apart") {
        return;
    }
    // One exchange on 127.0.0.1:8080 with a fixed client port, in the calling thread's netns.
    fn exchange(server_name: &str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:8080").expect("bind");
        let name = server_name.to_string();
        let server = thread::Builder::new()
            .name(name)
            .spawn(move || {
                let (mut s, _) = l.accept().expect("accept");
                let mut sink = Vec::new();
                s.read_to_end(&mut sink).expect("read");
            })
            .expect("spawn");
        let sock =
            connect_raw(Some(40000), None, "127.0.0.1:8080".parse().unwrap()).expect("connect");
        let port = sock.local_addr().expect("addr").port();
        drop(sock);
        server.join().expect("server");
        port
    }
    let (t, other_netns) = trace_in_new_netns(SMALL_MAPS, || {
        let other = thread::scope(|s| {
            thread::Builder::new()
                .name("sw-netns-b".into())
                .spawn_scoped(s, || {
                    let ns = common::enter_new_netns();
                    exchange("sw-server-b");
                    common::wait_connections_settled();
                    ns
                })
                .expect("spawn")
                .join()
                .expect("netns b")
        });
        exchange("sw-server-a");
        other
    });
    assert_ne!(other_netns, t.netns);
    let a = &t.events;
    let b = t.in_netns(other_netns);
    for (events, server) in [
        (a.iter().collect::<Vec<_>>(), "sw-server-a"),
        (b, "sw-server-b"),
    ] {
        // listen, connect, 2 established, accept, 2 closes, listen_stop.
        assert_eq!(events.len(), 8, "{events:?}");
        let accepts: Vec<&&Value> = events.iter().filter(|e| e["event"] == "accept").collect();
        assert_eq!(accepts.len(), 1);
        assert_eq!(accepts[0]["comm"], server);
        assert_eq!(accepts[0]["peer_port"], 40000);
        assert!(events.iter().all(|e| e["local_addr"] == "127.0.0.1"));
    }
    assert_nothing_lost(&t.lost);
}

/// connect() through raw syscalls, for what std cannot set: a fixed local port, a SYN retry
/// count.
fn connect_raw(
    local_port: Option<u16>,
    syn_count: Option<libc::c_int>,
    to: SocketAddr,
) -> io::Result<TcpStream> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let int_opt = |fd, level, name, value: libc::c_int| {
        // SAFETY: valid fd and option buffer.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        })
    };
    // SAFETY: plain socket syscalls on an fd we own, with fully initialised sockaddrs.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream: TcpStream = std::os::fd::FromRawFd::from_raw_fd(fd);
        if let Some(port) = local_port {
            int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            let local = common::loopback_v4(port);
            check(libc::bind(
                fd,
                (&local as *const libc::sockaddr_in).cast(),
                len,
            ))?;
        }
        if let Some(n) = syn_count {
            int_opt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, n)?;
        }
        let remote = common::loopback_v4(to.port());
        check(libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        Ok(stream)
    }
}
