//! `syscalls:sys_enter_{connect,accept,accept4}` (the `compat` build only): saves the call's
//! first two arguments for its exit hook, on kernels whose syscall exits cannot read them from
//! the saved registers (no `bpf_task_pt_regs`, before 5.15). See `thread`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::maps::{offsets, record_field};

/// Attached to the entries of connect, accept and accept4: their records agree on where the
/// first two arguments are (the loader checks).
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_socket_call(ctx: TracePointContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let off = offsets();
    crate::thread::save_args(&[
        record_field(&ctx, off.sys_enter_arg0),
        record_field(&ctx, off.sys_enter_arg1),
    ]);
    0
}
