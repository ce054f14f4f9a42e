//! Turns host state into the samples the summary needs: the sockets that existed at start-up,
//! then at each interval every listener's accept queue, each namespace's TcpExt listen
//! counters, and the descriptor pressure of the processes owning watched sockets.
use std::{
    collections::{BTreeSet, HashSet, hash_map::RandomState},
    fs,
    hash::BuildHasher,
};

use sockwatch_common::tcp_state;

use crate::{
    aggregate::{
        Conn, CountSide, Existing, Expired, FdSample, NetstatSample, OpenByPort, QueueSample,
        expiry,
    },
    feed::Sample,
    host::{self, DiagSocket, Netns},
    kernel::decode::Family,
};

/// A sample that owns its process name (the borrowed [`Sample`] is made from it on use).
#[derive(Debug, Clone)]
pub enum Owned {
    Existing(Existing<'static>, Option<String>),
    Queue(QueueSample),
    Netstat(NetstatSample),
    Fds(FdSample<'static>, Option<String>),
    Expired(Expired),
}

impl Owned {
    pub fn as_sample(&self) -> Sample<'_> {
        match self {
            Owned::Existing(e, comm) => Sample::Existing(Existing {
                comm: comm.as_deref(),
                ..*e
            }),
            Owned::Queue(q) => Sample::Queue(*q),
            Owned::Netstat(n) => Sample::Netstat(*n),
            Owned::Fds(f, comm) => Sample::Fds(FdSample {
                comm: comm.as_deref(),
                ..*f
            }),
            Owned::Expired(e) => Sample::Expired(*e),
        }
    }
}

fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn family(s: &DiagSocket) -> Family {
    if s.local.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

/// The kernel's connections that are not closed yet (any state from ESTABLISHED to the end of
/// the close handshake; TIME_WAIT ones are closed for sockwatch), in the namespaces read.
pub struct KernelConns {
    /// Hashes, not addresses: a million connections take 8 MB, not 50. A collision only
    /// delays an expiry.
    hashes: HashSet<u64>,
    hasher: RandomState,
    read: HashSet<u32>,
    /// Established ones (through to the end of the close handshake), by side and port (see
    /// [`Sampler::open_connections`]).
    pub open: OpenByPort,
}

impl KernelConns {
    pub fn has(&self, c: &Conn) -> bool {
        self.hashes
            .contains(&self.hasher.hash_one(expiry::canonical(c)))
    }

    /// Whether namespace `netns` was read (its absences mean something).
    pub fn read(&self, netns: u32) -> bool {
        self.read.contains(&netns)
    }
}

/// Problems reading host state are not fatal (a process exits mid-scan, a namespace goes away):
/// they are counted and the first one kept for the user.
#[derive(Debug, Default)]
pub struct Sampler {
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Sampler {
    /// Takes over the problems another sampler met (one used on another thread).
    pub fn absorb(&mut self, other: Sampler) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn note<T, E: std::fmt::Display>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
                None
            }
        }
    }

    fn namespaces(&mut self) -> Vec<Netns> {
        let r = host::namespaces();
        self.note(r).unwrap_or_default()
    }

    /// Listeners and established connections that exist now, with their owners, then a first
    /// periodic sample (the baseline of the namespace counters).
    pub fn snapshot(&mut self, now_ns: i64) -> Vec<Owned> {
        let mut out = self.existing(now_ns);
        out.extend(self.sample(now_ns, &BTreeSet::new()));
        out
    }

