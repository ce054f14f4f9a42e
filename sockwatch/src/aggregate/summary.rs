//! The summary the aggregator produces (`--format json`, `report`, the live table).
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use serde_json::{Map, Value};

use sockwatch_common::{ListenerCounts, OutboundCounts};

use super::{
    Aggregator, Carried, CountSide, FD_WARN_PERCENT, LEAK_RISES, counted, hist::Latencies,
};
use crate::{
    host::workload::{Resolver, Workload},
    kernel::decode::Family,
    kernel::loss::{Loss, Quiet},
};

impl Aggregator {
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
        let counted = self.counted.as_deref();
        let mut listeners: Vec<ListenerSummary> = self
            .listeners
            .iter()
            .map(|(k, l)| {
                let kernel = counted.and_then(|c| c.listeners.get(k));
                let count = |f: fn(&ListenerCounts) -> u64| kernel.map_or(0, |c| f(c));
                let accepted = l.accepted + count(|c| c.accepted);
                let mut accept_failures = l.accept_failures.clone();
                let mut lifetimes = std::borrow::Cow::Borrowed(&l.lifetimes);
                let mut queue_waits = std::borrow::Cow::Borrowed(&l.queue_waits);
                let mut carried = l.carried;
                let mut established_now = l.established_now;
                if let Some(c) = counted {
                    merge(&mut accept_failures, c.accept_failures.get(k));
                    if let Some(kernel) = kernel {
                        lifetimes.to_mut().add_buckets(&kernel.lifetimes);
                        queue_waits.to_mut().add_buckets(&kernel.queue_waits);
                        queue_waits.to_mut().add_sum(kernel.queue_wait_sum_ns);
                        carried.add(Carried::new(
                            kernel.bytes_in,
                            kernel.bytes_out,
                            kernel.retrans,
                        ));
                    }
                    established_now = counted::open_count(&[
                        l.established_now as i64,
                        c.listener_open(*k),
                        c.corrections.get(CountSide::Listener, *k),
                    ]);
                }
                ListenerSummary {
                    netns: k.netns,
                    port: k.port,
                    family: l.family.map(Family::as_str),
                    local_addr: l.local_addr,
                    pid: l.pid,
                    comm: l.comm.clone(),
                    owner: WorkloadSummary::of(l.workload.as_ref()),
                    accepted,
                    accepted_per_sec: per_sec(accepted),
                    established_now,
                    closed: l.closed + count(|c| c.closed),
                    accept_failures,
                    overflows: l.overflows + count(|c| c.overflows),
                    queue_depth: l.queue.map(|q| q.0),
                    backlog: l.queue.map(|q| q.1),
                    // The kernel counts every peer; events, when they come, name them too.
                    distinct_peers: (l.peers.len() as u64).max(count(|c| c.peers)),
                    lifetime_p50_ns: lifetimes.quantile(0.5),
                    lifetime_p99_ns: lifetimes.quantile(0.99),
                    queue_wait_p50_ns: queue_waits.quantile(0.5),
                    queue_wait_p99_ns: queue_waits.quantile(0.99),
                    bytes_in: carried.bytes_in,
                    bytes_out: carried.bytes_out,
                    retransmits: carried.retrans,
                    queue_waits: queue_waits.into_owned(),
                }
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
                let kernel = counted.and_then(|c| c.outbound.get(k));
                let count = |f: fn(&OutboundCounts) -> u64| kernel.map_or(0, f);
                let procs = counted.and_then(|c| c.processes.get(k));
                let mut failed = o.failed.clone();
                let mut open_now = o.open_now;
                let mut handshakes = std::borrow::Cow::Borrowed(&o.handshakes);
                let mut carried = o.carried;
                if let Some(kernel) = kernel {
                    handshakes.to_mut().add_buckets(&kernel.handshakes);
                    handshakes.to_mut().add_sum(kernel.handshake_sum_ns);
                    carried.add(Carried::new(
                        kernel.bytes_in,
                        kernel.bytes_out,
                        kernel.retrans,
                    ));
                }
                if let Some(c) = counted {
                    merge(&mut failed, c.connect_failures.get(k));
                    open_now = counted::open_count(&[
                        o.open_now as i64,
                        c.outbound_open(*k),
                        c.corrections.get(CountSide::Outbound, *k),
                    ]);
                }
                OutboundSummary {
                    netns: k.netns,
                    peer_port: k.port,
                    peers,
                    distinct_peers: (o.peers.len() as u64).max(count(|c| c.peers)),
                    connects: o.connects + count(|c| c.connects),
                    established: o.established + count(|c| c.established),
                    failed,
                    open_now,
                    handshake_p50_ns: handshakes.quantile(0.5),
                    handshake_p99_ns: handshakes.quantile(0.99),
                    bytes_in: carried.bytes_in,
                    bytes_out: carried.bytes_out,
                    retransmits: carried.retrans,
                    handshakes: handshakes.into_owned(),
                    processes: o
                        .processes
                        .iter()
                        .map(|(pid, p)| {
                            let kernel = procs.and_then(|m| m.get(pid));
                            OutboundProcess {
                                pid: *pid,
                                comm: p.comm.clone(),
                                owner: WorkloadSummary::of(p.workload.as_ref()),
                                connects: p.connects + kernel.map_or(0, |c| c.connects),
                                open_now: counted::open_count(&[
                                    p.open_now as i64,
                                    kernel.map_or(0, |c| c.open),
                                ]),
                                leak_suspect: p.history.len() > LEAK_RISES
                                    && p.history.windows(2).all(|w| w[1] > w[0]),
                            }
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
            open_corrections: self
                .corrections()
                .map(|(adopted, released)| OpenCorrections { adopted, released }),
        }
    }
}

/// Adds `more`'s counts to `into`'s.
fn merge(into: &mut BTreeMap<String, u64>, more: Option<&BTreeMap<String, u64>>) {
    for (name, n) in more.into_iter().flatten() {
        *into.entry(name.clone()).or_default() += n;
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
    /// When counting in the kernel (live `top`): how the last checks against the kernel's
    /// socket table corrected the open counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_corrections: Option<OpenCorrections>,
}

/// Open counts set right by a check against the kernel's socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpenCorrections {
    /// Connections the table held that no event had reported (counted open from then on).
    pub adopted: u64,
    /// Connections counted open that the table no longer held (their close was missed).
    pub released: u64,
}

impl Summary {
    /// The summary as `--format json` prints it, with what the kernel let the run see
    /// (`Aggregator::capabilities`).
    pub fn with_capabilities<'a>(
        &'a self,
        capabilities: Option<&'a Map<String, Value>>,
    ) -> SummaryOutput<'a> {
        SummaryOutput {
            summary: self,
            capabilities,
        }
    }
}

/// What `--format json` prints (`top` at its end, `report`): the summary's keys, then
/// `capabilities`, the header's object (`{"<name>": {"available": …, "via": …, "note": …}}`),
/// absent when unknown (a recording from before capabilities were probed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SummaryOutput<'a> {
    #[serde(flatten)]
    pub summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<&'a Map<String, Value>>,
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
    #[serde(flatten)]
    pub owner: WorkloadSummary,
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
    /// Accept-queue wait of accepted connections (from their arrival in the queue to accept()).
    pub queue_wait_p50_ns: Option<u64>,
    pub queue_wait_p99_ns: Option<u64>,
    /// Of closed connections: data bytes received and sent, segments retransmitted.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retransmits: u64,
    /// The waits themselves, for the metrics' histogram.
    #[serde(skip)]
    pub queue_waits: Latencies,
}

