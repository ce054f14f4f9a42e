//! `syscalls:sys_exit_connect`: at CLOSE->SYN_SENT the kernel has not yet chosen the local port,
//! so the connect event waits until connect() returns (or the socket's next state change).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockwatch_common::{counter, kind, tcp_state};

use crate::{
    maps::{CONNECTING_THREADS, PENDING_CONNECTS, SOCKS, bump},
    sock::emit,
};

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(_ctx: TracePointContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    let Some(sk) = CONNECTING_THREADS.get_ptr(thread).map(|p| unsafe { *p }) else {
        return 0;
    };
    let _ = CONNECTING_THREADS.remove(thread);
    emit_pending_connect(sk, tcp_state::SYN_SENT);
    0
}

/// Emits the connect event of `sk` if nobody has yet (see `PENDING_CONNECTS`).
#[inline(always)]
pub fn emit_pending_connect(sk: u64, state: u8) {
    if PENDING_CONNECTS.remove(sk).is_err() {
        return;
    }
    bump(counter::PENDING_REMOVED);
    let info = SOCKS.get_ptr(sk).map(|p| unsafe { *p });
    emit(sk, kind::CONNECT, tcp_state::CLOSE, state, info.as_ref(), 0);
}
