//! fexit programs on the kernel functions behind connect() and accept(), where the kernel
//! allows them: unlike the syscall tracepoints (`syscall`), they cost nothing to the host's
//! other system calls, and they get arguments and return values typed, with no per-thread
//! state to save them.
//!
//! - `inet_stream_connect(sock, uaddr, addr_len, flags)`: a TCP connect's return;
//! - `__sys_accept4(fd, ...)`: accept() failures, with the listening fd;
//! - `inet_csk_accept(sk, ...)`: the accepted socket itself, as its return value.
//!
//! The loader checks each function's arguments in the kernel's BTF before it picks these.
use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel, macros::fexit, programs::FExitContext,
};

use crate::{
    accept::{accept_returned, accepted},
    connect::{Memory, connect_returned, destination},
    maps::offsets,
    sock::sock_of_socket,
};

/// Argument (or, past the arguments, return value) `n` as an `int`: its 8-byte slot's upper
/// half is not defined.
#[inline(always)]
fn int_at(ctx: &FExitContext, n: usize) -> i64 {
    // SAFETY: a constant offset inside the function's context, checked by the verifier.
    let v = unsafe { *(ctx.as_ptr() as *const u64).add(n) };
    i64::from(v as u32 as i32)
}

/// Pointer argument (or return value) `n`, as a plain number: loaded directly it would be a
/// typed kernel pointer, on which the verifier refuses the arithmetic the programs do with
/// socket addresses (map keys, tags).
#[inline(always)]
fn address_at(ctx: &FExitContext, n: usize) -> u64 {
    // SAFETY: reads the context's own slot `n`.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).add(n)) }.unwrap_or(0)
}

#[fexit(function = "inet_stream_connect")]
pub fn fexit_connect(ctx: FExitContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    let off = offsets();
    connect_returned(
        int_at(&ctx, 4),
        |off| sock_of_socket(address_at(&ctx, 0), off),
        || destination(address_at(&ctx, 1), Memory::Kernel),
        &off,
    );
    0
}

#[fexit(function = "__sys_accept4")]
pub fn fexit_accept4(ctx: FExitContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    // Successes are reported by `fexit_csk_accept`, from the socket.
    accept_returned::<false>(int_at(&ctx, 4), || Some(int_at(&ctx, 0) as u64));
    0
}

#[fexit(function = "inet_csk_accept")]
pub fn fexit_csk_accept(ctx: FExitContext) -> u32 {
    if crate::hooks_only() {
        return 0;
    }
    // A load-time constant: the verifier keeps one of the two loads.
    let sk = if offsets().accept_ret_arg == 2 {
        address_at(&ctx, 2)
    } else {
        address_at(&ctx, 4)
    };
    if sk != 0 {
        accepted(sk);
    }
    0
}
