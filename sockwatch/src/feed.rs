//! Records into the aggregator: from live kernel events, and from exported JSON Lines. Both
//! paths build the same inputs, so a live summary and a report over its file agree.
use std::{borrow::Cow, net::IpAddr};

use serde::Deserialize;

use crate::{
    aggregate::{Aggregator, Conn, Existing, Expired, FdSample, NetstatSample, Obs, QueueSample},
    clock::WallClock,
    decode::{self, Direction, Event, EventKind, Family},
    filter::Filter,
    loss::{Loss, Quiet},
    sink::header::SCHEMA,
};

/// Host state recorded alongside the events.
#[derive(Debug, Clone, Copy)]
pub enum Sample<'a> {
    Existing(Existing<'a>),
    Queue(QueueSample),
    Netstat(NetstatSample),
    Fds(FdSample<'a>),
    /// Not host state but a decision made from it: an open connection the kernel no longer
    /// has. Recorded with the samples so that `report` replays it.
    Expired(Expired),
}

/// Feeds a host sample if the filter keeps it (live and from a file alike); returns whether it
/// was kept. Namespace counters are never filtered out: they belong to no port or process.
pub fn sample(agg: &mut Aggregator, filter: &Filter, s: &Sample) -> bool {
    let kept = keeps_sample(filter, s);
    if kept {
        match s {
            Sample::Existing(e) => agg.existing(e),
            Sample::Queue(q) => agg.queue(q),
            Sample::Netstat(n) => agg.netstat(n),
            Sample::Fds(f) => agg.fds(f),
            Sample::Expired(e) => agg.expire(e),
        }
    }
    kept
}

pub fn keeps_sample(filter: &Filter, s: &Sample) -> bool {
    match s {
        Sample::Existing(e) => filter.keeps_existing(e),
        Sample::Queue(q) => filter.keeps_port(q.local_port) && filter.keeps_netns(q.netns),
        Sample::Netstat(n) => filter.keeps_netns(n.netns),
        Sample::Fds(f) => filter.keeps_owner(Some(f.pid), f.comm),
        // Only connections the (filtered) aggregator holds are ever expired.
        Sample::Expired(_) => true,
    }
}

/// Feeds a live kernel event (if the filter keeps it); returns whether it was kept. Raw state
/// transitions are kept but not part of the summary.
pub fn live_event(agg: &mut Aggregator, filter: &Filter, ev: &Event, clock: &WallClock) -> bool {
    if let EventKind::State(_) = ev.kind {
        return filter.keeps_kind(ev.kind.code());
    }
    let comm = ev.comm.as_ref().map(|c| c.as_str());
    let errno = ev.errno.filter(|&e| e != 0).map(decode::errno_name);
    let obs = Obs {
        time_ns: clock.unix_ns(ev.ts_ns) as i64,
        kind: ev.kind,
        netns: ev.netns,
        family: ev.family,
        local_addr: ev.local_addr,
        local_port: ev.local_port,
        peer_addr: ev.peer_addr,
        peer_port: ev.peer_port,
        pid: ev.pid,
        comm: comm.as_deref(),
        direction: ev.direction,
        duration_ns: ev.duration_ns,
        errno: errno.as_deref(),
        reason: (ev.kind == EventKind::ConnectFailed)
            .then(|| decode::connect_failure_reason(ev.errno.unwrap_or(0))),
    };
    if !filter.keeps(&obs) {
        return false;
    }
    agg.event(&obs);
    true
}

/// One exported line, any record type; unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    family: Option<Cow<'a, str>>,
    local_addr: Option<IpAddr>,
    local_port: Option<u16>,
    peer_addr: Option<IpAddr>,
    peer_port: Option<u16>,
    pid: Option<u32>,
    #[serde(borrow)]
    comm: Option<Cow<'a, str>>,
    cgroup_id: Option<u64>,
    netns: Option<u32>,
    direction: Option<Cow<'a, str>>,
    duration_ns: Option<u64>,
    #[serde(borrow)]
    errno: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    state: Option<Cow<'a, str>>,
    depth: Option<u32>,
    backlog: Option<u32>,
    listen_overflows: Option<u64>,
    listen_drops: Option<u64>,
    open: Option<u64>,
    limit: Option<u64>,
    /// The header record's.
    schema: Option<u64>,
}

