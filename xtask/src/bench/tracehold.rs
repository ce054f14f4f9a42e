//! `--concurrency-trace`: `sockwatch trace --output FILE --format jsonl` (its default options
//! but the ring) on the same ramp as `--concurrency`: what it loses with the default ring
//! (64M), then with the ring doubled until it loses nothing (at most 1G), and its reader's
//! ceiling: the records it wrote over the CPU seconds of its reader, the main thread (which
//! reads the ring, formats and writes), from ready until the file stopped growing.
use std::{
    collections::BTreeMap,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    Bench, Mode, PORT,
    concurrency::{check_fit, netns_inode, settle},
    count::{HeldCount, count_held},
    procfs::{clock_ticks, parse_stat_ticks},
    progress,
    render::table,
    tracer::NetnsHolder,
};

const DEFAULT_RING_MIB: u64 = 64;
const MAX_RING_MIB: u64 = 1024;
/// The events are all written when the file has grown by less than QUIET_BYTES in QUIET (it
/// never stops: a host sample every second; sockwatch flushes every 0.5 s).
const QUIET: Duration = Duration::from_secs(3);
const QUIET_BYTES: u64 = 256 << 10;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize)]
pub(super) struct TraceHoldRun {
    pub(super) ring: String,
    pub(super) held: u64,
    pub(super) ramp_s: f64,
    pub(super) ready_s: Option<f64>,
    pub(super) count: HeldCount,
    /// The file's `lost` record: total and ringbuf_full.
    pub(super) lost_total: Option<u64>,
    pub(super) ringbuf_full: Option<u64>,
    /// From every connection held to the file no longer growing.
    pub(super) drain_s: f64,
    /// CPU of sockwatch's main thread (the reader) from ready until the file stopped growing.
    pub(super) reader_cpu_s: f64,
    /// count.records / reader_cpu_s.
    pub(super) records_per_reader_cpu_s: f64,
    /// sockwatch's CPU over its whole life (its stop, a last look at every connection,
    /// included).
    pub(super) sockwatch_cpu_s: f64,
    pub(super) file_mib: f64,
}

impl TraceHoldRun {
    /// Every connection whole in the file and nothing counted lost.
    pub(super) fn lossless(&self) -> bool {
        self.lost_total == Some(0) && self.count.partial == 0 && self.count.whole == self.held
    }
}

#[derive(Debug, Serialize)]
pub(super) struct TraceHold {
    pub(super) requested: u64,
    pub(super) ramp_rate: Option<u64>,
    pub(super) command: String,
    pub(super) runs: Vec<TraceHoldRun>,
    /// The smallest ring tried that lost nothing.
    pub(super) lossless_ring: Option<String>,
}

