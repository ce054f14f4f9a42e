//! `sock:inet_sock_set_state` as a raw tracepoint: the arguments come straight from the
//! tracepoint call (sk, oldstate, newstate) without building the classic trace record.
//!
//! Two programs share the tracepoint. When a softirq interrupts `inet_sock_set_state` on its
//! CPU and fires the tracepoint again (a connection's packets arriving on loopback, say), the
//! kernel skips the nested run of the busy program and only counts a recursion miss. So a
//! second program, `state_nested`, attached after it, handles exactly those runs: it acts only
//! while `inet_sock_set_state` is marked running on its CPU, and otherwise returns at once.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sockwatch_common::{counter, flags, kind, tcp_state as st};

use crate::{
    connect::emit_pending_connect,
    filter::{self, Verdict},
    maps::{CONNECTING_THREADS, PENDING_CONNECTS, SOCKS, STATE_RUNNING, bump, offsets},
    sock::{
        copy_info, current_owner, emit, emit_patched, forget, is_tcp, netns_of, remember,
        sock_error, sock_info,
    },
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let running = STATE_RUNNING.get_ptr_mut(0);
    if let Some(r) = running {
        // SAFETY: this CPU's slot; only this program writes it.
        unsafe { *r = 1 };
    }
    let rc = state_changed(&ctx);
    if let Some(r) = running {
        unsafe { *r = 0 };
    }
    rc
}

/// The runs of `inet_sock_set_state` that the kernel skipped because they nested in one of its
/// runs on the same CPU (see the module's doc).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn state_nested(ctx: RawTracePointContext) -> i32 {
    match STATE_RUNNING.get(0) {
        Some(&running) if running != 0 => {
            bump(counter::NESTED_HANDLED);
            state_changed(&ctx)
        }
        _ => 0,
    }
}

// One copy shared by both programs (a BPF-to-BPF call), not one inlined into each.
#[inline(never)]
fn state_changed(ctx: &RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u8;
    let new = ctx.arg::<u64>(2) as u8;

    // Decide on the states alone first: most transitions (FIN_WAIT1, CLOSE_WAIT, ...) are not
    // lifecycle steps and must cost nothing more.
    let relevant = matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT)
            | (st::CLOSE, st::LISTEN)
            | (st::LISTEN, st::SYN_RECV)
            | (_, st::ESTABLISHED)
            | (_, st::CLOSE)
    );
    if !relevant || sk == 0 {
        return 0;
    }
    let off = offsets();
    if !is_tcp(sk, &off) {
        return 0;
    }

    match (old, new) {
        (st::CLOSE, st::SYN_SENT) => {
            // Process context: the connecting task is current.
            let now = unsafe { bpf_ktime_get_ns() };
            let netns = netns_of(sk, &off);
            let mut slot = MaybeUninit::uninit();
            let owner = current_owner(&mut slot, now, netns, flags::ACTIVE);
            if !filter::birth_ok(netns, Some(&*owner)) {
                // Filtered out: not tracked, so none of its events is emitted.
                return 0;
            }
            remember(sk, owner);
            let thread = bpf_get_current_pid_tgid();
            if PENDING_CONNECTS.insert(sk, thread, BPF_ANY as u64).is_ok() {
                bump(counter::PENDING_INSERTED);
            } else {
                bump(counter::PENDING_INSERT_FAILED);
            }
            let _ = CONNECTING_THREADS.insert(thread, sk, BPF_ANY as u64);
        }
        (st::CLOSE, st::LISTEN) => {
            let now = unsafe { bpf_ktime_get_ns() };
            let netns = netns_of(sk, &off);
            let mut slot = MaybeUninit::uninit();
            let owner = current_owner(&mut slot, now, netns, 0);
            if !filter::birth_ok(netns, Some(&*owner)) {
                return 0;
            }
            remember(sk, owner);
            if emit(sk, kind::LISTEN, old, new, Some(&*owner), 0) == Verdict::DropSocket {
                let _ = forget(sk, &mut MaybeUninit::uninit());
            }
        }
        (st::LISTEN, st::CLOSE) => {
            let mut slot = MaybeUninit::uninit();
            let info = forget(sk, &mut slot);
            emit(sk, kind::LISTEN_STOP, old, new, info, 0);
        }
        (st::LISTEN, st::SYN_RECV) => {
            // A child socket is born in softirq: current is unrelated, so no owner.
            let now = unsafe { bpf_ktime_get_ns() };
            let netns = netns_of(sk, &off);
            // The owner is decided at accept.
            if !filter::birth_ok(netns, None) {
                return 0;
            }
            let mut slot = MaybeUninit::uninit();
            let info = sock_info(
                &mut slot,
                now,
                0,
                0,
                netns,
                None,
                flags::BIRTH_KNOWN | flags::PASSIVE,
            );
            remember(sk, info);
        }
        (_, st::ESTABLISHED) => {
            if old == st::SYN_SENT {
                emit_pending_connect(sk, old);
            }
            let mut slot = MaybeUninit::uninit();
            let info = match SOCKS.get_ptr_mut(sk) {
                Some(p) => unsafe {
                    // Transitions of one socket are serialised by its lock.
                    (*p).flags |= flags::ESTABLISHED;
                    Some(copy_info(&mut slot, p))
                },
                None => None,
            };
            let passive = if old == st::SYN_RECV {
                flags::PASSIVE
            } else {
                0
            };
            let verdict = emit(sk, kind::ESTABLISHED, old, new, info, passive);
            if verdict == Verdict::DropSocket && info.is_some() {
                // Its ports or family fail: stop tracking it (a normal removal, not a loss).
                let _ = forget(sk, &mut MaybeUninit::uninit());
            }
        }
        (_, st::CLOSE) => {
            if old == st::SYN_SENT {
                emit_pending_connect(sk, old);
            }
            let mut slot = MaybeUninit::uninit();
            let info = forget(sk, &mut slot);
            if old == st::SYN_SENT {
                // Never established: refused (RST), timed out, unreachable, or closed by the
                // application while connecting (sk_err 0).
                let errno = sock_error(sk, &off);
                emit_patched(sk, kind::CONNECT_FAILED, old, new, info, 0, |ev| {
                    ev.errno = errno;
                });
            }
            emit(sk, kind::CLOSE, old, new, info, 0);
        }
        _ => {}
    }
    0
}
