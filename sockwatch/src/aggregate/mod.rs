//! Per-port aggregation: a pure function of the records sockwatch exports.
//!
//! The live view and `sockwatch report` feed the same records, in the same order, through this
//! module, so their summaries agree exactly. Nothing here reads the clock or the host.
mod hist;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    decode::{Direction, EventKind, Family},
    loss::{Loss, Quiet},
};
use hist::Histogram;

/// One connection event, as the aggregator needs it (from a kernel event or an exported line).
#[derive(Debug, Clone, Copy)]
pub struct Obs<'a> {
    /// Unix time, nanoseconds.
    pub time_ns: i64,
    pub kind: EventKind,
    pub netns: u32,
    pub family: Family,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub direction: Option<Direction>,
    pub duration_ns: Option<u64>,
    /// Error name of failure events (`EMFILE`).
    pub errno: Option<&'a str>,
    /// connect_failed reason (`refused`).
    pub reason: Option<&'a str>,
}

/// A socket that existed when sockwatch started.
#[derive(Debug, Clone, Copy)]
pub struct Existing<'a> {
    pub time_ns: i64,
    pub netns: u32,
    pub family: Family,
    pub listening: bool,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
}

/// A listener's accept queue, sampled.
#[derive(Debug, Clone, Copy)]
pub struct QueueSample {
    pub time_ns: i64,
    pub netns: u32,
    pub local_port: u16,
    pub depth: u32,
    pub backlog: u32,
}

/// A namespace's cumulative TcpExt ListenOverflows / ListenDrops, sampled.
#[derive(Debug, Clone, Copy)]
pub struct NetstatSample {
    pub time_ns: i64,
    pub netns: u32,
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

/// A process's descriptors against its limit, sampled.
#[derive(Debug, Clone, Copy)]
pub struct FdSample<'a> {
    pub time_ns: i64,
    pub pid: u32,
    pub comm: Option<&'a str>,
    pub open: u64,
    pub limit: u64,
}

/// A process is warned about at this share of its descriptor limit.
pub const FD_WARN_PERCENT: u64 = 80;
/// An outbound open count that rose at this many consecutive second boundaries is a likely leak.
const LEAK_RISES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortKey {
    netns: u32,
    port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    netns: u32,
    local: (IpAddr, u16),
    peer: (IpAddr, u16),
}

/// Which table a live connection counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepted on this listening port.
    Passive(PortKey),
    /// Outbound to this remote port, owned by this process (if known).
    Active(PortKey, Option<u32>),
}

#[derive(Debug, Default)]
struct Listener {
    family: Option<Family>,
    local_addr: Option<IpAddr>,
    pid: Option<u32>,
    comm: Option<String>,
    accepted: u64,
    established_now: u64,
    closed: u64,
    accept_failures: BTreeMap<String, u64>,
    overflows: u64,
    queue: Option<(u32, u32)>,
    peers: HashSet<IpAddr>,
    lifetimes: Histogram,
}

