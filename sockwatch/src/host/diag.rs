//! The kernel's TCP socket table of one namespace, through sock_diag (inet_diag).
//!
//! sock_diag is what `ss` uses: unlike /proc/net/tcp it is binary, answers for exactly the states
//! asked, and gives a listener's accept-queue depth and limit.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use sockwatch_common::tcp_state;

use super::{HostError, netns::Netns};

/// Every TCP state the kernel defines (bits 1..=12), for a dump of everything.
pub const ALL_STATES: u32 = ((1 << (tcp_state::NEW_SYN_RECV + 1)) - 1) & !1;

/// A TCP socket as sock_diag reports it: what exists now, including sockets older than
/// sockwatch that no event will ever describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// The namespace asked about, so that results of several namespaces can be merged.
    pub netns: u32,
    /// Kernel TCP state number (1 ESTABLISHED ... 10 LISTEN). A handshake the server has not
    /// finished (a request socket, NEW_SYN_RECV) is reported as 3 SYN_RECV, whether bit 3 or
    /// bit 12 asked for it.
    pub state: u8,
    /// IPv4 carried by an IPv6 socket is given as IPv4, as in the events.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Socket inode, to find its owner with [`super::socket_owners`]; 0 for TIME_WAIT and
    /// request sockets, which no process holds.
    pub inode: u64,
    /// Bytes not yet read; for LISTEN, the current accept-queue depth (sk_ack_backlog).
    pub recv_queue: u32,
    /// Bytes not yet acknowledged; for LISTEN, the backlog limit (sk_max_ack_backlog).
    pub send_queue: u32,
}

/// A states mask for [`dump_tcp`] from state numbers (`sockwatch_common::tcp_state`), so callers
/// need not shift bits by hand. Numbers the kernel does not define (0, above 12) are ignored.
pub fn state_mask(states: &[u8]) -> u32 {
    states
        .iter()
        .filter(|&&s| (tcp_state::ESTABLISHED..=tcp_state::NEW_SYN_RECV).contains(&s))
        .fold(0, |mask, &s| mask | 1 << s)
}

/// A bit the kernel does not know would be silently ignored by it; refusing it here turns a
/// caller's mistake (a state number passed instead of a mask) into an error.
fn check_mask(mask: u32) -> Result<u32, HostError> {
    if mask & !ALL_STATES == 0 {
        Ok(mask)
    } else {
        Err(HostError::StateMask { mask })
    }
}

/// How long one receive may wait: the kernel answers a dump at once, so a silent socket means
/// something is wrong, and the caller gets an error instead of a hang.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The kernel fills a dump datagram up to the reader's buffer, at most 32 KiB at a time.
const RECV_BUFFER: usize = 64 * 1024;

/// sock_diag (NETLINK_SOCK_DIAG, inet_diag) dump of TCP sockets, IPv4 and IPv6, in the given
/// namespace, limited to the states in `states` (bit N = state N, like idiag_states). The
/// socket is made in that namespace, on a short-lived thread, because sock_diag answers for the
/// namespace its socket was created in.
pub fn dump_tcp(ns: &Netns, states: u32) -> Result<Vec<DiagSocket>, HostError> {
    let mut sockets = Vec::new();
    dump_tcp_each(ns, states, |s| sockets.push(s))?;
    Ok(sockets)
}

/// Like [`dump_tcp`], handing each socket to `each` as it is read instead of collecting them:
/// a dump of hundreds of thousands of sockets then costs no memory of its own.
pub fn dump_tcp_each(
    ns: &Netns,
    states: u32,
    mut each: impl FnMut(DiagSocket),
) -> Result<(), HostError> {
    let states = check_mask(states)?;
    let socket = super::netns::in_netns(ns, "creating a NETLINK_SOCK_DIAG socket", || {
        Socket::new(NETLINK_SOCK_DIAG)
    })?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(|cause| HostError::Netlink {
        step: "setting SO_RCVTIMEO",
        cause,
    })?;
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        request(&socket, seq, family, states)?;
        receive(&socket, seq, ns.inode, &mut each)?;
    }
    Ok(())
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a descriptor we own, with a timeval of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn request(socket: &Socket, seq: u32, family: u8, states: u32) -> Result<(), HostError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Retained as given: the crate's flags lack NEW_SYN_RECV (12).
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(|cause| HostError::Netlink {
        step: "sending the dump request",
        cause,
    })?;
    Ok(())
}

/// Reads the replies to request `seq` up to NLMSG_DONE, appending the sockets to `out`.
fn receive(
    socket: &Socket,
    seq: u32,
    netns: u32,
    each: &mut impl FnMut(DiagSocket),
) -> Result<(), HostError> {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        // MSG_TRUNC makes the kernel report a datagram's full length even if it did not fit.
        let len = socket
            .recv(&mut &mut buf[..], libc::MSG_TRUNC)
            .map_err(|cause| HostError::Netlink {
                step: "receiving the dump",
                cause,
            })?;
        if len > buf.len() {
            return Err(HostError::Decode(format!(
                "datagram of {len} bytes exceeds the {RECV_BUFFER}-byte receive buffer"
            )));
        }
        if len == 0 {
            return Err(HostError::Decode("empty datagram before NLMSG_DONE".into()));
        }
        let mut rest = &buf[..len];
        while !rest.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                .map_err(|e| HostError::Decode(e.to_string()))?;
            // Messages are 4-byte aligned within a datagram (NLMSG_ALIGN).
            let size = (message.header.length as usize).next_multiple_of(4);
            if size == 0 {
                return Err(HostError::Decode("message of length 0".into()));
            }
            rest = rest.get(size..).unwrap_or_default();
            if message.header.sequence_number != seq {
                continue;
            }
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    each(from_header(&r.header, netns));
                }
                NetlinkPayload::Done(done) if done.code == 0 => return Ok(()),
                NetlinkPayload::Done(done) => {
                    return Err(HostError::Netlink {
                        step: "dump (ended early)",
                        cause: io::Error::from_raw_os_error(done.code.saturating_neg()),
                    });
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(HostError::Netlink {
                        step: "dump request",
                        cause: e.to_io(),
                    });
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(HostError::Decode("NLMSG_OVERRUN".into()));
                }
                // Acknowledgements and no-ops carry nothing.
                _ => {}
            }
        }
    }
}

