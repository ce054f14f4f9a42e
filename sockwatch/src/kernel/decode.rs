//! Kernel event bytes to [`Event`]: length-checked and fallible; every byte value the kernel
//! could send is either decoded or rejected with a reason, never transmuted.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sockwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, CONN_EVENT_SIZE, ConnEvent, data_bytes, flags, kind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connect,
    Established,
    Close,
    Listen,
    ListenStop,
    Accept,
    AcceptFailed,
    ConnectFailed,
    Overflow,
    /// A raw TCP state transition (`trace --states`), to this state (`from_state` is the old).
    State(TcpState),
}

/// Every event kind's name, with its kernel code; in `--event` order of mention in the docs.
pub const KIND_NAMES: [(&str, u8); 10] = [
    ("connect", kind::CONNECT),
    ("connect_failed", kind::CONNECT_FAILED),
    ("established", kind::ESTABLISHED),
    ("accept", kind::ACCEPT),
    ("accept_failed", kind::ACCEPT_FAILED),
    ("close", kind::CLOSE),
    ("listen", kind::LISTEN),
    ("listen_stop", kind::LISTEN_STOP),
    ("overflow", kind::OVERFLOW),
    ("state", kind::STATE),
];

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Established => "established",
            Self::Close => "close",
            Self::Listen => "listen",
            Self::ListenStop => "listen_stop",
            Self::Accept => "accept",
            Self::AcceptFailed => "accept_failed",
            Self::ConnectFailed => "connect_failed",
            Self::Overflow => "overflow",
            Self::State(_) => "state",
        }
    }

    /// The kernel's code for this kind (`sockwatch_common::kind`).
    pub fn code(self) -> u8 {
        match self {
            Self::Connect => kind::CONNECT,
            Self::Established => kind::ESTABLISHED,
            Self::Close => kind::CLOSE,
            Self::Listen => kind::LISTEN,
            Self::ListenStop => kind::LISTEN_STOP,
            Self::Accept => kind::ACCEPT,
            Self::AcceptFailed => kind::ACCEPT_FAILED,
            Self::ConnectFailed => kind::CONNECT_FAILED,
            Self::Overflow => kind::OVERFLOW,
            Self::State(_) => kind::STATE,
        }
    }

    /// Failure events carry an errno.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::AcceptFailed | Self::ConnectFailed)
    }

    /// Events that end a socket's life carry its duration.
    pub fn ends_life(self) -> bool {
        matches!(self, Self::Close | Self::ListenStop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Opened by connect().
    Active,
    /// Opened by a peer and accepted.
    Passive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
        }
    }
}

/// A TCP state, by the kernel's numbering (1..=12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState(u8);

