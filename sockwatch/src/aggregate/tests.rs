use super::*;
// The standard one, as `Expiry` takes it (`super` has foldhash's).
use std::collections::HashSet;

pub(super) const S: i64 = 1_000_000_000;
pub(super) const NS: u32 = 4026531840;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn obs(kind: EventKind, t: i64, local: (&str, u16), peer: (&str, u16)) -> Obs<'static> {
    Obs {
        time_ns: t,
        kind,
        netns: NS,
        family: Family::Ipv4,
        local_addr: ip(local.0),
        local_port: local.1,
        peer_addr: ip(peer.0),
        peer_port: peer.1,
        pid: None,
        comm: None,
        direction: None,
        duration_ns: None,
        errno: None,
        reason: None,
        tracked: false,
        handshake_ns: None,
        queue_wait_ns: None,
        carried: None,
    }
}

fn passive(kind: EventKind, t: i64, client_port: u16) -> Obs<'static> {
    Obs {
        direction: Some(Direction::Passive),
        ..obs(kind, t, ("10.0.0.1", 80), ("10.0.0.2", client_port))
    }
}

fn active(kind: EventKind, t: i64, local_port: u16, pid: u32) -> Obs<'static> {
    Obs {
        direction: Some(Direction::Active),
        pid: Some(pid),
        comm: Some("app"),
        ..obs(kind, t, ("10.0.0.2", local_port), ("10.0.0.9", 5432))
    }
}

fn listener(s: &Summary, port: u16) -> &ListenerSummary {
    s.listeners
        .iter()
        .find(|l| l.port == port)
        .expect("listener")
}

/// Connection health from events: queue waits on accept, handshakes on active established,
/// what closed connections carried, on the port's side.
#[test]
fn connection_health_from_events() {
    let mut a = Aggregator::new();
    a.event(&obs(EventKind::Listen, 0, ("10.0.0.1", 80), ("0.0.0.0", 0)));
    for (i, wait_ms) in [100u64, 300, 300, 900].into_iter().enumerate() {
        let client = 40000 + i as u16;
        a.event(&passive(EventKind::Established, S, client));
        a.event(&Obs {
            queue_wait_ns: Some(wait_ms * 1_000_000),
            ..passive(EventKind::Accept, 2 * S, client)
        });
        a.event(&Obs {
            carried: Some(Carried {
                bytes_in: 100,
                bytes_out: 1000,
                retrans: 1,
            }),
            duration_ns: Some(S as u64),
            ..passive(EventKind::Close, 3 * S, client)
        });
    }
    for (i, hs_ms) in [1u64, 1, 1_200].into_iter().enumerate() {
        let port = 50000 + i as u16;
        a.event(&active(EventKind::Connect, S, port, 7));
        a.event(&Obs {
            handshake_ns: Some(hs_ms * 1_000_000),
            ..active(EventKind::Established, S, port, 7)
        });
        a.event(&Obs {
            carried: Some(Carried {
                bytes_in: 5,
                bytes_out: 7,
                retrans: 0,
            }),
            ..active(EventKind::Close, 2 * S, port, 7)
        });
    }
    let s = a.summary();
    let l = listener(&s, 80);
    let within = |got: Option<u64>, want: f64| {
        let got = got.unwrap() as f64;
        got <= want && (want - got) / want < 1.0 / 16.0
    };
    assert!(
        within(l.queue_wait_p50_ns, 300e6),
        "{:?}",
        l.queue_wait_p50_ns
    );
    assert!(
        within(l.queue_wait_p99_ns, 900e6),
        "{:?}",
        l.queue_wait_p99_ns
    );
    assert_eq!((l.bytes_in, l.bytes_out, l.retransmits), (400, 4000, 4));
    let o = &s.outbound[0];
    assert!(within(o.handshake_p50_ns, 1e6), "{:?}", o.handshake_p50_ns);
    assert!(
        within(o.handshake_p99_ns, 1.2e9),
        "{:?}",
        o.handshake_p99_ns
    );
    assert_eq!((o.bytes_in, o.bytes_out, o.retransmits), (15, 21, 0));
    // Nothing where nothing was measured.
    let mut b = Aggregator::new();
    b.event(&obs(EventKind::Listen, 0, ("10.0.0.1", 80), ("0.0.0.0", 0)));
    let s = b.summary();
    assert_eq!(listener(&s, 80).queue_wait_p50_ns, None);
    assert_eq!(listener(&s, 80).bytes_in, 0);
}

