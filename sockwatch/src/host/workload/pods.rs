//! Pod namespace and name from the kubelet's pod log directories, `<dir>/<namespace>_<name>_<uid>/`
//! (`/var/log/pods` by default): the one place on a node that ties a pod uid to its name
//! without asking the API server.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// uid -> pod, read from the log directory; read again when a uid is missing, at most once per
/// `every`, so that events from a pod without a log directory cannot cost a read each.
pub struct PodIndex {
    dir: PathBuf,
    every: Duration,
    pods: HashMap<String, PodName>,
    read_at: Option<Instant>,
}

impl PodIndex {
    pub fn new(dir: PathBuf, every: Duration) -> Self {
        Self {
            dir,
            every,
            pods: HashMap::new(),
            read_at: None,
        }
    }

    pub fn set_every(&mut self, every: Duration) {
        self.every = every;
    }

    /// The pod of `uid`, reading the directory again first if it is missing and due.
    pub fn lookup(&mut self, uid: &str, now: Instant) -> Option<&PodName> {
        let due = self
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if due && !self.pods.contains_key(uid) {
            self.read_at = Some(now);
            self.pods = read(&self.dir);
        }
        self.pods.get(uid)
    }
}

/// Every well-formed entry of `dir`. A missing or unreadable directory is an empty index: not a
/// Kubernetes node, or the directory is not mounted in sockwatch's container, so there is
/// nothing to name pods with, which is no error.
fn read(dir: &std::path::Path) -> HashMap<String, PodName> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            if !e.file_type().ok()?.is_dir() {
                return None;
            }
            let name = e.file_name();
            let (namespace, name, uid) = parse_dir_name(name.to_str()?)?;
            let pod = PodName {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            Some((uid.to_owned(), pod))
        })
        .collect()
}

/// `<namespace>_<name>_<uid>` -> (namespace, name, uid). Neither a namespace (a DNS label) nor a
/// pod name (a DNS subdomain) may contain `_`, so the name has exactly two; anything else, or a
/// part outside its character set, is not the kubelet's and says None.
pub fn parse_dir_name(dir: &str) -> Option<(&str, &str, &str)> {
    let (rest, uid) = dir.rsplit_once('_')?;
    let (namespace, name) = rest.split_once('_')?;
    let label = |s: &str, extra: &[u8], max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    };
    (label(namespace, b"-", 63) && label(name, b"-.", 253) && super::shape::is_pod_uid(uid))
        .then_some((namespace, name, uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    const STATIC_UID: &str = "d41d8cd98f00b204e9800998ecf8427e";

    #[test]
    fn dir_names() {
        assert_eq!(
            parse_dir_name(&format!("default_web-0_{UID}")),
            Some(("default", "web-0", UID))
        );
        assert_eq!(
            parse_dir_name(&format!("kube-system_coredns-5d78c9869d-x2k4p_{UID}")),
            Some(("kube-system", "coredns-5d78c9869d-x2k4p", UID))
        );
        assert_eq!(
            parse_dir_name(&format!(
                "kube-system_kube-apiserver-node1.example_{STATIC_UID}"
            )),
            Some(("kube-system", "kube-apiserver-node1.example", STATIC_UID))
        );
        for bad in [
            format!("ns_na_me_{UID}"),
            format!("ns__{UID}"),
            format!("_name_{UID}"),
            format!("ns_{UID}"),
            format!("ns_name_{UID}_"),
            format!("Default_web_{UID}"),
            format!("ns_Web_{UID}"),
            format!("n.s_web_{UID}"),
            format!("ns_we b_{UID}"),
            format!("ns_wéb_{UID}"),
            format!("{}_web_{UID}", "a".repeat(64)),
            "ns_name_notauid".to_owned(),
            format!("ns_name_{}", UID.to_uppercase()),
            "ns_name".to_owned(),
            String::new(),
            "___".to_owned(),
        ] {
            assert_eq!(parse_dir_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn index_reads_again_at_most_once_per_interval() {
        let dir = TestDir::new("workload-pods", "index");
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        std::fs::create_dir(dir.0.join(format!("default_web-0_{UID}"))).unwrap();
        dir.file(&format!("default_file_{STATIC_UID}"), b"not a directory");
        let mut index = PodIndex::new(dir.0.clone(), sec);
        let web = PodName {
            namespace: "default".into(),
            name: "web-0".into(),
        };
        assert_eq!(index.lookup(UID, t0), Some(&web));
        assert_eq!(index.lookup(STATIC_UID, t0), None);

        // A pod that appears is seen once the interval has passed, not before.
        std::fs::create_dir(dir.0.join(format!("kube-system_api_{STATIC_UID}"))).unwrap();
        std::fs::remove_file(dir.0.join(format!("default_file_{STATIC_UID}"))).unwrap();
        assert_eq!(index.lookup(STATIC_UID, t0 + sec / 2), None);
        assert_eq!(
            index.lookup(STATIC_UID, t0 + sec).map(|p| p.name.as_str()),
            Some("api")
        );
        // A found uid costs no read: a removed directory stays known until the next read.
        std::fs::remove_dir(dir.0.join(format!("default_web-0_{UID}"))).unwrap();
        assert_eq!(index.lookup(UID, t0 + 3 * sec), Some(&web));
    }

    #[test]
    fn missing_dir_is_an_empty_index() {
        let dir = TestDir::new("workload-pods", "missing");
        let mut index = PodIndex::new(dir.0.join("absent"), Duration::ZERO);
        assert_eq!(index.lookup(UID, Instant::now()), None);
    }
}
