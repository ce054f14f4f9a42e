//! Root integration tests of the per-port summary: `top --format json` on real connections in a
//! fresh namespace, and `report` over the recorded file giving the very same summary.
mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::MetadataExt,
    },
    thread,
};

use common::{assert_nothing_lost, root_or_skip, run_in_new_netns, server::Server, wait_for_line};
use serde_json::Value;

const TOP: &[&str] = common::TOP_JSON;

/// Entry point of the server process (see common::server).
#[test]
fn server_process_entry_point() {
    common::server::entry_point();
}

fn listener(summary: &Value, netns: u64, port: u16) -> &Value {
    summary["listeners"]
        .as_array()
        .and_then(|ls| {
            ls.iter().find(|l| {
                l["netns"].as_u64() == Some(netns) && l["port"].as_u64() == Some(u64::from(port))
            })
        })
        .unwrap_or_else(|| panic!("no listener {netns}/{port} in {summary}"))
}

#[test]
fn per_port_counts_and_report_agree_with_live() {
    if !root_or_skip("per_port_counts_and_report_agree_with_live") {
        return;
    }
    const N: usize = 6;
    let dir = common::TempDir::new("summary");
    let copy = dir.path().join("copy.jsonl");
    let (t, stdout, port) = run_in_new_netns(TOP, libc::SIGTERM, |_| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = thread::spawn(move || {
            for _ in 0..N {
                let (mut s, _) = l.accept().expect("accept");
                s.read_to_end(&mut Vec::new()).expect("read");
            }
        });
        for _ in 0..N {
            drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        }
        server.join().expect("server");
        port
    });
    let live: Value = serde_json::from_str(&stdout).expect("live summary JSON");
    let l = listener(&live, t.netns, port);
    assert_eq!(l["accepted"].as_u64(), Some(N as u64), "{l}");
    assert_eq!(l["closed"].as_u64(), Some(N as u64), "{l}");
    assert_eq!(l["established_now"].as_u64(), Some(0), "{l}");
    assert_eq!(l["distinct_peers"].as_u64(), Some(1));
    assert_eq!(l["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(l["lifetime_p50_ns"].as_u64().unwrap_or(0) > 0);
    assert!(
        l["accept_failures"]
            .as_object()
            .is_some_and(|m| m.is_empty())
    );
    let out = live["outbound"]
        .as_array()
        .and_then(|os| {
            os.iter().find(|o| {
                o["netns"].as_u64() == Some(t.netns)
                    && o["peer_port"].as_u64() == Some(u64::from(port))
            })
        })
        .expect("outbound entry");
    assert_eq!(out["connects"].as_u64(), Some(N as u64));
    assert_eq!(out["established"].as_u64(), Some(N as u64));
    assert_eq!(out["open_now"].as_u64(), Some(0));
    assert_nothing_lost(&live["lost"]);
    assert_nothing_lost(&t.lost);

    // The recording yields the very same summary.
    std::fs::write(&copy, &t.raw).expect("write copy");
    assert_eq!(common::report_json(&copy), common::recordable(&live));
}

#[test]
fn full_backlog_shows_queue_at_its_limit_and_overflows() {
    if !root_or_skip("full_backlog_shows_queue_at_its_limit_and_overflows") {
        return;
    }
    const CLIENTS: usize = 30;
    let (t, stdout, port) = run_in_new_netns(TOP, libc::SIGTERM, |out| {
        // backlog 1, never accepted: the queue holds 2, later SYNs are dropped.
        let l = listen_raw(1);
        let port = l.local_addr().expect("addr").port();
        let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect_nonblocking(port)).collect();
        wait_for_line(out, "full queue sample", |v| {
            v["event"] == "queue"
                && v["local_port"].as_u64() == Some(u64::from(port))
                && v["depth"].as_u64() == Some(2)
        });
        wait_for_line(out, "listen overflows", |v| {
            v["event"] == "netstat" && v["listen_overflows"].as_u64().unwrap_or(0) > 0
        });
        drop(clients);
        drop(l);
        port
    });
    let live: Value = serde_json::from_str(&stdout).expect("live summary JSON");
    let l = listener(&live, t.netns, port);
    // With or without the drop reason (listen_overflow_events): SYN drops are blamed on the
    // namespace's one full listener.
    assert!(l["overflows"].as_u64().unwrap_or(0) > 0, "{l}");
    assert_eq!(l["backlog"].as_u64(), Some(1), "{l}");
    let ns = live["namespaces"]
        .as_array()
        .and_then(|v| v.iter().find(|n| n["netns"].as_u64() == Some(t.netns)))
        .expect("namespace");
    assert!(ns["listen_overflows"].as_u64().unwrap_or(0) > 0, "{ns}");
    // The queue was seen at its limit (backlog + 1).
    assert!(t.samples.iter().any(|s| s["event"] == "queue"
        && s["local_port"].as_u64() == Some(u64::from(port))
        && s["depth"].as_u64() == Some(2)
        && s["backlog"].as_u64() == Some(1)));
}

