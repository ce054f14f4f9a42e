//! Reading the in-kernel counters (`Mode::count`): per listening port, per remote port, per
//! (port, errno) and per (remote port, process). Read whole each time: the programs only add.
use std::collections::BTreeMap;

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
    /// key); the maps hold one entry per port, error or process, not per connection.
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

    /// A hash map's entries, sorted by key.
    fn entries<K: Pod + Ord, V: Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>, LoadError> {
        let map_err = |cause| LoadError::Map { name, cause };
        let map: BpfHashMap<_, K, V> = BpfHashMap::try_from(self.map(name)?).map_err(map_err)?;
        // The keys are walked with "the key after this one"; should an entry go while it is the
        // cursor (the programs never remove one), the kernel starts over from the first: keys
        // seen twice count once, and the walk is bounded.
        let bound = map_max_entries(&map).saturating_mul(2).saturating_add(16);
        let mut out = BTreeMap::new();
        for item in map.iter().take(bound) {
            match item {
                Ok((k, v)) => {
                    out.insert(k, v);
                }
                // Removed between its key and its value (aya skips these already).
                Err(MapError::KeyNotFound) => {}
                Err(cause) => return Err(map_err(cause)),
            }
        }
        Ok(out.into_iter().collect())
    }
}

fn map_max_entries<K: Pod, V: Pod>(map: &impl IterableMap<K, V>) -> usize {
    map.map()
        .info()
        .map_or(1 << 20, |i| i.max_entries() as usize)
}
