//! Exported JSON Lines back into the records they were written from.
use std::{borrow::Cow, net::IpAddr};

use serde::Deserialize;

use super::{Sample, sample};
use crate::{
    aggregate::{Aggregator, Conn, Existing, Expired, FdSample, NetstatSample, Obs, QueueSample},
    filter::Filter,
    host::workload::Workload,
    kernel::decode::{Direction, EventKind, Family},
    kernel::loss::{Loss, Quiet},
    record::sink::header::SCHEMA,
};

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
    /// The workload keys (events of a run that resolved cgroups); present, possibly null, or
    /// all absent (older recordings).
    #[serde(default, deserialize_with = "present")]
    cgroup: Option<Option<String>>,
    unit: Option<String>,
    container_id: Option<String>,
    pod_uid: Option<String>,
    pod_namespace: Option<String>,
    pod: Option<String>,
    netns: Option<u32>,
    direction: Option<Cow<'a, str>>,
    duration_ns: Option<u64>,
    handshake_ns: Option<u64>,
    queue_wait_ns: Option<u64>,
    bytes_received: Option<u64>,
    bytes_sent: Option<u64>,
    segs_retrans: Option<u64>,
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
    /// The header record's: what the kernel let the run see.
    capabilities: Option<serde_json::Value>,
}

/// A key present, even as null, is `Some`; an absent one is `None` (with `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
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
    #[error(
        "header capabilities: {0} (expected {{\"<name>\": {{\"available\": true|false, ...}}, ...}})"
    )]
    Capabilities(String),
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

/// A header's `capabilities`, checked: an object of objects, each with a boolean `available`.
fn header_capabilities(
    caps: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, LineError> {
    let serde_json::Value::Object(caps) = caps else {
        return Err(LineError::Capabilities("not an object".to_string()));
    };
    if let Some((name, _)) = caps
        .iter()
        .find(|(_, entry)| !entry.get("available").is_some_and(|a| a.is_boolean()))
    {
        return Err(LineError::Capabilities(format!(
            "{name:?} lacks a boolean \"available\""
        )));
    }
    Ok(caps)
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
            if let Some(caps) = line.capabilities {
                agg.merge_capabilities(header_capabilities(caps)?);
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
                // A recording is aggregated from its events alone.
                tracked: false,
                handshake_ns: line.handshake_ns,
                queue_wait_ns: line.queue_wait_ns,
                // All three are written together (recordings from before have none).
                carried: match (line.bytes_received, line.bytes_sent) {
                    (Some(bytes_in), Some(bytes_out)) => Some(crate::aggregate::Carried {
                        bytes_in,
                        bytes_out,
                        retrans: line.segs_retrans.unwrap_or(0),
                    }),
                    _ => None,
                },
            };
            // As the live run named it (see `feed::live_event_in`).
            let workload = line.cgroup.map(|cgroup| Workload {
                cgroup_id: line.cgroup_id.unwrap_or(0),
                cgroup,
                unit: line.unit,
                container_id: line.container_id,
                pod_uid: line.pod_uid,
                pod_namespace: line.pod_namespace,
                pod: line.pod,
                ..Workload::default()
            });
            if !filter.keeps(&obs)
                || !filter.keeps_cgroup(line.cgroup_id)
                || !filter.keeps_workload(workload.as_ref())
            {
                return Ok(Fed::Filtered);
            }
            agg.event(&obs);
            if let Some(w) = &workload {
                agg.name_workload(&obs, w);
            }
            Ok(Fed::Event)
        }
    }
}
