use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::{Serialize, Serializer};

use super::json_line::{self, TimeCache};
#[cfg(test)]
use crate::kernel::decode::{self, EventKind};
use crate::{
    clock::{WallClock, write_rfc3339},
    feed::Sample,
    host::workload::Workload,
    kernel::decode::Event,
    kernel::loss::{Loss, Quiet},
    record::sink::Sink,
};

/// One JSON object per line. Each line is built whole in a buffer, then written, so the
/// writer only ever sees complete lines.
pub struct JsonlSink<W: Write> {
    out: W,
    clock: WallClock,
    line: Vec<u8>,
    times: TimeCache,
}

impl<W: Write> JsonlSink<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out,
            clock,
            line: Vec::with_capacity(512),
            times: TimeCache::default(),
        }
    }

    fn write_line(&mut self, record: &impl Serialize) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }
}

/// RFC 3339 time, formatted on the stack.
struct Rfc3339(i128);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 40];
        let mut cur = io::Cursor::new(&mut buf[..]);
        write_rfc3339(&mut cur, self.0).map_err(serde::ser::Error::custom)?;
        let n = cur.position() as usize;
        s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
    }
}

/// An event through serde: the reference the hand-written line (`json_line`) must match.
#[cfg(test)]
#[derive(Serialize)]
struct EventRecord<'a> {
    time: Rfc3339,
    event: &'static str,
    family: &'static str,
    local_addr: IpAddr,
    local_port: u16,
    peer_addr: IpAddr,
    peer_port: u16,
    pid: Option<u32>,
    comm: Option<std::borrow::Cow<'a, str>>,
    cgroup_id: Option<u64>,
    /// The workload keys: present when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    netns: u32,
    direction: Option<&'static str>,
    /// Present (possibly null) on close and listen_stop only.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ns: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_state: Option<&'static str>,
    /// state events only (with from_state).
    #[serde(skip_serializing_if = "Option::is_none")]
    to_state: Option<&'static str>,
    /// Failure events only.
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<std::borrow::Cow<'static, str>>,
    /// connect_failed only: refused, timeout, unreachable, aborted, no_local_address, error.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_wait_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segs_retrans: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    srtt_us: Option<u32>,
}

/// The line serde writes for `ev` (see [`EventRecord`]).
#[cfg(test)]
pub(crate) fn serde_event_line(
    ev: &Event,
    workload: Option<&Workload>,
    clock: &WallClock,
) -> Vec<u8> {
    let ends = ev.kind.ends_life();
    let record = EventRecord {
        time: Rfc3339(clock.unix_ns(ev.ts_ns)),
        event: ev.kind.as_str(),
        family: ev.family.as_str(),
        local_addr: ev.local_addr,
        local_port: ev.local_port,
        peer_addr: ev.peer_addr,
        peer_port: ev.peer_port,
        pid: ev.pid,
        comm: ev.comm.as_ref().map(|c| c.as_str()),
        cgroup_id: ev.cgroup_id,
        cgroup: workload.and_then(|w| w.cgroup.as_deref()),
        unit: workload.and_then(|w| w.unit.as_deref()),
        container_id: workload.and_then(|w| w.container_id.as_deref()),
        pod_uid: workload.and_then(|w| w.pod_uid.as_deref()),
        pod_namespace: workload.and_then(|w| w.pod_namespace.as_deref()),
        pod: workload.and_then(|w| w.pod.as_deref()),
        netns: ev.netns,
        direction: ev.direction.map(|d| d.as_str()),
        duration_ns: ends.then_some(ev.duration_ns),
        from_state: (ends || matches!(ev.kind, EventKind::State(_)))
            .then(|| ev.from_state.as_str()),
        to_state: match ev.kind {
            EventKind::State(to) => Some(to.as_str()),
            _ => None,
        },
        errno: ev.errno.filter(|&e| e != 0).map(decode::errno_name),
        reason: (ev.kind == EventKind::ConnectFailed)
            .then(|| decode::connect_failure_reason(ev.errno.unwrap_or(0))),
        handshake_ns: ev.handshake_ns,
        queue_wait_ns: ev.queue_wait_ns,
        bytes_received: ev.stats.map(|s| s.bytes_received),
        bytes_sent: ev.stats.map(|s| s.bytes_sent),
        segs_retrans: ev.stats.map(|s| s.segs_retrans),
        srtt_us: ev.stats.map(|s| s.srtt_us),
    };
    let mut line = serde_json::to_vec(&record).expect("an event serialises");
    line.push(b'\n');
    line
}

