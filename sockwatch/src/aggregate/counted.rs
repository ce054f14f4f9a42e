//! The in-kernel counters, as the aggregator holds them when a live run counts in the kernel
//! (`top`).
//!
//! The kernel counts every event of a socket in its socket map ("tracked") as the event
//! passes, so these counts stay exact whatever the ring buffer loses. Untracked sockets (those
//! open before sockwatch started, or that did not fit in the socket map) still reach the
//! aggregator as events and the start-up snapshot, and are counted there as before: the summary
//! adds both. The open counts are then corrected at each check against the kernel's socket
//! table ([`Corrections`]).
use std::collections::BTreeMap;

use sockwatch_common::{ListenerCounts, OutboundCounts, ProcessCounts, side};

use super::{PortKey, live::ConnKey};
use crate::kernel::{
    counts::KernelCounts,
    decode::{connect_failure_reason, errno_name},
};

#[derive(Debug, Default)]
pub(super) struct Counted {
    pub(super) listeners: BTreeMap<PortKey, Box<ListenerCounts>>,
    pub(super) outbound: BTreeMap<PortKey, OutboundCounts>,
    /// By errno name, as the events name them.
    pub(super) accept_failures: BTreeMap<PortKey, BTreeMap<String, u64>>,
    /// By reason, as the events name them.
    pub(super) connect_failures: BTreeMap<PortKey, BTreeMap<String, u64>>,
    pub(super) processes: BTreeMap<PortKey, BTreeMap<Option<u32>, ProcessCounts>>,
    pub(super) corrections: Corrections,
    /// Overflows counted per namespace at its last TcpExt sample (see `Aggregator::netstat`).
    pub(super) overflows_at_sample: BTreeMap<u32, u64>,
}

/// Which open count a correction applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Listener,
    Outbound,
}

/// What the kernel's socket table held, at a check, beyond the open counts (positive: open
/// connections no event reported, adopted) or short of them (negative: closes no event
/// reported), per side and port.
#[derive(Debug, Default, Clone)]
pub(super) struct Corrections {
    by_port: BTreeMap<(Side, PortKey), i64>,
}

impl Corrections {
    pub(super) fn get(&self, side: Side, port: PortKey) -> i64 {
        self.by_port.get(&(side, port)).copied().unwrap_or(0)
    }

    pub(super) fn set(&mut self, side: Side, port: PortKey, delta: i64) {
        if delta == 0 {
            self.by_port.remove(&(side, port));
        } else {
            self.by_port.insert((side, port), delta);
        }
    }

    /// Connections counted open only because the kernel's table had them.
    pub(super) fn adopted(&self) -> u64 {
        self.by_port.values().map(|&d| d.max(0) as u64).sum()
    }

    /// Connections no longer counted open only because the kernel's table lacked them.
    pub(super) fn released(&self) -> u64 {
        self.by_port
            .values()
            .map(|&d| d.min(0).unsigned_abs())
            .sum()
    }
}

impl Counted {
    /// Takes the counters as read now (they only ever grow, but for the open counts).
    pub(super) fn replace(&mut self, k: &KernelCounts) {
        self.listeners = k
            .listeners
            .iter()
            .map(|(key, c)| (port_of(key), c.clone()))
            .collect();
        self.outbound = k
            .outbound
            .iter()
            .map(|(key, c)| (port_of(key), *c))
            .collect();
        self.accept_failures.clear();
        self.connect_failures.clear();
        for (key, n) in &k.errors {
            let errno = u16::try_from(key.errno).unwrap_or(u16::MAX);
            let (table, name) = match key.port.side {
                side::LISTENER => (&mut self.accept_failures, errno_name(errno).into_owned()),
                side::OUTBOUND => (
                    &mut self.connect_failures,
                    connect_failure_reason(errno).to_string(),
                ),
                _ => continue,
            };
            *table
                .entry(port_of(&key.port))
                .or_default()
                .entry(name)
                .or_default() += n;
        }
        self.processes.clear();
        for (key, c) in &k.processes {
            let pid = (key.pid != 0).then_some(key.pid);
            self.processes
                .entry(port_of(&key.port))
                .or_default()
                .insert(pid, *c);
        }
    }

