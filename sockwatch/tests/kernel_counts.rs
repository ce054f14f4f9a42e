//! Root tests of the in-kernel counters (`Mode::count`), through the library: exact per-port,
//! per-error and per-process counts in a namespace of their own, with both builds of the
//! programs; and a ring buffer far too small for the events, which counting does not need.
mod common;

use std::{net::TcpListener, time::Instant};

use common::{
    counts::{COUNTS_ONLY, Listener, Run, churn, in_new_netns, of, port, wait_for},
    root_or_skip,
};
use sockwatch_common::{OutboundCounts, side};

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
        let (lkey, okey) = (
            port(ns, lport, side::LISTENER),
            port(ns, lport, side::OUTBOUND),
        );
        let want = Some(Listener::closed_after(n));
        let c = wait_for(&run, |c| of(c, lkey, okey).listener == want);
        of(&c, lkey, okey)
    });
    let (_, counters) = run.stop();
    assert_eq!(counts.listener, Some(Listener::closed_after(n)));
    assert_eq!(
        counts.outbound,
        Some(OutboundCounts {
            connects: n,
            established: n,
            open: 0,
            peers: 1,
        })
    );
    assert_eq!(counts.processes.len(), 1, "{:?}", counts.processes);
    assert_eq!(counts.processes[0].1.connects, n);
    assert_eq!(counters.ringbuf_full, 0, "{counters:?}");
    assert_eq!(counters.counts_full, 0, "{counters:?}");
    assert_eq!(counters.read_failed, 0, "{counters:?}");
}
