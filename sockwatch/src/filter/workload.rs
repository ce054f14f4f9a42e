//! `--container`, `--pod` and `--unit`: what each matches in a resolved workload, how a live run
//! applies one (resolved against the host's cgroups at start-up), and their values' parsers.
use std::path::{Path, PathBuf};

use super::{Filter, FilterError, parse_cgroup};
use crate::host::workload::{Resolver, Workload, WorkloadError};

/// `--container`, `--pod` or `--unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadMatch {
    /// A container id prefix (lowercase hex).
    Container(String),
    Pod {
        namespace: Option<String>,
        name: String,
    },
    /// A systemd service or scope.
    Unit(String),
}

impl WorkloadMatch {
    pub fn matches(&self, w: &Workload) -> bool {
        match self {
            Self::Container(prefix) => w
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(prefix.as_str())),
            Self::Pod { namespace, name } => {
                w.pod.as_deref() == Some(name.as_str())
                    && namespace
                        .as_deref()
                        .is_none_or(|n| w.pod_namespace.as_deref() == Some(n))
            }
            Self::Unit(unit) => w.unit.as_deref() == Some(unit.as_str()),
        }
    }
}

impl std::fmt::Display for WorkloadMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Container(prefix) => write!(f, "--container {prefix}"),
            Self::Pod {
                namespace: Some(ns),
                name,
            } => write!(f, "--pod {ns}/{name}"),
            Self::Pod {
                namespace: None,
                name,
            } => write!(f, "--pod {name}"),
            Self::Unit(unit) => write!(f, "--unit {unit}"),
        }
    }
}

/// How a workload filter is applied in a live run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadFiltering {
    /// One cgroup holds all of it: the kernel filters on it, as with `--cgroup`.
    Kernel(PathBuf),
    /// Several cgroups match: sockwatch keeps the events whose cgroup resolves to it.
    Userspace(usize),
}

impl Filter {
    /// A live run's workload filter, resolved against this host's cgroups at start-up: when
    /// all of its cgroups are under one (a pod's slice, a container's or a unit's cgroup), that
    /// one becomes the kernel's cgroup filter and `workload` is cleared; when several are
    /// (a pod name in two namespaces, a short container prefix), `workload` stays, for
    /// [`Filter::keeps_workload`] on each event's resolved names. None matching is an error:
    /// a typo would otherwise trace nothing, silently.
    pub fn resolve_workload(
        &mut self,
        resolver: Result<&mut Resolver, &WorkloadError>,
        pods_dir: &Path,
    ) -> Result<Option<WorkloadFiltering>, FilterError> {
        let Some(m) = self.workload.clone() else {
            return Ok(None);
        };
        let what = m.to_string();
        let resolver = resolver.map_err(|e| FilterError::NoResolver {
            what: what.clone(),
            cause: e.to_string(),
        })?;
        let matched: Vec<String> = resolver
            .matching(|w| m.matches(w))
            .into_iter()
            .filter_map(|w| w.cgroup)
            .collect();
        // The outermost: those no other match holds.
        let outermost: Vec<&String> = matched
            .iter()
            .filter(|p| {
                !matched.iter().any(|q| {
                    p.len() > q.len() && p.starts_with(q.as_str()) && p.as_bytes()[q.len()] == b'/'
                })
            })
            .collect();
        match outermost.as_slice() {
            [] => Err(FilterError::NoMatch {
                what,
                pods_dir: pods_dir.to_path_buf(),
            }),
            [one] => {
                let mount = resolver.mount();
                let rel = one
                    .strip_prefix(mount.root.trim_end_matches('/'))
                    .unwrap_or(one)
                    .trim_start_matches('/');
                let dir = mount.path.join(rel);
                let cgroup =
                    parse_cgroup(&dir.to_string_lossy()).map_err(|cause| FilterError::Cgroup {
                        what,
                        path: dir.clone(),
                        cause,
                    })?;
                self.cgroup = Some(cgroup);
                self.workload = None;
                Ok(Some(WorkloadFiltering::Kernel(dir)))
            }
            many => Ok(Some(WorkloadFiltering::Userspace(many.len()))),
        }
    }

