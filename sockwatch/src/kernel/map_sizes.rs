//! How big the maps are: the counter maps' and the socket map's entries, and, where the kernel
//! allows tracing programs only preallocated maps (before Linux 6.1), the object's map
//! definitions patched to be preallocated.
use sockwatch_common::{MAX_COUNT_SHARDS, Mode};

/// Sizes of the in-kernel counter maps: listening ports, remote ports, (port, errno) pairs,
/// (remote port, process) pairs and (port, peer address) pairs, each port's counts on one entry
/// (see [`count_shards`]). Their memory follows their use (these are upper bounds), except where
/// the kernel makes the loader preallocate them ([`PREALLOCATED_MAP_SIZES`]).
pub const MAP_SIZES: MapSizes = MapSizes {
    listeners: 1 << 14,
    outbound: 1 << 14,
    errors: 1 << 16,
    processes: 1 << 16,
    peers: 1 << 18,
};

/// The counter maps' sizes where the kernel needs them preallocated (before Linux 6.1): a
/// listener's counts take 11.3 KiB (lifetimes and accept-queue waits), so 1024 listening
/// ports take 12 MiB; a remote port's 3.7 KiB (handshake times), 4096 of them 15 MiB; about
/// 36 MiB in all.
pub const PREALLOCATED_MAP_SIZES: MapSizes = MapSizes {
    listeners: 1 << 10,
    outbound: 1 << 12,
    errors: 1 << 14,
    processes: 1 << 14,
    peers: 1 << 16,
};

/// Where the kernel needs the socket map preallocated, it holds at most this many sockets (about
/// 100 MiB): the socket map's size before it could grow on demand.
pub const PREALLOCATED_MAX_SOCKETS: u32 = 1 << 20;

/// The compat build's pending connects: connects in flight (a blocking connect() from its SYN
/// to its return) at once. An LRU map, always preallocated (about 80 bytes an entry).
pub const MAX_PENDING_CONNECTS: u32 = 1 << 16;

/// Entries of each counter map (see [`MAP_SIZES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub listeners: u32,
    pub outbound: u32,
    pub errors: u32,
    pub processes: u32,
    pub peers: u32,
}

/// Entries of the socket map: as asked, or capped where the kernel needs it preallocated.
pub(super) fn socket_map_entries(asked: u32, prealloc: bool) -> u32 {
    if prealloc {
        asked.min(PREALLOCATED_MAX_SOCKETS)
    } else {
        asked
    }
}

/// Over how many entries the programs spread each port's counts (`PortKey::shard`): one per
/// CPU, up to [`MAX_COUNT_SHARDS`] (CPUs beyond share them). Every CPU counting on a port's
/// single entry makes them take turns at its cache lines, the largest part of counting's cost
/// under churn. One where the maps are preallocated: their memory is then fixed, and spreading
/// would cut the ports they hold. A power of two.
pub(super) fn count_shards(mode: Mode, prealloc: bool, cpus: usize) -> u32 {
    if mode.count == 0 || prealloc {
        return 1;
    }
    u32::try_from(cpus.max(1))
        .unwrap_or(u32::MAX)
        .min(MAX_COUNT_SHARDS)
        .next_power_of_two()
}

/// The counter maps' sizes: one entry each when nothing is counted (they are then never used,
/// and a preallocated one would cost its full size); with each port's counts on `shards`
/// entries, as many ports as with one (their memory follows their use).
pub(super) fn counter_map_sizes(mode: Mode, prealloc: bool, shards: u32) -> MapSizes {
    if mode.count == 0 {
        return MapSizes {
            listeners: 1,
            outbound: 1,
            errors: 1,
            processes: 1,
            peers: 1,
        };
    }
    if prealloc {
        return PREALLOCATED_MAP_SIZES;
    }
    MapSizes {
        listeners: MAP_SIZES.listeners * shards,
        outbound: MAP_SIZES.outbound * shards,
        errors: MAP_SIZES.errors * shards,
        processes: MAP_SIZES.processes * shards,
        // The peer set is not spread.
        peers: MAP_SIZES.peers,
    }
}

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;

/// An object's bytes, aligned as the ELF parser needs them.
pub(super) struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        Self::bytes_of(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            words,
            len: bytes.len(),
        }
    }

    fn bytes_of(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: a u64 slice is valid as bytes, in the same allocation.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: as above, read-only.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut Self::bytes_of(&mut self.words)[..len]
    }
}

