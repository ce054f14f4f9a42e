//! The metrics' data: a snapshot of the live summary with bounded cardinality, taken at each
//! interval. [`crate::metrics::text`] encodes it, [`crate::metrics::server`] serves it.
//!
//! Peer addresses are never labels. Each table (listening ports, outbound remote ports, network
//! namespaces) gets at most [`MAX_SERIES`] labelled entries; the others are summed into one
//! entry labelled `other`, and their number is reported.
pub mod server;
pub mod text;

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
};

use crate::{aggregate::Summary, kernel::loss::Loss};

/// Labelled entries per table (listeners, outbound, namespaces).
pub const MAX_SERIES: usize = 100;
/// The label value of the entry that sums the unlisted ones.
pub const OTHER: &str = "other";

/// Upper bounds of the latency histograms (accept-queue wait, handshake), in seconds: the
/// OpenMetrics `le` labels, then `+Inf`.
pub const LATENCY_BOUNDS_S: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with the fixed bounds [`LATENCY_BOUNDS_S`], from the summary's
/// finer one: a value is counted under the first bound above its fine bucket's lower end
/// (so within 1/16 of the bound).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyRow {
    /// Values below each bound (cumulative).
    pub below: [u64; LATENCY_BOUNDS_S.len()],
    pub count: u64,
    pub sum_ns: u64,
}

impl LatencyRow {
    fn of(h: &crate::aggregate::hist::Buckets) -> Self {
        let mut below = [0; LATENCY_BOUNDS_S.len()];
        for (b, bound) in below.iter_mut().zip(LATENCY_BOUNDS_S) {
            *b = h.count_below((bound * 1e9) as u64);
        }
        Self {
            below,
            count: h.total(),
            sum_ns: h.sum(),
        }
    }

    fn add(&mut self, more: &Self) {
        for (mine, theirs) in self.below.iter_mut().zip(more.below) {
            *mine = mine.saturating_add(theirs);
        }
        self.count = self.count.saturating_add(more.count);
        self.sum_ns = self.sum_ns.saturating_add(more.sum_ns);
    }
}

/// One listening port (or the sum of the unlisted ones).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerRow {
    pub netns: String,
    pub port: String,
    /// The owner's command name as last seen; empty when unknown (and for `other`).
    pub comm: String,
    /// The owner's workload (pod, container, unit: see `host::workload`); empty when unknown.
    /// One per listener, so it adds no series.
    pub workload: String,
    pub accepted: u64,
    pub closed: u64,
    pub established: u64,
    pub accept_failures: BTreeMap<String, u64>,
    pub overflows: u64,
    /// (depth, backlog) at the last sample; none for `other` (a sum of queues means nothing).
    pub queue: Option<(u32, u32)>,
    pub queue_wait: LatencyRow,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retransmits: u64,
}

/// One remote port of outbound connections (or the sum of the unlisted ones).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboundRow {
    pub netns: String,
    pub remote_port: String,
    pub connects: u64,
    pub established: u64,
    pub failures: BTreeMap<String, u64>,
    pub open: u64,
    pub handshake: LatencyRow,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retransmits: u64,
}

/// One network namespace's TcpExt listen counters (or the sum of the unlisted ones).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceRow {
    pub netns: String,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub unattributed_overflows: u64,
}

/// Entries summed under `other`, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unlisted {
    pub listeners: u64,
    pub outbound: u64,
    pub namespaces: u64,
}

/// What a scrape shows, as of the last interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub listeners: Vec<ListenerRow>,
    pub outbound: Vec<OutboundRow>,
    pub namespaces: Vec<NamespaceRow>,
    pub unlisted: Unlisted,
    /// Connection events aggregated (after filters).
    pub events: u64,
    pub loss: Loss,
}

/// Chooses the entries that get their own series.
///
/// An entry that has had any activity keeps its series for the rest of the run: its counters
/// stay continuous, and the `other` sums, taken over entries that never leave it, only grow (a
/// counter that went down would read as a reset). Idle entries (all zero) fill the room left
/// each time without keeping it; moving them in or out of `other` changes no sum.
#[derive(Debug)]
struct Sticky<K> {
    cap: usize,
    kept: HashSet<K>,
}

