//! The exposition: the last [`Snapshot`] and sockwatch's own CPU and memory, encoded at each
//! scrape as OpenMetrics text (which Prometheus reads) by prometheus-client.
use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::metrics::{LATENCY_BOUNDS_S, LatencyRow, MAX_SERIES, Snapshot};

/// The Content-Type of [`Exposition::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// sockwatch's own resource use, read at each scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl ProcessStats {
    /// This process's user+system CPU time and resident set, from /proc/self/stat.
    pub fn own() -> Option<Self> {
        use procfs::WithCurrentSystemInfo as _;
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        let ticks = procfs::ticks_per_second();
        Some(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks.max(1) as f64,
            resident_bytes: stat.rss_bytes().get(),
        })
    }
}

/// Where the session puts each interval's snapshot and the server reads it.
pub type Shared = Arc<Mutex<Option<Snapshot>>>;

/// The registry a scrape encodes.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// `process` is called at each scrape ([`ProcessStats::own`] outside tests).
    pub fn new(shared: Shared, process: fn() -> Option<ProcessStats>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector { shared, process }));
        Self { registry }
    }

    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    shared: Shared,
    process: fn() -> Option<ProcessStats>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        {
            // A panic elsewhere cannot leave a snapshot half-written: it is replaced whole.
            let snap = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            // Before the first interval there is nothing to show but the process.
            if let Some(snap) = snap.as_ref() {
                encode_snapshot(snap, &mut enc)?;
            }
        }
        if let Some(p) = (self.process)() {
            ConstCounter::new(p.cpu_seconds).encode(enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time sockwatch has used.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            ConstGauge::new(p.resident_bytes as i64).encode(enc.encode_descriptor(
                "process_resident_memory",
                "sockwatch's resident memory size.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// One histogram family (seconds, with the bounds of [`LATENCY_BOUNDS_S`]).
fn histograms<'a, L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, &'a LatencyRow)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in samples {
        // The encoder wants each bucket's own count; it writes them cumulated.
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_S.len() + 1);
        let mut before = 0;
        for (bound, below) in LATENCY_BOUNDS_S.iter().zip(h.below) {
            buckets.push((*bound, below.saturating_sub(before)));
            before = below;
        }
        buckets.push((f64::INFINITY, h.count.saturating_sub(before)));
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum_ns as f64 / 1e9,
            h.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// One metric family: its HELP and TYPE, then one sample per label set.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let fm = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(fm)?,
            // Gauges here are counts of sockets: far below i64::MAX.
            _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(fm)?,
        }
    }
    Ok(())
}

