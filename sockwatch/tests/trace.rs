//! Root integration tests: the real programs, real connections in a fresh network namespace,
//! exact events asserted.
mod common;

use std::{
    collections::BTreeSet,
    io::{self, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{
    TempDir, Traced, assert_nothing_lost, root_or_skip, trace_in_new_netns,
    trace_in_new_netns_until,
};
use serde_json::Value;

const N: usize = 5;
const SMALL_MAPS: &[&str] = &["--max-sockets", "65536"];

/// Serves `n` connections on `bind`: accept, read to EOF (the client closes first), close.
/// Reports readiness once listening. Runs in a thread named "sw-server".
fn serve(bind: SocketAddr, n: usize) -> (thread::JoinHandle<()>, SocketAddr) {
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

/// Connects `n` times to `to` and closes each connection at once; returns the local ports.
fn connect_n(to: SocketAddr, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let c = TcpStream::connect(to).expect("connect");
            c.local_addr().expect("local addr").port()
        })
        .collect()
}

fn addr(v: &Value, side: &str) -> (String, u64) {
    (
        v[format!("{side}_addr")]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        v[format!("{side}_port")].as_u64().unwrap_or(0),
    )
}

fn ports(events: &[&Value], side: &str) -> BTreeSet<u64> {
    events.iter().map(|e| addr(e, side).1).collect()
}

fn me() -> u64 {
    u64::from(std::process::id())
}

/// Everything a plain client/server exchange must produce, exactly.
fn assert_exchange(t: &Traced, family: &str, ip: &str, server_port: u16, clients: &[u16]) {
    let n = clients.len();
    let client_ports: BTreeSet<u64> = clients.iter().map(|&p| u64::from(p)).collect();
    assert_eq!(client_ports.len(), n, "distinct client ports");
    let sp = u64::from(server_port);

    let listen = t.of_kind("listen");
    assert_eq!(listen.len(), 1, "listen events: {listen:?}");
    assert_eq!(addr(listen[0], "local"), (listen_ip(ip), sp));
    assert_eq!(listen[0]["pid"].as_u64(), Some(me()));
    assert_eq!(listen[0]["comm"], "sw-server");

    let connects = t.of_kind("connect");
    assert_eq!(connects.len(), n, "connect events: {connects:?}");
    for c in &connects {
        assert_eq!(c["family"], family);
        assert_eq!(c["local_addr"], ip);
        assert_eq!(addr(c, "peer"), (ip.to_string(), sp));
        assert_eq!(c["pid"].as_u64(), Some(me()), "connecting pid: {c}");
        assert_eq!(c["comm"], "sw-netns");
        assert_eq!(c["direction"], "active");
        assert!(c["cgroup_id"].as_u64().is_some());
    }
    assert_eq!(ports(&connects, "local"), client_ports);

    let established = t.of_kind("established");
    assert_eq!(established.len(), 2 * n, "established: {established:?}");
    let (active, passive): (Vec<&Value>, Vec<&Value>) =
        established.iter().partition(|e| e["direction"] == "active");
    assert_eq!(ports(&active, "local"), client_ports);
    assert!(
        active
            .iter()
            .all(|e| addr(e, "peer") == (ip.to_string(), sp))
    );
    assert!(active.iter().all(|e| e["pid"].as_u64() == Some(me())));
    assert_eq!(passive.len(), n);
    assert_eq!(ports(&passive, "peer"), client_ports);
    assert!(
        passive
            .iter()
            .all(|e| addr(e, "local") == (ip.to_string(), sp))
    );
    assert!(passive.iter().all(|e| e["family"] == family));

    // accept() ran in the server thread: the accepted sockets belong to it from then on.
    let accepts = t.of_kind("accept");
    assert_eq!(accepts.len(), n, "accept events: {accepts:?}");
    assert_eq!(ports(&accepts, "peer"), client_ports);
    for a in &accepts {
        assert_eq!(addr(a, "local"), (ip.to_string(), sp));
        assert_eq!(a["family"], family);
        assert_eq!(a["pid"].as_u64(), Some(me()));
        assert_eq!(a["comm"], "sw-server");
        assert_eq!(a["direction"], "passive");
    }

    let closes = t.of_kind("close");
    assert_eq!(closes.len(), 2 * n, "close events: {closes:?}");
    for c in &closes {
        assert!(c["duration_ns"].as_u64().unwrap_or(0) > 0, "duration: {c}");
    }
    let (active, passive): (Vec<&Value>, Vec<&Value>) =
        closes.iter().partition(|e| e["direction"] == "active");
    // The client closes first: it leaves through FIN_WAIT2, the server through LAST_ACK.
    assert_eq!(ports(&active, "local"), client_ports);
    assert!(
        active.iter().all(|e| e["from_state"] == "FIN_WAIT2"),
        "{active:?}"
    );
    assert!(active.iter().all(|e| e["pid"].as_u64() == Some(me())));
    assert_eq!(ports(&passive, "peer"), client_ports);
    assert!(
        passive.iter().all(|e| e["from_state"] == "LAST_ACK"),
        "{passive:?}"
    );
    assert!(
        passive
            .iter()
            .all(|e| addr(e, "local") == (ip.to_string(), sp))
    );

    let stops = t.of_kind("listen_stop");
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0]["pid"].as_u64(), Some(me()));
    assert!(stops[0]["duration_ns"].as_u64().unwrap_or(0) > 0);

    assert_eq!(
        t.events.len(),
        6 * n + 2,
        "no other events in the namespace"
    );
    for e in &t.events {
        assert_eq!(e["netns"].as_u64(), Some(t.netns));
        assert!(
            e["time"]
                .as_str()
                .is_some_and(|s| s.len() == 30 && s.ends_with('Z'))
        );
    }
    // Per connection, connect comes before its establishment and the close after it.
    for port in &client_ports {
        let pos = |kind: &str| {
            t.events
                .iter()
                .position(|e| e["event"] == kind && e["local_port"].as_u64() == Some(*port))
                .unwrap_or_else(|| panic!("no {kind} for port {port}"))
        };
        assert!(pos("connect") < pos("established"));
        assert!(pos("established") < pos("close"));
        let accept = t
            .events
            .iter()
            .position(|e| e["event"] == "accept" && e["peer_port"].as_u64() == Some(*port))
            .unwrap_or_else(|| panic!("no accept for port {port}"));
        let passive_established = t
            .events
            .iter()
            .position(|e| e["event"] == "established" && e["peer_port"].as_u64() == Some(*port))
            .unwrap_or_else(|| panic!("no passive established for port {port}"));
        assert!(passive_established < accept);
    }
    assert_nothing_lost(&t.lost);
}

