//! Root integration tests for the in-kernel filters and `trace --states`: real programs, real
//! connections in network namespaces the tests create, exact events asserted.
//!
//! sockwatch does not filter live events in userspace (the kernel did), so an event absent
//! from the output was never emitted by the kernel; and kept connections must be complete.
mod common;

use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{
    Traced, assert_nothing_lost, root_or_skip,
    server::{SERVER_THREAD_COMM, Server},
    trace_in_new_netns,
};
use serde_json::Value;

const SMALL_MAPS: &[&str] = &["--max-sockets", "65536"];
const N: usize = 3;

/// Entry point of the server process: does nothing in a normal test run.
#[test]
fn server_process_entry_point() {
    common::server::entry_point();
}

fn me() -> u64 {
    u64::from(std::process::id())
}

/// Serves `n` connections on `bind` in a thread named "sw-server": accept, read to EOF, close.
fn serve(bind: &str, n: usize) -> (thread::JoinHandle<()>, SocketAddr) {
    let bind: SocketAddr = bind.parse().expect("address");
    let (tx, rx) = mpsc::channel();
    let h = thread::Builder::new()
        .name("sw-server".into())
        .spawn(move || {
            let l = TcpListener::bind(bind).expect("bind");
            tx.send(l.local_addr().expect("local addr")).expect("send");
            for _ in 0..n {
                let (mut s, _) = l.accept().expect("accept");
                let mut sink = Vec::new();
                s.read_to_end(&mut sink).expect("read");
            }
        })
        .expect("spawn server");
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    (h, addr)
}

/// Connects `n` times to `to`, closing each at once; returns the local ports.
fn connect_n(to: SocketAddr, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let c = TcpStream::connect(to).expect("connect");
            c.local_addr().expect("local addr").port()
        })
        .collect()
}

/// A server thread and `n` clients in this namespace; returns (server port, client ports).
fn exchange(bind: &str, n: usize) -> (u16, Vec<u16>) {
    let (server, addr) = serve(bind, n);
    let clients = connect_n(addr, n);
    server.join().expect("server");
    (addr.port(), clients)
}

fn endpoint(v: &Value, side: &str) -> (String, u64) {
    (
        v[format!("{side}_addr")]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        v[format!("{side}_port")].as_u64().unwrap_or(0),
    )
}

/// The events of one connection (both sides, exact 5-tuple), as "kind/direction", sorted.
fn connection(events: &[&Value], ip: &str, server: u16, client: u16) -> Vec<String> {
    let s = (ip.to_string(), u64::from(server));
    let c = (ip.to_string(), u64::from(client));
    let mut out: Vec<String> = events
        .iter()
        .filter(|e| {
            let (l, p) = (endpoint(e, "local"), endpoint(e, "peer"));
            (l == c && p == s) || (l == s && p == c)
        })
        .map(|e| {
            format!(
                "{}/{}",
                e["event"].as_str().unwrap_or("?"),
                e["direction"].as_str().unwrap_or("-")
            )
        })
        .collect();
    out.sort();
    out
}

const COMPLETE: [&str; 6] = [
    "accept/passive",
    "close/active",
    "close/passive",
    "connect/active",
    "established/active",
    "established/passive",
];

/// Connection events (not samples) of every namespace.
fn all_events(t: &Traced) -> Vec<&Value> {
    t.all
        .iter()
        .filter(|v| {
            !common::is_sample(v)
                && !matches!(v["event"].as_str(), Some("stats" | "lost" | "header"))
        })
        .collect()
}

