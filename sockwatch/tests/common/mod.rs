//! Harness for the root integration tests: a fresh network namespace per test, the real
//! sockwatch binary tracing in the background, and its JSONL output parsed back.
#![allow(dead_code)]

pub mod bpf;
pub mod cgroups;
pub mod counts;
pub mod server;

use std::{
    fs,
    io::{self, BufRead},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// `top` with one JSON summary at its end, sampling often, with small maps.
pub const TOP_JSON: &[&str] = &[
    "top",
    "--format",
    "json",
    "--interval",
    "0.2",
    "--max-sockets",
    "65536",
];

/// True when the test may load BPF. Without root it says it skipped, except in CI
/// (CI=true), where missing root is a failure.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but not running as root: the BPF tests cannot run");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF programs (run `sudo -E cargo xtask test`)");
    false
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockwatch-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Moves the calling thread into a new network namespace with loopback up; returns its inode.
/// Threads and processes started from this thread afterwards share it.
pub fn enter_new_netns() -> u64 {
    // SAFETY: plain syscalls with valid arguments; unshare affects this thread only.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNET),
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
    }
    set_loopback(true);
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat netns")
        .ino()
}

/// Brings this thread's namespace's loopback interface up or down.
pub fn set_loopback(up: bool) {
    // SAFETY: plain syscalls on a socket we own, with a zeroed, named ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        if up {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        } else {
            req.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req),
            0,
            "setting lo up={up}: {}",
            io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// What one traced run produced.
pub struct Traced {
    /// Connection events of the test's own namespace, in file order.
    pub events: Vec<Value>,
    /// Host samples of the test's own namespace (existing, queue, netstat).
    pub samples: Vec<Value>,
    /// The final `lost` record.
    pub lost: Value,
    /// The `stats` record just before it.
    pub stats: Value,
    /// Every record of the file (all namespaces).
    pub all: Vec<Value>,
    /// The file's text.
    pub raw: String,
    pub netns: u64,
}

impl Traced {
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    /// Connection events of another namespace, in file order.
    pub fn in_netns(&self, netns: u64) -> Vec<&Value> {
        self.all
            .iter()
            .filter(|v| v["netns"].as_u64() == Some(netns) && !is_sample(v))
            .collect()
    }
}

/// Runs `scenario` in a new network namespace while sockwatch traces with `--format jsonl`
/// (plus `extra` arguments), then stops sockwatch with SIGTERM and returns its output.
pub fn trace_in_new_netns<R: Send>(
    extra: &[&str],
    scenario: impl FnOnce() -> R + Send,
) -> (Traced, R) {
    trace_in_new_netns_until(extra, libc::SIGTERM, scenario)
}

/// As [`trace_in_new_netns`], stopping sockwatch with `signal` (SIGTERM or SIGINT).
pub fn trace_in_new_netns_until<R: Send>(
    extra: &[&str],
    signal: i32,
    scenario: impl FnOnce() -> R + Send,
) -> (Traced, R) {
    let mut args = vec!["trace", "--format", "jsonl"];
    args.extend_from_slice(extra);
    let (t, _, r) = run_in_new_netns(&args, signal, |_| scenario());
    (t, r)
}

/// Runs sockwatch with `args` plus `--output FILE --ready-file PATH` while `scenario` (given the
/// output file) runs in a new network namespace; stops it with `signal`. Returns the parsed
/// output file, sockwatch's standard output, and the scenario's result.
pub fn run_in_new_netns<R: Send>(
    args: &[&str],
    signal: i32,
    scenario: impl FnOnce(&Path) -> R + Send,
) -> (Traced, String, R) {
    run_in_new_netns_with_pid(args, signal, |out, _| scenario(out))
}

/// As `run_in_new_netns`, and the scenario also gets sockwatch's pid (to stall it, say).
pub fn run_in_new_netns_with_pid<R: Send>(
    args: &[&str],
    signal: i32,
    scenario: impl FnOnce(&Path, i32) -> R + Send,
) -> (Traced, String, R) {
    thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, || {
                let netns = enter_new_netns();
                let dir = TempDir::new("trace");
                let out = dir.path().join("events.jsonl");
                let ready = dir.path().join("ready");
                let mut child = spawn_sockwatch(args, &out, &ready);
                // Read stdout as it comes, so a full pipe never blocks sockwatch.
                let mut stdout = child.stdout.take().expect("stdout");
                let reader = thread::spawn(move || {
                    let mut text = String::new();
                    let _ = io::Read::read_to_string(&mut stdout, &mut text);
                    text
                });
                wait_ready(&mut child, &ready);
                let result = scenario(&out, child.id() as i32);
                wait_connections_settled();
                let status = stop(&mut child, signal);
                assert!(status, "sockwatch did not exit cleanly on signal {signal}");
                let stdout = reader.join().expect("stdout reader");
                (parse(&out, netns), stdout, result)
            })
            .expect("spawn netns thread")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

pub fn spawn_sockwatch(args: &[&str], out: &Path, ready: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(args)
        .arg("--output")
        .arg(out)
        .arg("--ready-file")
        .arg(ready)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockwatch")
}

/// Lines of `path` (complete JSON records) that satisfy `want`.
pub fn count_lines(path: &Path, want: impl Fn(&Value) -> bool) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| want(v))
        .count()
}

