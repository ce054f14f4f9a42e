//! What the aggregator is fed: connection events and host samples, the same from a live run
//! and from an exported file.
use std::net::IpAddr;

use crate::kernel::decode::{Direction, EventKind, Family};

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
    /// The kernel tracked the socket, so its in-kernel counters hold this event (live only;
    /// see [`super::Aggregator::count_in_kernel`]).
    pub tracked: bool,
    /// On an active `established`: the handshake time.
    pub handshake_ns: Option<u64>,
    /// On `accept`: the wait in the accept queue.
    pub queue_wait_ns: Option<u64>,
    /// On `close`: data bytes received and sent, segments retransmitted.
    pub carried: Option<Carried>,
}

/// What a connection carried (see `kernel::decode::ConnStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retrans: u64,
}

impl Carried {
    pub fn new(bytes_in: u64, bytes_out: u64, retrans: u64) -> Self {
        Self {
            bytes_in,
            bytes_out,
            retrans,
        }
    }

    pub fn add(&mut self, more: Carried) {
        self.bytes_in += more.bytes_in;
        self.bytes_out += more.bytes_out;
        self.retrans += more.retrans;
    }
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

/// One connection, as the kernel's socket table and the events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conn {
    pub netns: u32,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub peer_addr: IpAddr,
    pub peer_port: u16,
}

/// A connection the live run expired: open for the aggregator, gone from the kernel's socket
/// table, so its close event was missed (the `expired` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub time_ns: i64,
    pub conn: Conn,
}