/// `object` with `BPF_F_NO_PREALLOC` cleared in every map definition (the `maps` section: one
/// `struct bpf_map_def` per map symbol). aya has no way to set a map's flags at load time.
pub(super) fn preallocated(object: &[u8]) -> Result<Aligned, String> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let flags_at = std::mem::offset_of!(aya_obj::maps::bpf_map_def, map_flags);
    let file = object::File::parse(object).map_err(|e| format!("the eBPF object: {e}"))?;
    let section = file
        .section_by_name("maps")
        .ok_or("the eBPF object has no maps section")?;
    let (start, size) = section
        .file_range()
        .ok_or("the eBPF object's maps section has no data")?;
    let mut out = Aligned::new(object);
    let bytes = out.bytes_mut();
    for symbol in file.symbols() {
        if symbol.section_index() != Some(section.index()) || symbol.size() == 0 {
            continue;
        }
        let within = symbol.address() - section.address();
        let at = (start + within) as usize + flags_at;
        if within + flags_at as u64 + 4 > size {
            return Err(format!("map {:?} lies outside its section", symbol.name()));
        }
        let field: &mut [u8; 4] = (&mut bytes[at..at + 4]).try_into().expect("4 bytes");
        let flags = u32::from_le_bytes(*field) & !NO_PREALLOC;
        *field = flags.to_le_bytes();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loader::{OBJECT, OBJECT_COMPAT};

    /// Each legacy map definition of `object`: name and flags.
    fn map_flags(object: &[u8]) -> Vec<(String, u32)> {
        let obj = aya_obj::Object::parse(object).expect("the object parses");
        let mut out: Vec<(String, u32)> = obj
            .maps
            .iter()
            .filter_map(|(name, map)| match map {
                aya_obj::maps::Map::Legacy(m) if !name.starts_with('.') => {
                    Some((name.clone(), m.def.map_flags))
                }
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn preallocating_clears_the_on_demand_flag_and_nothing_else() {
        for object in [OBJECT, OBJECT_COMPAT] {
            let before = map_flags(object);
            let on_demand: Vec<&str> = before
                .iter()
                .filter(|(_, f)| f & NO_PREALLOC != 0)
                .map(|(n, _)| n.as_str())
                .collect();
            for name in [
                "SOCKS",
                "LISTENERS",
                "OUTBOUND",
                "ERRORS",
                "PROCESSES",
                "PEERS",
            ] {
                assert!(on_demand.contains(&name), "{name}: {before:?}");
            }
            let patched = preallocated(object).expect("patched");
            let after = map_flags(patched.bytes());
            let want: Vec<(String, u32)> = before
                .iter()
                .map(|(n, f)| (n.clone(), f & !NO_PREALLOC))
                .collect();
            assert_eq!(after, want);
            // Only the flag words changed.
            let changed = object
                .iter()
                .zip(patched.bytes())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(changed, on_demand.len(), "one byte per map");
            assert_eq!(patched.bytes().len(), object.len());
        }
    }

    #[test]
    fn counter_maps_take_one_entry_each_unless_counting() {
        let one = counter_map_sizes(Mode::RING_ONLY, true, 1);
        assert_eq!((one.listeners, one.peers), (1, 1));
        let counting = Mode {
            count: 1,
            ring_kinds: 0,
        };
        assert_eq!(counter_map_sizes(counting, false, 1), MAP_SIZES);
        assert_eq!(counter_map_sizes(counting, true, 1), PREALLOCATED_MAP_SIZES);
        // Spread over 4 entries a port: as many ports, as many peers.
        let spread = counter_map_sizes(counting, false, 4);
        assert_eq!(spread.listeners, MAP_SIZES.listeners * 4);
        assert_eq!(spread.processes, MAP_SIZES.processes * 4);
        assert_eq!(spread.peers, MAP_SIZES.peers);
        assert_eq!(socket_map_entries(1 << 24, false), 1 << 24);
        assert_eq!(socket_map_entries(1 << 24, true), PREALLOCATED_MAX_SOCKETS);
        assert_eq!(socket_map_entries(1 << 16, true), 1 << 16);
    }

    #[test]
    fn counts_spread_over_one_entry_per_cpu_up_to_the_most() {
        let counting = Mode {
            count: 1,
            ring_kinds: 0,
        };
        assert_eq!(count_shards(counting, false, 1), 1);
        assert_eq!(count_shards(counting, false, 2), 2);
        // A power of two: the programs mask the CPU number.
        assert_eq!(count_shards(counting, false, 3), 4);
        assert_eq!(count_shards(counting, false, 64), MAX_COUNT_SHARDS);
        assert_eq!(count_shards(counting, false, 0), 1);
        // Preallocated maps, or nothing counted: one.
        assert_eq!(count_shards(counting, true, 64), 1);
        assert_eq!(count_shards(Mode::RING_ONLY, false, 64), 1);
    }
}