#[derive(Serialize)]
struct ExistingRecord<'a> {
    time: Rfc3339,
    event: &'static str,
    family: &'static str,
    local_addr: IpAddr,
    local_port: u16,
    peer_addr: IpAddr,
    peer_port: u16,
    netns: u32,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
}

#[derive(Serialize)]
struct QueueRecord {
    time: Rfc3339,
    event: &'static str,
    netns: u32,
    local_port: u16,
    depth: u32,
    backlog: u32,
}

#[derive(Serialize)]
struct NetstatRecord {
    time: Rfc3339,
    event: &'static str,
    netns: u32,
    listen_overflows: u64,
    listen_drops: u64,
}

#[derive(Serialize)]
struct FdsRecord<'a> {
    time: Rfc3339,
    event: &'static str,
    pid: u32,
    comm: Option<&'a str>,
    open: u64,
    limit: u64,
}

#[derive(Serialize)]
struct ExpiredRecord {
    time: Rfc3339,
    event: &'static str,
    netns: u32,
    local_addr: IpAddr,
    local_port: u16,
    peer_addr: IpAddr,
    peer_port: u16,
}

#[derive(Serialize)]
struct StatsRecord<'a> {
    time: Rfc3339,
    event: &'static str,
    #[serde(flatten)]
    quiet: &'a Quiet,
}

#[derive(Serialize)]
struct LostRecord<'a> {
    time: Rfc3339,
    event: &'static str,
    total: u64,
    #[serde(flatten)]
    loss: &'a Loss,
}

impl<W: Write> Sink for JsonlSink<W> {
    fn event_in(&mut self, ev: &Event, workload: Option<&Workload>) -> io::Result<()> {
        self.line.clear();
        let at = self.clock.unix_ns(ev.ts_ns);
        json_line::write_event(&mut self.line, &mut self.times, at, ev, workload)?;
        self.out.write_all(&self.line)
    }

    fn lost(&mut self, loss: &Loss, at_unix_ns: i128) -> io::Result<()> {
        self.write_line(&LostRecord {
            time: Rfc3339(at_unix_ns),
            event: "lost",
            total: loss.total(),
            loss,
        })
    }

    fn sample(&mut self, s: &Sample) -> io::Result<()> {
        match s {
            Sample::Existing(e) => self.write_line(&ExistingRecord {
                time: Rfc3339(i128::from(e.time_ns)),
                event: "existing",
                family: e.family.as_str(),
                local_addr: e.local_addr,
                local_port: e.local_port,
                peer_addr: e.peer_addr,
                peer_port: e.peer_port,
                netns: e.netns,
                state: if e.listening { "LISTEN" } else { "ESTABLISHED" },
                pid: e.pid,
                comm: e.comm,
            }),
            Sample::Queue(q) => self.write_line(&QueueRecord {
                time: Rfc3339(i128::from(q.time_ns)),
                event: "queue",
                netns: q.netns,
                local_port: q.local_port,
                depth: q.depth,
                backlog: q.backlog,
            }),
            Sample::Netstat(n) => self.write_line(&NetstatRecord {
                time: Rfc3339(i128::from(n.time_ns)),
                event: "netstat",
                netns: n.netns,
                listen_overflows: n.listen_overflows,
                listen_drops: n.listen_drops,
            }),
            Sample::Fds(f) => self.write_line(&FdsRecord {
                time: Rfc3339(i128::from(f.time_ns)),
                event: "fds",
                pid: f.pid,
                comm: f.comm,
                open: f.open,
                limit: f.limit,
            }),
            Sample::Expired(e) => self.write_line(&ExpiredRecord {
                time: Rfc3339(i128::from(e.time_ns)),
                event: "expired",
                netns: e.conn.netns,
                local_addr: e.conn.local_addr,
                local_port: e.conn.local_port,
                peer_addr: e.conn.peer_addr,
                peer_port: e.conn.peer_port,
            }),
        }
    }