impl TcpState {
    const NAMES: [&'static str; 12] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];

    pub fn new(raw: u8) -> Option<Self> {
        (1..=12).contains(&raw).then_some(Self(raw))
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[usize::from(self.0 - 1)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A decoded connection event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub kind: EventKind,
    pub family: Family,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    /// The owning process: the one that connected or listened. None where the event is not tied
    /// to a process (a passively opened socket before it is accepted).
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub cgroup_id: Option<u64>,
    pub netns: u32,
    pub direction: Option<Direction>,
    /// On close and listen_stop: time since the socket's birth, when the birth was seen.
    pub duration_ns: Option<u64>,
    /// The state the socket left.
    pub from_state: TcpState,
    /// On accept_failed and connect_failed: the error (0 on connect_failed: the application
    /// closed the socket while it was connecting).
    pub errno: Option<u16>,
    /// The socket is in the kernel's socket map (its birth was seen): the in-kernel counters
    /// count this event, when sockwatch counts there.
    pub tracked: bool,
    /// On an active `established`: from connect() to ESTABLISHED, SYN retransmissions
    /// included, when the connect was seen.
    pub handshake_ns: Option<u64>,
    /// On `accept`: from the connection reaching ESTABLISHED (in the listener's accept queue)
    /// to accept() returning it, when that was seen.
    pub queue_wait_ns: Option<u64>,
    /// On `close`: what the connection carried, where the kernel's BTF has the fields.
    pub stats: Option<ConnStats>,
}

/// The keys of an event's connection-health values, in record order (JSON Lines, CSV).
pub const HEALTH_KEYS: [&str; 6] = [
    "handshake_ns",
    "queue_wait_ns",
    "bytes_received",
    "bytes_sent",
    "segs_retrans",
    "srtt_us",
];

impl Event {
    /// The values of [`HEALTH_KEYS`]: each known on one kind of event only.
    pub fn health(&self) -> [Option<u64>; 6] {
        let s = self.stats;
        [
            self.handshake_ns,
            self.queue_wait_ns,
            s.map(|s| s.bytes_received),
            s.map(|s| s.bytes_sent),
            s.map(|s| u64::from(s.segs_retrans)),
            s.map(|s| u64::from(s.srtt_us)),
        ]
    }
}

/// What a connection carried, read from its socket at close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Data bytes received.
    pub bytes_received: u64,
    /// Data bytes sent that the peer acknowledged.
    pub bytes_sent: u64,
    /// Segments retransmitted (the kernel's `total_retrans`, SYNs included).
    pub segs_retrans: u32,
    /// Smoothed round-trip time, microseconds.
    pub srtt_us: u32,
}

impl ConnStats {
    /// The kernel counts sequence space; [`data_bytes`] takes the SYN and FINs out, as the
    /// in-kernel counters do, so that the two ends of a connection report the same data bytes.
    /// (A connection open before sockwatch started has no direction: it is taken as accepted,
    /// see docs/limits.md.)
    fn from_raw(raw: &ConnEvent) -> Self {
        let (bytes_received, bytes_sent) = data_bytes(raw);
        Self {
            bytes_received,
            bytes_sent,
            segs_retrans: raw.total_retrans,
            // The kernel keeps it times 8.
            srtt_us: raw.srtt_us >> 3,
        }
    }
}

/// The error's symbolic name, e.g. `EMFILE`.
pub fn errno_name(code: u16) -> std::borrow::Cow<'static, str> {
    use nix::errno::Errno;
    match Errno::from_raw(i32::from(code)) {
        Errno::UnknownErrno => format!("errno {code}").into(),
        e => format!("{e:?}").into(),
    }
}

/// Why an outbound connection failed, from its errno.
pub fn connect_failure_reason(errno: u16) -> &'static str {
    use nix::errno::Errno;
    match Errno::from_raw(i32::from(errno)) {
        _ if errno == 0 => "aborted",
        Errno::ECONNREFUSED => "refused",
        Errno::ETIMEDOUT => "timeout",
        Errno::EHOSTUNREACH | Errno::ENETUNREACH => "unreachable",
        Errno::EADDRNOTAVAIL => "no_local_address",
        _ => "error",
    }
}

/// A task command name: up to 16 bytes, NUL-terminated in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    pub fn from_kernel(raw: &[u8; COMM_LEN]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        Self {
            bytes: *raw,
            len: len as u8,
        }
    }

    /// The name as text; a name that is not UTF-8 has its bad bytes replaced.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let bytes = &self.bytes[..usize::from(self.len)];
        // Names are almost always valid, and checking that is cheaper than the lossy walk
        // (which each event's name went through: a few percent of userspace time).
        match std::str::from_utf8(bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(bytes),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event record of {0} bytes, expected {CONN_EVENT_SIZE}")]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != CONN_EVENT_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked; ConnEvent is repr(C) with integer fields only, so every bit
    // pattern is a valid value; read_unaligned makes no assumption about the ring's alignment.
    let raw: ConnEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_raw(&raw)
}

