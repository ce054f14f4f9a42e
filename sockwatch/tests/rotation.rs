//! Root integration tests of rotated, compressed output: `report` over a directory of rotated
//! files gives the counts made, and SIGINT or SIGTERM arriving while files rotate and compress
//! leaves every file valid, every connection recorded and nothing of this instance loaded.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    TempDir, bpf::sockwatch_program_ids, enter_new_netns, root_or_skip, spawn_sockwatch,
    wait_connections_settled, wait_ready,
};
use serde_json::Value;

/// The tests run one at a time: each loads programs and churns connections, on a shared host.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Makes `n` connections, one after the other, to a server on `port` in the calling thread's
/// namespace (the client closes first); returns the clients' ports. Each test traces only its
/// own port (--port), so other traffic on the host never reaches its files.
fn connections(port: u16, n: usize) -> Vec<u16> {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let ports = (0..n)
        .map(|_| {
            let c = TcpStream::connect(addr).expect("connect");
            c.local_addr().expect("local addr").port()
        })
        .collect();
    server.join().expect("server");
    ports
}

/// Connections to `port` in a new namespace of their own until `stop`, in a thread: bursts of
/// 20, a few hundred a second (enough to rotate 4K files constantly, not so many that the
/// 2-CPU host stalls).
fn background_churn(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        enter_new_netns();
        let mut made = 0;
        while !stop.load(Ordering::Relaxed) {
            made += connections(port, 20).len();
            thread::sleep(Duration::from_millis(40));
        }
        made
    })
}

/// The ids of the programs `pid` holds (from its descriptors' fdinfo): this instance's own,
/// whatever else runs on the host.
fn programs_of(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let text = fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids
}

/// Runs `body` in a thread inside a fresh network namespace; returns its result and the
/// namespace's inode.
fn in_netns<R: Send>(body: impl FnOnce() -> R + Send) -> (R, u64) {
    thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, || {
                let netns = enter_new_netns();
                let r = body();
                wait_connections_settled();
                (r, netns)
            })
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Sends `signal` and waits for the exit (bounded by `within`); returns how long it took.
fn stop_within(child: &mut Child, signal: i32, within: Duration) -> Duration {
    let sent = Instant::now();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            assert!(st.success(), "{st}: {}", stderr_of(child));
            return sent.elapsed();
        }
        if sent.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockwatch did not exit within {within:?} of signal {signal}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until none of `ours` is loaded any more.
fn assert_detached(ours: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = sockwatch_program_ids()
            .into_iter()
            .filter(|id| ours.contains(id))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded 10 s after exit"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A file's text, decompressed by its suffix (the test's own reading, independent of
/// sockwatch's).
fn text_of(path: &Path) -> String {
    let raw = fs::read(path).expect("read");
    let name = path.to_string_lossy();
    let bytes = if name.ends_with(".zst") {
        zstd::decode_all(raw.as_slice()).expect("valid zstd")
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    } else {
        raw
    };
    String::from_utf8(bytes).expect("UTF-8")
}

/// Every file of a rotated run in `dir` (besides `ignore`), checked line by line: complete JSON
/// records only, a header first, the parts numbered 1..=n with none missing. Returns the
/// files' records in part order, and the live file's path last.
fn read_run(dir: &Path, live: &Path, ignore: &[&Path]) -> Vec<(PathBuf, Vec<Value>)> {
    let mut by_part = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if ignore.contains(&path.as_path()) {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // A compression cut short leaves its hidden temporary file.
        assert!(!name.starts_with('.'), "left behind: {name}");
        let text = text_of(&path);
        assert!(text.ends_with('\n'), "{name}: torn last line");
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l:?}: {e}")))
            .collect();
        let head = &records[0];
        assert_eq!(head["event"], "header", "{name}");
        assert_eq!(head["schema"], 1, "{name}");
        let part = head["part"].as_u64().expect("part");
        assert!(
            by_part.insert(part, (path, records)).is_none(),
            "part {part} twice"
        );
    }
    let n = by_part.len() as u64;
    assert_eq!(
        by_part.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let files: Vec<(PathBuf, Vec<Value>)> = by_part.into_values().collect();
    assert_eq!(
        files.last().unwrap().0,
        live,
        "the newest part is the live file"
    );
    files
}

fn report_json(target: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["report", "--format", "json", "--strict"])
        .arg(target)
        .output()
        .expect("run report");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

#[test]
fn report_over_rotated_compressed_files_counts_every_connection() {
    if !root_or_skip("report_over_rotated_compressed_files_counts_every_connection") {
        return;
    }
    const N: usize = 150;
    const PORT: u16 = 47101;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("rotated");
    let out = dir.path().join("x.jsonl");
    let ready = dir.path().join("ready");
    let args = [
        "trace",
        "--format",
        "jsonl",
        "--rotate-size",
        "8K",
        "--compress",
        "zstd",
        "--rotate-keep",
        "100000",
        "--port",
        "47101",
    ];
    let mut child = spawn_sockwatch(&args, &out, &ready);
    wait_ready(&mut child, &ready);
    let (clients, netns) = in_netns(|| connections(PORT, N));
    let port = PORT;
    stop_within(&mut child, libc::SIGTERM, Duration::from_secs(30));

    let files = read_run(dir.path(), &out, &[&ready]);
    assert!(files.len() >= 10, "{} files", files.len());
    // Nothing was left to compress at exit.
    let plain = files
        .iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".zst"));
    assert_eq!(plain.count(), 1, "only the live file is uncompressed");
    assert_eq!(files.last().unwrap().1.last().unwrap()["event"], "lost");

    let s = report_json(dir.path());
    let netns = netns as u32;
    let listener = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["netns"] == netns && l["port"] == port)
        .unwrap_or_else(|| panic!("no listener {port} in {s}"));
    assert_eq!(listener["accepted"], N as u64, "{listener}");
    assert_eq!(listener["closed"], N as u64, "{listener}");
    assert_eq!(listener["established_now"], 0, "{listener}");
    assert_eq!(listener["distinct_peers"], 1, "{listener}");
    let outbound = s["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["netns"] == netns && o["peer_port"] == port)
        .unwrap_or_else(|| panic!("no outbound {port} in {s}"));
    assert_eq!(outbound["connects"], N as u64, "{outbound}");
    assert_eq!(outbound["established"], N as u64, "{outbound}");
    assert_eq!(outbound["open_now"], 0, "{outbound}");
    assert_eq!(clients.len(), N);
    // The same summary from the files named one by one, in any order.
    let mut named: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    named.reverse();
    let out2 = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["report", "--format", "json", "--strict"])
        .args(&named)
        .output()
        .expect("run report");
    assert_eq!(serde_json::from_slice::<Value>(&out2.stdout).ok(), Some(s));
}

