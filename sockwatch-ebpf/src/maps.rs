use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use sockwatch_common::{
    ConnEvent, ErrorKey, KernelOffsets, ListenerCounts, Mode, OutboundCounts, PeerKey, PortKey,
    ProcessCounts, ProcessKey, STATS_WINDOW, SockInfo, StatsOffsets, counter,
};

/// Events to userspace. Userspace sets the size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// The hash maps' flags: memory allocated as entries are added, so that a map sized for
/// millions costs only what it holds. Before Linux 6.1 the kernel warns (a kernel WARNING) when
/// a tracing program uses such a map, so there the loader clears the flag and sizes them down.
const ON_DEMAND: u32 = BPF_F_NO_PREALLOC;

/// Live sockets by `struct sock` address: birth time and owner. A plain hash map: when full, a
/// new socket is not tracked (counted); userspace sizes it. The sizes below are placeholders:
/// the loader sets every map's size.
#[map]
pub static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(1 << 20, ON_DEMAND);

/// Where an event is built when it may not go to the ring (filters set, or counted only): the
/// BPF stack is too small for a copy per call site. Two per CPU: a program interrupted by a
/// softirq that runs one of ours on the same CPU holds one, the nested run takes the other.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

pub const SCRATCH_SLOTS: u32 = 2;

#[repr(C)]
pub struct Scratch {
    /// Set while a program fills `event`.
    pub busy: u64,
    pub event: ConnEvent,
    pub common: crate::sock::SockCommon,
}

/// Where a closing socket's `struct tcp_sock` fields are read to (see `sock::read_stats`), two
/// per CPU as in `SCRATCH`.
#[map]
pub static WINDOWS: PerCpuArray<Window> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

#[repr(C)]
pub struct Window {
    /// Set while a program uses `bytes`.
    pub busy: u64,
    pub bytes: [u8; STATS_WINDOW],
}

impl Window {
    /// `N` bytes at `off`; zeros if out of range (never, given the start-up checks; the
    /// verifier needs the bound).
    #[inline(always)]
    pub fn get<const N: usize>(&self, off: u32) -> [u8; N] {
        let off = off as usize;
        match self.bytes.get(off..off + N) {
            // SAFETY: `src` holds exactly N bytes.
            Some(src) => unsafe { src.as_ptr().cast::<[u8; N]>().read_unaligned() },
            None => [0; N],
        }
    }
}

/// A per-CPU buffer taken while a program uses it: `busy` first.
pub trait Slot {
    fn busy(&mut self) -> &mut u64;
}

impl Slot for Scratch {
    #[inline(always)]
    fn busy(&mut self) -> &mut u64 {
        &mut self.busy
    }
}

impl Slot for Window {
    #[inline(always)]
    fn busy(&mut self) -> &mut u64 {
        &mut self.busy
    }
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

/// In-kernel counts by listening port (see `count`).
#[map]
pub static LISTENERS: HashMap<PortKey, ListenerCounts> =
    HashMap::with_max_entries(1 << 14, ON_DEMAND);

/// In-kernel counts by remote port.
#[map]
pub static OUTBOUND: HashMap<PortKey, OutboundCounts> =
    HashMap::with_max_entries(1 << 14, ON_DEMAND);

/// accept() and connect() failures by port and errno.
#[map]
pub static ERRORS: HashMap<ErrorKey, u64> = HashMap::with_max_entries(1 << 16, ON_DEMAND);

/// Outbound counts by remote port and connecting process.
#[map]
pub static PROCESSES: HashMap<ProcessKey, ProcessCounts> =
    HashMap::with_max_entries(1 << 16, ON_DEMAND);

/// Peer addresses seen per port: a port's `peers` counts the new ones.
#[map]
pub static PEERS: HashMap<PeerKey, u8> = HashMap::with_max_entries(1 << 18, ON_DEMAND);

/// Never written: the zeros a new counter entry starts from (a `ListenerCounts` is far larger
/// than the BPF stack). Its value is the largest counter value, so it serves every map.
#[map]
pub static ZEROS: Array<ListenerCounts> = Array::with_max_entries(1, 0);

/// Set by userspace before load; read-only to the programs, so the verifier sees constants and
/// drops the branches of the modes not in use.
#[unsafe(no_mangle)]
static MODE: Mode = Mode::RING_ONLY;

/// Whether the in-kernel counters are updated (`Mode::count`).
#[inline(always)]
pub fn counting() -> bool {
    // Volatile so the compiler keeps the load the verifier resolves.
    unsafe { core::ptr::read_volatile(&MODE.count) != 0 }
}

/// Set by userspace before load: a port's counts are spread over `COUNT_SHARD_MASK + 1`
/// entries, by CPU (see `PortKey::shard`); read-only to the programs.
#[unsafe(no_mangle)]
static COUNT_SHARD_MASK: u32 = 0;

/// `COUNT_SHARD_MASK`.
#[inline(always)]
pub fn count_shard_mask() -> u32 {
    // Volatile so the compiler keeps the load the verifier resolves.
    unsafe { core::ptr::read_volatile(&COUNT_SHARD_MASK) }
}

/// `Mode::ring_kinds`.
#[inline(always)]
pub fn ring_kinds() -> u32 {
    unsafe { core::ptr::read_volatile(&MODE.ring_kinds) }
}

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
    regs_arg0: 0,
    regs_arg1: 0,
    regs_ret: 0,
    accept_ret_arg: 0,
    drop_reason_listen_overflow: sockwatch_common::NO_DROP_REASON,
    wakeup_bytes: 0,
};

/// Filled by userspace from BTF before load (see `StatsOffsets`).
#[unsafe(no_mangle)]
pub(crate) static STATS_OFFSETS: StatsOffsets = StatsOffsets {
    window: 0,
    window_len: 0,
    bytes_received: 0,
    bytes_acked: 0,
    total_retrans: 0,
    srtt_us: 0,
    snd_una: 0,
    write_seq: 0,
    sk_flags: 0,
    sock_done_bit: 0,
};

/// One field of `STATS_OFFSETS`, e.g. `stats_offset!(window)`: read one at a time, as needed,
/// so that no copy of the whole takes room on the programs' stacks.
macro_rules! stats_offset {
    ($field:ident) => {
        // Volatile so the compiler does not fold the zero initial value into the code.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::STATS_OFFSETS.$field) }
    };
}
pub(crate) use stats_offset;

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
        add(slot, 1);
    }
}

/// `*p += v` as one atomic add (wrapping: `v` may be a negative number's bits).
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // (`AtomicU64` has no `fetch_add` on this target; the intrinsic becomes one atomic add
    // instruction.)
    // SAFETY: callers pass an aligned pointer into a map value, which lives as long as the map.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// A slot of `map` on this CPU that no run of ours is using, marked busy; release it with
/// `busy = 0`. None when both are taken (not seen: it takes a third run nested on one CPU).
#[inline(always)]
pub fn take<T: Slot>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    for i in 0..SCRATCH_SLOTS {
        if let Some(p) = map.get_ptr_mut(i) {
            // SAFETY: this CPU's slot; a run that interrupts this one sees it busy.
            let s = unsafe { &mut *p };
            let busy = s.busy();
            if *busy == 0 {
                *busy = 1;
                return Some(s);
            }
        }
    }
    None
}

/// A scratch slot to build an event in (see [`take`]).
#[inline(always)]
pub fn take_scratch() -> Option<&'static mut Scratch> {
    take(&SCRATCH)
}
