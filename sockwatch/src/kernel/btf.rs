//! Kernel struct field offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs get the offsets they need as a load-time
//! global, read here at start-up. Nothing is hard-coded: a kernel whose layout differs gets the
//! right offsets, and one that lacks a field gets a clear error naming it.
use std::path::Path;

use btf_rs::{Btf, Type};
use sockwatch_common::{
    KFREE_SKB_REASON_ARG, KFREE_SKB_SK_ARG, KernelOffsets, NO_DROP_REASON, SOCK_COMMON_READ,
    STATS_WINDOW, StatsOffsets,
};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {path}: this kernel needs CONFIG_DEBUG_INFO_BTF=y, or pass --btf PATH (a BTF file of this kernel)"
    )]
    NotFound { path: String },
    #[error(
        "cannot read kernel BTF at {path}: {reason} (sockwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, or --btf PATH to a BTF file of this kernel)"
    )]
    Unreadable { path: String, reason: String },
    #[error(
        "kernel BTF has no {what}: this kernel's layout is not supported (please report it with `uname -r`)"
    )]
    Missing { what: String },
    #[error("kernel BTF: {what} is a bit-field, which sockwatch cannot read")]
    BitField { what: String },
    #[error(
        "kernel BTF: {what} lies at byte {offset}, beyond the {limit} bytes of struct sock read at once"
    )]
    OutOfWindow {
        what: String,
        offset: u32,
        limit: usize,
    },
    #[error("kernel BTF: {what} span {span} bytes, more than the {limit} read at once")]
    TooSpread {
        what: String,
        span: u32,
        limit: usize,
    },
}

/// Loads BTF from `path` (normally [`VMLINUX_BTF`]) and resolves every offset the programs use.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    resolve(&read(path)?)
}

/// Reads BTF from `path` (normally [`VMLINUX_BTF`]).
pub fn read(path: &Path) -> Result<Btf, BtfError> {
    let shown = || path.display().to_string();
    if let Err(e) = std::fs::metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(BtfError::NotFound { path: shown() });
    }
    let btf = Btf::from_file(path).map_err(|e| BtfError::Unreadable {
        path: shown(),
        // btf-rs reports a truncated or foreign file in several lines: keep one.
        reason: format!("{e:#}").replace('\n', " "),
    })?;
    Ok(btf)
}

/// Every offset the programs use, from `btf`.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    // Every sock_common field is read through `struct sock`, whose first member it is.
    let common = field_offset(btf, "sock", &["__sk_common"])?;
    let sc = |name: &str| -> Result<u32, BtfError> {
        let off = common + field_offset(btf, "sock_common", &[name])?;
        // The programs copy the first SOCK_COMMON_READ bytes of the socket in one read.
        let size = if name.starts_with("skc_v6") { 16 } else { 8 };
        if off as usize + size > SOCK_COMMON_READ {
            return Err(BtfError::OutOfWindow {
                what: format!("struct sock_common field {name}"),
                offset: off,
                limit: SOCK_COMMON_READ,
            });
        }
        Ok(off)
    };
    let (syscall_arg0, syscall_arg1) = syscall_args(btf)?;
    let (regs_arg0, regs_arg1, regs_ret) = function_registers(btf)?;

    Ok(KernelOffsets {
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_family: sc("skc_family")?,
        skc_net: common + field_offset(btf, "sock_common", &["skc_net", "net"])?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        sk_protocol: field_offset(btf, "sock", &["sk_protocol"])?,
        inet_sport: field_offset(btf, "inet_sock", &["inet_sport"])?,
        net_inum: field_offset(btf, "net", &["ns", "inum"])?,
        sk_err: field_offset(btf, "sock", &["sk_err"])?,
        task_files: field_offset(btf, "task_struct", &["files"])?,
        files_fdt: field_offset(btf, "files_struct", &["fdt"])?,
        fdt_max_fds: field_offset(btf, "fdtable", &["max_fds"])?,
        fdt_fd: field_offset(btf, "fdtable", &["fd"])?,
        file_private_data: field_offset(btf, "file", &["private_data"])?,
        socket_sk: field_offset(btf, "socket", &["sk"])?,
        syscall_arg0,
        syscall_arg1,
        // Filled from the tracefs format files by the loader.
        sys_exit_ret: 0,
        sys_enter_arg0: 0,
        sys_enter_arg1: 0,
        regs_arg0,
        regs_arg1,
        regs_ret,
        // Set by the loader when it picks the fexit hooks (see `kernel::hooks`).
        accept_ret_arg: 0,
        drop_reason_listen_overflow: listen_overflow_reason(btf),
        // Set by the loader from the ring size.
        wakeup_bytes: 0,
    })
}