#[test]
fn signals_during_rotation_leave_every_file_valid() {
    if !root_or_skip("signals_during_rotation_leave_every_file_valid") {
        return;
    }
    const PORT: u16 = 47102;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (signal, codec) in [(libc::SIGINT, "zstd"), (libc::SIGTERM, "gzip")] {
        let dir = TempDir::new("signal");
        let out = dir.path().join("x.jsonl");
        let ready = dir.path().join("ready");
        let args = [
            "trace",
            "--format",
            "jsonl",
            "--rotate-size",
            "4K",
            "--compress",
            codec,
            "--rotate-keep",
            "100000",
            "--port",
            "47102",
        ];
        let mut child = spawn_sockwatch(&args, &out, &ready);
        wait_ready(&mut child, &ready);
        let ours = programs_of(child.id());
        // Every program this kernel takes (see `expected_programs`).
        assert_eq!(
            ours.len(),
            common::bpf::expected_programs(),
            "programs of this instance: {ours:?}"
        );
        assert!(ours.iter().all(|id| sockwatch_program_ids().contains(id)));

        // Connections that must all be in the files, made and settled first.
        let (clients, netns) = in_netns(|| connections(PORT, 100));
        let port = PORT;
        // Then a churn that keeps files rotating while the signal arrives.
        let stop = Arc::new(AtomicBool::new(false));
        let churn = background_churn(PORT, Arc::clone(&stop));
        let count = || fs::read_dir(dir.path()).map_or(0, |d| d.count());
        let start = count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() < start + 5 {
            assert!(Instant::now() < deadline, "no rotation under churn in 20 s");
            thread::sleep(Duration::from_millis(5));
        }
        let took = stop_within(&mut child, signal, Duration::from_secs(15));
        stop.store(true, Ordering::Relaxed);
        let made = churn.join().expect("churn");
        assert!(made > 0);
        assert!(took < Duration::from_secs(10), "exit took {took:?}");
        assert_detached(&ours);

        let files = read_run(dir.path(), &out, &[&ready]);
        let live = &files.last().unwrap().1;
        assert_eq!(live.last().unwrap()["event"], "lost", "signal {signal}");
        assert_eq!(
            files
                .iter()
                .flat_map(|(_, r)| r)
                .filter(|r| r["event"] == "lost")
                .count(),
            1
        );
        // Every connection of the first namespace, whole, across the files.
        let netns = netns as u32;
        let mut seen: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for r in files.iter().flat_map(|(_, r)| r) {
            if r["netns"] != netns {
                continue;
            }
            let kind = r["event"].as_str().unwrap_or("?").to_string();
            let (local, peer) = (r["local_port"].as_u64(), r["peer_port"].as_u64());
            let client = if local == Some(u64::from(port)) {
                peer
            } else {
                local
            };
            if let Some(c) = client.and_then(|c| u16::try_from(c).ok()) {
                seen.entry(c).or_default().push(kind);
            }
        }
        let lost = &live.last().unwrap();
        for c in &clients {
            let mut kinds = seen.get(c).cloned().unwrap_or_default();
            kinds.sort();
            assert_eq!(
                kinds,
                [
                    "accept",
                    "close",
                    "close",
                    "connect",
                    "established",
                    "established"
                ],
                "client port {c} (signal {signal}; {lost})"
            );
        }
    }
}
