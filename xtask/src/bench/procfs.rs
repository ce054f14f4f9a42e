//! What the bench reads about a running process and the host from /proc: CPU time, RSS and its
//! peak, the kernel memory of a process's BPF maps (`memlock:` in fdinfo), its threads, and
//! the host's free memory and open files. The parsers are pure and unit-tested.
use std::{collections::BTreeMap, fs};

/// utime + stime, in clock ticks, from the text of /proc/PID/stat (or /proc/PID/task/TID/stat).
pub(super) fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(super) fn clock_ticks() -> f64 {
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of a live process, in seconds.
pub(super) fn cpu_seconds(pid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

/// A `Name:   123 kB` line of /proc/PID/status or /proc/meminfo, in KiB.
pub(super) fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// VmRSS of a live process, in KiB.
pub(super) fn rss_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib_field(&status, "VmRSS")
}

/// VmHWM (the peak of VmRSS so far) of a live process, in KiB.
pub(super) fn hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib_field(&status, "VmHWM")
}

/// The map id and `memlock:` bytes of one /proc/PID/fdinfo/FD, if the descriptor is a BPF map
/// (programs, links and everything else have no `map_type:` line).
pub(super) fn parse_map_fdinfo(fdinfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("map_type")?;
    let memlock = field("memlock")?.parse().ok()?;
    let id = field("map_id").and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((id, memlock))
}

/// The kernel memory of the BPF maps a process holds, summed over distinct maps (by id, so a
/// map open twice counts once), as `memlock:` in fdinfo says: since Linux 6.4 the memory in
/// use (a hash map without preallocation grows with its entries), before it the reservation.
pub(super) fn bpf_map_memlock(pid: libc::pid_t) -> Option<(u64, usize)> {
    let dir = fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut maps: BTreeMap<u64, u64> = BTreeMap::new();
    let mut anonymous = 0u64;
    for entry in dir.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some((id, bytes)) = parse_map_fdinfo(&text) {
            if id == 0 {
                anonymous += bytes;
            } else {
                maps.insert(id, bytes);
            }
        }
    }
    Some((maps.values().sum::<u64>() + anonymous, maps.len()))
}

/// The thread ids of a process whose name (comm) is `name`.
pub(super) fn threads_named(pid: libc::pid_t, name: &str) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The host's memory: (MemTotal, MemAvailable), in KiB.
pub(super) fn meminfo() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    Some((
        parse_kib_field(&text, "MemTotal")?,
        parse_kib_field(&text, "MemAvailable")?,
    ))
}

/// /proc/sys/fs/file-nr: (allocated, maximum) open files of the whole host.
pub(super) fn parse_file_nr(text: &str) -> Option<(u64, u64)> {
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*v.first()?, *v.get(2)?))
}

pub(super) fn file_nr() -> Option<(u64, u64)> {
    parse_file_nr(&fs::read_to_string("/proc/sys/fs/file-nr").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_odd_command_names() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 170 33 0 0 20 0 9 0 \
                    100 200000 3000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(203));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn kib_fields() {
        let status = "Name:\tsockwatch\nVmHWM:\t  140000 kB\nVmRSS:\t   96000 kB\n";
        assert_eq!(parse_kib_field(status, "VmRSS"), Some(96_000));
        assert_eq!(parse_kib_field(status, "VmHWM"), Some(140_000));
        assert_eq!(parse_kib_field(status, "VmSwap"), None);
        // A prefix of another field's name is not that field.
        assert_eq!(parse_kib_field("VmRSSx: 5 kB\n", "VmRSS"), None);
    }

    #[test]
    fn memlock_of_maps_only() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\n\
                   key_size:\t8\nvalue_size:\t64\nmax_entries:\t3014656\nmap_flags:\t0x1\n\
                   map_extra:\t0x0\nmemlock:\t123456789\nmap_id:\t77\nfrozen:\t0\n";
        assert_eq!(parse_map_fdinfo(map), Some((77, 123_456_789)));
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\n\
                    prog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t9\n";
        assert_eq!(parse_map_fdinfo(prog), None);
        assert_eq!(parse_map_fdinfo("pos:\t0\nflags:\t02\n"), None);
        // No map_id (old kernels): still counted, with id 0.
        assert_eq!(
            parse_map_fdinfo("map_type:\t27\nmemlock:\t33554432\n"),
            Some((0, 33_554_432))
        );
    }

    #[test]
    fn file_nr_parses() {
        assert_eq!(
            parse_file_nr("2002129\t0\t2466246\n"),
            Some((2_002_129, 2_466_246))
        );
        assert_eq!(parse_file_nr("12\n"), None);
    }
}