fn listen_ip(ip: &str) -> String {
    ip.to_string()
}

#[test]
fn ipv4_connections_are_traced_exactly() {
    if !root_or_skip("ipv4_connections_are_traced_exactly") {
        return;
    }
    let (t, (port, clients)) = trace_in_new_netns(SMALL_MAPS, || {
        let (server, addr) = serve("127.0.0.1:8080".parse().unwrap(), N);
        let clients = connect_n(addr, N);
        server.join().expect("server");
        (addr.port(), clients)
    });
    assert_exchange(&t, "ipv4", "127.0.0.1", port, &clients);
}

#[test]
fn ipv6_connections_are_traced_exactly() {
    if !root_or_skip("ipv6_connections_are_traced_exactly") {
        return;
    }
    let (t, (port, clients)) = trace_in_new_netns(SMALL_MAPS, || {
        let (server, addr) = serve("[::1]:8080".parse().unwrap(), N);
        let clients = connect_n(addr, N);
        server.join().expect("server");
        (addr.port(), clients)
    });
    assert_exchange(&t, "ipv6", "::1", port, &clients);
}

/// With the default map sizes (a million sockets), as a user runs it.
#[test]
fn default_sizes_trace_a_connection() {
    if !root_or_skip("default_sizes_trace_a_connection") {
        return;
    }
    let (t, (port, clients)) = trace_in_new_netns(&[], || {
        let (server, addr) = serve("127.0.0.1:9000".parse().unwrap(), 1);
        let clients = connect_n(addr, 1);
        server.join().expect("server");
        (addr.port(), clients)
    });
    assert_exchange(&t, "ipv4", "127.0.0.1", port, &clients);
}