#[test]
fn emfile_failures_are_counted_on_the_port() {
    if !root_or_skip("emfile_failures_are_counted_on_the_port") {
        return;
    }
    let (t, stdout, (port, pid)) = run_in_new_netns(TOP, libc::SIGTERM, |_| {
        let mut server = Server::start(None);
        let port = server.listen("127.0.0.1:0");
        server.ask("fill-fds");
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        server.ask("fail 4");
        server.ask("restore-fds");
        drop(client);
        server.ask("accept 1");
        let pid = server.pid();
        server.stop();
        (port, pid)
    });
    let live: Value = serde_json::from_str(&stdout).expect("live summary JSON");
    let l = listener(&live, t.netns, port);
    assert_eq!(l["accept_failures"]["EMFILE"].as_u64(), Some(4), "{l}");
    assert_eq!(l["accepted"].as_u64(), Some(1), "{l}");
    assert_eq!(l["pid"].as_u64(), Some(pid));
}

/// A listener with an explicit small backlog (std always asks for 128).
fn listen_raw(backlog: i32) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen() again on our own bound socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), backlog) }, 0);
    l
}

/// Starts a connect without waiting for it (the SYN may well be dropped).
fn connect_nonblocking(port: u16) -> TcpStream {
    // SAFETY: plain socket syscalls on an fd we own; the sockaddr is fully initialised.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0);
        let sa = common::loopback_v4(port);
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert!(
            rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS)
        );
        TcpStream::from_raw_fd(fd)
    }
}

/// Without a terminal, `top` prints the table as plain text at each interval, no escape codes.
#[test]
fn top_without_a_terminal_prints_plain_tables() {
    if !root_or_skip("top_without_a_terminal_prints_plain_tables") {
        return;
    }
    let args = ["top", "--interval", "0.2", "--max-sockets", "65536"];
    let (_, stdout, port) = run_in_new_netns(&args, libc::SIGTERM, |out| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        drop(l.accept().expect("accept"));
        // Two more samples (of this namespace) after the connection: at least two refreshes
        // show it.
        let ns = std::fs::metadata("/proc/thread-self/ns/net")
            .expect("netns")
            .ino();
        let is_sample = |v: &Value| v["event"] == "netstat" && v["netns"].as_u64() == Some(ns);
        let seen = common::count_lines(out, is_sample);
        common::wait_for_count(out, "two more samples", is_sample, seen + 2);
        port
    });
    assert!(!stdout.contains('\x1b'), "escape codes in plain output");
    let refreshes = stdout.matches("LISTENING PORTS").count();
    assert!(refreshes >= 2, "{stdout}");
    // Sockets open while running (the listener, at least) are not losses.
    let headers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" UTC  listeners: "))
        .collect();
    assert!(headers.len() >= 2, "{stdout}");
    assert!(
        headers.iter().all(|h| h.ends_with("lost: 0")),
        "{headers:?}"
    );
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&port.to_string()))
        .unwrap_or_else(|| panic!("no row for port {port}: {stdout}"));
    // NETNS PORT ADDR PID COMM ACCEPTED ...
    assert_eq!(row.split_whitespace().nth(5), Some("1"), "{row}");
}
