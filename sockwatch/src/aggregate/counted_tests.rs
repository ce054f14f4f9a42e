//! Counting in the kernel: the summary adds the in-kernel counters to what the events of
//! untracked sockets tell, and checks against the kernel's socket table correct open counts.
use sockwatch_common::{
    ErrorKey, LATENCY_BUCKETS, LIFETIME_BUCKETS, ListenerCounts, OutboundCounts,
    PortKey as KernelPort, ProcessCounts, ProcessKey, latency_bucket, lifetime_bucket, side,
};

use super::{
    tests::{NS, S, obs},
    *,
};
use crate::kernel::counts::KernelCounts;

fn port(side: u8, port: u16) -> KernelPort {
    KernelPort {
        netns: NS,
        port,
        side,
        shard: 0,
    }
}

fn listener(accepted: u64, open: i64, lifetimes_ns: &[u64]) -> Box<ListenerCounts> {
    let mut l = Box::new(ListenerCounts {
        accepted,
        established: accepted,
        closed: lifetimes_ns.len() as u64,
        open,
        overflows: 0,
        peers: 2,
        lifetimes: [0; LIFETIME_BUCKETS],
        bytes_in: 1_000,
        bytes_out: 20_000,
        retrans: 2,
        queue_wait_sum_ns: 0,
        queue_waits: [0; LATENCY_BUCKETS],
    });
    for &ns in lifetimes_ns {
        l.lifetimes[lifetime_bucket(ns)] += 1;
    }
    // Every accepted connection waited 300 ms.
    for _ in 0..accepted {
        l.queue_waits[latency_bucket(300_000_000)] += 1;
        l.queue_wait_sum_ns += 300_000_000;
    }
    l
}

/// Outbound counts of `established` connections, handshakes of 1 ms but the last (1.5 s).
fn outbound(connects: u64, established: u64, open: i64) -> OutboundCounts {
    let mut o = OutboundCounts {
        connects,
        established,
        open,
        peers: 1,
        bytes_in: 500,
        bytes_out: 50,
        retrans: 1,
        handshake_sum_ns: 0,
        handshakes: [0; LATENCY_BUCKETS],
    };
    for i in 0..established {
        let ns = if i + 1 == established {
            1_500_000_000
        } else {
            1_000_000
        };
        o.handshakes[latency_bucket(ns)] += 1;
        o.handshake_sum_ns += ns;
    }
    o
}

/// Port 80 listens; the kernel counted 5 accepted (2 still open, 3 closed after 1, 2 and 3 ms),
/// one EMFILE; 4 connects from pid 7 to port 5432 (1 open), one refused.
fn counts() -> KernelCounts {
    KernelCounts {
        listeners: vec![(
            port(side::LISTENER, 80),
            listener(5, 2, &[1_000_000, 2_000_000, 3_000_000]),
        )],
        outbound: vec![(port(side::OUTBOUND, 5432), outbound(4, 3, 1))],
        errors: vec![
            (
                ErrorKey {
                    port: port(side::LISTENER, 80),
                    errno: 24,
                    _pad: 0,
                },
                1,
            ),
            (
                ErrorKey {
                    port: port(side::OUTBOUND, 5432),
                    errno: 111,
                    _pad: 0,
                },
                1,
            ),
        ],
        processes: vec![(
            ProcessKey {
                port: port(side::OUTBOUND, 5432),
                pid: 7,
                _pad: 0,
            },
            ProcessCounts {
                connects: 4,
                open: 1,
                comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
            },
        )],
    }
}

fn counting() -> Aggregator {
    let mut a = Aggregator::new();
    a.count_in_kernel();
    a.event(&Obs {
        pid: Some(9),
        comm: Some("nginx"),
        ..obs(EventKind::Listen, 0, ("10.0.0.1", 80), ("0.0.0.0", 0))
    });
    a
}

