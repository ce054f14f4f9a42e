use super::*;
use crate::{
    aggregate::Conn,
    kernel::decode::{Comm, Direction, Family, TcpState},
    kernel::loss::{Loss, Quiet},
    record::sink::{JsonlSink, Sink},
};

fn event(kind: EventKind, ts: u64, client_port: u16, direction: Direction) -> Event {
    let mut comm = [0u8; 16];
    comm[..3].copy_from_slice(b"srv");
    let (local, peer) = match direction {
        Direction::Passive => ((8080, "10.0.0.1"), (client_port, "10.0.0.2")),
        Direction::Active => ((client_port, "10.0.0.2"), (8080, "10.0.0.1")),
    };
    Event {
        ts_ns: ts,
        kind,
        family: Family::Ipv4,
        local_addr: local.1.parse().unwrap(),
        local_port: local.0,
        peer_addr: peer.1.parse().unwrap(),
        peer_port: peer.0,
        pid: Some(77),
        comm: Some(Comm::from_kernel(&comm)),
        cgroup_id: Some(1),
        netns: 5,
        direction: Some(direction),
        duration_ns: kind.ends_life().then_some(ts / 2),
        from_state: TcpState::new(1).unwrap(),
        tracked: true,
        handshake_ns: None,
        queue_wait_ns: None,
        stats: None,
        errno: kind
            .is_failure()
            .then_some(if kind == EventKind::AcceptFailed {
                24
            } else {
                111
            }),
    }
}

/// What the live pipeline does with each record, and what `report` reads back, agree.
#[test]
fn live_and_exported_summaries_agree() {
    let clock = WallClock::with_offset(1_700_000_000_000_000_000);
    let filter = Filter::default();
    let mut live = Aggregator::new();
    let mut out = Vec::new();
    {
        let mut sink = JsonlSink::new(&mut out, clock);
        let samples = [
            Sample::Existing(Existing {
                time_ns: 1_700_000_000_000_000_000,
                netns: 5,
                family: Family::Ipv4,
                listening: true,
                local_addr: "10.0.0.1".parse().unwrap(),
                local_port: 8080,
                peer_addr: "0.0.0.0".parse().unwrap(),
                peer_port: 0,
                pid: Some(77),
                comm: Some("srv"),
            }),
            Sample::Queue(QueueSample {
                time_ns: 1_700_000_000_500_000_000,
                netns: 5,
                local_port: 8080,
                depth: 3,
                backlog: 128,
            }),
            Sample::Netstat(NetstatSample {
                time_ns: 1_700_000_000_600_000_000,
                netns: 5,
                listen_overflows: 4,
                listen_drops: 4,
            }),
            Sample::Fds(FdSample {
                time_ns: 1_700_000_000_700_000_000,
                pid: 77,
                comm: Some("srv"),
                open: 900,
                limit: 1024,
            }),
        ];
        for s in &samples {
            sink.sample(s).unwrap();
            assert!(sample(&mut live, &filter, s));
        }
        let mut ts = 1_000;
        for port in 40000..40020u16 {
            for (kind, dir) in [
                (EventKind::Connect, Direction::Active),
                (EventKind::Established, Direction::Active),
                (EventKind::Established, Direction::Passive),
                (EventKind::Accept, Direction::Passive),
                (EventKind::AcceptFailed, Direction::Passive),
                (EventKind::ConnectFailed, Direction::Active),
                (EventKind::Close, Direction::Passive),
                (EventKind::Close, Direction::Active),
            ] {
                ts += 123_456_789;
                let ev = event(kind, ts, port, dir);
                sink.event(&ev).unwrap();
                assert!(live_event(&mut live, &filter, &ev, &clock));
            }
        }
        // A connection whose close was missed, expired by the live run.
        let ev = event(EventKind::Established, ts + 1, 41000, Direction::Passive);
        sink.event(&ev).unwrap();
        assert!(live_event(&mut live, &filter, &ev, &clock));
        let expired = Sample::Expired(Expired {
            time_ns: 1_700_000_100_000_000_000,
            conn: Conn {
                netns: 5,
                local_addr: ev.local_addr,
                local_port: ev.local_port,
                peer_addr: ev.peer_addr,
                peer_port: ev.peer_port,
            },
        });
        sink.sample(&expired).unwrap();
        assert!(sample(&mut live, &filter, &expired));
        let quiet = Quiet {
            accept_would_block: 2,
            accept_interrupted: 0,
            recursion_recovered: 3,
        };
        let loss = Loss {
            ringbuf_full: 1,
            expired: live.expired(),
            ..Default::default()
        };
        sink.stats(&quiet, 0).unwrap();
        sink.lost(&loss, 0).unwrap();
        live.set_stats(quiet);
        live.set_loss(loss);
    }
    let mut report = Aggregator::new();
    for line in String::from_utf8(out).unwrap().lines() {
        exported_line(&mut report, &filter, line).unwrap();
    }
    let (a, b) = (live.summary(), report.summary());
    assert_eq!(a, b);
    assert_eq!(a.listeners[0].accepted, 20);
    assert_eq!(a.listeners[0].accept_failures.get("EMFILE"), Some(&20));
    assert_eq!(a.outbound[0].failed.get("refused"), Some(&20));
    assert_eq!(a.lost.unwrap().by_cause.ringbuf_full, 1);
    assert_eq!(a.lost.unwrap().by_cause.expired, 1);
    assert_eq!((live.expired(), report.expired()), (1, 1));
    assert_eq!(a.listeners[0].established_now, 0);
}