impl<K: Hash + Eq + Copy> Sticky<K> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            kept: HashSet::new(),
        }
    }

    /// `entries`: (key, active), busiest first. Returns whether each is listed.
    fn choose(&mut self, entries: &[(K, bool)]) -> Vec<bool> {
        let mut listed: Vec<bool> = entries.iter().map(|(k, _)| self.kept.contains(k)).collect();
        for ((key, active), listed) in entries.iter().zip(listed.iter_mut()) {
            if !*listed && *active && self.kept.len() < self.cap {
                self.kept.insert(*key);
                *listed = true;
            }
        }
        let mut room = self
            .cap
            .saturating_sub(listed.iter().filter(|l| **l).count());
        for ((_, active), listed) in entries.iter().zip(listed.iter_mut()) {
            if room == 0 {
                break;
            }
            if !*listed && !*active {
                *listed = true;
                room -= 1;
            }
        }
        listed
    }
}

fn add_all(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        let sum = into.entry(k.clone()).or_default();
        *sum = sum.saturating_add(*v);
    }
}

/// Turns successive summaries into snapshots, keeping the choice of listed entries stable.
#[derive(Debug)]
pub struct Selector {
    listeners: Sticky<(u32, u16)>,
    outbound: Sticky<(u32, u16)>,
    namespaces: Sticky<u32>,
}

impl Default for Selector {
    fn default() -> Self {
        Self::new(MAX_SERIES)
    }
}

impl Selector {
    /// At most `cap` labelled entries per table.
    pub fn new(cap: usize) -> Self {
        Self {
            listeners: Sticky::new(cap),
            outbound: Sticky::new(cap),
            namespaces: Sticky::new(cap),
        }
    }