fn encode_snapshot(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let listener = |l: &'_ crate::metrics::ListenerRow| {
        [
            ("netns", l.netns.clone()),
            ("port", l.port.clone()),
            ("comm", l.comm.clone()),
            ("workload", l.workload.clone()),
        ]
    };
    let ls = &s.listeners;
    family(
        enc,
        "sockwatch_listener_accepted",
        "Connections accepted on the listening port.",
        Counter,
        ls.iter().map(|l| (listener(l), l.accepted)),
    )?;
    family(
        enc,
        "sockwatch_listener_closed",
        "Accepted connections closed.",
        Counter,
        ls.iter().map(|l| (listener(l), l.closed)),
    )?;
    family(
        enc,
        "sockwatch_listener_established",
        "Accepted connections open now (including those open when sockwatch started).",
        Gauge,
        ls.iter().map(|l| (listener(l), l.established)),
    )?;
    family(
        enc,
        "sockwatch_listener_accept_failures",
        "accept() failures on the listening port, by errno (EMFILE, ENFILE, ...).",
        Counter,
        ls.iter().flat_map(|l| {
            l.accept_failures.iter().map(move |(errno, n)| {
                let mut labels = listener(l).to_vec();
                labels.push(("errno", errno.clone()));
                (labels, *n)
            })
        }),
    )?;
    family(
        enc,
        "sockwatch_listener_overflows",
        "Connections dropped because the accept queue was full.",
        Counter,
        ls.iter().map(|l| (listener(l), l.overflows)),
    )?;
    family(
        enc,
        "sockwatch_listener_queue_depth",
        "Connections waiting in the accept queue at the last sample.",
        Gauge,
        ls.iter()
            .filter_map(|l| l.queue.map(|(d, _)| (listener(l), u64::from(d)))),
    )?;
    family(
        enc,
        "sockwatch_listener_backlog",
        "The listener's backlog (the queue holds backlog+1 connections when full).",
        Gauge,
        ls.iter()
            .filter_map(|l| l.queue.map(|(_, b)| (listener(l), u64::from(b)))),
    )?;

    histograms(
        enc,
        "sockwatch_listener_queue_wait",
        "How long accepted connections waited in the accept queue (arrival to accept()).",
        ls.iter().map(|l| (listener(l), &l.queue_wait)),
    )?;
    family(
        enc,
        "sockwatch_listener_received_bytes",
        "Data bytes received on the port's closed connections.",
        Counter,
        ls.iter().map(|l| (listener(l), l.bytes_in)),
    )?;
    family(
        enc,
        "sockwatch_listener_sent_bytes",
        "Data bytes sent (and acknowledged) on the port's closed connections.",
        Counter,
        ls.iter().map(|l| (listener(l), l.bytes_out)),
    )?;
    family(
        enc,
        "sockwatch_listener_retransmits",
        "Segments retransmitted on the port's closed connections.",
        Counter,
        ls.iter().map(|l| (listener(l), l.retransmits)),
    )?;

    let outbound = |o: &'_ crate::metrics::OutboundRow| {
        [
            ("netns", o.netns.clone()),
            ("remote_port", o.remote_port.clone()),
        ]
    };
    let os = &s.outbound;
    family(
        enc,
        "sockwatch_outbound_connects",
        "Outbound connection attempts, by remote port.",
        Counter,
        os.iter().map(|o| (outbound(o), o.connects)),
    )?;
    family(
        enc,
        "sockwatch_outbound_established",
        "Outbound connections that completed the handshake.",
        Counter,
        os.iter().map(|o| (outbound(o), o.established)),
    )?;
    family(
        enc,
        "sockwatch_outbound_failures",
        "Outbound connections that failed, by reason (refused, timeout, unreachable, ...).",
        Counter,
        os.iter().flat_map(|o| {
            o.failures.iter().map(move |(reason, n)| {
                let mut labels = outbound(o).to_vec();
                labels.push(("reason", reason.clone()));
                (labels, *n)
            })
        }),
    )?;
    family(
        enc,
        "sockwatch_outbound_open",
        "Outbound connections open now.",
        Gauge,
        os.iter().map(|o| (outbound(o), o.open)),
    )?;

    histograms(
        enc,
        "sockwatch_outbound_handshake",
        "Handshake time of outbound connections (connect() to ESTABLISHED, SYN retries included).",
        os.iter().map(|o| (outbound(o), &o.handshake)),
    )?;
    family(
        enc,
        "sockwatch_outbound_received_bytes",
        "Data bytes received on closed outbound connections, by remote port.",
        Counter,
        os.iter().map(|o| (outbound(o), o.bytes_in)),
    )?;
    family(
        enc,
        "sockwatch_outbound_sent_bytes",
        "Data bytes sent (and acknowledged) on closed outbound connections, by remote port.",
        Counter,
        os.iter().map(|o| (outbound(o), o.bytes_out)),
    )?;
    family(
        enc,
        "sockwatch_outbound_retransmits",
        "Segments retransmitted on closed outbound connections, by remote port.",
        Counter,
        os.iter().map(|o| (outbound(o), o.retransmits)),
    )?;

    let ns = &s.namespaces;
    let netns = |n: &'_ crate::metrics::NamespaceRow| [("netns", n.netns.clone())];
    family(
        enc,
        "sockwatch_netns_listen_overflows",
        "The namespace's TcpExt ListenOverflows since sockwatch started.",
        Counter,
        ns.iter().map(|n| (netns(n), n.listen_overflows)),
    )?;
    family(
        enc,
        "sockwatch_netns_listen_drops",
        "The namespace's TcpExt ListenDrops since sockwatch started.",
        Counter,
        ns.iter().map(|n| (netns(n), n.listen_drops)),
    )?;
    family(
        enc,
        "sockwatch_netns_unattributed_overflows",
        "Listen overflows no single listener of the namespace could be blamed for.",
        Counter,
        ns.iter().map(|n| (netns(n), n.unattributed_overflows)),
    )?;

    family(
        enc,
        "sockwatch_metrics_unlisted",
        &format!(
            "Entries summed into the entry labelled other: each table lists at most {MAX_SERIES}.",
        ),
        Gauge,
        [
            ("listeners", s.unlisted.listeners),
            ("outbound", s.unlisted.outbound),
            ("namespaces", s.unlisted.namespaces),
        ]
        .map(|(table, n)| ([("table", table)], n)),
    )?;
    ConstCounter::new(s.events).encode(enc.encode_descriptor(
        "sockwatch_events",
        "Connection events aggregated (after filters).",
        None,
        Counter,
    )?)?;
    family(
        enc,
        "sockwatch_lost_events",
        "Events lost, by cause (evictions are counted at exit only).",
        Counter,
        s.loss.fields().map(|(cause, n)| ([("cause", cause)], n)),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        kernel::loss::Loss,
        metrics::{ListenerRow, NamespaceRow, OutboundRow, Unlisted},
    };

    fn stats() -> Option<ProcessStats> {
        Some(ProcessStats {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
        })
    }

    fn render(snap: Option<Snapshot>) -> String {
        Exposition::new(Arc::new(Mutex::new(snap)), stats)
            .render()
            .expect("render")
    }

    #[test]
    fn hand_made_snapshot_renders_exactly() {
        let snap = Snapshot {
            listeners: vec![ListenerRow {
                netns: "4026531840".into(),
                port: "8080".into(),
                comm: "we\"b\\srv\nx".into(),
                workload: "shop/web-0".into(),
                accepted: 12,
                closed: 10,
                established: 2,
                accept_failures: BTreeMap::from([("EMFILE".into(), 3)]),
                overflows: 1,
                queue: Some((5, 128)),
                queue_wait: LatencyRow {
                    below: [0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3],
                    count: 4,
                    sum_ns: 31_500_000_000,
                },
                bytes_in: 1000,
                bytes_out: 2000,
                retransmits: 3,
            }],
            outbound: vec![OutboundRow {
                netns: "4026531840".into(),
                remote_port: "5432".into(),
                connects: 4,
                established: 3,
                failures: BTreeMap::from([("refused".into(), 1)]),
                open: 2,
                ..Default::default()
            }],
            namespaces: vec![NamespaceRow {
                netns: "4026531840".into(),
                listen_overflows: 7,
                listen_drops: 8,
                unattributed_overflows: 0,
            }],
            unlisted: Unlisted {
                listeners: 0,
                outbound: 1,
                namespaces: 0,
            },
            events: 42,
            loss: Loss {
                ringbuf_full: 5,
                ..Default::default()
            },
        };
        let l = r#"netns="4026531840",port="8080",comm="we\"b\\srv\nx",workload="shop/web-0""#;
        let o = r#"netns="4026531840",remote_port="5432""#;
        let expected = format!(
            "\
# HELP sockwatch_listener_accepted Connections accepted on the listening port.
# TYPE sockwatch_listener_accepted counter
sockwatch_listener_accepted_total{{{l}}} 12
# HELP sockwatch_listener_closed Accepted connections closed.
# TYPE sockwatch_listener_closed counter
sockwatch_listener_closed_total{{{l}}} 10
# HELP sockwatch_listener_established Accepted connections open now (including those open when sockwatch started).
# TYPE sockwatch_listener_established gauge
sockwatch_listener_established{{{l}}} 2
# HELP sockwatch_listener_accept_failures accept() failures on the listening port, by errno (EMFILE, ENFILE, ...).
# TYPE sockwatch_listener_accept_failures counter
sockwatch_listener_accept_failures_total{{{l},errno=\"EMFILE\"}} 3
# HELP sockwatch_listener_overflows Connections dropped because the accept queue was full.
# TYPE sockwatch_listener_overflows counter
sockwatch_listener_overflows_total{{{l}}} 1
# HELP sockwatch_listener_queue_depth Connections waiting in the accept queue at the last sample.
# TYPE sockwatch_listener_queue_depth gauge
sockwatch_listener_queue_depth{{{l}}} 5
# HELP sockwatch_listener_backlog The listener's backlog (the queue holds backlog+1 connections when full).
# TYPE sockwatch_listener_backlog gauge
sockwatch_listener_backlog{{{l}}} 128
# HELP sockwatch_listener_queue_wait_seconds How long accepted connections waited in the accept queue (arrival to accept()).
# TYPE sockwatch_listener_queue_wait_seconds histogram
# UNIT sockwatch_listener_queue_wait_seconds seconds
sockwatch_listener_queue_wait_seconds_sum{{{l}}} 31.5
sockwatch_listener_queue_wait_seconds_count{{{l}}} 4
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.0001\",{l}}} 0
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.0005\",{l}}} 0
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.001\",{l}}} 1
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.005\",{l}}} 2
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.01\",{l}}} 2
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.05\",{l}}} 2
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.1\",{l}}} 2
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.25\",{l}}} 2
sockwatch_listener_queue_wait_seconds_bucket{{le=\"0.5\",{l}}} 3
sockwatch_listener_queue_wait_seconds_bucket{{le=\"1.0\",{l}}} 3
sockwatch_listener_queue_wait_seconds_bucket{{le=\"2.5\",{l}}} 3
sockwatch_listener_queue_wait_seconds_bucket{{le=\"5.0\",{l}}} 3
sockwatch_listener_queue_wait_seconds_bucket{{le=\"10.0\",{l}}} 3
sockwatch_listener_queue_wait_seconds_bucket{{le=\"+Inf\",{l}}} 4
# HELP sockwatch_listener_received_bytes Data bytes received on the port's closed connections.
# TYPE sockwatch_listener_received_bytes counter
sockwatch_listener_received_bytes_total{{{l}}} 1000
# HELP sockwatch_listener_sent_bytes Data bytes sent (and acknowledged) on the port's closed connections.
# TYPE sockwatch_listener_sent_bytes counter
sockwatch_listener_sent_bytes_total{{{l}}} 2000
# HELP sockwatch_listener_retransmits Segments retransmitted on the port's closed connections.
# TYPE sockwatch_listener_retransmits counter
sockwatch_listener_retransmits_total{{{l}}} 3
# HELP sockwatch_outbound_connects Outbound connection attempts, by remote port.
# TYPE sockwatch_outbound_connects counter
sockwatch_outbound_connects_total{{{o}}} 4
# HELP sockwatch_outbound_established Outbound connections that completed the handshake.
# TYPE sockwatch_outbound_established counter
sockwatch_outbound_established_total{{{o}}} 3
# HELP sockwatch_outbound_failures Outbound connections that failed, by reason (refused, timeout, unreachable, ...).
# TYPE sockwatch_outbound_failures counter
sockwatch_outbound_failures_total{{{o},reason=\"refused\"}} 1
# HELP sockwatch_outbound_open Outbound connections open now.
# TYPE sockwatch_outbound_open gauge
sockwatch_outbound_open{{{o}}} 2
# HELP sockwatch_outbound_handshake_seconds Handshake time of outbound connections (connect() to ESTABLISHED, SYN retries included).
# TYPE sockwatch_outbound_handshake_seconds histogram
# UNIT sockwatch_outbound_handshake_seconds seconds
sockwatch_outbound_handshake_seconds_sum{{{o}}} 0.0
sockwatch_outbound_handshake_seconds_count{{{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.0001\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.0005\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.001\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.005\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.01\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.05\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.1\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.25\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"0.5\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"1.0\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"2.5\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"5.0\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"10.0\",{o}}} 0
sockwatch_outbound_handshake_seconds_bucket{{le=\"+Inf\",{o}}} 0
# HELP sockwatch_outbound_received_bytes Data bytes received on closed outbound connections, by remote port.
# TYPE sockwatch_outbound_received_bytes counter
sockwatch_outbound_received_bytes_total{{{o}}} 0
# HELP sockwatch_outbound_sent_bytes Data bytes sent (and acknowledged) on closed outbound connections, by remote port.
# TYPE sockwatch_outbound_sent_bytes counter
sockwatch_outbound_sent_bytes_total{{{o}}} 0
# HELP sockwatch_outbound_retransmits Segments retransmitted on closed outbound connections, by remote port.
# TYPE sockwatch_outbound_retransmits counter
sockwatch_outbound_retransmits_total{{{o}}} 0
# HELP sockwatch_netns_listen_overflows The namespace's TcpExt ListenOverflows since sockwatch started.
# TYPE sockwatch_netns_listen_overflows counter
sockwatch_netns_listen_overflows_total{{netns=\"4026531840\"}} 7
# HELP sockwatch_netns_listen_drops The namespace's TcpExt ListenDrops since sockwatch started.
# TYPE sockwatch_netns_listen_drops counter
sockwatch_netns_listen_drops_total{{netns=\"4026531840\"}} 8
# HELP sockwatch_netns_unattributed_overflows Listen overflows no single listener of the namespace could be blamed for.
# TYPE sockwatch_netns_unattributed_overflows counter
sockwatch_netns_unattributed_overflows_total{{netns=\"4026531840\"}} 0
# HELP sockwatch_metrics_unlisted Entries summed into the entry labelled other: each table lists at most 100.
# TYPE sockwatch_metrics_unlisted gauge
sockwatch_metrics_unlisted{{table=\"listeners\"}} 0
sockwatch_metrics_unlisted{{table=\"outbound\"}} 1
sockwatch_metrics_unlisted{{table=\"namespaces\"}} 0
# HELP sockwatch_events Connection events aggregated (after filters).
# TYPE sockwatch_events counter
sockwatch_events_total 42
# HELP sockwatch_lost_events Events lost, by cause (evictions are counted at exit only).
# TYPE sockwatch_lost_events counter
sockwatch_lost_events_total{{cause=\"ringbuf_full\"}} 5
sockwatch_lost_events_total{{cause=\"recursion_misses\"}} 0
sockwatch_lost_events_total{{cause=\"sock_map_full\"}} 0
sockwatch_lost_events_total{{cause=\"sock_map_evicted\"}} 0
sockwatch_lost_events_total{{cause=\"connect_lost\"}} 0
sockwatch_lost_events_total{{cause=\"read_failed\"}} 0
sockwatch_lost_events_total{{cause=\"decode_errors\"}} 0
sockwatch_lost_events_total{{cause=\"expired\"}} 0
sockwatch_lost_events_total{{cause=\"counts_full\"}} 0
# HELP process_cpu_seconds User and system CPU time sockwatch has used.
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
process_cpu_seconds_total 1.5
# HELP process_resident_memory_bytes sockwatch's resident memory size.
# TYPE process_resident_memory_bytes gauge
# UNIT process_resident_memory_bytes bytes
process_resident_memory_bytes 4096
# EOF
"
        );
        let got = render(Some(snap));
        assert_eq!(got, expected, "\n--- got ---\n{got}");
    }

    #[test]
    fn before_the_first_interval_only_the_process_is_shown() {
        let got = render(None);
        assert!(got.starts_with("# HELP process_cpu_seconds "), "{got}");
        assert!(!got.contains("sockwatch_"), "{got}");
        assert!(got.ends_with("# EOF\n"));
    }

    #[test]
    fn own_process_figures_are_plausible() {
        let p = ProcessStats::own().expect("/proc/self/stat");
        assert!(p.cpu_seconds >= 0.0);
        assert!(p.resident_bytes > 0);
    }
}
