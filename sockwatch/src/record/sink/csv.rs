//! CSV: a header row, then one row per event with the fields of the JSON Lines event records
//! (RFC 4180; empty cells for unknown or absent values). Host samples, `stats` and `lost` are
//! not written (the workload columns are empty too when the event's cgroup was not resolved):
//! CSV is for events (sockwatch prints the counts on stderr at exit; JSON Lines
//! keeps everything, for `report`).
use std::io::{self, Write};

use crate::{
    clock::{WallClock, write_rfc3339},
    feed::Sample,
    host::workload::Workload,
    kernel::decode::{self, Event, EventKind},
    kernel::loss::{Loss, Quiet},
    record::sink::Sink,
};

/// The columns, in order: the keys of the JSON Lines event records. Later additions come
/// last (the workload's, then the connection health's), so that readers of earlier files find
/// their columns where they were.
pub const COLUMNS: [&str; 28] = [
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
    "netns",
    "direction",
    "duration_ns",
    "from_state",
    "errno",
    "reason",
    "cgroup",
    "unit",
    "container_id",
    "pod_uid",
    "pod_namespace",
    "pod",
    "handshake_ns",
    "queue_wait_ns",
    "bytes_received",
    "bytes_sent",
    "segs_retrans",
    "srtt_us",
];

/// Writes the header row.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", COLUMNS.join(","))
}

/// One row per event, built whole in a reused buffer, then written.
pub struct CsvSink<W: Write> {
    out: W,
    clock: WallClock,
    row: Vec<u8>,
}

impl<W: Write> CsvSink<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out,
            clock,
            row: Vec::with_capacity(256),
        }
    }
}