fn from_header(h: &InetResponseHeader, netns: u32) -> DiagSocket {
    let id = &h.socket_id;
    let (local, peer) = normalise(
        SocketAddr::new(id.source_address, id.source_port),
        SocketAddr::new(id.destination_address, id.destination_port),
    );
    DiagSocket {
        netns,
        state: h.state,
        local,
        peer,
        inode: u64::from(h.inode),
        recv_queue: h.recv_queue,
        send_queue: h.send_queue,
    }
}

/// An IPv6 socket talking IPv4 has `::ffff:a.b.c.d` addresses: both become IPv4, as in the
/// events. A listener's unspecified peer (`::`) follows its local address; a native IPv6 pair is
/// left alone, so `[::]:80` stays a dual-stack listener.
fn normalise(local: SocketAddr, peer: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (IpAddr::V6(l), IpAddr::V6(p)) = (local.ip(), peer.ip()) else {
        return (local, peer);
    };
    let peer_v4 = p.to_ipv4_mapped().or(p
        .is_unspecified()
        .then_some(std::net::Ipv4Addr::UNSPECIFIED));
    match (l.to_ipv4_mapped(), peer_v4) {
        (Some(l), Some(p)) => (
            SocketAddr::new(IpAddr::V4(l), local.port()),
            SocketAddr::new(IpAddr::V4(p), peer.port()),
        ),
        _ => (local, peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_pairs_become_ipv4() {
        assert_eq!(
            normalise(
                addr("[::ffff:127.0.0.1]:8080"),
                addr("[::ffff:10.0.0.2]:5555")
            ),
            (addr("127.0.0.1:8080"), addr("10.0.0.2:5555"))
        );
        // A listener bound to a mapped address has an unspecified peer.
        assert_eq!(
            normalise(addr("[::ffff:127.0.0.1]:8080"), addr("[::]:0")),
            (addr("127.0.0.1:8080"), addr("0.0.0.0:0"))
        );
    }

    #[test]
    fn native_ipv6_and_ipv4_are_untouched() {
        for (l, p) in [
            ("[::]:80", "[::]:0"),
            ("[::1]:80", "[::1]:4000"),
            ("[::1]:80", "[::ffff:127.0.0.1]:4000"),
            ("127.0.0.1:80", "127.0.0.1:4000"),
        ] {
            assert_eq!(normalise(addr(l), addr(p)), (addr(l), addr(p)));
        }
    }

    #[test]
    fn masks_from_state_numbers() {
        assert_eq!(state_mask(&[tcp_state::LISTEN]), 1 << 10);
        assert_eq!(
            state_mask(&[tcp_state::ESTABLISHED, tcp_state::SYN_RECV]),
            0b1010
        );
        assert_eq!(state_mask(&[]), 0);
        // Undefined numbers are dropped rather than shifted into nonsense (or overflow).
        assert_eq!(state_mask(&[0, 13, 40, 255]), 0);
        assert_eq!(state_mask(&(0..=255).collect::<Vec<u8>>()), ALL_STATES);
    }

    #[test]
    fn all_states_is_bits_1_to_12() {
        assert_eq!(ALL_STATES, 0b1_1111_1111_1110);
        assert_eq!(ALL_STATES.count_ones(), 12);
    }

    #[test]
    fn masks_outside_the_kernel_states_are_refused() {
        assert_eq!(check_mask(1 << 10).unwrap(), 1 << 10);
        assert_eq!(check_mask(ALL_STATES).unwrap(), ALL_STATES);
        assert_eq!(check_mask(0).unwrap(), 0);
        for bad in [1, 1 << 13, 1 << 31, u32::MAX] {
            let e = check_mask(bad).unwrap_err();
            assert!(matches!(e, HostError::StateMask { mask } if mask == bad));
        }
        assert_eq!(
            check_mask(1).unwrap_err().to_string(),
            "sock_diag: state mask 0x1 has bits outside the kernel's TCP states 1..=12"
        );
    }

    #[test]
    fn response_headers_become_sockets() {
        let h = InetResponseHeader {
            family: AF_INET6,
            state: tcp_state::LISTEN,
            timer: None,
            socket_id: SocketId {
                source_port: 8080,
                destination_port: 0,
                source_address: addr("[::ffff:127.0.0.1]:0").ip(),
                destination_address: addr("[::]:0").ip(),
                interface_id: 0,
                cookie: [0; 8],
            },
            recv_queue: 2,
            send_queue: 5,
            uid: 0,
            inode: 4242,
        };
        let s = from_header(&h, 7);
        assert_eq!(s.netns, 7);
        assert_eq!(s.state, tcp_state::LISTEN);
        assert_eq!(s.local, addr("127.0.0.1:8080"));
        assert_eq!(s.peer, addr("0.0.0.0:0"));
        assert_eq!((s.inode, s.recv_queue, s.send_queue), (4242, 2, 5));
    }
}
