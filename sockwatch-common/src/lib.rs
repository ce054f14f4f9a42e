//! Types shared by the eBPF programs and the userspace loader.
//!
//! Everything here crosses the kernel/user boundary as raw bytes: `#[repr(C)]`, fixed-width
//! integers, explicit padding, and sizes pinned by const asserts so both sides agree.
#![no_std]

pub const COMM_LEN: usize = 16;

/// `ConnEvent::kind` values. Userspace decodes them fallibly; never transmute.
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const LISTEN: u8 = 4;
    pub const LISTEN_STOP: u8 = 5;
    /// accept() returned a connection (process context: the accepting process).
    pub const ACCEPT: u8 = 6;
    /// accept() failed with a real error (not EAGAIN or EINTR); `errno` says which.
    pub const ACCEPT_FAILED: u8 = 7;
    /// An outbound connection never established; `errno` says why (0: closed while connecting).
    pub const CONNECT_FAILED: u8 = 8;
    /// A connection was dropped because the listener's accept queue was full (the listener's
    /// address and port are the local ones).
    pub const OVERFLOW: u8 = 9;
    /// A raw TCP state transition (`trace --states`): `old_state` -> `new_state`.
    pub const STATE: u8 = 10;
}

/// `ConnEvent::flags` and `SockInfo::flags` bits.
pub mod flags {
    /// The socket was created by accepting (passive open).
    pub const PASSIVE: u8 = 1;
    /// `birth_ns` is known, so `duration_ns` is valid.
    pub const BIRTH_KNOWN: u8 = 2;
    /// pid, comm and cgroup id name the owning process (recorded in process context).
    pub const OWNER_KNOWN: u8 = 4;
    /// The socket reached ESTABLISHED.
    pub const ESTABLISHED: u8 = 8;
    /// The socket was created by connect() (active open).
    pub const ACTIVE: u8 = 16;
    /// The owner recorded with OWNER_KNOWN passes the owner filters (pid, comm, cgroup).
    pub const OWNER_MATCH: u8 = 32;
    /// `ConnEvent`'s byte, retransmit and RTT fields were read from the socket (close only).
    pub const STATS: u8 = 64;
}

/// `ConnEvent::fin` bits: what is needed to take the SYN and FINs out of the byte counts.
pub mod fin {
    /// The peer's FIN was received (`SOCK_DONE`): `bytes_received` counts it.
    pub const RECEIVED: u8 = 1;
    /// Everything sent was acknowledged (`snd_una == write_seq`): with a FIN sent, so was
    /// the FIN, which `bytes_acked` then counts.
    pub const ALL_ACKED: u8 = 2;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// One connection lifecycle event, written by the kernel into the ring buffer.
///
/// Addresses are in network byte order; an IPv4 address fills the first 4 bytes.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Time since the socket's birth (connect, passive open or listen); valid with BIRTH_KNOWN.
    pub duration_ns: u64,
    pub cgroup_id: u64,
    /// Thread-group id (the user-visible pid); valid with OWNER_KNOWN.
    pub pid: u32,
    /// Inode of the socket's network namespace; 0 if it could not be read.
    pub netns: u32,
    pub comm: [u8; COMM_LEN],
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    /// Error number (positive) of failure events; 0 otherwise.
    pub errno: u16,
    pub kind: u8,
    pub family: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u8,
    /// On close, with `flags::STATS`: `fin::*` bits.
    pub fin: u8,
    pub _pad: [u8; 4],
    /// On close, with `flags::STATS`: `tcp_sock::bytes_received` and `bytes_acked` (bytes the
    /// peer acknowledged: sent), `total_retrans` (segments retransmitted, SYNs included) and
    /// `srtt_us` (the smoothed RTT in microseconds, times 8, as the kernel keeps it). 0 otherwise.
    /// The byte counts are of sequence space: the SYN and a FIN count one each (see `fin`).
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub total_retrans: u32,
    pub srtt_us: u32,
}

pub const CONN_EVENT_SIZE: usize = 120;
const _: () = assert!(core::mem::size_of::<ConnEvent>() == CONN_EVENT_SIZE);
// The programs write these 16-byte fields with 8-byte stores.
const _: () = assert!(core::mem::offset_of!(ConnEvent, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ConnEvent, local_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ConnEvent, peer_addr) % 8 == 0);
// Events are copied as whole 8-byte words (`copy_words`).
const _: () = assert!(CONN_EVENT_SIZE.is_multiple_of(8));

