//! kprobes and kretprobes on the same kernel functions as `fexit`, for kernels that refuse
//! fexit programs. A kretprobe sees only the return value, so an entry probe saves the
//! arguments per thread (see `thread::save_args`); registers are read with offsets from BTF.
use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    accept::{accept_returned, accepted},
    connect::{Memory, connect_returned, destination},
    maps::offsets,
    sock::sock_of_socket,
    thread::{SavedArgs, save_args},
};

/// The `struct pt_regs` field at `offset`. The verifier allows direct context loads at
/// constant offsets only; this one is known at load time, so it goes through a probe read.
#[inline(always)]
fn register(ctx: &impl EbpfContext, offset: u32) -> u64 {
    // SAFETY: reads inside the probe's own saved registers.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u8).add(offset as usize) as *const u64) }
        .unwrap_or(0)
}

/// The return value of an `int` function.
#[inline(always)]
fn int_ret(ctx: &RetProbeContext) -> i64 {
    i64::from(register(ctx, offsets().regs_ret) as u32 as i32)
}

/// At the entry of `inet_stream_connect` and `__sys_accept4`: their first two arguments, for
/// the return probes below.
#[kprobe]
pub fn kprobe_call_entry(ctx: ProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let off = offsets();
    save_args(&[register(&ctx, off.regs_arg0), register(&ctx, off.regs_arg1)]);
    0
}

#[kretprobe]
pub fn kretprobe_connect(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    // Taken first, whatever the outcome, so that none is left behind.
    let args = SavedArgs::take();
    let off = offsets();
    connect_returned(
        int_ret(&ctx),
        |off| args.arg0().and_then(|sock| sock_of_socket(sock, off)),
        || args.arg1().and_then(|a| destination(a, Memory::Kernel)),
        &off,
    );
    0
}

#[kretprobe]
pub fn kretprobe_accept4(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let args = SavedArgs::take();
    accept_returned::<false>(int_ret(&ctx), || args.arg0().map(|fd| fd as u32 as u64));
    0
}

#[kretprobe]
pub fn kretprobe_csk_accept(ctx: RetProbeContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let sk = register(&ctx, offsets().regs_ret);
    if sk != 0 {
        accepted(sk);
    }
    0
}
