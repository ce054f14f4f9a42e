use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use sockwatch_common::{ConnEvent, KernelOffsets, SockInfo, counter};

/// Events to userspace. Userspace sets the size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Live sockets by `struct sock` address: birth time and owner. LRU so that sockets whose close
/// was missed cannot fill it; evictions are derived from the insert/remove counters.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(1 << 20, 0);

/// Where the filtered path builds an event before deciding to send it (the BPF stack is too
/// small for a copy per call site).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct Scratch {
    /// Set while a program fills `event`.
    pub busy: u64,
    pub event: ConnEvent,
    pub common: crate::sock::SockCommon,
}

/// Per CPU: the state changes `inet_sock_set_state` has taken on and `state_nested` has not yet
/// seen (see `state`).
#[map]
pub static TAKEN: PerCpuArray<Taken> = PerCpuArray::with_max_entries(1, 0);

/// Slots in [`Taken`]: an entry is awaited only while its tracepoint call is in progress, so at
/// most two at once (a task's, and a softirq's that interrupts it); the others hold leftovers
/// until their stack position comes round again.
pub const TAKEN_SLOTS: usize = 4;

#[repr(C)]
pub struct Taken {
    /// State changes taken on this CPU so far: the age of the entries.
    pub seq: u64,
    /// Stack position of each entry's tracepoint call (see `state::frame`); 0 for a free slot.
    pub frame: [u64; TAKEN_SLOTS],
    pub sk: [u64; TAKEN_SLOTS],
    /// `seq << 16 | old << 8 | new` of each entry.
    pub tag: [u64; TAKEN_SLOTS],
}

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
    sk_err: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    syscall_arg0: 0,
    syscall_arg1: 0,
    sys_exit_ret: 0,
    sys_enter_arg0: 0,
    sys_enter_arg1: 0,
    drop_reason_listen_overflow: sockwatch_common::NO_DROP_REASON,
    wakeup_bytes: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile so the compiler does not fold the zero initial value into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Reads an 8-byte field of a syscall tracepoint record. The offset is only known at load
/// time, and the verifier allows direct context loads at constant offsets only, so this goes
/// through a probe read.
#[inline(always)]
pub fn record_field(ctx: &aya_ebpf::programs::TracePointContext, offset: u32) -> u64 {
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Atomic even though the slot is this CPU's: a softirq can interrupt a program between
        // the load and the store of a plain `+= 1` and run one of ours that bumps the same
        // counter, whose increment the store would then undo.
        // (`AtomicU64` has no `fetch_add` on this target; the intrinsic becomes one atomic add
        // instruction.)
        // SAFETY: a valid, aligned map value that lives as long as the map.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}
