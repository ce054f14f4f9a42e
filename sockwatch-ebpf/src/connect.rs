//! What a connect's return means, whichever hook sees it (see `syscall`, `fexit`, `kprobe`).
//!
//! At CLOSE->SYN_SENT the kernel has not yet chosen the local port, so the connect event waits
//! until connect() returns (or the socket's next state change). connect() errors raised before
//! any SYN is sent (no route, no local port, ...) are reported here as `connect_failed`; failures
//! after the SYN (refused, timed out) come from the socket's SYN_SENT->CLOSE change.
use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user};
use sockwatch_common::{
    AF_INET, AF_INET6, KernelOffsets, SockInfo, counter, flags, kind, tcp_state,
};

use crate::{
    emit::{emit, emit_patched},
    errno::{EALREADY, EINPROGRESS, EISCONN, errno_of, interrupted},
    filter::Verdict,
    maps::{SOCKS, bump},
    sock::{copy_info, current_owner, forget, is_tcp, netns_of},
    store::put16,
    thread,
};

/// A connect call returned `ret`. `sock` finds its socket and `dest` where it was going; both
/// are asked for only when it failed.
#[inline(always)]
pub fn connect_returned(
    ret: i64,
    sock: impl FnOnce(&KernelOffsets) -> Option<u64>,
    dest: impl FnOnce() -> Option<Destination>,
    off: &KernelOffsets,
) {
    // This thread's connecting socket (0: none), taken: the call is over.
    let connecting = thread::take_connecting();
    let errno = errno_of(ret);
    // Still connecting, or already connected: not a failure.
    let failed =
        errno.filter(|&e| !matches!(e, EINPROGRESS | EALREADY | EISCONN) && !interrupted(e));
    let Some(errno) = failed else {
        if connecting != 0 {
            let sk = connecting;
            // A SYN was sent: the connect is reported now, a failure by the state change.
            emit_pending_connect(sk, tcp_state::SYN_SENT);
        }
        return;
    };
    // An inet destination, or not ours.
    let Some(dest) = dest() else {
        return;
    };
    let Some(sk) = sock(off) else {
        return;
    };
    if connecting == sk {
        // This call sent a SYN: its state change reports the failure.
        emit_pending_connect(sk, tcp_state::SYN_SENT);
        return;
    }
    // (A connecting socket other than this call's was left by a SYN sent outside connect(),
    // TCP Fast Open say: its connect was reported by its own state change.)
    connect_failed_early(sk, &dest, errno, off);
}

/// Where a failed connect() was going, from the caller's sockaddr.
pub struct Destination {
    family: u8,
    /// Host byte order.
    port: u16,
    /// The address's two halves (see `store::put16`).
    lo: [u8; 8],
    hi: [u8; 8],
}

/// Where a sockaddr lives: the caller's memory (at a syscall) or the kernel's copy of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    User,
    Kernel,
}

#[inline(always)]
fn read<T>(addr: u64, memory: Memory) -> Option<T> {
    // SAFETY: both helpers fault-safely copy from any address.
    unsafe {
        match memory {
            Memory::User => bpf_probe_read_user(addr as *const T),
            Memory::Kernel => bpf_probe_read_kernel(addr as *const T),
        }
    }
    .ok()
}

/// The destination in the `struct sockaddr_in{,6}` at `addr`; None for other families.
#[inline(always)]
pub fn destination(addr: u64, memory: Memory) -> Option<Destination> {
    // Family (u16), port (be16), then the v4 address at 4 or, for v6, flowinfo at 4 and the
    // address at 8.
    let head: [u8; 8] = read(addr, memory)?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let (lo, hi) = if family == u16::from(AF_INET) {
        ([head[4], head[5], head[6], head[7], 0, 0, 0, 0], [0; 8])
    } else if family == u16::from(AF_INET6) {
        let a: [[u8; 8]; 2] = read(addr + 8, memory)?;
        (a[0], a[1])
    } else {
        // Unix and other families: not ours.
        return None;
    };
    Some(Destination {
        family: family as u8,
        port: u16::from_be_bytes([head[2], head[3]]),
        lo,
        hi,
    })
}

/// connect() failed before any packet left: the destination comes from the caller's sockaddr.
#[inline(always)]
fn connect_failed_early(sk: u64, dest: &Destination, errno: u16, off: &KernelOffsets) {
    if !is_tcp(sk, off) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let owner = current_owner(&mut slot, 0, netns_of(sk, off), flags::ACTIVE);
    let _ = emit_patched(
        sk,
        kind::CONNECT_FAILED,
        tcp_state::CLOSE,
        tcp_state::CLOSE,
        Some(&*owner),
        0,
        |ev, _| {
            ev.errno = errno;
            ev.duration_ns = 0;
            ev.peer_port = dest.port;
            put16(&mut ev.peer_addr, dest.lo, dest.hi);
            // The socket may not know its family-specific addresses yet; the caller's does.
            ev.family = dest.family;
        },
    );
}