/// What one exported line was.
#[derive(Debug, PartialEq)]
pub enum Fed {
    Event,
    /// A raw state transition (`trace --states`): not part of the summary.
    State,
    Filtered,
    Sample,
    Stats(Quiet),
    Lost(Loss),
    /// A file's header record (its schema is one this sockwatch reads).
    Header,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LineError {
    #[error("not a JSON record: {0}")]
    Json(String),
    #[error("bad time {0:?} (expected RFC 3339)")]
    Time(String),
    #[error("unknown record type {0:?}")]
    Kind(String),
    #[error("record {kind} lacks {field}")]
    Missing { kind: String, field: &'static str },
    #[error(
        "the file follows schema {0}, newer than this sockwatch reads ({SCHEMA}): read it with \
         the sockwatch that wrote it, or a newer one"
    )]
    NewerSchema(u64),
}

impl LineError {
    /// Whether the whole file is unreadable, rather than this line.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::NewerSchema(_))
    }
}

/// Where a file starts: the time of its first record and, from a header record, its part
/// number in the run. Files are read in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileStart {
    pub time_ns: i64,
    pub part: Option<u64>,
}

/// The start of a file whose first line is `text`, if that line is a record.
pub fn file_start(text: &str) -> Option<FileStart> {
    #[derive(Deserialize)]
    struct First<'a> {
        #[serde(borrow)]
        time: Cow<'a, str>,
        #[serde(borrow)]
        event: Cow<'a, str>,
        part: Option<u64>,
    }
    let first: First = serde_json::from_str(text).ok()?;
    Some(FileStart {
        time_ns: parse_time(&first.time).ok()?,
        part: first.part.filter(|_| first.event == "header"),
    })
}

fn kind_of(name: &str) -> Option<EventKind> {
    Some(match name {
        "connect" => EventKind::Connect,
        "established" => EventKind::Established,
        "close" => EventKind::Close,
        "listen" => EventKind::Listen,
        "listen_stop" => EventKind::ListenStop,
        "accept" => EventKind::Accept,
        "accept_failed" => EventKind::AcceptFailed,
        "connect_failed" => EventKind::ConnectFailed,
        "overflow" => EventKind::Overflow,
        _ => return None,
    })
}

fn fed_sample(agg: &mut Aggregator, filter: &Filter, s: &Sample) -> Fed {
    if sample(agg, filter, s) {
        Fed::Sample
    } else {
        Fed::Filtered
    }
}

fn need<T>(v: Option<T>, kind: &str, field: &'static str) -> Result<T, LineError> {
    v.ok_or_else(|| LineError::Missing {
        kind: kind.to_string(),
        field,
    })
}

fn parse_time(s: &str) -> Result<i64, LineError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
        .ok_or_else(|| LineError::Time(s.to_string()))
}

