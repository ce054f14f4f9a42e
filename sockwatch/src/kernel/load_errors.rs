//! Why loading or attaching the programs failed, in one line that names the cause and, where
//! there is one, the fix.
use std::io;

use super::loader::LoadError;

/// An attach failure; a tracepoint the kernel does not have (ENOENT) gets its own message.
pub(super) fn attach_error(
    name: &'static str,
    tracepoint: String,
    cause: aya::programs::ProgramError,
) -> LoadError {
    use aya::programs::{ProgramError, trace_point::TracePointError};
    let absent = match &cause {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        ProgramError::TracePointError(TracePointError::FileError { io_error, .. }) => {
            io_error.kind() == io::ErrorKind::NotFound
        }
        _ => false,
    };
    if !absent {
        return LoadError::Attach {
            name,
            tracepoint,
            cause,
        };
    }
    let why = if tracepoint.starts_with("syscalls:") {
        "syscall tracepoints need a kernel built with CONFIG_FTRACE_SYSCALLS=y"
    } else if tracepoint.contains("inet_sock_set_state") {
        "sockwatch needs it to see TCP state changes (Linux 4.16 or later)"
    } else {
        "sockwatch needs it (see /sys/kernel/tracing/available_events)"
    };
    LoadError::NoTracepoint { tracepoint, why }
}

const BPF_REFUSED: &str = "the kernel refused bpf() (needs CAP_BPF and CAP_PERFMON in the host's \
                            user namespace; unprivileged containers, seccomp profiles and kernel \
                            lockdown prevent it)";

/// An error and its causes on one line, with the fix when the kernel refused bpf() itself.
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut refused = false;
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // Some layers repeat their cause's words: keep each once.
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        refused |= c
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM));
        cause = c.source();
    }
    if refused {
        text.push_str("; ");
        text.push_str(BPF_REFUSED);
    }
    text.replace('\n', " ")
}

/// A program error on one line: the verifier's log is long, its last finding is the reason.
pub(super) fn one_line(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let reason = log
                .lines()
                .map(str::trim)
                .rev()
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .unwrap_or("no verifier output");
            if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
                // Refused before verification: a policy, not the program.
                return format!("{io_error}: {BPF_REFUSED}");
            }
            format!("{io_error}; verifier: {reason}")
        }
        other => other.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::programs::{ProgramError, trace_point::TracePointError};

    fn syscall_error(errno: i32) -> ProgramError {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_raw_tracepoint_open",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn absent_raw_tracepoint_is_named_with_why() {
        let e = attach_error(
            "inet_sock_set_state",
            "inet_sock_set_state".into(),
            syscall_error(libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "tracepoint inet_sock_set_state does not exist in this kernel: sockwatch needs it to \
             see TCP state changes (Linux 4.16 or later)"
        );
        let e = attach_error("kfree_skb", "kfree_skb".into(), syscall_error(libc::ENOENT));
        assert!(
            e.to_string()
                .starts_with("tracepoint kfree_skb does not exist in this kernel: "),
            "{e}"
        );
    }

    #[test]
    fn absent_syscall_tracepoint_names_the_config() {
        let cause = ProgramError::TracePointError(TracePointError::FileError {
            filename: "/sys/kernel/tracing/events/syscalls/sys_exit_connect/id".into(),
            io_error: io::Error::from_raw_os_error(libc::ENOENT),
        });
        let e = attach_error(
            "sys_exit_connect",
            "syscalls:sys_exit_connect".into(),
            cause,
        );
        assert_eq!(
            e.to_string(),
            "tracepoint syscalls:sys_exit_connect does not exist in this kernel: syscall \
             tracepoints need a kernel built with CONFIG_FTRACE_SYSCALLS=y"
        );
    }

    #[test]
    fn other_attach_failures_keep_their_cause() {
        let e = attach_error("kfree_skb", "kfree_skb".into(), syscall_error(libc::EPERM));
        assert!(matches!(e, LoadError::Attach { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("attaching kfree_skb to tracepoint kfree_skb failed: ")
        );
    }
}