#[test]
fn passive_connections_on_a_port() {
    let mut a = Aggregator::new();
    a.event(&Obs {
        pid: Some(7),
        comm: Some("nginx"),
        ..obs(EventKind::Listen, 0, ("10.0.0.1", 80), ("0.0.0.0", 0))
    });
    for i in 0..10u16 {
        let t = i64::from(i) * S / 10;
        a.event(&passive(EventKind::Established, t, 40000 + i));
        a.event(&Obs {
            pid: Some(7),
            ..passive(EventKind::Accept, t + 1, 40000 + i)
        });
    }
    for i in 0..8u16 {
        a.event(&Obs {
            duration_ns: Some(1_000_000 * u64::from(i + 1)),
            ..passive(EventKind::Close, S + i64::from(i), 40000 + i)
        });
    }
    let s = a.summary();
    let l = listener(&s, 80);
    assert_eq!((l.accepted, l.closed, l.established_now), (10, 8, 2));
    assert_eq!(l.pid, Some(7));
    assert_eq!(l.comm.as_deref(), Some("nginx"));
    assert_eq!(l.local_addr, Some(ip("10.0.0.1")));
    assert_eq!(l.distinct_peers, 1);
    // Quantiles are histogram bucket bounds: within 1/16 below the true value.
    let p50 = l.lifetime_p50_ns.unwrap();
    assert!((3_750_000..=4_000_000).contains(&p50), "{p50}");
    assert!(l.lifetime_p99_ns.unwrap() >= 7_500_000);
    assert_eq!(s.events, 29);
    assert!((s.seconds - 1.000000007).abs() < 0.001);
    assert_eq!(l.accepted_per_sec, 10.0);
}

#[test]
fn accept_failures_by_errno() {
    let mut a = Aggregator::new();
    for errno in ["EMFILE", "EMFILE", "ENFILE"] {
        a.event(&Obs {
            errno: Some(errno),
            ..obs(EventKind::AcceptFailed, 0, ("10.0.0.1", 80), ("0.0.0.0", 0))
        });
    }
    let s = a.summary();
    let l = listener(&s, 80);
    assert_eq!(l.accept_failures.get("EMFILE"), Some(&2));
    assert_eq!(l.accept_failures.get("ENFILE"), Some(&1));
}

#[test]
fn close_before_accept_counts_once_and_never_goes_negative() {
    let mut a = Aggregator::new();
    a.event(&passive(EventKind::Established, 0, 40000));
    a.event(&passive(EventKind::Close, 1, 40000));
    a.event(&passive(EventKind::Accept, 2, 40000));
    // A close of a socket never seen established (older than sockwatch), twice.
    a.event(&passive(EventKind::Close, 3, 41000));
    a.event(&passive(EventKind::Close, 4, 41000));
    // An unknown outbound close changes nothing.
    a.event(&active(EventKind::Close, 5, 50000, 9));
    let s = a.summary();
    let l = listener(&s, 80);
    assert_eq!((l.accepted, l.closed, l.established_now), (1, 3, 0));
    assert!(s.outbound.iter().all(|o| o.open_now == 0));
}

#[test]
fn outbound_connections_and_failures() {
    let mut a = Aggregator::new();
    for p in 0..3u16 {
        a.event(&active(EventKind::Connect, 0, 50000 + p, 9));
    }
    a.event(&active(EventKind::Established, 1, 50000, 9));
    a.event(&active(EventKind::Established, 1, 50001, 9));
    a.event(&Obs {
        reason: Some("refused"),
        errno: Some("ECONNREFUSED"),
        ..active(EventKind::ConnectFailed, 1, 50002, 9)
    });
    a.event(&active(EventKind::Close, 2, 50000, 9));
    let s = a.summary();
    let o = &s.outbound[0];
    assert_eq!(o.peer_port, 5432);
    assert_eq!((o.connects, o.established, o.open_now), (3, 2, 1));
    assert_eq!(o.failed.get("refused"), Some(&1));
    assert_eq!(o.peers, vec![ip("10.0.0.9")]);
    assert_eq!(o.processes.len(), 1);
    assert_eq!(o.processes[0].pid, Some(9));
    assert_eq!(o.processes[0].comm.as_deref(), Some("app"));
    assert_eq!((o.processes[0].connects, o.processes[0].open_now), (3, 1));
    assert!(!o.processes[0].leak_suspect);
}

