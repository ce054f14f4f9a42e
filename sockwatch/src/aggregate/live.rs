//! The connections open now, one entry per tracked socket: with hundreds of thousands of them
//! this table is most of sockwatch's memory, so IPv4 connections (nearly all of them) get a key
//! of 16 bytes instead of the 44 of a general one, and the entry keeps only what cannot be
//! derived from the key.
use std::net::{IpAddr, Ipv4Addr};

// foldhash, not the standard SipHash: these tables are hashed a few times per event, and SipHash
// was most of the aggregator's time. Its seed is still random per process.
use foldhash::HashMap;

/// A connection: its namespace and both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    pub(super) netns: u32,
    pub(super) local: (IpAddr, u16),
    pub(super) peer: (IpAddr, u16),
}

/// Which table a live connection counts in; the port is the key's (local when passive, peer
/// when active).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Accepted on its local port.
    Passive,
    /// Outbound to its peer port, owned by this process (if known).
    Active(Option<u32>),
    /// Counted in the kernel (see `counted`), held here only to find its close if the ring
    /// loses it.
    Tracked,
}

/// An IPv4 connection key, packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key4 {
    netns: u32,
    local_addr: u32,
    peer_addr: u32,
    local_port: u16,
    peer_port: u16,
}

const _: () = assert!(size_of::<Key4>() == 16);
const _: () = assert!(size_of::<Side>() == 8);

impl Key4 {
    fn of(k: &ConnKey) -> Option<Key4> {
        match (k.local.0, k.peer.0) {
            (IpAddr::V4(l), IpAddr::V4(p)) => Some(Key4 {
                netns: k.netns,
                local_addr: l.to_bits(),
                peer_addr: p.to_bits(),
                local_port: k.local.1,
                peer_port: k.peer.1,
            }),
            _ => None,
        }
    }

    fn conn(&self) -> ConnKey {
        ConnKey {
            netns: self.netns,
            local: (Ipv4Addr::from_bits(self.local_addr).into(), self.local_port),
            peer: (Ipv4Addr::from_bits(self.peer_addr).into(), self.peer_port),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Live {
    v4: HashMap<Key4, Side>,
    /// IPv6 (and anything else) as it comes.
    other: HashMap<ConnKey, Side>,
}

impl Live {
    /// Records `key` as open; false if it already was (the entry is updated).
    pub(super) fn insert(&mut self, key: &ConnKey, side: Side) -> bool {
        match Key4::of(key) {
            Some(k) => self.v4.insert(k, side).is_none(),
            None => self.other.insert(*key, side).is_none(),
        }
    }

    pub(super) fn remove(&mut self, key: &ConnKey) -> Option<Side> {
        match Key4::of(key) {
            Some(k) => self.v4.remove(&k),
            None => self.other.remove(key),
        }
    }

    pub(super) fn side(&self, key: &ConnKey) -> Option<Side> {
        match Key4::of(key) {
            Some(k) => self.v4.get(&k).copied(),
            None => self.other.get(key).copied(),
        }
    }

    pub(super) fn contains(&self, key: &ConnKey) -> bool {
        match Key4::of(key) {
            Some(k) => self.v4.contains_key(&k),
            None => self.other.contains_key(key),
        }
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = (ConnKey, Side)> + '_ {
        self.v4
            .iter()
            .map(|(k, s)| (k.conn(), *s))
            .chain(self.other.iter().map(|(k, s)| (*k, *s)))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.v4
            .keys()
            .map(Key4::conn)
            .chain(self.other.keys().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(local: &str, peer: &str) -> ConnKey {
        let l: std::net::SocketAddr = local.parse().unwrap();
        let p: std::net::SocketAddr = peer.parse().unwrap();
        ConnKey {
            netns: 4026531840,
            local: (l.ip(), l.port()),
            peer: (p.ip(), p.port()),
        }
    }

    #[test]
    fn both_families_round_trip_and_stay_apart() {
        let mut live = Live::default();
        let a = key("10.0.0.1:80", "10.0.0.2:40000");
        let b = key("[2001:db8::1]:80", "[2001:db8::2]:40000");
        // The same addresses as IPv4-mapped IPv6 are another connection.
        let c = key("[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.2]:40000");
        assert!(live.insert(&a, Side::Passive));
        assert!(live.insert(&b, Side::Active(Some(7))));
        assert!(live.insert(&c, Side::Active(None)));
        assert!(!live.insert(&a, Side::Active(Some(1))), "already open");
        let mut keys: Vec<ConnKey> = live.keys().collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        let mut want = vec![a, b, c];
        want.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(keys, want);
        assert_eq!(live.remove(&a), Some(Side::Active(Some(1))));
        assert_eq!(live.remove(&a), None);
        assert_eq!(live.remove(&b), Some(Side::Active(Some(7))));
        assert_eq!(live.remove(&c), Some(Side::Active(None)));
        assert_eq!(live.keys().count(), 0);
    }
}
