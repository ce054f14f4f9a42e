//! Reading the tracers' output: complete connections in a trace file, bpftrace's closes, and
//! the listener row and loss counters of a `top` summary.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::Path,
};

use anyhow::Context as _;
use serde::Deserialize;

/// The summary's listener row of the churn's server port in its namespace.
pub(super) fn listener(
    summary: &serde_json::Value,
    port: u16,
    netns: u64,
) -> Option<&serde_json::Value> {
    summary["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["port"].as_u64() == Some(u64::from(port)) && l["netns"].as_u64() == Some(netns))
}

/// The numeric fields of a `lost` object.
pub(super) fn counters(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// One JSON Lines record, as far as counting connections needs.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(default, borrow)]
    local_addr: Option<&'a str>,
    #[serde(default)]
    local_port: Option<u16>,
    #[serde(default, borrow)]
    peer_addr: Option<&'a str>,
    #[serde(default)]
    peer_port: Option<u16>,
    #[serde(default)]
    netns: Option<u64>,
    #[serde(default, borrow)]
    direction: Option<&'a str>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Counted {
    /// Connections with connect, accept, and the close of both sides.
    pub(super) complete: u64,
    /// Connections with some of those events only.
    pub(super) incomplete: u64,
    /// Closes counted in `complete` that are `expired` records: the kernel reported no close
    /// (see docs/limits.md#missed-closes), and sockwatch found the connection gone.
    pub(super) expired_closes: u64,
    lines: u64,
    unparsed: u64,
    pub(super) lost: Option<BTreeMap<String, u64>>,
}

const CONNECT: u8 = 1;
const ACCEPT: u8 = 2;
const CLOSE_CLIENT: u8 = 4;
const CLOSE_SERVER: u8 = 8;
const ALL: u8 = CONNECT | ACCEPT | CLOSE_CLIENT | CLOSE_SERVER;

/// Streams a `trace --format jsonl` file and counts the churn's connections (server `port` in
/// namespace `netns`) that have all their events, a close being a `close` or an `expired`
/// record. A connection is keyed by its client side (namespace, address, port). Client ports
/// are reused over a run, and two connections of one key can interleave in the file: an
/// `expired` record for the old one is written when the new one's server side is established,
/// after the new one's `connect`. So each key holds its connections in order, and an event goes
/// to the oldest one still without it (a new connection if none); what is left open at the end
/// is incomplete. A missing event is still counted once: one connection of its key ends short.
pub(super) fn count_connections(path: &Path, port: u16, netns: u64) -> anyhow::Result<Counted> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    count_records(BufReader::with_capacity(1 << 20, f), port, netns)
}

fn count_records(mut r: impl BufRead, port: u16, netns: u64) -> anyhow::Result<Counted> {
    let mut c = Counted::default();
    // Per key, the connections still open, oldest first, as the events seen so far.
    let mut open: HashMap<(u64, IpAddr, u16), Vec<u8>> = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading the trace file")? == 0 {
            break;
        }
        c.lines += 1;
        let Ok(rec) = serde_json::from_str::<Record>(&line) else {
            c.unparsed += 1;
            continue;
        };
        if rec.event == "lost" {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            c.lost = Some(counters(&v));
            continue;
        }
        if rec.netns != Some(netns) {
            continue;
        }
        let (Some(lp), Some(pp)) = (rec.local_port, rec.peer_port) else {
            continue;
        };
        let active = rec.direction == Some("active");
        let passive = rec.direction == Some("passive");
        let (flag, addr, cport) = match rec.event {
            "connect" if pp == port => (CONNECT, rec.local_addr, lp),
            "accept" if lp == port => (ACCEPT, rec.peer_addr, pp),
            "close" if active && pp == port => (CLOSE_CLIENT, rec.local_addr, lp),
            "close" if passive && lp == port => (CLOSE_SERVER, rec.peer_addr, pp),
            // No direction: the server side is the one on the port.
            "expired" if pp == port => (CLOSE_CLIENT, rec.local_addr, lp),
            "expired" if lp == port => (CLOSE_SERVER, rec.peer_addr, pp),
            _ => continue,
        };
        if rec.event == "expired" {
            c.expired_closes += 1;
        }
        let Some(addr) = addr.and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        let key = (netns, addr, cport);
        let conns = open.entry(key).or_default();
        let i = match conns.iter().position(|seen| seen & flag == 0) {
            Some(i) => i,
            None => {
                conns.push(0);
                conns.len() - 1
            }
        };
        conns[i] |= flag;
        if conns[i] == ALL {
            c.complete += 1;
            conns.remove(i);
            if conns.is_empty() {
                open.remove(&key);
            }
        }
    }
    c.incomplete += open.values().map(|conns| conns.len() as u64).sum::<u64>();
    Ok(c)
}

