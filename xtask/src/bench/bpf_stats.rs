//! The kernel time of a tracer's BPF programs, as the kernel itself accounts it: while
//! `kernel.bpf_stats_enabled` is 1, every program's `run_time_ns` and `run_cnt` (in `struct
//! bpf_prog_info`) grow with each of its runs.
//!
//! `StatsOn` sets the sysctl to 1 for the rounds and puts the old value back when dropped, and
//! from a handler of SIGINT, SIGTERM and SIGHUP if one of those ends xtask first. A run lists
//! the program ids before its tracer starts (`program_ids`) and reads, just before stopping it,
//! the programs that were not there then and that the tracer holds (`read`): once per run, a few
//! syscalls per program on the host. The arithmetic (which programs, per connection, medians
//! over rounds) is pure and unit-tested.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io, mem,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, bail};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
use serde::Serialize;

use super::{progress, report::median};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The same path for the signal handler, which must not allocate.
const STATS_SYSCTL_C: &std::ffi::CStr = c"/proc/sys/kernel/bpf_stats_enabled";
/// The signals after which the old value is put back before xtask dies.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The value to put back into the sysctl (0 or 1), or -1 when there is none to put back.
static PUT_BACK: AtomicI32 = AtomicI32::new(-1);

/// `kernel.bpf_stats_enabled` at 1 while it lives, when it was 0 before.
pub(super) struct StatsOn {
    /// The value found, when this changed it.
    old: Option<u8>,
    /// The signal dispositions replaced, to put back on drop.
    handlers: Vec<(libc::c_int, libc::sigaction)>,
}

/// 0 or 1, from the sysctl's text.
pub(super) fn parse_sysctl(text: &str) -> Option<u8> {
    match text.trim() {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }
}

/// Whether the kernel keeps the programs' run time now.
pub(super) fn stats_enabled() -> bool {
    fs::read_to_string(STATS_SYSCTL).is_ok_and(|t| parse_sysctl(&t) == Some(1))
}

