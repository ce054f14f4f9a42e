//! Root integration test of `sockwatch::host::workload`: cgroups made under this host's real
//! cgroup v2 mount in the shapes of each runtime and of pods, in a parent of the test's own,
//! resolved by their ids; one removed after being resolved; one holding a process of the test's.
mod common;

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    TempDir,
    cgroups::{TestCgroup, mount_or_skip, pod_log_dir},
};
use sockwatch::host::workload::{
    CONTAINERD, CRIO, DOCKER, PODMAN, ROOT_CGROUP_ID, Resolver, Workload,
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
    pod_log_dir(pods.path(), "default", "web-0", UID);
    pod_log_dir(
        pods.path(),
        "kube-system",
        "kube-apiserver-node1",
        STATIC_UID,
    );
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

    let mut r = Resolver::new(pods.path().to_path_buf()).expect("resolver");
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
    pod_log_dir(pods.path(), "prod", "api-7", UID);
    let rel = format!("kubepods/besteffort/pod{UID}/{ID}");
    let (dir, id) = cg.make(&rel);
    let mut r = Resolver::new(pods.path().to_path_buf())
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
