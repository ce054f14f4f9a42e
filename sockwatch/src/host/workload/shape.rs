//! What a cgroup path says about its workload, from the path's shape alone.
//!
//! Runtimes and the kubelet name their cgroups by convention, not by contract, so every rule
//! here matches one documented shape exactly and anything else says "no": a missing name is
//! better than a wrong one. Container ids are 64 lowercase hex digits (docker, containerd, CRI-O
//! and podman all use the sha256 form); pod uids are the kubelet's (a UUID, or 32 hex digits for
//! static pods).
//!
//! | shape                                                     | gives                       |
//! | --------------------------------------------------------- | --------------------------- |
//! | `…/nginx.service`, `…/session-3.scope`                    | unit                        |
//! | `…/docker-<id>.scope`, `/docker/<id>`                     | container, docker           |
//! | `…/cri-containerd-<id>.scope`                             | container, containerd       |
//! | `…/crio-<id>.scope` (`crio-conmon-<id>.scope` is not one) | container, CRI-O            |
//! | `…/libpod-<id>.scope`, `/libpod_parent/libpod-<id>`       | container, podman           |
//! | `…kubepods[-burstable\|-besteffort]-pod<uid, _ for ->.slice` | pod uid (systemd driver) |
//! | `/kubepods[/burstable\|/besteffort]/pod<uid>/<id>`        | pod uid, container (cgroupfs driver) |
//!
//! Nested shapes (a kind node's pods inside a docker container, docker inside a pod) name the
//! innermost container; a pod found below a container resets it, since that container is the
//! outer one (the node), not the pod's.

/// Runtime names, as [`super::Workload::runtime`] carries them.
pub const DOCKER: &str = "docker";
pub const CONTAINERD: &str = "containerd";
pub const CRIO: &str = "cri-o";
pub const PODMAN: &str = "podman";

/// `<prefix>-<id>.scope` of each runtime with the systemd cgroup driver. The conmon scopes
/// (`crio-conmon-<id>`, `libpod-conmon-<id>`) do not match: after the prefix comes `conmon-`,
/// not an id, and conmon is the runtime's monitor, not the container.
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("docker-", DOCKER),
    ("cri-containerd-", CONTAINERD),
    ("crio-", CRIO),
    ("libpod-", PODMAN),
];

/// The kubelet's QoS slices under `kubepods`; guaranteed pods sit right in `kubepods`.
const QOS: &[&str] = &["burstable", "besteffort"];

/// What the path's shape says; each part is None when the shape does not say it for sure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shape {
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
}

/// Reads `path` (a cgroup v2 path such as `/system.slice/nginx.service`) by its shape.
pub fn parse(path: &str) -> Shape {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut shape = Shape::default();
    for (i, part) in parts.iter().enumerate() {
        let above = &parts[..i];
        if let Some(uid) = pod_slice(part).or_else(|| cgroupfs_pod(above, part)) {
            shape.pod_uid = Some(uid);
            shape.container_id = None;
            shape.runtime = None;
            continue;
        }
        if let Some((id, runtime)) = container(above, part) {
            shape.container_id = Some(id.to_owned());
            shape.runtime = runtime;
            continue;
        }
        if is_unit(part) {
            shape.unit = Some((*part).to_owned());
        }
    }
    shape
}

/// A container cgroup: its id and, when the shape tells, its runtime.
fn container<'a>(above: &[&str], part: &'a str) -> Option<(&'a str, Option<&'static str>)> {
    if let Some(stem) = part.strip_suffix(".scope") {
        return SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
            let id = stem.strip_prefix(prefix)?;
            is_container_id(id).then_some((id, Some(*runtime)))
        });
    }
    let parent = above.last().copied();
    // cgroupfs driver: the bare id under the pod (containerd, docker), `crio-<id>` (CRI-O).
    if parent.is_some_and(|p| cgroupfs_pod(&above[..above.len() - 1], p).is_some()) {
        if is_container_id(part) {
            return Some((part, None));
        }
        if let Some(id) = part.strip_prefix("crio-")
            && is_container_id(id)
        {
            return Some((id, Some(CRIO)));
        }
        return None;
    }
    // docker's and podman's own cgroupfs drivers.
    match parent {
        Some("docker") if is_container_id(part) => Some((part, Some(DOCKER))),
        Some("libpod_parent") => {
            let id = part.strip_prefix("libpod-")?;
            is_container_id(id).then_some((id, Some(PODMAN)))
        }
        _ => None,
    }
}