    fn existing(&mut self, now_ns: i64) -> Vec<Owned> {
        let owners = host::socket_owners();
        let owners = self.note(owners).unwrap_or_default();
        let mask = (1 << tcp_state::LISTEN) | (1 << tcp_state::ESTABLISHED);
        let mut out = Vec::new();
        // Read once per process, not once per socket: a server may hold a million.
        let mut comms: std::collections::HashMap<u32, Option<String>> = Default::default();
        for ns in self.namespaces() {
            let dumped = host::dump_tcp(&ns, mask);
            for s in self.note(dumped).unwrap_or_default() {
                let pid = owners.get(&s.inode).copied();
                out.push(Owned::Existing(
                    Existing {
                        time_ns: now_ns,
                        netns: s.netns,
                        family: family(&s),
                        listening: s.state == tcp_state::LISTEN,
                        local_addr: s.local.ip(),
                        local_port: s.local.port(),
                        peer_addr: s.peer.ip(),
                        peer_port: s.peer.port(),
                        pid,
                        comm: None,
                    },
                    pid.and_then(|p| comms.entry(p).or_insert_with(|| comm_of(p)).clone()),
                ));
            }
        }
        // Listeners first, so connections to them are known to be passive.
        out.sort_by_key(|o| !matches!(o, Owned::Existing(e, _) if e.listening));
        out
    }

    /// Every namespace's connections that are not closed yet (for expiry), and the established
    /// ones counted by side and port (for the open counts' corrections): on the listener when
    /// their local port is one of `listening` (namespace, port), else outbound to their peer
    /// port. Only those `keep` keeps are counted.
    pub fn open_connections(
        &mut self,
        listening: &HashSet<(u32, u16)>,
        keep: &dyn Fn(&Conn, Family) -> bool,
    ) -> KernelConns {
        use tcp_state::*;
        let mask = host::state_mask(&[
            ESTABLISHED,
            SYN_SENT,
            FIN_WAIT1,
            FIN_WAIT2,
            CLOSE_WAIT,
            LAST_ACK,
            CLOSING,
        ]);
        let mut kc = KernelConns {
            hashes: HashSet::new(),
            hasher: RandomState::new(),
            read: HashSet::new(),
            open: OpenByPort::default(),
        };
        for ns in self.namespaces() {
            // Hashed as they are read: with hundreds of thousands of connections, a list of
            // the sockets themselves would be the biggest thing sockwatch ever holds.
            let mut hashes = Vec::new();
            let mut open = OpenByPort::default();
            let dumped = host::dump_tcp_each(&ns, mask, |s| {
                let conn = Conn {
                    netns: s.netns,
                    local_addr: s.local.ip(),
                    local_port: s.local.port(),
                    peer_addr: s.peer.ip(),
                    peer_port: s.peer.port(),
                };
                hashes.push(kc.hasher.hash_one(expiry::canonical(&conn)));
                if s.state != SYN_SENT && keep(&conn, family(&s)) {
                    if listening.contains(&(s.netns, conn.local_port)) {
                        open.add(CountSide::Listener, s.netns, conn.local_port, 1);
                    } else {
                        open.add(CountSide::Outbound, s.netns, conn.peer_port, 1);
                    }
                }
            });
            if self.note(dumped).is_some() {
                kc.read.insert(ns.inode);
                kc.hashes.extend(hashes);
                kc.open.merge(open);
            }
        }
        kc
    }

    /// Queue depth of every listener, listen counters of every namespace, and descriptor
    /// pressure of `pids`.
    pub fn sample(&mut self, now_ns: i64, pids: &BTreeSet<u32>) -> Vec<Owned> {
        let mut out = Vec::new();
        for ns in self.namespaces() {
            let dumped = host::dump_tcp(&ns, 1 << tcp_state::LISTEN);
            for s in self.note(dumped).unwrap_or_default() {
                out.push(Owned::Queue(QueueSample {
                    time_ns: now_ns,
                    netns: s.netns,
                    local_port: s.local.port(),
                    depth: s.recv_queue,
                    backlog: s.send_queue,
                }));
            }
            let counters = host::listen_counters(ns.pid);
            if let Some(c) = self.note(counters) {
                out.push(Owned::Netstat(NetstatSample {
                    time_ns: now_ns,
                    netns: ns.inode,
                    listen_overflows: c.overflows,
                    listen_drops: c.drops,
                }));
            }
        }
        for &pid in pids {
            // A process that exited has no pressure left: skip it quietly.
            if let Ok(f) = host::fd_pressure(pid) {
                out.push(Owned::Fds(
                    FdSample {
                        time_ns: now_ns,
                        pid,
                        comm: None,
                        open: f.open,
                        limit: f.limit,
                    },
                    comm_of(pid),
                ));
            }
        }
        out
    }
}
