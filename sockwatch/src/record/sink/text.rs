use std::io::{self, Write};

use crate::{
    clock::{WallClock, write_time_of_day},
    feed::Sample,
    host::workload::{Resolver, Workload},
    kernel::decode::{self, Event, EventKind},
    kernel::loss::{Loss, Quiet},
    record::sink::Sink,
};

/// Aligned columns: time (UTC), event, pid, comm, local and peer endpoints, details.
pub struct TextSink<W: Write> {
    out: W,
    clock: WallClock,
    line: Vec<u8>,
}

const HEADER: &str = "TIME(UTC)        EVENT          PID     COMM             LOCAL                                          PEER                                           DETAILS";

/// Writes the column line (each output starts with it: see `FileHeader`).
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{HEADER}")
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out,
            clock,
            line: Vec::with_capacity(256),
        }
    }
}

struct Endpoint<'a>(&'a std::net::IpAddr, u16);

impl std::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pad the whole endpoint, so format to a fixed buffer first.
        let mut buf = [0u8; 48];
        let mut cur = io::Cursor::new(&mut buf[..]);
        let _ = match self.0 {
            std::net::IpAddr::V4(a) => write!(cur, "{a}:{}", self.1),
            std::net::IpAddr::V6(a) => write!(cur, "[{a}]:{}", self.1),
        };
        let n = cur.position() as usize;
        f.pad(std::str::from_utf8(&buf[..n]).unwrap_or("?"))
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn event_in(&mut self, ev: &Event, workload: Option<&Workload>) -> io::Result<()> {
        let l = &mut self.line;
        l.clear();
        write_time_of_day(l, self.clock.unix_ns(ev.ts_ns))?;
        write!(l, "  {:<14} ", ev.kind.as_str())?;
        match ev.pid {
            Some(pid) => write!(l, "{pid:<7} ")?,
            None => l.extend_from_slice(b"-       "),
        }
        match &ev.comm {
            Some(c) => write!(l, "{:<16} ", c.as_str())?,
            None => write!(l, "{:<16} ", "-")?,
        }
        write!(
            l,
            "{:<46} {:<46}",
            Endpoint(&ev.local_addr, ev.local_port),
            Endpoint(&ev.peer_addr, ev.peer_port)
        )?;
        if let Some(d) = ev.direction {
            write!(l, " {}", d.as_str())?;
        }
        if let Some(errno) = ev.errno {
            if ev.kind == EventKind::ConnectFailed {
                write!(l, " reason={}", decode::connect_failure_reason(errno))?;
            }
            if errno != 0 {
                write!(l, " errno={}", decode::errno_name(errno))?;
            }
        }
        if let EventKind::State(to) = ev.kind {
            write!(l, " from={} to={}", ev.from_state.as_str(), to.as_str())?;
        }
        if ev.kind.ends_life() {
            write!(l, " from={}", ev.from_state.as_str())?;
            match ev.duration_ns {
                Some(ns) => write!(l, " duration={:.3}ms", ns as f64 / 1e6)?,
                None => l.extend_from_slice(b" duration=?"),
            }
        }
        if let Some(ns) = ev.handshake_ns {
            write!(l, " handshake={:.3}ms", ns as f64 / 1e6)?;
        }
        if let Some(ns) = ev.queue_wait_ns {
            write!(l, " queue_wait={:.3}ms", ns as f64 / 1e6)?;
        }
        if let Some(s) = ev.stats {
            write!(
                l,
                " rx={} tx={} retrans={} srtt={}us",
                s.bytes_received, s.bytes_sent, s.segs_retrans, s.srtt_us
            )?;
        }
        if let Some(name) = workload.and_then(Resolver::short_name) {
            write!(l, " workload={name}")?;
        }
        l.push(b'\n');
        self.out.write_all(l)
    }

    fn lost(&mut self, loss: &Loss, _at_unix_ns: i128) -> io::Result<()> {
        writeln!(self.out, "# {loss}")
    }

    fn sample(&mut self, _s: &Sample) -> io::Result<()> {
        Ok(())
    }

    fn stats(&mut self, quiet: &Quiet, _at_unix_ns: i128) -> io::Result<()> {
        writeln!(self.out, "# {quiet}")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::{Comm, Direction, Family, TcpState};

    #[test]
    fn a_close_line_has_all_columns() {
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        let mut s = TextSink::new(&mut out, WallClock::with_offset(1_795_254_062_000_000_000));
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        s.event(&Event {
            ts_ns: 123_456_000,
            kind: EventKind::Close,
            family: Family::Ipv6,
            local_addr: "::1".parse().unwrap(),
            local_port: 40000,
            peer_addr: "::1".parse().unwrap(),
            peer_port: 8080,
            pid: Some(42),
            comm: Some(Comm::from_kernel(&comm)),
            cgroup_id: Some(1),
            netns: 1,
            direction: Some(Direction::Active),
            duration_ns: Some(1_500_000),
            from_state: TcpState::new(5).unwrap(),
            tracked: true,
            handshake_ns: None,
            queue_wait_ns: None,
            stats: None,
            errno: None,
        })
        .unwrap();
        s.lost(&Loss::default(), 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert!(
            lines[1].starts_with(
                "09:41:02.123456  close          42      curl             [::1]:40000 "
            )
        );
        assert!(lines[1].ends_with("[::1]:8080                                     active from=FIN_WAIT2 duration=1.500ms"), "{}", lines[1]);
        assert_eq!(
            lines[2],
            "# lost events: 0 ringbuf_full=0 recursion_misses=0 sock_map_full=0 sock_map_evicted=0 connect_lost=0 read_failed=0 decode_errors=0 expired=0 counts_full=0"
        );
    }

    #[test]
    fn a_state_line_shows_both_states() {
        let mut out = Vec::new();
        let mut s = TextSink::new(&mut out, WallClock::with_offset(0));
        s.event(&Event {
            ts_ns: 0,
            kind: EventKind::State(TcpState::new(4).unwrap()),
            family: Family::Ipv4,
            local_addr: "127.0.0.1".parse().unwrap(),
            local_port: 40000,
            peer_addr: "127.0.0.1".parse().unwrap(),
            peer_port: 8080,
            pid: None,
            comm: None,
            cgroup_id: None,
            netns: 1,
            direction: Some(Direction::Active),
            duration_ns: None,
            from_state: TcpState::new(1).unwrap(),
            tracked: true,
            handshake_ns: None,
            queue_wait_ns: None,
            stats: None,
            errno: None,
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        // The column header is written by the file header step, not by the sink.
        let line = text.lines().next().unwrap();
        assert!(line.contains("  state          -       -  "), "{line}");
        assert!(
            line.ends_with(" active from=ESTABLISHED to=FIN_WAIT1"),
            "{line}"
        );
    }

    #[test]
    fn details_end_with_the_workload_short_name() {
        let mut out = Vec::new();
        let mut s = TextSink::new(&mut out, WallClock::with_offset(0));
        let ev = Event {
            ts_ns: 0,
            kind: EventKind::Listen,
            family: Family::Ipv4,
            local_addr: "0.0.0.0".parse().unwrap(),
            local_port: 8080,
            peer_addr: "0.0.0.0".parse().unwrap(),
            peer_port: 0,
            pid: Some(3),
            comm: None,
            cgroup_id: Some(9),
            netns: 1,
            direction: None,
            duration_ns: None,
            from_state: TcpState::new(7).unwrap(),
            tracked: true,
            handshake_ns: None,
            queue_wait_ns: None,
            stats: None,
            errno: None,
        };
        let pod = Workload {
            container_id: Some("ab".repeat(32)),
            pod_namespace: Some("shop".into()),
            pod: Some("web-0".into()),
            ..Workload::default()
        };
        let container = Workload {
            container_id: Some("0123456789abcdef".repeat(4)),
            unit: Some("docker-x.scope".into()),
            ..Workload::default()
        };
        s.event_in(&ev, Some(&pod)).unwrap();
        s.event_in(&ev, Some(&container)).unwrap();
        // Nothing known: nothing said.
        s.event_in(&ev, Some(&Workload::default())).unwrap();
        s.event(&ev).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[0].ends_with(" workload=shop/web-0"), "{}", lines[0]);
        assert!(lines[1].ends_with(" workload=0123456789ab"), "{}", lines[1]);
        assert!(!lines[2].contains("workload="), "{}", lines[2]);
        assert_eq!(lines[2], lines[3]);
    }
}
