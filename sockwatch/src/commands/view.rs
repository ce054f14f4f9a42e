//! The summary as text tables, for `top` and `report`.
use std::{collections::BTreeMap, fmt::Write as _};

use comfy_table::{Table, presets::NOTHING};

use crate::aggregate::{Summary, WorkloadSummary, capabilities};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// What a row's WORKLOAD cell shows: the workload's short name, else the command name.
fn workload(owner: &WorkloadSummary, comm: Option<&str>) -> String {
    opt(owner.workload.as_deref().or(comm))
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Nanoseconds as a short human duration.
pub fn duration(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 1_000_000 => format!("{:.0}us", ns as f64 / 1e3),
        Some(ns) if ns < 1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        Some(ns) => format!("{:.1}s", ns as f64 / 1e9),
    }
}

/// Bytes as a short human size (K, M, G: powers of 1024).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["", "K", "M", "G"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// One line naming what the kernel did not let the run see (the capabilities not available,
/// each with its note): `{whose}: listen_overflow_events (no TCP_LISTEN_OVERFLOW ...); ...`,
/// newline included. `None` when everything was available or nothing is known.
pub fn not_seen(
    caps: Option<&serde_json::Map<String, serde_json::Value>>,
    whose: &str,
) -> Option<String> {
    let missing: Vec<String> = capabilities::missing(caps?)
        .map(|(name, note)| match note {
            Some(note) => format!("{name} ({note})"),
            None => name.to_string(),
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    // A hand-edited note must not break the line.
    let line = crate::record::recordings::one_line(&missing.join("; "));
    Some(format!("{whose}: {line}\n"))
}

/// Renders the summary; `max_rows` bounds each table (busiest first).
pub fn render(s: &Summary, max_rows: usize) -> String {
    let mut out = String::new();
    let mut listeners = table(&[
        "NETNS",
        "PORT",
        "ADDR",
        "PID",
        "COMM",
        "ACCEPTED",
        "ACC/S",
        "EST",
        "CLOSED",
        "ACCEPT_ERR",
        "OVERFLOW",
        "QUEUE",
        "PEERS",
        "P50",
        "P99",
        // After the first columns: scripts that count columns find them where they were.
        "WORKLOAD",
        "QWAIT_P50",
        "QWAIT_P99",
        "IN",
        "OUT",
        "RETRANS",
    ]);
    for l in s.listeners.iter().take(max_rows) {
        listeners.add_row(vec![
            l.netns.to_string(),
            l.port.to_string(),
            opt(l.local_addr),
            opt(l.pid),
            opt(l.comm.as_deref()),
            l.accepted.to_string(),
            format!("{:.1}", l.accepted_per_sec),
            l.established_now.to_string(),
            l.closed.to_string(),
            counts(&l.accept_failures),
            l.overflows.to_string(),
            match (l.queue_depth, l.backlog) {
                (Some(d), Some(b)) => format!("{d}/{b}"),
                _ => "-".into(),
            },
            l.distinct_peers.to_string(),
            duration(l.lifetime_p50_ns),
            duration(l.lifetime_p99_ns),
            workload(&l.owner, l.comm.as_deref()),
            duration(l.queue_wait_p50_ns),
            duration(l.queue_wait_p99_ns),
            size(l.bytes_in),
            size(l.bytes_out),
            l.retransmits.to_string(),
        ]);
    }
    let _ = writeln!(out, "LISTENING PORTS\n{listeners}");

    let mut outbound = table(&[
        "NETNS",
        "REMOTE_PORT",
        "CONNECTS",
        "ESTABLISHED",
        "FAILED",
        "OPEN",
        "PROCESSES",
        "WORKLOAD",
        "HS_P50",
        "HS_P99",
        "IN",
        "OUT",
        "RETRANS",
    ]);
    for o in s.outbound.iter().take(max_rows) {
        let procs = o
            .processes
            .iter()
            .map(|p| {
                format!(
                    "{}/{}:{}{}",
                    opt(p.pid),
                    opt(p.comm.as_deref()),
                    p.open_now,
                    if p.leak_suspect { " LEAK?" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        // Each process's, once: the replicas of one workload are one name.
        let mut names: Vec<String> = o
            .processes
            .iter()
            .map(|p| workload(&p.owner, p.comm.as_deref()))
            .collect();
        names.sort();
        names.dedup();
        outbound.add_row(vec![
            o.netns.to_string(),
            o.peer_port.to_string(),
            o.connects.to_string(),
            o.established.to_string(),
            counts(&o.failed),
            o.open_now.to_string(),
            procs,
            names.join(" "),
            duration(o.handshake_p50_ns),
            duration(o.handshake_p99_ns),
            size(o.bytes_in),
            size(o.bytes_out),
            o.retransmits.to_string(),
        ]);
    }
    let _ = writeln!(out, "\nOUTBOUND (by remote port)\n{outbound}");

    if !s.namespaces.is_empty() {
        let mut ns = table(&["NETNS", "LISTEN_OVERFLOWS", "LISTEN_DROPS"]);
        for n in &s.namespaces {
            ns.add_row(vec![
                n.netns.to_string(),
                n.listen_overflows.to_string(),
                n.listen_drops.to_string(),
            ]);
        }
        let _ = writeln!(out, "\nNAMESPACES (TcpExt since start)\n{ns}");
    }
    let warned: Vec<_> = s.processes.iter().filter(|p| p.fd_warning).collect();
    if !warned.is_empty() {
        let mut fds = table(&["PID", "COMM", "OPEN_FDS", "LIMIT"]);
        for p in warned {
            fds.add_row(vec![
                p.pid.to_string(),
                opt(p.comm.as_deref()),
                p.open_fds.to_string(),
                p.fd_limit.to_string(),
            ]);
        }
        let _ = writeln!(
            out,
            "\nWARNING: near the open-file limit (\"too many open files\" ahead)\n{fds}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, FdSample};

    #[test]
    fn durations() {
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(1_500)), "2us");
        assert_eq!(duration(Some(2_500_000)), "2.5ms");
        assert_eq!(duration(Some(3_000_000_000)), "3.0s");
        assert_eq!(size(0), "0");
        assert_eq!(size(1023), "1023");
        assert_eq!(size(100_000), "97.7K");
        assert_eq!(size(3 << 30), "3.0G");
    }

    #[test]
    fn empty_and_warning_sections() {
        let mut a = Aggregator::new();
        let text = render(&a.summary(), 10);
        assert!(text.starts_with("LISTENING PORTS\n"));
        assert!(!text.contains("WARNING"));
        a.fds(&FdSample {
            time_ns: 0,
            pid: 42,
            comm: Some("srv"),
            open: 95,
            limit: 100,
        });
        let text = render(&a.summary(), 10);
        assert!(text.contains("WARNING: near the open-file limit"));
        assert!(text.contains("42") && text.contains("srv") && text.contains("95"));
    }

    #[test]
    fn workload_column_shows_the_short_name_else_the_command() {
        use crate::{aggregate::Obs, host::workload::Workload, kernel::decode::EventKind};
        let mut a = Aggregator::new();
        let listen = |port, comm| Obs {
            time_ns: 0,
            kind: EventKind::Listen,
            netns: 1,
            family: crate::kernel::decode::Family::Ipv4,
            local_addr: "0.0.0.0".parse().unwrap(),
            local_port: port,
            peer_addr: "0.0.0.0".parse().unwrap(),
            peer_port: 0,
            pid: Some(port.into()),
            comm: Some(comm),
            direction: None,
            duration_ns: None,
            errno: None,
            reason: None,
            tracked: true,
            handshake_ns: None,
            queue_wait_ns: None,
            carried: None,
        };
        a.event(&listen(8080, "nginx"));
        a.name_workload(
            &listen(8080, "nginx"),
            &Workload {
                pod_namespace: Some("shop".into()),
                pod: Some("web-0".into()),
                ..Workload::default()
            },
        );
        a.event(&listen(9090, "agent"));
        let text = render(&a.summary(), 10);
        let header: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        // WORKLOAD after the first columns, then the connection health's.
        let at = header.iter().position(|h| *h == "WORKLOAD").unwrap();
        assert_eq!(
            header[at..],
            ["WORKLOAD", "QWAIT_P50", "QWAIT_P99", "IN", "OUT", "RETRANS"]
        );
        let cell = |port: &str| {
            text.lines()
                .find(|l| l.split_whitespace().nth(1) == Some(port))
                .unwrap()
                .split_whitespace()
                .nth(at)
                .unwrap()
                .to_string()
        };
        assert_eq!(cell("8080"), "shop/web-0", "{text}");
        assert_eq!(cell("9090"), "agent", "{text}");
    }

    #[test]
    fn one_line_names_what_was_not_seen() {
        let caps = serde_json::json!({
            "accept_failures": {"available": true, "via": "syscall exit tracepoints"},
            "kernel_programs": {"available": true, "via": "hash maps", "note": "nothing is lost"},
            "listen_overflow_events": {
                "available": false,
                "via": "per-namespace TcpExt ListenOverflows only",
                "note": "no TCP_LISTEN_OVERFLOW drop reason (kernels after 6.12 have it)",
            },
            "recursion_misses": {"available": false},
            "sock_diag": {"available": false, "note": "edited\nby hand"},
        });
        assert_eq!(
            not_seen(caps.as_object(), "not seen on this kernel").as_deref(),
            Some(
                "not seen on this kernel: listen_overflow_events (no TCP_LISTEN_OVERFLOW drop \
                 reason (kernels after 6.12 have it)); recursion_misses; sock_diag (edited\\nby \
                 hand)\n"
            )
        );
        // Everything available (fallbacks with notes included), or nothing known: no line.
        let all = serde_json::json!({
            "kernel_programs": {"available": true, "note": "nothing is lost"},
        });
        assert_eq!(not_seen(all.as_object(), "x"), None);
        assert_eq!(not_seen(None, "x"), None);
    }
}
