//! Bounded fuzzing with proptest: whatever bytes the kernel hands over and whatever lines a file
//! holds, decoding and reading never panic; they decode or say why not. Each property runs
//! proptest's default number of cases (256; `PROPTEST_CASES` changes it for a longer local run),
//! so the whole module takes a few seconds.
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::{prelude::*, test_runner::Config};
use serde_json::{Map, Value};
use sockwatch_common::{AF_INET, AF_INET6, CONN_EVENT_SIZE, ConnEvent};

use crate::{
    aggregate::Aggregator,
    clock::WallClock,
    feed::{self, Fed, LineError},
    filter::Filter,
    kernel::decode::{self, DecodeError, Family},
    record::sink::{JsonlSink, Sink, TextSink},
};

fn config() -> Config {
    Config {
        // A failure prints its smallest input; no regression file is written into the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel records

fn bytes_of(raw: &ConnEvent) -> Vec<u8> {
    // SAFETY: ConnEvent is repr(C) with integer fields and explicit padding (`_pad`), so all of
    // its CONN_EVENT_SIZE bytes are initialised.
    unsafe { std::slice::from_raw_parts((raw as *const ConnEvent).cast::<u8>(), CONN_EVENT_SIZE) }
        .to_vec()
}

/// Address bytes: anything, IPv4 in the first 4 bytes, v4-mapped IPv6, or all zeros.
fn addr_bytes() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        any::<[u8; 16]>(),
        any::<[u8; 4]>().prop_map(|a| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a);
            b
        }),
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_mapped().octets()),
        Just([0u8; 16]),
    ]
}

/// A byte that is mostly one of the valid values `valid`, sometimes anything.
fn mostly(valid: std::ops::RangeInclusive<u8>) -> impl Strategy<Value = u8> {
    prop_oneof![3 => valid, 1 => any::<u8>()]
}

/// A workload with any text in its names (paths and pod names are read from the host).
fn workload() -> impl Strategy<Value = crate::host::workload::Workload> {
    let part = || prop::option::of(any::<String>());
    (part(), part(), part(), part(), part(), part()).prop_map(
        |(cgroup, unit, container_id, pod_uid, pod_namespace, pod)| {
            crate::host::workload::Workload {
                cgroup,
                unit,
                container_id,
                pod_uid,
                pod_namespace,
                pod,
                ..Default::default()
            }
        },
    )
}

