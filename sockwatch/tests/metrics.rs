//! `--metrics`: real connections in a fresh network namespace, scraped over HTTP from that
//! namespace's loopback while sockwatch runs; and the errors a bad address gives.
mod common;

use std::{
    collections::BTreeMap,
    fs,
    net::{TcpListener, TcpStream},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use common::{root_or_skip, run_in_new_netns, wait_connections_settled};
use serde_json::Value;

/// Any port will do: sockwatch serves it inside the test's own, empty namespace.
const METRICS: &str = "127.0.0.1:9477";

/// One sample of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses OpenMetrics text: `name{k="v",...} value` lines; comments skipped.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, mut rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label");
            let mut val = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => val.push(c),
                }
            };
            labels.insert(key.to_string(), val);
            rest = after[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name} {want:?} matches several series");
    found.first().copied()
}

/// GET http://METRICS{path} with a real HTTP client: (status, content type, body).
fn get(path: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{METRICS}{path}"))
        .call()
        .expect("HTTP request");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.body_mut().read_to_string().expect("body");
    (resp.status().as_u16(), ctype, body)
}

/// Scrapes until `ready` holds (the summary is refreshed each --interval); bounded by 20 s.
fn scrape_until(what: &str, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, ctype, body) = get("/metrics");
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let samples = parse(&body);
        if ready(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the metrics after 20 s; last scrape:\n{body}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn own_netns() -> String {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat netns")
        .ino()
        .to_string()
}

fn listener(samples: &[Sample], name: &str, netns: &str, port: u16) -> Option<f64> {
    value(
        samples,
        name,
        &[("netns", netns), ("port", &port.to_string())],
    )
}

fn outbound(samples: &[Sample], name: &str, netns: &str, port: u16) -> Option<f64> {
    value(
        samples,
        name,
        &[("netns", netns), ("remote_port", &port.to_string())],
    )
}

#[test]
fn top_serves_exact_per_port_metrics() {
    if !root_or_skip("top_serves_exact_per_port_metrics") {
        return;
    }
    const N: usize = 5;
    let n = N as f64;
    let args = [
        "top",
        "--format",
        "json",
        "--interval",
        "0.2",
        "--metrics",
        METRICS,
    ];
    let (_, stdout, (netns, port)) = run_in_new_netns(&args, libc::SIGTERM, |_| {
        let netns = own_netns();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();

        // N connections waiting in the accept queue: established, not accepted.
        let clients: Vec<TcpStream> = (0..N)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let s = scrape_until("queued connections", |s| {
            listener(s, "sockwatch_listener_queue_depth", &netns, port) == Some(n)
                && listener(s, "sockwatch_listener_established", &netns, port) == Some(n)
                && outbound(s, "sockwatch_outbound_open", &netns, port) == Some(n)
        });
        assert_eq!(
            listener(&s, "sockwatch_listener_accepted_total", &netns, port),
            Some(0.0)
        );
        // std's TcpListener asks for 128; a new namespace's somaxconn is higher.
        assert_eq!(
            listener(&s, "sockwatch_listener_backlog", &netns, port),
            Some(128.0)
        );
        assert_eq!(
            outbound(&s, "sockwatch_outbound_connects_total", &netns, port),
            Some(n)
        );
        assert_eq!(
            outbound(&s, "sockwatch_outbound_established_total", &netns, port),
            Some(n)
        );

        // Accepted: the queue empties.
        let accepted: Vec<TcpStream> = (0..N).map(|_| l.accept().expect("accept").0).collect();
        scrape_until("accepted connections", |s| {
            listener(s, "sockwatch_listener_accepted_total", &netns, port) == Some(n)
                && listener(s, "sockwatch_listener_queue_depth", &netns, port) == Some(0.0)
        });

        // Closed on both sides: nothing open any more.
        drop(clients);
        drop(accepted);
        wait_connections_settled();
        let s = scrape_until("closed connections", |s| {
            listener(s, "sockwatch_listener_closed_total", &netns, port) == Some(n)
                && listener(s, "sockwatch_listener_established", &netns, port) == Some(0.0)
                && outbound(s, "sockwatch_outbound_open", &netns, port) == Some(0.0)
        });
        assert_eq!(
            listener(&s, "sockwatch_listener_overflows_total", &netns, port),
            Some(0.0)
        );
        assert!(
            !s.iter()
                .any(|x| x.name == "sockwatch_listener_accept_failures_total"
                    && x.labels.get("netns") == Some(&netns)),
            "no accept failures expected"
        );

        // A refused connect, by remote port and reason.
        assert!(TcpStream::connect(("127.0.0.1", 9)).is_err());
        let s = scrape_until("a refused connect", |s| {
            value(
                s,
                "sockwatch_outbound_failures_total",
                &[
                    ("netns", &netns),
                    ("remote_port", "9"),
                    ("reason", "refused"),
                ],
            ) == Some(1.0)
        });

        // Every loss cause is there; sockwatch's own figures too.
        let causes: Vec<&str> = s
            .iter()
            .filter(|x| x.name == "sockwatch_lost_events_total")
            .map(|x| x.labels["cause"].as_str())
            .collect();
        assert_eq!(
            causes,
            [
                "ringbuf_full",
                "recursion_misses",
                "sock_map_full",
                "sock_map_evicted",
                "connect_lost",
                "read_failed",
                "decode_errors",
                "expired",
                "counts_full"
            ]
        );
        assert!(value(&s, "process_cpu_seconds_total", &[]).is_some_and(|v| v > 0.0));
        assert!(
            value(&s, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6),
            "resident memory"
        );
        assert!(value(&s, "sockwatch_events_total", &[]).is_some_and(|v| v > 0.0));
        // No peer address anywhere in the labels.
        for x in &s {
            assert!(!x.labels.values().any(|v| v.contains("127.0.0.1")), "{x:?}");
        }

        // Only /metrics is served.
        let (status, _, _) = get("/");
        assert_eq!(status, 404);
        (netns, port)
    });

    // The final JSON summary agrees with what was scraped.
    let summary: Value = serde_json::from_str(&stdout).expect("summary JSON");
    let l = summary["listeners"]
        .as_array()
        .and_then(|ls| {
            ls.iter().find(|l| {
                l["netns"].as_u64().map(|n| n.to_string()).as_deref() == Some(netns.as_str())
                    && l["port"].as_u64() == Some(u64::from(port))
            })
        })
        .expect("listener in the summary");
    assert_eq!(l["accepted"].as_u64(), Some(N as u64), "{l}");
    assert_eq!(l["closed"].as_u64(), Some(N as u64), "{l}");
}

#[test]
fn trace_with_metrics_aggregates_too() {
    if !root_or_skip("trace_with_metrics_aggregates_too") {
        return;
    }
    const N: usize = 4;
    let args = [
        "trace",
        "--format",
        "jsonl",
        "--interval",
        "0.2",
        "--metrics",
        METRICS,
    ];
    let (t, _, port) = run_in_new_netns(&args, libc::SIGTERM, |_| {
        let netns = own_netns();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        for _ in 0..N {
            let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let (s, _) = l.accept().expect("accept");
            drop(c);
            drop(s);
        }
        wait_connections_settled();
        scrape_until("accepted and closed connections", |s| {
            listener(s, "sockwatch_listener_accepted_total", &netns, port) == Some(N as f64)
                && listener(s, "sockwatch_listener_closed_total", &netns, port) == Some(N as f64)
                && outbound(s, "sockwatch_outbound_connects_total", &netns, port) == Some(N as f64)
        });
        port
    });
    // The event stream is written as without --metrics.
    let accepts = t
        .of_kind("accept")
        .into_iter()
        .filter(|e| e["local_port"].as_u64() == Some(u64::from(port)))
        .count();
    assert_eq!(accepts, N);
    common::assert_nothing_lost(&t.lost);
}

fn sockwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sockwatch"))
        .args(args)
        .output()
        .expect("run sockwatch")
}