/// Where a syscall's first two arguments are in `struct pt_regs` when it returns: the argument
/// registers as saved at entry. On arm64 x0 holds the return value by then; the kernel keeps
/// the first argument in orig_x0.
fn syscall_args(btf: &Btf) -> Result<(u32, u32), BtfError> {
    #[cfg(target_arch = "x86_64")]
    let args = (
        field_offset(btf, "pt_regs", &["di"])?,
        field_offset(btf, "pt_regs", &["si"])?,
    );
    #[cfg(target_arch = "aarch64")]
    let args = (
        field_offset(btf, "pt_regs", &["orig_x0"])?,
        // regs[1]
        field_offset(btf, "pt_regs", &["regs"])? + 8,
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let args = {
        let _ = btf;
        return Err(BtfError::Missing {
            what: "syscall argument registers for this architecture (x86-64 and arm64 only)".into(),
        });
    };
    Ok(args)
}

/// Where a kernel function's first two arguments are in `struct pt_regs` at its entry, and its
/// return value at its return (the kprobe hooks).
fn function_registers(btf: &Btf) -> Result<(u32, u32, u32), BtfError> {
    #[cfg(target_arch = "x86_64")]
    let regs = (
        field_offset(btf, "pt_regs", &["di"])?,
        field_offset(btf, "pt_regs", &["si"])?,
        field_offset(btf, "pt_regs", &["ax"])?,
    );
    #[cfg(target_arch = "aarch64")]
    let regs = {
        // regs[0], regs[1]; x0 also holds the return value.
        let x0 = field_offset(btf, "pt_regs", &["regs"])?;
        (x0, x0 + 8, x0)
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let regs = {
        let _ = btf;
        (0, 0, 0)
    };
    Ok(regs)
}

/// `struct tcp_sock` fields read at close, with their sizes: bytes received, bytes acked, total
/// retransmits, the smoothed RTT, and (to take the SYN and FINs out of the byte counts) snd_una
/// and write_seq.
pub const TCP_STATS_FIELDS: [(&str, u32); 6] = [
    ("bytes_received", 8),
    ("bytes_acked", 8),
    ("total_retrans", 4),
    ("srtt_us", 4),
    ("snd_una", 4),
    ("write_seq", 4),
];

/// Where the fields read at close are; an error if the kernel lacks any, or they do not fit the
/// programs' reads (the `struct tcp_sock` fields within `STATS_WINDOW` bytes, `sk_flags` in the
/// socket's head).
pub fn stats_offsets(btf: &Btf) -> Result<StatsOffsets, BtfError> {
    let bit = enum_value(btf, "sock_flags", "SOCK_DONE")?;
    if bit >= 64 {
        return Err(BtfError::Missing {
            what: "a SOCK_DONE bit inside sk_flags".into(),
        });
    }
    let mut at = [0u32; TCP_STATS_FIELDS.len()];
    for (slot, (name, size)) in at.iter_mut().zip(TCP_STATS_FIELDS) {
        *slot = sized_field_offset(btf, "tcp_sock", name, size)?;
    }
    let window = at.iter().copied().min().unwrap_or(0);
    let end = at
        .iter()
        .zip(TCP_STATS_FIELDS)
        .map(|(off, (_, size))| off + size)
        .max()
        .unwrap_or(0);
    let window_len = end - window;
    if window_len as usize > STATS_WINDOW {
        return Err(BtfError::TooSpread {
            what: "struct tcp_sock's fields read at close".into(),
            span: window_len,
            limit: STATS_WINDOW,
        });
    }
    // `sk_flags` is a macro for this one.
    let sk_flags = sized_field_offset(btf, "sock", "__sk_common.skc_flags", 8)?;
    if sk_flags as usize + 8 > SOCK_COMMON_READ {
        return Err(BtfError::OutOfWindow {
            what: "struct sock field sk_flags".into(),
            offset: sk_flags,
            limit: SOCK_COMMON_READ,
        });
    }
    let rel = |i: usize| at[i] - window;
    Ok(StatsOffsets {
        window,
        window_len,
        bytes_received: rel(0),
        bytes_acked: rel(1),
        total_retrans: rel(2),
        srtt_us: rel(3),
        snd_una: rel(4),
        write_seq: rel(5),
        sk_flags,
        sock_done_bit: bit,
    })
}

/// The offset of an integer field (`path`: dot-separated members) of `struct root`, which must
/// be `size` bytes wide: the programs read it as such.
fn sized_field_offset(btf: &Btf, root: &str, path: &str, size: u32) -> Result<u32, BtfError> {
    let names: Vec<&str> = path.split('.').collect();
    let (bits, ty) = member_at(btf, root, &names)?;
    match ty {
        Type::Int(i) if i.size() == size as usize => Ok(bits / 8),
        _ => Err(BtfError::Missing {
            what: format!("struct {root} field {path} as a {size}-byte integer"),
        }),
    }
}

/// A kernel function as its BTF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its BTF type id (what an fexit program names as its target).
    pub id: u32,
    /// Its parameters' types, spelled as in [`raw_tracepoint_args`].
    pub params: Vec<String>,
    pub ret: String,
}

/// Kernel function `name`, if the kernel's BTF has it (a function the compiler inlined
/// everywhere has none, and cannot be hooked).
pub fn function(btf: &Btf, name: &str) -> Result<Function, BtfError> {
    let missing = || BtfError::Missing {
        what: format!("function {name}"),
    };
    let ids = btf.resolve_ids_by_name(name).unwrap_or_default();
    for id in ids {
        let Ok(Type::Func(func)) = btf.resolve_type_by_id(id) else {
            continue;
        };
        let Ok(Type::FuncProto(proto)) = btf.resolve_chained_type(&func) else {
            return Err(missing());
        };
        let spelled = |t: Result<Type, _>| match t {
            Ok(t) => spell(btf, strip(btf, t)),
            Err(_) => "?".to_string(),
        };
        return Ok(Function {
            id,
            params: proto
                .parameters
                .iter()
                .map(|p| spelled(btf.resolve_chained_type(p)))
                .collect(),
            ret: match proto.return_type_id() {
                0 => "void".to_string(),
                ret => spelled(btf.resolve_type_by_id(ret)),
            },
        });
    }
    Err(missing())
}

/// The listen-overflow drop reason, if this kernel reports it where the program looks: as
/// argument KFREE_SKB_REASON_ARG of `skb:kfree_skb`, with the listener as KFREE_SKB_SK_ARG.
fn listen_overflow_reason(btf: &Btf) -> u32 {
    let value = enum_value(
        btf,
        "skb_drop_reason",
        "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW",
    );
    let args = raw_tracepoint_args(btf, "kfree_skb");
    match (value, args) {
        (Ok(v), Ok(args))
            if args.get(KFREE_SKB_REASON_ARG).map(String::as_str)
                == Some("enum skb_drop_reason")
                && args.get(KFREE_SKB_SK_ARG).map(String::as_str) == Some("struct sock *") =>
        {
            v
        }
        _ => NO_DROP_REASON,
    }
}

/// Value of enumerator `member` of `enum name`.
pub fn enum_value(btf: &Btf, name: &str, member: &str) -> Result<u32, BtfError> {
    let missing = || BtfError::Missing {
        what: format!("enum {name} value {member}"),
    };
    let ty = btf
        .resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|t| matches!(t, Type::Enum(_)))
        .ok_or_else(missing)?;
    let Type::Enum(e) = ty else {
        return Err(missing());
    };
    e.members
        .iter()
        .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == member))
        .map(|m| m.val())
        .ok_or_else(missing)
}

