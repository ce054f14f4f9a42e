//! `sock:inet_sock_set_state` as a raw tracepoint: the arguments come straight from the
//! tracepoint call (sk, oldstate, newstate) without building the classic trace record.
//!
//! Two programs share the tracepoint. When a softirq interrupts `inet_sock_set_state` on its
//! CPU and fires the tracepoint again (a connection's packets arriving on loopback, say), the
//! kernel skips the nested run of the busy program and only counts a recursion miss. So a
//! second program, `state_nested`, attached after it, handles exactly the state changes the
//! first one did not run for.
//!
//! A flag set while the first program runs does not tell that exactly: the kernel counts the
//! program as busy from just before its first instruction to just after its last, so a softirq
//! in those gaps found the flag clear and its state change was lost. Instead the first program
//! records each state change it takes on in a per-CPU table ([`Taken`]), and the second one
//! looks its own state change up there: found, it was handled; absent, the first program was
//! skipped. An entry is keyed by the stack position of its tracepoint call as well as by
//! socket and states, so an entry left behind (when the second program's own run was skipped)
//! never answers for another call in progress, and is cleared by the next call at its position.
use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_ktime_get_ns, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sockwatch_common::{counter, flags, kind, tcp_state as st};

use crate::{
    connect::{
        claim_pending_connect, emit_claimed_connect, emit_pending_connect, mark_pending,
        pending_tag,
    },
    emit::{emit, emit_connect_established, emit_patched},
    filter::{self, Verdict},
    maps::{SOCKS, TAKEN, TAKEN_SLOTS, Taken, bump, offsets},
    sock::{
        copy_info, current_owner, forget, is_tcp, netns_of, read_stats, remember, sock_error,
        sock_info,
    },
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    let (sk, old, new) = args(&ctx);
    if sk == 0 {
        return 0;
    }
    // Every state change is recorded, lifecycle step or not, so that `state_nested` can tell
    // all the skipped ones apart: the kernel counts each as a recursion miss.
    if let Some(t) = TAKEN.get_ptr_mut(0) {
        // SAFETY: this CPU's table; see `state_nested`.
        let t = unsafe { &mut *t };
        take_on(t, frame(&ctx), sk, states(old, new));
    }
    if lifecycle_step(old, new) {
        step(sk, old, new);
    }
    0
}

/// Records a state change taken on, at stack position `frame`.
#[inline(always)]
fn take_on(t: &mut Taken, frame: u64, sk: u64, states: u64) {
    let seq = t.seq + 1;
    t.seq = seq;
    let mut free = TAKEN_SLOTS;
    let mut oldest = 0;
    let mut oldest_tag = u64::MAX;
    for i in 0..TAKEN_SLOTS {
        if t.frame[i] == frame {
            // Left by an earlier call at this very stack position: that call is over, and its
            // `state_nested` run was skipped. Cleared, so that a burst of such calls leaves one
            // entry, not one each.
            t.frame[i] = 0;
        }
        if t.frame[i] == 0 {
            if free == TAKEN_SLOTS {
                free = i;
            }
        } else if t.tag[i] < oldest_tag {
            oldest_tag = t.tag[i];
            oldest = i;
        }
    }
    // Full (not seen in testing): the oldest entry goes, most likely a leftover; an awaited
    // one is at most as old as the calls in progress on this CPU.
    let slot = if free < TAKEN_SLOTS { free } else { oldest };
    if let (Some(f), Some(s), Some(tg)) = (
        t.frame.get_mut(slot),
        t.sk.get_mut(slot),
        t.tag.get_mut(slot),
    ) {
        *s = sk;
        *tg = seq << 16 | states;
        // Last: the frame marks the slot as used.
        *f = frame;
    }
}

/// The state changes `inet_sock_set_state` did not run for: the kernel skipped it because it
/// was already running on this CPU (see the module's doc).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn state_nested(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    let (sk, old, new) = args(&ctx);
    if sk == 0 {
        return 0;
    }
    let Some(t) = TAKEN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's table. Only the two programs use it, and on one CPU they can only
    // interrupt each other (a softirq interrupting a task), never run side by side.
    let t = unsafe { &mut *t };
    let frame = frame(&ctx);
    let want = states(old, new);
    let mut taken = false;
    for i in 0..TAKEN_SLOTS {
        if t.frame[i] == frame {
            // This state change's entry, or one left by an earlier call at this stack position
            // (whose own run of this program was skipped): either way no longer awaited.
            taken |= t.sk[i] == sk && t.tag[i] & 0xffff == want;
            t.frame[i] = 0;
        }
    }
    if !taken {
        // Counted either way: the kernel counted the skipped run as a recursion miss.
        bump(counter::NESTED_HANDLED);
        if lifecycle_step(old, new) {
            step(sk, old, new);
        }
    }
    0
}

/// Where this run of the tracepoint's programs is on the kernel stack: the address of the
/// argument array, which the kernel builds in the same frame for each program of one
/// tracepoint call. Two calls in progress on one CPU (one interrupting the other) never share
/// it.
#[inline(always)]
fn frame(ctx: &RawTracePointContext) -> u64 {
    ctx.as_ptr() as u64
}

#[inline(always)]
fn states(old: u8, new: u8) -> u64 {
    u64::from(old) << 8 | u64::from(new)
}

/// The tracepoint's arguments: the socket, the old state and the new one.
#[inline(always)]
fn args(ctx: &RawTracePointContext) -> (u64, u8, u8) {
    (ctx.arg(0), ctx.arg::<u64>(1) as u8, ctx.arg::<u64>(2) as u8)
}