#[test]
fn bad_lines_say_why() {
    let mut a = Aggregator::new();
    let f = Filter::default();
    assert!(matches!(
        exported_line(&mut a, &f, "{"),
        Err(LineError::Json(_))
    ));
    assert!(matches!(
        exported_line(&mut a, &f, "\u{0}\u{1}binary"),
        Err(LineError::Json(_))
    ));
    assert_eq!(
        exported_line(&mut a, &f, r#"{"time":"yesterday","event":"close"}"#),
        Err(LineError::Time("yesterday".into()))
    );
    assert_eq!(
        exported_line(
            &mut a,
            &f,
            r#"{"time":"2026-01-01T00:00:00Z","event":"nope"}"#
        ),
        Err(LineError::Kind("nope".into()))
    );
    assert_eq!(
        exported_line(
            &mut a,
            &f,
            r#"{"time":"2026-01-01T00:00:00Z","event":"close","netns":1}"#
        ),
        Err(LineError::Missing {
            kind: "close".into(),
            field: "local_addr"
        })
    );
}

#[test]
fn extreme_hand_edited_numbers_neither_panic_nor_wrap() {
    let mut a = Aggregator::new();
    let f = Filter::default();
    let m = u64::MAX;
    for line in [
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"lost","ringbuf_full":{m},"recursion_misses":1,"sock_map_full":0,"sock_map_evicted":0,"connect_lost":0,"read_failed":0,"decode_errors":0}}"#
        ),
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"netstat","netns":1,"listen_overflows":{m},"listen_drops":0}}"#
        ),
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"netstat","netns":1,"listen_overflows":1,"listen_drops":{m}}}"#
        ),
        format!(
            r#"{{"time":"1700-01-01T00:00:00Z","event":"fds","pid":1,"open":{m},"limit":{m}}}"#
        ),
        r#"{"time":"2250-01-01T00:00:00Z","event":"fds","pid":2,"open":1,"limit":2}"#.to_string(),
    ] {
        // 1700 and 2250 are beyond i64 nanoseconds: rejected, not wrapped.
        let _ = exported_line(&mut a, &f, &line);
    }
    let s = a.summary();
    assert_eq!(s.lost.unwrap().total, m);
    assert!(s.seconds >= 0.0);
    assert!(s.processes.iter().all(|p| p.pid != 2 || !p.fd_warning));
}

