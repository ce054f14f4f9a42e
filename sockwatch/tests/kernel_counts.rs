//! Root tests of the in-kernel counters (`Mode::count`), through the library: exact per-port,
//! per-error and per-process counts in a namespace of their own, with both builds of the
//! programs; and a ring buffer far too small for the events, which counting does not need.
mod common;

use std::{net::TcpListener, time::Instant};

use common::{
    counts::{
        COUNTS_ONLY, Listener, Outbound, Run, churn, closed_on_both_sides, in_new_netns, port,
        wait_for,
    },
    root_or_skip,
};
use sockwatch_common::{LIFETIME_BUCKETS, Mode, flags, kind, lifetime_bucket, side};

/// The smallest ring the kernel allows: one page, about 40 events.
const TINY_RING: u32 = 4096;

#[test]
fn counts_are_exact() {
    if !root_or_skip("counts_are_exact") {
        return;
    }
    common::counts::exact_counts(false, 200, 20, 50);
}

#[test]
fn counts_are_exact_with_the_compat_programs() {
    if !root_or_skip("counts_are_exact_with_the_compat_programs") {
        return;
    }
    common::counts::exact_counts(true, 200, 20, 50);
}

#[test]
fn a_tiny_ring_loses_no_count() {
    if !root_or_skip("a_tiny_ring_loses_no_count") {
        return;
    }
    tiny_ring(false);
}

#[test]
fn a_tiny_ring_loses_no_count_with_the_compat_programs() {
    if !root_or_skip("a_tiny_ring_loses_no_count_with_the_compat_programs") {
        return;
    }
    tiny_ring(true);
}

/// Thousands of connections counted exactly through a one-page ring (in which they would not
/// fit), then, when that took a few seconds at most, twenty thousand more.
fn tiny_ring(compat: bool) {
    let started = Instant::now();
    churn_counted(compat, 5_000);
    if started.elapsed().as_secs() <= 5 {
        churn_counted(compat, 20_000);
    } else {
        eprintln!(
            "5000 connections took {:?}: the 20000 are skipped",
            started.elapsed()
        );
    }
}

/// `n` connections in a namespace of their own (its ephemeral ports are all free), counted with
/// a one-page ring.
fn churn_counted(compat: bool, n: u64) {
    let run = Run::start(compat, TINY_RING, COUNTS_ONLY);
    let counts = in_new_netns("sw-tiny-ring", |ns| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let lport = listener.local_addr().expect("addr").port();
        churn(&listener, n as usize);
        common::wait_connections_settled();
        closed_on_both_sides(&run, ns, lport, n).2
    });
    let (_, counters) = run.stop();
    assert_eq!(counts.listener, Some(Listener::closed_after(n)));
    assert_eq!(counts.outbound, Some(Outbound::closed_after(n, n)));
    assert_eq!(counts.processes.len(), 1, "{:?}", counts.processes);
    assert_eq!(counts.processes[0].1.connects, n);
    assert_eq!(counters.ringbuf_full, 0, "{counters:?}");
    assert_eq!(counters.counts_full, 0, "{counters:?}");
    assert_eq!(counters.read_failed, 0, "{counters:?}");
}

/// With every event also in the ring, the counts are what the events say, the lifetime
/// histogram bucket by bucket: the programs' buckets (`lifetime_bucket` compiled for BPF) are
/// userspace's.
#[test]
fn counts_agree_with_the_events_in_the_ring() {
    if !root_or_skip("counts_agree_with_the_events_in_the_ring") {
        return;
    }
    const N: usize = 300;
    let everything = Mode {
        count: 1,
        ring_kinds: u32::MAX,
    };
    let run = Run::start(false, 1 << 22, everything);
    let (ns, lport, counts) = in_new_netns("sw-agree", |ns| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let lport = listener.local_addr().expect("addr").port();
        churn(&listener, N);
        common::wait_connections_settled();
        let key = port(ns, lport, side::LISTENER);
        let c = wait_for(&run, |c| {
            c.listeners
                .iter()
                .any(|(k, v)| *k == key && v.closed == N as u64)
        });
        let counts = c
            .listeners
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .expect("listener counts");
        (ns, lport, counts)
    });
    let (events, counters) = run.stop();
    assert_eq!(counters.ringbuf_full, 0, "{counters:?}");
    let mut lifetimes = vec![0u64; LIFETIME_BUCKETS];
    let mut closes = 0;
    for e in events.iter().filter(|e| {
        u64::from(e.netns) == ns
            && e.kind == kind::CLOSE
            && e.local_port == lport
            && e.flags & flags::PASSIVE != 0
    }) {
        lifetimes[lifetime_bucket(e.duration_ns)] += 1;
        closes += 1;
    }
    assert_eq!(closes, N);
    let differ: Vec<(usize, u64, u64)> = lifetimes
        .iter()
        .zip(counts.lifetimes.iter())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, *a, *b))
        .collect();
    assert!(differ.is_empty(), "(bucket, events, kernel): {differ:?}");
    let accepts = events
        .iter()
        .filter(|e| u64::from(e.netns) == ns && e.kind == kind::ACCEPT)
        .count();
    assert_eq!((counts.accepted, counts.closed), (accepts as u64, N as u64));
}