/// The argument types of raw tracepoint `name` (from its `btf_trace_<name>` prototype, whose
/// first parameter, the probe's private data, is not an argument), as short C spellings:
/// `struct sock *`, `enum skb_drop_reason`, `void *`, `int`, ...
pub fn raw_tracepoint_args(btf: &Btf, name: &str) -> Result<Vec<String>, BtfError> {
    let typedef = format!("btf_trace_{name}");
    let missing = || BtfError::Missing {
        what: format!("tracepoint prototype {typedef}"),
    };
    let ty = btf
        .resolve_types_by_name(&typedef)
        .unwrap_or_default()
        .into_iter()
        .find(|t| matches!(t, Type::Typedef(_)))
        .ok_or_else(missing)?;
    let Type::Ptr(ptr) = strip(btf, ty) else {
        return Err(missing());
    };
    let Ok(Type::FuncProto(proto)) = btf.resolve_chained_type(&ptr) else {
        return Err(missing());
    };
    Ok(proto
        .parameters
        .iter()
        .skip(1)
        .map(|p| match btf.resolve_chained_type(p) {
            Ok(t) => spell(btf, strip(btf, t)),
            Err(_) => "?".to_string(),
        })
        .collect())
}

fn spell(btf: &Btf, ty: Type) -> String {
    match &ty {
        Type::Ptr(p) => match btf.resolve_chained_type(p) {
            Ok(inner) => format!("{} *", spell(btf, strip(btf, inner))),
            Err(_) => "void *".to_string(),
        },
        Type::Struct(s) => format!("struct {}", btf.resolve_name(s).unwrap_or_default()),
        Type::Union(u) => format!("union {}", btf.resolve_name(u).unwrap_or_default()),
        Type::Enum(e) => format!("enum {}", btf.resolve_name(e).unwrap_or_default()),
        Type::Int(i) => btf.resolve_name(i).unwrap_or_default(),
        Type::Void => "void".to_string(),
        other => other.name().to_string(),
    }
}