/// CPU seconds of one thread.
fn thread_cpu_s(pid: libc::pid_t, tid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

impl Bench<'_> {
    pub(super) fn trace_hold(&self, n: u64, rate: Option<u64>) -> anyhow::Result<TraceHold> {
        let mut runs = Vec::new();
        let mut ring = DEFAULT_RING_MIB;
        let mut lossless_ring = None;
        loop {
            let run = self.trace_hold_run(n, rate, ring)?;
            let lossless = run.lossless();
            runs.push(run);
            if lossless {
                lossless_ring = Some(format!("{ring}M"));
                break;
            }
            if ring >= MAX_RING_MIB {
                progress(format!(
                    "trace: still losing events with a {MAX_RING_MIB}M ring: no larger ring is tried"
                ));
                break;
            }
            ring *= 2;
        }
        Ok(TraceHold {
            requested: n,
            ramp_rate: rate,
            command: self.default_command(Mode::Trace, &["--ring-size", "SIZE"]),
            runs,
            lossless_ring,
        })
    }

    fn trace_hold_run(
        &self,
        n: u64,
        rate: Option<u64>,
        ring_mib: u64,
    ) -> anyhow::Result<TraceHoldRun> {
        check_fit(n)?;
        let ring = format!("{ring_mib}M");
        let file = self.trace_file();
        let _ = fs::remove_file(&file);
        progress(format!(
            "trace: {n} connections {} under `sockwatch trace --ring-size {ring}`",
            rate.map_or_else(|| "unpaced".to_string(), |r| format!("at {r}/s"))
        ));
        let mut t = self.start_sockwatch_default(Mode::Trace, false, &["--ring-size", &ring])?;
        let pid = t.pid;
        let reader_at_ready = thread_cpu_s(pid, pid).unwrap_or(0.0);
        let holder = NetnsHolder::spawn()?;
        let netns = netns_inode(&holder.path())?;
        let before = super::procfs::meminfo().map(|m| m.1);
        let held = self.hold(n, rate, &holder.path(), || {})?;
        progress(format!(
            "trace: {} held after {:.1} s; waiting for the file to stop growing",
            held.held, held.ramp_s
        ));
        let started = Instant::now();
        let size = || fs::metadata(&file).map_or(0, |m| m.len());
        // (when, size) over the last QUIET.
        let mut recent = std::collections::VecDeque::from([(Instant::now(), size())]);
        let mut grew = Instant::now();
        let mut next_word = started + Duration::from_secs(10);
        while started.elapsed() < DRAIN_TIMEOUT {
            thread::sleep(Duration::from_millis(250));
            let now = size();
            recent.push_back((Instant::now(), now));
            while recent.len() > 1 && recent[0].0.elapsed() > QUIET {
                recent.pop_front();
            }
            let (since, then) = recent[0];
            if now.saturating_sub(then) >= QUIET_BYTES {
                grew = Instant::now();
            } else if since.elapsed() + Duration::from_millis(300) >= QUIET {
                break;
            }
            if Instant::now() > next_word {
                progress(format!("trace: the file holds {} MiB and grows", now >> 20));
                next_word += Duration::from_secs(10);
            }
        }
        let drain_s = grew.saturating_duration_since(started).as_secs_f64();
        let reader_cpu_s = thread_cpu_s(pid, pid).unwrap_or(0.0) - reader_at_ready;
        progress("trace: stopping sockwatch");
        let usage = t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let file_mib = size() as f64 / f64::from(1 << 20);
        progress(format!(
            "trace: counting the connections in {} ({file_mib:.0} MiB)",
            file.display()
        ));
        let count = count_held(&file, PORT, netns)
            .with_context(|| format!("counting {}", file.display()))?;
        // Hundreds of megabytes: not kept.
        let _ = fs::remove_file(&file);
        let (held_n, ramp_s) = (held.held, held.ramp_s);
        let _ = held.release();
        drop(holder);
        if let Some(b) = before {
            settle(b);
        }
        let lost: BTreeMap<String, u64> = count.lost.clone().unwrap_or_default();
        let run = TraceHoldRun {
            ring,
            held: held_n,
            ramp_s,
            ready_s: t.ready_s,
            lost_total: lost.get("total").copied(),
            ringbuf_full: lost.get("ringbuf_full").copied(),
            drain_s,
            reader_cpu_s,
            records_per_reader_cpu_s: count.records as f64 / reader_cpu_s.max(1e-9),
            sockwatch_cpu_s: usage.cpu_s,
            file_mib,
            count,
        };
        progress(format!(
            "trace: ring {}: {} of {} connections whole, {} partial; lost {} (ringbuf_full {})",
            run.ring,
            run.count.whole,
            run.held,
            run.count.partial,
            run.lost_total.map_or("?".into(), |v| v.to_string()),
            run.ringbuf_full.map_or("?".into(), |v| v.to_string()),
        ));
        Ok(run)
    }
}

/// The trace part of the report, for people.
pub(super) fn render(t: &TraceHold) -> String {
    let mut out = format!(
        "\nTRACE ON THE HELD RAMP: {} connections {}: {}\n",
        t.requested,
        t.ramp_rate
            .map_or_else(|| "unpaced".to_string(), |r| format!("at {r}/s")),
        t.command
    );
    let mut rows = vec![
        [
            "RING",
            "HELD",
            "RAMP S",
            "WHOLE",
            "PARTIAL",
            "RINGBUF_FULL",
            "LOST",
            "RECORDS",
            "DRAIN S",
            "READER CPU S",
            "RECORDS/CPU S",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let u = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in &t.runs {
        rows.push(vec![
            r.ring.clone(),
            r.held.to_string(),
            format!("{:.1}", r.ramp_s),
            r.count.whole.to_string(),
            r.count.partial.to_string(),
            u(r.ringbuf_full),
            u(r.lost_total),
            r.count.records.to_string(),
            format!("{:.1}", r.drain_s),
            format!("{:.2}", r.reader_cpu_s),
            format!("{:.0}", r.records_per_reader_cpu_s),
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "WHOLE: connections with their connect and accept in the file. RECORDS/CPU S: records \
         written over the CPU of sockwatch's main thread (the reader: ring, formatting, writing) \
         from ready until the file stopped growing.\nsmallest ring that lost nothing: {}\n",
        t.lossless_ring
            .clone()
            .unwrap_or_else(|| format!("none up to {MAX_RING_MIB}M"))
    ));
    out
}