/// What the kernel remembers about a live socket, keyed by its `struct sock` address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub birth_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub netns: u32,
    pub comm: [u8; COMM_LEN],
    pub flags: u8,
    pub _pad: [u8; 3],
    /// While the socket's `connect` event waits to be emitted (from its SYN until connect()
    /// returns or its next state change), a tag of the socket; 0 once emitted. The programs
    /// claim it with a compare-and-swap on the 8-byte word it shares with `flags`.
    pub connect_pending: u32,
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 48);
const _: () = assert!(core::mem::offset_of!(SockInfo, comm) % 8 == 0);
// `flags` starts an 8-aligned word whose upper half (little-endian) is `connect_pending`.
const _: () = assert!(core::mem::offset_of!(SockInfo, flags) % 8 == 0);
const _: () = assert!(
    core::mem::offset_of!(SockInfo, connect_pending) == core::mem::offset_of!(SockInfo, flags) + 4
);

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

/// Data bytes (received, sent and acknowledged) of a `close` event with `flags::STATS`.
/// The kernel counts sequence space: `bytes_received` counts the peer's FIN, `bytes_acked`
/// our FIN once acknowledged and, on a connecting socket, our SYN (an accepted one starts past
/// its SYN). A FIN was sent exactly when the socket left one of FIN_WAIT1, FIN_WAIT2, CLOSING
/// or LAST_ACK for CLOSE. The kernel's counters and userspace both use this.
#[inline(always)]
pub const fn data_bytes(ev: &ConnEvent) -> (u64, u64) {
    let fin_received = ev.fin & fin::RECEIVED != 0;
    let fin_sent = matches!(
        ev.old_state,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    let fin_acked = fin_sent && ev.fin & fin::ALL_ACKED != 0;
    let syn_acked = ev.flags & flags::ACTIVE != 0 && ev.bytes_acked > 0;
    (
        ev.bytes_received.saturating_sub(fin_received as u64),
        ev.bytes_acked
            .saturating_sub(syn_acked as u64 + fin_acked as u64),
    )
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

/// Kernel struct field offsets, read from the running kernel's BTF at start-up and handed to the
/// programs as a load-time global (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Offsets inside `struct sock` (its `struct sock_common` head), all below `SOCK_COMMON_READ`.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock::sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct inet_sock::inet_sport` (be16); the bound port even after it moved to TIME_WAIT.
    pub inet_sport: u32,
    /// `struct net::ns.inum`.
    pub net_inum: u32,
    /// `struct sock::sk_err` (int): why a connecting socket was closed.
    pub sk_err: u32,
    /// The fd-to-socket chain: task->files->fdt->fd[fd]->private_data->sk.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// Offsets in `struct pt_regs` of a syscall's first and second argument as its exit finds
    /// them (x86-64: di, si; arm64: orig_x0, x1): the exit hooks read the arguments there, so
    /// that no entry hook has to save them.
    pub syscall_arg0: u32,
    pub syscall_arg1: u32,
    /// Offset of `ret` in the syscall exit tracepoint records (from tracefs format files).
    pub sys_exit_ret: u32,
    /// Offsets of the first two arguments in the syscall entry records of connect, accept and
    /// accept4 (the `compat` build's entry hooks; 0 otherwise).
    pub sys_enter_arg0: u32,
    pub sys_enter_arg1: u32,
    /// Offsets in `struct pt_regs` of a kernel function's first two arguments at its entry and
    /// of its return value at its return (x86-64: di, si, ax; arm64: x0, x1, x0), for the
    /// kprobe hooks.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_ret: u32,
    /// Where an fexit program on `inet_csk_accept` finds the return value: after the
    /// function's arguments, whose number changed (4 before Linux 6.10, 2 since).
    pub accept_ret_arg: u32,
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` in this kernel's `enum skb_drop_reason`;
    /// `NO_DROP_REASON` when the kernel has none, which turns the overflow hook off.
    pub drop_reason_listen_overflow: u32,
    /// Wake the reader only once the ring holds this many bytes (it also polls on a timer):
    /// a wake-up per event costs an interrupt per event.
    pub wakeup_bytes: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 112);

/// Where the fields read at a connection's close are (see `ConnEvent::bytes_received`), a
/// load-time global of its own: `KernelOffsets` is copied onto the programs' stacks, which have
/// no room for more. The `struct tcp_sock` fields come from one read of the part of the struct
/// that holds them all (`window_len` bytes from `window`, at most `STATS_WINDOW`), so their
/// offsets are relative to `window`. `window_len` 0: the kernel's BTF lacks one of the fields,
/// or they lie too far apart; nothing is read then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsOffsets {
    /// Offset of the window in `struct tcp_sock` (that is, in `struct sock`), and its length.
    pub window: u32,
    pub window_len: u32,
    /// `struct tcp_sock` fields, from the window's start.
    pub bytes_received: u32,
    pub bytes_acked: u32,
    pub total_retrans: u32,
    pub srtt_us: u32,
    pub snd_una: u32,
    pub write_seq: u32,
    /// `struct sock`'s flags (`sk_flags`, that is `__sk_common.skc_flags`), below
    /// `SOCK_COMMON_READ` (it comes with the event's read of the socket's head), and the bit of
    /// `SOCK_DONE` in them.
    pub sk_flags: u32,
    pub sock_done_bit: u32,
}

/// The most bytes of `struct tcp_sock` read at a close, in one read: the fields lie within 704
/// bytes of each other in the kernels tested (5.10 to 7.2).
pub const STATS_WINDOW: usize = 1024;

const _: () = assert!(core::mem::size_of::<StatsOffsets>() == 40);

/// A drop reason no kernel uses.
pub const NO_DROP_REASON: u32 = u32::MAX;
/// Positions of `reason` and `rx_sk` among the `skb:kfree_skb` raw tracepoint arguments
/// (checked against the kernel's BTF at start-up).
pub const KFREE_SKB_REASON_ARG: usize = 2;
pub const KFREE_SKB_SK_ARG: usize = 3;

/// The programs read this many bytes of `struct sock` at once, so that all the `sock_common`
/// fields they need come from one read; userspace checks every offset fits.
pub const SOCK_COMMON_READ: usize = 128;

/// Most `--port` filters the programs compare against.
pub const MAX_FILTER_PORTS: usize = 16;

/// `FilterConfig::active` bits: which criteria are set.
pub mod filter {
    pub const PORT: u32 = 1;
    pub const PID: u32 = 2;
    pub const COMM: u32 = 4;
    pub const CGROUP: u32 = 8;
    pub const NETNS: u32 = 16;
    pub const FAMILY: u32 = 32;
    pub const KIND: u32 = 64;
    /// Criteria on the owning process, known in process context only.
    pub const OWNER: u32 = PID | COMM | CGROUP;
}

/// In-kernel filters, a load-time global. With `active == 0` the verifier sees every filter
/// branch as dead and removes it, so an unfiltered run pays nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// cgroup v2 id (the directory's inode) the owner must be in, or below.
    pub cgroup_id: u64,
    /// `filter::*` bits.
    pub active: u32,
    /// Bit `1 << kind` for every `kind::*` kept.
    pub kinds: u32,
    /// Thread-group id of the owner.
    pub pid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Depth of `cgroup_id` in the cgroup v2 hierarchy (the root is 0).
    pub cgroup_level: u32,
    /// How many of `ports` are set.
    pub nports: u32,
    /// Local or peer port, host byte order.
    pub ports: [u16; MAX_FILTER_PORTS],
    /// Owner's command name, NUL-padded as the kernel keeps it.
    pub comm: [u8; COMM_LEN],
    /// AF_INET: IPv4, including IPv4 on IPv6 sockets (v4-mapped); AF_INET6: native IPv6.
    pub family: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<FilterConfig>() == 88);

impl FilterConfig {
    /// No filter.
    pub const NONE: Self = Self {
        cgroup_id: 0,
        active: 0,
        kinds: 0,
        pid: 0,
        netns: 0,
        cgroup_level: 0,
        nports: 0,
        ports: [0; MAX_FILTER_PORTS],
        comm: [0; COMM_LEN],
        family: 0,
        _pad: [0; 7],
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: repr(C), integer fields only, explicit padding.
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::StatsOffsets {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::Mode {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::ListenerCounts {}
    unsafe impl aya::Pod for super::OutboundCounts {}
    unsafe impl aya::Pod for super::ErrorKey {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::ProcessCounts {}
    unsafe impl aya::Pod for super::PeerKey {}
}
