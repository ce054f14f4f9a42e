//! Root integration test of workload names on events: server processes moved into a
//! docker-shaped and a pod-shaped cgroup (made under this host's cgroup v2 mount, with the pod's
//! log directory in a temporary --pods-dir), traced as JSON Lines in a fresh network namespace.
mod common;

use std::{fs, net::TcpStream, os::unix::fs::MetadataExt, path::Path};

use common::{
    TempDir,
    cgroups::{TestCgroup, mount_or_skip, pod_log_dir},
    report_json, root_or_skip,
    server::Server,
    trace_in_new_netns,
};
use serde_json::Value;

const ID: &str = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa00112233445566778899";
const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const UID_: &str = "6a1b2c3d_4e5f_4a6b_8c7d_0e1f2a3b4c5d";

/// Entry point of the server process: does nothing in a normal test run.
#[test]
fn server_process_entry_point() {
    common::server::entry_point();
}

/// Starts a server in the cgroup at `dir`, listens, has one connection accepted; its port.
fn serve_once_in(dir: &Path) -> u16 {
    let mut server = Server::start(None);
    fs::write(dir.join("cgroup.procs"), server.pid().to_string())
        .unwrap_or_else(|e| panic!("moving the server into {}: {e}", dir.display()));
    let port = server.listen("127.0.0.1:0");
    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    server.ask("accept 1");
    server.stop();
    port
}

/// The events of `kind` on the listening `port`.
fn on_port<'a>(events: &'a [Value], kind: &str, port: u16) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["local_port"] == u64::from(port))
        .collect()
}

#[test]
fn listen_and_accept_events_name_the_container_and_the_pod() {
    if !root_or_skip("listen_and_accept_events_name_the_container_and_the_pod") {
        return;
    }
    let Some(mount) = mount_or_skip("listen_and_accept_events_name_the_container_and_the_pod")
    else {
        return;
    };
    // Made before sockwatch starts: its first walk of the hierarchy finds them.
    let cgroups = TestCgroup::new(&mount, "events");
    let docker_rel = format!("system.slice/docker-{ID}.scope");
    let (docker_dir, _) = cgroups.make(&docker_rel);
    let docker_path = cgroups.cgroup_path(&docker_rel);
    let pod_rel = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID2}.scope"
    );
    let (pod_dir, _) = cgroups.make(&pod_rel);
    let pod_path = cgroups.cgroup_path(&pod_rel);
    let pods = TempDir::new("pods");
    pod_log_dir(pods.path(), "shop", "web-0", UID);
    let pods_dir = pods.path().to_string_lossy().into_owned();
    assert!(
        fs::metadata(&docker_dir).unwrap().ino() != fs::metadata(&pod_dir).unwrap().ino(),
        "two cgroups"
    );

    let (t, (docker_port, pod_port)) = trace_in_new_netns(&["--pods-dir", &pods_dir], || {
        (serve_once_in(&docker_dir), serve_once_in(&pod_dir))
    });

    let cases = [
        (
            "docker",
            docker_port,
            docker_path.as_str(),
            Value::from(ID),
            Value::Null,
            Value::Null,
            Value::Null,
        ),
        (
            "pod",
            pod_port,
            pod_path.as_str(),
            Value::from(ID2),
            Value::from(UID),
            Value::from("shop"),
            Value::from("web-0"),
        ),
    ];
    for (what, port, path, container, uid, namespace, pod) in cases {
        for kind in ["listen", "accept"] {
            let events = on_port(&t.events, kind, port);
            assert_eq!(
                events.len(),
                1,
                "{what}: one {kind} on {port}: {:#?}",
                t.events
            );
            let e = events[0];
            assert_eq!(e["cgroup"], path, "{what} {kind}: {e}");
            assert_eq!(e["container_id"], container, "{what} {kind}: {e}");
            assert_eq!(e["pod_uid"], uid, "{what} {kind}: {e}");
            assert_eq!(e["pod_namespace"], namespace, "{what} {kind}: {e}");
            assert_eq!(e["pod"], pod, "{what} {kind}: {e}");
        }
    }
    // The test's own connections: its cgroup is neither a container's nor a pod's.
    for e in t.of_kind("connect") {
        assert_eq!(e["container_id"], Value::Null, "{e}");
        assert_eq!(e["pod"], Value::Null, "{e}");
    }

    // `report` names each listener's workload from the recorded keys.
    let recording = TempDir::new("recording");
    let file = recording.path().join("events.jsonl");
    fs::write(&file, &t.raw).expect("write the recording");
    let summary = report_json(&file);
    let listeners = summary["listeners"].as_array().expect("listeners");
    let row = |port: u16| {
        listeners
            .iter()
            .find(|l| l["netns"] == t.netns && l["port"] == u64::from(port))
            .unwrap_or_else(|| panic!("no listener {port}: {summary:#}"))
    };
    let docker = row(docker_port);
    assert_eq!(docker["workload"], &ID[..12], "{docker}");
    assert_eq!(docker["container_id"], ID, "{docker}");
    assert_eq!(docker["cgroup"], docker_path.as_str(), "{docker}");
    let pod = row(pod_port);
    assert_eq!(pod["workload"], "shop/web-0", "{pod}");
    assert_eq!(pod["pod_namespace"], "shop", "{pod}");
    assert_eq!(pod["pod"], "web-0", "{pod}");
    assert_eq!(pod["container_id"], ID2, "{pod}");
}

