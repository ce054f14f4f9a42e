//! `syscalls:sys_exit_connect` and `syscalls:sys_exit_accept{,4}`: the hooks where the kernel
//! allows neither fexit nor kprobes. No entry hook (outside the `compat` build, see `enter`):
//! the arguments are read from the registers the syscall saved, at its exit. Enabling any
//! syscall tracepoint slows every system call of the host a little; see `fexit`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    accept::accept_returned,
    connect::{Memory, connect_returned, destination},
    maps::{offsets, record_field},
    sock::sock_of_fd,
    thread::Args,
};

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    // Taken first, whatever the outcome, so that none is left behind (compat build).
    let args = Args::take();
    let off = offsets();
    let ret = record_field(&ctx, off.sys_exit_ret) as i64;
    // connect(fd, addr, len).
    connect_returned(
        ret,
        |off| args.arg0().and_then(|fd| sock_of_fd(fd, off)),
        || args.arg1().and_then(|a| destination(a, Memory::User)),
        &off,
    );
    0
}

/// Attached to both sys_exit_accept and sys_exit_accept4.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let args = Args::take();
    let ret = record_field(&ctx, offsets().sys_exit_ret) as i64;
    // accept(fd, ...): the listening socket's fd.
    accept_returned::<true>(ret, || args.arg0());
    0
}