#[test]
fn v4_mapped_ipv6_sockets_are_reported_as_ipv4() {
    if !root_or_skip("v4_mapped_ipv6_sockets_are_reported_as_ipv4") {
        return;
    }
    let (t, (port, clients)) = trace_in_new_netns(SMALL_MAPS, || {
        // A dual-stack listener: IPv4 clients reach it through v4-mapped addresses.
        let (server, addr) = serve("[::]:8080".parse().unwrap(), 2);
        let v4 = SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port());
        let mapped = SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), addr.port());
        let mut clients = connect_n(v4, 1);
        // An IPv6 socket connecting to a mapped address is IPv4 on the wire.
        clients.extend(connect_n(mapped, 1));
        server.join().expect("server");
        (addr.port(), clients)
    });
    let sp = u64::from(port);
    for e in t
        .events
        .iter()
        .filter(|e| e["event"] != "listen" && e["event"] != "listen_stop")
    {
        assert_eq!(e["family"], "ipv4", "{e}");
        assert_eq!(e["local_addr"], "127.0.0.1", "{e}");
        assert_eq!(e["peer_addr"], "127.0.0.1", "{e}");
    }
    let connects = t.of_kind("connect");
    assert_eq!(connects.len(), 2);
    let want: BTreeSet<u64> = clients.iter().map(|&p| u64::from(p)).collect();
    assert_eq!(ports(&connects, "local"), want);
    assert!(connects.iter().all(|c| c["peer_port"].as_u64() == Some(sp)));
    let passive = t
        .of_kind("established")
        .into_iter()
        .filter(|e| e["direction"] == "passive")
        .count();
    assert_eq!(passive, 2);
    assert_eq!(t.of_kind("accept").len(), 2);
    let listen = t.of_kind("listen");
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0]["family"], "ipv6");
    assert_eq!(listen[0]["local_addr"], "::");
    assert_nothing_lost(&t.lost);
}

#[test]
fn refused_connect_is_a_connect_failed_between_connect_and_close() {
    if !root_or_skip("refused_connect_is_a_connect_failed_between_connect_and_close") {
        return;
    }
    // Stopped with SIGINT (Ctrl-C) rather than SIGTERM: the same clean end is expected.
    let (t, err) = trace_in_new_netns_until(SMALL_MAPS, libc::SIGINT, || {
        TcpStream::connect("127.0.0.1:9").expect_err("nothing listens on port 9")
    });
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let kinds = common::kinds(&t.events);
    assert_eq!(
        kinds,
        ["connect", "connect_failed", "close"],
        "{:?}",
        t.events
    );
    for e in &t.events {
        assert_eq!(addr(e, "peer"), ("127.0.0.1".to_string(), 9));
        assert_eq!(e["pid"].as_u64(), Some(me()));
        assert_eq!(e["comm"], "sw-netns");
        // The kernel had bound a local port before the SYN left.
        assert!(e["local_port"].as_u64().unwrap_or(0) > 0);
        assert_eq!(e["local_port"], t.events[0]["local_port"]);
    }
    let failed = &t.events[1];
    assert_eq!(failed["reason"], "refused");
    assert_eq!(failed["errno"], "ECONNREFUSED");
    assert_eq!(t.events[2]["from_state"], "SYN_SENT");
    assert!(t.events[2]["duration_ns"].as_u64().unwrap_or(0) > 0);
    assert_nothing_lost(&t.lost);
}

/// Text on stdout, `--duration` stopping by itself, and the host's mounts left as they were.
#[test]
fn text_output_and_duration() {
    if !root_or_skip("text_output_and_duration") {
        return;
    }
    let mounts_before = tracefs_mounts();
    let dir = TempDir::new("text");
    let ready = dir.path().join("ready");
    let ready2 = ready.clone();
    let (stdout, status, port) = thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, move || {
                common::enter_new_netns();
                let mut child = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
                    .args([
                        "trace",
                        "--duration",
                        "3",
                        "--max-sockets",
                        "65536",
                        "--ready-file",
                    ])
                    .arg(&ready2)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn");
                // Read stdout as it comes: it carries the whole host's events, which can fill a
                // pipe.
                let mut stdout = child.stdout.take().expect("stdout");
                let reader = thread::spawn(move || {
                    let mut out = String::new();
                    stdout.read_to_string(&mut out).expect("read");
                    out
                });
                let deadline = Instant::now() + Duration::from_secs(60);
                while !ready2.exists() {
                    assert!(Instant::now() < deadline, "not ready");
                    assert!(child.try_wait().expect("wait").is_none(), "exited early");
                    thread::sleep(Duration::from_millis(10));
                }
                let (server, addr) = serve("127.0.0.1:7000".parse().unwrap(), 1);
                connect_n(addr, 1);
                server.join().expect("server");
                // --duration ends it; bound the wait.
                let deadline = Instant::now() + Duration::from_secs(30);
                let status = loop {
                    if let Some(st) = child.try_wait().expect("wait") {
                        break st;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "--duration did not stop sockwatch"
                    );
                    thread::sleep(Duration::from_millis(20));
                };
                let out = reader.join().expect("reader");
                (out, status, addr.port())
            })
            .expect("spawn")
            .join()
            .expect("thread")
    });
    assert!(status.success(), "{status}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("TIME(UTC)"), "{stdout}");
    let listen = format!("127.0.0.1:{port}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" connect ") && l.contains(&listen) && l.contains("sw-netns")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" close ")
            && l.contains("from=LAST_ACK")
            && l.contains("duration=")),
        "{stdout}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("# lost events: ")),
        "{stdout}"
    );
    assert_eq!(
        tracefs_mounts(),
        mounts_before,
        "sockwatch changed the host's mounts"
    );
}

