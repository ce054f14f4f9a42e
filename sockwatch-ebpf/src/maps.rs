use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use sockwatch_common::{KernelOffsets, SockInfo, counter};

/// Events to userspace. Userspace sets the size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Live sockets by `struct sock` address: birth time and owner. LRU so that sockets whose close
/// was missed cannot fill it; evictions are derived from the insert/remove counters.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(1 << 20, 0);

/// Sockets whose `connect` event is not yet emitted. Whoever removes the entry (the
/// connect syscall's exit, or the socket's next state change) emits it: a map delete succeeds
/// exactly once, so the event is emitted exactly once even when both race on two CPUs.
#[map]
pub static PENDING_CONNECTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1 << 18, 0);

/// The socket a thread is connecting, from its CLOSE->SYN_SENT until its connect() returns.
#[map]
pub static CONNECTING_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Filled by userspace from BTF before load; read-only to the programs.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_family: 0,
    skc_net: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    sk_protocol: 0,
    inet_sport: 0,
    net_inum: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile so the compiler does not fold the zero initial value into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += 1 };
    }
}
