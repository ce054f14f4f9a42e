//! Which workload a cgroup id belongs to: its cgroup, systemd unit, container and Kubernetes pod.
//!
//! Events carry the cgroup v2 id of the process that owns the socket. [`Resolver`] turns it into
//! a [`Workload`] in three steps, each from what the node itself holds, without asking a
//! container runtime or the API server:
//!
//! 1. `mount`: where the cgroup v2 hierarchy is mounted (not always /sys/fs/cgroup);
//! 2. `cgroups`: id -> path, from one walk of the hierarchy, walked again when an id is new;
//! 3. `shape`: path -> unit, container and pod uid, by the runtimes' naming conventions;
//!    `pods`: pod uid -> namespace and name, from the kubelet's pod log directories.
//!
//! Lookups are meant for the event path: a known id costs one hash lookup. An unknown id costs
//! at most one walk per rescan interval (one second), and an id still unknown after a walk that
//! started after it was asked for is remembered as gone, so a stream of events from a removed
//! cgroup costs one walk, not one each.
mod cgroups;
mod mount;
mod pods;
mod shape;

use std::{
    collections::HashMap,
    fmt, io,
    path::PathBuf,
    time::{Duration, Instant},
};

pub use mount::{Cgroup2Mount, ROOT_CGROUP_ID, find_cgroup2};
pub use pods::parse_dir_name as parse_pod_log_dir;
pub use shape::{CONTAINERD, CRIO, DOCKER, PODMAN, Shape, parse as parse_cgroup_path};

use cgroups::Gone;
use pods::PodIndex;

/// Where the kubelet keeps pod logs, one directory per pod.
pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";

/// How often, at most, an unknown id or pod uid makes the hierarchy or the pod directory be
/// read again.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How many gone ids are remembered; past it the oldest are forgotten (and cost one more walk
/// if asked for again).
pub const GONE_CAP: usize = 4096;

/// Why workloads cannot be resolved at all.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "no cgroup2 mount in {}: cgroup v2 is not mounted here (a cgroup v1 only host, or a container without the host's /sys/fs/cgroup)",
        mountinfo.display()
    )]
    NoCgroup2 { mountinfo: PathBuf },
    #[error("reading {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
}

/// What is known of the workload of one cgroup id. Each part is None when unknown or when the
/// cgroup's path does not say it for sure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub cgroup_id: u64,
    /// The cgroup's path in the v2 hierarchy, `/system.slice/nginx.service`; None when the id
    /// has not been found (yet, or ever: see `gone`).
    pub cgroup: Option<String>,
    /// The cgroup no longer exists: removed after it was resolved (`cgroup` keeps its path), or
    /// never found (`cgroup` is None: "unknown (gone)").
    pub gone: bool,
    /// The innermost systemd service or scope, `nginx.service`.
    pub unit: Option<String>,
    /// The innermost container's id, 64 hex digits.
    pub container_id: Option<String>,
    /// [`DOCKER`], [`CONTAINERD`], [`CRIO`] or [`PODMAN`], when the path tells.
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
    /// From the pod log directory; None until (unless) it names the pod.
    pub pod_namespace: Option<String>,
    pub pod: Option<String>,
}

impl Workload {
    fn at(cgroup_id: u64, path: &str) -> Self {
        let s = shape::parse(path);
        Self {
            cgroup_id,
            cgroup: Some(path.to_owned()),
            gone: false,
            unit: s.unit,
            container_id: s.container_id,
            runtime: s.runtime,
            pod_uid: s.pod_uid,
            pod_namespace: None,
            pod: None,
        }
    }

    fn unknown(cgroup_id: u64, gone: bool) -> Self {
        Self {
            cgroup_id,
            gone,
            ..Self::default()
        }
    }
}

/// The short name, else the cgroup path, else "unknown"; " (gone)" after a gone cgroup's.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (Resolver::short_name(self), &self.cgroup) {
            (Some(name), _) => f.write_str(&name)?,
            (None, Some(path)) => f.write_str(path)?,
            (None, None) => f.write_str("unknown")?,
        }
        if self.gone {
            f.write_str(" (gone)")?;
        }
        Ok(())
    }
}

/// cgroup id -> [`Workload`], with the caches that keep it cheap per event.
pub struct Resolver {
    mount: Cgroup2Mount,
    every: Duration,
    /// Every cgroup of the last walk: what the hierarchy holds, no more.
    paths: HashMap<u64, String>,
    scanned_at: Instant,
    scans: u64,
    /// The ids asked for and found, a subset of `paths` as of the last walk.
    live: HashMap<u64, Workload>,
    gone: Gone<Workload>,
    pods: PodIndex,
    /// The answer for an id not found yet while a walk is not due; overwritten on each.
    pending: Workload,
}

impl Resolver {
    /// A resolver of this host's cgroup v2 hierarchy (from the mount table), naming pods from
    /// `pods_dir` ([`DEFAULT_PODS_DIR`] on a node). Walks the hierarchy once.
    pub fn new(pods_dir: PathBuf) -> Result<Self, WorkloadError> {
        Self::with_mount(find_cgroup2()?, pods_dir)
    }

