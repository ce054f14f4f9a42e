//! `syscalls:sys_exit_accept{,4}`: accepted connections attributed to the process that called
//! accept(), and accept() failures tied to the listening socket (its fd read from the registers
//! the syscall saved: no entry hook).
use core::mem::MaybeUninit;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sockwatch_common::{counter, flags, kind, tcp_state};

use crate::{
    filter::{self, Verdict},
    maps::{SOCKS, bump, offsets, record_field},
    sock::{current_owner, emit, emit_patched, forget, is_tcp, netns_of, remember, sock_of_fd},
    store::copy16,
    syscall::{EAGAIN, EBADF, ENOTSOCK, errno_of, interrupted},
    thread::Args,
};

/// Attached to both sys_exit_accept and sys_exit_accept4.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let off = offsets();
    // Taken first, whatever the outcome, so that none is left behind (compat build).
    let args = Args::take();
    let ret = record_field(&ctx, off.sys_exit_ret) as i64;
    let Some(errno) = errno_of(ret) else {
        if ret >= 0 {
            accepted(ret as u64);
        }
        return 0;
    };
    // The listening fd is a socket unless accept() said otherwise.
    if errno == EBADF || errno == ENOTSOCK {
        return 0;
    }
    // accept(fd, ...): the listening socket's fd.
    let Some(listener) = args.arg0().and_then(|fd| sock_of_fd(fd, &off)) else {
        return 0;
    };
    if !is_tcp(listener, &off) {
        return 0;
    }
    if errno == EAGAIN {
        bump(counter::ACCEPT_WOULD_BLOCK);
        return 0;
    }
    if interrupted(errno) {
        bump(counter::ACCEPT_INTERRUPTED);
        return 0;
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
        |ev| {
            ev.errno = errno;
            ev.duration_ns = 0;
        },
    );
    0
}

/// A connection was accepted as `fd`: report it with the accepting process, and make that
/// process the socket's owner for its later events.
#[inline(always)]
fn accepted(fd: u64) {
    let off = offsets();
    let Some(sk) = sock_of_fd(fd, &off) else {
        return;
    };
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
