//! `syscalls:sys_{enter,exit}_connect`.
//!
//! At CLOSE->SYN_SENT the kernel has not yet chosen the local port, so the connect event waits
//! until connect() returns (or the socket's next state change). connect() errors raised before
//! any SYN is sent (no route, no local port, ...) are reported here as `connect_failed`; failures
//! after the SYN (refused, timed out) come from the socket's SYN_SENT->CLOSE change.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use sockwatch_common::{AF_INET, AF_INET6, counter, flags, kind, tcp_state};

use crate::{
    filter::Verdict,
    maps::{
        CONNECT_ARGS, ConnectArgs, PENDING_CONNECTS, bump, offsets, record_field,
    },
    sock::{current_owner, emit, emit_patched, forget, is_tcp, lookup, netns_of, sock_of_fd},
    store::{put, put16, zero_bytes},
    syscall::{EALREADY, EINPROGRESS, EISCONN, errno_of, interrupted, take},
};

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let off = offsets();
    let fd = record_field(&ctx, off.sys_enter_fd);
    let uaddr = record_field(&ctx, off.sys_enter_addr);
    // struct sockaddr_in{,6}: family (u16), port (be16), then the v4 address at 4 or, for v6,
    // flowinfo at 4 and the address at 8.
    let Ok(head) = (unsafe { bpf_probe_read_user(uaddr as *const [u8; 8]) }) else {
        return 0;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let (lo, hi) = if family == u16::from(AF_INET) {
        ([head[4], head[5], head[6], head[7], 0, 0, 0, 0], [0; 8])
    } else if family == u16::from(AF_INET6) {
        let Ok(a) = (unsafe { bpf_probe_read_user((uaddr + 8) as *const [[u8; 8]; 2]) }) else {
            return 0;
        };
        (a[0], a[1])
    } else {
        // Unix and other families: not ours.
        return 0;
    };
    // Built in place with plain stores (see `store`).
    let mut slot = MaybeUninit::<ConnectArgs>::uninit();
    // SAFETY: every field is written before `assume_init_ref`.
    let args = unsafe {
        let a = &mut *slot.as_mut_ptr();
        put(&mut a.fd, fd);
        put16(&mut a.addr, lo, hi);
        put(&mut a.family, family);
        put(&mut a.port, u16::from_be_bytes([head[2], head[3]]));
        zero_bytes(&mut a._pad);
        put(&mut a.sk, 0);
        slot.assume_init_ref()
    };
    let _ = CONNECT_ARGS.insert(bpf_get_current_pid_tgid(), args, BPF_ANY as u64);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(args) = take(&CONNECT_ARGS, bpf_get_current_pid_tgid()) else {
        return 0;
    };
    if args.sk != 0 {
        // A SYN was sent: the connect is reported now, a failure by the state change.
        emit_pending_connect(args.sk, tcp_state::SYN_SENT);
        return 0;
    }
    let Some(errno) = errno_of(record_field(&ctx, offsets().sys_exit_ret) as i64) else {
        return 0;
    };
    // Still connecting, or already connected: not a failure.
    if matches!(errno, EINPROGRESS | EALREADY | EISCONN) || interrupted(errno) {
        return 0;
    }
    connect_failed_early(&args, errno);
    0
}

/// connect() failed before any packet left: the destination comes from the caller's sockaddr.
#[inline(always)]
fn connect_failed_early(args: &ConnectArgs, errno: u16) {
    let off = offsets();
    let Some(sk) = sock_of_fd(args.fd, &off) else {
        return;
    };
    if !is_tcp(sk, &off) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let owner = current_owner(&mut slot, 0, netns_of(sk, &off), flags::ACTIVE);
    let _ = emit_patched(
        sk,
        kind::CONNECT_FAILED,
        tcp_state::CLOSE,
        tcp_state::CLOSE,
        Some(&*owner),
        0,
        |ev| {
            ev.errno = errno;
            ev.duration_ns = 0;
            ev.peer_port = args.port;
            ev.peer_addr = args.addr;
            // The socket may not know its family-specific addresses yet; the caller's does.
            ev.family = args.family as u8;
        },
    );
}

/// Emits the connect event of `sk` if nobody has yet (see `PENDING_CONNECTS`).
#[inline(always)]
pub fn emit_pending_connect(sk: u64, state: u8) {
    if PENDING_CONNECTS.remove(sk).is_err() {
        return;
    }
    bump(counter::PENDING_REMOVED);
    let mut slot = MaybeUninit::uninit();
    let info = lookup(sk, &mut slot);
    let verdict = emit(sk, kind::CONNECT, tcp_state::CLOSE, state, info, 0);
    if verdict == Verdict::DropSocket && info.is_some() {
        // Its local port (known only now) or family fails: stop tracking it.
        let _ = forget(sk, &mut MaybeUninit::uninit());
    }
}
