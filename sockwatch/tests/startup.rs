//! Start-up on a kernel that lacks what sockwatch needs (no BTF, BTF without a needed type or
//! field): one clear line naming what is missing and the fix, exit code 1 (2 is for wrong
//! options), and nothing attached (no ready file). And on one that lacks what sockwatch can do
//! without (syscall tracepoints): a note per capability lost, and the rest traced.
mod common;

use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Output},
};

/// Runs `sockwatch trace` with `args` and a ready file; asserts it failed before attaching
/// with one `sockwatch: error: ` line and exit code 1; returns that line without the prefix.
fn fails_at_startup(args: &[&str], dir: &Path) -> String {
    let ready = dir.join("ready");
    let out: Output = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(["trace", "--duration", "5", "--ready-file"])
        .arg(&ready)
        .args(args)
        .output()
        .expect("run sockwatch");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!ready.exists(), "{args:?}: programs were attached");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    lines[0]
        .strip_prefix("sockwatch: error: ")
        .unwrap_or_else(|| panic!("{args:?}: no error prefix: {err}"))
        .to_string()
}

/// A minimal valid BTF blob: the header, the given types (each a list of u32 words) and the
/// string section.
fn btf_blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
    let type_bytes: Vec<u8> = types
        .iter()
        .flatten()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut b = Vec::new();
    b.extend_from_slice(&0xeb9f_u16.to_le_bytes()); // magic
    b.push(1); // version
    b.push(0); // flags
    for word in [
        24,                      // header length
        0,                       // type section offset
        type_bytes.len() as u32, // type section length
        type_bytes.len() as u32, // string section offset
        strings.len() as u32,    // string section length
    ] {
        b.extend_from_slice(&u32::to_le_bytes(word));
    }
    b.extend_from_slice(&type_bytes);
    b.extend_from_slice(strings);
    b
}