    pub fn snapshot(&mut self, summary: &Summary, events: u64, loss: &Loss) -> Snapshot {
        let mut snap = Snapshot {
            events,
            loss: *loss,
            ..Default::default()
        };

        let keys: Vec<_> = summary
            .listeners
            .iter()
            .map(|l| {
                let active = l.accepted > 0
                    || l.closed > 0
                    || l.established_now > 0
                    || l.overflows > 0
                    || l.accept_failures.values().any(|n| *n > 0);
                ((l.netns, l.port), active)
            })
            .collect();
        let mut other = ListenerRow {
            netns: OTHER.into(),
            port: OTHER.into(),
            ..Default::default()
        };
        for (l, listed) in summary.listeners.iter().zip(self.listeners.choose(&keys)) {
            let row = if listed {
                snap.listeners.push(ListenerRow {
                    netns: l.netns.to_string(),
                    port: l.port.to_string(),
                    comm: l.comm.clone().unwrap_or_default(),
                    workload: l.owner.workload.clone().unwrap_or_default(),
                    queue: l.queue_depth.zip(l.backlog),
                    ..Default::default()
                });
                snap.listeners.last_mut()
            } else {
                snap.unlisted.listeners += 1;
                Some(&mut other)
            };
            if let Some(row) = row {
                row.accepted = row.accepted.saturating_add(l.accepted);
                row.closed = row.closed.saturating_add(l.closed);
                row.established = row.established.saturating_add(l.established_now);
                row.overflows = row.overflows.saturating_add(l.overflows);
                add_all(&mut row.accept_failures, &l.accept_failures);
                row.queue_wait.add(&LatencyRow::of(&l.queue_waits));
                row.bytes_in = row.bytes_in.saturating_add(l.bytes_in);
                row.bytes_out = row.bytes_out.saturating_add(l.bytes_out);
                row.retransmits = row.retransmits.saturating_add(l.retransmits);
            }
        }
        if snap.unlisted.listeners > 0 {
            snap.listeners.push(other);
        }

        let keys: Vec<_> = summary
            .outbound
            .iter()
            .map(|o| {
                let active = o.connects > 0
                    || o.established > 0
                    || o.open_now > 0
                    || o.failed.values().any(|n| *n > 0);
                ((o.netns, o.peer_port), active)
            })
            .collect();
        let mut other = OutboundRow {
            netns: OTHER.into(),
            remote_port: OTHER.into(),
            ..Default::default()
        };
        for (o, listed) in summary.outbound.iter().zip(self.outbound.choose(&keys)) {
            let row = if listed {
                snap.outbound.push(OutboundRow {
                    netns: o.netns.to_string(),
                    remote_port: o.peer_port.to_string(),
                    ..Default::default()
                });
                snap.outbound.last_mut()
            } else {
                snap.unlisted.outbound += 1;
                Some(&mut other)
            };
            if let Some(row) = row {
                row.connects = row.connects.saturating_add(o.connects);
                row.established = row.established.saturating_add(o.established);
                row.open = row.open.saturating_add(o.open_now);
                add_all(&mut row.failures, &o.failed);
                row.handshake.add(&LatencyRow::of(&o.handshakes));
                row.bytes_in = row.bytes_in.saturating_add(o.bytes_in);
                row.bytes_out = row.bytes_out.saturating_add(o.bytes_out);
                row.retransmits = row.retransmits.saturating_add(o.retransmits);
            }
        }
        if snap.unlisted.outbound > 0 {
            snap.outbound.push(other);
        }

        let keys: Vec<_> = summary
            .namespaces
            .iter()
            .map(|n| {
                let active =
                    n.listen_overflows > 0 || n.listen_drops > 0 || n.unattributed_overflows > 0;
                (n.netns, active)
            })
            .collect();
        let mut other = NamespaceRow {
            netns: OTHER.into(),
            ..Default::default()
        };
        for (n, listed) in summary.namespaces.iter().zip(self.namespaces.choose(&keys)) {
            let row = if listed {
                snap.namespaces.push(NamespaceRow {
                    netns: n.netns.to_string(),
                    ..Default::default()
                });
                snap.namespaces.last_mut()
            } else {
                snap.unlisted.namespaces += 1;
                Some(&mut other)
            };
            if let Some(row) = row {
                row.listen_overflows = row.listen_overflows.saturating_add(n.listen_overflows);
                row.listen_drops = row.listen_drops.saturating_add(n.listen_drops);
                row.unattributed_overflows = row
                    .unattributed_overflows
                    .saturating_add(n.unattributed_overflows);
            }
        }
        if snap.unlisted.namespaces > 0 {
            snap.namespaces.push(other);
        }
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{ListenerSummary, NamespaceSummary, OutboundSummary};

    fn listener(netns: u32, port: u16, accepted: u64) -> ListenerSummary {
        ListenerSummary {
            netns,
            port,
            family: Some("ipv4"),
            local_addr: None,
            pid: Some(7),
            comm: Some("srv".into()),
            owner: Default::default(),
            accepted,
            accepted_per_sec: 0.0,
            established_now: 0,
            closed: accepted,
            accept_failures: BTreeMap::new(),
            overflows: 0,
            queue_depth: Some(0),
            backlog: Some(128),
            distinct_peers: 1,
            lifetime_p50_ns: None,
            lifetime_p99_ns: None,
            queue_wait_p50_ns: None,
            queue_wait_p99_ns: None,
            bytes_in: 0,
            bytes_out: 0,
            retransmits: 0,
            queue_waits: Default::default(),
        }
    }

    fn summary(listeners: Vec<ListenerSummary>) -> Summary {
        Summary {
            seconds: 1.0,
            events: 0,
            listeners,
            outbound: vec![],
            namespaces: vec![],
            processes: vec![],
            stats: None,
            lost: None,
            open_corrections: None,
        }
    }

    fn ports(s: &Snapshot) -> Vec<&str> {
        s.listeners.iter().map(|l| l.port.as_str()).collect()
    }

    #[test]
    fn within_the_cap_everything_is_listed() {
        let mut sel = Selector::new(3);
        let s = sel.snapshot(
            &summary(vec![listener(1, 80, 5), listener(1, 22, 0)]),
            9,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["80", "22"]);
        assert_eq!(s.unlisted, Unlisted::default());
        assert_eq!(s.events, 9);
        assert_eq!(s.listeners[0].queue, Some((0, 128)));
        assert_eq!(s.listeners[0].comm, "srv");
    }

    #[test]
    fn beyond_the_cap_the_rest_is_summed_as_other() {
        let mut sel = Selector::new(2);
        let mut a = listener(1, 81, 2);
        a.accept_failures.insert("EMFILE".into(), 3);
        let mut b = listener(2, 82, 1);
        b.accept_failures.insert("EMFILE".into(), 1);
        b.established_now = 4;
        let s = sel.snapshot(
            &summary(vec![listener(1, 80, 10), listener(1, 443, 7), a, b]),
            0,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["80", "443", "other"]);
        let other = &s.listeners[2];
        assert_eq!(other.netns, "other");
        assert_eq!((other.accepted, other.closed), (3, 3));
        assert_eq!(other.established, 4);
        assert_eq!(other.accept_failures["EMFILE"], 4);
        assert_eq!(other.queue, None);
        assert_eq!(s.unlisted.listeners, 2);
    }

    #[test]
    fn an_active_port_keeps_its_series_and_other_only_grows() {
        let mut sel = Selector::new(1);
        let s = sel.snapshot(
            &summary(vec![listener(1, 80, 1), listener(1, 90, 0)]),
            0,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["80", "other"]);
        // 90 becomes busier than 80: 80 keeps the only series, 90's counts go to other.
        let s = sel.snapshot(
            &summary(vec![listener(1, 90, 50), listener(1, 80, 2)]),
            0,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["80", "other"]);
        assert_eq!(s.listeners[1].accepted, 50);
    }

    #[test]
    fn idle_ports_fill_the_room_but_do_not_keep_it() {
        let mut sel = Selector::new(1);
        let s = sel.snapshot(
            &summary(vec![listener(1, 22, 0), listener(1, 25, 0)]),
            0,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["22", "other"]);
        assert_eq!(s.listeners[1].accepted, 0);
        // 25 becomes active: it takes the series the idle 22 held.
        let s = sel.snapshot(
            &summary(vec![listener(1, 25, 1), listener(1, 22, 0)]),
            0,
            &Loss::default(),
        );
        assert_eq!(ports(&s), ["25", "other"]);
    }

    #[test]
    fn outbound_and_namespaces_are_capped_too() {
        let mut sel = Selector::new(1);
        let out = |port, connects| OutboundSummary {
            netns: 1,
            peer_port: port,
            peers: vec![],
            distinct_peers: 0,
            connects,
            established: connects,
            failed: BTreeMap::from([("refused".to_string(), 1)]),
            open_now: 0,
            handshake_p50_ns: None,
            handshake_p99_ns: None,
            bytes_in: 0,
            bytes_out: 0,
            retransmits: 0,
            processes: vec![],
            handshakes: Default::default(),
        };
        let ns = |netns, overflows| NamespaceSummary {
            netns,
            listen_overflows: overflows,
            listen_drops: overflows,
            unattributed_overflows: 0,
        };
        let mut sum = summary(vec![]);
        sum.outbound = vec![out(5432, 4), out(6379, 2), out(53, 1)];
        sum.namespaces = vec![ns(1, 0), ns(2, 3), ns(3, 4)];
        let s = sel.snapshot(&sum, 0, &Loss::default());
        let remote: Vec<_> = s.outbound.iter().map(|o| o.remote_port.as_str()).collect();
        assert_eq!(remote, ["5432", "other"]);
        assert_eq!(s.outbound[1].connects, 3);
        assert_eq!(s.outbound[1].failures["refused"], 2);
        let netns: Vec<_> = s.namespaces.iter().map(|n| n.netns.as_str()).collect();
        assert_eq!(netns, ["2", "other"]);
        assert_eq!(s.namespaces[1].listen_overflows, 4);
        assert_eq!(
            s.unlisted,
            Unlisted {
                listeners: 0,
                outbound: 2,
                namespaces: 2
            }
        );
    }
}