pub fn from_raw(raw: &ConnEvent) -> Result<Event, DecodeError> {
    let kind = match raw.kind {
        kind::CONNECT => EventKind::Connect,
        kind::ESTABLISHED => EventKind::Established,
        kind::CLOSE => EventKind::Close,
        kind::LISTEN => EventKind::Listen,
        kind::LISTEN_STOP => EventKind::ListenStop,
        kind::ACCEPT => EventKind::Accept,
        kind::ACCEPT_FAILED => EventKind::AcceptFailed,
        kind::CONNECT_FAILED => EventKind::ConnectFailed,
        kind::OVERFLOW => EventKind::Overflow,
        kind::STATE => {
            EventKind::State(TcpState::new(raw.new_state).ok_or(DecodeError::State(raw.new_state))?)
        }
        other => return Err(DecodeError::Kind(other)),
    };
    let (family, local_addr, peer_addr) = addresses(raw)?;
    let from_state = TcpState::new(raw.old_state).ok_or(DecodeError::State(raw.old_state))?;
    TcpState::new(raw.new_state).ok_or(DecodeError::State(raw.new_state))?;

    let owner = raw.flags & flags::OWNER_KNOWN != 0;
    let direction = if raw.flags & flags::PASSIVE != 0 {
        Some(Direction::Passive)
    } else if raw.flags & flags::ACTIVE != 0 {
        Some(Direction::Active)
    } else {
        None
    };
    let birth_known = raw.flags & flags::BIRTH_KNOWN != 0;
    let duration_ns = (kind.ends_life() && birth_known).then_some(raw.duration_ns);
    // The socket's birth is its connect (active) or its arrival in the accept queue (passive),
    // so the time since then is the handshake at ESTABLISHED and the queue wait at accept.
    let handshake_ns =
        (kind == EventKind::Established && direction == Some(Direction::Active) && birth_known)
            .then_some(raw.duration_ns);
    let queue_wait_ns = (kind == EventKind::Accept && birth_known).then_some(raw.duration_ns);
    let stats = (kind == EventKind::Close && raw.flags & flags::STATS != 0)
        .then(|| ConnStats::from_raw(raw));
    Ok(Event {
        ts_ns: raw.ts_ns,
        kind,
        family,
        local_addr,
        local_port: raw.local_port,
        peer_addr,
        peer_port: raw.peer_port,
        pid: owner.then_some(raw.pid),
        comm: owner.then(|| Comm::from_kernel(&raw.comm)),
        cgroup_id: owner.then_some(raw.cgroup_id),
        netns: raw.netns,
        direction,
        duration_ns,
        from_state,
        errno: kind.is_failure().then_some(raw.errno),
        tracked: birth_known,
        handshake_ns,
        queue_wait_ns,
        stats,
    })
}

