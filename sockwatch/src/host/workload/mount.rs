//! Where the cgroup v2 hierarchy is mounted, from the mount table.
//!
//! It is at /sys/fs/cgroup on current systems, but at /sys/fs/cgroup/unified on hybrid hosts
//! (v1 controllers beside a v2 hierarchy), and a container may see the host's elsewhere (a
//! DaemonSet's hostPath), so it is looked up rather than assumed.
use std::{
    ffi::OsString,
    os::unix::{ffi::OsStringExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use procfs::process::MountInfo;

use super::WorkloadError;

/// The mount table this process sees.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Where it is mounted.
    pub path: PathBuf,
    /// Which cgroup of the hierarchy it shows: `/` for the whole hierarchy; a bind mount of a
    /// sub-tree shows that sub-tree. Paths under the mount are given below it, so that they
    /// read as the kernel names them (`/kubepods.slice/...`) whatever part is mounted.
    pub root: String,
}

impl Cgroup2Mount {
    /// A mount of the whole hierarchy at `path`; also for a fake hierarchy in tests.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            root: "/".into(),
        }
    }

    /// The cgroup path of the directory `rel` (relative to the mount point).
    pub(super) fn cgroup_path(&self, rel: &Path) -> String {
        let root = self.root.trim_end_matches('/');
        let rel = rel.to_string_lossy();
        if rel.is_empty() {
            if root.is_empty() {
                "/".into()
            } else {
                root.into()
            }
        } else {
            format!("{root}/{rel}")
        }
    }
}

/// The cgroup2 mount of this process's mount table.
pub fn find_cgroup2() -> Result<Cgroup2Mount, WorkloadError> {
    let path = Path::new(MOUNTINFO);
    let text = std::fs::read_to_string(path).map_err(|cause| WorkloadError::Read {
        path: path.into(),
        cause,
    })?;
    pick(&text, is_hierarchy_root).ok_or_else(|| WorkloadError::NoCgroup2 {
        mountinfo: path.into(),
    })
}

/// The root cgroup's id is 1, so its directory's inode is 1: the one test that a mount shows
/// the whole hierarchy which holds inside a cgroup namespace too, where mountinfo gives the
/// host's hierarchy a root of `/../..` and the namespace's own sub-tree a root of `/`.
fn is_hierarchy_root(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.ino() == ROOT_CGROUP_ID)
}

/// The id (and inode) of a hierarchy's root cgroup.
pub const ROOT_CGROUP_ID: u64 = 1;

