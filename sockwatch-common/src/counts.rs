//! The in-kernel counters: the loss counters' indices, what the programs count (`Mode`), and the
//! per-port, per-error and per-process counts with the histogram buckets both sides use.
use crate::event::COMM_LEN;

/// Indices of the per-CPU counter array `COUNTERS`.
pub mod counter {
    /// An event was dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// A new socket was added to the socket map.
    pub const SOCK_INSERTED: u32 = 1;
    /// A socket was removed from the socket map at its close.
    pub const SOCK_REMOVED: u32 = 2;
    /// A socket could not be added to the socket map.
    pub const SOCK_INSERT_FAILED: u32 = 3;
    /// A pending connect was recorded.
    pub const PENDING_INSERTED: u32 = 4;
    /// A pending connect was emitted.
    pub const PENDING_REMOVED: u32 = 5;
    /// A pending connect could not be recorded (its connect event is lost).
    pub const PENDING_INSERT_FAILED: u32 = 6;
    /// Reading kernel memory failed; the event was dropped.
    pub const READ_FAILED: u32 = 7;
    /// accept() on a TCP listener returned EAGAIN/EWOULDBLOCK (normal for non-blocking servers).
    pub const ACCEPT_WOULD_BLOCK: u32 = 8;
    /// accept() on a TCP listener was interrupted by a signal.
    pub const ACCEPT_INTERRUPTED: u32 = 9;
    /// A run of the state-change program that the kernel skipped (nested on its CPU) was
    /// handled by the backup program instead: not a loss.
    pub const NESTED_HANDLED: u32 = 10;
    /// A per-port, per-process or per-error counter could not be created (its map is full, or
    /// the kernel had no memory): that count is short. See [`crate::Mode`].
    pub const COUNTS_FULL: u32 = 11;
    /// A peer address could not be recorded (the peer map is full): the port's `peers` is a
    /// lower bound.
    pub const PEERS_FULL: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// What the programs do with the events they build, a load-time global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Non-zero: update the in-kernel counters (`LISTENERS`, `OUTBOUND`, `PROCESSES`, `ERRORS`,
    /// `PEERS`) with every event that passes the filters.
    pub count: u32,
    /// Bit `1 << kind` for every kind written to the ring buffer. Whatever the bits, an
    /// `established` or `close` event of an untracked socket (not in the socket map, so not in
    /// the counters: `flags::BIRTH_KNOWN` clear) is always written, so that userspace can count
    /// it.
    pub ring_kinds: u32,
}

const _: () = assert!(core::mem::size_of::<Mode>() == 8);

impl Mode {
    /// Every event to the ring, no counting: what sockwatch did before counting in the kernel.
    pub const RING_ONLY: Self = Self {
        count: 0,
        ring_kinds: u32::MAX,
    };
}

/// `PortKey::side` values.
pub mod side {
    /// A listening port: counts of the connections accepted on it (local port).
    pub const LISTENER: u8 = 1;
    /// A remote port: counts of outbound connections to it (peer port).
    pub const OUTBOUND: u8 = 2;
}

/// Key of the per-port counters: a port in a network namespace, seen from one side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    /// `side::*`.
    pub side: u8,
    /// Which of the port's entries: the programs spread a port's counts over entries by CPU
    /// (the CPU number masked with the load-time `COUNT_SHARD_MASK`), so that CPUs counting
    /// one busy port do not take turns at the same cache lines; userspace adds them up. 0 in
    /// the peer set (`PeerKey`), whose entries must stay distinct per port.
    pub shard: u8,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

/// The most entries a port's counts are spread over (see `PortKey::shard`): a power of two.
pub const MAX_COUNT_SHARDS: u32 = 4;

/// Buckets of the lifetime histogram (see [`lifetime_bucket`]).
pub const LIFETIME_SUB_BITS: u32 = 4;
pub const LIFETIME_BUCKETS: usize = (64 - LIFETIME_SUB_BITS as usize + 1) << LIFETIME_SUB_BITS;

/// The bucket of a duration in nanoseconds: log-linear, 16 buckets per power of two (values
/// below 16 exact), so a quantile read from the buckets is within 1/16 of the true value. The
/// kernel counts lifetimes with this function and userspace reads quantiles from the same
/// buckets, so the live summary and a report over its recording agree exactly.
#[inline(always)]
pub const fn lifetime_bucket(v: u64) -> usize {
    const SUB: u64 = 1 << LIFETIME_SUB_BITS;
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - LIFETIME_SUB_BITS;
    let mantissa = ((v >> shift) & (SUB - 1)) as usize;
    ((shift as usize + 1) << LIFETIME_SUB_BITS) + mantissa
}

