//! Reading `struct sock` and emitting events.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
    },
};
use sockwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, KernelOffsets, SOCK_COMMON_READ, STATS_WINDOW,
    SockInfo, counter, flags, kind, tcp_state,
};

use crate::{
    count::{count, count_connect_established, to_ring},
    filter::{self, Verdict},
    maps::{EVENTS, SOCKS, WINDOWS, bump, counting, offsets, stats_offset, take, take_scratch},
    store::{copy_words, copy16, put, put16, zero_bytes, zero16},
};

const IPPROTO_TCP: u16 = 6;
const EEXIST: i32 = 17;
/// Bytes past the wake-up threshold in which a submit still wakes the reader (about 80
/// events).
const WAKEUP_WINDOW: u64 = 8192;

/// The head of `struct sock`, read at once.
#[repr(C, align(8))]
pub struct SockCommon(pub [u8; SOCK_COMMON_READ]);

impl SockCommon {
    /// The head of `struct sock`, in one read into `dst` (not zeroed first: the read fills
    /// all of it, and zeroing would cost a memset).
    ///
    /// # Safety
    /// `dst` must be valid for writes of a `SockCommon` and not otherwise borrowed while the
    /// result lives.
    #[inline(always)]
    unsafe fn read<'a>(dst: *mut Self, sk: u64) -> Result<&'a Self, i64> {
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                dst.cast(),
                SOCK_COMMON_READ as u32,
                sk as *const c_void,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        // SAFETY: the helper wrote every byte.
        Ok(unsafe { &*dst })
    }

    /// `N` bytes at `off`; zeros if the offset is out of range (never, given the start-up
    /// checks; the verifier needs the bound).
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: u32) -> [u8; N] {
        let off = off as usize;
        match self.0.get(off..off + N) {
            // SAFETY: `src` holds exactly N bytes.
            Some(src) => unsafe { src.as_ptr().cast::<[u8; N]>().read_unaligned() },
            None => [0; N],
        }
    }
}

/// True for TCP sockets (the tracepoint also fires for MPTCP and SCTP sockets).
#[inline(always)]
pub fn is_tcp(sk: u64, off: &KernelOffsets) -> bool {
    let proto: Result<u16, _> =
        unsafe { bpf_probe_read_kernel((sk + off.sk_protocol as u64) as *const u16) };
    matches!(proto, Ok(IPPROTO_TCP))
}

/// Owner fields of the current task, written into `slot`, with OWNER_MATCH when it passes the
/// owner filters; only meaningful in process context.
#[inline(always)]
pub fn current_owner(
    slot: &mut MaybeUninit<SockInfo>,
    now: u64,
    netns: u32,
    extra_flags: u8,
) -> &mut SockInfo {
    let mut comm = MaybeUninit::<Comm>::uninit();
    // Zeroed first, with two stores (aya's wrapper zeroes it with a memset, see `store`): some
    // kernels (6.1) copy the name without padding it, which would leave stack bytes after its
    // NUL, and the name is compared and used as is (in `ProcessCounts` say). On failure the
    // helper zeroes it.
    // SAFETY: `Comm` is 8-aligned; both words are written before the helper's call.
    let comm = unsafe {
        let c = &mut (*comm.as_mut_ptr()).0;
        zero16(c);
        generated::bpf_get_current_comm(c.as_mut_ptr().cast(), COMM_LEN as u32);
        &comm.assume_init_ref().0
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let matched = if filter::current_task_matches(pid, comm) {
        flags::OWNER_MATCH
    } else {
        0
    };
    sock_info(
        slot,
        now,
        unsafe { bpf_get_current_cgroup_id() },
        pid,
        netns,
        Some(comm),
        flags::BIRTH_KNOWN | flags::OWNER_KNOWN | matched | extra_flags,
    )
}

/// A command name, aligned for [`zero16`].
#[repr(C, align(8))]
struct Comm([u8; COMM_LEN]);

/// A `SockInfo`, built in place in `slot` with plain stores: built elsewhere and copied, its
/// zero fields would come back as memsets (see `store`).
#[inline(always)]
pub fn sock_info<'a>(
    slot: &'a mut MaybeUninit<SockInfo>,
    birth_ns: u64,
    cgroup_id: u64,
    pid: u32,
    netns: u32,
    comm: Option<&[u8; COMM_LEN]>,
    flags: u8,
) -> &'a mut SockInfo {
    // SAFETY: every field is written below before `assume_init_mut`.
    unsafe {
        let p = &mut *slot.as_mut_ptr();
        put(&mut p.birth_ns, birth_ns);
        put(&mut p.cgroup_id, cgroup_id);
        put(&mut p.pid, pid);
        put(&mut p.netns, netns);
        match comm {
            Some(comm) => copy16(&mut p.comm, comm),
            None => zero16(&mut p.comm),
        }
        put(&mut p.flags, flags);
        zero_bytes(&mut p._pad);
        put(&mut p.connect_pending, 0);
        slot.assume_init_mut()
    }
}