/// Feeds one exported line.
pub fn exported_line(agg: &mut Aggregator, filter: &Filter, text: &str) -> Result<Fed, LineError> {
    let line: Line = serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
    let time_ns = parse_time(&line.time)?;
    let kind = line.event.as_ref();
    let family = match line.family.as_deref() {
        Some("ipv6") => Family::Ipv6,
        _ => Family::Ipv4,
    };
    match kind {
        "header" => {
            let schema = need(line.schema, kind, "schema")?;
            if schema > SCHEMA {
                return Err(LineError::NewerSchema(schema));
            }
            Ok(Fed::Header)
        }
        "stats" => {
            let q: Quiet =
                serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
            agg.set_stats(q);
            Ok(Fed::Stats(q))
        }
        "lost" => {
            let l: Loss = serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
            agg.set_loss(l);
            Ok(Fed::Lost(l))
        }
        "existing" => {
            let e = Existing {
                time_ns,
                netns: need(line.netns, kind, "netns")?,
                family,
                listening: line.state.as_deref() == Some("LISTEN"),
                local_addr: need(line.local_addr, kind, "local_addr")?,
                local_port: need(line.local_port, kind, "local_port")?,
                peer_addr: need(line.peer_addr, kind, "peer_addr")?,
                peer_port: need(line.peer_port, kind, "peer_port")?,
                pid: line.pid,
                comm: line.comm.as_deref(),
            };
            Ok(fed_sample(agg, filter, &Sample::Existing(e)))
        }
        "queue" => {
            let q = QueueSample {
                time_ns,
                netns: need(line.netns, kind, "netns")?,
                local_port: need(line.local_port, kind, "local_port")?,
                depth: need(line.depth, kind, "depth")?,
                backlog: need(line.backlog, kind, "backlog")?,
            };
            Ok(fed_sample(agg, filter, &Sample::Queue(q)))
        }
        "netstat" => {
            let n = NetstatSample {
                time_ns,
                netns: need(line.netns, kind, "netns")?,
                listen_overflows: need(line.listen_overflows, kind, "listen_overflows")?,
                listen_drops: need(line.listen_drops, kind, "listen_drops")?,
            };
            Ok(fed_sample(agg, filter, &Sample::Netstat(n)))
        }
        "expired" => {
            let e = Expired {
                time_ns,
                conn: Conn {
                    netns: need(line.netns, kind, "netns")?,
                    local_addr: need(line.local_addr, kind, "local_addr")?,
                    local_port: need(line.local_port, kind, "local_port")?,
                    peer_addr: need(line.peer_addr, kind, "peer_addr")?,
                    peer_port: need(line.peer_port, kind, "peer_port")?,
                },
            };
            Ok(fed_sample(agg, filter, &Sample::Expired(e)))
        }
        "fds" => {
            let f = FdSample {
                time_ns,
                pid: need(line.pid, kind, "pid")?,
                comm: line.comm.as_deref(),
                open: need(line.open, kind, "open")?,
                limit: need(line.limit, kind, "limit")?,
            };
            Ok(fed_sample(agg, filter, &Sample::Fds(f)))
        }
        "state" => Ok(Fed::State),
        other => {
            let event_kind = kind_of(other).ok_or_else(|| LineError::Kind(other.to_string()))?;
            let obs = Obs {
                time_ns,
                kind: event_kind,
                netns: need(line.netns, kind, "netns")?,
                family,
                local_addr: need(line.local_addr, kind, "local_addr")?,
                local_port: need(line.local_port, kind, "local_port")?,
                peer_addr: need(line.peer_addr, kind, "peer_addr")?,
                peer_port: need(line.peer_port, kind, "peer_port")?,
                pid: line.pid,
                comm: line.comm.as_deref(),
                direction: match line.direction.as_deref() {
                    Some("active") => Some(Direction::Active),
                    Some("passive") => Some(Direction::Passive),
                    _ => None,
                },
                duration_ns: line.duration_ns,
                errno: line.errno.as_deref(),
                reason: line.reason.as_deref(),
            };
            if !filter.keeps(&obs) || !filter.keeps_cgroup(line.cgroup_id) {
                return Ok(Fed::Filtered);
            }
            agg.event(&obs);
            Ok(Fed::Event)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{Comm, TcpState},
        sink::{JsonlSink, Sink},
    };

    fn event(kind: EventKind, ts: u64, client_port: u16, direction: Direction) -> Event {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"srv");
        let (local, peer) = match direction {
            Direction::Passive => ((8080, "10.0.0.1"), (client_port, "10.0.0.2")),
            Direction::Active => ((client_port, "10.0.0.2"), (8080, "10.0.0.1")),
        };
        Event {
            ts_ns: ts,
            kind,
            family: Family::Ipv4,
            local_addr: local.1.parse().unwrap(),
            local_port: local.0,
            peer_addr: peer.1.parse().unwrap(),
            peer_port: peer.0,
            pid: Some(77),
            comm: Some(Comm::from_kernel(&comm)),
            cgroup_id: Some(1),
            netns: 5,
            direction: Some(direction),
            duration_ns: kind.ends_life().then_some(ts / 2),
            from_state: TcpState::new(1).unwrap(),
            errno: kind
                .is_failure()
                .then_some(if kind == EventKind::AcceptFailed {
                    24
                } else {
                    111
                }),
        }
    }

    /// What the live pipeline does with each record, and what `report` reads back, agree.
    #[test]
    fn live_and_exported_summaries_agree() {
        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        let filter = Filter::default();
        let mut live = Aggregator::new();
        let mut out = Vec::new();
        {
            let mut sink = JsonlSink::new(&mut out, clock);
            let samples = [
                Sample::Existing(Existing {
                    time_ns: 1_700_000_000_000_000_000,
                    netns: 5,
                    family: Family::Ipv4,
                    listening: true,
                    local_addr: "10.0.0.1".parse().unwrap(),
                    local_port: 8080,
                    peer_addr: "0.0.0.0".parse().unwrap(),
                    peer_port: 0,
                    pid: Some(77),
                    comm: Some("srv"),
                }),
                Sample::Queue(QueueSample {
                    time_ns: 1_700_000_000_500_000_000,
                    netns: 5,
                    local_port: 8080,
                    depth: 3,
                    backlog: 128,
                }),
                Sample::Netstat(NetstatSample {
                    time_ns: 1_700_000_000_600_000_000,
                    netns: 5,
                    listen_overflows: 4,
                    listen_drops: 4,
                }),
                Sample::Fds(FdSample {
                    time_ns: 1_700_000_000_700_000_000,
                    pid: 77,
                    comm: Some("srv"),
                    open: 900,
                    limit: 1024,
                }),
            ];
            for s in &samples {
                sink.sample(s).unwrap();
                assert!(sample(&mut live, &filter, s));
            }
            let mut ts = 1_000;
            for port in 40000..40020u16 {
                for (kind, dir) in [
                    (EventKind::Connect, Direction::Active),
                    (EventKind::Established, Direction::Active),
                    (EventKind::Established, Direction::Passive),
                    (EventKind::Accept, Direction::Passive),
                    (EventKind::AcceptFailed, Direction::Passive),
                    (EventKind::ConnectFailed, Direction::Active),
                    (EventKind::Close, Direction::Passive),
                    (EventKind::Close, Direction::Active),
                ] {
                    ts += 123_456_789;
                    let ev = event(kind, ts, port, dir);
                    sink.event(&ev).unwrap();
                    assert!(live_event(&mut live, &filter, &ev, &clock));
                }
            }
            // A connection whose close was missed, expired by the live run.
            let ev = event(EventKind::Established, ts + 1, 41000, Direction::Passive);
            sink.event(&ev).unwrap();
            assert!(live_event(&mut live, &filter, &ev, &clock));
            let expired = Sample::Expired(Expired {
                time_ns: 1_700_000_100_000_000_000,
                conn: Conn {
                    netns: 5,
                    local_addr: ev.local_addr,
                    local_port: ev.local_port,
                    peer_addr: ev.peer_addr,
                    peer_port: ev.peer_port,
                },
            });
            sink.sample(&expired).unwrap();
            assert!(sample(&mut live, &filter, &expired));
            let quiet = Quiet {
                accept_would_block: 2,
                accept_interrupted: 0,
            };
            let loss = Loss {
                ringbuf_full: 1,
                expired: live.expired(),
                ..Default::default()
            };
            sink.stats(&quiet, 0).unwrap();
            sink.lost(&loss, 0).unwrap();
            live.set_stats(quiet);
            live.set_loss(loss);
        }
        let mut report = Aggregator::new();
        for line in String::from_utf8(out).unwrap().lines() {
            exported_line(&mut report, &filter, line).unwrap();
        }
        let (a, b) = (live.summary(), report.summary());
        assert_eq!(a, b);
        assert_eq!(a.listeners[0].accepted, 20);
        assert_eq!(a.listeners[0].accept_failures.get("EMFILE"), Some(&20));
        assert_eq!(a.outbound[0].failed.get("refused"), Some(&20));
        assert_eq!(a.lost.unwrap().by_cause.ringbuf_full, 1);
        assert_eq!(a.lost.unwrap().by_cause.expired, 1);
        assert_eq!((live.expired(), report.expired()), (1, 1));
        assert_eq!(a.listeners[0].established_now, 0);
    }

    #[test]
    fn bad_lines_say_why() {
        let mut a = Aggregator::new();
        let f = Filter::default();
        assert!(matches!(
            exported_line(&mut a, &f, "{"),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            exported_line(&mut a, &f, "\u{0}\u{1}binary"),
            Err(LineError::Json(_))
        ));
        assert_eq!(
            exported_line(&mut a, &f, r#"{"time":"yesterday","event":"close"}"#),
            Err(LineError::Time("yesterday".into()))
        );
        assert_eq!(
            exported_line(
                &mut a,
                &f,
                r#"{"time":"2026-01-01T00:00:00Z","event":"nope"}"#
            ),
            Err(LineError::Kind("nope".into()))
        );
        assert_eq!(
            exported_line(
                &mut a,
                &f,
                r#"{"time":"2026-01-01T00:00:00Z","event":"close","netns":1}"#
            ),
            Err(LineError::Missing {
                kind: "close".into(),
                field: "local_addr"
            })
        );
    }

    #[test]
    fn extreme_hand_edited_numbers_neither_panic_nor_wrap() {
        let mut a = Aggregator::new();
        let f = Filter::default();
        let m = u64::MAX;
        for line in [
            format!(
                r#"{{"time":"2026-01-01T00:00:00Z","event":"lost","ringbuf_full":{m},"recursion_misses":1,"sock_map_full":0,"sock_map_evicted":0,"connect_lost":0,"read_failed":0,"decode_errors":0}}"#
            ),
            format!(
                r#"{{"time":"2026-01-01T00:00:00Z","event":"netstat","netns":1,"listen_overflows":{m},"listen_drops":0}}"#
            ),
            format!(
                r#"{{"time":"2026-01-01T00:00:00Z","event":"netstat","netns":1,"listen_overflows":1,"listen_drops":{m}}}"#
            ),
            format!(
                r#"{{"time":"1700-01-01T00:00:00Z","event":"fds","pid":1,"open":{m},"limit":{m}}}"#
            ),
            r#"{"time":"2250-01-01T00:00:00Z","event":"fds","pid":2,"open":1,"limit":2}"#
                .to_string(),
        ] {
            // 1700 and 2250 are beyond i64 nanoseconds: rejected, not wrapped.
            let _ = exported_line(&mut a, &f, &line);
        }
        let s = a.summary();
        assert_eq!(s.lost.unwrap().total, m);
        assert!(s.seconds >= 0.0);
        assert!(s.processes.iter().all(|p| p.pid != 2 || !p.fd_warning));
    }

    #[test]
    fn header_records_are_checked_not_counted() {
        let mut out = Vec::new();
        crate::sink::header::write_jsonl(&mut out, 2_000_000_000, 1_000_000_000, 2).unwrap();
        let written = String::from_utf8(out).unwrap();
        let mut a = Aggregator::new();
        let f = Filter::default();
        assert_eq!(
            exported_line(&mut a, &f, written.trim_end()),
            Ok(Fed::Header)
        );
        assert_eq!(a.summary(), Aggregator::new().summary());
        assert_eq!(
            file_start(written.trim_end()),
            Some(FileStart {
                time_ns: 2_000_000_000,
                part: Some(2)
            })
        );
        let newer = r#"{"time":"2026-01-01T00:00:00Z","event":"header","schema":2,"future":true}"#;
        let e = exported_line(&mut a, &f, newer).unwrap_err();
        assert_eq!(e, LineError::NewerSchema(2));
        assert!(e.is_fatal());
        assert!(
            e.to_string()
                .starts_with("the file follows schema 2, newer than this sockwatch reads (1)"),
            "{e}"
        );
        assert_eq!(
            exported_line(
                &mut a,
                &f,
                r#"{"time":"2026-01-01T00:00:00Z","event":"header"}"#
            ),
            Err(LineError::Missing {
                kind: "header".into(),
                field: "schema"
            })
        );
        // A file without a header (from before schemas) starts at its first record.
        let accept = r#"{"time":"1970-01-01T00:00:01Z","event":"accept","part":9}"#;
        assert_eq!(
            file_start(accept),
            Some(FileStart {
                time_ns: 1_000_000_000,
                part: None
            })
        );
        assert_eq!(file_start("12345"), None);
        assert_eq!(file_start("time,event,family"), None);
    }

    #[test]
    fn state_lines_are_read_but_not_summarised() {
        let mut a = Aggregator::new();
        let line = r#"{"time":"2026-01-01T00:00:00Z","event":"state","netns":1,"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000,"from_state":"ESTABLISHED","to_state":"FIN_WAIT1"}"#;
        assert_eq!(
            exported_line(&mut a, &Filter::default(), line),
            Ok(Fed::State)
        );
        assert_eq!(a.summary().events, 0);
    }

    #[test]
    fn netns_kind_and_cgroup_filters_apply_to_exported_lines() {
        let line = |event: &str, netns: u32, cgroup: &str| {
            format!(
                r#"{{"time":"2026-01-01T00:00:00Z","event":"{event}","netns":{netns},"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000,"pid":3,"comm":"srv","cgroup_id":{cgroup}}}"#
            )
        };
        let f = Filter {
            netns: Some(1),
            kinds: Some(1 << sockwatch_common::kind::ACCEPT),
            cgroup: Some(crate::filter::Cgroup {
                path: "/sys/fs/cgroup/unified/a".into(),
                id: 7,
                level: 1,
                ids: [7, 8].into(),
            }),
            ..Default::default()
        };
        let mut a = Aggregator::new();
        assert_eq!(
            exported_line(&mut a, &f, &line("accept", 1, "8")),
            Ok(Fed::Event)
        );
        for other in [
            line("accept", 2, "8"),
            line("close", 1, "8"),
            line("accept", 1, "9"),
            line("accept", 1, "null"),
        ] {
            assert_eq!(
                exported_line(&mut a, &f, &other),
                Ok(Fed::Filtered),
                "{other}"
            );
        }
        assert_eq!(a.summary().listeners[0].accepted, 1);
    }

    #[test]
    fn filters_apply_to_exported_lines() {
        let mut a = Aggregator::new();
        let f = Filter {
            ports: vec![9999],
            ..Default::default()
        };
        let line = r#"{"time":"2026-01-01T00:00:00Z","event":"accept","netns":1,"family":"ipv4","local_addr":"1.1.1.1","local_port":80,"peer_addr":"2.2.2.2","peer_port":5000}"#;
        assert_eq!(exported_line(&mut a, &f, line), Ok(Fed::Filtered));
        assert!(a.summary().listeners.is_empty());
    }
}