    /// The open count of tracked connections on a listening port.
    pub(super) fn listener_open(&self, port: PortKey) -> i64 {
        self.listeners.get(&port).map_or(0, |c| c.open)
    }

    /// The open count of tracked outbound connections to a remote port.
    pub(super) fn outbound_open(&self, port: PortKey) -> i64 {
        self.outbound.get(&port).map_or(0, |c| c.open)
    }

    /// Overflow events counted on the listeners of one namespace.
    pub(super) fn overflows_in(&self, netns: u32) -> u64 {
        self.listeners
            .iter()
            .filter(|(k, _)| k.netns == netns)
            .map(|(_, c)| c.overflows)
            .sum()
    }
}

fn port_of(k: &sockwatch_common::PortKey) -> PortKey {
    PortKey {
        netns: k.netns,
        port: k.port,
    }
}

/// `held + delta` as a count: the kernel's `open` can be briefly negative (a close counted on
/// one CPU before its establishment on another).
pub(super) fn open_count(parts: &[i64]) -> u64 {
    parts.iter().sum::<i64>().max(0) as u64
}

/// A command name as the kernel keeps it (NUL-padded), if any.
pub(super) fn comm(raw: &[u8; sockwatch_common::COMM_LEN]) -> Option<String> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (len > 0).then(|| String::from_utf8_lossy(&raw[..len]).into_owned())
}

/// Open connections per side and port, as one source holds them at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenByPort {
    counts: BTreeMap<(Side, u32, u16), i64>,
}

impl OpenByPort {
    pub fn add(&mut self, side: Side, netns: u32, port: u16, n: i64) {
        *self.counts.entry((side, netns, port)).or_default() += n;
    }

    pub fn get(&self, side: Side, netns: u32, port: u16) -> i64 {
        self.counts.get(&(side, netns, port)).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: OpenByPort) {
        for ((side, netns, port), n) in other.counts {
            self.add(side, netns, port, n);
        }
    }

    fn keys(&self) -> impl Iterator<Item = (Side, u32, u16)> + '_ {
        self.counts.keys().copied()
    }
}

/// The aggregator's open counts at one moment, split by who counted them: the kernel (tracked
/// sockets) and the aggregator itself (untracked ones: events and the start-up snapshot).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeldOpen {
    kernel: OpenByPort,
    untracked: OpenByPort,
}

impl HeldOpen {
    /// These counts, less untracked connections about to be expired.
    pub fn without(&self, expiring: &OpenByPort) -> HeldOpen {
        let mut held = self.clone();
        for (side, netns, port) in expiring.keys() {
            held.untracked
                .add(side, netns, port, -expiring.get(side, netns, port));
        }
        held
    }
}

impl super::Aggregator {
    /// Counts in the kernel from now on: events the in-kernel counters hold are no longer
    /// counted here, and the counters come in through [`Self::apply_counts`].
    pub fn count_in_kernel(&mut self) {
        self.counted.get_or_insert_default();
    }

    pub fn counts_in_kernel(&self) -> bool {
        self.counted.is_some()
    }

    /// The in-kernel counters as read at `time_ns` (each interval, and once at the end).
    pub fn apply_counts(&mut self, k: &KernelCounts, time_ns: i64) {
        let Some(c) = &mut self.counted else {
            return;
        };
        c.replace(k);
        // Every port the kernel counted has a row.
        for key in c.listeners.keys() {
            self.listeners.entry(*key).or_default();
        }
        for key in c.outbound.keys() {
            self.outbound.entry(*key).or_default();
        }
        for (key, procs) in &c.processes {
            let out = self.outbound.entry(*key).or_default();
            for (pid, p) in procs {
                let row = out.processes.entry(*pid).or_default();
                if row.comm.is_none() {
                    row.comm = comm(&p.comm);
                }
            }
        }
        // Not `saw`: the run's time span is that of its records, as `report` sees them.
        self.leak_sample(time_ns);
    }