/// Network namespace inode of a socket, 0 when unreadable.
#[inline(always)]
pub fn netns_of(sk: u64, off: &KernelOffsets) -> u32 {
    let net: u64 =
        unsafe { bpf_probe_read_kernel((sk + off.skc_net as u64) as *const u64) }.unwrap_or(0);
    if net == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((net + off.net_inum as u64) as *const u32) }.unwrap_or(0)
}

/// Remember a socket's birth; counts what the loss report needs. Says whether the record is
/// in the map.
#[inline(always)]
pub fn remember(sk: u64, info: &SockInfo) -> bool {
    match SOCKS.insert(sk, info, BPF_NOEXIST as u64) {
        Ok(()) => {
            bump(counter::SOCK_INSERTED);
            true
        }
        // The address was reused before its old close was seen: replace, count nothing new.
        Err(e) if e == -EEXIST => {
            if SOCKS.insert(sk, info, 0).is_err() {
                bump(counter::SOCK_INSERT_FAILED);
                return false;
            }
            true
        }
        Err(_) => {
            bump(counter::SOCK_INSERT_FAILED);
            false
        }
    }
}

/// A copy of the record of `sk` in the socket map, into `slot`. Copied, not borrowed: after a
/// delete the element may be reused by another CPU.
#[inline(always)]
pub fn lookup(sk: u64, slot: &mut MaybeUninit<SockInfo>) -> Option<&SockInfo> {
    let p = SOCKS.get_ptr(sk)?;
    Some(copy_info(slot, p))
}

/// `*p` into `slot`, as an inline copy (a plain `*p` read may become a memmove call).
#[inline(always)]
pub fn copy_info(slot: &mut MaybeUninit<SockInfo>, p: *const SockInfo) -> &SockInfo {
    // SAFETY: `p` points to a live map value, `slot` is ours; they cannot overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(p, slot.as_mut_ptr(), 1);
        slot.assume_init_ref()
    }
}

/// Take a socket's record out of the map (at its close), copied into `slot`.
#[inline(always)]
pub fn forget(sk: u64, slot: &mut MaybeUninit<SockInfo>) -> Option<&SockInfo> {
    let info = lookup(sk, slot)?;
    if SOCKS.remove(sk).is_err() {
        return None;
    }
    bump(counter::SOCK_REMOVED);
    Some(info)
}

