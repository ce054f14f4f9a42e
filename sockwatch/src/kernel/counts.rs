//! Reading the in-kernel counters (`Mode::count`): per listening port, per remote port, per
//! (port, errno) and per (remote port, process). Read whole each time: the programs only add.
//! A port's counts lie on one entry per CPU or group of CPUs (`PortKey::shard`); they are added
//! up here, so that the rest of sockwatch sees one entry per port.
use std::collections::{BTreeMap, btree_map::Entry};

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, IterableMap, MapError},
};
use sockwatch_common::{
    ErrorKey, ListenerCounts, OutboundCounts, PortKey, ProcessCounts, ProcessKey,
};

use crate::kernel::loader::{LoadError, Tracer};

/// The counter maps at one moment, each sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Boxed: 7.7 KiB each (the lifetime histogram).
    pub listeners: Vec<(PortKey, Box<ListenerCounts>)>,
    pub outbound: Vec<(PortKey, OutboundCounts)>,
    pub errors: Vec<(ErrorKey, u64)>,
    pub processes: Vec<(ProcessKey, ProcessCounts)>,
}

impl Tracer {
    /// Every counter map's entries. Two system calls per entry (aya 0.14 reads a hash map key by
    /// key); the maps hold one entry per port, error or process (and CPU, up to
    /// `MAX_COUNT_SHARDS`), not per connection.
    pub fn counts(&self) -> Result<KernelCounts, LoadError> {
        Ok(KernelCounts {
            listeners: self
                .entries::<PortKey, ListenerCounts>("LISTENERS")?
                .into_iter()
                .map(|(k, v)| (k, Box::new(v)))
                .collect(),
            outbound: self.entries("OUTBOUND")?,
            errors: self.entries("ERRORS")?,
            processes: self.entries("PROCESSES")?,
        })
    }