#[test]
fn a_steadily_rising_open_count_is_a_leak_suspect() {
    let mut leaky = Aggregator::new();
    let mut steady = Aggregator::new();
    for sec in 0..8i64 {
        let port = 50000 + sec as u16;
        leaky.event(&active(EventKind::Established, sec * S, port, 9));
        steady.event(&active(EventKind::Established, sec * S, port, 9));
        steady.event(&active(EventKind::Close, sec * S + 1, port, 9));
    }
    assert!(leaky.summary().outbound[0].processes[0].leak_suspect);
    assert!(!steady.summary().outbound[0].processes[0].leak_suspect);
}

#[test]
fn existing_sockets_count_from_the_start() {
    let mut a = Aggregator::new();
    let base = Existing {
        time_ns: 0,
        netns: NS,
        family: Family::Ipv4,
        listening: true,
        local_addr: ip("10.0.0.1"),
        local_port: 80,
        peer_addr: ip("0.0.0.0"),
        peer_port: 0,
        pid: Some(7),
        comm: Some("nginx"),
    };
    a.existing(&base);
    a.existing(&Existing {
        listening: false,
        peer_addr: ip("10.0.0.2"),
        peer_port: 40000,
        ..base
    });
    // An outbound connection of another process.
    a.existing(&Existing {
        listening: false,
        local_addr: ip("10.0.0.2"),
        local_port: 50000,
        peer_addr: ip("10.0.0.9"),
        peer_port: 5432,
        pid: Some(9),
        comm: Some("app"),
        ..base
    });
    let s = a.summary();
    assert_eq!(listener(&s, 80).established_now, 1);
    assert_eq!(listener(&s, 80).pid, Some(7));
    assert_eq!(s.outbound[0].open_now, 1);
    a.event(&passive(EventKind::Close, 1, 40000));
    let s = a.summary();
    assert_eq!(listener(&s, 80).established_now, 0);
    assert_eq!(listener(&s, 80).closed, 1);
}

#[test]
fn netstat_counters_survive_resets() {
    let mut a = Aggregator::new();
    for (t, v) in [(0, 10u64), (1, 15), (2, 3), (3, 5)] {
        a.netstat(&NetstatSample {
            time_ns: t,
            netns: NS,
            listen_overflows: v,
            listen_drops: v * 2,
        });
    }
    let s = a.summary();
    // 10 -> 15 (+5), reset to 3 (+3), 3 -> 5 (+2)
    assert_eq!(s.namespaces[0].listen_overflows, 10);
    assert_eq!(s.namespaces[0].listen_drops, 20);
    // u64 wrap-around reads as a reset too, never as a huge increase.
    let mut b = Aggregator::new();
    for v in [u64::MAX - 1, 1] {
        b.netstat(&NetstatSample {
            time_ns: 0,
            netns: NS,
            listen_overflows: v,
            listen_drops: 0,
        });
    }
    assert_eq!(b.summary().namespaces[0].listen_overflows, 1);
}

#[test]
fn queue_overflow_and_fd_pressure() {
    let mut a = Aggregator::new();
    a.queue(&QueueSample {
        time_ns: 0,
        netns: NS,
        local_port: 80,
        depth: 2,
        backlog: 1,
    });
    for t in [1, 2] {
        a.event(&obs(
            EventKind::Overflow,
            t,
            ("10.0.0.1", 80),
            ("0.0.0.0", 0),
        ));
    }
    for (pid, open) in [(7, 79), (8, 80)] {
        a.fds(&FdSample {
            time_ns: 3,
            pid,
            comm: Some("srv"),
            open,
            limit: 100,
        });
    }
    let s = a.summary();
    let l = listener(&s, 80);
    assert_eq!(
        (l.queue_depth, l.backlog, l.overflows),
        (Some(2), Some(1), 2)
    );
    assert_eq!(
        s.processes
            .iter()
            .map(|p| (p.pid, p.fd_warning))
            .collect::<Vec<_>>(),
        vec![(7, false), (8, true)]
    );
}