    /// The open counts held now, by who counted them (for [`Self::correct_open`]).
    pub fn held_open(&self) -> HeldOpen {
        let mut held = HeldOpen::default();
        if let Some(c) = &self.counted {
            for (k, l) in &c.listeners {
                held.kernel.add(Side::Listener, k.netns, k.port, l.open);
            }
            for (k, o) in &c.outbound {
                held.kernel.add(Side::Outbound, k.netns, k.port, o.open);
            }
        }
        for (key, side) in self.live.entries() {
            match side {
                super::live::Side::Passive => {
                    held.untracked
                        .add(Side::Listener, key.netns, key.local.1, 1)
                }
                super::live::Side::Active(_) => {
                    held.untracked.add(Side::Outbound, key.netns, key.peer.1, 1)
                }
                super::live::Side::Tracked => {}
            }
        }
        held
    }

    /// Which open count each of `conns` counts in, per side and port.
    pub fn open_by_port<'a>(&self, conns: impl IntoIterator<Item = &'a super::Conn>) -> OpenByPort {
        let mut by_port = OpenByPort::default();
        for c in conns {
            let key = ConnKey {
                netns: c.netns,
                local: (c.local_addr, c.local_port),
                peer: (c.peer_addr, c.peer_port),
            };
            match self.live.side(&key) {
                Some(super::live::Side::Passive) => {
                    by_port.add(Side::Listener, c.netns, c.local_port, 1)
                }
                Some(super::live::Side::Active(_)) => {
                    by_port.add(Side::Outbound, c.netns, c.peer_port, 1)
                }
                Some(super::live::Side::Tracked) | None => {}
            }
        }
        by_port
    }

    /// Listening ports (namespace, port) known to the aggregator: a connection whose local
    /// port is one of them was accepted there; any other is outbound to its peer port.
    pub fn listening_ports(&self) -> std::collections::HashSet<(u32, u16)> {
        self.listeners.keys().map(|k| (k.netns, k.port)).collect()
    }

    /// Corrects the open counts to what the kernel's socket table held (`table`, namespaces in
    /// `read`): `before` was held when the table's dump began, `after` when it ended. A port
    /// whose counts moved meanwhile is left as it is (the dump may or may not have seen those
    /// changes); its counts are exact unless events were lost, and the next quiet check
    /// corrects it. Returns how many connections the corrections add (adopted) and take away.
    pub fn correct_open(
        &mut self,
        table: &OpenByPort,
        read: impl Fn(u32) -> bool,
        before: &HeldOpen,
        after: &HeldOpen,
    ) {
        let now = self.held_open();
        self.correct_open_to(table, read, before, after, &now);
    }

    /// As [`Self::correct_open`], with the counts held now given: `now` (the aggregator's own,
    /// less connections about to be expired).
    pub fn correct_open_to(
        &mut self,
        table: &OpenByPort,
        read: impl Fn(u32) -> bool,
        before: &HeldOpen,
        after: &HeldOpen,
        now: &HeldOpen,
    ) {
        let Some(c) = &mut self.counted else {
            return;
        };
        let ports: std::collections::BTreeSet<(Side, u32, u16)> = table
            .keys()
            .chain(after.kernel.keys())
            .chain(after.untracked.keys())
            .chain(now.untracked.keys())
            .chain(
                c.corrections
                    .by_port
                    .keys()
                    .map(|(s, p)| (*s, p.netns, p.port)),
            )
            .collect();
        for (side, netns, port) in ports {
            if !read(netns) {
                continue;
            }
            let moved = |h: &HeldOpen| {
                (
                    h.kernel.get(side, netns, port),
                    h.untracked.get(side, netns, port),
                )
            };
            if moved(before) != moved(after) {
                continue;
            }
            let held = now.kernel.get(side, netns, port) + now.untracked.get(side, netns, port);
            let delta = table.get(side, netns, port) - held;
            c.corrections.set(side, PortKey { netns, port }, delta);
        }
    }

    /// Connections counted open only because the kernel's socket table had them, and those no
    /// longer counted open only because it lacked them (see [`Self::correct_open`]).
    pub fn corrections(&self) -> Option<(u64, u64)> {
        self.counted
            .as_ref()
            .map(|c| (c.corrections.adopted(), c.corrections.released()))
    }
}