/// Addresses by family; an IPv6 socket talking IPv4 (v4-mapped addresses) is reported as IPv4.
fn addresses(raw: &ConnEvent) -> Result<(Family, IpAddr, IpAddr), DecodeError> {
    match raw.family {
        AF_INET => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            Ok((Family::Ipv4, v4(&raw.local_addr), v4(&raw.peer_addr)))
        }
        AF_INET6 => {
            let local = Ipv6Addr::from(raw.local_addr);
            let peer = Ipv6Addr::from(raw.peer_addr);
            // A listener on a mapped address has an unspecified peer.
            let peer_v4 = peer
                .to_ipv4_mapped()
                .or(peer.is_unspecified().then_some(Ipv4Addr::UNSPECIFIED));
            match (local.to_ipv4_mapped(), peer_v4) {
                (Some(l), Some(p)) => Ok((Family::Ipv4, IpAddr::V4(l), IpAddr::V4(p))),
                _ => Ok((Family::Ipv6, IpAddr::V6(local), IpAddr::V6(peer))),
            }
        }
        other => Err(DecodeError::Family(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockwatch_common::{fin, tcp_state};

    fn raw_v4() -> ConnEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[10, 1, 2, 3]);
        ConnEvent {
            ts_ns: 1_000,
            duration_ns: 5_000,
            cgroup_id: 77,
            pid: 4242,
            netns: 4026531840,
            comm,
            local_addr: local,
            peer_addr: peer,
            local_port: 45678,
            peer_port: 8080,
            kind: kind::CLOSE,
            family: AF_INET,
            old_state: tcp_state::FIN_WAIT2,
            new_state: tcp_state::CLOSE,
            flags: flags::OWNER_KNOWN | flags::BIRTH_KNOWN | flags::ACTIVE,
            errno: 0,
            fin: 0,
            _pad: [0; 4],
            bytes_received: 0,
            bytes_acked: 0,
            total_retrans: 0,
            srtt_us: 0,
        }
    }

    fn bytes(raw: &ConnEvent) -> Vec<u8> {
        // SAFETY: ConnEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts((raw as *const ConnEvent).cast::<u8>(), CONN_EVENT_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_close() {
        let ev = decode(&bytes(&raw_v4())).unwrap();
        assert_eq!(ev.kind, EventKind::Close);
        assert_eq!(ev.family, Family::Ipv4);
        assert_eq!(ev.local_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.peer_addr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((ev.local_port, ev.peer_port), (45678, 8080));
        assert_eq!(ev.pid, Some(4242));
        assert_eq!(ev.comm.unwrap().as_str(), "curl");
        assert_eq!(ev.cgroup_id, Some(77));
        assert_eq!(ev.netns, 4026531840);
        assert_eq!(ev.direction, Some(Direction::Active));
        assert_eq!(ev.duration_ns, Some(5_000));
        assert_eq!(ev.from_state.as_str(), "FIN_WAIT2");
    }

    #[test]
    fn unknown_owner_and_birth_are_none() {
        let mut raw = raw_v4();
        raw.flags = flags::PASSIVE;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!((ev.pid, ev.comm, ev.cgroup_id), (None, None, None));
        assert_eq!(ev.duration_ns, None);
        assert_eq!(ev.direction, Some(Direction::Passive));
    }

    #[test]
    fn duration_only_on_events_that_end_a_life() {
        let mut raw = raw_v4();
        raw.kind = kind::ESTABLISHED;
        assert_eq!(decode(&bytes(&raw)).unwrap().duration_ns, None);
        raw.kind = kind::LISTEN_STOP;
        assert_eq!(decode(&bytes(&raw)).unwrap().duration_ns, Some(5_000));
    }

    #[test]
    fn v4_mapped_ipv6_is_reported_as_ipv4() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.local_addr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        raw.peer_addr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.family, Family::Ipv4);
        assert_eq!(ev.peer_addr, "127.0.0.2".parse::<IpAddr>().unwrap());

        raw.peer_addr = [0; 16];
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.family, Family::Ipv4);
        assert_eq!(ev.peer_addr, "0.0.0.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn native_ipv6_stays_ipv6() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.local_addr = Ipv6Addr::LOCALHOST.octets();
        raw.peer_addr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.family, Family::Ipv6);
        assert_eq!(ev.local_addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        let c = Comm::from_kernel(b"abcdefghijklmnop");
        assert_eq!(c.as_str(), "abcdefghijklmnop");
        let mut raw = [0u8; COMM_LEN];
        raw[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(Comm::from_kernel(&raw).as_str(), "a\u{fffd}b");
    }

    #[test]
    fn health_values_come_from_the_kind_that_knows_them() {
        // close: what the connection carried, only with STATS; srtt as the kernel keeps it (x8).
        // The kernel counts sequence space: the peer's FIN in bytes_received, our SYN and
        // (acknowledged) FIN in bytes_acked. This one left FIN_WAIT2: its FIN was acknowledged.
        let mut raw = raw_v4();
        raw.bytes_received = 1_001;
        raw.bytes_acked = 2_000_002;
        raw.total_retrans = 3;
        raw.srtt_us = 8 * 41;
        raw.fin = fin::RECEIVED | fin::ALL_ACKED;
        assert_eq!(decode(&bytes(&raw)).unwrap().stats, None);
        raw.flags |= flags::STATS;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(
            ev.stats,
            Some(ConnStats {
                bytes_received: 1_000,
                bytes_sent: 2_000_000,
                segs_retrans: 3,
                srtt_us: 41
            })
        );
        assert_eq!((ev.handshake_ns, ev.queue_wait_ns), (None, None));
        assert_eq!(
            ev.health(),
            [None, None, Some(1_000), Some(2_000_000), Some(3), Some(41)]
        );
        // Reset while established: no FIN either way, only the SYN comes off.
        raw.old_state = tcp_state::ESTABLISHED;
        raw.fin = fin::ALL_ACKED;
        let s = decode(&bytes(&raw)).unwrap().stats.unwrap();
        assert_eq!((s.bytes_received, s.bytes_sent), (1_001, 2_000_001));
        // An accepted socket's count starts past its SYN.
        raw.flags = raw.flags & !flags::ACTIVE | flags::PASSIVE;
        let s = decode(&bytes(&raw)).unwrap().stats.unwrap();
        assert_eq!(s.bytes_sent, 2_000_002);
        raw.flags = raw.flags & !flags::PASSIVE | flags::ACTIVE;
        // A connect that never got an answer: nothing acknowledged, nothing to take off.
        raw.old_state = tcp_state::SYN_SENT;
        raw.bytes_acked = 0;
        raw.bytes_received = 0;
        raw.fin = 0;
        let s = decode(&bytes(&raw)).unwrap().stats.unwrap();
        assert_eq!((s.bytes_received, s.bytes_sent), (0, 0));

        // An active established: the time since the connect is the handshake.
        let mut raw = raw_v4();
        raw.kind = kind::ESTABLISHED;
        raw.old_state = tcp_state::SYN_SENT;
        raw.new_state = tcp_state::ESTABLISHED;
        raw.flags |= flags::STATS;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.handshake_ns, Some(5_000));
        assert_eq!(
            (ev.queue_wait_ns, ev.stats, ev.duration_ns),
            (None, None, None)
        );
        // Not if the connect was not seen, nor for a passive one.
        raw.flags &= !flags::BIRTH_KNOWN;
        assert_eq!(decode(&bytes(&raw)).unwrap().handshake_ns, None);
        raw.flags |= flags::BIRTH_KNOWN;
        raw.flags = raw.flags & !flags::ACTIVE | flags::PASSIVE;
        assert_eq!(decode(&bytes(&raw)).unwrap().handshake_ns, None);

        // accept: the time since the connection was queued is the queue wait.
        let mut raw = raw_v4();
        raw.kind = kind::ACCEPT;
        raw.old_state = tcp_state::ESTABLISHED;
        raw.new_state = tcp_state::ESTABLISHED;
        raw.flags = flags::OWNER_KNOWN | flags::BIRTH_KNOWN | flags::PASSIVE;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.queue_wait_ns, Some(5_000));
        assert_eq!(ev.handshake_ns, None);
        raw.flags &= !flags::BIRTH_KNOWN;
        assert_eq!(decode(&bytes(&raw)).unwrap().queue_wait_ns, None);
    }

    #[test]
    fn malformed_records_are_rejected() {
        let good = bytes(&raw_v4());
        let n = CONN_EVENT_SIZE;
        assert_eq!(decode(&good[..n - 1]), Err(DecodeError::Size(n - 1)));
        assert_eq!(decode(&[]), Err(DecodeError::Size(0)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Size(n + 1)));

        let mut raw = raw_v4();
        raw.kind = 0;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::Kind(0)));
        raw = raw_v4();
        raw.kind = 200;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::Kind(200)));
        raw = raw_v4();
        raw.family = 1;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::Family(1)));
        raw = raw_v4();
        raw.old_state = 13;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::State(13)));
        raw = raw_v4();
        raw.new_state = 0;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::State(0)));
    }

    #[test]
    fn failures_carry_errno_and_others_do_not() {
        let mut raw = raw_v4();
        raw.kind = kind::ACCEPT_FAILED;
        raw.errno = 24;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.kind, EventKind::AcceptFailed);
        assert_eq!(ev.errno, Some(24));
        assert_eq!(errno_name(24), "EMFILE");
        raw.kind = kind::ACCEPT;
        assert_eq!(decode(&bytes(&raw)).unwrap().errno, None);
        raw.kind = kind::CONNECT_FAILED;
        raw.errno = 0;
        assert_eq!(decode(&bytes(&raw)).unwrap().errno, Some(0));
    }

    #[test]
    fn errno_names_and_reasons() {
        assert_eq!(errno_name(23), "ENFILE");
        assert_eq!(errno_name(105), "ENOBUFS");
        assert_eq!(errno_name(103), "ECONNABORTED");
        assert_eq!(errno_name(60000), "errno 60000");
        assert_eq!(connect_failure_reason(111), "refused");
        assert_eq!(connect_failure_reason(110), "timeout");
        assert_eq!(connect_failure_reason(113), "unreachable");
        assert_eq!(connect_failure_reason(101), "unreachable");
        assert_eq!(connect_failure_reason(99), "no_local_address");
        assert_eq!(connect_failure_reason(0), "aborted");
        assert_eq!(connect_failure_reason(1), "error");
    }

    #[test]
    fn raw_state_transitions_carry_both_states() {
        let mut raw = raw_v4();
        raw.kind = kind::STATE;
        raw.old_state = tcp_state::ESTABLISHED;
        raw.new_state = tcp_state::FIN_WAIT1;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::State(TcpState::new(tcp_state::FIN_WAIT1).unwrap())
        );
        assert_eq!(ev.kind.as_str(), "state");
        assert_eq!(ev.from_state.as_str(), "ESTABLISHED");
        assert_eq!((ev.duration_ns, ev.errno), (None, None));
        raw.new_state = 0;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::State(0)));
    }

    #[test]
    fn kind_names_and_codes_agree() {
        for (name, code) in KIND_NAMES {
            let mut raw = raw_v4();
            raw.kind = code;
            let ev = decode(&bytes(&raw)).unwrap();
            assert_eq!((ev.kind.as_str(), ev.kind.code()), (name, code));
        }
    }

    #[test]
    fn every_state_has_a_name() {
        for s in 1..=12 {
            assert!(!TcpState::new(s).unwrap().as_str().is_empty());
        }
        assert!(TcpState::new(0).is_none());
    }
}