/// What a `trace --format jsonl` file holds of a --hold run (connections opened, none closed).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(super) struct HeldCount {
    /// Every record in the file.
    pub(super) records: u64,
    /// The churn's records (its namespace, its server port) by event.
    pub(super) events: BTreeMap<String, u64>,
    /// Connections with both their connect and their accept in the file.
    pub(super) whole: u64,
    /// Connections with only one of them.
    pub(super) partial: u64,
    pub(super) lost: Option<BTreeMap<String, u64>>,
}

/// Counts a `trace` file of held connections to server `port` in namespace `netns`, keyed by
/// the client side (a held connection's port is not reused).
pub(super) fn count_held(path: &Path, port: u16, netns: u64) -> anyhow::Result<HeldCount> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    count_held_records(BufReader::with_capacity(1 << 20, f), port, netns)
}

fn count_held_records(mut r: impl BufRead, port: u16, netns: u64) -> anyhow::Result<HeldCount> {
    let mut c = HeldCount::default();
    let mut seen: HashMap<(IpAddr, u16), u8> = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading the trace file")? == 0 {
            break;
        }
        let Ok(rec) = serde_json::from_str::<Record>(&line) else {
            continue;
        };
        c.records += 1;
        if rec.event == "lost" {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            c.lost = Some(counters(&v));
            continue;
        }
        if rec.netns != Some(netns) {
            continue;
        }
        let (Some(lp), Some(pp)) = (rec.local_port, rec.peer_port) else {
            continue;
        };
        if lp != port && pp != port {
            continue;
        }
        *c.events.entry(rec.event.to_string()).or_default() += 1;
        let (flag, addr, cport) = match rec.event {
            "connect" if pp == port => (CONNECT, rec.local_addr, lp),
            "accept" if lp == port => (ACCEPT, rec.peer_addr, pp),
            _ => continue,
        };
        let Some(addr) = addr.and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        *seen.entry((addr, cport)).or_default() |= flag;
    }
    for flags in seen.values() {
        if *flags == CONNECT | ACCEPT {
            c.whole += 1;
        } else {
            c.partial += 1;
        }
    }
    Ok(c)
}

