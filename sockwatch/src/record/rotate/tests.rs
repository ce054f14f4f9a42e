use std::{fs, path::Path};

use serde_json::Value;

use super::*;
use crate::test_dir::TestDir;
use crate::{
    cli::{FilterArgs, ReportArgs, SummaryFormat},
    commands::report,
    kernel::decode::{Comm, Direction, Event, EventKind, Family, TcpState},
    kernel::loss::{Loss, Quiet},
    record::sink::{Format, JsonlSink, Sink},
};

fn dir(tag: &str) -> TestDir {
    TestDir::new("rotate", tag)
}

const HEADER: FileHeader = FileHeader {
    capabilities: None,
    format: Format::Jsonl,
    started_unix_ns: 1_795_256_100_000_000_000,
};

fn rotation(max_bytes: Option<u64>, every: Option<Duration>, keep: usize) -> Rotation {
    Rotation {
        max_bytes,
        every,
        keep,
        compress: None,
    }
}

fn record(i: usize) -> String {
    // About 100 bytes, a different length now and then.
    format!(
        "{{\"time\":\"2026-11-21T10:15:00Z\",\"event\":\"accept\",\"n\":{i},\"pad\":\"{}\"}}\n",
        "x".repeat(40 + i % 7)
    )
}

/// The files of a run, oldest first (rotated by their names' age, the live file last), with
/// their lines.
fn run_files(d: &TestDir, live: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let naming = Naming::new(live);
    let mut paths: Vec<PathBuf> = naming
        .rotated()
        .unwrap()
        .into_iter()
        .flat_map(|(_, p)| p)
        .collect();
    paths.push(live.to_path_buf());
    assert_eq!(paths.len(), d.files().len(), "{:?}", d.files());
    paths
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            assert!(text.ends_with('\n'), "{} ends mid-line", p.display());
            let lines = text.lines().map(str::to_string).collect();
            (p, lines)
        })
        .collect()
}

#[test]
fn size_rotation_cuts_between_records_and_each_file_has_its_header() {
    let d = dir("size");
    let live = d.0.join("conns.jsonl");
    let (mut out, worker) =
        open(&live, false, HEADER, Some(rotation(Some(4096), None, 100))).unwrap();
    let mut written = Vec::new();
    for i in 0..300 {
        let r = record(i);
        if i == 150 {
            // One record in pieces, across the size limit: never split.
            let (a, b) = r.split_at(10);
            out.write_all(a.as_bytes()).unwrap();
            out.write_all(b.as_bytes()).unwrap();
        } else {
            out.write_all(r.as_bytes()).unwrap();
        }
        written.push(r.trim_end().to_string());
    }
    out.flush().unwrap();
    drop(out);
    worker.unwrap().finish(Duration::from_secs(10));

    let files = run_files(&d, &live);
    assert!(files.len() >= 6, "{} files", files.len());
    let mut read = Vec::new();
    for (i, (path, lines)) in files.iter().enumerate() {
        let head: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(head["event"], "header", "{}", path.display());
        assert_eq!(head["part"], i as u64 + 1, "{}", path.display());
        assert_eq!(head["started"], "2026-11-21T10:15:00.000000000Z");
        assert!(lines[1..].iter().all(|l| !l.contains("header")));
        let size = fs::metadata(path).unwrap().len();
        if i + 1 < files.len() {
            // Rotated at the first record boundary at or past the limit.
            let last = lines.last().unwrap().len() as u64 + 1;
            assert!(
                size >= 4096 && size - last < 4096,
                "{}: {size}",
                path.display()
            );
            assert_eq!(
                fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        read.extend(lines[1..].iter().cloned());
    }
    assert_eq!(read, written, "every record once, in order, none torn");
    // All in the same second or two: the counters tell them apart.
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("Z.1.jsonl")),
        "{:?}",
        d.files()
    );
}

#[test]
fn the_last_record_past_the_limit_stays_in_the_live_file() {
    let d = dir("last");
    let live = d.0.join("conns.jsonl");
    let (mut out, worker) =
        open(&live, false, HEADER, Some(rotation(Some(4096), None, 100))).unwrap();
    // As at exit: the record that crosses the limit is the last one written.
    let mut i = 0;
    while out.bytes < 4096 {
        out.write_all(record(i).as_bytes()).unwrap();
        i += 1;
    }
    out.flush().unwrap();
    out.flush().unwrap();
    drop(out);
    worker.unwrap().finish(Duration::from_secs(10));
    let files = run_files(&d, &live);
    assert_eq!(
        files.len(),
        1,
        "no new file of a header only: {:?}",
        d.files()
    );
    assert_eq!(files[0].1.len(), i + 1);
    assert!(files[0].1[i].contains(&format!("\"n\":{},", i - 1)));
}

