//! What the kernel has loaded: names of BPF programs and maps, from the BPF syscalls (no
//! bpftool needed).
use std::io;

const BPF_PROG_GET_NEXT_ID: i64 = 11;
const BPF_MAP_GET_NEXT_ID: i64 = 12;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: the attr buffer is larger than every union member used here.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Names of every loaded object of one kind (`name_offset`: where the name is in its info).
fn names(next_cmd: i64, fd_cmd: i64, name_offset: usize) -> Vec<String> {
    ids_and_names(next_cmd, fd_cmd, name_offset)
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// Ids and names of every loaded object of one kind.
fn ids_and_names(next_cmd: i64, fd_cmd: i64, name_offset: usize) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        if bpf(next_cmd, &mut attr).is_err() {
            return out;
        }
        id = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]);
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        let Ok(fd) = bpf(fd_cmd, &mut attr) else {
            continue; // gone meanwhile
        };
        let mut info = [0u8; 256];
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        let ok = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok();
        // SAFETY: closing the fd we were just given.
        unsafe { libc::close(fd as i32) };
        if ok {
            let raw = &info[name_offset..name_offset + 16];
            let len = raw.iter().position(|&b| b == 0).unwrap_or(16);
            out.push((id, String::from_utf8_lossy(&raw[..len]).into_owned()));
        }
    }
}

const PROGS: &[&str] = &[
    "inet_sock_set_s",
    "sys_exit_connec",
    "sys_exit_accept",
    "sys_enter_socke",
    "kfree_skb",
    "tcp_states",
    "state_nested",
];

/// sockwatch's programs and maps (names as the kernel keeps them: 15 bytes at most) that are
/// loaded right now.
pub fn sockwatch_objects() -> Vec<String> {
    const MAPS: &[&str] = &["SOCKS", "CONNECTING", "ARGS", "PENDING"];
    // struct bpf_prog_info: name at byte 64; struct bpf_map_info: name at byte 24.
    let progs = names(BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, 64);
    let maps = names(BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID, 24);
    progs
        .into_iter()
        .filter(|n| PROGS.contains(&n.as_str()))
        .chain(maps.into_iter().filter(|n| MAPS.contains(&n.as_str())))
        .collect()
}

/// How many programs sockwatch attaches on this kernel (without `--states`), as `sockwatch check`
/// says: the two on the state tracepoint, the two syscall exits, the compat build's syscall
/// entry hook and kfree_skb where the kernel has what they need.
pub fn expected_programs() -> usize {
    let check = super::check_json();
    let has = |name: &str| super::capability(&check, name)["available"] == true;
    let compat = check["programs"]["build"] == "compat";
    let syscalls = has("accept_owner");
    2 + if syscalls { 2 } else { 0 }
        + usize::from(syscalls && compat)
        + usize::from(has("listen_overflow_events"))
}

/// Ids of the sockwatch programs loaded right now. Ids are not reused while the system runs,
/// so a test tells its own instance's programs from others' by comparing before and after.
pub fn sockwatch_program_ids() -> Vec<u32> {
    ids_and_names(BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, 64)
        .into_iter()
        .filter(|(_, n)| PROGS.contains(&n.as_str()))
        .map(|(id, _)| id)
        .collect()
}
