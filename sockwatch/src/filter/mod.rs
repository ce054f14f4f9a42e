//! Filters shared by every subcommand: ports, process, cgroup, network namespace, family and
//! event kinds.
//!
//! Live, the eBPF programs apply them ([`Filter::kernel_config`]), so filtered-out events never
//! cross the ring buffer. Here they apply to recorded files (`report`) and to host samples,
//! with the same rules, so that a live summary and the report of its recording agree.
use std::{
    collections::BTreeSet,
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use sockwatch_common::{AF_INET, AF_INET6, COMM_LEN, FilterConfig, MAX_FILTER_PORTS, filter};

mod workload;

pub use workload::{WorkloadFiltering, WorkloadMatch, parse_container, parse_pod, parse_unit};

use crate::{
    aggregate::{Existing, Obs},
    kernel::decode::{Family, KIND_NAMES},
};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Keep events whose local or peer port is one of these (empty: all).
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: Option<Family>,
    /// Owners in this cgroup or below it.
    pub cgroup: Option<Cgroup>,
    /// Network namespace inode.
    pub netns: Option<u32>,
    /// Event kinds kept: bit `1 << code` per kind (None: all).
    pub kinds: Option<u32>,
    /// Owners of this workload, by their cgroup's resolved names. Live, it becomes `cgroup`
    /// when one cgroup holds all of it (see [`Filter::resolve_workload`]).
    pub workload: Option<WorkloadMatch>,
}

/// A cgroup v2 directory given to `--cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The cgroup id: the directory's inode.
    pub id: u64,
    /// Depth below the cgroup v2 root (the root is 0).
    pub level: u32,
    /// Ids of the cgroup and of every cgroup below it when sockwatch started: what a recorded
    /// `cgroup_id` is checked against.
    pub ids: BTreeSet<u64>,
}

/// Why the filters cannot be given to the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "--port given {0} times: the kernel filter takes at most {MAX_FILTER_PORTS} ports; \
         trace fewer ports, or none and filter the recording with `sockwatch report --port`"
    )]
    TooManyPorts(usize),
    #[error("{what}: workloads cannot be named here: {cause}")]
    NoResolver { what: String, cause: String },
    #[error(
        "{what}: no cgroup on this host belongs to it (pods are named from {}; see \
         docs/usage.md#workloads)",
        pods_dir.display()
    )]
    NoMatch { what: String, pods_dir: PathBuf },
    #[error("{what}: its cgroup {}: {cause}", path.display())]
    Cgroup {
        what: String,
        path: PathBuf,
        cause: String,
    },
}

impl Filter {
    /// The filters as the eBPF programs take them.
    pub fn kernel_config(&self) -> Result<FilterConfig, FilterError> {
        let mut c = FilterConfig::NONE;
        if !self.ports.is_empty() {
            if self.ports.len() > MAX_FILTER_PORTS {
                return Err(FilterError::TooManyPorts(self.ports.len()));
            }
            c.active |= filter::PORT;
            c.nports = self.ports.len() as u32;
            c.ports[..self.ports.len()].copy_from_slice(&self.ports);
        }
        if let Some(pid) = self.pid {
            c.active |= filter::PID;
            c.pid = pid;
        }
        if let Some(comm) = &self.comm {
            c.active |= filter::COMM;
            // Checked by `parse_comm`: at most 15 bytes, so a NUL always follows.
            let n = comm.len().min(COMM_LEN - 1);
            c.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
        }
        if let Some(cg) = &self.cgroup {
            c.active |= filter::CGROUP;
            c.cgroup_id = cg.id;
            c.cgroup_level = cg.level;
        }
        if let Some(netns) = self.netns {
            c.active |= filter::NETNS;
            c.netns = netns;
        }
        if let Some(family) = self.family {
            c.active |= filter::FAMILY;
            c.family = match family {
                Family::Ipv4 => AF_INET,
                Family::Ipv6 => AF_INET6,
            };
        }
        if let Some(kinds) = self.kinds {
            c.active |= filter::KIND;
            c.kinds = kinds;
        }
        Ok(c)
    }

    /// Whether a criterion is on the owning process (pid, command, cgroup, workload), which
    /// the kernel's socket table does not tell.
    pub fn has_owner_criteria(&self) -> bool {
        self.pid.is_some()
            || self.comm.is_some()
            || self.cgroup.is_some()
            || self.workload.is_some()
    }

    pub fn keeps_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    pub fn keeps_owner(&self, pid: Option<u32>, comm: Option<&str>) -> bool {
        self.pid.is_none_or(|p| pid == Some(p))
            && self.comm.as_deref().is_none_or(|c| comm == Some(c))
    }

    /// A recorded owner's cgroup id: unknown (no owner, or a host sample) fails `--cgroup`.
    pub fn keeps_cgroup(&self, cgroup_id: Option<u64>) -> bool {
        self.cgroup
            .as_ref()
            .is_none_or(|cg| cgroup_id.is_some_and(|id| cg.ids.contains(&id)))
    }