#[test]
fn header_records_are_checked_not_counted() {
    let mut out = Vec::new();
    crate::record::sink::header::write_jsonl(&mut out, 2_000_000_000, 1_000_000_000, 2, None)
        .unwrap();
    let written = String::from_utf8(out).unwrap();
    let mut a = Aggregator::new();
    let f = Filter::default();
    assert_eq!(
        exported_line(&mut a, &f, written.trim_end()),
        Ok(Fed::Header)
    );
    assert_eq!(a.summary(), Aggregator::new().summary());
    assert_eq!(
        file_start(written.trim_end()),
        Some(FileStart {
            time_ns: 2_000_000_000,
            part: Some(2)
        })
    );
    let newer = r#"{"time":"2026-01-01T00:00:00Z","event":"header","schema":2,"future":true}"#;
    let e = exported_line(&mut a, &f, newer).unwrap_err();
    assert_eq!(e, LineError::NewerSchema(2));
    assert!(e.is_fatal());
    assert!(
        e.to_string()
            .starts_with("the file follows schema 2, newer than this sockwatch reads (1)"),
        "{e}"
    );
    assert_eq!(
        exported_line(
            &mut a,
            &f,
            r#"{"time":"2026-01-01T00:00:00Z","event":"header"}"#
        ),
        Err(LineError::Missing {
            kind: "header".into(),
            field: "schema"
        })
    );
    // A file without a header (from before schemas) starts at its first record.
    let accept = r#"{"time":"1970-01-01T00:00:01Z","event":"accept","part":9}"#;
    assert_eq!(
        file_start(accept),
        Some(FileStart {
            time_ns: 1_000_000_000,
            part: None
        })
    );
    assert_eq!(file_start("12345"), None);
    assert_eq!(file_start("time,event,family"), None);
}

#[test]
fn state_lines_are_read_but_not_summarised() {
    let mut a = Aggregator::new();
    let line = r#"{"time":"2026-01-01T00:00:00Z","event":"state","netns":1,"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000,"from_state":"ESTABLISHED","to_state":"FIN_WAIT1"}"#;
    assert_eq!(
        exported_line(&mut a, &Filter::default(), line),
        Ok(Fed::State)
    );
    assert_eq!(a.summary().events, 0);
}

#[test]
fn netns_kind_and_cgroup_filters_apply_to_exported_lines() {
    let line = |event: &str, netns: u32, cgroup: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"{event}","netns":{netns},"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000,"pid":3,"comm":"srv","cgroup_id":{cgroup}}}"#
        )
    };
    let f = Filter {
        netns: Some(1),
        kinds: Some(1 << sockwatch_common::kind::ACCEPT),
        cgroup: Some(crate::filter::Cgroup {
            path: "/sys/fs/cgroup/unified/a".into(),
            id: 7,
            level: 1,
            ids: [7, 8].into(),
        }),
        ..Default::default()
    };
    let mut a = Aggregator::new();
    assert_eq!(
        exported_line(&mut a, &f, &line("accept", 1, "8")),
        Ok(Fed::Event)
    );
    for other in [
        line("accept", 2, "8"),
        line("close", 1, "8"),
        line("accept", 1, "9"),
        line("accept", 1, "null"),
    ] {
        assert_eq!(
            exported_line(&mut a, &f, &other),
            Ok(Fed::Filtered),
            "{other}"
        );
    }
    assert_eq!(a.summary().listeners[0].accepted, 1);
}

#[test]
fn filters_apply_to_exported_lines() {
    let mut a = Aggregator::new();
    let f = Filter {
        ports: vec![9999],
        ..Default::default()
    };
    let line = r#"{"time":"2026-01-01T00:00:00Z","event":"accept","netns":1,"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000}"#;
    assert_eq!(exported_line(&mut a, &f, line), Ok(Fed::Filtered));
    assert!(a.summary().listeners.is_empty());
}

#[test]
fn established_again_on_open_addresses_expires_the_connection_that_had_them() {
    let clock = WallClock::new();
    let keep = Filter::default();
    let mut agg = Aggregator::new();
    let first = event(EventKind::Established, 10, 40000, Direction::Passive);
    assert_eq!(reopened(&agg, &first, 10, 5), None, "nothing open yet");
    live_event(&mut agg, &keep, &first, &clock);
    // Same addresses again, its close never seen: the first connection ended unseen.
    let again = event(EventKind::Established, 20, 40000, Direction::Passive);
    let gone = reopened(&agg, &again, 20, 5).expect("the first one is expired");
    assert_eq!(
        (gone.time_ns, gone.conn.local_port, gone.conn.peer_port),
        (20, 8080, 40000)
    );
    assert_eq!(gone.conn.netns, 5);
    // Other addresses, or another kind of event, are not a reuse.
    let other = event(EventKind::Established, 20, 40001, Direction::Passive);
    assert_eq!(reopened(&agg, &other, 20, 5), None);
    let close = event(EventKind::Close, 20, 40000, Direction::Passive);
    assert_eq!(reopened(&agg, &close, 20, 5), None);
    // Up to the end of the start-up snapshot an open entry may be the same connection.
    assert_eq!(reopened(&agg, &again, 20, 20), None);

    // Fed like the pipeline does: expired first, then the event: one open, one expired.
    sample(&mut agg, &keep, &Sample::Expired(gone));
    live_event(&mut agg, &keep, &again, &clock);
    let s = agg.summary();
    assert_eq!(agg.expired(), 1);
    assert_eq!(s.listeners[0].established_now, 1);
}