use std::os::unix::fs::PermissionsExt as _;

#[test]
fn interval_rotation_needs_records_and_waits_for_a_line_end() {
    let d = dir("interval");
    let live = d.0.join("conns.jsonl");
    let every = Duration::from_secs(60);
    let (mut out, worker) =
        open(&live, false, HEADER, Some(rotation(None, Some(every), 100))).unwrap();
    out.write_all(record(1).as_bytes()).unwrap();
    out.flush().unwrap();
    assert_eq!(d.files().len(), 1, "not due yet");

    // Due, but in the middle of a record: not yet.
    out.write_all(b"{\"time\":").unwrap();
    out.opened -= every;
    out.flush().unwrap();
    out.flush().unwrap();
    assert_eq!(d.files().len(), 1, "a record is half written");
    out.write_all(b"\"2026-11-21T10:15:00Z\",\"event\":\"accept\"}\n")
        .unwrap();
    out.flush().unwrap();
    assert_eq!(
        d.files().len(),
        1,
        "not right after a record (it may be the last)"
    );
    out.flush().unwrap();
    assert_eq!(d.files().len(), 2, "rotated once the stream is quiet");

    // Due again, but the new file holds only its header: kept.
    out.opened -= every;
    out.flush().unwrap();
    assert_eq!(d.files().len(), 2, "no file of headers only");
    drop(out);
    worker.unwrap().finish(Duration::from_secs(10));
    let files = run_files(&d, &live);
    assert_eq!(files[0].1.len(), 3);
    assert!(files[0].1[2].ends_with("\"event\":\"accept\"}"));
    assert_eq!(files[1].1.len(), 1);
}

#[test]
fn a_busy_stream_rotates_on_time_before_its_next_record() {
    let d = dir("busy");
    let live = d.0.join("conns.jsonl");
    let every = Duration::from_secs(60);
    let (mut out, worker) =
        open(&live, false, HEADER, Some(rotation(None, Some(every), 100))).unwrap();
    out.write_all(record(1).as_bytes()).unwrap();
    out.opened -= every;
    // Never quiet: the flush finds the rotation due, the next record starts the new file.
    out.flush().unwrap();
    assert_eq!(d.files().len(), 1, "not right after a record");
    out.write_all(record(2).as_bytes()).unwrap();
    assert_eq!(d.files().len(), 2, "rotated before the next record");
    out.write_all(record(3).as_bytes()).unwrap();
    out.flush().unwrap();
    drop(out);
    worker.unwrap().finish(Duration::from_secs(10));
    let files = run_files(&d, &live);
    assert_eq!(files[0].1.len(), 2, "header and the first record");
    assert_eq!(
        files[1].1.len(),
        3,
        "header and the two records after the flush"
    );
}