#[test]
fn port_filter_keeps_complete_connections_of_that_port_only() {
    if !root_or_skip("port_filter_keeps_complete_connections_of_that_port_only") {
        return;
    }
    // Two ports: a local one and a peer one, matched on either side.
    let args = [SMALL_MAPS, &["--port", "8091", "--port", "8093"]].concat();
    let (t, (kept, kept2, dropped)) = trace_in_new_netns(&args, || {
        (
            exchange("127.0.0.1:8091", N),
            exchange("127.0.0.1:8093", 1),
            exchange("127.0.0.1:8092", N),
        )
    });
    let events = all_events(&t);
    for &c in &kept.1 {
        assert_eq!(
            connection(&events, "127.0.0.1", kept.0, c),
            COMPLETE,
            "port {c}"
        );
    }
    assert_eq!(
        connection(&events, "127.0.0.1", kept2.0, kept2.1[0]),
        COMPLETE
    );
    for &c in &dropped.1 {
        assert!(connection(&events, "127.0.0.1", dropped.0, c).is_empty());
    }
    // Whatever other traffic the host has, every event is on a filtered port.
    for e in &events {
        let ports = [e["local_port"].as_u64(), e["peer_port"].as_u64()];
        assert!(
            ports.contains(&Some(8091)) || ports.contains(&Some(8093)),
            "{e}"
        );
    }
    // Exactly: 2 listens, 4 x 6 connection events, 2 listen_stops.
    assert_eq!(t.events.len(), 2 + 6 * (N + 1) + 2, "{:?}", t.events);
    assert_nothing_lost(&t.lost);
}

/// `--pid`: the sockets the process connected or accepted, all their events (the close in
/// softirq included); a passive connection's `established` precedes any owner and is not
/// kept.
#[test]
fn pid_filter_follows_the_recorded_owner() {
    if !root_or_skip("pid_filter_follows_the_recorded_owner") {
        return;
    }
    let pid = me().to_string();
    let args = [SMALL_MAPS, &["--pid", pid.as_str()]].concat();
    let (t, (ours, theirs)) = trace_in_new_netns(&args, || {
        // Our server thread and our clients: all ours.
        let ours = exchange("127.0.0.1:8101", N);
        // Another process's server: its side is not ours; our clients' side is.
        let mut server = Server::start(None);
        let port = server.listen("127.0.0.1:0");
        let clients = connect_n(SocketAddr::from(([127, 0, 0, 1], port)), N);
        server.ask(&format!("accept {N}"));
        server.stop();
        (ours, (port, clients))
    });
    // This namespace's: tests running in parallel share the pid and the server's comm.
    let events: Vec<&Value> = t.events.iter().collect();
    let without_passive_established: Vec<&str> = COMPLETE
        .iter()
        .copied()
        .filter(|k| *k != "established/passive")
        .collect();
    for &c in &ours.1 {
        assert_eq!(
            connection(&events, "127.0.0.1", ours.0, c),
            without_passive_established
        );
    }
    for &c in &theirs.1 {
        assert_eq!(
            connection(&events, "127.0.0.1", theirs.0, c),
            ["close/active", "connect/active", "established/active"]
        );
    }
    assert!(events.iter().all(|e| e["pid"].as_u64() == Some(me())));
    let listens: Vec<u64> = t
        .of_kind("listen")
        .iter()
        .filter_map(|e| e["local_port"].as_u64())
        .collect();
    assert_eq!(listens, [8101]);
    assert_nothing_lost(&t.lost);
}

/// `--comm`: the other process's server thread, not our clients.
#[test]
fn comm_filter_keeps_that_command_only() {
    if !root_or_skip("comm_filter_keeps_that_command_only") {
        return;
    }
    let args = [SMALL_MAPS, &["--comm", SERVER_THREAD_COMM]].concat();
    let (t, (server_pid, port, clients)) = trace_in_new_netns(&args, || {
        let mut server = Server::start(None);
        let pid = server.pid();
        let port = server.listen("127.0.0.1:0");
        let clients = connect_n(SocketAddr::from(([127, 0, 0, 1], port)), N);
        server.ask(&format!("accept {N}"));
        server.stop();
        // Our own exchange: not kept.
        exchange("127.0.0.1:8111", 1);
        (pid, port, clients)
    });
    // This namespace's: tests running in parallel share the pid and the server's comm.
    let events: Vec<&Value> = t.events.iter().collect();
    for &c in &clients {
        assert_eq!(
            connection(&events, "127.0.0.1", port, c),
            ["accept/passive", "close/passive"]
        );
    }
    for e in &events {
        assert_eq!(e["comm"], SERVER_THREAD_COMM, "{e}");
        assert_eq!(e["pid"].as_u64(), Some(server_pid), "{e}");
    }
    assert_eq!(t.of_kind("listen").len(), 1);
    assert_eq!(t.of_kind("listen_stop").len(), 1);
    assert_eq!(t.events.len(), 2 + 2 * N);
    assert_nothing_lost(&t.lost);
}

