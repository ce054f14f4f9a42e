//! Which hooks see connect() and accept() returning, probed at start-up: fexit programs on
//! kernel functions first, kprobes on the same functions where fexit is refused, and the
//! syscall tracepoints only where neither works.
//!
//! The syscall tracepoints cost every process on the host: enabling any of them puts every
//! system call on the kernel's slow path. The function hooks run only when a TCP connect or an
//! accept returns. Function names and signatures differ between kernels, so each function is
//! checked in the kernel's BTF before its kind is offered, and each kind is tried for real (a
//! program loaded and attached, a probe created) rather than assumed from a version.
use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

use btf_rs::Btf;
use serde::Serialize;

use crate::kernel::{btf, raw_bpf};

/// How accept and connect returns are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// fexit programs on kernel functions (BTF-typed arguments and return values).
    Fentry,
    /// kprobes and kretprobes on the same functions.
    Kprobe,
    /// The accept/connect syscall exit tracepoints (they slow every system call on the host).
    Syscall,
}

impl HookKind {
    /// In order of preference.
    pub const ALL: [HookKind; 3] = [HookKind::Fentry, HookKind::Kprobe, HookKind::Syscall];

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Fentry => "fentry",
            HookKind::Kprobe => "kprobe",
            HookKind::Syscall => "syscall",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A TCP connect's return: `(struct socket *, struct sockaddr *, int addr_len, int flags)`.
pub const CONNECT_FUNCTION: &str = "inet_stream_connect";
/// accept()'s kernel side, for its failures: `(int fd, ...)`.
pub const ACCEPT_FUNCTION: &str = "__sys_accept4";
/// The accept path's return, the accepted `struct sock *`.
pub const ACCEPTED_FUNCTION: &str = "inet_csk_accept";

/// The functions, as the programs attach to them (program name, function, entry probe too).
pub const FENTRY_PROGRAMS: [(&str, &str); 3] = [
    ("fexit_connect", CONNECT_FUNCTION),
    ("fexit_accept4", ACCEPT_FUNCTION),
    ("fexit_csk_accept", ACCEPTED_FUNCTION),
];
/// kretprobes, each with whether an entry kprobe saves the function's arguments for it.
pub const KPROBE_PROGRAMS: [(&str, &str, bool); 3] = [
    ("kretprobe_connect", CONNECT_FUNCTION, true),
    ("kretprobe_accept4", ACCEPT_FUNCTION, true),
    ("kretprobe_csk_accept", ACCEPTED_FUNCTION, false),
];
/// The entry kprobe (attached to each function above that needs it).
pub const KPROBE_ENTRY_PROGRAM: &str = "kprobe_call_entry";

/// The three functions as this kernel's BTF has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Functions {
    /// BTF ids, in [`FENTRY_PROGRAMS`] order.
    pub ids: [u32; 3],
    /// Where `inet_csk_accept`'s return value follows its arguments (their number).
    pub accept_ret_arg: u32,
}

/// Checks that the functions exist with the arguments the programs read. Err: one line why.
pub fn functions(btf: &Btf) -> Result<Functions, String> {
    let get = |name: &str| {
        btf::function(btf, name).map_err(|_| format!("this kernel has no function {name} in BTF"))
    };
    signatures(
        &get(CONNECT_FUNCTION)?,
        &get(ACCEPT_FUNCTION)?,
        &get(ACCEPTED_FUNCTION)?,
    )
}