    /// An event's owner's workload, when `--container`, `--pod` or `--unit` is left to
    /// userspace: unknown (no owner, not resolved) fails it.
    pub fn keeps_workload(&self, w: Option<&Workload>) -> bool {
        self.workload
            .as_ref()
            .is_none_or(|m| w.is_some_and(|w| m.matches(w)))
    }
}

/// `--container`: a container id or its first hex digits, as `docker ps` or `crictl ps` shows
/// it.
pub fn parse_container(s: &str) -> Result<WorkloadMatch, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "'{s}' is not a container id: give 1 to 64 hex digits, as `docker ps` or `crictl ps` \
             shows it"
        ));
    }
    Ok(WorkloadMatch::Container(s.to_ascii_lowercase()))
}

/// `--pod`: NAME or NAMESPACE/NAME, as Kubernetes spells them.
pub fn parse_pod(s: &str) -> Result<WorkloadMatch, String> {
    let (namespace, name) = match s.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, s),
    };
    let label = |s: &str, extra: &[u8], max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    };
    if !label(name, b"-.", 253) || !namespace.is_none_or(|ns| label(ns, b"-", 63)) {
        return Err(format!(
            "'{s}' is not a pod: give NAME or NAMESPACE/NAME (lowercase letters, digits, '-', \
             and '.' in names), as `kubectl get pods -A` shows them"
        ));
    }
    Ok(WorkloadMatch::Pod {
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    })
}

