//! The summary the aggregator produces (`--format json`, `report`, the live table).
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Aggregator, FD_WARN_PERCENT, LEAK_RISES};
use crate::{
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