/// Byte offset of `path` (a chain of member names, each in the type of the previous one)
/// inside `struct root`. Members of anonymous structs and unions are found as if they were
/// direct members, as in C.
pub fn field_offset(btf: &Btf, root: &str, path: &[&str]) -> Result<u32, BtfError> {
    Ok(member_at(btf, root, path)?.0 / 8)
}

/// The bit offset and type (typedefs and qualifiers stripped) of `root.path[0].path[1]...`.
fn member_at(btf: &Btf, root: &str, path: &[&str]) -> Result<(u32, Type), BtfError> {
    let mut ty = named_struct(btf, root)?;
    let mut bits = 0u32;
    let mut what = format!("struct {root}");
    for name in path {
        what = format!("{what} field {name}");
        let (off, member_ty) = find_member(btf, &ty, name, &what)?;
        bits += off;
        ty = strip(btf, member_ty);
    }
    Ok((bits, ty))
}

/// Whether the kernel has `struct name`.
pub fn has_struct(btf: &Btf, name: &str) -> bool {
    named_struct(btf, name).is_ok()
}

fn named_struct(btf: &Btf, name: &str) -> Result<Type, BtfError> {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| BtfError::Missing {
            what: format!("struct {name}"),
        })
}

/// Looks for member `name` in a struct or union, descending into anonymous members.
/// Returns its bit offset and type.
fn find_member(btf: &Btf, ty: &Type, name: &str, what: &str) -> Result<(u32, Type), BtfError> {
    search(btf, ty, name, what, 0)?.ok_or_else(|| BtfError::Missing {
        what: what.to_string(),
    })
}

