//! Which programs a run loads, in what order, and where each attaches: the program table,
//! filtered by the hook kind chosen, the object built and the options.
use crate::kernel::{
    capabilities::ProgramChoice,
    hooks::{self, FENTRY_PROGRAMS, HookKind, KPROBE_PROGRAMS},
};

/// Where each program attaches. The accept/connect hooks come first, so that when the
/// state-change hook starts, the hooks completing its events are already there.
#[derive(Clone, Copy)]
pub(super) enum Hook {
    Tracepoint(&'static str, &'static str),
    Raw(&'static str),
    /// An fexit program on a kernel function (the function is named at load).
    Fexit(&'static str),
    /// A kprobe or kretprobe (as the program was built) on a kernel function.
    Kprobe(&'static str),
}

const PROGRAMS: &[(&str, &[Hook])] = &[
    // One of three sets of accept/connect hooks (see `kernel::hooks`): fexit programs,
    (FENTRY_PROGRAMS[0].0, &[Hook::Fexit(FENTRY_PROGRAMS[0].1)]),
    (FENTRY_PROGRAMS[1].0, &[Hook::Fexit(FENTRY_PROGRAMS[1].1)]),
    (FENTRY_PROGRAMS[2].0, &[Hook::Fexit(FENTRY_PROGRAMS[2].1)]),
    // kprobes (the entry probe first: it saves what the return probes read),
    (
        hooks::KPROBE_ENTRY_PROGRAM,
        &[
            Hook::Kprobe(KPROBE_PROGRAMS[0].1),
            Hook::Kprobe(KPROBE_PROGRAMS[1].1),
        ],
    ),
    (KPROBE_PROGRAMS[0].0, &[Hook::Kprobe(KPROBE_PROGRAMS[0].1)]),
    (KPROBE_PROGRAMS[1].0, &[Hook::Kprobe(KPROBE_PROGRAMS[1].1)]),
    (KPROBE_PROGRAMS[2].0, &[Hook::Kprobe(KPROBE_PROGRAMS[2].1)]),
    // or syscall tracepoints.
    // The compat object only: saves the arguments the exits below read.
    (
        ENTRY_PROGRAM,
        &[
            Hook::Tracepoint("syscalls", "sys_enter_connect"),
            Hook::Tracepoint("syscalls", "sys_enter_accept"),
            Hook::Tracepoint("syscalls", "sys_enter_accept4"),
        ],
    ),
    (
        "sys_exit_connect",
        &[Hook::Tracepoint("syscalls", "sys_exit_connect")],
    ),
    (
        "sys_exit_accept",
        &[
            Hook::Tracepoint("syscalls", "sys_exit_accept"),
            Hook::Tracepoint("syscalls", "sys_exit_accept4"),
        ],
    ),
    ("kfree_skb", &[Hook::Raw("kfree_skb")]),
    // `--states` only; before the lifecycle program, so that it sees a socket's owner at its
    // last transition, before the lifecycle program forgets it.
    (STATES_PROGRAM, &[Hook::Raw("inet_sock_set_state")]),
    ("inet_sock_set_state", &[Hook::Raw("inet_sock_set_state")]),
    // Handles the runs of the one above that nest on a CPU (which the kernel skips).
    (NESTED_PROGRAM, &[Hook::Raw("inet_sock_set_state")]),
];

pub(super) const NESTED_PROGRAM: &str = "state_nested";

const STATES_PROGRAM: &str = "tcp_states";

const ENTRY_PROGRAM: &str = "sys_enter_socket_call";

const OVERFLOW_PROGRAM: &str = "kfree_skb";

/// The syscall hooks (exits, and the compat object's entries).
const SYSCALL_PROGRAMS: &[&str] = &[ENTRY_PROGRAM, "sys_exit_connect", "sys_exit_accept"];

/// The accept/connect programs of hook kind `kind`.
fn hook_programs(kind: HookKind) -> Vec<&'static str> {
    match kind {
        HookKind::Fentry => FENTRY_PROGRAMS.iter().map(|p| p.0).collect(),
        HookKind::Kprobe => std::iter::once(hooks::KPROBE_ENTRY_PROGRAM)
            .chain(KPROBE_PROGRAMS.iter().map(|p| p.0))
            .collect(),
        HookKind::Syscall => SYSCALL_PROGRAMS.to_vec(),
    }
}

/// The programs this run loads, in attach order.
pub(super) fn programs(
    states: bool,
    choice: ProgramChoice,
) -> impl Iterator<Item = &'static (&'static str, &'static [Hook])> {
    let hook_set: Vec<&str> = choice.hooks.map(hook_programs).unwrap_or_default();
    let every_hook: Vec<&str> = HookKind::ALL.into_iter().flat_map(hook_programs).collect();
    PROGRAMS.iter().filter(move |(name, _)| {
        (states || *name != STATES_PROGRAM)
            && (choice.compat || *name != ENTRY_PROGRAM)
            && (!every_hook.contains(name) || hook_set.contains(name))
            && (choice.overflow_hook || *name != OVERFLOW_PROGRAM)
    })
}