/// The check of [`functions`], on the functions as BTF describes them.
fn signatures(
    connect: &btf::Function,
    accept: &btf::Function,
    accepted: &btf::Function,
) -> Result<Functions, String> {
    let differs = |f: &btf::Function, name: &str| {
        format!(
            "{name} takes ({}) and returns {} here, which the programs do not read",
            f.params.join(", "),
            f.ret
        )
    };
    let p = &connect.params;
    // The address's type was renamed over time; the programs read it as a pointer.
    if !(p.len() == 4
        && p[0] == "struct socket *"
        && p[1].ends_with('*')
        && p[2] == "int"
        && connect.ret == "int")
    {
        return Err(differs(connect, CONNECT_FUNCTION));
    }
    if !(accept.params.len() == 4 && accept.params[0] == "int" && accept.ret == "int") {
        return Err(differs(accept, ACCEPT_FUNCTION));
    }
    // (sk, flags, err, kern) before Linux 6.10; (sk, arg) since.
    let n = accepted.params.len();
    if !((n == 2 || n == 4)
        && accepted.params[0] == "struct sock *"
        && accepted.ret == "struct sock *")
    {
        return Err(differs(accepted, ACCEPTED_FUNCTION));
    }
    Ok(Functions {
        ids: [connect.id, accept.id, accepted.id],
        accept_ret_arg: n as u32,
    })
}

/// Whether an fexit program loads and attaches on each function: a two-instruction program,
/// attached and detached at once.
pub fn fentry_works(functions: &Functions) -> Result<(), String> {
    for (id, (_, name)) in functions.ids.iter().zip(FENTRY_PROGRAMS) {
        let prog = load_empty_fexit(*id)
            .map_err(|e| format!("the kernel refuses fexit programs on {name} ({e})"))?;
        attach_tracing(&prog)
            .map_err(|e| format!("the kernel refuses to attach fexit programs to {name} ({e})"))?;
    }
    Ok(())
}

/// Whether kprobes and kretprobes can be created on each function (then closed at once).
pub fn kprobes_work() -> Result<(), String> {
    const PMU: &str = "/sys/bus/event_source/devices/kprobe";
    let pmu_type: u32 = std::fs::read_to_string(format!("{PMU}/type"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            format!("this kernel has no kprobe event source ({PMU}: CONFIG_KPROBES is off)")
        })?;
    // "config:0": the bit that makes a return probe.
    let retprobe_bit: u32 = std::fs::read_to_string(format!("{PMU}/format/retprobe"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("config:")?.parse().ok())
        .unwrap_or(0);
    for (_, name, entry) in KPROBE_PROGRAMS {
        perf_kprobe(pmu_type, name, 1 << retprobe_bit)
            .map_err(|e| format!("cannot place a kretprobe on {name} ({e})"))?;
        if entry {
            perf_kprobe(pmu_type, name, 0)
                .map_err(|e| format!("cannot place a kprobe on {name} ({e})"))?;
        }
    }
    Ok(())
}

fn errno_text(e: std::io::Error) -> String {
    // "EPERM: Operation not permitted", without the "(os error 1)" tail.
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        // Kernel-internal; libc has no text for it.
        524 => return "ENOTSUPP: not supported by this kernel".to_string(),
        _ => return format!("errno {code}"),
    };
    let text = std::io::Error::from_raw_os_error(code).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    format!("{name}: {text}")
}

/// Loads `r0 = 0; exit` as an fexit program on the kernel function with BTF id `btf_id`.
fn load_empty_fexit(btf_id: u32) -> Result<OwnedFd, String> {
    use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
    raw_bpf::prog_load(
        bpf_prog_type::BPF_PROG_TYPE_TRACING,
        Some((bpf_attach_type::BPF_TRACE_FEXIT, btf_id)),
        &raw_bpf::return_zero(),
    )
    .map_err(errno_text)
}

/// Attaches a loaded tracing program to its target; the link is closed (detached) on return.
fn attach_tracing(prog: &OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;

    use aya_obj::generated::{bpf_attr, bpf_cmd};
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // A tracing program with no name attaches to the target it was loaded for (Linux 5.5).
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    raw_bpf::bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .map(drop)
        .map_err(errno_text)
}

