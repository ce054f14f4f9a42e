//! Root integration test of `sockwatch::host::workload`: cgroups made under this host's real
//! cgroup v2 mount in the shapes of each runtime and of pods, in a parent of the test's own,
//! resolved by their ids; one removed after being resolved; one holding a process of the test's.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use sockwatch::host::workload::{
    CONTAINERD, CRIO, Cgroup2Mount, DOCKER, PODMAN, ROOT_CGROUP_ID, Resolver, Workload,
    find_cgroup2,
};

const ID: &str = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa00112233445566778899";
const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const UID_: &str = "6a1b2c3d_4e5f_4a6b_8c7d_0e1f2a3b4c5d";
const UID2: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";
const UID2_: &str = "0f1e2d3c_4b5a_4968_8776_655443322110";
const STATIC_UID: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// No cgroup has this id: ids count up from 1.
const NO_SUCH_ID: u64 = u64::MAX - 7;

/// The cgroup v2 mount, when the test can make cgroups in it. Without root, or on a host
/// without cgroup v2, it says it skipped, except in CI (CI=true), where that is a failure.
fn mount_or_skip(test: &str) -> Option<Cgroup2Mount> {
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
struct TestCgroup {
    mount: PathBuf,
    dir: PathBuf,
}

impl TestCgroup {
    fn new(mount: &Cgroup2Mount, tag: &str) -> Self {
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
    fn make(&self, rel: &str) -> (PathBuf, u64) {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        let id = fs::metadata(&p).unwrap().ino();
        (p, id)
    }

    /// The cgroup path of `rel`, as /proc/PID/cgroup and the resolver give it.
    fn cgroup_path(&self, rel: &str) -> String {
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

/// A directory removed on drop, for the pod logs.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sockwatch-test-{}-workload-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn pod(&self, namespace: &str, name: &str, uid: &str) {
        fs::create_dir(self.0.join(format!("{namespace}_{name}_{uid}"))).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A process of the test's, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Self {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel's id of the cgroup at `dir`, from its file handle (what systemd and bpftool use),
/// independently of its inode.
fn kernel_cgroup_id(dir: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: [u8; 64],
    }
    let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut h = Handle {
        bytes: 64,
        kind: 0,
        id: [0; 64],
    };
    let mut mount_id = 0;
    // SAFETY: `h` begins like struct file_handle and has room for the 64 bytes it declares;
    // the path is NUL-terminated.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&raw mut h).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        dir.display(),
        io::Error::last_os_error()
    );
    assert_eq!(h.bytes, 8, "a kernfs handle is the 8-byte node id");
    u64::from_ne_bytes(h.id[..8].try_into().unwrap())
}

struct Want {
    rel: String,
    unit: Option<String>,
    container: Option<(&'static str, Option<&'static str>)>,
    pod: Option<(&'static str, Option<(&'static str, &'static str)>)>,
    short: Option<String>,
}

fn want(rel: String) -> Want {
    Want {
        rel,
        unit: None,
        container: None,
        pod: None,
        short: None,
    }
}

#[track_caller]
fn check(w: &Workload, cg: &TestCgroup, id: u64, want: &Want) {
    let what = &want.rel;
    assert_eq!(w.cgroup_id, id, "{what}");
    assert_eq!(
        w.cgroup.as_deref(),
        Some(cg.cgroup_path(what).as_str()),
        "{what}"
    );
    assert!(!w.gone, "{what}");
    assert_eq!(w.unit, want.unit, "{what}");
    assert_eq!(
        w.container_id.as_deref(),
        want.container.map(|c| c.0),
        "{what}"
    );
    assert_eq!(w.runtime, want.container.and_then(|c| c.1), "{what}");
    assert_eq!(w.pod_uid.as_deref(), want.pod.map(|p| p.0), "{what}");
    let name = want.pod.and_then(|p| p.1);
    assert_eq!(w.pod_namespace.as_deref(), name.map(|n| n.0), "{what}");
    assert_eq!(w.pod.as_deref(), name.map(|n| n.1), "{what}");
    assert_eq!(Resolver::short_name(w), want.short, "{what}");
}

#[test]
fn runtime_and_pod_shaped_cgroups_resolve() {
    let Some(mount) = mount_or_skip("runtime_and_pod_shaped_cgroups_resolve") else {
        return;
    };
    // The mount found is a cgroup2 file system showing the whole hierarchy.
    let path = CString::new(mount.path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed statfs (plain integers) is a valid out-parameter; the path is
    // NUL-terminated.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(path.as_ptr(), &mut st), st)
    };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        mount.path.display(),
        io::Error::last_os_error()
    );
    assert_eq!(st.f_type, libc::CGROUP2_SUPER_MAGIC, "{mount:?}");
    assert_eq!(fs::metadata(&mount.path).unwrap().ino(), ROOT_CGROUP_ID);

    let cg = TestCgroup::new(&mount, "shapes");
    let pods = TempDir::new("shapes");
    pods.pod("default", "web-0", UID);
    pods.pod("kube-system", "kube-apiserver-node1", STATIC_UID);
    let short = |s: &str| Some(s.to_owned());
    let wants = [
        Want {
            unit: short("nginx.service"),
            short: short("nginx.service"),
            ..want("system.slice/nginx.service".into())
        },
        Want {
            container: Some((ID, Some(DOCKER))),
            short: short(&ID[..12]),
            ..want(format!("system.slice/docker-{ID}.scope"))
        },
        Want {
            container: Some((ID2, Some(DOCKER))),
            short: short(&ID2[..12]),
            ..want(format!("docker/{ID}/docker/{ID2}"))
        },
        Want {
            container: Some((ID, Some(PODMAN))),
            short: short(&ID[..12]),
            ..want(format!("machine.slice/libpod-{ID}.scope"))
        },
        Want {
            unit: Some(format!("libpod-conmon-{ID}.scope")),
            short: Some(format!("libpod-conmon-{ID}.scope")),
            ..want(format!("machine.slice/libpod-conmon-{ID}.scope"))
        },
        Want {
            container: Some((ID, Some(CONTAINERD))),
            pod: Some((UID, Some(("default", "web-0")))),
            short: short("default/web-0"),
            ..want(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ))
        },
        Want {
            container: Some((ID2, Some(CRIO))),
            // No pod log directory for this one: the container names it.
            pod: Some((UID2, None)),
            short: short(&ID2[..12]),
            ..want(format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID2_}.slice/crio-{ID2}.scope"
            ))
        },
        Want {
            unit: Some(format!("crio-conmon-{ID2}.scope")),
            pod: Some((UID2, None)),
            short: Some(format!("pod:{UID2}")),
            ..want(format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID2_}.slice/crio-conmon-{ID2}.scope"
            ))
        },
        Want {
            container: Some((ID, None)),
            pod: Some((STATIC_UID, Some(("kube-system", "kube-apiserver-node1")))),
            short: short("kube-system/kube-apiserver-node1"),
            ..want(format!("kubepods/pod{STATIC_UID}/{ID}"))
        },
        Want {
            pod: Some((UID, Some(("default", "web-0")))),
            short: short("default/web-0"),
            ..want(format!("kubepods/burstable/pod{UID}"))
        },
    ];
    let made: Vec<(PathBuf, u64)> = wants.iter().map(|w| cg.make(&w.rel)).collect();

    let mut r = Resolver::new(pods.0.clone()).expect("resolver");
    assert_eq!(r.mount(), &mount);
    for (w, (dir, id)) in wants.iter().zip(&made) {
        // The id an event carries is the one the kernel gives the cgroup.
        assert_eq!(kernel_cgroup_id(dir), *id, "{}", w.rel);
        check(r.resolve(*id), &cg, *id, w);
    }
    let root = r.resolve(ROOT_CGROUP_ID);
    assert_eq!(root.cgroup.as_deref(), Some("/"));
    assert_eq!(Resolver::short_name(root), None);
}

