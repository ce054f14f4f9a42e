//! What an accept's return means, whichever hook sees it (see `syscall`, `fexit`, `kprobe`):
//! accepted connections attributed to the process that accepted them, and accept() failures
//! tied to the listening socket.
use core::mem::MaybeUninit;

use sockwatch_common::{counter, flags, kind, tcp_state};

use crate::{
    emit::{emit, emit_patched},
    errno::{EAGAIN, EBADF, ENOTSOCK, errno_of, interrupted},
    filter::{self, Verdict},
    maps::{SOCKS, bump, offsets},
    sock::{current_owner, forget, is_tcp, netns_of, remember, sock_of_fd},
    store::copy16,
};

/// An accept call (accept, accept4, or the kernel's `__sys_accept4`) returned `ret`; its first
/// argument, the listening fd, comes from `listener_fd` (read only on failure). With `BY_FD`
/// a success is reported here, its socket found from the returned fd; without, the hook on
/// the accept path's return (`inet_csk_accept`) reports it from the socket itself.
#[inline(always)]
pub fn accept_returned<const BY_FD: bool>(ret: i64, listener_fd: impl FnOnce() -> Option<u64>) {
    let Some(errno) = errno_of(ret) else {
        if BY_FD && ret >= 0 {
            let off = offsets();
            if let Some(sk) = sock_of_fd(ret as u64, &off) {
                accepted(sk);
            }
        }
        return;
    };
    // The listening fd is a socket unless accept() said otherwise.
    if errno == EBADF || errno == ENOTSOCK {
        return;
    }
    let off = offsets();
    let Some(listener) = listener_fd().and_then(|fd| sock_of_fd(fd, &off)) else {
        return;
    };
    if !is_tcp(listener, &off) {
        return;
    }
    if errno == EAGAIN {
        bump(counter::ACCEPT_WOULD_BLOCK);
        return;
    }
    if interrupted(errno) {
        bump(counter::ACCEPT_INTERRUPTED);
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let owner = current_owner(&mut slot, 0, netns_of(listener, &off), 0);
    let _ = emit_patched(
        listener,
        kind::ACCEPT_FAILED,
        tcp_state::LISTEN,
        tcp_state::LISTEN,
        Some(&*owner),
        0,
        |ev, _| {
            ev.errno = errno;
            ev.duration_ns = 0;
        },
    );
}

/// The connection `sk` was accepted by the current process: report it with that process, and
/// make it the socket's owner for its later events.
#[inline(always)]
pub fn accepted(sk: u64) {
    let off = offsets();
    if !is_tcp(sk, &off) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let owner = current_owner(&mut slot, 0, 0, flags::PASSIVE);
    // Without owner filters every owner matches.
    let kept = owner.flags & flags::OWNER_MATCH != 0;
    match SOCKS.get_ptr_mut(sk) {
        Some(p) if kept => unsafe {
            (*p).pid = owner.pid;
            (*p).cgroup_id = owner.cgroup_id;
            copy16(&mut (*p).comm, &owner.comm);
            (*p).flags |= flags::OWNER_KNOWN | flags::OWNER_MATCH;
            owner.netns = (*p).netns;
            // Its birth is its arrival in the accept queue: the event's duration is the wait.
            owner.birth_ns = (*p).birth_ns;
            owner.flags = owner.flags & !flags::BIRTH_KNOWN | (*p).flags & flags::BIRTH_KNOWN;
        },
        Some(_) => {
            // Its owner fails the filters: none of its events is kept from now on.
            let _ = forget(sk, &mut MaybeUninit::uninit());
            return;
        }
        None if kept => {
            // Born before we started (or pushed out): track it from now, birth unknown.
            owner.netns = netns_of(sk, &off);
            if !filter::birth_ok(owner.netns, None) {
                return;
            }
            owner.flags &= !flags::BIRTH_KNOWN;
            remember(sk, owner);
        }
        None => return,
    }
    let verdict = emit(
        sk,
        kind::ACCEPT,
        tcp_state::ESTABLISHED,
        tcp_state::ESTABLISHED,
        Some(&*owner),
        0,
    );
    if verdict == Verdict::DropSocket {
        let _ = forget(sk, &mut MaybeUninit::uninit());
    }
}
