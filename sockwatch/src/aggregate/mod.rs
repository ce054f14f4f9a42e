//! Per-port aggregation: a pure function of the records sockwatch exports.
//!
//! The live view and `sockwatch report` feed the same records, in the same order, through this
//! module, so their summaries agree exactly. Nothing here reads the clock or the host.
pub mod capabilities;
mod counted;
pub mod expiry;
pub(crate) mod hist;
mod input;
mod live;
mod summary;

pub use counted::Side as CountSide;
pub use counted::{HeldOpen, OpenByPort};
pub use expiry::Expiry;
pub use input::{Carried, Conn, Existing, Expired, FdSample, NetstatSample, Obs, QueueSample};
pub use summary::{
    ListenerSummary, LossSummary, NamespaceSummary, OpenCorrections, OutboundProcess,
    OutboundSummary, ProcessSummary, Summary, SummaryOutput, WorkloadSummary,
};

use std::{collections::BTreeMap, net::IpAddr};

// Hashed per event (see `live`).
use foldhash::HashSet;

use crate::{
    host::workload::Workload,
    kernel::decode::{Direction, EventKind, Family},
    kernel::loss::{Loss, Quiet},
};
use counted::Counted;
use hist::{Histogram, Latencies};
use live::{ConnKey, Live, Side};

/// A process is warned about at this share of its descriptor limit.
pub const FD_WARN_PERCENT: u64 = 80;
/// An outbound open count that rose at this many consecutive second boundaries is a likely leak.
const LEAK_RISES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortKey {
    netns: u32,
    port: u16,
}

#[derive(Debug, Default)]
struct Listener {
    family: Option<Family>,
    local_addr: Option<IpAddr>,
    pid: Option<u32>,
    comm: Option<String>,
    /// The owner's workload, from the event that named the owner (its cgroup resolved).
    workload: Option<Workload>,
    accepted: u64,
    established_now: u64,
    closed: u64,
    accept_failures: BTreeMap<String, u64>,
    overflows: u64,
    queue: Option<(u32, u32)>,
    peers: HashSet<IpAddr>,
    lifetimes: Histogram,
    queue_waits: Latencies,
    carried: Carried,
}

#[derive(Debug, Default)]
struct ProcessOut {
    comm: Option<String>,
    workload: Option<Workload>,
    connects: u64,
    open_now: u64,
    /// Open counts at the last second boundaries, newest last.
    history: Vec<u64>,
}

#[derive(Debug, Default)]
struct Outbound {
    connects: u64,
    established: u64,
    failed: BTreeMap<String, u64>,
    open_now: u64,
    peers: HashSet<IpAddr>,
    processes: BTreeMap<Option<u32>, ProcessOut>,
    handshakes: Latencies,
    carried: Carried,
}

#[derive(Debug, Default)]
struct Namespace {
    first: Option<(u64, u64)>,
    last: (u64, u64),
    /// Sum of increases between samples (a counter that goes down was reset).
    overflows: u64,
    drops: u64,
    /// Overflow events with a listener seen since the last sample (already counted there).
    overflow_events: u64,
    /// Overflows no single listener can be blamed for.
    unattributed: u64,
}

/// The aggregation state.
#[derive(Debug, Default)]
pub struct Aggregator {
    first_ns: Option<i64>,
    last_ns: Option<i64>,
    events: u64,
    listeners: BTreeMap<PortKey, Listener>,
    outbound: BTreeMap<PortKey, Outbound>,
    live: Live,
    namespaces: BTreeMap<u32, Namespace>,
    fds: BTreeMap<u32, (Option<String>, u64, u64)>,
    /// Second (unix) of the last leak-history sample.
    leak_second: Option<i64>,
    stats: Option<Quiet>,
    loss: Option<Loss>,
    /// Open connections expired because the kernel no longer had them (missed closes).
    expired: u64,
    /// What the kernel let the run see (the header's `capabilities`), when known.
    capabilities: Option<serde_json::Map<String, serde_json::Value>>,
    /// The in-kernel counters, when the live run counts there (see [`Aggregator::count_in_kernel`]).
    counted: Option<Box<Counted>>,
}