#[test]
fn the_summary_is_the_kernels_counts() {
    let mut a = counting();
    // Tracked events also in the ring (a recording run): the kernel has them already.
    for (kind, t) in [
        (EventKind::Accept, 1),
        (EventKind::Established, 2),
        (EventKind::Close, 3),
    ] {
        a.event(&Obs {
            tracked: true,
            direction: Some(Direction::Passive),
            ..obs(kind, t * S, ("10.0.0.1", 80), ("10.0.0.2", 40000))
        });
    }
    a.event(&obs(
        EventKind::Accept,
        4 * S,
        ("10.0.0.1", 80),
        ("10.0.0.2", 40001),
    ));
    a.apply_counts(&counts(), 5 * S);
    let s = a.summary();
    let l = &s.listeners[0];
    assert_eq!(
        (l.port, l.pid, l.comm.as_deref()),
        (80, Some(9), Some("nginx"))
    );
    assert_eq!((l.accepted, l.established_now, l.closed), (5, 2, 3));
    assert_eq!(
        l.accept_failures,
        BTreeMap::from([("EMFILE".to_string(), 1)])
    );
    assert_eq!(l.distinct_peers, 2);
    // The kernel's buckets: within 1/16 of the true median, 2 ms.
    let p50 = l.lifetime_p50_ns.unwrap() as f64;
    assert!((p50 - 2e6).abs() / 2e6 < 1.0 / 16.0, "{p50}");
    // Connection health, the kernel's: 300 ms waits, what the closed ones carried.
    let wait = l.queue_wait_p50_ns.unwrap() as f64;
    assert!(wait <= 3e8 && (3e8 - wait) / 3e8 < 1.0 / 16.0, "{wait}");
    assert_eq!(l.queue_wait_p99_ns, l.queue_wait_p50_ns);
    assert_eq!((l.bytes_in, l.bytes_out, l.retransmits), (1_000, 20_000, 2));
    assert_eq!(l.queue_waits.total(), 5);
    assert_eq!(l.queue_waits.sum(), 5 * 300_000_000);
    let o = &s.outbound[0];
    let hs = o.handshake_p50_ns.unwrap() as f64;
    assert!(hs <= 1e6 && (1e6 - hs) / 1e6 < 1.0 / 16.0, "{hs}");
    assert!(
        o.handshake_p99_ns.unwrap() >= 1_400_000_000,
        "{:?}",
        o.handshake_p99_ns
    );
    assert_eq!((o.bytes_in, o.bytes_out, o.retransmits), (500, 50, 1));
    assert_eq!(
        (o.peer_port, o.connects, o.established, o.open_now),
        (5432, 4, 3, 1)
    );
    assert_eq!(o.failed, BTreeMap::from([("refused".to_string(), 1)]));
    assert_eq!(o.distinct_peers, 1);
    let p = &o.processes[0];
    assert_eq!(
        (p.pid, p.comm.as_deref(), p.connects, p.open_now),
        (Some(7), Some("app"), 4, 1)
    );
    assert_eq!(
        s.open_corrections,
        Some(OpenCorrections {
            adopted: 0,
            released: 0
        })
    );
}

#[test]
fn untracked_sockets_are_counted_from_their_events() {
    let mut a = counting();
    // Open before the start: the snapshot has it; its close comes untracked.
    a.existing(&Existing {
        time_ns: 0,
        netns: NS,
        family: Family::Ipv4,
        listening: false,
        local_addr: "10.0.0.1".parse().unwrap(),
        local_port: 80,
        peer_addr: "10.0.0.3".parse().unwrap(),
        peer_port: 50000,
        pid: None,
        comm: None,
    });
    // Untracked: did not fit in the kernel's socket table.
    a.event(&obs(
        EventKind::Established,
        S,
        ("10.0.0.1", 80),
        ("10.0.0.4", 50001),
    ));
    a.apply_counts(&counts(), 2 * S);
    assert_eq!(a.summary().listeners[0].established_now, 2 + 2);
    a.event(&obs(
        EventKind::Close,
        3 * S,
        ("10.0.0.1", 80),
        ("10.0.0.3", 50000),
    ));
    assert_eq!(a.summary().listeners[0].established_now, 2 + 1);
}

#[test]
fn a_check_adopts_what_the_table_holds_and_releases_what_it_lacks() {
    let mut a = counting();
    a.apply_counts(&counts(), S);
    let held = a.held_open();
    let mut table = OpenByPort::default();
    // 5 open on the listener where 2 are counted; none left to port 5432 where 1 is.
    table.add(CountSide::Listener, NS, 80, 5);
    a.correct_open(&table, |_| true, &held, &held);
    let s = a.summary();
    assert_eq!(s.listeners[0].established_now, 5);
    assert_eq!(s.outbound[0].open_now, 0);
    assert_eq!(
        s.open_corrections,
        Some(OpenCorrections {
            adopted: 3,
            released: 1
        })
    );
    // The kernel counts one more: still on top of the correction.
    let mut more = counts();
    more.listeners[0].1.open = 3;
    a.apply_counts(&more, 2 * S);
    assert_eq!(a.summary().listeners[0].established_now, 6);
    // A later check finds the counts right again: no correction left.
    let held = a.held_open();
    table.add(CountSide::Listener, NS, 80, -2);
    table.add(CountSide::Outbound, NS, 5432, 1);
    a.correct_open(&table, |_| true, &held, &held);
    assert_eq!(a.corrections(), Some((0, 0)));
}

