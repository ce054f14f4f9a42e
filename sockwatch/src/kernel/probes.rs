//! The probes run against the running kernel at start-up: BTF types and fields, map types,
//! helpers, an instruction, tracepoints, sock_diag. What they find ([`Probes`]) is turned into
//! the program choice and the capability list in [`super::capabilities`].
use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};
use btf_rs::Btf;
use sockwatch_common::{KernelOffsets, NO_DROP_REASON, StatsOffsets};

use crate::kernel::{btf, hooks::HookProbes, raw_bpf, tp_format};

/// What the probes found, before it is turned into the list (kept apart so that the wording
/// and the program choice are tested without a kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    pub ring_buffer: bool,
    pub task_storage: bool,
    pub task_pt_regs: bool,
    pub current_task_btf: bool,
    pub cmpxchg: bool,
    pub syscall_tracepoints: bool,
    /// When they are missing: the first one not found, and the tracefs looked in.
    pub syscall_missing: Option<(&'static str, &'static str)>,
    pub overflow_reason: bool,
    pub recursion_misses: bool,
    pub sock_diag: bool,
    pub ancestor_cgroup: bool,
    /// Tracing programs may use hash maps that allocate as entries are added (the BPF memory
    /// allocator, Linux 6.1); before, the kernel allows them with a kernel WARNING.
    pub run_time_alloc: bool,
    /// fexit programs load and attach on the hooked functions; or why not.
    pub fentry: Result<(), &'static str>,
    /// kprobes and kretprobes can be placed on them; or why not.
    pub kprobe: Result<(), &'static str>,
    /// `struct tcp_sock` has the fields read at close (bytes, retransmits, RTT) where the
    /// programs read them; or why not.
    pub tcp_stats: Result<(), &'static str>,
}

impl Probes {
    /// A kernel that has everything (for tests: change a field or two from it).
    #[cfg(test)]
    pub(crate) fn everything() -> Self {
        Self {
            ring_buffer: true,
            task_storage: true,
            task_pt_regs: true,
            current_task_btf: true,
            cmpxchg: true,
            syscall_tracepoints: true,
            syscall_missing: None,
            overflow_reason: true,
            recursion_misses: true,
            sock_diag: true,
            ancestor_cgroup: true,
            run_time_alloc: true,
            fentry: Ok(()),
            kprobe: Ok(()),
            tcp_stats: Ok(()),
        }
    }

    /// Runs every probe against the running kernel (root needed for the BPF ones), given what
    /// the start-up found already: the hook probes and where the fields read at close are.
    /// Fails only on syscall tracepoint records that differ from what the programs read.
    pub fn run(
        btf: &Btf,
        offsets: &KernelOffsets,
        tracefs: &Path,
        hooks: HookProbes,
        stats: &Result<StatsOffsets, btf::BtfError>,
    ) -> Result<Self, tp_format::FormatError> {
        let helper = |h| is_helper_supported(ProgramType::TracePoint, h).unwrap_or(false);
        let syscall_missing = missing_syscall_tracepoint(tracefs)?;
        // Kept for the rest of the run, in the capabilities' notes.
        let leak = |r: Result<(), String>| r.map_err(|why| &*Box::leak(why.into_boxed_str()));
        Ok(Self {
            fentry: leak(hooks.fentry),
            kprobe: leak(hooks.kprobe),
            tcp_stats: leak(stats.as_ref().map(|_| ()).map_err(|e| match e {
                btf::BtfError::Missing { what } => format!("this kernel's BTF has no {what}"),
                other => other.to_string(),
            })),
            ring_buffer: is_map_supported(MapType::RingBuf).unwrap_or(false),
            task_storage: is_map_supported(MapType::TaskStorage).unwrap_or(false),
            task_pt_regs: helper(BpfHelper::BPF_FUNC_task_pt_regs),
            current_task_btf: helper(BpfHelper::BPF_FUNC_get_current_task_btf),
            cmpxchg: cmpxchg_supported(),
            syscall_tracepoints: syscall_missing.is_none(),
            syscall_missing,
            overflow_reason: offsets.drop_reason_listen_overflow != NO_DROP_REASON,
            recursion_misses: btf::field_offset(btf, "bpf_prog_info", &["recursion_misses"])
                .is_ok(),
            sock_diag: sock_diag_works(),
            ancestor_cgroup: helper(BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id),
            // Not probed by loading such a map: that load is what triggers the warning.
            run_time_alloc: btf::has_struct(btf, "bpf_mem_alloc"),
        })
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Offset of `ret` in the accept/connect syscall exit records.
pub fn syscall_exit_ret(tracefs: &Path) -> Result<u32, tp_format::FormatError> {
    tp_format::common_offset(tracefs, &SYSCALL_EXITS, "ret")
}

/// The syscall tracepoints either build of the programs attaches to.
pub const SYSCALL_EXITS: [&str; 3] = ["sys_exit_connect", "sys_exit_accept", "sys_exit_accept4"];
pub const SYSCALL_ENTRIES: [&str; 3] =
    ["sys_enter_connect", "sys_enter_accept", "sys_enter_accept4"];

/// The first syscall tracepoint that is absent (a kernel without CONFIG_FTRACE_SYSCALLS, or a
/// `--tracefs` that is not tracefs), or None when all are there. Records that are there but
/// differ from what the programs read are an error: the programs cannot run on them.
fn missing_syscall_tracepoint(
    tracefs: &Path,
) -> Result<Option<(&'static str, &'static str)>, tp_format::FormatError> {
    use tp_format::FormatError;
    for event in SYSCALL_EXITS.iter().chain(&SYSCALL_ENTRIES) {
        let field = if event.starts_with("sys_exit") {
            "ret"
        } else {
            "fd"
        };
        match tp_format::field_offset(tracefs, "syscalls", event, field) {
            Ok(_) => {}
            Err(FormatError::Absent { .. }) => {
                // Kept for the rest of the run, in the capability's note.
                let shown: &'static str = Box::leak(tracefs.display().to_string().into());
                return Ok(Some((event, shown)));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether sock_diag answers a TCP dump in our own namespace.
fn sock_diag_works() -> bool {
    let Ok(ns) = crate::host::Netns::of_pid(std::process::id()) else {
        return false;
    };
    let mask = crate::host::state_mask(&[sockwatch_common::tcp_state::LISTEN]);
    crate::host::dump_tcp(&ns, mask).is_ok()
}

/// Whether the verifier knows BPF compare-and-swap (Linux 5.12): loads a socket filter that
/// swaps a stack slot.
fn cmpxchg_supported() -> bool {
    use aya_obj::generated::bpf_prog_type;
    use raw_bpf::{ATOMIC_DW, EXIT, MOV_IMM, STORE_DW, insn};
    const CMPXCHG: i32 = 0xf1; // BPF_CMPXCHG (BPF_FETCH | 0xf0)
    let prog = [
        insn(MOV_IMM, 0, 0, 0, 0),
        insn(STORE_DW, 10, 0, -8, 0),
        insn(MOV_IMM, 1, 0, 0, 1),
        insn(ATOMIC_DW, 10, 1, -8, CMPXCHG),
        insn(MOV_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ];
    raw_bpf::prog_load(bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER, None, &prog).is_ok()
}