#[test]
fn busiest_listener_first_and_namespaces_apart() {
    let mut a = Aggregator::new();
    for (netns, n) in [(1u32, 1), (2, 3)] {
        for i in 0..n {
            a.event(&Obs {
                netns,
                ..passive(EventKind::Accept, 0, 40000 + i)
            });
        }
    }
    let s = a.summary();
    assert_eq!(s.listeners.len(), 2, "same port, two namespaces");
    assert_eq!((s.listeners[0].netns, s.listeners[0].accepted), (2, 3));
    assert_eq!((s.listeners[1].netns, s.listeners[1].accepted), (1, 1));
}

#[test]
fn syn_time_overflows_go_to_the_one_full_listener() {
    let mut a = Aggregator::new();
    let queue = |a: &mut Aggregator, port, depth| {
        a.queue(&QueueSample {
            time_ns: 0,
            netns: NS,
            local_port: port,
            depth,
            backlog: 1,
        })
    };
    let netstat = |a: &mut Aggregator, v| {
        a.netstat(&NetstatSample {
            time_ns: 0,
            netns: NS,
            listen_overflows: v,
            listen_drops: v,
        })
    };
    netstat(&mut a, 100);
    queue(&mut a, 80, 2);
    queue(&mut a, 81, 0);
    // One event-level overflow on port 80, counted once even though the counter sees it too.
    a.event(&obs(
        EventKind::Overflow,
        1,
        ("10.0.0.1", 80),
        ("0.0.0.0", 0),
    ));
    netstat(&mut a, 110);
    let s = a.summary();
    assert_eq!(listener(&s, 80).overflows, 10);
    assert_eq!(listener(&s, 81).overflows, 0);
    assert_eq!(s.namespaces[0].listen_overflows, 10);
    assert_eq!(s.namespaces[0].unattributed_overflows, 0);
    // Two full listeners: nobody can be blamed.
    queue(&mut a, 81, 2);
    netstat(&mut a, 115);
    let s = a.summary();
    assert_eq!(listener(&s, 80).overflows, 10);
    assert_eq!(s.namespaces[0].unattributed_overflows, 5);
}

fn conn_of(o: &Obs) -> Conn {
    Conn {
        netns: o.netns,
        local_addr: o.local_addr,
        local_port: o.local_port,
        peer_addr: o.peer_addr,
        peer_port: o.peer_port,
    }
}

#[test]
fn expiring_takes_a_connection_out_of_the_open_counts_once() {
    let mut a = Aggregator::new();
    let p = passive(EventKind::Established, 0, 40000);
    let o = active(EventKind::Established, 0, 50000, 9);
    a.event(&p);
    a.event(&passive(EventKind::Established, 1, 40001));
    a.event(&o);
    let s = a.summary();
    assert_eq!(listener(&s, 80).established_now, 2);
    assert_eq!(s.outbound[0].open_now, 1);
    for c in [conn_of(&p), conn_of(&o), conn_of(&p)] {
        a.expire(&Expired {
            time_ns: 2 * S,
            conn: c,
        });
    }
    let s = a.summary();
    assert_eq!(a.expired(), 2, "the repeated one is not counted twice");
    let l = listener(&s, 80);
    // Expired is not closed: no close was seen, and no lifetime is known.
    assert_eq!((l.established_now, l.closed), (1, 0));
    assert_eq!(l.lifetime_p50_ns, None);
    assert_eq!(s.outbound[0].open_now, 0);
    assert_eq!(s.outbound[0].processes[0].open_now, 0);
    assert_eq!(s.seconds, 2.0);
    // Its close arriving late still counts it closed on its port, as for any unknown socket.
    a.event(&passive(EventKind::Close, 3 * S, 40000));
    assert_eq!(listener(&a.summary(), 80).closed, 1);
    assert_eq!(a.open_connections().count(), 1);
}

/// A connection to 10.0.0.1:80 from port `port` of 10.0.0.2, in `netns`.
fn conn_on(port: u16, netns: u32) -> Conn {
    Conn {
        netns,
        local_addr: ip("10.0.0.1"),
        local_port: 80,
        peer_addr: ip("10.0.0.2"),
        peer_port: port,
    }
}

