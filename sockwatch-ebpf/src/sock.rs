//! Reading `struct sock` and emitting events.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
};
use sockwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, KernelOffsets, SOCK_COMMON_READ, SockInfo, counter,
    flags,
};

use crate::{
    filter::{self, Verdict},
    maps::{EVENTS, SCRATCH, SOCKS, bump, offsets},
};

const IPPROTO_TCP: u16 = 6;
const EEXIST: i32 = 17;

/// The head of `struct sock`, read at once.
#[repr(C, align(8))]
pub struct SockCommon(pub [u8; SOCK_COMMON_READ]);

impl SockCommon {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: u32) -> [u8; N] {
        let off = off as usize;
        let mut out = [0u8; N];
        if let Some(src) = self.0.get(off..off + N) {
            out.copy_from_slice(src);
        }
        out
    }
}

/// True for TCP sockets (the tracepoint also fires for MPTCP and SCTP sockets).
#[inline(always)]
pub fn is_tcp(sk: u64, off: &KernelOffsets) -> bool {
    let proto: Result<u16, _> =
        unsafe { bpf_probe_read_kernel((sk + off.sk_protocol as u64) as *const u16) };
    matches!(proto, Ok(IPPROTO_TCP))
}

/// Owner fields of the current task, with OWNER_MATCH when it passes the owner filters; only
/// meaningful in process context.
#[inline(always)]
pub fn current_owner(now: u64, netns: u32, extra_flags: u8) -> SockInfo {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let matched = if filter::current_task_matches(pid, &comm) {
        flags::OWNER_MATCH
    } else {
        0
    };
    SockInfo {
        birth_ns: now,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid,
        netns,
        comm,
        flags: flags::BIRTH_KNOWN | flags::OWNER_KNOWN | matched | extra_flags,
        _pad: [0; 7],
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

/// A copy of a socket's record, or its absence. The copy is always fully written (zeros when
/// absent): an `Option<SockInfo>` leaves an undefined payload that LLVM may compute with or
/// spill on the `None` path, which the verifier refuses.
#[derive(Clone, Copy)]
pub struct Record {
    info: SockInfo,
    found: bool,
}

impl Record {
    pub const ABSENT: Self = Self {
        info: SockInfo {
            birth_ns: 0,
            cgroup_id: 0,
            pid: 0,
            netns: 0,
            comm: [0; COMM_LEN],
            flags: 0,
            _pad: [0; 7],
        },
        found: false,
    };

    /// The record of `sk` in the socket map.
    #[inline(always)]
    pub fn lookup(sk: u64) -> Self {
        let mut r = Self::ABSENT;
        if let Some(p) = SOCKS.get_ptr(sk) {
            r.info = unsafe { *p };
            r.found = true;
        }
        r
    }

    #[inline(always)]
    pub fn of(info: SockInfo) -> Self {
        Self { info, found: true }
    }

    #[inline(always)]
    pub fn get(&self) -> Option<&SockInfo> {
        if self.found { Some(&self.info) } else { None }
    }

    #[inline(always)]
    pub fn found(&self) -> bool {
        self.found
    }
}

/// Take a socket's record out of the map (at its close).
#[inline(always)]
pub fn forget(sk: u64) -> Record {
    // Copy before delete: after a delete the element may be reused by another CPU.
    let r = Record::lookup(sk);
    if !r.found || SOCKS.remove(sk).is_err() {
        return Record::ABSENT;
    }
    bump(counter::SOCK_REMOVED);
    r
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
    emit_patched(sk, kind, old, new, info, extra_flags, |_| {})
}

/// As [`emit`], letting the caller set fields the socket does not hold (errno, a destination).
///
/// With filters set, the event is built in a per-CPU scratch buffer and reaches the ring only
/// if kept, so a filtered-out event never takes ring space. Without filters (the verifier drops
/// every `filter::any()` branch then) it is built in the ring directly, as always.
#[inline(always)]
pub fn emit_patched(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
    patch: impl FnOnce(&mut ConnEvent),
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
    let now = unsafe { bpf_ktime_get_ns() };
    if filter::any()
        && let Some(scratch) = SCRATCH.get_ptr_mut(0)
    {
        // SAFETY: per-CPU; only another program of ours interrupting this one on this CPU (a
        // softirq) can use it meanwhile, and `busy` sends that one down the ring path.
        let scratch = unsafe { &mut *scratch };
        if scratch.busy == 0 {
            scratch.busy = 1;
            let ev = &mut scratch.event;
            let verdict = match fill(
                ev,
                &mut scratch.common,
                sk,
                &off,
                kind,
                old,
                new,
                now,
                info,
                extra_flags,
            ) {
                Ok(()) => {
                    patch(ev);
                    let verdict = filter::after_read(ev);
                    if verdict == Verdict::Keep
                        && EVENTS.output::<ConnEvent>(ev, wakeup_flags(&off)).is_err()
                    {
                        bump(counter::RINGBUF_FULL);
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
    }
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return Verdict::DropEvent;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let mut common = SockCommon([0; SOCK_COMMON_READ]);
    if fill(
        ev,
        &mut common,
        sk,
        &off,
        kind,
        old,
        new,
        now,
        info,
        extra_flags,
    )
    .is_err()
    {
        entry.discard(0);
        bump(counter::READ_FAILED);
        return Verdict::DropEvent;
    }
    patch(ev);
    let verdict = if filter::any() {
        filter::after_read(ev)
    } else {
        Verdict::Keep
    };
    if verdict == Verdict::Keep {
        entry.submit(wakeup_flags(&off));
    } else {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
    }
    verdict
}

/// Batch wake-ups: each one is an irq_work on this CPU, which also makes it likelier that a
/// softirq interrupts one of our programs (a recursion miss, i.e. a lost run).
#[inline(always)]
fn wakeup_flags(off: &KernelOffsets) -> u64 {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= u64::from(off.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill(
    ev: &mut ConnEvent,
    common: &mut SockCommon,
    sk: u64,
    off: &KernelOffsets,
    kind: u8,
    old: u8,
    new: u8,
    now: u64,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Result<(), i64> {
    unsafe { bpf_probe_read_kernel_buf(sk as *const u8, &mut common.0)? };
    let sport: [u8; 2] =
        unsafe { bpf_probe_read_kernel((sk + off.inet_sport as u64) as *const [u8; 2])? };

    let family = u16::from_ne_bytes(common.bytes::<2>(off.skc_family)) as u8;
    ev.family = family;
    ev.local_addr = [0; 16];
    ev.peer_addr = [0; 16];
    if family == AF_INET {
        ev.local_addr[..4].copy_from_slice(&common.bytes::<4>(off.skc_rcv_saddr));
        ev.peer_addr[..4].copy_from_slice(&common.bytes::<4>(off.skc_daddr));
    } else if family == AF_INET6 {
        ev.local_addr = common.bytes::<16>(off.skc_v6_rcv_saddr);
        ev.peer_addr = common.bytes::<16>(off.skc_v6_daddr);
    }
    ev.local_port = u16::from_be_bytes(sport);
    ev.peer_port = u16::from_be_bytes(common.bytes::<2>(off.skc_dport));
    ev.ts_ns = now;
    if kind == sockwatch_common::kind::CONNECT
        && let Some(info) = info
    {
        // A connect is emitted once its port is bound; it happened at the socket's birth.
        ev.ts_ns = info.birth_ns;
    }
    ev.kind = kind;
    ev.old_state = old;
    ev.new_state = new;
    ev.errno = 0;
    ev._pad = [0; 5];
    match info {
        Some(info) => {
            ev.duration_ns = if info.flags & flags::BIRTH_KNOWN != 0 {
                now.saturating_sub(info.birth_ns)
            } else {
                0
            };
            ev.cgroup_id = info.cgroup_id;
            ev.pid = info.pid;
            ev.comm = info.comm;
            ev.netns = if info.netns != 0 {
                info.netns
            } else {
                netns_of(sk, off)
            };
            ev.flags = info.flags | extra_flags;
        }
        None => {
            ev.duration_ns = 0;
            ev.cgroup_id = 0;
            ev.pid = 0;
            ev.comm = [0; COMM_LEN];
            ev.netns = netns_of(sk, off);
            ev.flags = extra_flags;
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