/// The ports of the servers of `dirs` (one each, in order) that events in `t` name.
fn ports_seen(events: &[Value], ports: &[u16]) -> Vec<u16> {
    ports
        .iter()
        .copied()
        .filter(|&p| events.iter().any(|e| e["local_port"] == u64::from(p)))
        .collect()
}

#[test]
fn workload_filters_keep_only_that_workload() {
    if !root_or_skip("workload_filters_keep_only_that_workload") {
        return;
    }
    let Some(mount) = mount_or_skip("workload_filters_keep_only_that_workload") else {
        return;
    };
    const UID2: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";
    const UID2_: &str = "0f1e2d3c_4b5a_4968_8776_655443322110";
    const ID3: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let cgroups = TestCgroup::new(&mount, "filters");
    let (docker, _) = cgroups.make(&format!("system.slice/docker-{ID}.scope"));
    let (shop, _) = cgroups.make(&format!(
        "kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID2}.scope"
    ));
    let (dev, _) = cgroups.make(&format!(
        "kubepods.slice/kubepods-pod{UID2_}.slice/cri-containerd-{ID3}.scope"
    ));
    let pods = TempDir::new("filter-pods");
    pod_log_dir(pods.path(), "shop", "web-0", UID);
    pod_log_dir(pods.path(), "dev", "web-0", UID2);
    let pods_dir = pods.path().to_string_lossy().into_owned();

    let run = |filter: &[&str]| {
        let mut args = vec!["--pods-dir", pods_dir.as_str()];
        args.extend_from_slice(filter);
        let (t, ports) =
            trace_in_new_netns(&args, || [&docker, &shop, &dev].map(|d| serve_once_in(d)));
        let seen = ports_seen(&t.events, &ports);
        (seen, ports)
    };
    // One pod: its slice, filtered in the kernel.
    let (seen, [_, shop_port, _]) = run(&["--pod", "shop/web-0"]);
    assert_eq!(seen, [shop_port]);
    // A name in two namespaces: filtered by sockwatch, both kept.
    let (seen, [_, shop_port, dev_port]) = run(&["--pod", "web-0"]);
    assert_eq!(seen, [shop_port, dev_port]);
    // A container by its short id.
    let (seen, [docker_port, _, _]) = run(&["--container", &ID[..12]]);
    assert_eq!(seen, [docker_port]);

    // Nothing by that name: a one-line error before anything is traced.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args([
            "trace",
            "--pods-dir",
            &pods_dir,
            "--pod",
            "shop/nobody",
            "--duration",
            "1",
        ])
        .output()
        .expect("run sockwatch");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "sockwatch: error: --pod shop/nobody: no cgroup on this host belongs to it (pods are named \
             from {pods_dir}; see docs/usage.md#workloads)"
        ),
        "{stderr}"
    );
}

#[test]
fn top_names_the_pod_and_outlives_its_cgroup() {
    if !root_or_skip("top_names_the_pod_and_outlives_its_cgroup") {
        return;
    }
    let Some(mount) = mount_or_skip("top_names_the_pod_and_outlives_its_cgroup") else {
        return;
    };
    let cgroups = TestCgroup::new(&mount, "gone");
    let pod_rel = format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID2}.scope");
    let (pod_dir, _) = cgroups.make(&pod_rel);
    let pods = TempDir::new("pods-gone");
    pod_log_dir(pods.path(), "shop", "web-0", UID);
    let pods_dir = pods.path().to_string_lossy().into_owned();
    let args = [common::TOP_JSON, &["--pods-dir", &pods_dir]].concat();
    let (t, stdout, port) = common::run_in_new_netns(&args, libc::SIGTERM, |_| {
        let mut server = Server::start(None);
        fs::write(pod_dir.join("cgroup.procs"), server.pid().to_string())
            .expect("move the server into the pod's cgroup");
        let port = server.listen("127.0.0.1:0");
        // A connection open while the pod's cgroup goes away.
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        fs::write(cgroups.dir.join("cgroup.procs"), server.pid().to_string())
            .expect("move the server out");
        for rel in [
            pod_rel.as_str(),
            &format!("kubepods.slice/kubepods-pod{UID_}.slice"),
            "kubepods.slice",
        ] {
            fs::remove_dir(cgroups.dir.join(rel)).expect("remove the pod's cgroup");
        }
        drop(client);
        server.ask("accept 1");
        server.stop();
        port
    });
    let live: Value = serde_json::from_str(&stdout).expect("live summary JSON");
    let l = live["listeners"]
        .as_array()
        .and_then(|ls| {
            ls.iter()
                .find(|l| l["netns"] == t.netns && l["port"] == u64::from(port))
        })
        .unwrap_or_else(|| panic!("no listener {port}: {live:#}"));
    // Named from its listen event, when the pod's cgroup was there.
    assert_eq!(l["workload"], "shop/web-0", "{l}");
    assert_eq!(l["accepted"], 1, "{l}");
    // The listener's last event comes after its cgroup is gone: still named, as gone.
    let stop = on_port(&t.events, "listen_stop", port);
    assert_eq!(stop.len(), 1, "{:#?}", t.events);
    assert_eq!(stop[0]["pod"], "web-0", "{}", stop[0]);
}