    fn stats(&mut self, quiet: &Quiet, at_unix_ns: i128) -> io::Result<()> {
        self.write_line(&StatsRecord {
            time: Rfc3339(at_unix_ns),
            event: "stats",
            quiet,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::{Comm, Direction, EventKind, Family, TcpState};
    use serde_json::{Value, json};

    fn event(kind: EventKind) -> Event {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"server");
        Event {
            ts_ns: 5,
            kind,
            family: Family::Ipv4,
            local_addr: "127.0.0.1".parse().unwrap(),
            local_port: 8080,
            peer_addr: "127.0.0.2".parse().unwrap(),
            peer_port: 50000,
            pid: Some(7),
            comm: Some(Comm::from_kernel(&comm)),
            cgroup_id: Some(99),
            netns: 4026531840,
            direction: Some(Direction::Passive),
            duration_ns: Some(2_000),
            from_state: TcpState::new(9).unwrap(),
            tracked: true,
            handshake_ns: None,
            queue_wait_ns: None,
            stats: None,
            errno: None,
        }
    }

    fn lines(f: impl FnOnce(&mut JsonlSink<&mut Vec<u8>>)) -> Vec<Value> {
        let mut out = Vec::new();
        let mut s = JsonlSink::new(&mut out, WallClock::with_offset(1_000_000_000));
        f(&mut s);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn close_record_has_every_key() {
        let v = lines(|s| s.event(&event(EventKind::Close)).unwrap());
        assert_eq!(
            v[0],
            json!({
                "time": "1970-01-01T00:00:01.000000005Z",
                "event": "close",
                "family": "ipv4",
                "local_addr": "127.0.0.1",
                "local_port": 8080,
                "peer_addr": "127.0.0.2",
                "peer_port": 50000,
                "pid": 7,
                "comm": "server",
                "cgroup_id": 99,
                "netns": 4026531840u32,
                "direction": "passive",
                "duration_ns": 2000,
                "from_state": "LAST_ACK",
            })
        );
    }

    #[test]
    fn unknowns_are_null_and_close_only_keys_are_absent_elsewhere() {
        let v = lines(|s| {
            let mut e = event(EventKind::Established);
            e.pid = None;
            e.comm = None;
            e.cgroup_id = None;
            e.family = Family::Ipv6;
            e.local_addr = "::1".parse().unwrap();
            s.event(&e).unwrap();
            let mut c = event(EventKind::Close);
            c.duration_ns = None;
            s.event(&c).unwrap();
        });
        assert_eq!(v[0]["pid"], Value::Null);
        assert_eq!(v[0]["comm"], Value::Null);
        assert_eq!(v[0]["family"], "ipv6");
        assert_eq!(v[0]["local_addr"], "::1");
        assert!(v[0].get("duration_ns").is_none());
        assert!(v[0].get("from_state").is_none());
        assert_eq!(v[1]["duration_ns"], Value::Null);
    }

    #[test]
    fn workload_keys_follow_cgroup_id_null_where_unknown() {
        let w = Workload {
            cgroup_id: 99,
            cgroup: Some("/system.slice/docker-ab.scope".into()),
            unit: Some("docker-ab.scope".into()),
            container_id: Some("ab".repeat(32)),
            runtime: Some(crate::host::workload::DOCKER),
            ..Workload::default()
        };
        let mut out = Vec::new();
        {
            let mut s = JsonlSink::new(&mut out, WallClock::with_offset(0));
            s.event_in(&event(EventKind::Listen), Some(&w)).unwrap();
            s.event(&event(EventKind::Listen)).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(
                "\"cgroup_id\":99,\"cgroup\":\"/system.slice/docker-ab.scope\",\
                 \"unit\":\"docker-ab.scope\",\"container_id\":\"abababababababababababababababab\
                 abababababababababababababababab\",\"netns\":"
            ),
            "{}",
            lines[0]
        );
        // Not resolved: the keys are absent, as in recordings made before them.
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        for key in json_line::WORKLOAD_KEYS {
            assert!(v.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn lost_record_lists_every_counter_even_when_zero() {
        let v = lines(|s| {
            s.lost(
                &Loss {
                    ringbuf_full: 3,
                    ..Default::default()
                },
                0,
            )
            .unwrap()
        });
        assert_eq!(
            v[0],
            json!({
                "time": "1970-01-01T00:00:00.000000000Z",
                "event": "lost",
                "total": 3,
                "ringbuf_full": 3,
                "recursion_misses": 0,
                "sock_map_full": 0,
                "sock_map_evicted": 0,
                "connect_lost": 0,
                "read_failed": 0,
                "decode_errors": 0,
                "expired": 0,
                "counts_full": 0,
            })
        );
    }

    #[test]
    fn failures_have_errno_and_reason() {
        let v = lines(|s| {
            let mut e = event(EventKind::AcceptFailed);
            e.errno = Some(24);
            s.event(&e).unwrap();
            let mut e = event(EventKind::ConnectFailed);
            e.errno = Some(111);
            s.event(&e).unwrap();
            let mut e = event(EventKind::ConnectFailed);
            e.errno = Some(0);
            s.event(&e).unwrap();
            s.event(&event(EventKind::Accept)).unwrap();
        });
        assert_eq!(v[0]["event"], "accept_failed");
        assert_eq!(v[0]["errno"], "EMFILE");
        assert!(v[0].get("reason").is_none());
        assert_eq!(v[1]["errno"], "ECONNREFUSED");
        assert_eq!(v[1]["reason"], "refused");
        assert!(v[2].get("errno").is_none());
        assert_eq!(v[2]["reason"], "aborted");
        assert!(v[3].get("errno").is_none() && v[3].get("reason").is_none());
    }

    #[test]
    fn stats_record() {
        let v = lines(|s| {
            s.stats(
                &Quiet {
                    accept_would_block: 4,
                    accept_interrupted: 1,
                    recursion_recovered: 7,
                },
                0,
            )
            .unwrap()
        });
        assert_eq!(
            v[0],
            json!({"time": "1970-01-01T00:00:00.000000000Z", "event": "stats",
                   "accept_would_block": 4, "accept_interrupted": 1,
                   "recursion_recovered": 7})
        );
    }

    #[test]
    fn state_record_has_both_states() {
        let v = lines(|s| {
            let mut e = event(EventKind::State(TcpState::new(4).unwrap()));
            e.from_state = TcpState::new(1).unwrap();
            s.event(&e).unwrap();
        });
        assert_eq!(v[0]["event"], "state");
        assert_eq!(v[0]["from_state"], "ESTABLISHED");
        assert_eq!(v[0]["to_state"], "FIN_WAIT1");
        assert!(v[0].get("duration_ns").is_none());
    }

    #[test]
    fn comm_with_quotes_is_escaped() {
        let v = lines(|s| {
            let mut e = event(EventKind::Connect);
            let mut comm = [0u8; 16];
            comm[..5].copy_from_slice(b"a\"b\\c");
            e.comm = Some(Comm::from_kernel(&comm));
            s.event(&e).unwrap();
        });
        assert_eq!(v[0]["comm"], "a\"b\\c");
    }
}