/// The listening port an accepted connection counts on.
fn passive_port(k: &ConnKey) -> PortKey {
    PortKey {
        netns: k.netns,
        port: k.local.1,
    }
}

/// The remote port an outbound connection counts on.
fn active_port(k: &ConnKey) -> PortKey {
    PortKey {
        netns: k.netns,
        port: k.peer.1,
    }
}

/// Whether the in-kernel counters hold this event (so the aggregator must not count it again).
fn counted_in_kernel(o: &Obs) -> bool {
    match o.kind {
        EventKind::Accept
        | EventKind::AcceptFailed
        | EventKind::Connect
        | EventKind::ConnectFailed
        | EventKind::Overflow => true,
        EventKind::Established | EventKind::Close => o.tracked,
        EventKind::Listen | EventKind::ListenStop | EventKind::State(_) => false,
    }
}

fn conn_key(o: &Obs) -> ConnKey {
    ConnKey {
        netns: o.netns,
        local: (o.local_addr, o.local_port),
        peer: (o.peer_addr, o.peer_port),
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    fn saw(&mut self, time_ns: i64) {
        self.first_ns = Some(self.first_ns.map_or(time_ns, |f| f.min(time_ns)));
        self.last_ns = Some(self.last_ns.map_or(time_ns, |l| l.max(time_ns)));
        if self.counted.is_none() {
            self.leak_sample(time_ns);
        }
    }

    /// At a second boundary, each process's outbound open count joins its history (the leak
    /// flag).
    fn leak_sample(&mut self, time_ns: i64) {
        let second = time_ns.div_euclid(1_000_000_000);
        if self.leak_second.is_some_and(|s| second > s) {
            for (key, out) in &mut self.outbound {
                let counted = self.counted.as_ref().and_then(|c| c.processes.get(key));
                for (pid, p) in &mut out.processes {
                    let kernel = counted.and_then(|c| c.get(pid)).map_or(0, |c| c.open);
                    p.history
                        .push(counted::open_count(&[p.open_now as i64, kernel]));
                    if p.history.len() > LEAK_RISES + 1 {
                        p.history.remove(0);
                    }
                }
            }
        }
        if self.leak_second.is_none_or(|s| second > s) {
            self.leak_second = Some(second);
        }
    }

    fn listener(&mut self, netns: u32, port: u16) -> &mut Listener {
        self.listeners.entry(PortKey { netns, port }).or_default()
    }

    fn outbound(&mut self, netns: u32, port: u16) -> &mut Outbound {
        self.outbound.entry(PortKey { netns, port }).or_default()
    }

    /// A listening socket seen (listen event or start-up snapshot): where and whose it is.
    fn listening(
        &mut self,
        netns: u32,
        port: u16,
        family: Family,
        addr: IpAddr,
        pid: Option<u32>,
        comm: Option<&str>,
    ) {
        let l = self.listener(netns, port);
        l.family = Some(family);
        l.local_addr = Some(addr);
        l.pid = pid.or(l.pid);
        if let Some(c) = comm {
            l.comm = Some(c.to_string());
        }
    }

    /// An event's direction; for a socket the kernel did not track (so it does not say), a
    /// local port that listens tells a passive one, as for the sockets of the snapshot.
    fn direction(&self, o: &Obs) -> Option<Direction> {
        let listens = || {
            self.listeners.contains_key(&PortKey {
                netns: o.netns,
                port: o.local_port,
            })
        };
        match o.direction {
            None if listens() => Some(Direction::Passive),
            d => d,
        }
    }

    /// Feeds one connection event.
    pub fn event(&mut self, o: &Obs) {
        self.saw(o.time_ns);
        self.events += 1;
        let key = conn_key(o);
        if self.counted.is_some() && counted_in_kernel(o) {
            // Still followed one by one when they come (a recording run), so that a close the
            // ring lost is found and recorded (`expired`), for `report`; the counts are the
            // kernel's.
            match o.kind {
                EventKind::Established => {
                    self.live.insert(&key, Side::Tracked);
                }
                EventKind::Close => {
                    self.forget(&key);
                }
                // The kernel keeps only their number; the addresses are listed when seen, and
                // the process's row is made as `report` makes it from the same event (so that
                // its workload can be named from it).
                EventKind::Connect => {
                    let out = self.outbound(o.netns, o.peer_port);
                    out.peers.insert(o.peer_addr);
                    let p = out.processes.entry(o.pid).or_default();
                    if p.comm.is_none() {
                        p.comm = o.comm.map(str::to_string);
                    }
                }
                EventKind::Accept => {
                    self.listener(o.netns, o.local_port)
                        .peers
                        .insert(o.peer_addr);
                }
                _ => {}
            }
            return;
        }
        match o.kind {
            EventKind::Listen => {
                self.listening(o.netns, o.local_port, o.family, o.local_addr, o.pid, o.comm)
            }
            EventKind::ListenStop => {}
            EventKind::Accept => {
                let l = self.listener(o.netns, o.local_port);
                l.accepted += 1;
                l.peers.insert(o.peer_addr);
                if let Some(w) = o.queue_wait_ns {
                    l.queue_waits.record(w);
                }
                if l.pid.is_none() {
                    l.pid = o.pid;
                    l.comm = o.comm.map(str::to_string);
                }
            }
            EventKind::AcceptFailed => {
                let l = self.listener(o.netns, o.local_port);
                *l.accept_failures
                    .entry(o.errno.unwrap_or("unknown").to_string())
                    .or_default() += 1;
            }
            EventKind::Established => match self.direction(o) {
                Some(Direction::Passive) => {
                    if self.live.insert(&key, Side::Passive) {
                        self.listener(o.netns, o.local_port).established_now += 1;
                    }
                }
                _ => {
                    let out = self.outbound.entry(active_port(&key)).or_default();
                    out.established += 1;
                    if let Some(h) = o.handshake_ns {
                        out.handshakes.record(h);
                    }
                    if self.live.insert(&key, Side::Active(o.pid)) {
                        out.open_now += 1;
                        out.processes.entry(o.pid).or_default().open_now += 1;
                    }
                }
            },
            EventKind::Connect => {
                let out = self.outbound(o.netns, o.peer_port);
                out.connects += 1;
                out.peers.insert(o.peer_addr);
                let p = out.processes.entry(o.pid).or_default();
                p.connects += 1;
                if p.comm.is_none() {
                    p.comm = o.comm.map(str::to_string);
                }
            }
            EventKind::ConnectFailed => {
                let out = self.outbound(o.netns, o.peer_port);
                *out.failed
                    .entry(o.reason.unwrap_or("error").to_string())
                    .or_default() += 1;
            }
            EventKind::Close => self.close(o, key),
            EventKind::Overflow => {
                self.listener(o.netns, o.local_port).overflows += 1;
                self.namespaces.entry(o.netns).or_default().overflow_events += 1;
            }
            // Raw transitions (`trace --states`) are not summarised.
            EventKind::State(_) => {}
        }
    }

    /// Names the workload of the owner of `o`, fed just before (live, its cgroup resolved; in
    /// a recording, the event's workload keys): as pid and comm are, a listener's by its
    /// listen, else its first accept, an outbound process's by its first connect. Rows are
    /// never made here, so a filtered or counted event adds none.
    pub fn name_workload(&mut self, o: &Obs, w: &Workload) {
        let key = |port| PortKey {
            netns: o.netns,
            port,
        };
        match o.kind {
            EventKind::Listen => {
                if let Some(l) = self.listeners.get_mut(&key(o.local_port)) {
                    l.workload = Some(w.clone());
                }
            }
            EventKind::Accept => {
                if let Some(l) = self.listeners.get_mut(&key(o.local_port))
                    && l.workload.is_none()
                {
                    l.workload = Some(w.clone());
                }
            }
            EventKind::Connect => {
                if let Some(p) = self
                    .outbound
                    .get_mut(&key(o.peer_port))
                    .and_then(|out| out.processes.get_mut(&o.pid))
                    && p.workload.is_none()
                {
                    p.workload = Some(w.clone());
                }
            }
            _ => {}
        }
    }

    /// Takes a connection out of the open counts; returns its side if it was open.
    fn forget(&mut self, key: &ConnKey) -> Option<Side> {
        let side = self.live.remove(key)?;
        match side {
            Side::Passive => {
                let l = self.listeners.entry(passive_port(key)).or_default();
                l.established_now = l.established_now.saturating_sub(1);
            }
            Side::Active(pid) => {
                let out = self.outbound.entry(active_port(key)).or_default();
                out.open_now = out.open_now.saturating_sub(1);
                let p = out.processes.entry(pid).or_default();
                p.open_now = p.open_now.saturating_sub(1);
            }
            // Counted in the kernel.
            Side::Tracked => {}
        }
        Some(side)
    }

    /// A connection whose close was missed, found gone from the kernel (the `expired`
    /// record): no longer open. Counted when it was open here (a file read with a narrower
    /// filter may not have it).
    pub fn expire(&mut self, e: &Expired) {
        self.saw(e.time_ns);
        let c = &e.conn;
        let key = ConnKey {
            netns: c.netns,
            local: (c.local_addr, c.local_port),
            peer: (c.peer_addr, c.peer_port),
        };
        if self.forget(&key).is_some() {
            self.expired += 1;
        }
    }

    /// Connections open now, as far as the events and the snapshot tell.
    pub fn open_connections(&self) -> impl Iterator<Item = Conn> + '_ {
        self.live.keys().map(|k| Conn {
            netns: k.netns,
            local_addr: k.local.0,
            local_port: k.local.1,
            peer_addr: k.peer.0,
            peer_port: k.peer.1,
        })
    }

    /// Whether the aggregator counts `c` as open.
    pub fn is_open(&self, c: &Conn) -> bool {
        self.live.contains(&ConnKey {
            netns: c.netns,
            local: (c.local_addr, c.local_port),
            peer: (c.peer_addr, c.peer_port),
        })
    }

    /// Connections expired so far (see [`Aggregator::expire`]).
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn close(&mut self, o: &Obs, key: ConnKey) {
        match self.forget(&key) {
            Some(Side::Passive) => {
                let l = self.listeners.entry(passive_port(&key)).or_default();
                l.closed += 1;
                if let Some(d) = o.duration_ns {
                    l.lifetimes.record(d);
                }
                l.carried.add(o.carried.unwrap_or_default());
            }
            // What it carried goes to the remote port, as the kernel counts it.
            Some(Side::Active(_)) => {
                let out = self.outbound.entry(active_port(&key)).or_default();
                out.carried.add(o.carried.unwrap_or_default());
            }
            Some(Side::Tracked) => {}
            // Never seen established (failed, or older than sockwatch without a snapshot):
            // a passive one still counts as closed on its port.
            None => {
                if o.direction == Some(Direction::Passive) {
                    let l = self.listener(o.netns, o.local_port);
                    l.closed += 1;
                    if let Some(d) = o.duration_ns {
                        l.lifetimes.record(d);
                    }
                    l.carried.add(o.carried.unwrap_or_default());
                }
            }
        }
    }

    /// Feeds a socket that existed at start-up: listeners appear, connections count as open.
    pub fn existing(&mut self, e: &Existing) {
        self.saw(e.time_ns);
        if e.listening {
            self.listening(e.netns, e.local_port, e.family, e.local_addr, e.pid, e.comm);
            return;
        }
        let key = ConnKey {
            netns: e.netns,
            local: (e.local_addr, e.local_port),
            peer: (e.peer_addr, e.peer_port),
        };
        let local_listens = self.listeners.contains_key(&PortKey {
            netns: e.netns,
            port: e.local_port,
        });
        if local_listens {
            if self.live.insert(&key, Side::Passive) {
                self.listener(e.netns, e.local_port).established_now += 1;
            }
        } else if self.live.insert(&key, Side::Active(e.pid)) {
            let out = self.outbound.entry(active_port(&key)).or_default();
            out.open_now += 1;
            let p = out.processes.entry(e.pid).or_default();
            p.open_now += 1;
            if p.comm.is_none() {
                p.comm = e.comm.map(str::to_string);
            }
        }
    }

    pub fn queue(&mut self, q: &QueueSample) {
        self.saw(q.time_ns);
        self.listener(q.netns, q.local_port).queue = Some((q.depth, q.backlog));
    }

    /// Overflows at SYN time have no event; the namespace counter sees them. Whatever it counts
    /// beyond the overflow events is blamed on the namespace's one full listener, if there is
    /// exactly one (only a full accept queue overflows); otherwise it stays unattributed.
    pub fn netstat(&mut self, s: &NetstatSample) {
        self.saw(s.time_ns);
        let ns = self.namespaces.entry(s.netns).or_default();
        if let Some(c) = &mut self.counted {
            // The kernel's overflow events on this namespace's listeners since its last sample.
            let total = c.overflows_in(s.netns);
            let before = c.overflows_at_sample.insert(s.netns, total).unwrap_or(0);
            ns.overflow_events += total.saturating_sub(before);
        }
        let now = (s.listen_overflows, s.listen_drops);
        let mut unexplained = 0;
        match ns.first {
            None => ns.first = Some(now),
            Some(_) => {
                // A counter that went down was reset (namespace re-created): count from zero.
                let inc = |new: u64, old: u64| if new >= old { new - old } else { new };
                let overflows = inc(now.0, ns.last.0);
                ns.overflows = ns.overflows.saturating_add(overflows);
                ns.drops = ns.drops.saturating_add(inc(now.1, ns.last.1));
                unexplained = overflows.saturating_sub(ns.overflow_events);
            }
        }
        ns.last = now;
        ns.overflow_events = 0;
        if unexplained == 0 {
            return;
        }
        let mut full = self
            .listeners
            .iter_mut()
            .filter(|(k, l)| k.netns == s.netns && l.queue.is_some_and(|(d, b)| d > b));
        match (full.next(), full.next()) {
            (Some((_, l)), None) => l.overflows = l.overflows.saturating_add(unexplained),
            _ => {
                if let Some(ns) = self.namespaces.get_mut(&s.netns) {
                    ns.unattributed = ns.unattributed.saturating_add(unexplained);
                }
            }
        }
    }

    pub fn fds(&mut self, f: &FdSample) {
        self.saw(f.time_ns);
        self.fds
            .insert(f.pid, (f.comm.map(str::to_string), f.open, f.limit));
    }

    /// Processes that own watched sockets (listeners and outbound connections).
    pub fn owners(&self) -> std::collections::BTreeSet<u32> {
        self.listeners
            .values()
            .filter_map(|l| l.pid)
            .chain(
                self.outbound
                    .values()
                    .flat_map(|o| o.processes.keys().filter_map(|p| *p)),
            )
            .collect()
    }

    /// The run's final counts (the `stats` record).
    pub fn set_stats(&mut self, q: Quiet) {
        self.stats = Some(q);
    }

    /// The run's losses (the `lost` record).
    pub fn set_loss(&mut self, l: Loss) {
        self.loss = Some(l);
    }

    /// What the kernel let the run see: `Capabilities::to_json`'s object (anything else leaves
    /// it unknown).
    pub fn set_capabilities(&mut self, caps: serde_json::Value) {
        self.capabilities = match caps {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        };
    }

    /// Another file's header capabilities: merged with those held (see [`capabilities`]).
    pub fn merge_capabilities(&mut self, caps: serde_json::Map<String, serde_json::Value>) {
        match &mut self.capabilities {
            Some(held) => capabilities::merge(held, caps),
            None => self.capabilities = Some(caps),
        }
    }

    /// The capabilities held, if any.
    pub fn capabilities(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.capabilities.as_ref()
    }
}

#[cfg(test)]
mod counted_tests;
#[cfg(test)]
mod tests;