/// The pod uid of a systemd-driver pod slice: `kubepods-pod<uid>.slice` (guaranteed),
/// `kubepods-burstable-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`, the uid's `-`
/// written `_` (systemd reserves `-` for the slice hierarchy). With a cgroup root of its own
/// (kind: `--cgroup-root=/kubelet`) the slices are `kubelet-kubepods-…`, so any prefix ending in
/// `-` may come before `kubepods`.
fn pod_slice(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".slice")?;
    let (head, tail) = stem.rsplit_once('-')?;
    let uid = tail.strip_prefix("pod")?;
    let kubepods = QOS
        .iter()
        .find_map(|q| head.strip_suffix(q)?.strip_suffix('-'))
        .unwrap_or(head);
    if kubepods != "kubepods" && !kubepods.ends_with("-kubepods") {
        return None;
    }
    // A `-` in the uid would have split differently; a `-` that is there means a foreign shape.
    if uid.contains('-') {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// The pod uid of a cgroupfs-driver pod cgroup: `pod<uid>` right under `kubepods` or under its
/// `burstable` or `besteffort` child.
fn cgroupfs_pod(above: &[&str], part: &str) -> Option<String> {
    let uid = part.strip_prefix("pod")?;
    let under_kubepods = match above {
        [.., "kubepods"] => true,
        [.., "kubepods", qos] => QOS.contains(qos),
        _ => false,
    };
    (under_kubepods && is_pod_uid(uid)).then(|| uid.to_owned())
}

/// A systemd service or scope name: a non-empty name of the characters systemd allows in unit
/// names (escaped names keep their `\x2d`).
fn is_unit(part: &str) -> bool {
    let Some(stem) = part
        .strip_suffix(".service")
        .or_else(|| part.strip_suffix(".scope"))
    else {
        return false;
    };
    !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// 64 lowercase hex digits: the id every runtime here gives its containers. Uppercase or
/// shorter ids are someone else's naming, not a runtime's.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// A Kubernetes pod uid: a lowercase UUID (8-4-4-4-12), or 32 lowercase hex digits (static
/// pods: the kubelet hashes the manifest).
pub fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().copied().all(is_lower_hex),
        36 => b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => is_lower_hex(c),
        }),
        _ => false,
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa00112233445566778899";
    const ID2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab";
    const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    const UID_: &str = "6a1b2c3d_4e5f_4a6b_8c7d_0e1f2a3b4c5d";
    const STATIC_UID: &str = "d41d8cd98f00b204e9800998ecf8427e";

    fn unit(u: &str) -> Shape {
        Shape {
            unit: Some(u.into()),
            ..Shape::default()
        }
    }

    fn ctr(id: &str, runtime: Option<&'static str>, pod: Option<&str>, u: Option<&str>) -> Shape {
        Shape {
            unit: u.map(Into::into),
            container_id: Some(id.into()),
            runtime,
            pod_uid: pod.map(Into::into),
        }
    }

    fn pod(uid: &str, u: Option<&str>) -> Shape {
        Shape {
            unit: u.map(Into::into),
            pod_uid: Some(uid.into()),
            ..Shape::default()
        }
    }

    #[track_caller]
    fn check(path: &str, want: Shape) {
        assert_eq!(parse(path), want, "{path}");
    }

    #[test]
    fn systemd_units() {
        check("/system.slice/nginx.service", unit("nginx.service"));
        check("/init.scope", unit("init.scope"));
        check(
            "/user.slice/user-1000.slice/session-3.scope",
            unit("session-3.scope"),
        );
        // The last unit is the workload's: an app inside the user's manager.
        check(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo@x.service",
            unit("app-foo@x.service"),
        );
        check(
            r"/system.slice/system-getty.slice/getty@tty1.service",
            unit("getty@tty1.service"),
        );
        check(
            r"/system.slice/run-r1\x2d2.scope",
            unit(r"run-r1\x2d2.scope"),
        );
        // A service's own sub-cgroups keep the service.
        check("/system.slice/nginx.service/worker", unit("nginx.service"));
    }

    #[test]
    fn not_units() {
        for p in [
            "",
            "/",
            "//",
            "/system.slice",
            "/user.slice/user-1000.slice",
            "/.service",
            "/.scope",
            "/system.slice/nginx.service.d",
            "/system.slice/nginx.services",
            "/system.slice/ngi nx.service",
            "/system.slice/nginx.SERVICE",
        ] {
            check(p, Shape::default());
        }
    }

    #[test]
    fn docker() {
        let d = Some(DOCKER);
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            ctr(ID, d, None, None),
        );
        check(&format!("/docker/{ID}"), ctr(ID, d, None, None));
        // Docker in docker: the innermost container.
        check(
            &format!("/docker/{ID}/docker/{ID2}"),
            ctr(ID2, d, None, None),
        );
        check(
            &format!("/system.slice/docker-{ID}.scope/system.slice/docker-{ID2}.scope"),
            ctr(ID2, d, None, None),
        );
        // systemd inside the container: its units, but still that container.
        check(
            &format!("/system.slice/docker-{ID}.scope/system.slice/sshd.service"),
            ctr(ID, d, None, Some("sshd.service")),
        );
        // Rootless docker under the user's manager.
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
            ctr(ID, d, None, Some("user@1000.service")),
        );
    }

    #[test]
    fn containerd_and_crio_with_the_systemd_driver() {
        let base = "/kubepods.slice/kubepods-burstable.slice";
        check(
            &format!("{base}/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            ctr(ID, Some(CONTAINERD), Some(UID), None),
        );
        check(
            &format!("{base}/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"),
            ctr(ID, Some(CRIO), Some(UID), None),
        );
        // conmon is CRI-O's monitor, in the pod but not the container.
        check(
            &format!("{base}/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            pod(UID, Some(&format!("crio-conmon-{ID}.scope"))),
        );
        // The pod's own slice, and a container without a pod (nerdctl-style scope names).
        check(
            &format!("{base}/kubepods-burstable-pod{UID_}.slice"),
            pod(UID, None),
        );
        check(
            &format!("/system.slice/cri-containerd-{ID}.scope"),
            ctr(ID, Some(CONTAINERD), None, None),
        );
    }

    #[test]
    fn pod_qos_classes() {
        for (slices, uid, uid_) in [
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable",
                UID,
                UID_,
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort",
                UID,
                UID_,
            ),
            ("/kubepods.slice/kubepods", UID, UID_),
            ("/kubepods.slice/kubepods", STATIC_UID, STATIC_UID),
        ] {
            check(
                &format!("{slices}-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                ctr(ID, Some(CONTAINERD), Some(uid), None),
            );
        }
    }

    #[test]
    fn podman() {
        let p = Some(PODMAN);
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            ctr(ID, p, None, None),
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            ctr(ID, p, None, None),
        );
        check(
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            unit(&format!("libpod-conmon-{ID}.scope")),
        );
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            ctr(ID, p, None, None),
        );
        check(
            &format!("/libpod_parent/libpod-conmon-{ID}"),
            Shape::default(),
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            ctr(ID, p, None, Some("user@1000.service")),
        );
    }

    #[test]
    fn cgroupfs_driver_pods() {
        for qos in ["/burstable", "/besteffort", ""] {
            check(
                &format!("/kubepods{qos}/pod{UID}/{ID}"),
                ctr(ID, None, Some(UID), None),
            );
            check(
                &format!("/kubepods{qos}/pod{UID}/crio-{ID}"),
                ctr(ID, Some(CRIO), Some(UID), None),
            );
            check(&format!("/kubepods{qos}/pod{UID}"), pod(UID, None));
            check(
                &format!("/kubepods{qos}/pod{UID}/crio-conmon-{ID}"),
                pod(UID, None),
            );
        }
        check(
            &format!("/kubepods/pod{STATIC_UID}/{ID}"),
            ctr(ID, None, Some(STATIC_UID), None),
        );
        // Under a cgroup root of the kubelet's own.
        check(
            &format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"),
            ctr(ID, None, Some(UID), None),
        );
        // Docker inside a pod's container: the inner container, still in that pod.
        check(
            &format!("/kubepods/burstable/pod{UID}/{ID}/docker/{ID2}"),
            ctr(ID2, Some(DOCKER), Some(UID), None),
        );
    }

    #[test]
    fn kind_nodes_are_the_outer_container() {
        let node = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
        );
        check(
            &format!(
                "{node}/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID2}.scope"
            ),
            ctr(ID2, Some(CONTAINERD), Some(UID), None),
        );
        // The pod's slice: in the pod, not in the node's container.
        check(
            &format!("{node}/kubelet-kubepods-besteffort-pod{UID_}.slice"),
            pod(UID, None),
        );
        // The node's kubelet: the node's container.
        check(
            &format!("/system.slice/docker-{ID}.scope/system.slice/kubelet.service"),
            ctr(ID, Some(DOCKER), None, Some("kubelet.service")),
        );
    }

    #[test]
    fn malformed_container_ids_are_not_ids() {
        let short = &ID[..12];
        let upper = ID.to_uppercase();
        let long = format!("{ID}0");
        let bad = [
            format!("/system.slice/docker-{}.scope", &ID[..63]),
            format!("/system.slice/docker-{long}.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            format!("/system.slice/docker-{ID}.scope.bak"),
            format!("/system.slice/docker-{ID}-1.scope"),
            format!("/system.slice/docker-{ID}.slice"),
            format!("/system.slice/docker{ID}.scope"),
            format!("/system.slice/podman-{ID}.scope"),
            format!("/system.slice/{ID}.scope"),
            format!("/docker/{short}"),
            format!("/docker/{upper}"),
            format!("/docker/{ID}x"),
            format!("/docker/sub/{ID}"),
            format!("/{ID}"),
            format!("/libpod_parent/{ID}"),
            format!("/kubepods/burstable/{ID}"),
            format!("/kubepods/burstable/pod{UID}/cri-containerd-{ID}"),
            format!("/system.slice/docker-{}g.scope", &ID[..63]),
            format!("/system.slice/docker-{}é.scope", &ID[..62]),
        ];
        for p in &bad {
            assert_eq!(parse(p).container_id, None, "{p}");
            assert_eq!(parse(p).runtime, None, "{p}");
        }
        // A scope that is no container's is still a scope: a unit, with its name as it is.
        assert_eq!(
            parse(&format!("/system.slice/docker-{short}.scope")).unit,
            Some(format!("docker-{short}.scope"))
        );
    }

    #[test]
    fn malformed_pods_are_not_pods() {
        let bad = [
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podxyz.slice".to_owned(),
            format!("/kubepods.slice/kubepods-burstable-pod{UID}.slice"),
            format!("/kubepods.slice/kubepods-burstable-pod{UID_}_x.slice"),
            format!(
                "/kubepods.slice/kubepods-burstable-pod{}.slice",
                UID_.to_uppercase()
            ),
            format!("/kubepods.slice/kubepods-weird-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepodsx-burstable-pod{UID_}.slice"),
            format!("/kubepods.slice/mykubepods-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepods-burstable-pod{UID_}.scope"),
            "/kubepods.slice/kubepods-burstable-pod.slice".to_owned(),
            format!("/kubepods/burstable/pod{UID}x/{ID}"),
            format!("/kubepods/burstable/pod{}/{ID}", &UID[..35]),
            format!("/kubepods/weird/pod{UID}/{ID}"),
            format!("/notkube/burstable/pod{UID}/{ID}"),
            format!("/kubepods/burstable/sub/pod{UID}/{ID}"),
            format!("/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID_}/{ID}"),
        ];
        for p in &bad {
            let s = parse(p);
            assert_eq!(s.pod_uid, None, "{p}");
            assert_eq!(s.container_id, None, "{p}");
        }
    }

    #[test]
    fn ids_and_uids() {
        assert!(is_container_id(ID));
        assert!(!is_container_id(&ID.to_uppercase()));
        assert!(!is_container_id(""));
        assert!(is_pod_uid(UID));
        assert!(is_pod_uid(STATIC_UID));
        assert!(!is_pod_uid(UID_));
        assert!(!is_pod_uid(&UID.to_uppercase()));
        assert!(!is_pod_uid("6a1b2c3d4-e5f-4a6b-8c7d-0e1f2a3b4c5d"));
        assert!(!is_pod_uid(&STATIC_UID[..31]));
        assert!(!is_pod_uid("ééééééééééééééééé-é"));
    }

    proptest::proptest! {
        // A failure prints its smallest input; no regression file is written into the tree.
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Any path, in particular non-ASCII and half-right ones: no panic, and whatever is
        /// found is well-formed and stands in the path.
        #[test]
        fn any_path_is_safe(
            path in "(/(kubepods|burstable|docker|libpod_parent|pod|[a-f0-9_-]{0,70}|.{0,8})(\\.scope|\\.slice|\\.service)?){0,6}",
        ) {
            let s = parse(&path);
            if let Some(id) = &s.container_id {
                proptest::prop_assert!(is_container_id(id) && path.contains(id.as_str()));
            }
            if let Some(uid) = &s.pod_uid {
                proptest::prop_assert!(is_pod_uid(uid));
            }
            if let Some(unit) = &s.unit {
                proptest::prop_assert!(path.contains(unit.as_str()));
            }
        }
    }
}