/// A cgroup v2 group with a child group, removed on drop (after the processes in it left).
struct NestedCgroup {
    parent: PathBuf,
    child: PathBuf,
}

impl NestedCgroup {
    fn new() -> Option<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))?
            .split_whitespace()
            .nth(1)?
            .to_string();
        let parent =
            Path::new(&root).join(format!("sockwatch-test-{}-filters", std::process::id()));
        let child = parent.join("inner");
        fs::create_dir(&parent).ok()?;
        let me = Self { parent, child };
        fs::create_dir(&me.child).ok()?;
        Some(me)
    }
}

impl Drop for NestedCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.child);
        let _ = fs::remove_dir(&self.parent);
    }
}

/// `--cgroup DIR`: processes in DIR or below it.
#[test]
fn cgroup_filter_keeps_processes_below_the_directory() {
    if !root_or_skip("cgroup_filter_keeps_processes_below_the_directory") {
        return;
    }
    let Some(cg) = NestedCgroup::new() else {
        eprintln!("SKIPPED cgroup_filter_keeps_processes_below_the_directory: no cgroup v2");
        return;
    };
    if !common::kernel_has("cgroup_filter") {
        // `sockwatch check` names what is missing; the refusal is tested below.
        eprintln!("SKIPPED cgroup_filter_keeps_processes_below_the_directory: no cgroup filter");
        return;
    }
    let dir = cg.parent.to_str().expect("utf-8 path").to_string();
    let args = [SMALL_MAPS, &["--cgroup", dir.as_str()]].concat();
    let child_id = fs::metadata(&cg.child).expect("child cgroup").ino();
    let (t, (port, clients)) = trace_in_new_netns(&args, || {
        let mut server = Server::start(None);
        fs::write(cg.child.join("cgroup.procs"), server.pid().to_string()).expect("join cgroup");
        let port = server.listen("127.0.0.1:0");
        let clients = connect_n(SocketAddr::from(([127, 0, 0, 1], port)), N);
        server.ask(&format!("accept {N}"));
        server.stop();
        exchange("127.0.0.1:8121", 1);
        (port, clients)
    });
    // This namespace's: tests running in parallel share the pid and the server's comm.
    let events: Vec<&Value> = t.events.iter().collect();
    for &c in &clients {
        assert_eq!(
            connection(&events, "127.0.0.1", port, c),
            ["accept/passive", "close/passive"]
        );
    }
    for e in &events {
        assert_eq!(e["cgroup_id"].as_u64(), Some(child_id), "{e}");
    }
    assert_eq!(t.events.len(), 2 + 2 * N, "{:?}", t.events);
    assert_nothing_lost(&t.lost);
    drop(cg);
}