#[test]
fn only_the_newest_n_rotated_files_are_kept() {
    let d = dir("keep");
    let live = d.0.join("conns.jsonl");
    // A rotated file of an earlier run counts too.
    fs::write(d.0.join("conns.20200101T000000Z.jsonl"), b"old\n").unwrap();
    let (mut out, worker) =
        open(&live, false, HEADER, Some(rotation(Some(4096), None, 3))).unwrap();
    for i in 0..400 {
        out.write_all(record(i).as_bytes()).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let done = worker.unwrap().finish(Duration::from_secs(10));
    assert!(done.deleted >= 6, "{done:?}");
    let files = run_files(&d, &live);
    assert_eq!(files.len(), 4, "3 rotated and the live file");
    // The newest three: the last records are all there, back to back.
    let tail: Vec<&String> = files.iter().flat_map(|(_, l)| &l[1..]).collect();
    assert!(tail.last().unwrap().contains("\"n\":399,"));
    assert!(!d.0.join("conns.20200101T000000Z.jsonl").exists());
}

#[test]
fn a_device_cannot_be_rotated() {
    let e = open(
        Path::new("/dev/null"),
        true,
        HEADER,
        Some(rotation(Some(4096), None, 1)),
    )
    .err()
    .unwrap();
    assert!(matches!(e, CreateError::NotRotatable { .. }), "{e}");
    // Without rotation it is fine.
    assert!(open(Path::new("/dev/null"), true, HEADER, None).is_ok());
}

#[test]
fn a_followed_link_rotates_its_target() {
    let d = dir("link");
    let target = d.0.join("real.jsonl");
    let link = d.0.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (mut out, worker) =
        open(&link, true, HEADER, Some(rotation(Some(4096), None, 10))).unwrap();
    for i in 0..60 {
        out.write_all(record(i).as_bytes()).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    worker.unwrap().finish(Duration::from_secs(10));
    assert!(link.symlink_metadata().unwrap().is_symlink());
    assert!(target.is_file());
    assert!(!Naming::new(&target).rotated().unwrap().is_empty());
}

fn event(kind: EventKind, ts: u64, port: u16) -> Event {
    let mut comm = [0u8; 16];
    comm[..3].copy_from_slice(b"srv");
    let passive = matches!(kind, EventKind::Accept | EventKind::Listen);
    Event {
        ts_ns: ts,
        kind,
        family: Family::Ipv4,
        local_addr: "10.0.0.1".parse().unwrap(),
        local_port: if passive { 8080 } else { port },
        peer_addr: "10.0.0.2".parse().unwrap(),
        peer_port: if passive { port } else { 8080 },
        pid: Some(77),
        comm: Some(Comm::from_kernel(&comm)),
        cgroup_id: Some(1),
        netns: 5,
        direction: Some(if passive {
            Direction::Passive
        } else {
            Direction::Active
        }),
        duration_ns: kind.ends_life().then_some(1_000),
        from_state: TcpState::new(1).unwrap(),
        tracked: true,
        handshake_ns: None,
        queue_wait_ns: None,
        stats: None,
        errno: None,
    }
}

/// Writes the same run through `sink` (any output).
fn write_run(sink: &mut dyn Sink) {
    let mut ts = 1_000;
    sink.event(&event(EventKind::Listen, ts, 0)).unwrap();
    for port in 30000..30400u16 {
        for kind in [EventKind::Connect, EventKind::Accept, EventKind::Close] {
            ts += 1_000_000;
            sink.event(&event(kind, ts, port)).unwrap();
        }
    }
    sink.stats(&Quiet::default(), 0).unwrap();
    sink.lost(
        &Loss {
            ringbuf_full: 2,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    sink.flush().unwrap();
}

fn report_of(files: Vec<PathBuf>) -> report::Read {
    report::read(&ReportArgs {
        files,
        format: SummaryFormat::Json,
        strict: true,
        filter: FilterArgs {
            ports: Vec::new(),
            pid: None,
            comm: None,
            cgroup: None,
            container: None,
            pod: None,
            unit: None,
            netns: None,
            events: Vec::new(),
            ipv4: false,
            ipv6: false,
        },
    })
    .unwrap()
}

#[test]
fn compressed_rotated_files_report_like_one_plain_file() {
    let clock = WallClock::with_offset(1_795_256_100_000_000_000);
    let plain_dir = dir("plain");
    let plain = plain_dir.0.join("conns.jsonl");
    {
        let (out, _) = open(&plain, false, HEADER, None).unwrap();
        write_run(&mut JsonlSink::new(out, clock));
    }
    let expected = report_of(vec![plain.clone()]);
    assert_eq!(expected.bad_lines, 0);
    assert_eq!(expected.summary.listeners[0].accepted, 400);

    for codec in [Compression::Zstd, Compression::Gzip] {
        let d = dir("compressed");
        let live = d.0.join("conns.jsonl");
        let r = Rotation {
            compress: Some(codec),
            ..rotation(Some(4096), None, 1000)
        };
        let (out, worker) = open(&live, false, HEADER, Some(r)).unwrap();
        write_run(&mut JsonlSink::new(out, clock));
        let done = worker.unwrap().finish(Duration::from_secs(30));
        assert!(done.problems.is_empty(), "{done:?}");
        let files = d.files();
        let compressed = files
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(codec.suffix()))
            .count();
        assert!(compressed >= 10, "{files:?}");
        assert_eq!(compressed + 1, files.len(), "only the live file is plain");
        // The whole directory, and the files named one by one in name order (not time order).
        let by_dir = report_of(vec![d.0.clone()]);
        assert_eq!(by_dir.bad_lines, 0);
        assert_eq!(by_dir.summary, expected.summary);
        assert_eq!(report_of(files).summary, expected.summary);
    }
}
