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
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, KernelOffsets, SOCK_COMMON_READ, SockInfo, counter,
    flags,
};

use crate::{
    maps::{EVENTS, SOCKS, bump, offsets},
    store::{copy16, put, put16, zero_bytes, zero16},
};

const IPPROTO_TCP: u16 = 6;
const EEXIST: i32 = 17;
/// Bytes past the wake-up threshold in which a submit still wakes the reader (about 80
/// events).
const WAKEUP_WINDOW: u64 = 8192;

#[repr(C, align(8))]
struct SockCommon([u8; SOCK_COMMON_READ]);

impl SockCommon {
    /// The head of `struct sock`, in one read into `buf` (not zeroed first: the read fills
    /// all of it, and zeroing would cost a memset).
    #[inline(always)]
    fn read(buf: &mut MaybeUninit<Self>, sk: u64) -> Result<&Self, i64> {
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                buf.as_mut_ptr().cast(),
                SOCK_COMMON_READ as u32,
                sk as *const c_void,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        // SAFETY: the helper wrote every byte.
        Ok(unsafe { buf.assume_init_ref() })
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

/// Owner fields of the current task, written into `slot`; only meaningful in process context.
#[inline(always)]
pub fn current_owner(
    slot: &mut MaybeUninit<SockInfo>,
    now: u64,
    netns: u32,
    extra_flags: u8,
) -> &mut SockInfo {
    let mut comm = MaybeUninit::<[u8; COMM_LEN]>::uninit();
    // Not through aya's wrapper, which zeroes the buffer first (a memset, see `store`).
    let rc = unsafe { generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    // SAFETY: on success the helper filled the buffer.
    let comm = (rc == 0).then(|| unsafe { comm.assume_init_ref() });
    sock_info(
        slot,
        now,
        unsafe { bpf_get_current_cgroup_id() },
        (bpf_get_current_pid_tgid() >> 32) as u32,
        netns,
        comm,
        flags::BIRTH_KNOWN | flags::OWNER_KNOWN | extra_flags,
    )
}

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

/// Remember a socket's birth; counts what the loss report needs.
#[inline(always)]
pub fn remember(sk: u64, info: &SockInfo) {
    match SOCKS.insert(sk, info, BPF_NOEXIST as u64) {
        Ok(()) => bump(counter::SOCK_INSERTED),
        // The address was reused before its old close was seen: replace, count nothing new.
        Err(e) if e == -EEXIST => {
            if SOCKS.insert(sk, info, 0).is_err() {
                bump(counter::SOCK_INSERT_FAILED);
            }
        }
        Err(_) => bump(counter::SOCK_INSERT_FAILED),
    }
}

/// Take a socket's record out of the map (at its close).
#[inline(always)]
pub fn forget(sk: u64) -> Option<SockInfo> {
    // Copy before delete: after a delete the element may be reused by another CPU.
    let info = SOCKS.get_ptr(sk).map(|p| unsafe { *p })?;
    match SOCKS.remove(sk) {
        Ok(()) => {
            bump(counter::SOCK_REMOVED);
            Some(info)
        }
        Err(_) => None,
    }
}

/// Emit one event for `sk`: the 5-tuple is read from the socket now, the owner and birth from
/// `info` when known.
#[inline(always)]
pub fn emit(sk: u64, kind: u8, old: u8, new: u8, info: Option<&SockInfo>, extra_flags: u8) {
    emit_patched(sk, kind, old, new, info, extra_flags, |_| {});
}

/// As [`emit`], letting the caller set fields the socket does not hold (errno, a destination).
#[inline(always)]
pub fn emit_patched(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
    patch: impl FnOnce(&mut ConnEvent),
) {
    let off = offsets();
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    if fill(ev, sk, &off, kind, old, new, now, info, extra_flags).is_err() {
        entry.discard(0);
        bump(counter::READ_FAILED);
        return;
    }
    patch(ev);
    // Batch wake-ups: each one is an irq_work (a self-IPI: a VM exit on a virtual machine) on
    // this CPU, which also makes it likelier that a softirq interrupts one of our programs (a
    // recursion miss, i.e. a lost run). So wake the reader only as the backlog crosses the
    // threshold, not on every event above it: a reader that is behind has been woken already,
    // and it also polls on a short timer. The window is wider than one record so that
    // concurrent submits on other CPUs cannot step over it.
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = u64::from(off.wakeup_bytes);
    let flags = if avail >= threshold && avail < threshold + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill(
    ev: &mut ConnEvent,
    sk: u64,
    off: &KernelOffsets,
    kind: u8,
    old: u8,
    new: u8,
    now: u64,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Result<(), i64> {
    let mut buf = MaybeUninit::uninit();
    let common = SockCommon::read(&mut buf, sk)?;
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
    Ok(())
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
    let sk = read(socket + off.socket_sk as u64)?;
    (sk != 0).then_some(sk)
}

/// `sk->sk_err`: the error that ended a connecting socket (0 if the application closed it).
#[inline(always)]
pub fn sock_error(sk: u64, off: &KernelOffsets) -> u16 {
    let err: i32 =
        unsafe { bpf_probe_read_kernel((sk + off.sk_err as u64) as *const i32) }.unwrap_or(0);
    err.clamp(0, i32::from(u16::MAX)) as u16
}