/// The best cgroup2 mount of a mountinfo text; None when there is none. `whole` tells whether a
/// mount point shows the whole hierarchy. Preferred, in order: one no later mount hides
/// (mounted on it or on a directory above it); the whole hierarchy, since a sub-tree cannot name
/// the cgroups outside it; at /sys/fs/cgroup, then at
/// /sys/fs/cgroup/unified; the first in the table. A line that does not parse is skipped: one
/// odd mount elsewhere must not hide the cgroup one.
pub(super) fn pick(mountinfo: &str, whole: impl Fn(&Path) -> bool) -> Option<Cgroup2Mount> {
    let mounts: Vec<(PathBuf, String, bool)> = mountinfo
        .lines()
        .filter_map(|line| MountInfo::from_line(line).ok())
        .map(|m| {
            let point = unescape(&m.mount_point.to_string_lossy());
            let root = unescape(&m.root).to_string_lossy().into_owned();
            (point, root, m.fs_type == "cgroup2")
        })
        .collect();
    let plain = |root: &str| root.starts_with('/') && !root.split('/').any(|c| c == "..");
    mounts
        .iter()
        .enumerate()
        .filter(|(_, (_, _, cgroup2))| *cgroup2)
        .map(|(i, (point, root, _))| {
            let hidden = mounts[i + 1..]
                .iter()
                .any(|(later, _, _)| point.starts_with(later));
            let whole = whole(point);
            let place = match point.to_str() {
                Some("/sys/fs/cgroup") => 0,
                Some("/sys/fs/cgroup/unified") => 1,
                _ => 2,
            };
            // Paths are given below the mount's root, when it can be placed: a root outside
            // this cgroup namespace cannot, and reads as `/` (the shapes below still read).
            let root = if whole || !plain(root) { "/" } else { root };
            let mount = Cgroup2Mount {
                path: point.clone(),
                root: root.to_owned(),
            };
            ((hidden, !whole, place, i), mount)
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, mount)| mount)
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: a hybrid host.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn at(path: &str, root: &str) -> Option<Cgroup2Mount> {
        Some(Cgroup2Mount {
            path: path.into(),
            root: root.into(),
        })
    }

    fn all_whole(_: &Path) -> bool {
        true
    }

    fn none_whole(_: &Path) -> bool {
        false
    }

    #[test]
    fn hybrid_host() {
        assert_eq!(pick(HYBRID, all_whole), at("/sys/fs/cgroup/unified", "/"));
    }

    #[test]
    fn unified_host_with_optional_fields() {
        let t = "\
22 26 0:21 / /proc rw,nosuid shared:12 - proc proc rw
27 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(pick(t, all_whole), at("/sys/fs/cgroup", "/"));
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(pick("", all_whole), None);
        let v1 = HYBRID.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(pick(&v1, all_whole), None);
        // Garbage lines are skipped, not fatal.
        assert_eq!(pick("garbage\n\n1 2 3\n", all_whole), None);
        assert_eq!(
            pick(&format!("garbage\n{HYBRID}"), all_whole),
            at("/sys/fs/cgroup/unified", "/")
        );
    }

    #[test]
    fn in_a_cgroup_namespace_the_whole_hierarchy_wins() {
        // A DaemonSet's pod: its namespace's own sub-tree at /sys/fs/cgroup (root `/`), the
        // host's hierarchy (a hostPath) at /host/sys/fs/cgroup, its root outside the namespace.
        let t = "\
100 90 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
101 90 0:30 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw
";
        let host = |p: &Path| p == Path::new("/host/sys/fs/cgroup");
        assert_eq!(pick(t, host), at("/host/sys/fs/cgroup", "/"));
        // Without the host's: the sub-tree, better than nothing.
        assert_eq!(pick(t, none_whole), at("/sys/fs/cgroup", "/"));
    }

    #[test]
    fn the_visible_mount_wins() {
        // A tmpfs mounted over the first cgroup2 mount hides it.
        let t = "\
27 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
28 22 0:27 / /mnt/cg2 rw - cgroup2 cgroup2 rw
29 22 0:28 / /sys/fs rw - tmpfs tmpfs rw
";
        assert_eq!(pick(t, all_whole), at("/mnt/cg2", "/"));
    }

    #[test]
    fn sub_trees_give_paths_below_their_root() {
        let t = "100 90 0:30 /kubepods.slice /cg ro - cgroup2 cgroup2 rw\n";
        let m = pick(t, none_whole).unwrap();
        assert_eq!(
            m,
            Cgroup2Mount {
                path: "/cg".into(),
                root: "/kubepods.slice".into()
            }
        );
        assert_eq!(m.cgroup_path(Path::new("")), "/kubepods.slice");
        assert_eq!(m.cgroup_path(Path::new("a/b")), "/kubepods.slice/a/b");
        // A root that cannot be placed reads as `/`.
        let t = "1 0 0:30 /../.. /cg ro - cgroup2 cgroup2 rw\n";
        assert_eq!(pick(t, none_whole), at("/cg", "/"));
    }

    #[test]
    fn escaped_mount_points() {
        let t = "1 0 0:30 / /mnt/my\\040cgroup\\134x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(pick(t, all_whole), at("/mnt/my cgroup\\x", "/"));
        assert_eq!(unescape("a\\0"), PathBuf::from("a\\0"));
        assert_eq!(unescape("a\\999b"), PathBuf::from("a\\999b"));
        assert_eq!(unescape("\\"), PathBuf::from("\\"));
        assert_eq!(unescape("é\\011"), PathBuf::from("é\t"));
    }

    #[test]
    fn cgroup_paths() {
        let m = Cgroup2Mount::at("/sys/fs/cgroup");
        assert_eq!(m.cgroup_path(Path::new("")), "/");
        assert_eq!(
            m.cgroup_path(Path::new("system.slice/x.service")),
            "/system.slice/x.service"
        );
    }
}