/// bpftrace lines `OLDSTATE NEWSTATE SPORT` that close (7 = TCP_CLOSE) a socket on `port`: one
/// per server-side connection.
pub(super) fn count_bpftrace_closes(path: &Path, port: u16) -> anyhow::Result<u64> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    for line in BufReader::new(f).lines() {
        let line = line?;
        let mut w = line.split_whitespace().skip(1);
        if w.next() == Some("7") && w.next().and_then(|p| p.parse::<u16>().ok()) == Some(port) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::PORT;

    fn rec(event: &str, local: (&str, u16), peer: (&str, u16), dir: &str, ns: u64) -> String {
        format!(
            r#"{{"time":"2026-11-21T09:45:28.565087036Z","event":"{event}","family":"ipv4","local_addr":"{}","local_port":{},"peer_addr":"{}","peer_port":{},"pid":null,"comm":"a\"b","cgroup_id":1,"netns":{ns},"direction":"{dir}"}}"#,
            local.0, local.1, peer.0, peer.1
        )
    }

    fn conn(lines: &mut Vec<String>, client: (&str, u16), ns: u64) {
        let server = ("127.0.0.1", PORT);
        lines.push(rec("connect", client, server, "active", ns));
        lines.push(rec("established", client, server, "active", ns));
        lines.push(rec("established", server, client, "passive", ns));
        lines.push(rec("accept", server, client, "passive", ns));
        lines.push(rec("close", server, client, "passive", ns));
        lines.push(rec("close", client, server, "active", ns));
    }

    #[test]
    fn counts_complete_connections_with_reused_ports() {
        let mut lines = Vec::new();
        conn(&mut lines, ("127.0.0.2", 40000), 7);
        // The same client port again (a new connection), and the same port from another source.
        conn(&mut lines, ("127.0.0.2", 40000), 7);
        conn(&mut lines, ("127.0.0.3", 40000), 7);
        // Another namespace: not ours.
        conn(&mut lines, ("127.0.0.2", 40001), 8);
        // Missing its accept, then the port reused by a complete one.
        let server = ("127.0.0.1", PORT);
        lines.push(rec("connect", ("127.0.0.4", 40002), server, "active", 7));
        lines.push(rec("close", ("127.0.0.4", 40002), server, "active", 7));
        conn(&mut lines, ("127.0.0.4", 40002), 7);
        // Its server-side close missed by the kernel, and expired by sockwatch.
        let client = ("127.0.0.5", 40004);
        lines.push(rec("connect", client, server, "active", 7));
        lines.push(rec("accept", server, client, "passive", 7));
        lines.push(rec("close", client, server, "active", 7));
        lines.push(format!(
            r#"{{"time":"t","event":"expired","netns":7,"family":"ipv4","local_addr":"127.0.0.1","local_port":{PORT},"peer_addr":"127.0.0.5","peer_port":40004}}"#
        ));
        // Its server-side close missed too, its port reused at once: the expired record comes
        // when the new connection's server side is established, after the new connect.
        let client = ("127.0.0.6", 40005);
        lines.push(rec("connect", client, server, "active", 7));
        lines.push(rec("accept", server, client, "passive", 7));
        lines.push(rec("close", client, server, "active", 7));
        lines.push(rec("connect", client, server, "active", 7));
        lines.push(rec("established", client, server, "active", 7));
        lines.push(format!(
            r#"{{"time":"t","event":"expired","netns":7,"family":"ipv4","local_addr":"127.0.0.1","local_port":{PORT},"peer_addr":"127.0.0.6","peer_port":40005}}"#
        ));
        lines.push(rec("established", server, client, "passive", 7));
        lines.push(rec("accept", server, client, "passive", 7));
        lines.push(rec("close", server, client, "passive", 7));
        lines.push(rec("close", client, server, "active", 7));
        // Never closed.
        lines.push(rec("connect", ("127.0.0.4", 40003), server, "active", 7));
        lines.push("not json".into());
        lines.push(
            r#"{"time":"t","event":"stats","accept_would_block":0,"accept_interrupted":0}"#.into(),
        );
        lines.push(
            r#"{"time":"t","event":"lost","total":3,"ringbuf_full":2,"recursion_misses":1}"#.into(),
        );
        let text = lines.join("\n") + "\n";
        let c = count_records(text.as_bytes(), PORT, 7).unwrap();
        assert_eq!(c.complete, 7);
        assert_eq!(c.expired_closes, 2);
        assert_eq!(c.incomplete, 2);
        assert_eq!(c.unparsed, 1);
        assert_eq!(c.lines, lines.len() as u64);
        let lost = c.lost.unwrap();
        assert_eq!(lost["total"], 3);
        assert_eq!(lost["ringbuf_full"], 2);
        assert_eq!(lost["recursion_misses"], 1);
        assert!(!lost.contains_key("event") && !lost.contains_key("time"));
    }

    #[test]
    fn counts_held_connections() {
        let server = ("127.0.0.1", PORT);
        let mut lines = Vec::new();
        for (client, accept) in [
            (("127.0.0.2", 40000), true),
            (("127.0.0.3", 40000), true),
            // Its accept lost.
            (("127.0.0.2", 40001), false),
        ] {
            lines.push(rec("connect", client, server, "active", 7));
            lines.push(rec("established", server, client, "passive", 7));
            if accept {
                lines.push(rec("accept", server, client, "passive", 7));
            }
        }
        // Its connect lost; and another namespace's.
        lines.push(rec("accept", server, ("127.0.0.4", 40002), "passive", 7));
        lines.push(rec("connect", ("127.0.0.2", 40003), server, "active", 8));
        lines.push(
            r#"{"time":"t","event":"lost","total":3,"ringbuf_full":3,"recursion_misses":0}"#.into(),
        );
        let text = lines.join("\n") + "\n";
        let c = count_held_records(text.as_bytes(), PORT, 7).unwrap();
        assert_eq!((c.whole, c.partial), (2, 2));
        assert_eq!(c.records, lines.len() as u64);
        assert_eq!(c.events["connect"], 3);
        assert_eq!(c.events["accept"], 3);
        assert_eq!(c.events["established"], 3);
        assert_eq!(c.lost.unwrap()["ringbuf_full"], 3);
    }

    #[test]
    fn finds_the_churn_listener() {
        let s: serde_json::Value = serde_json::from_str(
            r#"{"listeners":[{"netns":1,"port":7913,"established_now":3},{"netns":2,"port":7913,"established_now":9}],"lost":{"total":0,"ringbuf_full":0}}"#,
        )
        .unwrap();
        assert_eq!(listener(&s, PORT, 2).unwrap()["established_now"], 9);
        assert!(listener(&s, PORT, 3).is_none());
        assert_eq!(counters(&s["lost"]).len(), 2);
    }
}
