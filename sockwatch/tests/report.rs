//! `sockwatch report` on files as they come: cut short, empty, binary, edited by hand. It never
//! panics (exit code 101): bad lines are named on stderr and skipped, or with `--strict` the
//! first one is the error. No root needed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockwatch-report-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Writes `content` to the file `name` in the directory; returns its path.
    fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, content).expect("write test file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Valid records, as `trace --format jsonl` writes them (docs/records.md#json-lines).
const LISTEN: &str = r#"{"time":"2026-11-21T09:45:28.000000000Z","event":"listen","family":"ipv4","local_addr":"127.0.0.1","local_port":8080,"peer_addr":"0.0.0.0","peer_port":0,"pid":7700,"comm":"python3","cgroup_id":1,"netns":4026531833,"direction":null}"#;
const ACCEPT: &str = r#"{"time":"2026-11-21T09:45:28.565087036Z","event":"accept","family":"ipv4","local_addr":"127.0.0.1","local_port":8080,"peer_addr":"127.0.0.1","peer_port":43060,"pid":7700,"comm":"python3","cgroup_id":1,"netns":4026531833,"direction":"passive"}"#;
const LOST: &str = r#"{"time":"2026-11-21T09:45:31.537514966Z","event":"lost","total":3,"ringbuf_full":3,"recursion_misses":0,"sock_map_full":0,"sock_map_evicted":0,"connect_lost":0,"read_failed":0,"decode_errors":0}"#;

fn lines(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn report(args: &[&str], files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .arg("report")
        .args(args)
        .args(files)
        .output()
        .expect("run sockwatch")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `--format json` summary.
fn summary(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary is JSON")
}

fn accepted_on_8080(s: &Value) -> u64 {
    s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 8080)
        .map_or(0, |l| l["accepted"].as_u64().unwrap())
}

/// `--strict`: exit code 1, one line naming the file, the line and why, and no summary.
fn assert_strict_error(out: &Output, file: &Path, line: usize, why: &str) {
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "a summary was printed");
    let err = stderr_lines(out);
    assert_eq!(err.len(), 1, "{err:?}");
    let start = format!("sockwatch: error: {}:{line}: ", file.display());
    assert!(
        err[0].starts_with(&start) && err[0].contains(why),
        "{} does not start with {start} or lacks {why}",
        err[0]
    );
}

#[test]
fn valid_lines_are_summarised() {
    let dir = TempDir::new("valid");
    let f = dir.file("run.jsonl", lines(&[LISTEN, ACCEPT, LOST]));
    for args in [&["--format", "json"][..], &["--format", "json", "--strict"]] {
        let out = report(args, &[&f]);
        let s = summary(&out);
        assert!(out.stderr.is_empty(), "{:?}", stderr_lines(&out));
        assert_eq!(s["events"], 2);
        assert_eq!(accepted_on_8080(&s), 1);
        assert_eq!(s["listeners"][0]["comm"], "python3");
        assert_eq!(s["lost"]["total"], 3);
        assert_eq!(s["lost"]["ringbuf_full"], 3);
    }
    // The tables too.
    let out = report(&[], &[&f]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("8080"));
}

#[test]
fn empty_file_gives_an_empty_summary() {
    let dir = TempDir::new("empty");
    let f = dir.file("empty.jsonl", "");
    let blank = dir.file("blank.jsonl", "\n\n  \n");
    for file in [&f, &blank] {
        for strict in [false, true] {
            let args: &[&str] = if strict {
                &["--format", "json", "--strict"]
            } else {
                &["--format", "json"]
            };
            let out = report(args, &[file]);
            let s = summary(&out);
            assert!(out.stderr.is_empty(), "{:?}", stderr_lines(&out));
            assert_eq!(s["events"], 0);
            assert_eq!(s["listeners"], Value::Array(vec![]));
            assert_eq!(s["lost"], Value::Null);
        }
        let out = report(&[], &[file]);
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn truncated_last_line_is_skipped() {
    let dir = TempDir::new("truncated");
    // Cut mid-object, with no final newline: what a full disk or a kill -9 leaves.
    let content = format!("{LISTEN}\n{ACCEPT}\n{}", &LOST[..60]);
    let f = dir.file("cut.jsonl", content);
    let out = report(&["--format", "json"], &[&f]);
    let s = summary(&out);
    assert_eq!(accepted_on_8080(&s), 1);
    assert_eq!(s["lost"], Value::Null);
    let err = stderr_lines(&out);
    assert_eq!(err.len(), 1, "{err:?}");
    let start = format!("sockwatch: {}:3: skipped: not a JSON record: ", f.display());
    assert!(err[0].starts_with(&start), "{}", err[0]);
    assert!(err[0].ends_with("(the last line has no newline: was the file cut short?)"));

    let out = report(&["--strict"], &[&f]);
    assert_strict_error(&out, &f, 3, "not a JSON record: EOF while parsing");
}

#[test]
fn binary_garbage_never_panics() {
    let dir = TempDir::new("binary");
    // Bytes of every value, in a scrambled order, with newlines among them.
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let f = dir.file("garbage.bin", &garbage);
    let out = report(&["--format", "json"], &[&f]);
    let s = summary(&out);
    assert_eq!(s["events"], 0);
    let err = stderr_lines(&out);
    assert!(!err.is_empty());
    let prefix = format!("sockwatch: {}:", f.display());
    for line in &err[..err.len() - 1] {
        assert!(
            line.starts_with(&prefix) && line.contains(": skipped: "),
            "{line}"
        );
    }
    // More bad lines than are shown: the count closes the list.
    if err.len() > 10 {
        assert!(err[10].ends_with("lines skipped in all"), "{}", err[10]);
    }

    let out = report(&["--strict"], &[&f]);
    assert_strict_error(&out, &f, 1, "");

    // Not UTF-8 at all.
    let latin1 = dir.file("latin1.jsonl", b"{\"comm\":\"caf\xe9\"}\n");
    let out = report(&[], &[&latin1]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: {}:1: skipped: not UTF-8 text",
            latin1.display()
        )]
    );
}

#[test]
fn hand_edited_line_with_a_wrong_type_is_named() {
    let dir = TempDir::new("edited");
    let edited = ACCEPT.replace(r#""peer_port":43060"#, r#""peer_port":"43060""#);
    assert_ne!(edited, ACCEPT);
    let f = dir.file("edited.jsonl", lines(&[LISTEN, ACCEPT, &edited, LOST]));
    let out = report(&["--format", "json"], &[&f]);
    let s = summary(&out);
    assert_eq!(accepted_on_8080(&s), 1, "the good lines still count");
    assert_eq!(s["lost"]["total"], 3);
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: {}:3: skipped: not a JSON record: invalid type: string \"43060\", \
             expected u16 at line 1 column {}",
            f.display(),
            edited.find("43060\"").unwrap() + 6
        )]
    );

    let out = report(&["--strict", "--format", "json"], &[&f]);
    assert_strict_error(&out, &f, 3, "invalid type: string \"43060\", expected u16");

    // Other edits: an unknown record type, a record lacking a field, a bad time.
    let more = dir.file(
        "more.jsonl",
        lines(&[
            r#"{"time":"2026-11-21T09:45:28Z","event":"teleport"}"#,
            r#"{"time":"2026-11-21T09:45:28Z","event":"accept","netns":1}"#,
            r#"{"time":"yesterday","event":"accept"}"#,
            ACCEPT,
        ]),
    );
    let out = report(&["--format", "json"], &[&more]);
    let s = summary(&out);
    assert_eq!(accepted_on_8080(&s), 1);
    let m = more.display();
    assert_eq!(
        stderr_lines(&out),
        vec![
            format!("sockwatch: {m}:1: skipped: unknown record type \"teleport\""),
            format!("sockwatch: {m}:2: skipped: record accept lacks local_addr"),
            format!("sockwatch: {m}:3: skipped: bad time \"yesterday\" (expected RFC 3339)"),
        ]
    );
}