/// The owner's workload in a summary row: the events' keys (null where unknown) and
/// `workload`, its short name (see [`Resolver::short_name`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub workload: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod: Option<String>,
}

impl WorkloadSummary {
    fn of(w: Option<&Workload>) -> Self {
        let Some(w) = w else {
            return Self::default();
        };
        Self {
            workload: Resolver::short_name(w),
            cgroup: w.cgroup.clone(),
            unit: w.unit.clone(),
            container_id: w.container_id.clone(),
            pod_namespace: w.pod_namespace.clone(),
            pod: w.pod.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundSummary {
    pub netns: u32,
    pub peer_port: u16,
    /// Peer addresses, when they were seen one by one (events); empty when counted in the
    /// kernel, which keeps only their number.
    pub peers: Vec<IpAddr>,
    pub distinct_peers: u64,
    pub connects: u64,
    pub established: u64,
    pub failed: BTreeMap<String, u64>,
    pub open_now: u64,
    /// Handshake time of established connections (connect() to ESTABLISHED).
    pub handshake_p50_ns: Option<u64>,
    pub handshake_p99_ns: Option<u64>,
    /// Of closed connections: data bytes received and sent, segments retransmitted.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retransmits: u64,
    pub processes: Vec<OutboundProcess>,
    /// The handshake times themselves, for the metrics' histogram.
    #[serde(skip)]
    pub handshakes: Latencies,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub owner: WorkloadSummary,
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
