//! Expiry of connections whose close was missed: a 4 KiB ring drops events during a burst, so
//! some connections are seen established but never closed. `top` and `trace` must find them
//! gone from the kernel's socket table and expire them, so that what it counts open converges to what the
//! kernel really has; `report` over the recording must replay that to the same summary.
mod common;

use std::{
    fs,
    io::{self, BufRead, Read},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::Mutex,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{root_or_skip, spawn_sockwatch, stop, wait_ready};
use serde_json::Value;

/// Connections made in the burst, and connections held open through the whole run.
const BURST: usize = 3000;
const HOLD: usize = 5;

/// Sockets of this thread's namespace in a state other than LISTEN and TIME_WAIT.
fn busy_sockets() -> usize {
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .filter_map(|p| fs::File::open(p).ok())
        .flat_map(|f| io::BufReader::new(f).lines().skip(1).map_while(Result::ok))
        .filter(|l| {
            let st = l.split_whitespace().nth(3).unwrap_or("");
            st != "06" && st != "0A"
        })
        .count()
}

fn unix_ns_now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn record_time_ns(v: &Value) -> Option<i128> {
    let t = v["time"].as_str()?;
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos())
}

/// Polls sockwatch's output (flushed every half second) until it holds a record written at
/// `at_ns` or later: sockwatch's own loop has reached that time. Bounded by 30 s.
fn wait_until_written(out: &Path, at_ns: i128) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(out).unwrap_or_default();
        let reached = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| record_time_ns(&v))
            .any(|t| t >= at_ns);
        if reached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sockwatch's output did not advance in 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn in_netns<'a>(list: &'a Value, key: &str, netns: u64, port: u16) -> &'a Value {
    list.as_array()
        .and_then(|items| {
            items.iter().find(|i| {
                i["netns"].as_u64() == Some(netns) && i[key].as_u64() == Some(u64::from(port))
            })
        })
        .unwrap_or_else(|| panic!("no {key} {port} in namespace {netns}: {list}"))
}

/// What a burst run leaves: the recording and where to find the connections in it.
struct Run {
    _dir: common::TempDir,
    out: std::path::PathBuf,
    netns: u64,
    churn_port: u16,
    hold_port: u16,
    stdout: String,
}

/// Runs sockwatch `command` (with a 4 KiB ring and a one-second expiry) over connections held
/// open throughout and a burst that overflows the ring, until the missed closes are expired.
fn burst_with_missed_closes(command: &[&str]) -> Run {
    // One at a time: each sockwatch sees the whole host, so another test's burst would
    // overflow its ring while it holds its connections.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::TempDir::new("expiry");
    let out = dir.path().join("events.jsonl");
    let ready = dir.path().join("ready");
    let mut args = command.to_vec();
    args.extend([
        "--interval",
        "0.2",
        "--expire-interval",
        "1",
        "--ring-size",
        "4K",
        "--max-sockets",
        "65536",
    ]);
    let (netns, churn_port, hold_port, stdout) = thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, || {
                let netns = common::enter_new_netns();
                let mut child = spawn_sockwatch(&args, &out, &ready);
                let mut stdout = child.stdout.take().expect("stdout");
                let reader = thread::spawn(move || {
                    let mut text = String::new();
                    let _ = stdout.read_to_string(&mut text);
                    text
                });
                wait_ready(&mut child, &ready);

                // Held open to the end, made while the ring is empty: seen established.
                let hold = TcpListener::bind("127.0.0.1:0").expect("bind");
                let hold_port = hold.local_addr().expect("addr").port();
                let clients: Vec<TcpStream> = (0..HOLD)
                    .map(|_| TcpStream::connect(("127.0.0.1", hold_port)).expect("connect"))
                    .collect();
                let servers: Vec<TcpStream> = (0..HOLD)
                    .map(|_| hold.accept().expect("accept").0)
                    .collect();

                // The burst: far more events than 4 KiB holds, so some closes are dropped.
                let churn = TcpListener::bind("127.0.0.1:0").expect("bind");
                let churn_port = churn.local_addr().expect("addr").port();
                let server = thread::spawn(move || {
                    for _ in 0..BURST {
                        let (mut s, _) = churn.accept().expect("accept");
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                });
                for _ in 0..BURST {
                    drop(TcpStream::connect(("127.0.0.1", churn_port)).expect("connect"));
                }
                server.join().expect("server");
                // Every burst connection is closed in the kernel (TIME_WAIT at most).
                let deadline = Instant::now() + Duration::from_secs(10);
                while busy_sockets() > 2 * HOLD {
                    assert!(Instant::now() < deadline, "burst sockets still closing");
                    thread::sleep(Duration::from_millis(5));
                }
                // Absent at one check, expired at the next: two intervals, plus one for the
                // check that may have been running.
                wait_until_written(&out, unix_ns_now() + 3_500_000_000);
                assert_eq!(busy_sockets(), 2 * HOLD);
                assert!(stop(&mut child, libc::SIGINT), "sockwatch failed");
                drop((clients, servers));
                let stdout = reader.join().expect("stdout reader");
                (netns, churn_port, hold_port, stdout)
            })
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });

    Run {
        _dir: dir,
        out,
        netns,
        churn_port,
        hold_port,
        stdout,
    }
}

