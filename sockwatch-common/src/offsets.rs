//! Kernel struct field offsets and tracepoint argument positions, handed to the programs at
//! load time.
/// Kernel struct field offsets, read from the running kernel's BTF at start-up and handed to the
/// programs as a load-time global (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Offsets inside `struct sock` (its `struct sock_common` head), all below `SOCK_COMMON_READ`.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock::sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct inet_sock::inet_sport` (be16); the bound port even after it moved to TIME_WAIT.
    pub inet_sport: u32,
    /// `struct net::ns.inum`.
    pub net_inum: u32,
    /// `struct sock::sk_err` (int): why a connecting socket was closed.
    pub sk_err: u32,
    /// The fd-to-socket chain: task->files->fdt->fd[fd]->private_data->sk.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// Offsets in `struct pt_regs` of a syscall's first and second argument as its exit finds
    /// them (x86-64: di, si; arm64: orig_x0, x1): the exit hooks read the arguments there, so
    /// that no entry hook has to save them.
    pub syscall_arg0: u32,
    pub syscall_arg1: u32,
    /// Offset of `ret` in the syscall exit tracepoint records (from tracefs format files).
    pub sys_exit_ret: u32,
    /// Offsets of the first two arguments in the syscall entry records of connect, accept and
    /// accept4 (the `compat` build's entry hooks; 0 otherwise).
    pub sys_enter_arg0: u32,
    pub sys_enter_arg1: u32,
    /// Offsets in `struct pt_regs` of a kernel function's first two arguments at its entry and
    /// of its return value at its return (x86-64: di, si, ax; arm64: x0, x1, x0), for the
    /// kprobe hooks.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_ret: u32,
    /// Where an fexit program on `inet_csk_accept` finds the return value: after the
    /// function's arguments, whose number changed (4 before Linux 6.10, 2 since).
    pub accept_ret_arg: u32,
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` in this kernel's `enum skb_drop_reason`;
    /// `NO_DROP_REASON` when the kernel has none, which turns the overflow hook off.
    pub drop_reason_listen_overflow: u32,
    /// Wake the reader only once the ring holds this many bytes (it also polls on a timer):
    /// a wake-up per event costs an interrupt per event.
    pub wakeup_bytes: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 112);

/// Where the fields read at a connection's close are (see `ConnEvent::bytes_received`), a
/// load-time global of its own: `KernelOffsets` is copied onto the programs' stacks, which have
/// no room for more. The `struct tcp_sock` fields come from one read of the part of the struct
/// that holds them all (`window_len` bytes from `window`, at most `STATS_WINDOW`), so their
/// offsets are relative to `window`. `window_len` 0: the kernel's BTF lacks one of the fields,
/// or they lie too far apart; nothing is read then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsOffsets {
    /// Offset of the window in `struct tcp_sock` (that is, in `struct sock`), and its length.
    pub window: u32,
    pub window_len: u32,
    /// `struct tcp_sock` fields, from the window's start.
    pub bytes_received: u32,
    pub bytes_acked: u32,
    pub total_retrans: u32,
    pub srtt_us: u32,
    pub snd_una: u32,
    pub write_seq: u32,
    /// `struct sock`'s flags (`sk_flags`, that is `__sk_common.skc_flags`), below
    /// `SOCK_COMMON_READ` (it comes with the event's read of the socket's head), and the bit of
    /// `SOCK_DONE` in them.
    pub sk_flags: u32,
    pub sock_done_bit: u32,
}

/// The most bytes of `struct tcp_sock` read at a close, in one read: the fields lie within 704
/// bytes of each other in the kernels tested (5.10 to 7.2).
pub const STATS_WINDOW: usize = 1024;

const _: () = assert!(core::mem::size_of::<StatsOffsets>() == 40);

/// A drop reason no kernel uses.
pub const NO_DROP_REASON: u32 = u32::MAX;
/// Positions of `reason` and `rx_sk` among the `skb:kfree_skb` raw tracepoint arguments
/// (checked against the kernel's BTF at start-up).
pub const KFREE_SKB_REASON_ARG: usize = 2;
pub const KFREE_SKB_SK_ARG: usize = 3;

/// The programs read this many bytes of `struct sock` at once, so that all the `sock_common`
/// fields they need come from one read; userspace checks every offset fits.
pub const SOCK_COMMON_READ: usize = 128;
