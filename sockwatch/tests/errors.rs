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

/// The mode bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn symlink_output_is_refused() {
    if !common::root_or_skip("symlink_output_is_refused") {
        return;
    }
    let dir = common::TempDir::new("symlink");
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").expect("write target");
    let link = dir.path().join("out.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let link_arg = link.to_str().unwrap();
    for args in [
        &[
            "trace",
            "--output",
            link_arg,
            "--format",
            "jsonl",
            "--duration",
            "1",
        ][..],
        &["top", "--output", link_arg, "--duration", "1"],
    ] {
        let out = sockwatch(args).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr_line(&out),
            format!(
                "sockwatch: error: cannot create output file {}: it is a symbolic link (pass \
                 --follow-symlinks to write through it)",
                link.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }
}

#[test]
fn follow_symlinks_writes_through_the_link() {
    if !common::root_or_skip("follow_symlinks_writes_through_the_link") {
        return;
    }
    let dir = common::TempDir::new("follow");
    let target = dir.path().join("target.jsonl");
    std::fs::write(&target, "old content\n").expect("write target");
    let link = dir.path().join("out.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = sockwatch(&[
        "trace",
        "--output",
        link.to_str().unwrap(),
        "--follow-symlinks",
        "--format",
        "jsonl",
        "--duration",
        "1",
    ])
    .output()
    .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(!written.contains("old content"), "not truncated: {written}");
    let last = written.lines().last().expect("the target has content");
    assert!(last.contains(r#""event":"lost""#), "{last}");
    // It was truncated, so it was made private too.
    assert_eq!(mode_of(&target), 0o600);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

#[test]
fn output_file_is_private() {
    if !common::root_or_skip("output_file_is_private") {
        return;
    }
    let dir = common::TempDir::new("private");
    let file = dir.path().join("conns.jsonl");
    let out = sockwatch(&[
        "trace",
        "--duration",
        "1",
        "--output",
        file.to_str().unwrap(),
        "--format",
        "jsonl",
    ])
    .output()
    .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&file), 0o600);
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
}

#[test]
fn missing_output_directory_is_named() {
    if !common::root_or_skip("missing_output_directory_is_named") {
        return;
    }
    let dir = common::TempDir::new("nodir");
    let missing = dir.path().join("missing");
    let file = missing.join("x.jsonl");
    let out = sockwatch(&["top", "--output", file.to_str().unwrap(), "--duration", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_line(&out),
        format!(
            "sockwatch: error: cannot create output file {}: directory {} does not exist",
            file.display(),
            missing.display()
        )
    );
}

#[test]
fn follow_symlinks_needs_output() {
    let out = sockwatch(&["trace", "--follow-symlinks"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}
