//! Cgroups of a test's own under the host's cgroup v2 mount, in the shapes the workload tests
//! need; removed when dropped.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use sockwatch::host::workload::{Cgroup2Mount, find_cgroup2};

/// The cgroup v2 mount, when the test can make cgroups in it. Without root, or on a host
/// without cgroup v2, it says it skipped, except in CI (CI=true), where that is a failure.
pub fn mount_or_skip(test: &str) -> Option<Cgroup2Mount> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !ci,
            "{test}: CI=true but not running as root: the cgroup tests cannot run"
        );
        eprintln!("SKIPPED {test}: needs root to make cgroups (run as root)");
        return None;
    }
    match find_cgroup2() {
        Ok(m) => Some(m),
        Err(e) if !ci => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// A cgroup of the test's own under the mount, with everything made below it; removed on drop
/// (after the processes still in it are moved back to the root cgroup), even when the test
/// fails.
pub struct TestCgroup {
    mount: PathBuf,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new(mount: &Cgroup2Mount, tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sockwatch-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = mount.path.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self {
            mount: mount.path.clone(),
            dir,
        }
    }

    /// Makes `rel` (and its parents) below the test's cgroup; its path and id.
    pub fn make(&self, rel: &str) -> (PathBuf, u64) {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        let id = fs::metadata(&p).unwrap().ino();
        (p, id)
    }

    /// The cgroup path of `rel`, as /proc/PID/cgroup and the resolver give it.
    pub fn cgroup_path(&self, rel: &str) -> String {
        let name = self.dir.file_name().unwrap().to_string_lossy();
        format!("/{name}/{rel}")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first: a cgroup can only be removed once it has no children and no
        // processes.
        let mut dirs: Vec<PathBuf> = walkdir::WalkDir::new(&self.dir)
            .contents_first(true)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir())
            .map(|e| e.into_path())
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            // A process that just exited may hold its cgroup for a moment (EBUSY).
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = fs::remove_dir(&d) {
                if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
                    eprintln!("cleanup: rmdir {}: {e}", d.display());
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Makes the kubelet's log directory of a pod under `pods`.
pub fn pod_log_dir(pods: &std::path::Path, namespace: &str, name: &str, uid: &str) {
    fs::create_dir(pods.join(format!("{namespace}_{name}_{uid}")))
        .unwrap_or_else(|e| panic!("pod log dir under {}: {e}", pods.display()));
}
