//! The connection event the programs write to the ring buffer, and the socket record they keep.
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
