//! The resolver on a fake hierarchy: plain directories, whose inodes stand for cgroup ids.
use std::{fs, os::unix::fs::MetadataExt, path::Path};

use super::*;
use crate::test_dir::TestDir;

const ID: &str = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa00112233445566778899";
const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const UID_: &str = "6a1b2c3d_4e5f_4a6b_8c7d_0e1f2a3b4c5d";
const SEC: Duration = Duration::from_secs(1);
/// No directory has this inode.
const NO_SUCH_ID: u64 = u64::MAX - 7;

struct Fake {
    dir: TestDir,
}

impl Fake {
    fn new(tag: &str) -> Self {
        let dir = TestDir::new("workload", tag);
        fs::create_dir_all(dir.0.join("cg")).unwrap();
        fs::create_dir_all(dir.0.join("pods")).unwrap();
        Self { dir }
    }

    fn cgroup(&self, path: &str) -> u64 {
        let p = self.dir.0.join("cg").join(path);
        fs::create_dir_all(&p).unwrap();
        fs::metadata(p).unwrap().ino()
    }

    fn pod_dir(&self, name: &str) {
        fs::create_dir(self.dir.0.join("pods").join(name)).unwrap();
    }

    fn remove(&self, path: &str) {
        fs::remove_dir(self.dir.0.join("cg").join(path)).unwrap();
    }

    fn resolver(&self) -> Resolver {
        let mount = Cgroup2Mount::at(self.dir.0.join("cg"));
        Resolver::with_mount(mount, self.dir.0.join("pods")).unwrap()
    }
}

fn pod_path() -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
    )
}

#[test]
fn resolves_units_containers_and_pods() {
    let fake = Fake::new("resolves");
    let nginx = fake.cgroup("system.slice/nginx.service");
    let docker = fake.cgroup(&format!("system.slice/docker-{ID}.scope"));
    let pod = fake.cgroup(&pod_path());
    fake.pod_dir(&format!("default_web-0_{UID}"));
    let mut r = fake.resolver();

    let root = r
        .resolve(fs::metadata(&r.mount().path).unwrap().ino())
        .clone();
    assert_eq!(root.cgroup.as_deref(), Some("/"));
    assert_eq!(Resolver::short_name(&root), None);
    assert_eq!(root.to_string(), "/");

    let w = r.resolve(nginx).clone();
    assert_eq!(
        w,
        Workload {
            cgroup_id: nginx,
            cgroup: Some("/system.slice/nginx.service".into()),
            unit: Some("nginx.service".into()),
            ..Workload::default()
        }
    );
    assert_eq!(Resolver::short_name(&w).as_deref(), Some("nginx.service"));

    let w = r.resolve(docker).clone();
    assert_eq!(w.container_id.as_deref(), Some(ID));
    assert_eq!(w.runtime, Some(DOCKER));
    assert_eq!(w.unit, None);
    assert_eq!(w.to_string(), &ID[..12]);

    let w = r.resolve(pod).clone();
    assert_eq!(w.cgroup, Some(format!("/{}", pod_path())));
    assert_eq!(w.container_id.as_deref(), Some(ID));
    assert_eq!(w.runtime, Some(CONTAINERD));
    assert_eq!(w.pod_uid.as_deref(), Some(UID));
    assert_eq!(w.pod_namespace.as_deref(), Some("default"));
    assert_eq!(w.pod.as_deref(), Some("web-0"));
    assert_eq!(w.to_string(), "default/web-0");
    assert!(!w.gone);
}

#[test]
fn unknown_ids_cost_one_walk_per_interval_then_are_gone() {
    let fake = Fake::new("interval");
    let mut r = fake.resolver();
    let t0 = r.scanned_at;
    assert_eq!(r.scans, 1);

    // Newer than the walk: not found, not gone, and no walk before the interval is up.
    let new = fake.cgroup("system.slice/new.service");
    for _ in 0..100 {
        let w = r.resolve_at(new, t0 + SEC / 2);
        assert_eq!(*w, Workload::unknown(new, false));
        assert_eq!(w.to_string(), "unknown");
        assert_eq!(
            *r.resolve_at(NO_SUCH_ID, t0 + SEC / 2),
            Workload::unknown(NO_SUCH_ID, false)
        );
    }
    assert_eq!(r.scans, 1);

    // Once it is up, one walk finds it.
    let w = r.resolve_at(new, t0 + SEC).clone();
    assert_eq!(w.unit.as_deref(), Some("new.service"));
    assert_eq!(r.scans, 2);

    // An id that no walk finds: unknown until the next walk is due, then gone for good.
    assert!(!r.resolve_at(NO_SUCH_ID, t0 + SEC * 3 / 2).gone);
    assert_eq!(r.scans, 2);
    let w = r.resolve_at(NO_SUCH_ID, t0 + SEC * 2).clone();
    assert_eq!(w, Workload::unknown(NO_SUCH_ID, true));
    assert_eq!(w.to_string(), "unknown (gone)");
    assert_eq!(r.scans, 3);
    for s in 3..10 {
        assert!(r.resolve_at(NO_SUCH_ID, t0 + SEC * s).gone);
    }
    assert_eq!(r.scans, 3);
    // Known ids cost no walk either.
    r.resolve_at(new, t0 + SEC * 20);
    assert_eq!(r.scans, 3);
}