/// Emit one event for `sk`: the 5-tuple is read from the socket now, the owner and birth from
/// `info` when known. Says whether the filters kept it.
#[inline(always)]
pub fn emit(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Verdict {
    emit_patched(sk, kind, old, new, info, extra_flags, |_, _| {})
}

/// As [`emit`], letting the caller set fields the socket does not hold (errno, a destination,
/// what it carried), given the head of `struct sock` read for the event.
///
/// A kept event is counted (`Mode::count`), and written to the ring if its kind goes there
/// (see `count::to_ring`). With filters set, or when the event is only counted, it is built in
/// a per-CPU scratch buffer, so that it takes ring space only if it is sent. Otherwise (always
/// without filters in the default mode: the verifier drops every other branch then) it is built
/// in the ring directly.
#[inline(always)]
pub fn emit_patched(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
    patch: impl FnOnce(&mut ConnEvent, &SockCommon),
) -> Verdict {
    let off = offsets();
    if filter::any() {
        let owner_flags = match info {
            Some(i) => i.flags,
            None => 0,
        };
        let early = filter::before_read(kind, owner_flags);
        if early != Verdict::Keep {
            return early;
        }
    }
    let ring = to_ring(kind, info, extra_flags);
    let now = unsafe { bpf_ktime_get_ns() };
    // A scratch slot is only taken when a run interrupting this one on its CPU (a softirq) is
    // not already using both; then the event goes through the ring, discarded if not sent.
    // When counting, the event is built in scratch even when it goes to the ring, so that a
    // full ring costs the event, never its count.
    if (filter::any() || !ring || counting())
        && let Some(scratch) = take_scratch()
    {
        let ev = &mut scratch.event;
        let verdict = match fill(
            ev,
            &raw mut scratch.common,
            sk,
            &off,
            kind,
            old,
            new,
            now,
            info,
            extra_flags,
        ) {
            Ok(head) => {
                patch(ev, head);
                let verdict = if filter::any() {
                    filter::after_read(ev)
                } else {
                    Verdict::Keep
                };
                if verdict == Verdict::Keep {
                    count(ev);
                    if ring
                        && EVENTS
                            .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                            .is_err()
                    {
                        bump(counter::RINGBUF_FULL);
                    }
                }
                verdict
            }
            Err(_) => {
                bump(counter::READ_FAILED);
                Verdict::DropEvent
            }
        };
        scratch.busy = 0;
        return verdict;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return Verdict::DropEvent;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let mut common = MaybeUninit::<SockCommon>::uninit();
    let Ok(head) = fill(
        ev,
        common.as_mut_ptr(),
        sk,
        &off,
        kind,
        old,
        new,
        now,
        info,
        extra_flags,
    ) else {
        entry.discard(0);
        bump(counter::READ_FAILED);
        return Verdict::DropEvent;
    };
    patch(ev, head);
    let verdict = if filter::any() {
        filter::after_read(ev)
    } else {
        Verdict::Keep
    };
    if verdict == Verdict::Keep {
        count(ev);
        if ring {
            entry.submit(wakeup_flags(&off));
            return verdict;
        }
    }
    entry.discard(BPF_RB_NO_WAKEUP as u64);
    verdict
}

/// A client's `connect` and `established` when they come together (the connect was still
/// pending at its SYN_SENT->ESTABLISHED), for the socket whose record is `info`: the socket is
/// read once, and when both go to the ring, one slot holding both is reserved. Only without
/// filters (the verifier drops it otherwise), where every event is kept. False when it could
/// not emit them (counted only, and no scratch slot free on this CPU): the caller emits them one
/// by one.
#[inline(always)]
pub fn emit_connect_established(sk: u64, info: &SockInfo) -> bool {
    let off = offsets();
    let now = unsafe { bpf_ktime_get_ns() };
    let ring_connect = to_ring(kind::CONNECT, Some(info), 0);
    let ring_established = to_ring(kind::ESTABLISHED, Some(info), flags::ESTABLISHED);
    // Counting: built in scratch, so that a full ring costs the events, never their counts.
    if !(ring_connect && ring_established) || counting() {
        let Some(scratch) = take_scratch() else {
            return false;
        };
        let ev = &mut scratch.event;
        if fill(
            ev,
            &raw mut scratch.common,
            sk,
            &off,
            kind::CONNECT,
            tcp_state::CLOSE,
            tcp_state::SYN_SENT,
            now,
            Some(info),
            0,
        )
        .is_err()
        {
            bump(counter::READ_FAILED);
            bump(counter::READ_FAILED);
        } else {
            count_connect_established(ev);
            if ring_connect
                && EVENTS
                    .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                    .is_err()
            {
                bump(counter::RINGBUF_FULL);
            }
            established_from_connect(ev, now);
            if ring_established
                && EVENTS
                    .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                    .is_err()
            {
                bump(counter::RINGBUF_FULL);
            }
        }
        scratch.busy = 0;
        return true;
    }
    let Some(mut entry) = EVENTS.reserve::<[ConnEvent; 2]>(0) else {
        bump(counter::RINGBUF_FULL);
        bump(counter::RINGBUF_FULL);
        return true;
    };
    // SAFETY: the reservation holds two events and is ours until submitted.
    let [connect, established] = unsafe { &mut *entry.as_mut_ptr() };
    let mut common = MaybeUninit::<SockCommon>::uninit();
    if fill(
        connect,
        common.as_mut_ptr(),
        sk,
        &off,
        kind::CONNECT,
        tcp_state::CLOSE,
        tcp_state::SYN_SENT,
        now,
        Some(info),
        0,
    )
    .is_err()
    {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        bump(counter::READ_FAILED);
        bump(counter::READ_FAILED);
        return true;
    }
    copy_words(established, connect);
    established_from_connect(established, now);
    count_connect_established(connect);
    entry.submit(wakeup_flags(&off));
    true
}

/// Turns a copy of a `connect` event into the `established` of the same socket at the same
/// moment: only the kind, the states, the time and the ESTABLISHED flag differ.
#[inline(always)]
fn established_from_connect(ev: &mut ConnEvent, now: u64) {
    put(&mut ev.kind, kind::ESTABLISHED);
    put(&mut ev.old_state, tcp_state::SYN_SENT);
    put(&mut ev.new_state, tcp_state::ESTABLISHED);
    put(&mut ev.ts_ns, now);
    let established = ev.flags | flags::ESTABLISHED;
    put(&mut ev.flags, established);
}

/// Batch wake-ups: each one is an irq_work (a self-IPI: a VM exit on a virtual machine) on this
/// CPU, which also makes it likelier that a softirq interrupts one of our programs (a recursion
/// miss, i.e. a lost run). So wake the reader only as the backlog crosses the threshold, not on
/// every event above it: a reader that is behind has been woken already, and it also polls on a
/// short timer. The window is wider than one record so that concurrent submits on other CPUs
/// cannot step over it.
#[inline(always)]
fn wakeup_flags(off: &KernelOffsets) -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = u64::from(off.wakeup_bytes);
    let flags = if avail >= threshold && avail < threshold + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}

/// Builds the event of `sk` in `ev`, from one read of the socket's head into `common`, which it
/// returns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill<'a>(
    ev: &mut ConnEvent,
    common: *mut SockCommon,
    sk: u64,
    off: &KernelOffsets,
    kind: u8,
    old: u8,
    new: u8,
    now: u64,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Result<&'a SockCommon, i64> {
    // SAFETY: `common` is scratch space of the caller's, used by nothing else meanwhile.
    let common = unsafe { SockCommon::read(common, sk)? };
    let sport: [u8; 2] =
        unsafe { bpf_probe_read_kernel((sk + off.inet_sport as u64) as *const [u8; 2])? };

    let family = u16::from_ne_bytes(common.bytes::<2>(off.skc_family)) as u8;
    put(&mut ev.family, family);
    if family == AF_INET {
        let [a, b, c, d] = common.bytes::<4>(off.skc_rcv_saddr);
        put16(&mut ev.local_addr, [a, b, c, d, 0, 0, 0, 0], [0; 8]);
        let [a, b, c, d] = common.bytes::<4>(off.skc_daddr);
        put16(&mut ev.peer_addr, [a, b, c, d, 0, 0, 0, 0], [0; 8]);
    } else if family == AF_INET6 {
        let v6 = off.skc_v6_rcv_saddr;
        put16(
            &mut ev.local_addr,
            common.bytes::<8>(v6),
            common.bytes::<8>(v6 + 8),
        );
        let v6 = off.skc_v6_daddr;
        put16(
            &mut ev.peer_addr,
            common.bytes::<8>(v6),
            common.bytes::<8>(v6 + 8),
        );
    } else {
        zero16(&mut ev.local_addr);
        zero16(&mut ev.peer_addr);
    }
    put(&mut ev.local_port, u16::from_be_bytes(sport));
    put(
        &mut ev.peer_port,
        u16::from_be_bytes(common.bytes::<2>(off.skc_dport)),
    );
    let mut ts = now;
    if kind == sockwatch_common::kind::CONNECT
        && let Some(info) = info
    {
        // A connect is emitted once its port is bound; it happened at the socket's birth.
        ts = info.birth_ns;
    }
    put(&mut ev.ts_ns, ts);
    put(&mut ev.kind, kind);
    put(&mut ev.old_state, old);
    put(&mut ev.new_state, new);
    put(&mut ev.errno, 0);
    zero_bytes(&mut ev._pad);
    put(&mut ev.fin, 0);
    put(&mut ev.bytes_received, 0);
    put(&mut ev.bytes_acked, 0);
    put(&mut ev.total_retrans, 0);
    put(&mut ev.srtt_us, 0);
    match info {
        Some(info) => {
            let duration = if info.flags & flags::BIRTH_KNOWN != 0 {
                now.saturating_sub(info.birth_ns)
            } else {
                0
            };
            put(&mut ev.duration_ns, duration);
            put(&mut ev.cgroup_id, info.cgroup_id);
            put(&mut ev.pid, info.pid);
            copy16(&mut ev.comm, &info.comm);
            let netns = if info.netns != 0 {
                info.netns
            } else {
                netns_of(sk, off)
            };
            put(&mut ev.netns, netns);
            put(&mut ev.flags, info.flags | extra_flags);
        }
        None => {
            put(&mut ev.duration_ns, 0);
            put(&mut ev.cgroup_id, 0);
            put(&mut ev.pid, 0);
            zero16(&mut ev.comm);
            put(&mut ev.netns, netns_of(sk, off));
            put(&mut ev.flags, extra_flags);
        }
    }
    Ok(common)
}

