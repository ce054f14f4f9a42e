//! What a user sees when something is wrong: one clear line on stderr and a non-zero exit.
mod common;

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output},
};

fn sockwatch(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sockwatch"));
    c.args(args);
    c
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err}");
    lines[0].to_string()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["trace", "--duration", "0"][..],
        &["trace", "--format", "xml"],
        &["trace", "--ring-size", "3M"],
        &["trace", "--max-sockets", "5"],
        &["frobnicate"],
    ] {
        let out = sockwatch(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
}

#[test]
fn unwritable_output_is_named() {
    // Without root the root check comes first.
    if !common::root_or_skip("unwritable_output_is_named") {
        return;
    }
    let out = sockwatch(&[
        "trace",
        "--output",
        "/nonexistent-dir/x.jsonl",
        "--format",
        "jsonl",
    ])
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(
        line.starts_with("sockwatch: error: cannot create output file /nonexistent-dir/x.jsonl: "),
        "{line}"
    );
}

#[test]
fn not_root_says_so() {
    // Dropping to an unprivileged user needs root in the first place.
    if !common::root_or_skip("not_root_says_so") {
        return;
    }
    let dir = common::TempDir::new("notroot");
    let mut cmd = sockwatch(&["trace", "--duration", "1"]);
    cmd.current_dir(dir.path());
    // SAFETY: setuid/setgid are async-signal-safe; run in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(line.contains("must run as root"), "{line}");
}