#[test]
fn line_numbers_are_per_file() {
    let dir = TempDir::new("files");
    let a = dir.file("a.jsonl", lines(&[LISTEN, ACCEPT]));
    let b = dir.file("b.jsonl", lines(&[ACCEPT, "{oops", ACCEPT]));
    let out = report(&["--format", "json"], &[&a, &b]);
    let s = summary(&out);
    assert_eq!(accepted_on_8080(&s), 3);
    let err = stderr_lines(&out);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].starts_with(&format!("sockwatch: {}:2: skipped: ", b.display())),
        "{}",
        err[0]
    );
    // --strict stops at the first bad line, in the second file.
    let out = report(&["--strict"], &[&a, &b]);
    assert_strict_error(&out, &b, 2, "not a JSON record");
}

#[test]
fn overlong_line_is_skipped_unread() {
    let dir = TempDir::new("long");
    let long = format!("{{\"comm\":\"{}\"}}", "x".repeat(2 << 20));
    let f = dir.file("long.jsonl", lines(&[LISTEN, &long, ACCEPT]));
    let out = report(&["--format", "json"], &[&f]);
    let s = summary(&out);
    assert_eq!(accepted_on_8080(&s), 1);
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: {}:2: skipped: line longer than 1048576 bytes",
            f.display()
        )]
    );
    let out = report(&["--strict"], &[&f]);
    assert_strict_error(&out, &f, 2, "line longer than 1048576 bytes");
}

