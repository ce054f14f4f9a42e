//! Root integration tests of faults: signals at any moment, a full disk, an output file removed
//! under sockwatch, a ring buffer too small, two instances at once. After each, nothing of
//! sockwatch may stay loaded in the kernel.
//!
//! The tests of this file run one at a time: they check the kernel's global list of programs.
mod common;

use std::{
    fs,
    io::Read,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use common::{TempDir, bpf::sockwatch_objects, root_or_skip, spawn_sockwatch, wait_ready};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SMALL: &[&str] = &["trace", "--format", "jsonl", "--max-sockets", "65536"];

/// Waits (bounded) until the kernel has freed every sockwatch program and map.
fn assert_nothing_loaded() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = sockwatch_objects();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still loaded after 10 s: {left:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "sockwatch did not exit within 30 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Every line is a complete JSON object and the file ends with a newline.
fn assert_valid_jsonl(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("read output");
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Makes `n` connections to a local server in the calling thread's namespace.
fn churn(n: usize) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    for _ in 0..n {
        drop(TcpStream::connect(addr).expect("connect"));
    }
    server.join().expect("server");
}

/// Runs `body` in a thread inside a fresh network namespace.
fn in_netns<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    thread::scope(|s| {
        thread::Builder::new()
            .name("sw-netns".into())
            .spawn_scoped(s, || {
                common::enter_new_netns();
                body()
            })
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

#[test]
fn signals_at_any_moment_leave_nothing_loaded() {
    if !root_or_skip("signals_at_any_moment_leave_nothing_loaded") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_loaded();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // At once: possibly before anything is attached.
        let dir = TempDir::new("sig-early");
        let out = dir.path().join("out.jsonl");
        let mut child = spawn_sockwatch(SMALL, &out, &dir.path().join("ready"));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_exit(&mut child);
        assert_nothing_loaded();
        if out.exists() {
            assert_valid_jsonl(&out);
        }

        // Mid-stream, with traffic flowing.
        in_netns(|| {
            let dir = TempDir::new("sig-mid");
            let out = dir.path().join("out.jsonl");
            let ready = dir.path().join("ready");
            let mut child = spawn_sockwatch(SMALL, &out, &ready);
            wait_ready(&mut child, &ready);
            let traffic = thread::spawn(|| churn(300));
            thread::sleep(Duration::from_millis(20));
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let st = wait_exit(&mut child);
            assert!(st.success(), "{st}: {}", stderr_of(&mut child));
            traffic.join().expect("traffic");
            let lines = assert_valid_jsonl(&out);
            assert_eq!(
                lines.last().map(|l| l["event"].clone()),
                Some("lost".into())
            );
        });
        assert_nothing_loaded();
    }
}

#[test]
fn sigkill_leaves_nothing_loaded() {
    if !root_or_skip("sigkill_leaves_nothing_loaded") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("kill");
    let ready = dir.path().join("ready");
    let mut child = spawn_sockwatch(SMALL, &dir.path().join("out.jsonl"), &ready);
    wait_ready(&mut child, &ready);
    assert!(
        !sockwatch_objects().is_empty(),
        "the check sees loaded programs"
    );
    child.kill().expect("SIGKILL");
    wait_exit(&mut child);
    assert_nothing_loaded();
}

/// A tiny tmpfs, mounted for the test and unmounted after.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn new(size: &str) -> Option<Self> {
        let dir = TempDir::new("tmpfs");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "sockwatch-test",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_disk_stops_with_a_clear_error_and_a_valid_file() {
    if !root_or_skip("full_disk_stops_with_a_clear_error_and_a_valid_file") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fs = Tmpfs::new("16k").expect("mount tmpfs");
    let out = fs.0.path().join("out.jsonl");
    let (status, stderr) = in_netns(|| {
        let ready = fs.0.path().join("ready");
        let mut child = spawn_sockwatch(SMALL, &out, &ready);
        wait_ready(&mut child, &ready);
        // About 6 records of ~350 bytes per connection: far more than 16 KiB.
        churn(200);
        let st = wait_exit(&mut child);
        (st, stderr_of(&mut child))
    });
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sockwatch: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains("No space left on device"), "{line}");
    assert!(line.contains(&out.display().to_string()), "{line}");
    let lines = assert_valid_jsonl(&out);
    assert!(!lines.is_empty(), "what fitted was kept");
    assert_nothing_loaded();
}

#[test]
fn removed_output_file_stops_with_a_clear_error() {
    if !root_or_skip("removed_output_file_stops_with_a_clear_error") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("removed");
    let out = dir.path().join("out.jsonl");
    let (status, stderr) = in_netns(|| {
        let ready = dir.path().join("ready");
        let mut child = spawn_sockwatch(SMALL, &out, &ready);
        wait_ready(&mut child, &ready);
        fs::remove_file(&out).expect("remove");
        churn(5);
        let st = wait_exit(&mut child);
        (st, stderr_of(&mut child))
    });
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was removed while sockwatch was writing to it"),
        "{stderr}"
    );
    assert_nothing_loaded();
}

#[test]
fn a_tiny_ring_buffer_counts_what_it_drops() {
    if !root_or_skip("a_tiny_ring_buffer_counts_what_it_drops") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 400;
    let args = [SMALL, &["--ring-size", "4K"]].concat();
    // A stopped reader drains nothing: the ring must fill, whatever the machine's speed.
    let (t, _, ()) = common::run_in_new_netns_with_pid(&args, libc::SIGTERM, |_, pid| {
        let _stalled = common::Stalled::new(pid);
        churn(N);
    });
    let dropped = t.lost["ringbuf_full"].as_u64().unwrap_or(0);
    // listen, listen_stop and 6 events per connection in this namespace.
    let expected = 6 * N + 2;
    let seen = t.events.len();
    assert!(
        dropped > 0,
        "a 4 KiB ring must overflow at this rate: {}",
        t.lost
    );
    assert!(seen < expected);
    // Every missing event of this namespace is accounted for (the host may add its own):
    // by the ring, or by a run the kernel skipped (recursion miss).
    let total = t.lost["total"].as_u64().unwrap_or(0);
    assert!(
        (expected - seen) as u64 <= total,
        "missing {} > counted {total}: {}",
        expected - seen,
        t.lost
    );
    assert!(total >= dropped);
    assert_nothing_loaded();
}

#[test]
fn two_instances_each_see_everything() {
    if !root_or_skip("two_instances_each_see_everything") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("two");
    let outs = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let netns = in_netns(|| {
        let mut children: Vec<Child> = outs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                let ready = dir.path().join(format!("ready{i}"));
                let mut c = spawn_sockwatch(SMALL, out, &ready);
                wait_ready(&mut c, &ready);
                c
            })
            .collect();
        churn(20);
        common::wait_connections_settled();
        for c in &mut children {
            assert!(common::stop(c, libc::SIGTERM));
        }
        fs::metadata("/proc/thread-self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("netns")
    });
    for out in &outs {
        let lines = assert_valid_jsonl(out);
        let mine = lines
            .iter()
            .filter(|v| v["netns"].as_u64() == Some(netns) && !common::is_sample(v))
            .count();
        assert_eq!(mine, 6 * 20 + 2, "{}", out.display());
        assert_eq!(lines.last().map(|l| l["total"].clone()), Some(0.into()));
    }
    assert_nothing_loaded();
}

/// Root inside a user namespace is not root for bpf(): one clear line, the fix, exit 1.
#[test]
fn refused_bpf_is_explained() {
    if !root_or_skip("refused_bpf_is_explained") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Inside a user namespace tracefs cannot be mounted: give it one for the test's duration.
    let mounted_here = !Path::new("/sys/kernel/tracing/events").exists()
        && Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .is_ok_and(|s| s.success());
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["trace", "--format", "jsonl", "--duration", "1"])
        .output();
    if mounted_here {
        let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
    }
    let out = out.expect("run unshare");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("sockwatch: error: "), "{stderr}");
    assert!(
        lines[0].contains("the kernel refused bpf() (needs CAP_BPF"),
        "{stderr}"
    );
    assert_nothing_loaded();
}