fn conn_event() -> impl Strategy<Value = ConnEvent> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 16]>(),
        ),
        (
            addr_bytes(),
            addr_bytes(),
            any::<u16>(),
            any::<u16>(),
            prop_oneof![0u16..200, any::<u16>()],
        ),
        (
            mostly(1..=10),
            prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u8>()],
            mostly(1..=12),
            mostly(1..=12),
            any::<u8>(),
            any::<[u8; 4]>(),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
        ),
    )
        .prop_map(
            |(
                (ts_ns, duration_ns, cgroup_id, pid, netns, comm),
                (local_addr, peer_addr, local_port, peer_port, errno),
                (kind, family, old_state, new_state, flags, _pad),
                (bytes_received, bytes_acked, total_retrans, srtt_us, fin),
            )| ConnEvent {
                ts_ns,
                duration_ns,
                cgroup_id,
                pid,
                netns,
                comm,
                local_addr,
                peer_addr,
                local_port,
                peer_port,
                errno,
                kind,
                family,
                old_state,
                new_state,
                flags,
                fin,
                _pad,
                bytes_received,
                bytes_acked,
                total_retrans,
                srtt_us,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// Any byte string is decoded or refused; only 96 bytes can be decoded.
    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        match decode::decode(&bytes) {
            Err(DecodeError::Size(n)) => prop_assert!(n == bytes.len() && n != CONN_EVENT_SIZE),
            Ok(_) | Err(_) => prop_assert_eq!(bytes.len(), CONN_EVENT_SIZE),
        }
    }

    /// Any record the kernel could write is decoded or refused with a reason; what is decoded
    /// can be printed, written as JSON Lines and read back, and aggregated.
    #[test]
    fn decode_never_panics_on_records(raw in conn_event()) {
        let decoded = decode::decode(&bytes_of(&raw));
        prop_assert_eq!(&decoded, &decode::from_raw(&raw));
        let Ok(ev) = decoded else {
            return Ok(());
        };
        prop_assert_eq!(ev.errno.is_some(), ev.kind.is_failure());
        prop_assert!(ev.duration_ns.is_none() || ev.kind.ends_life());
        let _ = decode::connect_failure_reason(raw.errno);
        let _ = decode::errno_name(raw.errno);

        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        let mut text = Vec::new();
        TextSink::new(&mut text, clock).event(&ev).unwrap();
        let mut jsonl = Vec::new();
        JsonlSink::new(&mut jsonl, clock).event(&ev).unwrap();
        let line = std::str::from_utf8(&jsonl).unwrap();
        prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{}", line);

        let filter = Filter::default();
        let mut live = Aggregator::new();
        prop_assert!(feed::live_event(&mut live, &filter, &ev, &clock));
        let mut read = Aggregator::new();
        // Raw transitions (--states) are read back but not summarised.
        let fed = if matches!(ev.kind, decode::EventKind::State(_)) { Fed::State } else { Fed::Event };
        prop_assert_eq!(feed::exported_line(&mut read, &filter, line.trim_end()), Ok(fed));
        prop_assert_eq!(live.summary(), read.summary());
    }

    /// The hand-written event line is byte for byte what serde writes, also when the time
    /// cache carries over from one event to the next.
    #[test]
    fn event_lines_match_serde(
        raws in prop::collection::vec(conn_event(), 1..8),
        offset in prop_oneof![any::<i64>(), Just(1_700_000_000_000_000_000)],
        same_second in any::<bool>(),
        workload in prop::option::of(workload()),
    ) {
        let clock = WallClock::with_offset(i128::from(offset));
        let mut written = Vec::new();
        let mut expected = Vec::new();
        let mut sink = JsonlSink::new(&mut written, clock);
        for (i, raw) in raws.iter().enumerate() {
            let Ok(mut ev) = decode::from_raw(raw) else {
                continue;
            };
            if same_second {
                // Events a few nanoseconds apart: the cached second is reused.
                ev.ts_ns = raws[0].ts_ns.wrapping_add(i as u64);
            }
            sink.event_in(&ev, workload.as_ref()).unwrap();
            expected.extend(crate::record::sink::serde_event_line(&ev, workload.as_ref(), &clock));
        }
        prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// Exported lines

/// Every key `feed::exported_line` reads, and the other keys sockwatch writes.
const KEYS: &[&str] = &[
    "time",
    "event",
    "family",
    "local_addr",
    "local_port",
    "peer_addr",
    "peer_port",
    "pid",
    "comm",
    "cgroup_id",
    "cgroup",
    "unit",
    "container_id",
    "pod_uid",
    "pod_namespace",
    "pod",
    "netns",
    "direction",
    "duration_ns",
    "from_state",
    "errno",
    "reason",
    "state",
    "depth",
    "backlog",
    "listen_overflows",
    "listen_drops",
    "open",
    "limit",
    "total",
    "ringbuf_full",
    "recursion_misses",
    "sock_map_full",
    "sock_map_evicted",
    "connect_lost",
    "read_failed",
    "decode_errors",
    "expired",
    "counts_full",
    "accept_would_block",
    "accept_interrupted",
    "recursion_recovered",
];

const RECORD_TYPES: &[&str] = &[
    "connect",
    "established",
    "close",
    "listen",
    "listen_stop",
    "accept",
    "accept_failed",
    "connect_failed",
    "overflow",
    "existing",
    "queue",
    "netstat",
    "fds",
    "expired",
    "stats",
    "lost",
    "",
    "CLOSE",
    "bogus",
];

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// RFC 3339 text: a valid time of any year sockwatch can read, or one that only looks valid
/// (month 13, day 0, hour 24, no zone, ...).
fn time_text() -> impl Strategy<Value = String> {
    let valid = (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(s, ns)| {
        let t = time::OffsetDateTime::from_unix_timestamp(s).unwrap()
            + time::Duration::nanoseconds(i64::from(ns));
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    });
    let lookalike = (
        0u32..10000,
        0u32..14,
        0u32..33,
        0u32..25,
        0u32..61,
        0u32..61,
        prop::option::of(0u32..1_000_000_000),
        prop::sample::select(&["Z", "+00:00", "-23:59", "", "z"][..]),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, zone)| {
            let frac = frac.map(|f| format!(".{f:09}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}")
        });
    prop_oneof![valid, lookalike]
}

fn ip_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<[u8; 4]>().prop_map(|a| Value::from(Ipv4Addr::from(a).to_string())),
        4 => any::<[u8; 16]>().prop_map(|a| Value::from(Ipv6Addr::from(a).to_string())),
        1 => "[0-9a-f:.]{0,20}".prop_map(Value::from),
    ]
}

/// A value of the type `key` has in sockwatch's records, of any size that type allows.
fn fitting(key: &'static str) -> BoxedStrategy<Value> {
    let name = |names: &'static [&'static str]| prop::sample::select(names).prop_map(Value::from);
    match key {
        "time" => time_text().prop_map(Value::from).boxed(),
        "event" => name(RECORD_TYPES).boxed(),
        "family" => name(&["ipv4", "ipv6", "ipx"]).boxed(),
        "local_addr" | "peer_addr" => ip_text().boxed(),
        "direction" => name(&["active", "passive", "sideways"]).boxed(),
        "state" | "from_state" => name(&["LISTEN", "ESTABLISHED", "CLOSE"]).boxed(),
        "comm" => prop_oneof![Just(Value::Null), ".{0,20}".prop_map(Value::from)].boxed(),
        "errno" => name(&["EMFILE", "ECONNREFUSED", "errno 60000", ""]).boxed(),
        "reason" => name(&["refused", "timeout", "unreachable", "error", "?"]).boxed(),
        "local_port" | "peer_port" => any::<u16>().prop_map(Value::from).boxed(),
        "pid" | "netns" | "depth" | "backlog" => any::<u32>().prop_map(Value::from).boxed(),
        "duration_ns" => prop_oneof![Just(Value::Null), any::<u64>().prop_map(Value::from)].boxed(),
        _ => prop_oneof![0u64..1000, any::<u64>()]
            .prop_map(Value::from)
            .boxed(),
    }
}