/// Whether a state change is a lifecycle step; decided on the states alone, so that the others
/// (FIN_WAIT1, CLOSE_WAIT, ...) cost nothing more.
#[inline(always)]
fn lifecycle_step(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT)
            | (st::CLOSE, st::LISTEN)
            | (st::LISTEN, st::SYN_RECV)
            | (_, st::ESTABLISHED)
            | (_, st::CLOSE)
    )
}

/// Calls [`state_changed`] and keeps its result. The verifier rejects a function that returns
/// a pointer into the stack, and a result nobody uses (or a constant one, which the compiler
/// folds into the callers) lets the compiler leave any register in R0 at its exit: an opaque
/// value on both sides makes it set R0 every time.
#[inline(always)]
fn step(sk: u64, old: u8, new: u8) {
    core::hint::black_box(state_changed(sk, old, new));
}

// One copy shared by both programs (a BPF-to-BPF call), not one inlined into each.
#[inline(never)]
fn state_changed(sk: u64, old: u8, new: u8) -> i32 {
    handle_step(sk, old, new);
    core::hint::black_box(0)
}

#[inline(always)]
fn handle_step(sk: u64, old: u8, new: u8) {
    let off = offsets();
    // Only births test the protocol (the tracepoint also fires for MPTCP and SCTP sockets):
    // a socket in the map is TCP, so the later steps test it only when it is absent.
    let birth = matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT) | (st::CLOSE, st::LISTEN) | (st::LISTEN, st::SYN_RECV)
    );
    if birth && !is_tcp(sk, &off) {
        return;
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
                return;
            }
            // Its connect event waits for the local port (see `connect`).
            owner.connect_pending = pending_tag(sk);
            if remember(sk, owner) {
                mark_pending(sk);
                bump(counter::PENDING_INSERTED);
            } else {
                bump(counter::PENDING_INSERT_FAILED);
            }
            crate::thread::set_connecting(sk);
        }
        (st::CLOSE, st::LISTEN) => {
            let now = unsafe { bpf_ktime_get_ns() };
            let netns = netns_of(sk, &off);
            let mut slot = MaybeUninit::uninit();
            let owner = current_owner(&mut slot, now, netns, 0);
            if !filter::birth_ok(netns, Some(&*owner)) {
                return;
            }
            remember(sk, owner);
            if emit(sk, kind::LISTEN, old, new, Some(&*owner), 0) == Verdict::DropSocket {
                let _ = forget(sk, &mut MaybeUninit::uninit());
            }
        }
        (st::LISTEN, st::CLOSE) => {
            let mut slot = MaybeUninit::uninit();
            let info = forget(sk, &mut slot);
            if info.is_none() && !is_tcp(sk, &off) {
                return;
            }
            emit(sk, kind::LISTEN_STOP, old, new, info, 0);
        }
        (st::LISTEN, st::SYN_RECV) => {
            // A child socket is born in softirq: current is unrelated, so no owner.
            let now = unsafe { bpf_ktime_get_ns() };
            let netns = netns_of(sk, &off);
            // The owner is decided at accept.
            if !filter::birth_ok(netns, None) {
                return;
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
            // One lookup serves the pending connect and this event.
            let mut record = SOCKS.get_ptr_mut(sk);
            if old == st::SYN_SENT
                && let Some(p) = record
                && claim_pending_connect(sk, p)
            {
                if !filter::any() {
                    // Both events from one read of the socket.
                    let mut slot = MaybeUninit::uninit();
                    let info = copy_info(&mut slot, p);
                    // Transitions of one socket are serialised by its lock, and the connect()
                    // exit no longer writes the record once the claim is made.
                    unsafe { (*p).flags |= flags::ESTABLISHED };
                    if emit_connect_established(sk, info) {
                        return;
                    }
                    // No scratch space free on this CPU: the connect now, the established
                    // below (no filters: the socket is kept).
                    let _ = emit(sk, kind::CONNECT, st::CLOSE, old, Some(info), 0);
                } else if !emit_claimed_connect(sk, p, old) {
                    record = None;
                }
            }
            let mut slot = MaybeUninit::uninit();
            let info = match record {
                Some(p) => unsafe {
                    // Transitions of one socket are serialised by its lock.
                    (*p).flags |= flags::ESTABLISHED;
                    Some(copy_info(&mut slot, p))
                },
                None if is_tcp(sk, &off) => None,
                None => return,
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
            if info.is_none() && !is_tcp(sk, &off) {
                return;
            }
            if old == st::SYN_RECV && info.is_some_and(never_seen_child) {
                // A child socket the application never saw: not a connection's close.
                return;
            }
            if old == st::SYN_SENT {
                // Never established: refused (RST), timed out, unreachable, or closed by the
                // application while connecting (sk_err 0).
                let errno = sock_error(sk, &off);
                emit_patched(sk, kind::CONNECT_FAILED, old, new, info, 0, |ev, _| {
                    ev.errno = errno;
                });
            }
            // What it carried: read once, at its close.
            emit_patched(sk, kind::CLOSE, old, new, info, 0, |ev, head| {
                read_stats(sk, ev, head)
            });
        }
        _ => {}
    }
}

/// A passive socket closed from SYN_RECV without having been established or accepted, such as
/// a second child of one connection that the kernel dropped (seen on 6.1; most likely the
/// client's final ACK handled on two CPUs at once). A TCP Fast Open child can be accepted in
/// SYN_RECV: that one's close counts.
#[inline(always)]
fn never_seen_child(info: &sockwatch_common::SockInfo) -> bool {
    info.flags & flags::PASSIVE != 0 && info.flags & (flags::ESTABLISHED | flags::OWNER_KNOWN) == 0
}