/// A header line as a run on a kernel with these probes writes it.
fn header_line(probes: crate::kernel::probes::Probes, part: u64) -> String {
    let caps = probes.capabilities("test".into()).to_json().to_string();
    let mut out = Vec::new();
    crate::record::sink::header::write_jsonl(
        &mut out,
        2_000_000_000,
        1_000_000_000,
        part,
        Some(&caps),
    )
    .unwrap();
    String::from_utf8(out).unwrap().trim_end().to_string()
}

fn all_probes() -> crate::kernel::probes::Probes {
    crate::kernel::probes::Probes::everything()
}

#[test]
fn header_capabilities_are_read_and_merged_across_files() {
    use crate::kernel::{capabilities::name, probes::Probes};
    let f = Filter::default();
    let full = header_line(all_probes(), 1);
    let older = header_line(
        Probes {
            overflow_reason: false,
            task_storage: false,
            ..all_probes()
        },
        1,
    );
    let no_syscalls = header_line(
        Probes {
            syscall_tracepoints: false,
            fentry: Err("refused"),
            kprobe: Err("refused"),
            ..all_probes()
        },
        1,
    );

    // One file: its header's, as written.
    let mut a = Aggregator::new();
    assert_eq!(exported_line(&mut a, &f, &full), Ok(Fed::Header));
    let written = all_probes().capabilities("test".into()).to_json();
    assert_eq!(a.capabilities(), written.as_object());
    // Its next rotation part: the same.
    exported_line(&mut a, &f, &full).unwrap();
    assert_eq!(a.capabilities(), written.as_object());

    // A run on an older kernel too: what it lacked counts as missing, with its note.
    exported_line(&mut a, &f, &older).unwrap();
    let caps = a.capabilities().unwrap();
    let overflow = &caps[name::OVERFLOW_EVENTS];
    assert_eq!(overflow["available"], false);
    assert!(
        overflow["note"]
            .as_str()
            .unwrap()
            .starts_with("no TCP_LISTEN_OVERFLOW drop reason"),
        "{overflow}"
    );
    // A fallback that loses nothing stays available.
    assert_eq!(caps[name::PROGRAMS]["available"], true);
    assert_eq!(caps[name::ACCEPT_FAILURES]["available"], true);

    // And one without syscall tracepoints, in any order: the same result.
    exported_line(&mut a, &f, &no_syscalls).unwrap();
    let mut b = Aggregator::new();
    for line in [&no_syscalls, &older, &full] {
        exported_line(&mut b, &f, line).unwrap();
    }
    for agg in [&a, &b] {
        let missing: Vec<&str> =
            crate::aggregate::capabilities::missing(agg.capabilities().unwrap())
                .map(|(n, _)| n)
                .collect();
        assert_eq!(
            missing,
            vec![
                name::ACCEPT_FAILURES,
                name::ACCEPT_OWNER,
                name::CONNECT_ERRORS,
                name::HOOKS,
                name::OVERFLOW_EVENTS
            ]
        );
    }

    // A header without capabilities (an older recording) neither sets nor clears them.
    let mut c = Aggregator::new();
    let bare = r#"{"time":"2026-01-01T00:00:00Z","event":"header","schema":1,"part":1}"#;
    exported_line(&mut c, &f, bare).unwrap();
    assert!(c.capabilities().is_none());
    exported_line(&mut c, &f, &older).unwrap();
    exported_line(&mut c, &f, bare).unwrap();
    assert_eq!(
        c.capabilities().unwrap()[name::OVERFLOW_EVENTS]["available"],
        false
    );
}