/// What a socket's record holds in `connect_pending` while its connect event waits: never 0
/// (a socket's address is 8-aligned, so bit 0 is free).
#[inline(always)]
pub fn pending_tag(sk: u64) -> u32 {
    sk as u32 | 1
}

/// Marks the connect event of `sk` as waiting; its record holds the tag already.
#[inline(always)]
pub fn mark_pending(sk: u64) {
    #[cfg(feature = "compat")]
    compat::mark_pending(sk);
    #[cfg(not(feature = "compat"))]
    let _ = sk;
}

/// Claims the right to emit the connect event of `sk`, whose record is `p`: true for exactly
/// one caller (the connect() exit or the socket's next state change, possibly racing on two
/// CPUs), and only while it waits.
#[inline(always)]
pub fn claim_pending_connect(sk: u64, p: *mut SockInfo) -> bool {
    #[cfg(not(feature = "compat"))]
    let claimed = swap_claim(sk, p);
    #[cfg(feature = "compat")]
    let claimed = compat::delete_claim(sk, p);
    if claimed {
        bump(counter::PENDING_REMOVED);
    }
    claimed
}

// `swap_claim` finds `connect_pending` in the upper half of its word.
const _: () = assert!(cfg!(target_endian = "little"));

/// The claim as a compare-and-swap (Linux 5.12) that clears the tag. On the BPF target's
/// `generic` CPU only 8-byte ones exist, so it swaps the word `connect_pending` shares with
/// `flags`, whose byte may change under it (then it tries again).
#[cfg(not(feature = "compat"))]
#[inline(always)]
fn swap_claim(sk: u64, p: *mut SockInfo) -> bool {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    // Little-endian (bpfel): `connect_pending` is the upper half of the word at `flags`.
    let tag = u64::from(pending_tag(sk)) << 32;
    // SAFETY: `p` points to a live map value; the word is 8-aligned (asserted in the shared
    // types) and lies within it.
    let word = unsafe { core::ptr::addr_of_mut!((*p).flags).cast::<u64>() };
    // The flags byte changes at most twice in a socket's life: a few tries always suffice.
    for _ in 0..4 {
        let cur = unsafe { core::ptr::read_volatile(word) };
        if cur & !0xffff_ffff != tag {
            return false;
        }
        // SAFETY: as above; the map value lives for the program's run.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                word,
                cur,
                cur & 0xffff_ffff,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}

/// Without compare-and-swap: a map of the sockets whose connect event waits, where deleting
/// the entry is the claim (the kernel lets exactly one delete of an entry succeed).
#[cfg(feature = "compat")]
mod compat {
    use aya_ebpf::{macros::map, maps::LruHashMap};
    use sockwatch_common::SockInfo;

    use super::pending_tag;

    /// Sized by the loader as the socket map.
    #[map]
    static PENDING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1 << 20, 0);

    #[inline(always)]
    pub fn mark_pending(sk: u64) {
        let _ = PENDING.insert(&sk, &pending_tag(sk), 0);
    }

    #[inline(always)]
    pub fn delete_claim(sk: u64, p: *mut SockInfo) -> bool {
        // SAFETY: `p` points to a live map value.
        let pending =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).connect_pending)) };
        if pending != pending_tag(sk) || PENDING.remove(&sk).is_err() {
            return false;
        }
        // SAFETY: as above; only the claim's winner writes it.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).connect_pending), 0) };
        true
    }
}

/// Emits the connect event of `sk` if nobody has yet (see [`claim_pending_connect`]).
#[inline(always)]
pub fn emit_pending_connect(sk: u64, state: u8) {
    if let Some(p) = SOCKS.get_ptr_mut(sk)
        && claim_pending_connect(sk, p)
    {
        emit_claimed_connect(sk, p, state);
    }
}

/// Emits the connect event of `sk`, whose record is `p` and whose claim the caller holds. Says
/// whether the record is still there: the filters may drop the socket now that its local port
/// is known.
#[inline(always)]
pub fn emit_claimed_connect(sk: u64, p: *mut SockInfo, state: u8) -> bool {
    let mut slot = MaybeUninit::uninit();
    let info = Some(copy_info(&mut slot, p));
    let verdict = emit(sk, kind::CONNECT, tcp_state::CLOSE, state, info, 0);
    if verdict == Verdict::DropSocket {
        // Its local port (known only now) or family fails: stop tracking it.
        let _ = forget(sk, &mut MaybeUninit::uninit());
        return false;
    }
    true
}