#[test]
fn expiry_needs_two_absences_in_a_row() {
    let mut e = Expiry::new();
    let open = [
        conn_on(1, NS),
        conn_on(2, NS),
        conn_on(3, NS),
        conn_on(4, 7),
    ];
    // The kernel has 1 only; namespace 7 could not be read.
    let kernel = |x: &Conn| x.peer_port == 1;
    let read = |n: u32| n == NS;
    assert!(e.check(open, kernel, read, 10).is_empty());
    assert_eq!(e.suspects(), 2);
    // 2 closed normally meanwhile (no longer open); 3 is still open and still absent.
    let gone = e.check(
        [conn_on(1, NS), conn_on(3, NS), conn_on(4, 7)],
        kernel,
        read,
        20,
    );
    assert_eq!(
        gone,
        [Expired {
            time_ns: 20,
            conn: conn_on(3, NS)
        }]
    );
    assert_eq!(e.suspects(), 0);
    // Absent once, then back (a new connection on the same addresses): not expired.
    assert!(e.check([conn_on(5, NS)], |_| false, read, 30).is_empty());
    assert!(e.check([conn_on(5, NS)], |_| true, read, 40).is_empty());
    assert!(e.check([conn_on(5, NS)], |_| false, read, 50).is_empty());
    assert_eq!(e.check([conn_on(5, NS)], |_| false, read, 60).len(), 1);
}

#[test]
fn the_last_check_expires_on_one_absence_what_is_still_open() {
    let mut e = Expiry::new();
    // Absent from the dump: 2 and 3. 3's close came in after it; 2 is still open.
    let absent = HashSet::from([conn_on(2, NS), conn_on(3, NS)]);
    let open = [conn_on(1, NS), conn_on(2, NS), conn_on(4, NS)];
    let gone = e.check_final(open, &absent, 10);
    assert_eq!(
        gone,
        [Expired {
            time_ns: 10,
            conn: conn_on(2, NS)
        }]
    );
}

#[test]
fn expiry_compares_ipv4_mapped_addresses_as_ipv4() {
    let mapped = Conn {
        netns: NS,
        local_addr: ip("::ffff:127.0.0.1"),
        local_port: 80,
        peer_addr: ip("::ffff:127.0.0.2"),
        peer_port: 5,
    };
    let plain = expiry::canonical(&mapped);
    assert_eq!(plain.local_addr, ip("127.0.0.1"));
    let mut e = Expiry::new();
    for t in 0..3 {
        assert!(e.check([mapped], |c| *c == plain, |_| true, t).is_empty());
    }
}

#[test]
fn the_summary_json_has_capabilities_only_when_known() {
    let mut a = Aggregator::new();
    a.event(&passive(EventKind::Accept, S, 40000));
    let s = a.summary();
    // Unknown (a recording from before they were probed): no key, and the very text the
    // summary alone prints.
    assert!(a.capabilities().is_none());
    let plain = serde_json::to_string_pretty(&s).unwrap();
    let without = serde_json::to_string_pretty(&s.with_capabilities(a.capabilities())).unwrap();
    assert_eq!(without, plain);
    assert!(!without.contains("capabilities"));

    let caps = serde_json::json!({
        "accept_failures": {"available": true, "via": "syscall exit tracepoints"},
        "listen_overflow_events": {"available": false, "note": "no drop reason"},
    });
    a.set_capabilities(caps.clone());
    let v = serde_json::to_value(s.with_capabilities(a.capabilities())).unwrap();
    assert_eq!(v["capabilities"], caps);
    // The summary's own keys are all there, unchanged.
    let mut rest = v.as_object().unwrap().clone();
    rest.remove("capabilities");
    assert_eq!(
        serde_json::Value::Object(rest),
        serde_json::to_value(&s).unwrap()
    );
    // Last, after the summary's keys.
    let text = serde_json::to_string_pretty(&s.with_capabilities(a.capabilities())).unwrap();
    assert!(text.starts_with(&plain[..plain.len() - 2]), "{text}");

    // Merging another header's: missing in either means missing.
    a.merge_capabilities(
        serde_json::json!({"accept_failures": {"available": false, "note": "no syscalls"}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let caps = a.capabilities().unwrap();
    assert_eq!(caps["accept_failures"]["note"], "no syscalls");
    assert_eq!(caps["listen_overflow_events"]["available"], false);

    // Not an object: unknown.
    a.set_capabilities(serde_json::Value::Null);
    assert!(a.capabilities().is_none());
}
