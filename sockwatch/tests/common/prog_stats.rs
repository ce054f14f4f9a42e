//! The kernel's own account of the time BPF programs take: run time and run count of each
//! loaded program (`struct bpf_prog_info`), kept while `kernel.bpf_stats_enabled` is 1. Read
//! through the BPF syscalls, no bpftool needed.
use std::{collections::BTreeMap, fs, io, mem};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStats {
    /// As the kernel keeps it: 15 bytes at most.
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a whole bpf_attr, zeroed but for the members `cmd` reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Ids of every program loaded right now. Ids are not reused while the system runs, so the
/// programs a process loaded are the ids that were not there before it started.
pub fn program_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        if bpf(bpf_cmd::BPF_PROG_GET_NEXT_ID, &mut attr).is_err() {
            // ENOENT: no more.
            return ids;
        }
        // SAFETY: the kernel filled in next_id.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        ids.push(id);
    }
}

/// The counters of program `id`, or None if it is gone.
pub fn prog_stats(id: u32) -> Option<ProgStats> {
    // SAFETY: all-zero is a valid bpf_attr and bpf_prog_info.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr).ok()? as i32;
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.info.bpf_fd = fd as u32;
    // Older kernels know a shorter struct: they accept a longer one whose tail is zero.
    attr.info.info_len = mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&mut info as *mut bpf_prog_info) as u64;
    let ok = bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok();
    // SAFETY: closing the fd we were just given.
    unsafe { libc::close(fd) };
    if !ok {
        return None;
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    Some(ProgStats {
        name: String::from_utf8_lossy(&name).into_owned(),
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
    })
}

/// The counters of the programs `ids` that are still loaded, by id.
pub fn stats_of(ids: &[u32]) -> BTreeMap<u32, ProgStats> {
    ids.iter()
        .filter_map(|&id| prog_stats(id).map(|s| (id, s)))
        .collect()
}

/// Each program's counters from `before` to `after` (programs in both), by id.
pub fn delta(
    before: &BTreeMap<u32, ProgStats>,
    after: &BTreeMap<u32, ProgStats>,
) -> BTreeMap<u32, ProgStats> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id)?;
            let d = ProgStats {
                name: a.name.clone(),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
            };
            Some((*id, d))
        })
        .collect()
}

/// `kernel.bpf_stats_enabled` set to 1 while it lives; the old value is put back on drop,
/// even when the test panics.
pub struct StatsEnabled {
    old: String,
}

impl StatsEnabled {
    pub fn new() -> Self {
        let old = fs::read_to_string(STATS_SYSCTL)
            .unwrap_or_else(|e| panic!("cannot read {STATS_SYSCTL}: {e}"))
            .trim()
            .to_string();
        fs::write(STATS_SYSCTL, "1").unwrap_or_else(|e| panic!("cannot write {STATS_SYSCTL}: {e}"));
        Self { old }
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.old) {
            eprintln!("cannot restore {STATS_SYSCTL} to {}: {e}", self.old);
        }
    }
}
