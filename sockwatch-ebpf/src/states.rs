//! `trace --states`: every TCP state transition, as tcpstates shows them. A program of its own
//! on `sock:inet_sock_set_state`, loaded only when asked for, so the lifecycle program pays
//! nothing for it. Attached before the lifecycle program, so that at a socket's last
//! transition its owner is still in the socket map.
use core::mem::MaybeUninit;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockwatch_common::{flags, kind, tcp_state as st};

use crate::{
    emit::emit,
    maps::offsets,
    sock::{current_owner, is_tcp, lookup},
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_states(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u8;
    let new = ctx.arg::<u64>(2) as u8;
    if sk == 0 || !is_tcp(sk, &offsets()) {
        return 0;
    }
    // Leaving CLOSE happens in connect() or listen(): the current task is the owner. Otherwise
    // the owner recorded in process context, if any.
    let mut slot = MaybeUninit::uninit();
    let info = if old == st::CLOSE {
        let active = if new == st::SYN_SENT {
            flags::ACTIVE
        } else {
            0
        };
        Some(&*current_owner(&mut slot, 0, 0, active))
    } else {
        lookup(sk, &mut slot)
    };
    // The verdict does not speak for the socket: a connecting socket has no local port yet.
    let _ = emit(sk, kind::STATE, old, new, info, 0);
    0
}
