//! How many sockets this host can hold: the default size of the kernel's socket table, so that
//! a host at its limits (a million connections with both ends here) needs no option.
use procfs::{Current as _, Meminfo};

/// A TCP socket costs the kernel several KiB (the socket, its file and inode, buffers): a host
/// cannot hold more sockets than one per this much memory.
const BYTES_PER_SOCKET: u64 = 8 << 10;
/// Never smaller than this: small hosts still get room for bursts.
const MIN_SOCKETS: u32 = 1 << 16;
/// The largest table `--max-sockets` takes.
pub const MAX_SOCKETS: u32 = 1 << 26;

/// The socket table's size for this host: one entry per 8 KiB of memory, rounded up to a power
/// of two (the kernel rounds its hash buckets so anyway), and no more than the host's open-file
/// limit (`fs.file-max`). The table allocates entries as sockets are tracked; only its buckets
/// (16 bytes per entry) are taken up front, about 0.2% of the host's memory.
pub fn default_max_sockets() -> u32 {
    let by_memory = Meminfo::current()
        .map(|m| m.mem_total / BYTES_PER_SOCKET)
        .unwrap_or(u64::from(MIN_SOCKETS));
    let file_max = procfs::sys::fs::file_max().map_or(u64::MAX, |n| n as u64);
    size_for(by_memory, file_max)
}

fn size_for(by_memory: u64, file_max: u64) -> u32 {
    let n = by_memory.next_power_of_two().min(file_max.max(1));
    n.clamp(u64::from(MIN_SOCKETS), u64::from(MAX_SOCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_by_memory_within_bounds() {
        // 24 GiB: 3.1 million sockets' worth, rounded up to 4 Mi.
        assert_eq!(size_for((24 << 30) / BYTES_PER_SOCKET, u64::MAX), 1 << 22);
        // The open-file limit caps it.
        assert_eq!(size_for(1 << 22, 1_000_000), 1_000_000);
        assert_eq!(size_for(10, u64::MAX), MIN_SOCKETS);
        assert_eq!(size_for(u64::MAX / 2, u64::MAX), MAX_SOCKETS);
        assert!(default_max_sockets() >= MIN_SOCKETS);
    }
}