fn tracefs_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - tracefs "))
        .count()
}

/// More live sockets than the socket map holds: the overflow is reported, never silent, and
/// every close is still emitted (without a duration where no birth record could be kept).
#[test]
fn socket_map_overflow_is_reported() {
    if !root_or_skip("socket_map_overflow_is_reported") {
        return;
    }
    const HELD: usize = 1500;
    let (t, ()) = trace_in_new_netns(&["--max-sockets", "1024"], || {
        let (tx, rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = thread::Builder::new()
            .name("sw-server".into())
            .spawn(move || {
                let l = TcpListener::bind("127.0.0.1:8080").expect("bind");
                ready_tx.send(()).expect("send");
                let held: Vec<TcpStream> =
                    (0..HELD).map(|_| l.accept().expect("accept").0).collect();
                rx.recv().expect("clients closed");
                for mut s in held {
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).expect("read");
                }
            })
            .expect("spawn");
        ready_rx.recv().expect("ready");
        let clients: Vec<TcpStream> = (0..HELD)
            .map(|_| TcpStream::connect("127.0.0.1:8080").expect("connect"))
            .collect();
        drop(clients);
        tx.send(()).expect("send");
        server.join().expect("server");
    });
    // 3000 sockets were alive at once in a map of 1024: the map refused those it had no room
    // for.
    assert!(
        t.lost["sock_map_full"].as_u64().unwrap_or(0) > 0,
        "{}",
        t.lost
    );
    assert!(t.lost["total"].as_u64().unwrap_or(0) > 0);
    let closes = t.of_kind("close");
    assert_eq!(closes.len(), 2 * HELD, "every close is still emitted");
    assert!(closes.iter().any(|c| c["duration_ns"].is_null()));
}

/// `--port` keeps the events of that port only, and keeps all of them.
#[test]
fn port_filter_keeps_exactly_that_port() {
    if !root_or_skip("port_filter_keeps_exactly_that_port") {
        return;
    }
    let (t, (kept, dropped)) =
        trace_in_new_netns(&["--max-sockets", "65536", "--port", "8081"], || {
            let (a, kept) = serve("127.0.0.1:8081".parse().unwrap(), 2);
            let (b, dropped) = serve("127.0.0.1:8082".parse().unwrap(), 2);
            let clients = connect_n(kept, 2);
            connect_n(dropped, 2);
            a.join().expect("server a");
            b.join().expect("server b");
            (clients, dropped.port())
        });
    assert!(
        t.events
            .iter()
            .all(|e| e["local_port"] == 8081 || e["peer_port"] == 8081),
        "{:?}",
        t.events
    );
    assert!(
        !t.events
            .iter()
            .any(|e| e["local_port"] == dropped || e["peer_port"] == dropped)
    );
    // Everything of port 8081 is there: listen, 2 x (connect, 2 established, accept, 2 closes),
    // listen_stop.
    assert_eq!(t.events.len(), 14, "{:?}", t.events);
    let connects = t.of_kind("connect");
    let ports: BTreeSet<u64> = connects
        .iter()
        .filter_map(|c| c["local_port"].as_u64())
        .collect();
    assert_eq!(ports, kept.iter().map(|&p| u64::from(p)).collect());
}