/// The socket behind file descriptor `fd` of the current task:
/// task->files->fdt->fd[fd]->private_data->sk. Only call it for an fd known to be a socket
/// (one a socket syscall accepted).
#[inline(always)]
pub fn sock_of_fd(fd: u64, off: &KernelOffsets) -> Option<u64> {
    let read = |addr: u64| -> Option<u64> {
        if addr == 0 {
            return None;
        }
        unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
    };
    let task = unsafe { bpf_get_current_task() };
    let files = read(task + off.task_files as u64)?;
    let fdt = read(files + off.files_fdt as u64)?;
    if fdt == 0 {
        return None;
    }
    let max_fds: u32 =
        unsafe { bpf_probe_read_kernel((fdt + off.fdt_max_fds as u64) as *const u32) }.ok()?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fd_array = read(fdt + off.fdt_fd as u64)?;
    let file = read(fd_array + fd * 8)?;
    let socket = read(file + off.file_private_data as u64)?;
    sock_of_socket(socket, off)
}

/// `socket->sk`: the `struct sock` of a `struct socket`.
#[inline(always)]
pub fn sock_of_socket(socket: u64, off: &KernelOffsets) -> Option<u64> {
    if socket == 0 {
        return None;
    }
    // SAFETY: a fault-safe read.
    let sk: u64 =
        unsafe { bpf_probe_read_kernel((socket + off.socket_sk as u64) as *const u64) }.ok()?;
    (sk != 0).then_some(sk)
}

