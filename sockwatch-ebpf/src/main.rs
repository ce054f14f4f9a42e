//! sockwatch's kernel side: one module per hook family.
//!
//! - `state`: `sock:inet_sock_set_state` (raw tracepoint): connection lifecycle.
//! - `states`: the same tracepoint, every raw transition (`trace --states` only).
//! - `fexit`: fexit programs on `inet_stream_connect`, `__sys_accept4` and `inet_csk_accept`:
//!   connects, connect() errors, accepts and accept() failures, where the kernel allows them.
//! - `kprobe`: kprobes and kretprobes on the same functions, where fexit is refused.
//! - `syscall`: `syscalls:sys_exit_{connect,accept,accept4}`, where neither is allowed.
//! - `connect`, `accept`: what a connect's or an accept's return means, for all three.
//! - `errno`: what those share: errno decoding.
//! - `thread`: per-thread state (the connecting socket, the socket call's arguments).
//! - `enter`: `syscalls:sys_enter_{connect,accept,accept4}`, in the `compat` build only: the
//!   arguments saved at entry, for kernels that cannot read them at exit.
//! - `drop`: `skb:kfree_skb` (raw tracepoint): accept-queue overflow drops.
//! - `filter`: in-kernel filters (a load-time global).
//! - `count`: in-kernel per-port, per-error and per-process counters, and which events go to
//!   the ring buffer (the mode, a load-time global).
//! - `sock`: reading `struct sock` fields with offsets from the running kernel's BTF.
//! - `maps`: maps, load-time globals and loss counters.
//! - `store`: stores that LLVM cannot turn into a (slow, looping) memset.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For an atomic add (see `maps::bump`) and compare-and-swap (see `connect`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod accept;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod count;
#[cfg(target_arch = "bpf")]
mod drop;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(all(target_arch = "bpf", feature = "compat"))]
mod enter;
#[cfg(target_arch = "bpf")]
mod errno;
#[cfg(target_arch = "bpf")]
mod fexit;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod kprobe;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod state;
#[cfg(target_arch = "bpf")]
mod states;
#[cfg(target_arch = "bpf")]
mod store;
#[cfg(target_arch = "bpf")]
mod syscall;
#[cfg(target_arch = "bpf")]
mod thread;

// The crate is only meaningful for the bpf target; the host build (workspace clippy, tests)
// gets an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// With the `hooks-only` feature every program returns at its first instruction, while the rest
/// stays in the object and is verified as usual: `cargo xtask bench`'s `hooks` row, the cost of
/// the hooks themselves with no work done. Never set in a build that is run for its events.
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn hooks_only() -> bool {
    // Opaque, so that the compiler keeps (and the verifier checks) what follows.
    cfg!(feature = "hooks-only") && core::hint::black_box(true)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable path here, so this is never run.
    loop {}
}

/// bpf_probe_read_kernel is GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