#[test]
fn hand_edited_header_capabilities_are_named() {
    let f = Filter::default();
    let mut a = Aggregator::new();
    let line = |caps: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"header","schema":1,"capabilities":{caps}}}"#
        )
    };
    let e = exported_line(&mut a, &f, &line("[1]")).unwrap_err();
    assert_eq!(e, LineError::Capabilities("not an object".into()));
    assert!(!e.is_fatal());
    let e = exported_line(&mut a, &f, &line(r#"{"sock_diag":{"available":"yes"}}"#)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(r#"header capabilities: "sock_diag" lacks a boolean "available""#),
        "{e}"
    );
    assert!(a.capabilities().is_none());
    // A newer schema is refused first, whatever its capabilities.
    let newer = line("7").replace(r#""schema":1"#, r#""schema":2"#);
    assert_eq!(
        exported_line(&mut a, &f, &newer),
        Err(LineError::NewerSchema(2))
    );
}

/// Workloads named live come back from the recording's keys: the same summary rows.
#[test]
fn workloads_read_back_as_recorded() {
    use crate::host::workload::Workload;
    let clock = WallClock::with_offset(1_700_000_000_000_000_000);
    let filter = Filter::default();
    let pod = Workload {
        cgroup_id: 1,
        cgroup: Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope".into()),
        container_id: Some("ab".repeat(32)),
        pod_uid: Some("1".into()),
        pod_namespace: Some("shop".into()),
        pod: Some("web-0".into()),
        ..Workload::default()
    };
    let client = Workload {
        cgroup_id: 1,
        cgroup: Some("/system.slice/curl.service".into()),
        unit: Some("curl.service".into()),
        ..Workload::default()
    };
    let mut live = Aggregator::new();
    let mut out = Vec::new();
    {
        let mut sink = JsonlSink::new(&mut out, clock);
        let mut listen = event(EventKind::Listen, 10, 0, Direction::Passive);
        listen.direction = None;
        let records = [
            (listen, Some(&pod)),
            (
                event(EventKind::Connect, 20, 40000, Direction::Active),
                Some(&client),
            ),
            (
                event(EventKind::Accept, 30, 40000, Direction::Passive),
                Some(&pod),
            ),
            // Not resolved (no cgroup v2 in that run, say): names nothing.
            (
                event(EventKind::Connect, 40, 40001, Direction::Active),
                None,
            ),
        ];
        for (ev, w) in &records {
            sink.event_in(ev, *w).unwrap();
            assert!(live_event_in(&mut live, &filter, ev, *w, &clock));
        }
    }
    let mut read = Aggregator::new();
    for line in String::from_utf8(out.clone()).unwrap().lines() {
        assert_eq!(exported_line(&mut read, &filter, line), Ok(Fed::Event));
    }
    let s = live.summary();
    assert_eq!(read.summary(), s);
    // `report --pod shop/web-0`: on the recorded names; unnamed events fail it.
    let by_pod = Filter {
        workload: Some(crate::filter::WorkloadMatch::Pod {
            namespace: Some("shop".into()),
            name: "web-0".into(),
        }),
        ..Filter::default()
    };
    let mut only = Aggregator::new();
    let fed: Vec<Fed> = String::from_utf8(out.clone())
        .unwrap()
        .lines()
        .map(|l| exported_line(&mut only, &by_pod, l).unwrap())
        .collect();
    assert_eq!(fed, [Fed::Event, Fed::Filtered, Fed::Event, Fed::Filtered]);
    let l = &s.listeners[0];
    assert_eq!(l.owner.workload.as_deref(), Some("shop/web-0"));
    assert_eq!(l.owner.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(l.owner.container_id, pod.container_id);
    let p = &s.outbound[0].processes[0];
    assert_eq!(p.owner.workload.as_deref(), Some("curl.service"));
    assert_eq!(
        p.owner.cgroup.as_deref(),
        Some("/system.slice/curl.service")
    );
    // Older recordings, without the keys: nothing named, nothing else changed.
    let mut old = Aggregator::new();
    let line = r#"{"time":"2026-11-21T09:45:28.000000000Z","event":"listen","family":"ipv4","local_addr":"127.0.0.1","local_port":8080,"peer_addr":"0.0.0.0","peer_port":0,"pid":7700,"comm":"python3","cgroup_id":1,"netns":4026531833,"direction":null}"#;
    assert_eq!(exported_line(&mut old, &filter, line), Ok(Fed::Event));
    assert_eq!(old.summary().listeners[0].owner, Default::default());
}