    pub fn keeps_netns(&self, netns: u32) -> bool {
        self.netns.is_none_or(|n| n == netns)
    }

    pub fn keeps_kind(&self, code: u8) -> bool {
        self.kinds.is_none_or(|k| k & (1 << code) != 0)
    }

    /// Ports, owner and family of a socket.
    pub fn keeps_socket(
        &self,
        ports: (u16, u16),
        pid: Option<u32>,
        comm: Option<&str>,
        family: Family,
    ) -> bool {
        (self.ports.is_empty() || self.ports.contains(&ports.0) || self.ports.contains(&ports.1))
            && self.keeps_owner(pid, comm)
            && self.family.is_none_or(|f| f == family)
    }

    /// An event, but for its cgroup (see [`Filter::keeps_cgroup`]).
    pub fn keeps(&self, o: &Obs) -> bool {
        self.keeps_socket((o.local_port, o.peer_port), o.pid, o.comm, o.family)
            && self.keeps_netns(o.netns)
            && self.keeps_kind(o.kind.code())
    }

    pub fn keeps_existing(&self, e: &Existing) -> bool {
        self.keeps_socket((e.local_port, e.peer_port), e.pid, e.comm, e.family)
            && self.keeps_netns(e.netns)
            && self.keeps_cgroup(None)
            && self.keeps_workload(None)
    }
}

/// `--comm`: the kernel keeps 15 bytes of a command name.
pub fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() >= COMM_LEN {
        return Err(format!(
            "'{s}' is not a command name: give 1 to {} bytes, as /proc/PID/comm shows it",
            COMM_LEN - 1
        ));
    }
    Ok(s.to_string())
}

/// `--event`: one event kind name.
pub fn parse_kind(s: &str) -> Result<u8, String> {
    KIND_NAMES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|&(_, code)| code)
        .ok_or_else(|| {
            let valid: Vec<&str> = KIND_NAMES.iter().map(|(n, _)| *n).collect();
            format!("unknown event kind '{s}' (valid: {})", valid.join(", "))
        })
}

/// `--netns`: an inode number, or a network namespace file (`/proc/PID/ns/net`, a bind mount
/// under `/run/netns`).
pub fn parse_netns(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let hint = "give an inode number (ls -iL /proc/PID/ns/net) or a path like /proc/PID/ns/net";
    if !s.contains('/') {
        return Err(format!(
            "'{s}' is neither a namespace inode nor a path: {hint}"
        ));
    }
    let file = fs::File::open(s).map_err(|e| format!("cannot open {s}: {e}; {hint}"))?;
    // NS_GET_NSTYPE: the namespace type of an nsfs file; fails on any other file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(format!("{s} is not a network namespace; {hint}"));
    }
    let ino = file
        .metadata()
        .map_err(|e| format!("cannot read {s}: {e}"))?
        .ino();
    u32::try_from(ino).map_err(|_| format!("{s}: namespace inode {ino} does not fit 32 bits"))
}

/// `--cgroup`: a cgroup v2 directory.
pub fn parse_cgroup(s: &str) -> Result<Cgroup, String> {
    let hint = "give a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/nginx.service";
    let path = fs::canonicalize(s).map_err(|e| format!("cannot open {s}: {e}; {hint}"))?;
    let meta = fs::metadata(&path).map_err(|e| format!("cannot open {s}: {e}; {hint}"))?;
    let on_cgroup2 = nix::sys::statfs::statfs(&path)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !meta.is_dir() || !on_cgroup2 {
        return Err(format!("{s} is not a cgroup v2 directory; {hint}"));
    }
    Ok(Cgroup {
        id: meta.ino(),
        level: level(&path, meta.dev()),
        ids: subtree_ids(&path),
        path,
    })
}

/// Depth below the cgroup v2 mount's root: ancestors on the same file system.
fn level(path: &Path, dev: u64) -> u32 {
    path.ancestors()
        .skip(1)
        .take_while(|a| fs::metadata(a).is_ok_and(|m| m.dev() == dev))
        .count() as u32
}

