//! A connection churn as fast as the machine allows, traced: every event of every connection is
//! in the file, or its loss is counted. At this rate the kernel skips runs of the state-change
//! program (a softirq interrupting it on its CPU) and the backup program must take them over;
//! and now and then the kernel runs no program at all for a state change, which the last look
//! at the kernel's connections must find.
mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use serde_json::Value;

const CONNECTIONS: usize = 50_000;

/// The load generator of `cargo xtask bench`, built next to the test binaries by
/// `cargo xtask test` (which builds every target of the workspace).
fn churn_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/sockwatch-churn
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("sockwatch-churn"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test`, or build it first with \
         `cargo build -p sockwatch-churn`",
        bin.display()
    );
    bin
}

/// A child process, killed and reaped when dropped (also when the test fails).
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_full_speed_churn_loses_nothing() {
    if !common::root_or_skip("a_full_speed_churn_loses_nothing") {
        return;
    }
    let churn = churn_binary();
    // The mode a user records with; its table of open connections is what the last look at
    // the kernel checks.
    let args = ["trace", "--format", "jsonl"];
    let (t, _summary, (result, _holder)) = common::run_in_new_netns(&args, libc::SIGTERM, |_| {
        // sockwatch finds namespaces through the processes in them: one stays here until
        // sockwatch has stopped, so that its last look at the kernel's connections covers
        // this namespace.
        let holder = Holder(
            Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        );
        // Two client and two server processes, 64 connections in flight each, from sixteen
        // source addresses (few port reuses, so a missed close is not hidden by a new
        // connection on the same addresses): in the namespace the harness made for this test.
        let out = Command::new(&churn)
            .args(["--clients", "2", "--servers", "2", "--in-flight", "64"])
            .args(["--sources", "16", "--port", "47999", "--max-seconds", "60"])
            .args(["--connections", &CONNECTIONS.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run sockwatch-churn");
        assert!(
            out.status.success(),
            "sockwatch-churn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8_lossy(&out.stdout).into_owned(), holder)
    });
    // Shown when the test fails (or with --nocapture).
    eprintln!("{}\n{}\n{}", result.trim(), t.stats, t.lost);
    let line = result.lines().last().unwrap_or_default();
    let made: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(
        made["connections"].as_u64(),
        Some(CONNECTIONS as u64),
        "{made}"
    );
    assert_eq!(made["errors"].as_u64(), Some(0), "{made}");
    assert_eq!(made["timed_out"].as_bool(), Some(false), "{made}");

    // Nothing lost to the ring, to the maps or to a skipped program run.
    for key in [
        "ringbuf_full",
        "sock_map_full",
        "sock_map_evicted",
        "connect_lost",
        "recursion_misses",
        "read_failed",
        "decode_errors",
    ] {
        assert_eq!(t.lost[key].as_u64(), Some(0), "{key}: {}", t.lost);
    }
    // The point of the test: runs were skipped, and taken over.
    let recovered = t.stats["recursion_recovered"].as_u64().unwrap_or(0);
    assert!(
        recovered > 0,
        "the kernel skipped no state change at this rate, so the test proved nothing: {}",
        t.stats
    );
    // Every connection: its connect and accept, both ends established, both ends closed. The
    // kernel very rarely runs no program at all for a state change (and counts nothing): such
    // a close is found missing when sockwatch stops, and counted as expired, not dropped.
    let expired = t.samples.iter().filter(|s| s["event"] == "expired").count();
    assert_eq!(
        t.lost["expired"].as_u64(),
        Some(expired as u64),
        "{}",
        t.lost
    );
    for (kind, per_connection, accounted) in [
        ("connect", 1, 0),
        ("accept", 1, 0),
        ("established", 2, 0),
        ("close", 2, expired),
    ] {
        assert_eq!(
            t.of_kind(kind).len() + accounted,
            per_connection * CONNECTIONS,
            "{kind} events; {} {}",
            t.lost,
            t.stats
        );
    }
}