/// What the connection carried, read from its `struct tcp_sock` (at its close): bytes each
/// way, segments retransmitted, smoothed RTT, and what tells the SYN and FINs apart from the
/// data in the byte counts (see `ConnEvent::fin`). The fields come from one read of the part of
/// the struct that holds them (see `StatsOffsets`), `sk_flags` from `head`, the socket's head
/// read for the event. Nothing where the kernel's BTF lacks a field; `flags::STATS` only once
/// the read succeeded.
#[inline(always)]
pub fn read_stats(sk: u64, ev: &mut ConnEvent, head: &SockCommon) {
    let len = stats_offset!(window_len) as usize;
    if len == 0 || len > STATS_WINDOW {
        return;
    }
    let Some(w) = take(&WINDOWS) else {
        return;
    };
    let from = sk + u64::from(stats_offset!(window));
    // SAFETY: a fault-safe read into this CPU's window, `len` bytes of its STATS_WINDOW.
    let rc = unsafe {
        generated::bpf_probe_read_kernel(
            w.bytes.as_mut_ptr().cast(),
            len as u32,
            from as *const c_void,
        )
    };
    if rc == 0 {
        put(
            &mut ev.bytes_received,
            u64::from_ne_bytes(w.get(stats_offset!(bytes_received))),
        );
        put(
            &mut ev.bytes_acked,
            u64::from_ne_bytes(w.get(stats_offset!(bytes_acked))),
        );
        put(
            &mut ev.total_retrans,
            u32::from_ne_bytes(w.get(stats_offset!(total_retrans))),
        );
        put(
            &mut ev.srtt_us,
            u32::from_ne_bytes(w.get(stats_offset!(srtt_us))),
        );
        let all_acked = w.get::<4>(stats_offset!(snd_una)) == w.get::<4>(stats_offset!(write_seq));
        let sk_flags = u64::from_ne_bytes(head.bytes::<8>(stats_offset!(sk_flags)));
        let mut fin = 0;
        if sk_flags >> (stats_offset!(sock_done_bit) & 63) & 1 != 0 {
            fin |= sockwatch_common::fin::RECEIVED;
        }
        if all_acked {
            fin |= sockwatch_common::fin::ALL_ACKED;
        }
        put(&mut ev.fin, fin);
        let flags = ev.flags | flags::STATS;
        put(&mut ev.flags, flags);
    }
    w.busy = 0;
}

/// `sk->sk_err`: the error that ended a connecting socket (0 if the application closed it).
#[inline(always)]
pub fn sock_error(sk: u64, off: &KernelOffsets) -> u16 {
    let err: i32 =
        unsafe { bpf_probe_read_kernel((sk + off.sk_err as u64) as *const i32) }.unwrap_or(0);
    err.clamp(0, i32::from(u16::MAX)) as u16
}