fn subtree_ids(path: &Path) -> BTreeSet<u64> {
    walkdir::WalkDir::new(path)
        .same_file_system(true)
        .into_iter()
        // A cgroup removed while walking is simply not there.
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_criterion_must_hold() {
        let any = Filter::default();
        assert!(any.keeps_socket((1, 2), None, None, Family::Ipv4));
        let f = Filter {
            ports: vec![80, 443],
            pid: Some(7),
            comm: Some("nginx".into()),
            family: Some(Family::Ipv6),
            ..Default::default()
        };
        assert!(f.keeps_socket((80, 5000), Some(7), Some("nginx"), Family::Ipv6));
        assert!(f.keeps_socket((5000, 443), Some(7), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((5000, 5001), Some(7), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(8), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), None, Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(7), Some("curl"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(7), Some("nginx"), Family::Ipv4));
    }

    #[test]
    fn netns_kind_and_cgroup() {
        let f = Filter {
            netns: Some(5),
            kinds: Some(1 << sockwatch_common::kind::CLOSE),
            cgroup: Some(Cgroup {
                path: "/sys/fs/cgroup/a".into(),
                id: 10,
                level: 1,
                ids: [10, 11].into(),
            }),
            ..Default::default()
        };
        assert!(f.keeps_netns(5) && !f.keeps_netns(6));
        assert!(f.keeps_kind(sockwatch_common::kind::CLOSE));
        assert!(!f.keeps_kind(sockwatch_common::kind::CONNECT));
        assert!(f.keeps_cgroup(Some(10)) && f.keeps_cgroup(Some(11)));
        assert!(!f.keeps_cgroup(Some(12)) && !f.keeps_cgroup(None));
        assert!(Filter::default().keeps_cgroup(None));
    }

    #[test]
    fn kernel_config_carries_every_criterion() {
        assert_eq!(Filter::default().kernel_config(), Ok(FilterConfig::NONE));
        let f = Filter {
            ports: vec![80, 443],
            pid: Some(7),
            comm: Some("nginx".into()),
            family: Some(Family::Ipv4),
            cgroup: Some(Cgroup {
                path: "/sys/fs/cgroup/a/b".into(),
                id: 99,
                level: 2,
                ids: BTreeSet::new(),
            }),
            netns: Some(4026531840),
            kinds: Some(0b110),
            workload: None,
        };
        let c = f.kernel_config().unwrap();
        assert_eq!(c.active, 0b111_1111);
        assert_eq!((c.nports, &c.ports[..3]), (2, &[80, 443, 0][..]));
        assert_eq!(c.pid, 7);
        assert_eq!(&c.comm, b"nginx\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!((c.cgroup_id, c.cgroup_level), (99, 2));
        assert_eq!((c.netns, c.family, c.kinds), (4026531840, AF_INET, 0b110));
        let many = Filter {
            ports: (1..=17).collect(),
            ..Default::default()
        };
        assert_eq!(many.kernel_config(), Err(FilterError::TooManyPorts(17)));
    }

    #[test]
    fn event_names_are_checked() {
        assert_eq!(parse_kind("close"), Ok(sockwatch_common::kind::CLOSE));
        assert_eq!(parse_kind("state"), Ok(sockwatch_common::kind::STATE));
        let e = parse_kind("closed").unwrap_err();
        assert!(
            e.starts_with("unknown event kind 'closed' (valid: connect, "),
            "{e}"
        );
        assert!(e.contains("listen_stop") && e.ends_with("state)"), "{e}");
    }

    #[test]
    fn comm_names_fit_the_kernel() {
        assert_eq!(parse_comm("nginx"), Ok("nginx".into()));
        assert!(parse_comm("123456789012345").is_ok());
        assert!(
            parse_comm("1234567890123456")
                .unwrap_err()
                .contains("1 to 15 bytes")
        );
        assert!(parse_comm("").is_err());
    }

    #[test]
    fn netns_by_inode_or_namespace_file() {
        assert_eq!(parse_netns("4026531840"), Ok(4026531840));
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(parse_netns("/proc/self/ns/net"), Ok(own));
        let e = parse_netns("/proc/self/ns/mnt").unwrap_err();
        assert!(e.contains("is not a network namespace"), "{e}");
        let e = parse_netns("/etc/hostname").unwrap_err();
        assert!(e.contains("is not a network namespace"), "{e}");
        let e = parse_netns("/nonexistent/ns").unwrap_err();
        assert!(e.starts_with("cannot open /nonexistent/ns: "), "{e}");
        let e = parse_netns("init").unwrap_err();
        assert!(e.contains("neither a namespace inode nor a path"), "{e}");
    }

    #[test]
    fn cgroup_must_be_a_cgroup2_directory() {
        let e = parse_cgroup("/nonexistent/cgroup").unwrap_err();
        assert!(e.starts_with("cannot open /nonexistent/cgroup: "), "{e}");
        assert!(e.contains("give a cgroup v2 directory"), "{e}");
        let e = parse_cgroup("/proc").unwrap_err();
        assert_eq!(
            e,
            "/proc is not a cgroup v2 directory; give a cgroup v2 directory, e.g. \
             /sys/fs/cgroup/system.slice/nginx.service"
        );
    }

    /// The cgroup v2 mount's root is level 0 and holds itself; a child is level 1.
    #[test]
    fn cgroup_root_is_level_zero() {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let Some(mount) = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
            .and_then(|l| l.split_whitespace().nth(1))
        else {
            eprintln!("no cgroup v2 mounted: skipped");
            return;
        };
        let root = parse_cgroup(mount).unwrap();
        assert_eq!(root.level, 0);
        assert!(root.ids.contains(&root.id));
        if let Some(child) = fs::read_dir(mount)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let c = parse_cgroup(child.path().to_str().unwrap()).unwrap();
            assert_eq!(c.level, 1);
            assert!(root.ids.contains(&c.id));
        }
    }
}