#[test]
fn a_port_that_moved_during_the_dump_or_was_not_read_is_left_alone() {
    let mut a = counting();
    a.apply_counts(&counts(), S);
    let before = a.held_open();
    let mut moved = counts();
    moved.listeners[0].1.open = 3;
    a.apply_counts(&moved, 2 * S);
    let after = a.held_open();
    let mut table = OpenByPort::default();
    table.add(CountSide::Listener, NS, 80, 9);
    table.add(CountSide::Outbound, NS, 5432, 4);
    a.correct_open(&table, |_| true, &before, &after);
    // Port 80 moved: uncorrected; port 5432 did not: corrected.
    assert_eq!(a.corrections(), Some((3, 0)));
    let mut b = counting();
    b.apply_counts(&counts(), S);
    let held = b.held_open();
    b.correct_open(&table, |_| false, &held, &held);
    assert_eq!(b.corrections(), Some((0, 0)));
}

#[test]
fn overflow_counts_in_the_kernel_are_not_blamed_twice() {
    let mut a = counting();
    a.apply_counts(&counts(), S);
    let sample = |t, overflows| NetstatSample {
        time_ns: t,
        netns: NS,
        listen_overflows: overflows,
        listen_drops: overflows,
    };
    a.netstat(&sample(S, 10));
    let mut more = counts();
    more.listeners[0].1.overflows = 4;
    a.apply_counts(&more, 2 * S);
    a.queue(&QueueSample {
        time_ns: 2 * S,
        netns: NS,
        local_port: 80,
        depth: 129,
        backlog: 128,
    });
    // 6 more in the namespace: 4 the kernel saw on port 80, 2 at SYN time blamed on it.
    a.netstat(&sample(3 * S, 16));
    assert_eq!(a.summary().listeners[0].overflows, 6);
}

#[test]
fn without_kernel_counting_nothing_changes() {
    let mut a = Aggregator::new();
    a.apply_counts(&counts(), S);
    let s = a.summary();
    assert!(s.listeners.is_empty() && s.outbound.is_empty());
    assert_eq!(s.open_corrections, None);
}

#[test]
fn a_recording_run_still_finds_the_closes_the_ring_lost() {
    let mut a = counting();
    let conn = ("10.0.0.1", 80);
    let peer = ("10.0.0.2", 40000);
    a.event(&Obs {
        tracked: true,
        direction: Some(Direction::Passive),
        ..obs(EventKind::Established, S, conn, peer)
    });
    a.apply_counts(&counts(), 2 * S);
    // Held for its close, but not counted twice, nor as untracked.
    assert_eq!(a.open_connections().count(), 1);
    assert_eq!(a.summary().listeners[0].established_now, 2);
    assert_eq!(a.held_open(), {
        let mut b = counting();
        b.apply_counts(&counts(), 2 * S);
        b.held_open()
    });
    // Its close was lost: expired (and recorded), the kernel's count untouched.
    let c = a.open_connections().next().unwrap();
    a.expire(&Expired {
        time_ns: 3 * S,
        conn: c,
    });
    assert_eq!(a.expired(), 1);
    assert_eq!(a.summary().listeners[0].established_now, 2);
}

#[test]
fn a_recording_runs_connect_makes_the_process_row_its_workload_is_named_on() {
    let mut a = counting();
    let connect = Obs {
        tracked: true,
        direction: Some(Direction::Active),
        pid: Some(7),
        comm: Some("app"),
        ..obs(
            EventKind::Connect,
            S,
            ("10.0.0.2", 40000),
            ("10.0.0.9", 5432),
        )
    };
    a.event(&connect);
    let w = crate::host::workload::Workload {
        cgroup: Some("/system.slice/app.service".into()),
        unit: Some("app.service".into()),
        ..Default::default()
    };
    a.name_workload(&connect, &w);
    // Named before the counters are read, and not counted twice after.
    a.apply_counts(&counts(), 2 * S);
    let s = a.summary();
    let p = &s.outbound[0].processes[0];
    assert_eq!((p.pid, p.connects), (Some(7), 4));
    assert_eq!(p.owner.workload.as_deref(), Some("app.service"));
}