/// The smallest duration that falls in bucket `i` of [`lifetime_bucket`].
pub const fn lifetime_bucket_floor(i: usize) -> u64 {
    const SUB: usize = 1 << LIFETIME_SUB_BITS;
    if i < SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let mantissa = (i % SUB) as u64;
    (SUB as u64 + mantissa) << shift
}

/// Buckets of the latency histograms (accept-queue wait, handshake; see [`latency_bucket`]).
pub const LATENCY_BUCKETS: usize = (32 - LIFETIME_SUB_BITS as usize + 1) << LIFETIME_SUB_BITS;

/// The bucket of a latency in nanoseconds: [`lifetime_bucket`] of it in microseconds (so
/// within 1/16, exact below 16 us), the last bucket holding everything from about 71 minutes.
/// Smaller than the lifetime histogram: each remote port keeps one.
#[inline(always)]
pub const fn latency_bucket(ns: u64) -> usize {
    let b = lifetime_bucket(ns / 1000);
    if b < LATENCY_BUCKETS {
        b
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// The smallest latency in nanoseconds that falls in bucket `i` of [`latency_bucket`].
pub const fn latency_bucket_floor(i: usize) -> u64 {
    lifetime_bucket_floor(i) * 1000
}

/// In-kernel counts of a listening port, updated as its events pass (`Mode::count`). Keyed by
/// `PortKey { side: LISTENER, port: local port }`.
///
/// The counters one event adds to are next to each other (an accept's first, then an
/// establishment's, which a close's follow): every CPU adds to a busy port's counts, and each
/// cache line an event touches may have to come from another CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerCounts {
    /// `accept` events.
    pub accepted: u64,
    /// Sum of the accept-queue waits of `accept` events of tracked sockets, nanoseconds.
    pub queue_wait_sum_ns: u64,
    /// Distinct peer addresses of `accept` events.
    pub peers: u64,
    /// `overflow` events.
    pub overflows: u64,
    /// Passive `established` events of tracked sockets.
    pub established: u64,
    /// Tracked passive sockets established and not yet closed (`established` minus their
    /// closes); signed, as the two updates can land in either order on two CPUs.
    pub open: i64,
    /// Passive `close` events.
    pub closed: u64,
    /// Of passive `close` events with `flags::STATS`: data bytes received and sent (see
    /// [`data_bytes`]), segments retransmitted.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retrans: u64,
    /// Passive `close` events with a known lifetime, by [`lifetime_bucket`].
    pub lifetimes: [u64; LIFETIME_BUCKETS],
    /// `accept` events of tracked sockets, by accept-queue wait ([`latency_bucket`]).
    pub queue_waits: [u64; LATENCY_BUCKETS],
}

const _: () = assert!(
    core::mem::size_of::<ListenerCounts>() == 10 * 8 + (LIFETIME_BUCKETS + LATENCY_BUCKETS) * 8
);

/// In-kernel counts of a remote port. Keyed by `PortKey { side: OUTBOUND, port: peer port }`.
/// Ordered as `ListenerCounts`: a connect's counters, an establishment's, then a close's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundCounts {
    /// `connect` events.
    pub connects: u64,
    /// Distinct peer addresses of `connect` events.
    pub peers: u64,
    /// Active `established` events of tracked sockets.
    pub established: u64,
    /// Sum of their handshake times, nanoseconds.
    pub handshake_sum_ns: u64,
    /// Tracked active sockets established and not yet closed.
    pub open: i64,
    /// Of active `close` events with `flags::STATS`: data bytes received and sent, segments
    /// retransmitted.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retrans: u64,
    /// Active `established` events of tracked sockets, by handshake time ([`latency_bucket`]).
    pub handshakes: [u64; LATENCY_BUCKETS],
}

const _: () = assert!(core::mem::size_of::<OutboundCounts>() == 8 * 8 + LATENCY_BUCKETS * 8);

/// Key of the per-error counters: `accept_failed` (side LISTENER) and `connect_failed` (side
/// OUTBOUND) events by port and errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorKey {
    pub port: PortKey,
    pub errno: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ErrorKey>() == 16);

/// Key of the per-process outbound counters: a remote port and the connecting process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub port: PortKey,
    /// Thread-group id of the connecting process (0: unknown).
    pub pid: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ProcessKey>() == 16);

/// In-kernel outbound counts of one process to one remote port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessCounts {
    /// `connect` events.
    pub connects: u64,
    /// Its tracked active sockets established and not yet closed.
    pub open: i64,
    /// The command name at its first connect, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcessCounts>() == 32);

/// Key of the peer set: one peer address seen on a port (the value is unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub port: PortKey,
    /// As in `ConnEvent`: network byte order, IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);