    /// The listening ports' keys as the programs wrote them: one per port and entry
    /// (`PortKey::shard`), not added up.
    pub fn listener_entries(&self) -> Result<Vec<PortKey>, LoadError> {
        let map_err = |cause| LoadError::Map {
            name: "LISTENERS",
            cause,
        };
        let map: BpfHashMap<_, PortKey, ListenerCounts> =
            BpfHashMap::try_from(self.map("LISTENERS")?).map_err(map_err)?;
        // Bounded as in `entries`.
        let bound = map_max_entries(&map).saturating_mul(2).saturating_add(16);
        let mut keys = map
            .keys()
            .take(bound)
            .collect::<Result<Vec<PortKey>, _>>()
            .map_err(map_err)?;
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// A hash map's entries, those of one port added up, sorted by key.
    fn entries<K: Pod + Ord + Spread, V: Pod + Sum>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, LoadError> {
        let map_err = |cause| LoadError::Map { name, cause };
        let map: BpfHashMap<_, K, V> = BpfHashMap::try_from(self.map(name)?).map_err(map_err)?;
        // The keys are walked with "the key after this one"; should an entry go while it is the
        // cursor (the programs never remove one), the kernel starts over from the first: keys
        // seen twice count once, and the walk is bounded.
        let bound = map_max_entries(&map).saturating_mul(2).saturating_add(16);
        let mut seen = BTreeMap::new();
        for item in map.iter().take(bound) {
            match item {
                Ok((k, v)) => {
                    seen.insert(k, v);
                }
                // Removed between its key and its value (aya skips these already).
                Err(MapError::KeyNotFound) => {}
                Err(cause) => return Err(map_err(cause)),
            }
        }
        Ok(merge_shards(seen))
    }
}

/// A key of a counter map, whose port's counts may lie on several entries.
pub trait Spread: Copy + Ord {
    /// The key with its port's entry number cleared.
    fn merged(self) -> Self;
}

impl Spread for PortKey {
    fn merged(self) -> Self {
        PortKey { shard: 0, ..self }
    }
}

impl Spread for ErrorKey {
    fn merged(self) -> Self {
        ErrorKey {
            port: self.port.merged(),
            ..self
        }
    }
}

impl Spread for ProcessKey {
    fn merged(self) -> Self {
        ProcessKey {
            port: self.port.merged(),
            ..self
        }
    }
}

/// A counter map's value: the counts of another entry of the same port can be added to it.
pub trait Sum {
    fn add(&mut self, other: &Self);
}

impl Sum for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

fn add_all(to: &mut [u64], from: &[u64]) {
    for (a, b) in to.iter_mut().zip(from) {
        *a = a.wrapping_add(*b);
    }
}

impl Sum for ListenerCounts {
    fn add(&mut self, o: &Self) {
        // Signed: an entry's `open` is negative when its CPU counted more closes than
        // establishments.
        self.open = self.open.wrapping_add(o.open);
        for (a, b) in [
            (&mut self.accepted, o.accepted),
            (&mut self.queue_wait_sum_ns, o.queue_wait_sum_ns),
            (&mut self.peers, o.peers),
            (&mut self.overflows, o.overflows),
            (&mut self.established, o.established),
            (&mut self.closed, o.closed),
            (&mut self.bytes_in, o.bytes_in),
            (&mut self.bytes_out, o.bytes_out),
            (&mut self.retrans, o.retrans),
        ] {
            *a = a.wrapping_add(b);
        }
        add_all(&mut self.lifetimes, &o.lifetimes);
        add_all(&mut self.queue_waits, &o.queue_waits);
    }
}

impl Sum for OutboundCounts {
    fn add(&mut self, o: &Self) {
        self.open = self.open.wrapping_add(o.open);
        for (a, b) in [
            (&mut self.connects, o.connects),
            (&mut self.peers, o.peers),
            (&mut self.established, o.established),
            (&mut self.handshake_sum_ns, o.handshake_sum_ns),
            (&mut self.bytes_in, o.bytes_in),
            (&mut self.bytes_out, o.bytes_out),
            (&mut self.retrans, o.retrans),
        ] {
            *a = a.wrapping_add(b);
        }
        add_all(&mut self.handshakes, &o.handshakes);
    }
}

impl Sum for ProcessCounts {
    fn add(&mut self, o: &Self) {
        self.connects = self.connects.wrapping_add(o.connects);
        self.open = self.open.wrapping_add(o.open);
        // Each entry took the command at its first connect; the lowest entry's is kept.
        if self.comm[0] == 0 {
            self.comm = o.comm;
        }
    }
}

/// `entries` (sorted by key) with those of one port added up, sorted by key.
fn merge_shards<K: Spread, V: Sum>(entries: BTreeMap<K, V>) -> Vec<(K, V)> {
    let mut merged: BTreeMap<K, V> = BTreeMap::new();
    for (k, v) in entries {
        match merged.entry(k.merged()) {
            Entry::Occupied(mut e) => e.get_mut().add(&v),
            Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
    merged.into_iter().collect()
}

fn map_max_entries<K: Pod, V: Pod>(map: &impl IterableMap<K, V>) -> usize {
    map.map()
        .info()
        .map_or(1 << 20, |i| i.max_entries() as usize)
}

#[cfg(test)]
mod tests {
    use sockwatch_common::{LATENCY_BUCKETS, side};

    use super::*;

    fn key(port: u16, shard: u8) -> PortKey {
        PortKey {
            netns: 1,
            port,
            side: side::OUTBOUND,
            shard,
        }
    }

    fn outbound(connects: u64, open: i64, bucket: usize) -> OutboundCounts {
        let mut handshakes = [0; LATENCY_BUCKETS];
        handshakes[bucket] = 1;
        OutboundCounts {
            connects,
            peers: 1,
            established: connects,
            handshake_sum_ns: 10 * connects,
            open,
            bytes_in: 100,
            bytes_out: 7,
            retrans: 0,
            handshakes,
        }
    }

    #[test]
    fn a_ports_entries_are_added_up() {
        let entries = BTreeMap::from([
            (key(80, 0), outbound(3, 2, 5)),
            // Its CPU counted one close more than establishments.
            (key(80, 1), outbound(1, -1, 5)),
            (key(80, 3), outbound(2, 0, 9)),
            (key(443, 2), outbound(4, 1, 1)),
        ]);
        let merged = merge_shards(entries);
        assert_eq!(merged.len(), 2);
        let (k, c) = &merged[0];
        assert_eq!(*k, key(80, 0));
        assert_eq!((c.connects, c.open, c.established), (6, 1, 6));
        assert_eq!((c.handshake_sum_ns, c.bytes_in, c.bytes_out), (60, 300, 21));
        assert_eq!((c.handshakes[5], c.handshakes[9]), (2, 1));
        assert_eq!(merged[1], (key(443, 0), outbound(4, 1, 1)));
    }

    #[test]
    fn a_process_keeps_one_command_and_errors_add_up() {
        let pk = |shard| ProcessKey {
            port: key(80, shard),
            pid: 7,
            _pad: 0,
        };
        let comm = |s: &[u8]| {
            let mut c = [0u8; 16];
            c[..s.len()].copy_from_slice(s);
            c
        };
        let p = |connects, open, name: &[u8]| ProcessCounts {
            connects,
            open,
            comm: comm(name),
        };
        let merged = merge_shards(BTreeMap::from([
            (pk(0), p(2, 1, b"curl")),
            (pk(1), p(3, -1, b"curl")),
        ]));
        assert_eq!(merged, [(pk(0), p(5, 0, b"curl"))]);
        let ek = |shard| ErrorKey {
            port: key(80, shard),
            errno: 111,
            _pad: 0,
        };
        assert_eq!(
            merge_shards(BTreeMap::from([(ek(1), 2u64), (ek(2), 3)])),
            [(ek(0), 5)]
        );
    }
}
