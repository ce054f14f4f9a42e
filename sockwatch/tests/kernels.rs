//! Root tests of what differs between kernels: the capability probe (`sockwatch check`), the
//! capabilities recorded in the JSON Lines header, and one connection's whole lifecycle traced
//! with each build of the kernel programs that this kernel runs (the current one where it
//! loads, and the compat one everywhere) and with each kind of accept/connect hook it offers
//! (fentry, kprobe, syscall), and the in-kernel counters with both builds. They are the core
//! of the kernel matrix (`cargo xtask vmtest`), run on every kernel it boots.
mod common;

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
};

use common::{
    assert_nothing_lost, root_or_skip, run_in_new_netns, server::Server, trace_in_new_netns,
};
use serde_json::Value;

/// Entry point of the server process (see common::server).
#[test]
fn server_process_entry_point() {
    common::server::entry_point();
}

fn me() -> u64 {
    u64::from(std::process::id())
}

/// The check's capabilities by name.
fn by_name(check: &Value) -> BTreeMap<String, Value> {
    check["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .map(|c| (c["name"].as_str().expect("name").to_string(), c.clone()))
        .collect()
}

#[test]
fn check_loads_the_programs_and_names_what_is_missing() {
    if !root_or_skip("check_loads_the_programs_and_names_what_is_missing") {
        return;
    }
    let v = common::check_json();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("release");
    assert_eq!(v["kernel"], release.trim());
    assert_eq!(v["programs"]["loaded"], true, "{v}");
    let caps = by_name(&v);
    for core in ["btf", "ring_buffer", "state_changes", "kernel_programs"] {
        assert_eq!(caps[core]["available"], true, "{core}: {v}");
    }
    // The build follows the probe: compat exactly where the programs' per-thread state is not
    // the current one, and then the note names what the kernel lacks.
    let compat = v["programs"]["build"] == "compat";
    let programs = &caps["kernel_programs"];
    assert_eq!(
        programs["via"].as_str().unwrap().starts_with("hash maps"),
        compat,
        "{programs}"
    );
    assert_eq!(programs.get("note").is_some(), compat, "{programs}");
    // Whatever is missing says why, in one line.
    for (name, c) in &caps {
        if c["available"] == false {
            let note = c["note"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no note"));
            assert!(!note.is_empty() && !note.contains('\n'), "{name}: {note}");
        }
    }
    // The compat build runs on every kernel, this one included.
    let forced = common::check_json_with(&["--programs", "compat"]);
    assert_eq!(forced["programs"]["build"], "compat");
    assert_eq!(forced["programs"]["loaded"], true, "{forced}");

    // The hooks: the first kind offered is used, and says so in one line.
    let offered = hooks_offered();
    assert!(!offered.is_empty(), "{v}");
    assert_eq!(v["hooks"]["used"], offered[0].as_str(), "{v}");
    let hooks = &caps["hooks"];
    assert_eq!(hooks["available"], true, "{hooks}");
    let note = hooks["note"].as_str().expect("the hooks' note");
    assert!(
        note.starts_with(&offered[0]) && !note.contains('\n'),
        "{note}"
    );
    // A kind the kernel does not offer is refused, in one line naming it and what to use (those
    // it offers are run by `lifecycle_is_the_same_with_every_hook_kind`).
    for kind in ["fentry", "kprobe", "syscall"] {
        if offered.iter().any(|k| k == kind) {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockwatch"))
            .args(["check", "--format", "json", "--hooks", kind])
            .output()
            .expect("run sockwatch check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--hooks {kind} ran");
        let line = format!("sockwatch: error: --hooks {kind} is not available on this kernel: ");
        assert!(stderr.starts_with(&line), "{stderr}");
        assert!(stderr.contains("use --hooks auto"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

/// The hook kinds this kernel offers, best first (`sockwatch check`).
fn hooks_offered() -> Vec<String> {
    let v = common::check_json();
    v["hooks"]["offered"]
        .as_array()
        .expect("hooks.offered")
        .iter()
        .map(|k| k.as_str().expect("a kind").to_string())
        .collect()
}

#[test]
fn the_header_records_what_check_reports() {
    if !root_or_skip("the_header_records_what_check_reports") {
        return;
    }
    let caps = by_name(&common::check_json());
    let (t, ()) = trace_in_new_netns(&["--max-sockets", "65536"], || {});
    let header: Value =
        serde_json::from_str(t.raw.lines().next().expect("a first line")).expect("header JSON");
    assert_eq!(header["event"], "header");
    let recorded = header["capabilities"].as_object().expect("capabilities");
    assert_eq!(
        recorded.keys().collect::<Vec<_>>(),
        caps.keys().collect::<Vec<_>>()
    );
    for (name, c) in &caps {
        assert_eq!(recorded[name]["available"], c["available"], "{name}");
        assert_eq!(recorded[name].get("via"), c.get("via"), "{name}");
        assert_eq!(recorded[name].get("note"), c.get("note"), "{name}");
    }
    assert_nothing_lost(&t.lost);
}

#[test]
fn lifecycle_with_the_programs_this_kernel_picks() {
    if !root_or_skip("lifecycle_with_the_programs_this_kernel_picks") {
        return;
    }
    lifecycle("auto", "auto");
}

#[test]
fn lifecycle_with_the_compat_programs() {
    if !root_or_skip("lifecycle_with_the_compat_programs") {
        return;
    }
    lifecycle("compat", "auto");
}

/// Every hook kind this kernel offers, with both builds of the programs, passes the same
/// scenario, and the event streams are the same apart from times, ports and pids.
#[test]
fn lifecycle_is_the_same_with_every_hook_kind() {
    if !root_or_skip("lifecycle_is_the_same_with_every_hook_kind") {
        return;
    }
    let mut streams = Vec::new();
    for kind in hooks_offered() {
        for programs in ["auto", "compat"] {
            streams.push((
                format!("--hooks {kind} --programs {programs}"),
                lifecycle(programs, &kind),
            ));
        }
    }
    let (first_run, first) = &streams[0];
    for (run, stream) in &streams[1..] {
        assert_eq!(stream, first, "{run} differs from {first_run}");
    }
}

/// In a new namespace: a server process accepts one connection; with its fd limit reached, its
/// accept() fails twice with EMFILE on a second, queued connection, which it then accepts; a
/// connect to a closed port is refused; one without a route fails before any packet. Every
/// event is asserted: 5-tuples, pids, errors. Returns the stream in a form that does not depend
/// on times, ports, pids or order (see [`normalized`]).
fn lifecycle(programs: &str, hooks: &str) -> Vec<String> {
    const FAILS: usize = 2;
    let args = [
        "--max-sockets",
        "65536",
        "--programs",
        programs,
        "--hooks",
        hooks,
    ];
    let (t, (server_pid, port, clients, refused)) = trace_in_new_netns(&args, || {
        let mut server = Server::start(None);
        let port = server.listen("127.0.0.1:0");
        let first = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let first_port = first.local_addr().expect("addr").port();
        drop(first);
        server.ask("accept 1");
        server.ask("fill-fds");
        let second = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let second_port = second.local_addr().expect("addr").port();
        server.ask(&format!("fail {FAILS}"));
        server.ask("restore-fds");
        drop(second);
        server.ask("accept 1");
        // A port nobody listens on: bound once, then closed.
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        let err = TcpStream::connect(("127.0.0.1", closed_port)).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let unreachable = unreachable_connect(closed_port);
        let pid = server.pid();
        server.stop();
        (
            pid,
            port,
            [first_port, second_port],
            (closed_port, unreachable),
        )
    });
    let (refused, no_route_netns) = refused;
    assert_ne!(server_pid, me());
    let port = u64::from(port);
    let events: Vec<&Value> = t.events.iter().collect();
    let of = |kind: &str, local: u64, peer: u64| -> Vec<&Value> {
        events
            .iter()
            .copied()
            .filter(|e| {
                e["event"] == kind
                    && e["local_port"].as_u64() == Some(local)
                    && e["peer_port"].as_u64() == Some(peer)
            })
            .collect()
    };
    let one = |kind: &str, local: u64, peer: u64| -> &Value {
        let found = of(kind, local, peer);
        assert_eq!(found.len(), 1, "{kind} {local}->{peer}: {events:?}");
        found[0]
    };

    let listen = one("listen", port, 0);
    assert_eq!(listen["pid"].as_u64(), Some(server_pid));
    for client in clients.map(u64::from) {
        let connect = one("connect", client, port);
        assert_eq!(connect["pid"].as_u64(), Some(me()), "{connect}");
        assert_eq!(connect["local_addr"], "127.0.0.1");
        assert_eq!(connect["peer_addr"], "127.0.0.1");
        assert_eq!(connect["netns"].as_u64(), Some(t.netns));
        let active = one("established", client, port);
        assert_eq!(active["direction"], "active");
        assert_eq!(active["pid"].as_u64(), Some(me()));
        let passive = one("established", port, client);
        assert_eq!(passive["direction"], "passive");
        let accept = one("accept", port, client);
        assert_eq!(accept["pid"].as_u64(), Some(server_pid), "{accept}");
        assert_eq!(accept["local_addr"], "127.0.0.1");
        assert_eq!(one("close", client, port)["pid"].as_u64(), Some(me()));
        assert_eq!(one("close", port, client)["pid"].as_u64(), Some(server_pid));
    }
    let failures = of("accept_failed", port, 0);
    assert_eq!(failures.len(), FAILS, "{events:?}");
    for f in failures {
        assert_eq!(f["errno"], "EMFILE");
        assert_eq!(f["pid"].as_u64(), Some(server_pid));
        assert_eq!(f["local_addr"], "127.0.0.1");
    }
    let refused_events: Vec<&Value> = events
        .iter()
        .copied()
        .filter(|e| e["peer_port"].as_u64() == Some(u64::from(refused)))
        .collect();
    assert_eq!(
        common::kinds(refused_events.iter().copied()),
        ["connect", "connect_failed", "close"],
        "{refused_events:?}"
    );
    let failed = refused_events[1];
    assert_eq!(failed["errno"], "ECONNREFUSED");
    assert_eq!(failed["reason"], "refused");
    assert_eq!(failed["pid"].as_u64(), Some(me()));
    // No route: connect() failed before any packet, seen from the syscall's arguments.
    let early = t.in_netns(no_route_netns);
    assert_eq!(
        common::kinds(early.iter().copied()),
        ["connect_failed"],
        "{early:?}"
    );
    assert_eq!(early[0]["errno"], "ENETUNREACH");
    assert_eq!(early[0]["peer_addr"], "127.0.0.1");
    assert_eq!(early[0]["peer_port"].as_u64(), Some(u64::from(refused)));
    assert_eq!(early[0]["pid"].as_u64(), Some(me()));
    assert_nothing_lost(&t.lost);
    let port_of_server = port;
    let role = |port: u64| -> &str {
        if port == 0 {
            "none"
        } else if port == port_of_server {
            "server"
        } else if port == u64::from(clients[0]) {
            "first client"
        } else if port == u64::from(clients[1]) {
            "second client"
        } else if port == u64::from(refused) {
            "closed port"
        } else {
            "other"
        }
    };
    normalized(&t.events, |e| {
        let pid = match e["pid"].as_u64() {
            Some(p) if p == server_pid => "server",
            Some(p) if p == me() => "test",
            Some(_) => "other",
            None => "none",
        };
        format!(
            "{} {} -> {} pid={pid}",
            e["event"],
            role(e["local_port"].as_u64().unwrap_or(0)),
            role(e["peer_port"].as_u64().unwrap_or(0)),
        )
    })
}

/// Events as sorted lines: each line is `describe(event)` plus every field that must not
/// differ between runs (kinds, directions, errors, addresses, families, flags).
fn normalized(events: &[Value], describe: impl Fn(&Value) -> String) -> Vec<String> {
    const VARYING: &[&str] = &[
        "ts",
        "ts_ns",
        "time",
        "duration_ns",
        "duration_ms",
        "pid",
        "local_port",
        "peer_port",
        "netns",
        "comm",
        "cgroup",
        "cgroup_id",
        "unit",
        "container_id",
        "pod_uid",
        "pod_namespace",
        "pod",
    ];
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| {
            let mut rest = e.as_object().cloned().unwrap_or_default();
            for k in VARYING {
                rest.remove(*k);
            }
            // Times vary too, but each must be there when the other run has it.
            for k in ["handshake_ns", "queue_wait_ns", "srtt_us"] {
                if let Some(v) = rest.get_mut(k) {
                    *v = Value::from("a time");
                }
            }
            // A slow VM can stall past a retransmission timeout (a FIN sent again): a count.
            if let Some(v) = rest.get_mut("segs_retrans")
                && v.is_u64()
            {
                *v = Value::from("a count");
            }
            format!("{} {}", describe(e), Value::Object(rest))
        })
        .collect();
    lines.sort();
    lines
}

/// connect() to 127.0.0.1:`port` from a thread in a namespace of its own whose loopback is
/// down: it fails with ENETUNREACH before any packet. Returns the namespace.
fn unreachable_connect(port: u16) -> u64 {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("sw-noroute".into())
            .spawn_scoped(s, || {
                // SAFETY: unshare affects this thread only.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                let ns = std::fs::metadata("/proc/thread-self/ns/net")
                    .expect("netns")
                    .ino();
                let err = TcpStream::connect(("127.0.0.1", port)).expect_err("no route");
                assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
                ns
            })
            .expect("spawn")
            .join()
            .expect("thread")
    })
}

/// `top --format json` counts a port's accepted connections exactly, on every kernel.
#[test]
fn top_counts_a_ports_connections_exactly() {
    if !root_or_skip("top_counts_a_ports_connections_exactly") {
        return;
    }
    const N: u64 = 8;
    let (t, stdout, port) = run_in_new_netns(common::TOP_JSON, libc::SIGTERM, |_| {
        let mut server = Server::start(None);
        let port = server.listen("127.0.0.1:0");
        for _ in 0..N {
            drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        }
        server.ask(&format!("accept {N}"));
        server.stop();
        port
    });
    let summary: Value = serde_json::from_str(&stdout).expect("summary JSON");
    let listener = summary["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .find(|l| l["netns"].as_u64() == Some(t.netns) && l["port"] == port)
        .unwrap_or_else(|| panic!("no listener on {port}: {summary}"));
    assert_eq!(listener["accepted"].as_u64(), Some(N), "{listener}");
    assert_eq!(listener["closed"].as_u64(), Some(N), "{listener}");
    assert_eq!(listener["established_now"].as_u64(), Some(0), "{listener}");
    assert!(summary["capabilities"].is_object(), "{summary}");
    assert_nothing_lost(&t.lost);
}

/// The in-kernel counters (`top`'s counting mode) are exact with each build of the programs:
/// connections made, accepted and closed, connects refused, connections held open; and none of
/// these connections' events take ring space.
#[test]
fn kernel_counts_are_exact_with_both_builds() {
    if !root_or_skip("kernel_counts_are_exact_with_both_builds") {
        return;
    }
    common::counts::exact_counts(false, 20, 3, 5);
    common::counts::exact_counts(true, 20, 3, 5);
}

/// A port's counts made on each CPU in turn lie on one entry per CPU in the kernel (where the
/// maps are not preallocated), and read as one, exact.
#[test]
fn kernel_counts_from_every_cpu_add_up() {
    if !root_or_skip("kernel_counts_from_every_cpu_add_up") {
        return;
    }
    common::counts::counts_from_every_cpu();
}
