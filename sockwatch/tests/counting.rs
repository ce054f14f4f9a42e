//! Root integration tests of `top` counting in the kernel: exact per-port counts whatever the
//! ring buffer can carry, and open counts set right by the kernel's socket table.
mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
};

use common::{Stalled, root_or_skip, wait_ready};
use serde_json::Value;

/// `top` printing one JSON summary at its end, without `--output`: nothing per connection goes
/// through the ring.
const TOP: &[&str] = &["top", "--format", "json", "--interval", "0.2"];

struct Run<R> {
    summary: Value,
    netns: u64,
    result: R,
}

/// Runs `top` with `args` in a fresh namespace while `scenario` (given sockwatch's pid) makes
/// connections; stops it with SIGTERM once they have all settled (or, when `scenario` keeps
/// some open, with them open), and parses its summary.
fn top_in_new_netns<R: Send>(
    args: &[&str],
    scenario: impl FnOnce(i32) -> (R, Held) + Send,
) -> Run<R> {
    thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, || {
                let netns = common::enter_new_netns();
                let dir = common::TempDir::new("counting");
                let ready = dir.path().join("ready");
                let mut child = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
                    .args(args)
                    // Other traffic on the host (its losses, its sockets) stays out.
                    .args(["--netns", &netns.to_string()])
                    .arg("--ready-file")
                    .arg(&ready)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn sockwatch");
                let mut stdout = child.stdout.take().expect("stdout");
                let reader = thread::spawn(move || {
                    let mut text = String::new();
                    let _ = stdout.read_to_string(&mut text);
                    text
                });
                wait_ready(&mut child, &ready);
                let (result, held) = scenario(child.id() as i32);
                if held.0.is_empty() {
                    common::wait_connections_settled();
                }
                let stopped = common::stop(&mut child, libc::SIGTERM);
                assert!(stopped, "sockwatch did not exit cleanly");
                drop(held);
                let text = reader.join().expect("stdout reader");
                let summary = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("summary JSON ({e}): {text}"));
                Run {
                    summary,
                    netns,
                    result,
                }
            })
            .expect("spawn netns thread")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Connections kept open until sockwatch has stopped.
#[derive(Default)]
struct Held(Vec<TcpStream>);

/// `n` connections to a fresh listener, each accepted, read to its end and closed; returns the
/// port.
fn churn(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    for _ in 0..n {
        drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    server.join().expect("server");
    port
}

/// `n` connections to a fresh listener, both ends kept open; returns the port.
fn hold(n: usize, held: &mut Held) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    for _ in 0..n {
        held.0
            .push(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        held.0.push(l.accept().expect("accept").0);
    }
    port
}

/// Connects to a port nobody listens on: refused.
fn refused(port: u16) {
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn row<'a>(summary: &'a Value, table: &str, port_key: &str, netns: u64, port: u16) -> &'a Value {
    summary[table]
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["netns"].as_u64() == Some(netns) && r[port_key].as_u64() == Some(u64::from(port))
            })
        })
        .unwrap_or_else(|| panic!("no {table} row for {netns}/{port} in {summary}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn counts_are_exact_with_a_stalled_reader_and_the_smallest_ring() {
    if !root_or_skip("counts_are_exact_with_a_stalled_reader_and_the_smallest_ring") {
        return;
    }
    const N: usize = 5000;
    const REFUSED: usize = 3;
    let args = [TOP, &["--ring-size", "4K"]].concat();
    let run = top_in_new_netns(&args, |pid| {
        // Nothing is read from the ring meanwhile: before counting in the kernel, all but the
        // first few events of a 4 KiB ring were lost.
        let _stalled = Stalled::new(pid);
        let port = churn(N);
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        for _ in 0..REFUSED {
            refused(closed_port);
        }
        ((port, closed_port), Held::default())
    });
    let (port, closed_port) = run.result;
    let s = &run.summary;
    let l = row(s, "listeners", "port", run.netns, port);
    assert_eq!(n(l, "accepted"), N as u64, "{l}");
    assert_eq!(n(l, "closed"), N as u64, "{l}");
    assert_eq!(n(l, "established_now"), 0, "{l}");
    assert_eq!(n(l, "distinct_peers"), 1, "{l}");
    assert_eq!(
        l["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{l}"
    );
    assert!(n(l, "lifetime_p50_ns") > 0, "{l}");
    let o = row(s, "outbound", "peer_port", run.netns, port);
    assert_eq!(
        (n(o, "connects"), n(o, "established"), n(o, "open_now")),
        (N as u64, N as u64, 0),
        // What was lost or recovered, should a count fall short.
        "{o}\nlost: {}\nstats: {}",
        s["lost"],
        s["stats"]
    );
    let p = &o["processes"][0];
    assert_eq!(
        p["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{o}"
    );
    assert_eq!((n(p, "connects"), n(p, "open_now")), (N as u64, 0), "{o}");
    let f = row(s, "outbound", "peer_port", run.netns, closed_port);
    assert_eq!(f["failed"]["refused"].as_u64(), Some(REFUSED as u64), "{f}");
    // Only the listen events went through the ring: nothing lost.
    assert_eq!(s["lost"]["ringbuf_full"].as_u64(), Some(0), "{}", s["lost"]);
    assert_eq!(
        s["open_corrections"],
        serde_json::json!({"adopted": 0, "released": 0})
    );
}

#[test]
fn held_connections_are_open_exactly() {
    if !root_or_skip("held_connections_are_open_exactly") {
        return;
    }
    const K: usize = 2000;
    let args = [TOP, &["--ring-size", "4K"]].concat();
    let run = top_in_new_netns(&args, |pid| {
        let _stalled = Stalled::new(pid);
        let mut held = Held::default();
        let port = hold(K, &mut held);
        (port, held)
    });
    let l = row(&run.summary, "listeners", "port", run.netns, run.result);
    assert_eq!(
        (n(l, "accepted"), n(l, "established_now")),
        (K as u64, K as u64),
        "{l}"
    );
    let o = row(&run.summary, "outbound", "peer_port", run.netns, run.result);
    assert_eq!(n(o, "open_now"), K as u64, "{o}");
}

#[test]
fn connections_no_event_reported_are_adopted_from_the_kernels_table() {
    if !root_or_skip("connections_no_event_reported_are_adopted_from_the_kernels_table") {
        return;
    }
    const K: usize = 3000;
    // A socket table of 1024 entries: most of the 6000 sockets are untracked, so their
    // establishments go through a 4 KiB ring that nobody reads: lost.
    let args = [TOP, &["--ring-size", "4K", "--max-sockets", "1024"]].concat();
    let run = top_in_new_netns(&args, |pid| {
        let stalled = Stalled::new(pid);
        let mut held = Held::default();
        let port = hold(K, &mut held);
        drop(stalled);
        (port, held)
    });
    let s = &run.summary;
    assert!(
        s["lost"]["ringbuf_full"].as_u64().unwrap_or(0) > 0,
        "the ring must have lost events: {}",
        s["lost"]
    );
    let l = row(s, "listeners", "port", run.netns, run.result);
    let o = row(s, "outbound", "peer_port", run.netns, run.result);
    assert_eq!(n(l, "established_now"), K as u64, "{l}\n{s}");
    assert_eq!(n(o, "open_now"), K as u64, "{o}\n{s}");
    // Accepts are counted in the kernel, tracked or not.
    assert_eq!(n(l, "accepted"), K as u64, "{l}");
    let adopted = n(&s["open_corrections"], "adopted");
    assert!(
        adopted > 0 && adopted <= 2 * K as u64,
        "{}",
        s["open_corrections"]
    );
}