#[test]
fn a_removed_cgroup_is_gone_and_nothing_breaks() {
    let Some(mount) = mount_or_skip("a_removed_cgroup_is_gone_and_nothing_breaks") else {
        return;
    };
    let cg = TestCgroup::new(&mount, "removed");
    let pods = TempDir::new("removed");
    pods.pod("prod", "api-7", UID);
    let rel = format!("kubepods/besteffort/pod{UID}/{ID}");
    let (dir, id) = cg.make(&rel);
    let mut r = Resolver::new(pods.0.clone())
        .expect("resolver")
        .with_rescan_interval(Duration::ZERO);
    assert_eq!(r.resolve(id).to_string(), "prod/api-7");

    fs::remove_dir(&dir).unwrap();
    // A later unknown id makes a walk: it is gone, and so is the removed one, still named.
    let w = r.resolve(NO_SUCH_ID).clone();
    assert!(
        w.gone && w.cgroup.is_none() && w.cgroup_id == NO_SUCH_ID,
        "{w:?}"
    );
    assert_eq!(w.to_string(), "unknown (gone)");
    let w = r.resolve(id).clone();
    assert!(w.gone, "{w:?}");
    assert_eq!(w.cgroup.as_deref(), Some(cg.cgroup_path(&rel).as_str()));
    assert_eq!(w.to_string(), "prod/api-7 (gone)");

    // A cgroup made after all that resolves.
    let rel = format!("system.slice/docker-{ID2}.scope");
    let (_, id) = cg.make(&rel);
    let w = r.resolve(id);
    assert_eq!((w.container_id.as_deref(), w.gone), (Some(ID2), false));
}

#[test]
fn a_process_in_a_cgroup_agrees_with_proc() {
    let Some(mount) = mount_or_skip("a_process_in_a_cgroup_agrees_with_proc") else {
        return;
    };
    let cg = TestCgroup::new(&mount, "process");
    let rel = format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
    let (dir, id) = cg.make(&rel);
    // Declared after the cgroup, so killed (and out of it) before the cgroup is removed.
    let sleeper = Sleeper::spawn();
    fs::write(dir.join("cgroup.procs"), sleeper.pid().to_string())
        .unwrap_or_else(|e| panic!("moving pid {} into {}: {e}", sleeper.pid(), dir.display()));

    // The move is done when the write returns; the v2 line is `0::<path>`.
    let proc = fs::read_to_string(format!("/proc/{}/cgroup", sleeper.pid())).unwrap();
    let v2 = proc
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {proc:?}"));
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), sleeper.pid().to_string());

    let mut r = Resolver::new(PathBuf::from("/nonexistent/pods")).expect("resolver");
    let w = r.resolve(id);
    assert_eq!(w.cgroup.as_deref(), Some(v2), "{w:?}");
    assert_eq!(v2, cg.cgroup_path(&rel));
    assert_eq!(w.container_id.as_deref(), Some(ID));
    assert_eq!(w.pod_uid.as_deref(), Some(UID));
    assert_eq!(w.runtime, Some(CONTAINERD));
}