/// `--netns /proc/PID/task/TID/ns/net`: that namespace only, not sockwatch's own.
#[test]
fn netns_filter_keeps_that_namespace_only() {
    if !root_or_skip("netns_filter_keeps_that_namespace_only") {
        return;
    }
    // A second namespace, held by a thread that runs exchanges there on request.
    let (ns_tx, ns_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let other = thread::spawn(move || {
        let inode = common::enter_new_netns();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        ns_tx
            .send((
                inode,
                format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
            ))
            .expect("send");
        if go_rx.recv().is_ok() {
            done_tx.send(exchange("127.0.0.1:8131", N)).expect("send");
            // Stay (and keep the namespace) until sockwatch has stopped.
            let _ = stop_rx.recv();
        }
    });
    let (inode, path) = ns_rx.recv().expect("namespace");
    let args = [SMALL_MAPS, &["--netns", path.as_str()]].concat();
    let (t, (there, here)) = trace_in_new_netns(&args, move || {
        let here = exchange("127.0.0.1:8131", N);
        go_tx.send(()).expect("go");
        let there = done_rx.recv().expect("exchange there");
        (there, here)
    });
    drop(stop_tx);
    other.join().expect("other namespace thread");
    assert!(t.events.is_empty(), "sockwatch's namespace: {:?}", t.events);
    let events = all_events(&t);
    assert!(events.iter().all(|e| e["netns"].as_u64() == Some(inode)));
    for &c in &there.1 {
        assert_eq!(connection(&events, "127.0.0.1", there.0, c), COMPLETE);
    }
    assert_eq!(events.len(), 2 + 6 * N);
    assert_eq!(
        here.1.len(),
        N,
        "the exchange in sockwatch's namespace happened"
    );
    assert_nothing_lost(&t.lost);
}

/// `-4` keeps IPv4 on the wire, IPv4 on a dual-stack socket included; IPv6 is left out.
#[test]
fn family_filter_follows_what_is_on_the_wire() {
    if !root_or_skip("family_filter_follows_what_is_on_the_wire") {
        return;
    }
    let args = [SMALL_MAPS, &["-4"]].concat();
    let (t, (port, v4, v6)) = trace_in_new_netns(&args, || {
        let (server, addr) = serve("[::]:8141", 2);
        let v4 = connect_n(SocketAddr::from(([127, 0, 0, 1], addr.port())), 1);
        let v6 = connect_n(SocketAddr::new("::1".parse().unwrap(), addr.port()), 1);
        server.join().expect("server");
        (addr.port(), v4[0], v6[0])
    });
    // The v4 connection, on a v6 listener's child: complete, as IPv4.
    assert_eq!(
        connection(&t.events.iter().collect::<Vec<_>>(), "127.0.0.1", port, v4),
        COMPLETE
    );
    assert!(connection(&t.events.iter().collect::<Vec<_>>(), "::1", port, v6).is_empty());
    // The listener on [::] is IPv6.
    assert!(t.of_kind("listen").is_empty());
    assert!(all_events(&t).iter().all(|e| e["family"] == "ipv4"));
    assert_eq!(t.events.len(), 6);
    assert_nothing_lost(&t.lost);
}

/// `--event connect,close`: those kinds only, all of them.
#[test]
fn event_filter_keeps_those_kinds() {
    if !root_or_skip("event_filter_keeps_those_kinds") {
        return;
    }
    let args = [SMALL_MAPS, &["--event", "connect,close"]].concat();
    let (t, (port, clients)) = trace_in_new_netns(&args, || exchange("127.0.0.1:8151", N));
    let events: Vec<&Value> = t.events.iter().collect();
    for &c in &clients {
        assert_eq!(
            connection(&events, "127.0.0.1", port, c),
            ["close/active", "close/passive", "connect/active"]
        );
    }
    assert_eq!(t.events.len(), 3 * N);
    assert!(
        all_events(&t)
            .iter()
            .all(|e| e["event"] == "connect" || e["event"] == "close")
    );
    // Closes still carry their lifetime: the sockets were tracked though their births were
    // not reported.
    assert!(
        t.of_kind("close")
            .iter()
            .all(|e| e["duration_ns"].as_u64().unwrap_or(0) > 0)
    );
    assert_nothing_lost(&t.lost);
}

/// `--states`: every transition of one loopback connection, in order, besides the lifecycle
/// events.
#[test]
fn states_mode_reports_every_transition() {
    if !root_or_skip("states_mode_reports_every_transition") {
        return;
    }
    let args = [SMALL_MAPS, &["--states", "--port", "8161"]].concat();
    let (t, (port, clients)) = trace_in_new_netns(&args, || exchange("127.0.0.1:8161", 1));
    let (sp, cp) = (u64::from(port), u64::from(clients[0]));
    let transitions = |want: &dyn Fn(&Value) -> bool| -> Vec<String> {
        t.of_kind("state")
            .into_iter()
            .filter(|e| want(e))
            .map(|e| {
                format!(
                    "{}->{}",
                    e["from_state"].as_str().unwrap_or("?"),
                    e["to_state"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    // The client: its local port is chosen after it leaves CLOSE, so that first one has 0.
    let client = transitions(&|e| {
        e["peer_port"].as_u64() == Some(sp)
            && [Some(0), Some(cp)].contains(&e["local_port"].as_u64())
    });
    assert_eq!(
        client,
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ]
    );
    // The server's child: on some kernels (6.12 and older) its LISTEN->SYN_RECV fires before
    // the peer's address is copied into it, so that one has peer port 0.
    let is_child = |e: &Value| {
        e["local_port"].as_u64() == Some(sp)
            && (e["peer_port"].as_u64() == Some(cp)
                || (e["peer_port"].as_u64() == Some(0) && e["to_state"] == "SYN_RECV"))
    };
    let child = transitions(&is_child);
    assert_eq!(
        child,
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    let listener = transitions(&|e| {
        e["local_port"].as_u64() == Some(sp) && e["peer_port"] == 0 && !is_child(e)
    });
    assert_eq!(listener, ["CLOSE->LISTEN", "LISTEN->CLOSE"]);
    assert_eq!(t.of_kind("state").len(), 12);
    // Owners: the client's and the listener's from their start; the child's none before it
    // is accepted (after it is established), then the accepting thread's (its last transition
    // included: the owner is still known there).
    for e in t.of_kind("state") {
        let child = is_child(e);
        let from = e["from_state"].as_str().unwrap_or("?");
        let want = match (child, from) {
            (true, "LISTEN" | "SYN_RECV") => None,
            // Before or after accept(), as the client's FIN and accept() race.
            (true, "ESTABLISHED" | "CLOSE_WAIT") => e["pid"].as_u64(),
            _ => Some(me()),
        };
        assert_eq!(e["pid"].as_u64(), want, "{e}");
        assert_eq!(e["netns"].as_u64(), Some(t.netns));
    }
    // The lifecycle events are all there too.
    let lifecycle: Vec<&Value> = t.events.iter().filter(|e| e["event"] != "state").collect();
    assert_eq!(
        connection(&lifecycle, "127.0.0.1", port, clients[0]),
        COMPLETE
    );
    assert_nothing_lost(&t.lost);
}

/// Where the kernel cannot filter by cgroup, `--cgroup` is refused with the reason, before
/// anything is loaded.
#[test]
fn cgroup_filter_without_the_kernel_helper_is_a_clear_error() {
    if !root_or_skip("cgroup_filter_without_the_kernel_helper_is_a_clear_error") {
        return;
    }
    if common::kernel_has("cgroup_filter") {
        eprintln!(
            "SKIPPED cgroup_filter_without_the_kernel_helper_is_a_clear_error: this kernel has it"
        );
        return;
    }
    // An earlier recording at the output path is left as it was.
    let dir = common::TempDir::new("nocgroup");
    let kept = dir.path().join("kept.jsonl");
    fs::write(&kept, "earlier\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args([
            "trace",
            "--duration",
            "1",
            "--cgroup",
            "/sys/fs/cgroup",
            "--output",
        ])
        .arg(&kept)
        .output()
        .expect("run sockwatch");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "sockwatch: error: --cgroup needs bpf_get_current_ancestor_cgroup_id in tracepoint \
          programs, which this kernel lacks: filter by --pid or --comm instead"
        ],
        "{err}"
    );
    assert_eq!(fs::read_to_string(&kept).expect("read"), "earlier\n");
}