#[test]
fn a_removed_cgroup_keeps_its_name_and_is_gone() {
    let fake = Fake::new("removed");
    let a = fake.cgroup("system.slice/a.service");
    let b = fake.cgroup(&pod_path());
    fake.pod_dir(&format!("prod_api-7_{UID}"));
    let mut r = fake.resolver().with_rescan_interval(Duration::ZERO);
    assert_eq!(r.resolve(a).unit.as_deref(), Some("a.service"));
    assert_eq!(r.resolve(b).pod.as_deref(), Some("api-7"));
    // Made now: a plain file system may give a removed directory's inode to the next one,
    // where cgroup ids are never used twice.
    let c = fake.cgroup("system.slice/c.service");
    fake.remove("system.slice/a.service");
    fake.remove(&pod_path());

    // Until a walk, the cache answers.
    assert!(!r.resolve(a).gone);
    // Another unknown id makes a walk, which finds both gone.
    assert!(r.resolve(NO_SUCH_ID).gone);
    let w = r.resolve(a).clone();
    assert!(w.gone);
    assert_eq!(w.cgroup.as_deref(), Some("/system.slice/a.service"));
    assert_eq!(w.to_string(), "a.service (gone)");
    let w = r.resolve(b).clone();
    assert!(w.gone);
    assert_eq!(w.to_string(), "prod/api-7 (gone)");

    // And the others still resolve.
    assert_eq!(r.resolve(c).unit.as_deref(), Some("c.service"));
}

#[test]
fn a_pod_named_after_its_cgroup_is_named_when_asked_again() {
    let fake = Fake::new("late-pod");
    let id = fake.cgroup(&pod_path());
    let mut r = fake.resolver();
    let t0 = r.scanned_at;
    let w = r.resolve_at(id, t0).clone();
    assert_eq!((w.pod_uid.as_deref(), w.pod.as_deref()), (Some(UID), None));
    assert_eq!(w.to_string(), &ID[..12]);
    fake.pod_dir(&format!("kube-system_coredns-x2k4p_{UID}"));
    // The pod directory is read at most once per interval.
    assert_eq!(r.resolve_at(id, t0 + SEC / 2).pod, None);
    let w = r.resolve_at(id, t0 + SEC * 2);
    assert_eq!(w.pod_namespace.as_deref(), Some("kube-system"));
    assert_eq!(w.to_string(), "kube-system/coredns-x2k4p");
}

#[test]
fn gone_ids_are_bounded() {
    let fake = Fake::new("bounded");
    let mut r = fake.resolver().with_rescan_interval(Duration::ZERO);
    for id in 0..(GONE_CAP as u64 + 100) {
        assert!(r.resolve(NO_SUCH_ID - id).gone);
    }
    assert_eq!(r.gone.len(), GONE_CAP);
}

#[test]
fn short_names() {
    let w = |f: &dyn Fn(&mut Workload)| {
        let mut w = Workload::default();
        f(&mut w);
        Resolver::short_name(&w)
    };
    assert_eq!(w(&|_| ()), None);
    assert_eq!(
        w(&|w| w.unit = Some("nginx.service".into())).as_deref(),
        Some("nginx.service")
    );
    assert_eq!(
        w(&|w| {
            w.unit = Some("user@1000.service".into());
            w.container_id = Some(ID.into());
        })
        .as_deref(),
        Some("3f4e8d2c1b0a")
    );
    assert_eq!(
        w(&|w| w.pod_uid = Some(UID.into())),
        Some(format!("pod:{UID}"))
    );
    assert_eq!(
        w(&|w| {
            w.container_id = Some(ID.into());
            w.pod_uid = Some(UID.into());
            w.pod_namespace = Some("default".into());
            w.pod = Some("web-0".into());
        })
        .as_deref(),
        Some("default/web-0")
    );
    // A namespace without a name (or the reverse) is no pod name.
    assert_eq!(
        w(&|w| {
            w.container_id = Some(ID.into());
            w.pod = Some("web-0".into());
        })
        .as_deref(),
        Some("3f4e8d2c1b0a")
    );
}

#[test]
fn an_unreadable_mount_is_an_error() {
    let fake = Fake::new("unreadable");
    let mount = Cgroup2Mount::at(fake.dir.0.join("absent"));
    let e = Resolver::with_mount(mount, fake.dir.0.join("pods"))
        .err()
        .unwrap();
    assert!(matches!(e, WorkloadError::Read { .. }), "{e:?}");
    assert!(e.to_string().starts_with("reading "), "{e}");
    let e = WorkloadError::NoCgroup2 {
        mountinfo: Path::new("/proc/self/mountinfo").into(),
    };
    assert!(
        e.to_string()
            .starts_with("no cgroup2 mount in /proc/self/mountinfo")
    );
}
