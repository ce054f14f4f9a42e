//! Quick runs of the real binary on loopback in the current network namespace (no root needed),
//! small and time-bounded.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

fn churn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sockwatch-churn"))
}

fn result(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn churns_200_connections_in_each_close_mode() {
    for mode in ["server-first", "client-first", "reset"] {
        let out = churn()
            .args(["--connections", "200", "--in-flight", "8", "--clients", "2"])
            .args([
                "--servers",
                "2",
                "--sources",
                "2",
                "--max-seconds",
                "30",
                "--close",
                mode,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = result(&stdout);
        assert_eq!(v["connections"], 200, "{mode}: {v}");
        assert_eq!(v["errors"], 0, "{mode}: {v}");
        assert_eq!(v["timed_out"], false, "{mode}: {v}");
        assert!(v["rate"].as_f64().unwrap() > 0.0);
        assert!(v["seconds"].as_f64().unwrap() > 0.0);
        assert!(v["port"].as_u64().unwrap() > 0);
        assert!(v["netns"].as_u64().unwrap() > 0);
    }
}

#[test]
fn holds_until_stdin_closes() {
    let mut child = churn()
        .args([
            "--hold",
            "--connections",
            "100",
            "--clients",
            "2",
            "--servers",
            "2",
        ])
        .args(["--max-seconds", "30"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let Ok(first) = first else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no `held` line within 30 s");
    };
    assert_eq!(first.trim(), "held 100");
    // Still holding: it has not exited.
    thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none());
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn a_port_taken_without_reuseport_fails_fast() {
    // A port bound without SO_REUSEPORT: the servers cannot listen on it, and the run fails
    // at once, saying why, instead of hanging.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = churn()
        .args([
            "--connections",
            "50",
            "--port",
            &port.to_string(),
            "--max-seconds",
            "20",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen"), "{stderr}");
}

#[test]
fn help_hides_the_child_options() {
    let out = churn().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--connections") && help.contains("--hold"));
    assert!(!help.contains("--role"));
}

#[test]
fn max_seconds_stops_early_and_says_so() {
    // Resets leave no TIME_WAIT sockets behind in this (shared) namespace.
    let out = churn()
        .args([
            "--connections",
            "10000000",
            "--close",
            "reset",
            "--in-flight",
            "4",
        ])
        .args(["--max-seconds", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = result(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["timed_out"], true, "{v}");
    let made = v["connections"].as_u64().unwrap();
    assert!(made > 0 && made < 10_000_000, "{v}");
    assert!(v["seconds"].as_f64().unwrap() < 5.0, "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped early"), "{stderr}");
}