/// Polls `path` (sockwatch's output, flushed every half second) until `n` lines satisfy
/// `want`; bounded by 20 s.
pub fn wait_for_count(path: &Path, what: &str, want: impl Fn(&Value) -> bool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_lines(path, &want) < n {
        assert!(
            Instant::now() < deadline,
            "no {what} in sockwatch's output after 20 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `path` until a line satisfies `want`; bounded by 20 s.
pub fn wait_for_line(path: &Path, what: &str, want: impl Fn(&Value) -> bool) {
    wait_for_count(path, what, want, 1);
}

/// Waits for sockwatch's ready file (bounded); fails with its stderr if it exits first.
pub fn wait_ready(child: &mut Child, ready: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("sockwatch exited before ready ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "sockwatch not ready after 60 s");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until every TCP socket of this namespace is listening or in TIME_WAIT, so every
/// lifecycle transition of the test's connections has happened (bounded).
pub fn wait_connections_settled() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: Vec<String> = ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| fs::File::open(p).ok())
            .flat_map(|f| io::BufReader::new(f).lines().skip(1).map_while(Result::ok))
            .filter(|l| !settled(l))
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} sockets still closing after 10 s:\n{}",
            busy.len(),
            busy.join("\n")
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A live summary as its recording can give it back: without `open_corrections`, which only a
/// live run that counts in the kernel knows.
pub fn recordable(live: &Value) -> Value {
    let mut v = live.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("open_corrections");
    }
    v
}

/// `sockwatch report --format json` over a recording, parsed.
pub fn report_json(file: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["report", "--format", "json"])
        .arg(file)
        .output()
        .expect("run report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// 127.0.0.1:`port`, for the raw socket calls of tests.
pub fn loopback_v4(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

/// A /proc/net/tcp line of a socket that is done for sockwatch: listening, or a TIME_WAIT
/// socket. The latter may still show FIN_WAIT2 (05) when it replaced an orphaned FIN_WAIT2 socket
/// whose peer has not sent its FIN: the full socket's close has happened. Its timer ("tr") is
/// then 3, the TIME_WAIT timer.
fn settled(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = fields.get(3).copied().unwrap_or("");
    let timewait = fields.get(5).is_some_and(|t| t.starts_with("03:"));
    state == "0A" || state == "06" || timewait
}

/// Sends `signal`, then waits (bounded). True if it exited with status 0.
pub fn stop(child: &mut Child, signal: i32) -> bool {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut err);
                }
                eprintln!("sockwatch stderr: {err}");
            }
            return st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockwatch did not exit within 30 s of signal {signal}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn parse(out: &Path, netns: u64) -> Traced {
    let text = fs::read_to_string(out).expect("read output");
    assert!(text.ends_with('\n'), "output does not end with a full line");
    let all: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON line {l:?}: {e}")))
        .collect();
    let lost = all.last().cloned().expect("empty output");
    assert_eq!(lost["event"], "lost", "last record is not the loss record");
    assert_eq!(
        all.iter().filter(|v| v["event"] == "lost").count(),
        1,
        "exactly one loss record"
    );
    let stats = all[all.len().saturating_sub(2)].clone();
    assert_eq!(
        stats["event"], "stats",
        "the stats record precedes the loss record"
    );
    let (samples, events): (Vec<Value>, Vec<Value>) = all
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(netns))
        .cloned()
        .partition(is_sample);
    Traced {
        events,
        samples,
        lost,
        stats,
        netns,
        all,
        raw: text,
    }
}

/// Host samples, as opposed to connection events.
pub fn is_sample(v: &Value) -> bool {
    matches!(
        v["event"].as_str(),
        Some("existing" | "queue" | "netstat" | "fds" | "expired")
    )
}

/// The `event` names of `events`, in order.
pub fn kinds<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<&'a str> {
    events
        .into_iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect()
}

/// Asserts the loss record lists every counter and all are zero.
pub fn assert_nothing_lost(lost: &Value) {
    for key in [
        "ringbuf_full",
        "recursion_misses",
        "sock_map_full",
        "sock_map_evicted",
        "connect_lost",
        "read_failed",
        "decode_errors",
        "expired",
        "counts_full",
    ] {
        assert_eq!(lost[key].as_u64(), Some(0), "{key} in {lost}");
    }
    assert_eq!(lost["total"].as_u64(), Some(0), "{lost}");
}

/// `sockwatch check --format json` on this kernel, which must succeed.
pub fn check_json() -> Value {
    check_json_with(&[])
}

/// As [`check_json`], with more arguments (`--programs compat`, ...).
pub fn check_json_with(extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["check", "--format", "json"])
        .args(extra)
        .output()
        .expect("run sockwatch check");
    assert!(
        out.status.success(),
        "check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check JSON")
}

/// One capability of a [`check_json`] result.
pub fn capability<'a>(check: &'a Value, name: &str) -> &'a Value {
    check["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no capability {name} in {check}"))
}

/// Whether this kernel offers `capability` (a name of `sockwatch check`), for tests of what some
/// kernels cannot see.
pub fn kernel_has(name: &str) -> bool {
    capability(&check_json(), name)["available"] == true
}

/// Holds a process stopped (SIGSTOP) until dropped, even when the test panics.
pub struct Stalled(i32);

impl Stalled {
    pub fn new(pid: i32) -> Self {
        // SAFETY: signalling our own child by pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        let stalled = Stalled(pid);
        // The stop is delivered asynchronously: wait until every thread shows it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "sockwatch did not stop");
            thread::sleep(Duration::from_millis(5));
        }
        stalled
    }
}

fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        fs::read_to_string(t.path().join("stat"))
            // The state follows the parenthesised command name.
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
            .unwrap_or(false)
    })
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}
