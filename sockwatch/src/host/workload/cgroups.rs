//! cgroup id -> path, by walking the cgroup v2 hierarchy.
//!
//! A cgroup's id (what `bpf_get_current_cgroup_id()` returns) is its kernfs node id, which is
//! also its directory's inode number (since Linux 5.5; sockwatch's ring buffer needs 5.8), so
//! one walk of the mount maps every id to its path without opening anything.
use std::{
    collections::{HashMap, VecDeque},
    io,
};

use walkdir::{DirEntryExt as _, WalkDir};

use super::{WorkloadError, mount::Cgroup2Mount};

/// One walk of the hierarchy.
pub(super) struct Scan {
    /// id -> cgroup path (`/system.slice/nginx.service`).
    pub paths: HashMap<u64, String>,
    /// False when part of the hierarchy could not be read (other than cgroups removed during
    /// the walk): an id missing from `paths` may then still exist.
    pub complete: bool,
}

/// Walks the hierarchy under `mount`. Fails only when the mount itself cannot be read.
pub(super) fn scan(mount: &Cgroup2Mount) -> Result<Scan, WorkloadError> {
    let mut paths = HashMap::new();
    let mut complete = true;
    for entry in WalkDir::new(&mount.path).follow_links(false) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.depth() == 0 => {
                return Err(WorkloadError::Read {
                    path: mount.path.clone(),
                    cause: e
                        .into_io_error()
                        .unwrap_or_else(|| io::Error::other("cannot walk the directory")),
                });
            }
            // Removed between its parent's listing and its own: not there, as expected.
            Err(e)
                if e.io_error()
                    .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
            {
                continue;
            }
            Err(_) => {
                complete = false;
                continue;
            }
        };
        if !entry.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&mount.path) else {
            continue;
        };
        paths.insert(entry.ino(), mount.cgroup_path(rel));
    }
    Ok(Scan { paths, complete })
}

/// The ids known to be gone, with what is known of each; the oldest are forgotten past `cap`,
/// so that ids of short-lived cgroups cannot grow it without bound.
pub(super) struct Gone<V> {
    cap: usize,
    map: HashMap<u64, V>,
    order: VecDeque<u64>,
}

impl<V> Gone<V> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn insert(&mut self, id: u64, v: V) {
        if self.map.insert(id, v).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<&V> {
        self.map.get(&id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;
    use crate::test_dir::TestDir;

    #[test]
    fn scan_maps_directory_inodes_to_paths() {
        let dir = TestDir::new("workload-cgroups", "scan");
        fs::create_dir_all(dir.0.join("system.slice/nginx.service")).unwrap();
        dir.file("cgroup.procs", b"");
        let scan = scan(&Cgroup2Mount::at(&dir.0)).unwrap();
        assert!(scan.complete);
        let ino = |p: &str| fs::metadata(dir.0.join(p)).unwrap().ino();
        assert_eq!(scan.paths.len(), 3, "{:?}", scan.paths);
        assert_eq!(scan.paths[&ino("")], "/");
        assert_eq!(scan.paths[&ino("system.slice")], "/system.slice");
        assert_eq!(
            scan.paths[&ino("system.slice/nginx.service")],
            "/system.slice/nginx.service"
        );
    }

    #[test]
    fn scan_of_a_missing_mount_is_an_error() {
        let dir = TestDir::new("workload-cgroups", "missing");
        let e = scan(&Cgroup2Mount::at(dir.0.join("absent"))).err().unwrap();
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn gone_forgets_the_oldest_past_its_cap() {
        let mut gone = Gone::new(3);
        for id in 1..=5 {
            gone.insert(id, id * 10);
        }
        assert_eq!(gone.len(), 3);
        assert_eq!(gone.get(1), None);
        assert_eq!(gone.get(2), None);
        assert_eq!(gone.get(5), Some(&50));
        // Replacing a value keeps its place.
        gone.insert(3, 31);
        gone.insert(6, 60);
        assert_eq!(gone.get(3), None);
        assert_eq!(gone.get(4), Some(&40));
        assert_eq!(gone.len(), 3);
    }
}