#[test]
fn malformed_metrics_address_is_a_usage_error() {
    for (args, why) in [
        (&["trace", "--metrics", "nonsense"][..], "is not ADDR:PORT"),
        (
            &["top", "--metrics", "localhost:9477"],
            "with an IP address",
        ),
        (&["--metrics", "127.0.0.1:0"], "port 0 is not a fixed port"),
        (
            &["trace", "--metrics", "127.0.0.1:65536"],
            "is not ADDR:PORT",
        ),
    ] {
        let out = sockwatch(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "error: invalid value '{}' for '--metrics <ADDR:PORT>': ",
                args[args.len() - 1]
            )) && err.lines().next().is_some_and(|l| l.contains(why)),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn unusable_metrics_address_fails_before_anything_starts() {
    // Without root the root check comes first.
    if !root_or_skip("unusable_metrics_address_fails_before_anything_starts") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let dir = common::TempDir::new("metrics-bind");
    let output = dir.path().join("kept.jsonl");
    for (addr, reason) in [
        (
            taken.as_str(),
            "(another program listens there: choose another --metrics port)",
        ),
        (
            // TEST-NET-1: never an address of this host.
            "192.0.2.1:9477",
            "(not an address of this host: use 127.0.0.1, 0.0.0.0, [::] or one of its addresses)",
        ),
    ] {
        fs::write(&output, "kept\n").expect("write");
        let out = sockwatch(&[
            "trace",
            "--metrics",
            addr,
            "--output",
            output.to_str().expect("utf-8 path"),
            "--format",
            "jsonl",
        ]);
        assert_eq!(out.status.code(), Some(1), "{addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected: {err}");
        assert!(
            lines[0].starts_with(&format!(
                "sockwatch: error: cannot serve metrics on {addr}: "
            )) && lines[0].ends_with(reason),
            "{}",
            lines[0]
        );
        // Failed before the output file was opened, and so before the kernel was touched.
        assert_eq!(fs::read_to_string(&output).expect("read"), "kept\n");
    }
}