#[test]
fn unreadable_files_are_named() {
    let dir = TempDir::new("missing");
    let missing = dir.0.join("nope.jsonl");
    let out = report(&[], &[&missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: error: cannot open {}: No such file or directory (os error 2)",
            missing.display()
        )]
    );

    // A directory is read for the recordings in it: here there are none.
    let out = report(&[], &[&dir.0]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: error: {} holds no sockwatch JSON Lines file",
            dir.0.display()
        )]
    );
}

const HEADER: &str = r#"{"time":"2026-11-21T09:45:27.000000000Z","event":"header","schema":1,"sockwatch":"0.1.0","started":"2026-11-21T09:45:27.000000000Z","part":1}"#;

#[test]
fn the_header_is_checked_and_a_newer_schema_refused() {
    let dir = TempDir::new("schema");
    let f = dir.file("run.jsonl", lines(&[HEADER, LISTEN, ACCEPT, LOST]));
    let out = report(&["--format", "json", "--strict"], &[&f]);
    let s = summary(&out);
    assert_eq!((s["events"].as_u64(), accepted_on_8080(&s)), (Some(2), 1));

    let newer = HEADER.replace(r#""schema":1"#, r#""schema":2"#);
    let f = dir.file("newer.jsonl", lines(&[&newer, LISTEN, ACCEPT, LOST]));
    // Refused even without --strict: none of its lines can be trusted.
    let out = report(&[], &[&f]);
    assert_strict_error(
        &out,
        &f,
        1,
        "the file follows schema 2, newer than this sockwatch reads (1)",
    );
}

#[test]
fn csv_and_text_recordings_are_refused_with_the_reason() {
    let dir = TempDir::new("formats");
    let csv = dir.file("run.csv", "time,event,family,local_addr\n");
    let out = report(&[], &[&csv]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "sockwatch: error: {} is CSV (from `trace --format csv`): report reads JSON Lines \
             only (record with `--format jsonl`)",
            csv.display()
        )]
    );
    let text = dir.file("run.txt", "TIME(UTC)        EVENT          PID\n");
    let out = report(&[], &[&text]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_lines(&out)[0].contains("is text (from `trace` without --format)"),
        "{:?}",
        stderr_lines(&out)
    );
}

#[test]
fn compressed_files_are_read_and_a_cut_one_keeps_its_first_lines() {
    use std::io::Write as _;
    let dir = TempDir::new("compressed");
    // Varied lines (peer ports), so the compressed data has many blocks.
    let accepts: Vec<String> = (0..2000)
        .map(|i| ACCEPT.replace("43060", &(10000 + i * 7).to_string()))
        .collect();
    let mut many = vec![HEADER, LISTEN];
    many.extend(accepts.iter().map(String::as_str));
    let text = lines(&many);
    let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    for (name, bytes) in [("a.jsonl.zst", &zst), ("b.jsonl", &gz)] {
        let f = dir.file(name, bytes);
        let s = summary(&report(&["--format", "json", "--strict"], &[&f]));
        assert_eq!(accepted_on_8080(&s), 2000, "{name}");
        // Cut short, as by a crash in the middle of writing it.
        let cut = dir.file(&format!("cut-{name}"), &bytes[..bytes.len() / 2]);
        let out = report(&["--format", "json"], &[&cut]);
        let s = summary(&out);
        let accepted = accepted_on_8080(&s);
        assert!(accepted > 100 && accepted < 2000, "{name}: {accepted}");
        let err = stderr_lines(&out);
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with(&format!("sockwatch: {}:", cut.display()))
                && err[0].contains("compressed data damaged or cut short"),
            "{err:?}"
        );
        let out = report(&["--strict"], &[&cut]);
        assert_eq!(out.status.code(), Some(1));
    }
}

