//! The JSON line of one event, written straight into a reused buffer.
//!
//! Events are the bulk of an export (millions per minute under churn), so their line is built
//! by hand: numbers through `itoa`, IPv4 addresses digit by digit, and the RFC 3339 time from a
//! cached date-and-second prefix plus nine digits of nanoseconds. Rarer records (samples, loss,
//! stats) go through serde. The output is byte for byte what serde would write for the same
//! record, key order included (a property test holds the two side by side).
use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    clock::write_rfc3339,
    host::workload::Workload,
    kernel::decode::{self, Event, EventKind},
};

/// The workload keys of an event, in order, after `cgroup_id`: each present when known.
pub const WORKLOAD_KEYS: [&str; 6] = [
    "cgroup",
    "unit",
    "container_id",
    "pod_uid",
    "pod_namespace",
    "pod",
];

/// The values of [`WORKLOAD_KEYS`], in the same order.
pub fn workload_values(w: &Workload) -> [Option<&str>; 6] {
    [
        w.cgroup.as_deref(),
        w.unit.as_deref(),
        w.container_id.as_deref(),
        w.pod_uid.as_deref(),
        w.pod_namespace.as_deref(),
        w.pod.as_deref(),
    ]
}

const NS_PER_SEC: i128 = 1_000_000_000;

/// The RFC 3339 text of the last second seen, up to and including the '.' before the
/// nanoseconds: events arrive in bursts within one second.
#[derive(Default)]
pub struct TimeCache {
    second: Option<i128>,
    prefix: Vec<u8>,
}

impl TimeCache {
    /// Appends `"YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ"` (with the quotes).
    fn write(&mut self, out: &mut Vec<u8>, unix_ns: i128) -> io::Result<()> {
        let second = unix_ns.div_euclid(NS_PER_SEC);
        let nanos = unix_ns.rem_euclid(NS_PER_SEC) as u32;
        if self.second != Some(second) {
            let mut full = Vec::with_capacity(40);
            write_rfc3339(&mut full, second * NS_PER_SEC)?;
            // The format ends with nine digits of nanoseconds and 'Z'.
            full.truncate(full.len().saturating_sub(10));
            self.prefix = full;
            self.second = Some(second);
        }
        out.push(b'"');
        out.extend_from_slice(&self.prefix);
        let mut digits = [b'0'; 9];
        let mut n = nanos;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"Z\"");
        Ok(())
    }
}

/// Appends one event as a JSON object and a newline.
pub fn write_event(
    out: &mut Vec<u8>,
    times: &mut TimeCache,
    unix_ns: i128,
    ev: &Event,
    workload: Option<&Workload>,
) -> io::Result<()> {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"time\":");
    times.write(out, unix_ns)?;
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(ev.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"family\":\"");
    out.extend_from_slice(ev.family.as_str().as_bytes());
    out.extend_from_slice(b"\",\"local_addr\":");
    addr(out, ev.local_addr);
    out.extend_from_slice(b",\"local_port\":");
    out.extend_from_slice(num.format(ev.local_port).as_bytes());
    out.extend_from_slice(b",\"peer_addr\":");
    addr(out, ev.peer_addr);
    out.extend_from_slice(b",\"peer_port\":");
    out.extend_from_slice(num.format(ev.peer_port).as_bytes());
    out.extend_from_slice(b",\"pid\":");
    match ev.pid {
        Some(pid) => out.extend_from_slice(num.format(pid).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"comm\":");
    match &ev.comm {
        Some(comm) => string(out, &comm.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cgroup_id\":");
    match ev.cgroup_id {
        Some(id) => out.extend_from_slice(num.format(id).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(w) = workload {
        // Only the names known: five nulls on every event of a plain host process would make
        // the file a third larger, and the reader that much slower under a burst.
        for (key, value) in WORKLOAD_KEYS.iter().zip(workload_values(w)) {
            if let Some(v) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                string(out, v);
            }
        }
    }
    out.extend_from_slice(b",\"netns\":");
    out.extend_from_slice(num.format(ev.netns).as_bytes());
    out.extend_from_slice(b",\"direction\":");
    match ev.direction {
        Some(d) => {
            out.push(b'"');
            out.extend_from_slice(d.as_str().as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    if ev.kind.ends_life() {
        // Present (possibly null) on close and listen_stop only.
        out.extend_from_slice(b",\"duration_ns\":");
        match ev.duration_ns {
            Some(d) => out.extend_from_slice(num.format(d).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"from_state\":\"");
        out.extend_from_slice(ev.from_state.as_str().as_bytes());
        out.push(b'"');
    }
    if let EventKind::State(to) = ev.kind {
        // Raw transitions (--states) only.
        out.extend_from_slice(b",\"from_state\":\"");
        out.extend_from_slice(ev.from_state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"to_state\":\"");
        out.extend_from_slice(to.as_str().as_bytes());
        out.push(b'"');
    }
    // errno 0 on connect_failed means "closed while connecting": no error to name.
    if let Some(errno) = ev.errno.filter(|&e| e != 0) {
        out.extend_from_slice(b",\"errno\":");
        string(out, &decode::errno_name(errno));
    }
    if ev.kind == EventKind::ConnectFailed {
        out.extend_from_slice(b",\"reason\":\"");
        out.extend_from_slice(decode::connect_failure_reason(ev.errno.unwrap_or(0)).as_bytes());
        out.push(b'"');
    }
    // Connection health: present only where known (handshake on an active established, queue
    // wait on accept, what it carried on close).
    for (key, value) in decode::HEALTH_KEYS.iter().zip(ev.health()) {
        if let Some(v) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(num.format(v).as_bytes());
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// An address as a JSON string (IPv6 through its Display, as serde does).
fn addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            out.push(b'"');
            ipv4(out, v4);
            out.push(b'"');
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

fn ipv4(out: &mut Vec<u8>, a: Ipv4Addr) {
    let mut num = itoa::Buffer::new();
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(num.format(octet).as_bytes());
    }
}

/// A JSON string; text that needs escaping goes through serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_cache_reuses_the_second_and_pads_nanoseconds() {
        let mut cache = TimeCache::default();
        let mut out = Vec::new();
        cache.write(&mut out, 1_000_000_005).unwrap();
        out.push(b' ');
        cache.write(&mut out, 1_999_999_999).unwrap();
        out.push(b' ');
        cache.write(&mut out, 2_000_000_000).unwrap();
        out.push(b' ');
        cache.write(&mut out, -1).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"1970-01-01T00:00:01.000000005Z\" \"1970-01-01T00:00:01.999999999Z\" \
             \"1970-01-01T00:00:02.000000000Z\" \"1969-12-31T23:59:59.999999999Z\""
        );
    }

    #[test]
    fn strings_needing_escapes_are_escaped() {
        let mut out = Vec::new();
        string(&mut out, "a\"b\\c\u{1}\u{7f}é");
        assert_eq!(
            serde_json::from_slice::<String>(&out).unwrap(),
            "a\"b\\c\u{1}\u{7f}é"
        );
        out.clear();
        string(&mut out, "nginx");
        assert_eq!(out, b"\"nginx\"");
    }
}