#[test]
fn missed_closes_expire_and_report_replays_them() {
    if !root_or_skip("missed_closes_expire_and_report_replays_them") {
        return;
    }
    let run = burst_with_missed_closes(&["top", "--format", "json"]);
    let (out, netns, churn_port, hold_port) = (&run.out, run.netns, run.churn_port, run.hold_port);
    let live: Value = serde_json::from_str(&run.stdout).expect("live summary JSON");
    let lost = &live["lost"];
    assert!(
        lost["ringbuf_full"].as_u64().unwrap_or(0) > 0,
        "a 4 KiB ring must overflow during the burst: {lost}"
    );
    let expired = lost["expired"].as_u64().unwrap_or(0);
    assert!(
        expired > 0,
        "no close was missed, nothing to expire: {lost}"
    );

    // What is counted open is what the kernel has: the held connections only.
    let churn = in_netns(&live["listeners"], "port", netns, churn_port);
    assert_eq!(churn["established_now"].as_u64(), Some(0), "{churn}");
    let held = in_netns(&live["listeners"], "port", netns, hold_port);
    assert_eq!(
        held["established_now"].as_u64(),
        Some(HOLD as u64),
        "{held}"
    );
    let out_churn = in_netns(&live["outbound"], "peer_port", netns, churn_port);
    assert_eq!(out_churn["open_now"].as_u64(), Some(0), "{out_churn}");
    let out_held = in_netns(&live["outbound"], "peer_port", netns, hold_port);
    assert_eq!(
        out_held["open_now"].as_u64(),
        Some(HOLD as u64),
        "{out_held}"
    );

    // Each expiry is in the file, and the final loss record counts them.
    let text = fs::read_to_string(out).expect("read output");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let in_file = records.iter().filter(|v| v["event"] == "expired").count() as u64;
    assert_eq!(in_file, expired);
    let last = records.last().expect("records");
    assert_eq!(last["event"], "lost");
    assert_eq!(last["expired"].as_u64(), Some(expired));
    assert!(
        records
            .iter()
            .filter(|v| v["event"] == "expired" && v["netns"].as_u64() == Some(netns))
            .all(|v| v["local_port"].as_u64() == Some(u64::from(churn_port))
                || v["peer_port"].as_u64() == Some(u64::from(churn_port))),
        "a held connection was expired"
    );

    // Counted in the kernel, the live counts are whole although the ring lost events.
    assert_eq!(churn["accepted"].as_u64(), Some(BURST as u64), "{churn}");
    assert_eq!(churn["closed"].as_u64(), Some(BURST as u64), "{churn}");
    assert_eq!(
        out_churn["connects"].as_u64(),
        Some(BURST as u64),
        "{out_churn}"
    );

    // `report` replays the expiries: from the recording, what is open is the same. (Its other
    // counts are short by the events the ring lost.)
    let report = common::report_json(out);
    for (table, key, port, open) in [
        ("listeners", "port", churn_port, "established_now"),
        ("listeners", "port", hold_port, "established_now"),
        ("outbound", "peer_port", churn_port, "open_now"),
        ("outbound", "peer_port", hold_port, "open_now"),
    ] {
        let recorded = in_netns(&report[table], key, netns, port);
        let live_row = in_netns(&live[table], key, netns, port);
        assert_eq!(recorded[open], live_row[open], "{recorded}\n{live_row}");
    }
}

/// `trace` keeps the same table of open connections: a connection whose close was lost ends in
/// its file with an `expired` record, and `report` over the file counts open only what the
/// kernel still has.
#[test]
fn trace_ends_missed_closes_with_expired_records() {
    if !root_or_skip("trace_ends_missed_closes_with_expired_records") {
        return;
    }
    let run = burst_with_missed_closes(&["trace", "--format", "jsonl"]);
    let text = fs::read_to_string(&run.out).expect("read output");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let last = records.last().expect("records");
    assert_eq!(last["event"], "lost");
    assert!(
        last["ringbuf_full"].as_u64().unwrap_or(0) > 0,
        "a 4 KiB ring must overflow during the burst: {last}"
    );
    let expired: Vec<&Value> = records.iter().filter(|v| v["event"] == "expired").collect();
    assert_eq!(last["expired"].as_u64(), Some(expired.len() as u64));
    // The host's other connections may lose events to the small ring too: only ours are known.
    let ours: Vec<&&Value> = expired
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(run.netns))
        .collect();
    assert!(
        !ours.is_empty(),
        "no close was missed, nothing to expire: {last}"
    );
    let churn = Some(u64::from(run.churn_port));
    assert!(
        ours.iter()
            .all(|v| v["local_port"].as_u64() == churn || v["peer_port"].as_u64() == churn),
        "only burst connections are expired"
    );

    let summary = common::report_json(&run.out);
    let burst = in_netns(&summary["listeners"], "port", run.netns, run.churn_port);
    assert_eq!(burst["established_now"].as_u64(), Some(0), "{burst}");
    let held = in_netns(&summary["listeners"], "port", run.netns, run.hold_port);
    assert_eq!(
        held["established_now"].as_u64(),
        Some(HOLD as u64),
        "{held}"
    );
}