/// A header as a run on a kernel without the listen-overflow drop reason writes it: one
/// capability missing, one fallback that loses nothing (kernel_programs).
const HEADER_WITH_CAPABILITIES: &str = r#"{"time":"2026-11-21T09:45:27.000000000Z","event":"header","schema":1,"sockwatch":"0.1.0","started":"2026-11-21T09:45:27.000000000Z","part":1,"capabilities":{"accept_failures":{"available":true,"via":"syscall entry and exit tracepoints"},"kernel_programs":{"available":true,"via":"hash maps by thread, syscall entry hooks","note":"this kernel lacks BPF task storage (5.11): the programs for older kernels run instead (nothing is lost; they cost a little more)"},"listen_overflow_events":{"available":false,"via":"per-namespace TcpExt ListenOverflows only","note":"no TCP_LISTEN_OVERFLOW drop reason (kernels after 6.12 have it): overflows are counted per network namespace, not per listener"},"state_changes":{"available":true,"via":"sock:inet_sock_set_state (raw tracepoint)"}}}"#;

const NOT_SEEN: &str = "not seen in this recording: listen_overflow_events (no TCP_LISTEN_OVERFLOW \
     drop reason (kernels after 6.12 have it): overflows are counted per network namespace, not \
     per listener)";

#[test]
fn the_recorded_capabilities_are_in_the_summary_and_what_was_not_seen_is_named() {
    let dir = TempDir::new("capabilities");
    let f = dir.file(
        "run.jsonl",
        lines(&[HEADER_WITH_CAPABILITIES, LISTEN, ACCEPT, LOST]),
    );
    let s = summary(&report(&["--format", "json", "--strict"], &[&f]));
    assert_eq!((s["events"].as_u64(), accepted_on_8080(&s)), (Some(2), 1));
    let header: Value = serde_json::from_str(HEADER_WITH_CAPABILITIES).unwrap();
    assert_eq!(s["capabilities"], header["capabilities"]);
    assert_eq!(
        s["capabilities"]["listen_overflow_events"]["available"],
        false
    );

    let out = report(&[], &[&f]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{:?}", stderr_lines(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let named: Vec<&str> = text.lines().filter(|l| l.starts_with("not seen")).collect();
    assert_eq!(named, vec![NOT_SEEN], "{text}");
    // Last, after a blank line; the tables above it as without capabilities.
    assert!(text.ends_with(&format!("\n\n{NOT_SEEN}\n")), "{text}");
    let plain = dir.file("plain.jsonl", lines(&[HEADER, LISTEN, ACCEPT, LOST]));
    let out = report(&[], &[&plain]);
    let plain_text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("{plain_text}\n{NOT_SEEN}\n"));

    // A recording from before capabilities: no key, no line.
    let s = summary(&report(&["--format", "json"], &[&plain]));
    assert!(s.get("capabilities").is_none(), "{s}");
    assert!(!plain_text.contains("not seen"), "{plain_text}");

    // Everything available: the key, and no line.
    let all = HEADER_WITH_CAPABILITIES.replace(
        r#""listen_overflow_events":{"available":false"#,
        r#""listen_overflow_events":{"available":true"#,
    );
    let full = dir.file("full.jsonl", lines(&[&all, LISTEN, ACCEPT, LOST]));
    let s = summary(&report(&["--format", "json"], &[&full]));
    assert_eq!(
        s["capabilities"]["listen_overflow_events"]["available"],
        true
    );
    let out = report(&[], &[&full]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), plain_text);

    // Two runs, one of which lacked it: missing in the report over both.
    let s = summary(&report(&["--format", "json"], &[&full, &f]));
    assert_eq!(s["capabilities"], header["capabilities"]);
    assert_eq!(accepted_on_8080(&s), 2);
}