/// `--unit`: a systemd service or scope, by its full name.
pub fn parse_unit(s: &str) -> Result<WorkloadMatch, String> {
    let ok = (s.ends_with(".service") || s.ends_with(".scope"))
        && !s.starts_with('.')
        && !s.contains('/')
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if !ok {
        return Err(format!(
            "'{s}' is not a systemd unit: give a service or scope by its full name, e.g. \
             nginx.service"
        ));
    }
    Ok(WorkloadMatch::Unit(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn workload_values_are_checked() {
        assert_eq!(
            parse_container(&"A".repeat(64)),
            Ok(WorkloadMatch::Container("a".repeat(64)))
        );
        for bad in ["", "g1", &"a".repeat(65), "ab cd"] {
            let e = parse_container(bad).unwrap_err();
            assert!(e.contains("is not a container id"), "{e}");
        }
        assert_eq!(
            parse_pod("web-0.v2"),
            Ok(WorkloadMatch::Pod {
                namespace: None,
                name: "web-0.v2".into()
            })
        );
        for bad in ["", "/web", "shop/", "a/b/c", "Web", "shop.x/web", "web_0"] {
            let e = parse_pod(bad).unwrap_err();
            assert!(e.contains("is not a pod"), "{bad}: {e}");
        }
        assert!(parse_unit("session-3.scope").is_ok());
        for bad in [
            "nginx",
            ".service",
            "a/b.service",
            "a b.service",
            "user.slice",
        ] {
            let e = parse_unit(bad).unwrap_err();
            assert!(e.contains("is not a systemd unit"), "{bad}: {e}");
        }
    }

    #[test]
    fn workloads_match_by_name() {
        let w = Workload {
            unit: Some("cri-containerd-ab.scope".into()),
            container_id: Some("ab".repeat(32)),
            pod_namespace: Some("shop".into()),
            pod: Some("web-0".into()),
            ..Workload::default()
        };
        let pod = |ns: Option<&str>, name: &str| WorkloadMatch::Pod {
            namespace: ns.map(Into::into),
            name: name.into(),
        };
        assert!(WorkloadMatch::Container("aba".into()).matches(&w));
        assert!(!WorkloadMatch::Container("abb".into()).matches(&w));
        assert!(pod(None, "web-0").matches(&w) && pod(Some("shop"), "web-0").matches(&w));
        assert!(!pod(Some("dev"), "web-0").matches(&w) && !pod(None, "web").matches(&w));
        assert!(WorkloadMatch::Unit("cri-containerd-ab.scope".into()).matches(&w));
        assert!(!WorkloadMatch::Unit("nginx.service".into()).matches(&w));
        let f = Filter {
            workload: Some(pod(None, "web-0")),
            ..Default::default()
        };
        assert!(f.keeps_workload(Some(&w)) && !f.keeps_workload(None));
        assert!(f.has_owner_criteria());
        assert!(Filter::default().keeps_workload(None));
        assert_eq!(pod(Some("shop"), "web-0").to_string(), "--pod shop/web-0");
    }

    /// On a fake hierarchy (plain directories): no match is an error naming the pods
    /// directory; several outermost matches are left to userspace; one is taken as the
    /// cgroup filter, which a plain directory is not.
    #[test]
    fn workload_filters_resolve_at_start_up() {
        use crate::{host::workload::Cgroup2Mount, test_dir::TestDir};
        const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
        const UID_: &str = "6a1b2c3d_4e5f_4a6b_8c7d_0e1f2a3b4c5d";
        const UID2: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";
        const UID2_: &str = "0f1e2d3c_4b5a_4968_8776_655443322110";
        let dir = TestDir::new("filter", "workloads");
        let cg = dir.0.join("cg");
        let pods = dir.0.join("pods");
        for d in [
            format!(
                "kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                "ab".repeat(32)
            ),
            format!(
                "kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                "cd".repeat(32)
            ),
            format!(
                "kubepods.slice/kubepods-pod{UID2_}.slice/cri-containerd-{}.scope",
                "ef".repeat(32)
            ),
            "system.slice/nginx.service".into(),
        ] {
            fs::create_dir_all(cg.join(d)).unwrap();
        }
        fs::create_dir_all(pods.join(format!("shop_web-0_{UID}"))).unwrap();
        fs::create_dir_all(pods.join(format!("dev_web-0_{UID2}"))).unwrap();
        let mut resolver = Resolver::with_mount(Cgroup2Mount::at(&cg), pods.clone()).unwrap();
        let mut resolve = |m: WorkloadMatch| {
            let mut f = Filter {
                workload: Some(m),
                ..Default::default()
            };
            let r = f.resolve_workload(Ok(&mut resolver), &pods);
            (f, r)
        };

        let (_, r) = resolve(WorkloadMatch::Unit("apache2.service".into()));
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "--unit apache2.service: no cgroup on this host belongs to it (pods are named \
                 from {}; see docs/usage.md#workloads)",
                pods.display()
            )
        );
        // A name in two namespaces: two pods.
        let (f, r) = resolve(WorkloadMatch::Pod {
            namespace: None,
            name: "web-0".into(),
        });
        assert_eq!(r, Ok(Some(WorkloadFiltering::Userspace(2))));
        assert!(f.workload.is_some() && f.cgroup.is_none());
        // One pod of two containers: its slice, which is no cgroup2 directory here.
        let (f, r) = resolve(WorkloadMatch::Pod {
            namespace: Some("shop".into()),
            name: "web-0".into(),
        });
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "--pod shop/web-0: its cgroup {}: ",
                cg.join(format!("kubepods.slice/kubepods-pod{UID_}.slice"))
                    .display()
            )),
            "{e}"
        );
        assert!(e.contains("is not a cgroup v2 directory"), "{e}");
        assert!(f.cgroup.is_none());
        let (_, r) = resolve(WorkloadMatch::Container("e".into()));
        assert!(r.unwrap_err().to_string().contains("cri-containerd-efef"));
        let e = Filter {
            workload: Some(WorkloadMatch::Container("e".into())),
            ..Default::default()
        }
        .resolve_workload(
            Err(&WorkloadError::NoCgroup2 {
                mountinfo: "/proc/self/mountinfo".into(),
            }),
            &pods,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--container e: workloads cannot be named here: no cgroup2 mount"),
            "{e}"
        );
    }
}