impl StatsOn {
    pub(super) fn enable() -> anyhow::Result<Self> {
        let text = fs::read_to_string(STATS_SYSCTL).with_context(|| {
            format!("cannot read {STATS_SYSCTL} (the kernel keeps BPF run times since Linux 5.1)")
        })?;
        let Some(old) = parse_sysctl(&text) else {
            bail!("{STATS_SYSCTL} holds {:?}, not 0 or 1", text.trim());
        };
        if old == 1 {
            progress("kernel.bpf_stats_enabled is already 1: left as it is");
            return Ok(Self {
                old: None,
                handlers: Vec::new(),
            });
        }
        // The handlers first: from the moment the sysctl is 1, a signal puts it back.
        PUT_BACK.store(i32::from(old), Ordering::SeqCst);
        let handlers = install_handlers();
        if let Err(e) = fs::write(STATS_SYSCTL, "1") {
            PUT_BACK.store(-1, Ordering::SeqCst);
            restore_handlers(&handlers);
            return Err(e).with_context(|| format!("cannot write 1 to {STATS_SYSCTL}"));
        }
        progress(format!(
            "kernel.bpf_stats_enabled: {old} -> 1 for the rounds (put back at the end)"
        ));
        Ok(Self {
            old: Some(old),
            handlers,
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let Some(old) = self.old else { return };
        match fs::write(STATS_SYSCTL, old.to_string()) {
            Ok(()) => progress(format!("kernel.bpf_stats_enabled put back to {old}")),
            Err(e) => progress(format!(
                "warning: cannot put {STATS_SYSCTL} back to {old}: {e}"
            )),
        }
        PUT_BACK.store(-1, Ordering::SeqCst);
        restore_handlers(&self.handlers);
    }
}

/// Puts the old value back, then dies of the signal as xtask would have without the handler.
/// Only async-signal-safe calls: open, write, close, signal, raise.
extern "C" fn on_signal(sig: libc::c_int) {
    let old = PUT_BACK.swap(-1, Ordering::SeqCst);
    if old == 0 || old == 1 {
        let text: &[u8] = if old == 0 { b"0\n" } else { b"1\n" };
        // SAFETY: a NUL-terminated path and a valid buffer; the fd is ours to close.
        unsafe {
            let fd = libc::open(STATS_SYSCTL_C.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, text.as_ptr().cast(), text.len());
                libc::close(fd);
            }
        }
    }
    // SAFETY: back to the default action, and the signal again: it is delivered (and ends the
    // process) as soon as this handler returns.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs `on_signal` for `SIGNALS`, except those ignored (e.g. SIGHUP under nohup), and
/// returns the dispositions it replaced.
fn install_handlers() -> Vec<(libc::c_int, libc::sigaction)> {
    let mut replaced = Vec::new();
    for sig in SIGNALS {
        // SAFETY: plain data, filled in below.
        let mut new: libc::sigaction = unsafe { mem::zeroed() };
        new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        new.sa_flags = libc::SA_RESTART;
        // SAFETY: a valid sigset_t to fill.
        unsafe { libc::sigemptyset(&mut new.sa_mask) };
        // SAFETY: plain data, filled in by sigaction.
        let mut old: libc::sigaction = unsafe { mem::zeroed() };
        // SAFETY: valid pointers to sigaction structs.
        if unsafe { libc::sigaction(sig, &new, &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            // SAFETY: as above; puts the ignored disposition back.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
            continue;
        }
        replaced.push((sig, old));
    }
    replaced
}

fn restore_handlers(replaced: &[(libc::c_int, libc::sigaction)]) {
    for (sig, old) in replaced {
        // SAFETY: a disposition sigaction returned.
        unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a whole bpf_attr, zero but for the fields `cmd` reads; the kernel reads
    // and writes no more than its size.
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

/// The ids of every BPF program loaded now. Ids are not reused while the system runs, so a
/// process's programs are among those that were not there before it started.
pub(super) fn program_ids() -> io::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    let mut id = 0u32;
    loop {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match bpf(bpf_cmd::BPF_PROG_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
        // SAFETY: the kernel filled in next_id (a plain u32).
        let next = unsafe { attr.__bindgen_anon_6.next_id };
        if next <= id {
            // Never from a sound kernel; not a reason to loop forever.
            return Ok(ids);
        }
        id = next;
        ids.insert(id);
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Program {
    pub(super) id: u32,
    /// As the kernel keeps it: 15 bytes at most.
    pub(super) name: String,
    pub(super) kind: &'static str,
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

/// The counters of program `id`, or None if it is gone (or unreadable).
fn program(id: u32) -> Option<Program> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let raw = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr).ok()?;
    let raw = i32::try_from(raw).ok()?;
    // SAFETY: the kernel just gave us this descriptor; it is closed when dropped.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid bpf_prog_info and bpf_attr.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.info.bpf_fd = u32::try_from(raw).ok()?;
    // Older kernels know a shorter struct: they take a longer one whose tail is zero.
    attr.info.info_len = mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    let got = bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr);
    drop(fd);
    got.ok()?;
    let name: Vec<u8> = info
        .name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    Some(Program {
        id,
        name: String::from_utf8_lossy(&name).into_owned(),
        kind: kind_name(info.type_),
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
    })
}

/// The kinds of program a tracer loads, by their `enum bpf_prog_type` number.
pub(super) fn kind_name(prog_type: u32) -> &'static str {
    match prog_type {
        1 => "socket_filter",
        2 => "kprobe",
        5 => "tracepoint",
        7 => "perf_event",
        17 => "raw_tracepoint",
        26 => "tracing",
        29 => "lsm",
        _ => "other",
    }
}

/// The program id in the text of /proc/PID/fdinfo/FD, if the descriptor is a program or a
/// link (`prog_id:`).
pub(super) fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The programs process `pid` holds a descriptor of (a program's or a link's).
fn held_program_ids(pid: libc::pid_t) -> BTreeSet<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| parse_fdinfo_prog_id(&fs::read_to_string(e.path()).ok()?))
        .collect()
}

/// The tracer's programs: those loaded since `before` that it holds; with no program held as
/// far as /proc tells, every one loaded since. Also how many of those loaded since were left
/// out (loaded meanwhile by something else).
pub(super) fn tracer_programs(
    before: &BTreeSet<u32>,
    now: &BTreeSet<u32>,
    held: &BTreeSet<u32>,
) -> (Vec<u32>, usize) {
    let new: Vec<u32> = now.difference(before).copied().collect();
    if held.is_empty() {
        return (new, 0);
    }
    let ours: Vec<u32> = new.iter().copied().filter(|id| held.contains(id)).collect();
    let others = new.len() - ours.len();
    (ours, others)
}

/// A run's kernel time of the tracer's programs, from their start to just before the tracer
/// was stopped.
#[derive(Debug, Clone, Serialize)]
pub(super) struct KernelTime {
    /// The sum of the programs' run_time_ns.
    pub(super) run_time_ns: u64,
    /// The sum of their run_cnt.
    pub(super) run_cnt: u64,
    /// The connections the churn made in the run.
    pub(super) connections: u64,
    /// run_time_ns over connections.
    pub(super) ns_per_connection: Option<f64>,
    pub(super) programs: Vec<Program>,
    /// Programs loaded during the run that the tracer did not hold: left out.
    pub(super) others_left_out: usize,
}

pub(super) fn kernel_time(
    programs: Vec<Program>,
    connections: u64,
    others_left_out: usize,
) -> KernelTime {
    let run_time_ns = programs.iter().map(|p| p.run_time_ns).sum();
    KernelTime {
        run_time_ns,
        run_cnt: programs.iter().map(|p| p.run_cnt).sum(),
        connections,
        ns_per_connection: (connections > 0).then(|| run_time_ns as f64 / connections as f64),
        programs,
        others_left_out,
    }
}

/// The kernel time of the programs process `pid` loaded since `before` (program ids listed
/// before it started), over the run's `connections`. Call it just before stopping the tracer.
pub(super) fn read(
    before: &BTreeSet<u32>,
    pid: libc::pid_t,
    connections: u64,
) -> anyhow::Result<KernelTime> {
    if !stats_enabled() {
        bail!("kernel.bpf_stats_enabled is no longer 1 (set back by something else?)");
    }
    let now = program_ids().context("cannot list the BPF programs (BPF_PROG_GET_NEXT_ID)")?;
    let (ids, others) = tracer_programs(before, &now, &held_program_ids(pid));
    let programs: Vec<Program> = ids.into_iter().filter_map(program).collect();
    if programs.is_empty() {
        bail!("no BPF program of the tracer's found");
    }
    Ok(kernel_time(programs, connections, others))
}

/// One program's figures over rounds (programs of one name in a round summed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct ProgramMedians {
    pub(super) kind: &'static str,
    /// Rounds the program ran in.
    pub(super) rounds: usize,
    pub(super) ns_per_connection: f64,
    pub(super) runs_per_connection: f64,
    /// run_time_ns over run_cnt.
    pub(super) ns_per_run: Option<f64>,
}

/// Each program's medians over the rounds, by name.
pub(super) fn program_medians<'a>(
    rounds: impl IntoIterator<Item = &'a KernelTime>,
) -> BTreeMap<String, ProgramMedians> {
    struct Acc {
        kind: &'static str,
        ns: Vec<f64>,
        runs: Vec<f64>,
        per_run: Vec<f64>,
    }
    let mut by_name: BTreeMap<String, Acc> = BTreeMap::new();
    for k in rounds {
        if k.connections == 0 {
            continue;
        }
        let mut round: BTreeMap<&str, (&'static str, u64, u64)> = BTreeMap::new();
        for p in &k.programs {
            let e = round.entry(&p.name).or_insert((p.kind, 0, 0));
            e.1 += p.run_time_ns;
            e.2 += p.run_cnt;
        }
        let conns = k.connections as f64;
        for (name, (kind, ns, cnt)) in round {
            let acc = by_name.entry(name.to_string()).or_insert_with(|| Acc {
                kind,
                ns: Vec::new(),
                runs: Vec::new(),
                per_run: Vec::new(),
            });
            acc.ns.push(ns as f64 / conns);
            acc.runs.push(cnt as f64 / conns);
            if cnt > 0 {
                acc.per_run.push(ns as f64 / cnt as f64);
            }
        }
    }
    by_name
        .into_iter()
        .map(|(name, a)| {
            let m = ProgramMedians {
                kind: a.kind,
                rounds: a.ns.len(),
                ns_per_connection: median(a.ns),
                runs_per_connection: median(a.runs),
                ns_per_run: (!a.per_run.is_empty()).then(|| median(a.per_run)),
            };
            (name, m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(id: u32, name: &str, ns: u64, cnt: u64) -> Program {
        Program {
            id,
            name: name.into(),
            kind: "raw_tracepoint",
            run_time_ns: ns,
            run_cnt: cnt,
        }
    }

    #[test]
    fn sysctl_values() {
        assert_eq!(parse_sysctl("0\n"), Some(0));
        assert_eq!(parse_sysctl("1\n"), Some(1));
        assert_eq!(parse_sysctl("2\n"), None);
        assert_eq!(parse_sysctl(""), None);
    }

    #[test]
    fn prog_ids_of_programs_and_links() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t17\n\
                    prog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t4096\n\
                    prog_id:\t21600\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(parse_fdinfo_prog_id(prog), Some(21600));
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\n\
                    link_type:\traw_tracepoint\nlink_id:\t7\nprog_tag:\t0123456789abcdef\n\
                    prog_id:\t21602\n";
        assert_eq!(parse_fdinfo_prog_id(link), Some(21602));
        let map = "pos:\t0\nmap_type:\t1\nmemlock:\t4096\nmap_id:\t77\n";
        assert_eq!(parse_fdinfo_prog_id(map), None);
        assert_eq!(parse_fdinfo_prog_id("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn the_tracers_programs_are_new_and_held() {
        let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
        let before = set(&[3, 5, 8]);
        let now = set(&[3, 5, 8, 10, 11, 12, 13]);
        // 12 was loaded meanwhile by someone else; 3 is held but was there before.
        assert_eq!(
            tracer_programs(&before, &now, &set(&[3, 10, 11, 13])),
            (vec![10, 11, 13], 1)
        );
        // Nothing held as far as /proc tells: every new program.
        assert_eq!(
            tracer_programs(&before, &now, &set(&[])),
            (vec![10, 11, 12, 13], 0)
        );
        // A program gone since (5) is no trouble.
        assert_eq!(
            tracer_programs(&before, &set(&[3, 8, 10]), &set(&[10])),
            (vec![10], 0)
        );
    }

    #[test]
    fn kernel_time_per_connection() {
        let k = kernel_time(
            vec![
                prog(10, "a", 3_000_000, 40_000),
                prog(11, "b", 1_000_000, 10_000),
            ],
            10_000,
            0,
        );
        assert_eq!((k.run_time_ns, k.run_cnt), (4_000_000, 50_000));
        assert_eq!(k.ns_per_connection, Some(400.0));
        assert_eq!(kernel_time(Vec::new(), 0, 0).ns_per_connection, None);
    }

    #[test]
    fn program_medians_over_rounds() {
        let rounds = [
            kernel_time(
                vec![
                    prog(10, "a", 2_000_000, 20_000),
                    prog(11, "b", 500_000, 10_000),
                ],
                10_000,
                0,
            ),
            // Two programs of one name (the same program loaded twice) are summed.
            kernel_time(
                vec![
                    prog(20, "a", 3_000_000, 20_000),
                    prog(21, "b", 300_000, 5_000),
                    prog(22, "b", 300_000, 5_000),
                ],
                10_000,
                0,
            ),
            kernel_time(vec![prog(30, "a", 4_000_000, 0)], 10_000, 0),
            // A run with no connection made says nothing per connection.
            kernel_time(vec![prog(40, "a", 9, 9)], 0, 0),
        ];
        let m = program_medians(&rounds);
        assert_eq!(m.len(), 2);
        let a = &m["a"];
        assert_eq!(a.rounds, 3);
        assert_eq!(a.ns_per_connection, 300.0);
        assert_eq!(a.runs_per_connection, 2.0);
        // The round with no runs has no time per run.
        assert_eq!(a.ns_per_run, Some(125.0));
        let b = &m["b"];
        assert_eq!(b.rounds, 2);
        assert_eq!(b.ns_per_connection, 55.0);
        assert_eq!(b.runs_per_connection, 1.0);
        assert_eq!(b.ns_per_run, Some(55.0));
        assert!(program_medians([]).is_empty());
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_name(26), "tracing");
        assert_eq!(kind_name(2), "kprobe");
        assert_eq!(kind_name(17), "raw_tracepoint");
        assert_eq!(kind_name(999), "other");
    }
}