#[derive(Debug, Default)]
struct ProcessOut {
    comm: Option<String>,
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
    live: HashMap<ConnKey, Side>,
    namespaces: BTreeMap<u32, Namespace>,
    fds: BTreeMap<u32, (Option<String>, u64, u64)>,
    /// Second (unix) of the last leak-history sample.
    leak_second: Option<i64>,
    stats: Option<Quiet>,
    loss: Option<Loss>,
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
        let second = time_ns.div_euclid(1_000_000_000);
        if self.leak_second.is_some_and(|s| second > s) {
            for out in self.outbound.values_mut() {
                for p in out.processes.values_mut() {
                    p.history.push(p.open_now);
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

    /// Feeds one connection event.
    pub fn event(&mut self, o: &Obs) {
        self.saw(o.time_ns);
        self.events += 1;
        let key = conn_key(o);
        match o.kind {
            EventKind::Listen => {
                self.listening(o.netns, o.local_port, o.family, o.local_addr, o.pid, o.comm)
            }
            EventKind::ListenStop => {}
            EventKind::Accept => {
                let l = self.listener(o.netns, o.local_port);
                l.accepted += 1;
                l.peers.insert(o.peer_addr);
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
            EventKind::Established => match o.direction {
                Some(Direction::Passive) => {
                    let side = Side::Passive(PortKey {
                        netns: o.netns,
                        port: o.local_port,
                    });
                    if self.live.insert(key, side).is_none() {
                        self.listener(o.netns, o.local_port).established_now += 1;
                    }
                }
                _ => {
                    let port = PortKey {
                        netns: o.netns,
                        port: o.peer_port,
                    };
                    let out = self.outbound.entry(port).or_default();
                    out.established += 1;
                    if self.live.insert(key, Side::Active(port, o.pid)).is_none() {
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
        }
    }

    fn close(&mut self, o: &Obs, key: ConnKey) {
        match self.live.remove(&key) {
            Some(Side::Passive(port)) => {
                let l = self.listeners.entry(port).or_default();
                l.established_now = l.established_now.saturating_sub(1);
                l.closed += 1;
                if let Some(d) = o.duration_ns {
                    l.lifetimes.record(d);
                }
            }
            Some(Side::Active(port, pid)) => {
                let out = self.outbound.entry(port).or_default();
                out.open_now = out.open_now.saturating_sub(1);
                let p = out.processes.entry(pid).or_default();
                p.open_now = p.open_now.saturating_sub(1);
            }
            // Never seen established (failed, or older than sockwatch without a snapshot):
            // a passive one still counts as closed on its port.
            None => {
                if o.direction == Some(Direction::Passive) {
                    let l = self.listener(o.netns, o.local_port);
                    l.closed += 1;
                    if let Some(d) = o.duration_ns {
                        l.lifetimes.record(d);
                    }
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
            let port = PortKey {
                netns: e.netns,
                port: e.local_port,
            };
            if self.live.insert(key, Side::Passive(port)).is_none() {
                self.listener(e.netns, e.local_port).established_now += 1;
            }
        } else {
            let port = PortKey {
                netns: e.netns,
                port: e.peer_port,
            };
            if self.live.insert(key, Side::Active(port, e.pid)).is_none() {
                let out = self.outbound.entry(port).or_default();
                out.open_now += 1;
                let p = out.processes.entry(e.pid).or_default();
                p.open_now += 1;
                if p.comm.is_none() {
                    p.comm = e.comm.map(str::to_string);
                }
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

    /// The summary of everything fed so far.
    pub fn summary(&self) -> Summary {
        let seconds = match (self.first_ns, self.last_ns) {
            (Some(f), Some(l)) => (i128::from(l) - i128::from(f)) as f64 / 1e9,
            _ => 0.0,
        };
        let per_sec = |n: u64| {
            if seconds > 0.0 {
                (n as f64 / seconds * 1000.0).round() / 1000.0
            } else {
                0.0
            }
        };
        let mut listeners: Vec<ListenerSummary> = self
            .listeners
            .iter()
            .map(|(k, l)| ListenerSummary {
                netns: k.netns,
                port: k.port,
                family: l.family.map(Family::as_str),
                local_addr: l.local_addr,
                pid: l.pid,
                comm: l.comm.clone(),
                accepted: l.accepted,
                accepted_per_sec: per_sec(l.accepted),
                established_now: l.established_now,
                closed: l.closed,
                accept_failures: l.accept_failures.clone(),
                overflows: l.overflows,
                queue_depth: l.queue.map(|q| q.0),
                backlog: l.queue.map(|q| q.1),
                distinct_peers: l.peers.len() as u64,
                lifetime_p50_ns: l.lifetimes.quantile(0.5),
                lifetime_p99_ns: l.lifetimes.quantile(0.99),
            })
            .collect();
        listeners.sort_by(|a, b| {
            b.accepted
                .cmp(&a.accepted)
                .then(b.established_now.cmp(&a.established_now))
                .then((a.netns, a.port).cmp(&(b.netns, b.port)))
        });
        let mut outbound: Vec<OutboundSummary> = self
            .outbound
            .iter()
            .map(|(k, o)| {
                let mut peers: Vec<IpAddr> = o.peers.iter().copied().collect();
                peers.sort();
                OutboundSummary {
                    netns: k.netns,
                    peer_port: k.port,
                    peers,
                    connects: o.connects,
                    established: o.established,
                    failed: o.failed.clone(),
                    open_now: o.open_now,
                    processes: o
                        .processes
                        .iter()
                        .map(|(pid, p)| OutboundProcess {
                            pid: *pid,
                            comm: p.comm.clone(),
                            connects: p.connects,
                            open_now: p.open_now,
                            leak_suspect: p.history.len() > LEAK_RISES
                                && p.history.windows(2).all(|w| w[1] > w[0]),
                        })
                        .collect(),
                }
            })
            .collect();
        outbound.sort_by(|a, b| {
            b.connects
                .cmp(&a.connects)
                .then((a.netns, a.peer_port).cmp(&(b.netns, b.peer_port)))
        });
        Summary {
            seconds: (seconds * 1000.0).round() / 1000.0,
            events: self.events,
            listeners,
            outbound,
            namespaces: self
                .namespaces
                .iter()
                .map(|(netns, n)| NamespaceSummary {
                    netns: *netns,
                    listen_overflows: n.overflows,
                    listen_drops: n.drops,
                    unattributed_overflows: n.unattributed,
                })
                .collect(),
            processes: self
                .fds
                .iter()
                .map(|(pid, (comm, open, limit))| ProcessSummary {
                    pid: *pid,
                    comm: comm.clone(),
                    open_fds: *open,
                    fd_limit: *limit,
                    fd_warning: *limit > 0
                        && u128::from(*open) * 100
                            >= u128::from(*limit) * u128::from(FD_WARN_PERCENT),
                })
                .collect(),
            stats: self.stats,
            lost: self.loss.map(|l| LossSummary {
                total: l.total(),
                by_cause: l,
            }),
        }
    }
}

/// The per-port summary (`--format json` and `report`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Time covered by the records, first to last.
    pub seconds: f64,
    /// Connection events aggregated.
    pub events: u64,
    /// Listening ports, busiest first.
    pub listeners: Vec<ListenerSummary>,
    /// Remote ports of outbound connections, busiest first.
    pub outbound: Vec<OutboundSummary>,
    /// Per network namespace: TcpExt ListenOverflows/ListenDrops since start.
    pub namespaces: Vec<NamespaceSummary>,
    /// Owners of watched sockets: descriptors against their limit.
    pub processes: Vec<ProcessSummary>,
    /// Normal outcomes without events (known at the end of a run).
    pub stats: Option<Quiet>,
    /// Events lost, by cause (known at the end of a run).
    pub lost: Option<LossSummary>,
}

/// The loss counters with their total, as in the `lost` record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LossSummary {
    pub total: u64,
    #[serde(flatten)]
    pub by_cause: Loss,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerSummary {
    pub netns: u32,
    pub port: u16,
    pub family: Option<&'static str>,
    pub local_addr: Option<IpAddr>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub accepted: u64,
    pub accepted_per_sec: f64,
    pub established_now: u64,
    pub closed: u64,
    pub accept_failures: BTreeMap<String, u64>,
    /// Connections dropped because the accept queue was full: the kernel's overflow events,
    /// plus the namespace's SYN-time overflows while this was its only full listener.
    pub overflows: u64,
    pub queue_depth: Option<u32>,
    pub backlog: Option<u32>,
    pub distinct_peers: u64,
    pub lifetime_p50_ns: Option<u64>,
    pub lifetime_p99_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundSummary {
    pub netns: u32,
    pub peer_port: u16,
    pub peers: Vec<IpAddr>,
    pub connects: u64,
    pub established: u64,
    pub failed: BTreeMap<String, u64>,
    pub open_now: u64,
    pub processes: Vec<OutboundProcess>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub connects: u64,
    pub open_now: u64,
    /// Its open count rose at each of the last second boundaries: a likely connection leak.
    pub leak_suspect: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceSummary {
    pub netns: u32,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    /// Overflows while no single listener of the namespace had a full queue at a sample.
    pub unattributed_overflows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: Option<String>,
    pub open_fds: u64,
    pub fd_limit: u64,
    /// At or above FD_WARN_PERCENT of the limit: "too many open files" ahead.
    pub fd_warning: bool,
}

#[cfg(test)]
mod tests;