/// Appends a text cell, quoted when it holds a separator, a quote or a line break (a process
/// name can hold any of them).
fn push_text(row: &mut Vec<u8>, cell: &[u8]) {
    if cell
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        row.push(b'"');
        for &b in cell {
            if b == b'"' {
                row.push(b'"');
            }
            row.push(b);
        }
        row.push(b'"');
    } else {
        row.extend_from_slice(cell);
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn event_in(&mut self, ev: &Event, workload: Option<&Workload>) -> io::Result<()> {
        let r = &mut self.row;
        r.clear();
        write_rfc3339(r, self.clock.unix_ns(ev.ts_ns))?;
        write!(
            r,
            ",{},{},{},{},{},{},",
            ev.kind.as_str(),
            ev.family.as_str(),
            ev.local_addr,
            ev.local_port,
            ev.peer_addr,
            ev.peer_port
        )?;
        if let Some(pid) = ev.pid {
            write!(r, "{pid}")?;
        }
        r.push(b',');
        if let Some(comm) = &ev.comm {
            push_text(r, comm.as_str().as_bytes());
        }
        r.push(b',');
        if let Some(cg) = ev.cgroup_id {
            write!(r, "{cg}")?;
        }
        write!(r, ",{},", ev.netns)?;
        if let Some(d) = ev.direction {
            r.extend_from_slice(d.as_str().as_bytes());
        }
        r.push(b',');
        if ev.kind.ends_life() {
            if let Some(ns) = ev.duration_ns {
                write!(r, "{ns}")?;
            }
            r.push(b',');
            r.extend_from_slice(ev.from_state.as_str().as_bytes());
        } else {
            r.push(b',');
        }
        r.push(b',');
        // As in JSON Lines: errno 0 on connect_failed means "closed while connecting".
        if let Some(errno) = ev.errno.filter(|&e| e != 0) {
            r.extend_from_slice(decode::errno_name(errno).as_bytes());
        }
        r.push(b',');
        if ev.kind == EventKind::ConnectFailed {
            let reason = decode::connect_failure_reason(ev.errno.unwrap_or(0));
            r.extend_from_slice(reason.as_bytes());
        }
        let names = workload.map(super::json_line::workload_values);
        for value in names.unwrap_or_default() {
            r.push(b',');
            if let Some(v) = value {
                push_text(r, v.as_bytes());
            }
        }
        for value in ev.health() {
            r.push(b',');
            if let Some(v) = value {
                write!(r, "{v}")?;
            }
        }
        r.push(b'\n');
        self.out.write_all(r)
    }

    fn sample(&mut self, _s: &Sample) -> io::Result<()> {
        Ok(())
    }

    fn stats(&mut self, _quiet: &Quiet, _at_unix_ns: i128) -> io::Result<()> {
        Ok(())
    }

    fn lost(&mut self, _loss: &Loss, _at_unix_ns: i128) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::decode::{Comm, Direction, Family, TcpState},
        record::sink::JsonlSink,
    };
    use serde_json::Value;

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

    fn events() -> Vec<Event> {
        let mut odd = event(EventKind::Established);
        let mut comm = [0u8; 16];
        comm[..9].copy_from_slice(b"a,\"b\"\nc d");
        odd.comm = Some(Comm::from_kernel(&comm));
        odd.pid = None;
        odd.cgroup_id = None;
        odd.direction = None;
        odd.family = Family::Ipv6;
        odd.local_addr = "::1".parse().unwrap();
        let mut failed = event(EventKind::ConnectFailed);
        failed.errno = Some(111);
        let mut aborted = event(EventKind::ConnectFailed);
        aborted.errno = Some(0);
        let mut unknown_life = event(EventKind::Close);
        unknown_life.duration_ns = None;
        let mut close = event(EventKind::Close);
        close.stats = Some(crate::kernel::decode::ConnStats {
            bytes_received: 100,
            bytes_sent: 2_000_000,
            segs_retrans: 3,
            srtt_us: 41,
        });
        let mut accept = event(EventKind::Accept);
        accept.queue_wait_ns = Some(300_000_000);
        let mut active = event(EventKind::Established);
        active.direction = Some(Direction::Active);
        active.handshake_ns = Some(1_020_000_000);
        vec![close, odd, failed, aborted, unknown_life, accept, active]
    }

    /// The workload of each of [`events`]: a pod's, a unit with a comma, none.
    fn workloads() -> Vec<Option<Workload>> {
        let pod = Workload {
            cgroup_id: 99,
            cgroup: Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope".into()),
            unit: Some("cri-containerd-ab.scope".into()),
            container_id: Some("ab".repeat(32)),
            pod_uid: Some("1".into()),
            pod_namespace: Some("shop".into()),
            pod: Some("web-0".into()),
            ..Workload::default()
        };
        let odd = Workload {
            cgroup: Some("/system.slice/a,\"b\".service".into()),
            unit: Some("a,\"b\".service".into()),
            ..Workload::default()
        };
        vec![
            Some(pod),
            None,
            Some(odd),
            Some(Workload::default()),
            None,
            None,
            None,
        ]
    }

    /// A CSV reader (the csv crate) sees the header, and in each row exactly the values of the
    /// JSON Lines record of the same event (absent and null as empty cells).
    #[test]
    fn rows_hold_the_json_lines_fields() {
        let clock = WallClock::with_offset(1_000_000_000);
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        let mut jsonl = Vec::new();
        {
            let mut csv = CsvSink::new(&mut out, clock);
            let mut js = JsonlSink::new(&mut jsonl, clock);
            for (e, w) in events().iter().zip(workloads()) {
                csv.event_in(e, w.as_ref()).unwrap();
                js.event_in(e, w.as_ref()).unwrap();
            }
            // Nothing but events.
            csv.lost(&Loss::default(), 0).unwrap();
            csv.stats(&Quiet::default(), 0).unwrap();
        }
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(
            "time,event,family,local_addr,local_port,peer_addr,peer_port,pid,comm,cgroup_id,\
             netns,direction,duration_ns,from_state,errno,reason,cgroup,unit,container_id,pod_uid,\
             pod_namespace,pod,handshake_ns,queue_wait_ns,bytes_received,bytes_sent,segs_retrans,\
             srtt_us\n"
        ));
        assert!(text.contains(
            "\n1970-01-01T00:00:01.000000005Z,close,ipv4,127.0.0.1,8080,127.0.0.2,50000,7,server,\
             99,4026531840,passive,2000,LAST_ACK,,,/kubepods.slice/kubepods-pod1.slice/\
             cri-containerd-ab.scope,cri-containerd-ab.scope,abababababababababababababababab\
             abababababababababababababababab,1,shop,web-0,,,100,2000000,3,41\n"
        ));
        // Without a workload, or with nothing known of it: the workload cells are empty; the
        // health cells hold what the event knows.
        assert!(
            text.contains(",accept,") && text.contains(",passive,,,,,,,,,,,,300000000,,,,\n"),
            "{text}"
        );
        assert!(
            text.ends_with(",active,,,,,,,,,,,1020000000,,,,,\n"),
            "{text}"
        );
        let mut reader = ::csv::Reader::from_reader(out.as_slice());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, COLUMNS);
        // The later columns are the JSON Lines keys of the same names, in their order.
        let n = COLUMNS.len();
        assert_eq!(
            COLUMNS[n - 12..n - 6],
            super::super::json_line::WORKLOAD_KEYS
        );
        assert_eq!(COLUMNS[n - 6..], decode::HEALTH_KEYS);
        let rows: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let records: Vec<Value> = String::from_utf8(jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), records.len());
        for (row, rec) in rows.iter().zip(&records) {
            assert_eq!(row.len(), COLUMNS.len());
            for (cell, key) in row.iter().zip(COLUMNS) {
                let want = match &rec[key] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(cell, want, "{key} in {rec}");
            }
        }
        assert_eq!(&rows[1][8], "a,\"b\"\nc d");
        assert_eq!(&rows[2][15], "refused");
        assert_eq!(&rows[3][14], "");
        assert_eq!(&rows[3][15], "aborted");
        assert_eq!(&rows[2][17], "a,\"b\".service");
    }
}