/// A value for `key`: mostly of its type, sometimes any JSON at all.
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![4 => fitting(key), 1 => any_json()].boxed()
}

/// A record as hand-editing leaves it: every known key with a value of its type (so that
/// records of each type are read whole), then a few keys removed or given a value of any type;
/// or keys drawn at random with values of random types.
fn record() -> impl Strategy<Value = Value> {
    let whole = KEYS
        .iter()
        .map(|&k| fitting(k).prop_map(move |v| (k, v)))
        .collect::<Vec<_>>();
    let edits = prop::collection::vec(
        (prop::sample::select(KEYS), prop::option::of(any_json())),
        0..3,
    );
    let edited = (whole, edits).prop_map(|(whole, edits)| {
        let mut m: Map<String, Value> =
            whole.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in edits {
            match v {
                Some(v) => m.insert(k.to_string(), v),
                None => m.remove(k),
            };
        }
        Value::Object(m)
    });
    let time = prop::option::weighted(0.9, value_for("time"));
    let event = prop::option::weighted(0.9, value_for("event"));
    let others = prop::collection::vec(
        prop::sample::select(KEYS).prop_flat_map(|k| value_for(k).prop_map(move |v| (k, v))),
        0..24,
    );
    let random = (time, event, others).prop_map(|(time, event, others)| {
        let mut m = Map::new();
        for (k, v) in others {
            m.insert(k.to_string(), v);
        }
        if let Some(t) = time {
            m.insert("time".into(), t);
        }
        if let Some(e) = event {
            m.insert("event".into(), e);
        }
        Value::Object(m)
    });
    prop_oneof![edited, random]
}

fn filter() -> impl Strategy<Value = Filter> {
    (
        prop::collection::vec(any::<u16>(), 0..3),
        prop::option::of(any::<u32>()),
        prop::option::of(prop::sample::select(&["srv", "curl"][..])),
        prop::option::of(prop::sample::select(&[Family::Ipv4, Family::Ipv6][..])),
    )
        .prop_map(|(ports, pid, comm, family)| Filter {
            ports,
            pid,
            comm: comm.map(str::to_string),
            family,
            ..Default::default()
        })
}

/// A line as `trace --format jsonl` writes it.
const VALID: &str = r#"{"time":"2026-11-21T09:45:28.565146581Z","event":"close","family":"ipv4","local_addr":"127.0.0.1","local_port":43060,"peer_addr":"127.0.0.1","peer_port":39407,"pid":7738,"comm":"python3","cgroup_id":1,"netns":4026531833,"direction":"active","duration_ns":132896,"from_state":"FIN_WAIT2"}"#;

proptest! {
    #![proptest_config(config())]

    /// Any text is read or refused with a reason.
    #[test]
    fn exported_line_never_panics_on_text(text in any::<String>()) {
        let _ = feed::exported_line(&mut Aggregator::new(), &Filter::default(), &text);
    }

    /// A line cut anywhere (a file truncated mid-record) is refused as JSON, never half-read;
    /// one byte changed anywhere is read or refused.
    #[test]
    fn cut_or_damaged_lines_never_panic(cut in 0..VALID.len(), byte in any::<u8>()) {
        let mut agg = Aggregator::new();
        let filter = Filter::default();
        if let Some(prefix) = VALID.get(..cut) {
            prop_assert!(matches!(
                feed::exported_line(&mut agg, &filter, prefix),
                Err(LineError::Json(_))
            ));
        }
        let mut damaged = VALID.as_bytes().to_vec();
        damaged[cut] = byte;
        if let Ok(text) = std::str::from_utf8(&damaged) {
            let _ = feed::exported_line(&mut agg, &filter, text);
        }
        prop_assert_eq!(feed::exported_line(&mut agg, &filter, VALID), Ok(Fed::Event));
    }

    /// A record with the known keys holding values of any type (hand-edited) is read or
    /// refused with a reason, whatever the filter.
    #[test]
    fn exported_line_never_panics_on_records(rec in record(), filter in filter()) {
        let text = rec.to_string();
        let mut agg = Aggregator::new();
        let _ = feed::exported_line(&mut agg, &filter, &text);
        let _ = feed::exported_line(&mut agg, &Filter::default(), &text);
    }
}
