//! Reading `struct sock`, and the socket map's records of the sockets being followed.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel, generated,
    },
};
use sockwatch_common::{
    COMM_LEN, ConnEvent, KernelOffsets, SOCK_COMMON_READ, STATS_WINDOW, SockInfo, counter, flags,
};

use crate::{
    filter,
    maps::{SOCKS, WINDOWS, bump, stats_offset, take},
    store::{copy16, put, zero_bytes, zero16},
};

const IPPROTO_TCP: u16 = 6;
const EEXIST: i32 = 17;

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
    pub(crate) unsafe fn read<'a>(dst: *mut Self, sk: u64) -> Result<&'a Self, i64> {
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
    pub(crate) fn bytes<const N: usize>(&self, off: u32) -> [u8; N] {
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