/// perf_event_open's flag (include/uapi/linux/perf_event.h), which libc does not export.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Creates (and closes) a kprobe perf event on `function`.
fn perf_kprobe(pmu_type: u32, function: &str, config: u64) -> Result<(), String> {
    use aya_obj::generated::perf_event_attr;
    let name = CString::new(function).map_err(|e| e.to_string())?;
    // SAFETY: all-zero is a valid perf_event_attr.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = pmu_type;
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr.config = config;
    attr.__bindgen_anon_3.kprobe_func = name.as_ptr() as u64;
    // SAFETY: attr and the name outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const perf_event_attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno_text(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else; closed here.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// What the probes found, per kind (syscall tracepoints are probed with the capabilities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookProbes {
    pub functions: Result<Functions, String>,
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
}

impl HookProbes {
    pub fn run(btf: &Btf) -> Self {
        let functions = functions(btf);
        let (fentry, kprobe) = match &functions {
            Ok(f) => (fentry_works(f), kprobes_work()),
            Err(why) => (Err(why.clone()), Err(why.clone())),
        };
        Self {
            functions,
            fentry,
            kprobe,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u32, params: &[&str], ret: &str) -> btf::Function {
        btf::Function {
            id,
            params: params.iter().map(|p| p.to_string()).collect(),
            ret: ret.to_string(),
        }
    }

    fn connect() -> btf::Function {
        f(
            1,
            &["struct socket *", "struct sockaddr *", "int", "int"],
            "int",
        )
    }

    fn accept4() -> btf::Function {
        f(2, &["int", "struct sockaddr *", "int *", "int"], "int")
    }

    #[test]
    fn inet_csk_accept_returns_after_four_arguments_before_6_10_and_two_since() {
        let old = f(
            3,
            &["struct sock *", "int", "int *", "_Bool"],
            "struct sock *",
        );
        let new = f(
            3,
            &["struct sock *", "struct proto_accept_arg *"],
            "struct sock *",
        );
        assert_eq!(
            signatures(&connect(), &accept4(), &old).unwrap(),
            Functions {
                ids: [1, 2, 3],
                accept_ret_arg: 4
            }
        );
        assert_eq!(
            signatures(&connect(), &accept4(), &new)
                .unwrap()
                .accept_ret_arg,
            2
        );
    }

    #[test]
    fn a_signature_the_programs_do_not_read_is_named_in_one_line() {
        let three = f(3, &["struct sock *", "int", "int *"], "struct sock *");
        assert_eq!(
            signatures(&connect(), &accept4(), &three).unwrap_err(),
            "inet_csk_accept takes (struct sock *, int, int *) and returns struct sock * here, which the programs do not read"
        );
        let renamed = f(
            1,
            &["struct socket *", "struct sockaddr_unsized *", "int", "int"],
            "int",
        );
        let csk = f(
            3,
            &["struct sock *", "struct proto_accept_arg *"],
            "struct sock *",
        );
        assert!(signatures(&renamed, &accept4(), &csk).is_ok());
        let by_file = f(
            2,
            &["struct file *", "struct sockaddr *", "int *", "int"],
            "int",
        );
        assert!(
            signatures(&connect(), &by_file, &csk)
                .unwrap_err()
                .starts_with("__sys_accept4 takes (struct file *, ")
        );
    }

    #[test]
    fn this_kernels_functions_are_the_ones_the_programs_read() {
        let Ok(btf) = Btf::from_file(btf::VMLINUX_BTF) else {
            eprintln!("skipped: {} not readable", btf::VMLINUX_BTF);
            return;
        };
        let found = functions(&btf).expect("the hooked functions");
        assert!([2, 4].contains(&found.accept_ret_arg));
        assert!(found.ids.iter().all(|&id| id != 0));
    }

    #[test]
    fn errors_read_as_the_errno_name_and_its_text() {
        assert_eq!(
            errno_text(std::io::Error::from_raw_os_error(libc::EPERM)),
            "EPERM: Operation not permitted"
        );
        assert_eq!(
            errno_text(std::io::Error::from_raw_os_error(524)),
            "ENOTSUPP: not supported by this kernel"
        );
    }
}