fn search(
    btf: &Btf,
    ty: &Type,
    name: &str,
    what: &str,
    depth: u32,
) -> Result<Option<(u32, Type)>, BtfError> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    // Anonymous nesting in the kernel is shallow; the bound guards against malformed BTF.
    if depth > 8 {
        return Ok(None);
    }
    for m in members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let Ok(member_ty) = btf.resolve_chained_type(m) else {
            continue;
        };
        if member_name == name {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Err(BtfError::BitField {
                    what: what.to_string(),
                });
            }
            return Ok(Some((m.bit_offset(), member_ty)));
        }
        if member_name.is_empty() {
            let inner = strip(btf, member_ty);
            if let Some((off, t)) = search(btf, &inner, name, what, depth + 1)? {
                return Ok(Some((m.bit_offset() + off, t)));
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) => btf.resolve_chained_type(t),
            Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(t) => ty = t,
            Err(_) => return ty,
        }
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmlinux() -> Option<Btf> {
        // Readable without root on kernels with BTF; these tests need no privileges.
        Btf::from_file(VMLINUX_BTF).ok()
    }

    #[test]
    fn resolves_all_offsets_on_this_kernel() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        let off = resolve(&btf).expect("offsets");
        // Invariants that hold on every kernel: the v4 address pair is adjacent (daddr first),
        // v6 addresses follow the common head, and inet_sock extends struct sock.
        assert_eq!(off.skc_rcv_saddr, off.skc_daddr + 4);
        assert!(off.skc_v6_daddr > off.skc_family);
        assert_eq!(off.skc_v6_rcv_saddr, off.skc_v6_daddr + 16);
        let sock_size = match named_struct(&btf, "sock").unwrap() {
            Type::Struct(s) => s.size() as u32,
            _ => unreachable!(),
        };
        assert!(off.inet_sport >= sock_size, "inet_sport inside struct sock");
        assert!(off.sk_protocol < sock_size);
    }

    #[test]
    fn this_kernel_has_the_fields_read_at_close() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        let s = stats_offsets(&btf).expect("stats offsets");
        // SOCK_DONE follows SOCK_DEAD in `enum sock_flags`.
        assert_eq!(s.sock_done_bit, 1);
        // One window holds them all; each field lies inside it.
        assert!(s.window_len > 0 && s.window_len as usize <= STATS_WINDOW);
        for (off, (_, size)) in [
            s.bytes_received,
            s.bytes_acked,
            s.total_retrans,
            s.srtt_us,
            s.snd_una,
            s.write_seq,
        ]
        .into_iter()
        .zip(TCP_STATS_FIELDS)
        {
            assert!(off + size <= s.window_len);
        }
        assert!(s.sk_flags != 0 && s.sk_flags as usize + 8 <= SOCK_COMMON_READ);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn syscall_arguments_are_the_saved_di_and_si() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        // x86-64's pt_regs is the ptrace layout (r15 first, 8 bytes each): si is the 14th
        // register, di the 15th.
        assert_eq!(syscall_args(&btf).unwrap(), (14 * 8, 13 * 8));
        // A function's arguments at its entry are di and si too; its return value is ax, the
        // 11th register.
        assert_eq!(function_registers(&btf).unwrap(), (14 * 8, 13 * 8, 10 * 8));
    }

    #[test]
    fn anonymous_members_are_searched() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        // skc_daddr sits in an anonymous struct inside an anonymous union; skc_addrpair is the
        // union's other member at the same place.
        let a = field_offset(&btf, "sock_common", &["skc_daddr"]).unwrap();
        let b = field_offset(&btf, "sock_common", &["skc_addrpair"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn missing_type_and_field_are_named() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        let e = field_offset(&btf, "no_such_struct_xyz", &["a"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel BTF has no struct no_such_struct_xyz: this kernel's layout is not supported (please report it with `uname -r`)"
        );
        let e = field_offset(&btf, "sock", &["no_such_field"]).unwrap_err();
        assert!(
            e.to_string().contains("struct sock field no_such_field"),
            "{e}"
        );
    }

    #[test]
    fn listen_overflow_drop_reason_and_kfree_skb_arguments() {
        let Some(btf) = vmlinux() else {
            eprintln!("skipped: {VMLINUX_BTF} not readable");
            return;
        };
        let args = raw_tracepoint_args(&btf, "kfree_skb").unwrap();
        assert_eq!(args[0], "struct sk_buff *");
        assert_eq!(args[KFREE_SKB_REASON_ARG], "enum skb_drop_reason");
        assert_eq!(args[KFREE_SKB_SK_ARG], "struct sock *");
        let v = enum_value(
            &btf,
            "skb_drop_reason",
            "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW",
        )
        .unwrap();
        assert!(v > 2, "{v}");
        assert_eq!(listen_overflow_reason(&btf), v);
        assert!(enum_value(&btf, "skb_drop_reason", "NO_SUCH").is_err());
        // The state-change tracepoint, for comparison: (sk, oldstate, newstate).
        assert_eq!(
            raw_tracepoint_args(&btf, "inet_sock_set_state").unwrap(),
            ["struct sock *", "int", "int"]
        );
    }

    #[test]
    fn missing_or_unreadable_file_is_a_clear_error() {
        let e = kernel_offsets(Path::new("/nonexistent/btf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel BTF not found at /nonexistent/btf: this kernel needs CONFIG_DEBUG_INFO_BTF=y, or pass --btf PATH (a BTF file of this kernel)"
        );
        let e = kernel_offsets(Path::new("/proc/self/cmdline")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read kernel BTF at /proc/self/cmdline: "),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