/// Copies the tracefs format files of syscall tracepoints `events` under `to`, laid out as in
/// tracefs. tracefs is read in a private mount namespace of a child (mounted there if the host
/// has not mounted it), so the host's mounts never change.
fn copy_formats(events: &[&str], to: &Path) {
    let script = events
        .iter()
        .map(|e| {
            format!(
                "mkdir -p '{dst}/events/syscalls/{e}' && \
                 cp /sys/kernel/tracing/events/syscalls/{e}/format '{dst}/events/syscalls/{e}/'",
                dst = to.display()
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    // SAFETY: only async-signal-safe syscalls, in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let none = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Mounted over the host's tracefs when there is one: same contents, private here.
            let _ = libc::mount(
                c"tracefs".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            );
            Ok(())
        });
    }
    let out = cmd.output().expect("run sh");
    assert!(
        out.status.success(),
        "copying tracepoint formats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_STRUCT: u32 = 4;

#[test]
fn missing_btf_file_names_the_file_and_the_fix() {
    if !common::root_or_skip("missing_btf_file_names_the_file_and_the_fix") {
        return;
    }
    let dir = common::TempDir::new("nobtf");
    let line = fails_at_startup(&["--btf", "/nonexistent/vmlinux"], dir.path());
    assert_eq!(
        line,
        "kernel BTF not found at /nonexistent/vmlinux: this kernel needs CONFIG_DEBUG_INFO_BTF=y, \
         or pass --btf PATH (a BTF file of this kernel)"
    );
}

#[test]
fn btf_without_a_needed_type_or_field_names_it() {
    if !common::root_or_skip("btf_without_a_needed_type_or_field_names_it") {
        return;
    }
    let dir = common::TempDir::new("smallbtf");
    // Only `int`: no struct sock at all.
    let int = vec![1, BTF_KIND_INT << 24, 4, 32];
    let no_sock = dir.path().join("int.btf");
    fs::write(&no_sock, btf_blob(&[int], b"\0int\0")).unwrap();
    let line = fails_at_startup(&["--btf", no_sock.to_str().unwrap()], dir.path());
    assert_eq!(
        line,
        "kernel BTF has no struct sock: this kernel's layout is not supported (please report it \
         with `uname -r`)"
    );
    // A struct sock without members: the first field read is named.
    let sock = vec![1, BTF_KIND_STRUCT << 24, 8];
    let empty_sock = dir.path().join("sock.btf");
    fs::write(&empty_sock, btf_blob(&[sock], b"\0sock\0")).unwrap();
    let line = fails_at_startup(&["--btf", empty_sock.to_str().unwrap()], dir.path());
    assert!(
        line.starts_with("kernel BTF has no struct sock field __sk_common: "),
        "{line}"
    );
    // Not BTF at all.
    let text = dir.path().join("text.btf");
    fs::write(&text, "not btf\n").unwrap();
    let line = fails_at_startup(&["--btf", text.to_str().unwrap()], dir.path());
    let want = format!("cannot read kernel BTF at {}: ", text.display());
    assert!(line.starts_with(&want), "{line}");
}

#[test]
fn absent_syscall_tracepoints_are_named_and_the_rest_is_traced() {
    if !common::root_or_skip("absent_syscall_tracepoints_are_named_and_the_rest_is_traced") {
        return;
    }
    // Where fentry or kprobes work, the syscall tracepoints are not used at all (the kernel
    // matrix covers those kernels).
    let offered = common::check_json()["hooks"]["offered"].clone();
    if offered != serde_json::json!(["syscall"]) {
        eprintln!("skipped: this kernel offers {offered}: the syscall tracepoints are not needed");
        return;
    }
    // A tracefs copy holding every format sockwatch reads but sys_exit_accept4's, as on a
    // kernel without that tracepoint.
    let dir = common::TempDir::new("tracefs");
    let fake = dir.path().join("tracefs");
    let fake_arg = fake.to_str().expect("utf-8 path");
    copy_formats(
        &[
            "sys_exit_connect",
            "sys_exit_accept",
            "sys_enter_connect",
            "sys_enter_accept",
            "sys_enter_accept4",
        ],
        &fake,
    );
    let run = |fake: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sockwatch"))
            .args(["trace", "--duration", "1", "--format", "jsonl", "--tracefs"])
            .arg(fake)
            .output()
            .expect("run sockwatch")
    };
    let out = run(&fake);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Named once per capability lost, in one line each.
    let hooks = "sockwatch: note: hooks: ";
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("no syscall tracepoint") && !l.starts_with(hooks))
        .collect();
    // Without syscall tracepoints (and, here, without fentry or kprobes): no hooks at all.
    assert_eq!(
        err.lines().filter(|l| l.starts_with(hooks)).count(),
        1,
        "{err}"
    );
    let want = format!(
        ": no fentry, no kprobes, and no syscall tracepoint syscalls:sys_exit_accept4 in \
         {fake_arg} (the kernel needs CONFIG_FTRACE_SYSCALLS=y, or --tracefs is not where \
         tracefs is mounted): "
    );
    assert_eq!(notes.len(), 3, "{err}");
    for (note, name) in notes
        .iter()
        .zip(["accept_owner", "accept_failures", "connect_errors"])
    {
        assert!(
            note.starts_with(&format!("sockwatch: note: {name}{want}")),
            "{note}"
        );
    }
    // The rest is traced: a connection's lifecycle, without what only the syscall hooks see.
    let (t, ()) = common::trace_in_new_netns(&["--tracefs", fake_arg], || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop((c, s));
    });
    let header: serde_json::Value =
        serde_json::from_str(t.raw.lines().next().expect("header")).expect("JSON");
    assert_eq!(
        header["capabilities"]["accept_failures"]["available"],
        false
    );
    let kinds = common::kinds(t.events.iter());
    for kind in ["listen", "connect", "established", "close"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    assert!(!kinds.contains(&"accept"), "{kinds:?}");
    common::assert_nothing_lost(&t.lost);
    // With the file back, nothing is missing.
    copy_formats(&["sys_exit_accept4"], &fake);
    let out = run(&fake);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("no syscall tracepoint"), "{err}");
}
