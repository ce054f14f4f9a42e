//! Records into the aggregator: from live kernel events ([`live_event`]), and from exported
//! JSON Lines ([`exported_line`]). Both paths build the same inputs, so a live summary and a
//! report over its file agree.
mod exported;

pub use exported::{Fed, FileStart, LineError, exported_line, file_start};

use crate::{
    aggregate::{Aggregator, Conn, Existing, Expired, FdSample, NetstatSample, Obs, QueueSample},
    clock::WallClock,
    filter::Filter,
    host::workload::Workload,
    kernel::decode::{self, Event, EventKind},
};

/// Host state recorded alongside the events.
#[derive(Debug, Clone, Copy)]
pub enum Sample<'a> {
    Existing(Existing<'a>),
    Queue(QueueSample),
    Netstat(NetstatSample),
    Fds(FdSample<'a>),
    /// Not host state but a decision made from it: an open connection the kernel no longer
    /// has. Recorded with the samples so that `report` replays it.
    Expired(Expired),
}

/// Feeds a host sample if the filter keeps it (live and from a file alike); returns whether it
/// was kept. Namespace counters are never filtered out: they belong to no port or process.
pub fn sample(agg: &mut Aggregator, filter: &Filter, s: &Sample) -> bool {
    let kept = keeps_sample(filter, s);
    if kept {
        match s {
            Sample::Existing(e) => agg.existing(e),
            Sample::Queue(q) => agg.queue(q),
            Sample::Netstat(n) => agg.netstat(n),
            Sample::Fds(f) => agg.fds(f),
            Sample::Expired(e) => agg.expire(e),
        }
    }
    kept
}

pub fn keeps_sample(filter: &Filter, s: &Sample) -> bool {
    match s {
        Sample::Existing(e) => filter.keeps_existing(e),
        Sample::Queue(q) => filter.keeps_port(q.local_port) && filter.keeps_netns(q.netns),
        Sample::Netstat(n) => filter.keeps_netns(n.netns),
        Sample::Fds(f) => filter.keeps_owner(Some(f.pid), f.comm),
        // Only connections the (filtered) aggregator holds are ever expired.
        Sample::Expired(_) => true,
    }
}

/// An `established` event on addresses the aggregator still counts open: the connection that
/// had them ended unseen (its close was missed), since the kernel reuses a connection's
/// addresses only once its socket is gone, and a close is in the ring ahead of anything that
/// follows it. Returns that connection, to expire at the event's time `at_ns`. Not for events up
/// to `snapshot_ns`: the start-up snapshot may already hold a connection whose `established`
/// was still in the ring.
pub fn reopened(agg: &Aggregator, ev: &Event, at_ns: i64, snapshot_ns: i64) -> Option<Expired> {
    if ev.kind != EventKind::Established || at_ns <= snapshot_ns {
        return None;
    }
    let conn = Conn {
        netns: ev.netns,
        local_addr: ev.local_addr,
        local_port: ev.local_port,
        peer_addr: ev.peer_addr,
        peer_port: ev.peer_port,
    };
    agg.is_open(&conn).then_some(Expired {
        time_ns: at_ns,
        conn,
    })
}

/// Feeds a live kernel event (if the filter keeps it); returns whether it was kept. Raw state
/// transitions are kept but not part of the summary.
pub fn live_event(agg: &mut Aggregator, filter: &Filter, ev: &Event, clock: &WallClock) -> bool {
    live_event_in(agg, filter, ev, None, clock)
}

/// As [`live_event`], with the workload the event's cgroup resolved to (as its recorded keys
/// give it back to `report`).
pub fn live_event_in(
    agg: &mut Aggregator,
    filter: &Filter,
    ev: &Event,
    workload: Option<&Workload>,
    clock: &WallClock,
) -> bool {
    if let EventKind::State(_) = ev.kind {
        return filter.keeps_kind(ev.kind.code());
    }
    let comm = ev.comm.as_ref().map(|c| c.as_str());
    let errno = ev.errno.filter(|&e| e != 0).map(decode::errno_name);
    let obs = Obs {
        time_ns: clock.unix_ns(ev.ts_ns) as i64,
        kind: ev.kind,
        netns: ev.netns,
        family: ev.family,
        local_addr: ev.local_addr,
        local_port: ev.local_port,
        peer_addr: ev.peer_addr,
        peer_port: ev.peer_port,
        pid: ev.pid,
        comm: comm.as_deref(),
        direction: ev.direction,
        duration_ns: ev.duration_ns,
        errno: errno.as_deref(),
        reason: (ev.kind == EventKind::ConnectFailed)
            .then(|| decode::connect_failure_reason(ev.errno.unwrap_or(0))),
        tracked: ev.tracked,
        handshake_ns: ev.handshake_ns,
        queue_wait_ns: ev.queue_wait_ns,
        carried: ev.stats.map(|s| crate::aggregate::Carried {
            bytes_in: s.bytes_received,
            bytes_out: s.bytes_sent,
            retrans: u64::from(s.segs_retrans),
        }),
    };
    if !filter.keeps(&obs) {
        return false;
    }
    agg.event(&obs);
    if let Some(w) = workload {
        agg.name_workload(&obs, w);
    }
    true
}

#[cfg(test)]
mod tests;
