//! The few bpf() calls aya does not offer as such: loading a hand-written probe program
//! (compare-and-swap, fexit targets) and reading a program's info. One place for the unsafe
//! plumbing they share.
use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

/// Opcodes of the probe programs.
pub const MOV_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
pub const STORE_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
pub const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW
pub const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// One instruction.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    // SAFETY: a plain C struct for which all-zero is valid.
    let mut i: bpf_insn = unsafe { std::mem::zeroed() };
    i.code = code;
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i.off = off;
    i.imm = imm;
    i
}

/// `r0 = 0; exit`.
pub fn return_zero() -> [bpf_insn; 2] {
    [insn(MOV_IMM, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]
}

/// `bpf(cmd, attr)`: its result, or the error it set.
pub fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, fully initialized bpf_attr that outlives the call; whatever it
    // points to is the caller's and outlives it too.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A `bpf()` call that returns a new descriptor.
pub fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `prog` (GPL) as a program of `prog_type`, for `attach` to BTF id `btf_id` where the
/// type needs a target (tracing programs).
pub fn prog_load(
    prog_type: bpf_prog_type,
    attach: Option<(bpf_attach_type, u32)>,
    prog: &[bpf_insn],
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the prog-load members of the union.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        u.prog_type = prog_type as u32;
        if let Some((kind, btf_id)) = attach {
            u.expected_attach_type = kind as u32;
            u.attach_btf_id = btf_id;
        }
        u.insn_cnt = prog.len() as u32;
        u.insns = prog.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
    }
    bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// The `bpf_prog_info` of the program behind `fd`.
pub fn prog_info(fd: i32) -> io::Result<aya_obj::generated::bpf_prog_info> {
    use aya_obj::generated::bpf_prog_info;
    // SAFETY: both are plain C structs for which all-zero is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&mut info as *mut bpf_prog_info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}