    /// A resolver of the hierarchy at `mount`: a cgroup2 mount found elsewhere, or a fake
    /// hierarchy (plain directories) in tests. Fails when `mount` cannot be read.
    pub fn with_mount(mount: Cgroup2Mount, pods_dir: PathBuf) -> Result<Self, WorkloadError> {
        let scanned_at = Instant::now();
        let scan = cgroups::scan(&mount)?;
        Ok(Self {
            mount,
            every: RESCAN_INTERVAL,
            paths: scan.paths,
            scanned_at,
            scans: 1,
            live: HashMap::new(),
            gone: Gone::new(GONE_CAP),
            pods: PodIndex::new(pods_dir, RESCAN_INTERVAL),
            pending: Workload::default(),
        })
    }

    /// Changes the rescan interval (of the hierarchy and of the pod directory) from
    /// [`RESCAN_INTERVAL`]; zero rescans on every miss (tests).
    pub fn with_rescan_interval(mut self, every: Duration) -> Self {
        self.every = every;
        self.pods.set_every(every);
        self
    }

    pub fn mount(&self) -> &Cgroup2Mount {
        &self.mount
    }

    /// The workload of `cgroup_id`. Never fails: an id not found is unknown (`cgroup` None),
    /// and gone once a walk made after the question did not find it either.
    pub fn resolve(&mut self, cgroup_id: u64) -> &Workload {
        self.resolve_at(cgroup_id, Instant::now())
    }

    fn resolve_at(&mut self, id: u64, now: Instant) -> &Workload {
        if !self.live.contains_key(&id) && self.gone.get(id).is_none() {
            let mut walked_all = false;
            if !self.paths.contains_key(&id)
                && now.saturating_duration_since(self.scanned_at) >= self.every
            {
                walked_all = self.rescan(now);
            }
            match self.paths.get(&id) {
                Some(path) => {
                    self.live.insert(id, Workload::at(id, path));
                }
                None if walked_all => self.gone.insert(id, Workload::unknown(id, true)),
                // Not found, but no complete walk since the question: it may be a cgroup
                // newer than the last walk. Asked again later, it gets one.
                None => {
                    self.pending = Workload::unknown(id, false);
                    return &self.pending;
                }
            }
        }
        match self.live.get_mut(&id) {
            Some(w) => {
                // Named as soon as the pod directory names it: it may come after the cgroup.
                if let (Some(uid), None) = (&w.pod_uid, &w.pod)
                    && let Some(pod) = self.pods.lookup(uid, now)
                {
                    w.pod_namespace = Some(pod.namespace.clone());
                    w.pod = Some(pod.name.clone());
                }
                w
            }
            None => self.gone.get(id).unwrap_or(&self.pending),
        }
    }

    /// Walks the hierarchy again; true when the walk read all of it. The workloads resolved
    /// before whose cgroups are gone move to the gone set, keeping their names, so that events
    /// after a container exits (its last connections closing) are still named.
    fn rescan(&mut self, now: Instant) -> bool {
        self.scanned_at = now;
        self.scans += 1;
        // A walk that fails keeps the last one: nothing can be concluded from it.
        let Ok(scan) = cgroups::scan(&self.mount) else {
            return false;
        };
        for (id, mut w) in std::mem::take(&mut self.live) {
            match scan.paths.get(&id) {
                Some(path) if w.cgroup.as_ref() == Some(path) => {
                    self.live.insert(id, w);
                }
                // Renamed: read from its new path when next asked.
                Some(_) => {}
                None if scan.complete => {
                    w.gone = true;
                    self.gone.insert(id, w);
                }
                // Perhaps in the part that could not be read: keep it.
                None => {
                    self.live.insert(id, w);
                }
            }
        }
        self.paths = scan.paths;
        scan.complete
    }

    /// Every cgroup of the hierarchy (as of the last walk) whose workload `keep` wants, pods
    /// named; for resolving a workload to its cgroup at start-up, not for the event path.
    pub fn matching(&mut self, keep: impl Fn(&Workload) -> bool) -> Vec<Workload> {
        let ids: Vec<u64> = self.paths.keys().copied().collect();
        ids.into_iter()
            .map(|id| self.resolve(id).clone())
            .filter(|w| keep(w))
            .collect()
    }

    /// A short name for tables: the pod (`namespace/name`) when named, else the container's
    /// short id (its first 12 hex digits, as `docker ps` shows it), else the pod uid
    /// (`pod:<uid>`), else the unit; None when none is known (the root cgroup, a user's
    /// slice, an unknown id).
    pub fn short_name(w: &Workload) -> Option<String> {
        if let (Some(namespace), Some(pod)) = (&w.pod_namespace, &w.pod) {
            return Some(format!("{namespace}/{pod}"));
        }
        if let Some(id) = w.container_id.as_deref().and_then(|id| id.get(..12)) {
            return Some(id.to_owned());
        }
        if let Some(uid) = &w.pod_uid {
            return Some(format!("pod:{uid}"));
        }
        w.unit.clone()
    }
}

#[cfg(test)]
mod tests;
