//! `--soak SECONDS`: a steady churn at a bounded rate under `sockwatch top` for a long time,
//! sampling sockwatch's memory, to show that nothing grows without bound and that the counts
//! stay exact over time.
use std::{
    collections::BTreeMap,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    Bench, CLOSE_GRACE, Mode,
    count::{counters, listener},
    procfs::rss_kib,
    progress,
    run::{Churn, parse_churn},
    tracer::{Reaped, read_all_in_background, spawn_dying_with_us},
};

/// How often sockwatch's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// RSS may end this much above its post-warm-up value and still count as flat: 10% plus a
/// small constant (allocator slack, the ring's pages touched late).
const FLAT_FACTOR: f64 = 1.1;
const FLAT_SLACK_KIB: u64 = 4096;
/// Memory before this is not compared: the ring buffer's 32 MiB of pages and the allocator's
/// per-thread arenas are first touched during it (measured: RSS rises for about 40 s at 2000
/// connections/s, then stays put).
const WARM_UP_SECONDS: u64 = 120;
/// The churn gets this long beyond the soak's length before it is stopped.
const CHURN_GRACE_SECONDS: u64 = 120;

#[derive(Debug, Serialize)]
pub(super) struct Soak {
    pub(super) seconds: u64,
    pub(super) rate: u64,
    /// Connections the churn made, and sockwatch's accepted count on its port.
    pub(super) made: u64,
    pub(super) counted: Option<u64>,
    pub(super) closed: Option<u64>,
    /// Open on the churn's port at the end (all its connections are closed by then: 0).
    pub(super) established_now: Option<u64>,
    pub(super) expected_established: u64,
    /// (seconds since sockwatch was ready, VmRSS KiB).
    pub(super) rss_samples: Vec<(u64, u64)>,
    pub(super) warm_up_seconds: u64,
    pub(super) rss_first_kib: Option<u64>,
    pub(super) rss_last_kib: Option<u64>,
    pub(super) rss_max_kib: Option<u64>,
    /// last <= first * FLAT_FACTOR + FLAT_SLACK_KIB, with first taken after the warm-up.
    pub(super) rss_flat: bool,
    pub(super) tracer_cpu_s: f64,
    pub(super) lost: BTreeMap<String, u64>,
    pub(super) churn: Churn,
}

impl Soak {
    /// Everything a soak promises: memory flat, every connection counted, none left open, and
    /// every close seen or, where it was missed (a counted loss), expired.
    pub(super) fn passed(&self) -> bool {
        let expired = self.lost.get("expired").copied().unwrap_or(0);
        self.rss_flat
            && self.counted == Some(self.made)
            && self.closed.map(|c| c + expired) == Some(self.made)
            && self.established_now == Some(self.expected_established)
    }
}

/// The first sample at or after the warm-up, the last and the largest.
fn rss_figures(samples: &[(u64, u64)], warm_up: u64) -> (Option<u64>, Option<u64>, Option<u64>) {
    let first = samples
        .iter()
        .find(|(t, _)| *t >= warm_up)
        .or(samples.last())
        .map(|s| s.1);
    let last = samples.last().map(|s| s.1);
    let max = samples.iter().map(|s| s.1).max();
    (first, last, max)
}

fn is_flat(first: Option<u64>, last: Option<u64>) -> bool {
    match (first, last) {
        (Some(f), Some(l)) => l as f64 <= f as f64 * FLAT_FACTOR + FLAT_SLACK_KIB as f64,
        _ => false,
    }
}

impl Bench<'_> {
    /// Runs `rate` connections/s for `seconds` under `sockwatch top`.
    pub(super) fn soak(&self, seconds: u64, rate: u64) -> anyhow::Result<Soak> {
        progress(format!(
            "soak: {seconds} s at {rate} connections/s under sockwatch top"
        ));
        let mut t = self.start_sockwatch(Mode::Top, true, &[])?;
        let ready_at = Instant::now();
        let total = seconds * rate;
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args(None))
            .args([
                "--connections",
                &total.to_string(),
                "--rate",
                &rate.to_string(),
                "--close",
                &self.args.close,
                "--max-seconds",
                &(seconds + CHURN_GRACE_SECONDS).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = Reaped(spawn_dying_with_us(cmd, libc::SIGKILL, "sockwatch-churn")?);
        let stdout = read_all_in_background(child.0.stdout.take());
        let until = Instant::now() + Duration::from_secs(seconds + CHURN_GRACE_SECONDS + 60);
        let mut samples = Vec::new();
        let mut next_sample = Instant::now();
        let status = loop {
            if Instant::now() >= next_sample {
                if let Some(kib) = rss_kib(t.pid) {
                    let at = ready_at.elapsed().as_secs();
                    if samples.len() % 12 == 0 {
                        progress(format!("soak: {at} s, sockwatch RSS {} MiB", kib / 1024));
                    }
                    samples.push((at, kib));
                }
                next_sample += SAMPLE_EVERY;
            }
            if let Some(st) = child.0.try_wait()? {
                break st;
            }
            if Instant::now() > until {
                bail!("sockwatch-churn did not finish its soak in time (killed)");
            }
            thread::sleep(Duration::from_millis(100));
        };
        // One last reading with the load just over.
        if let Some(kib) = rss_kib(t.pid) {
            samples.push((ready_at.elapsed().as_secs(), kib));
        }
        // The last server-side closes follow the churn's exit (see CLOSE_GRACE).
        thread::sleep(CLOSE_GRACE);
        let usage = t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let churn_out = stdout.join().unwrap_or_default();
        if !status.success() {
            bail!("sockwatch-churn failed ({status}): {}", churn_out.trim());
        }
        let churn = parse_churn(&churn_out)?;
        let summary: serde_json::Value = serde_json::from_str(&t.stdout())
            .context("sockwatch top --format json printed no valid summary")?;
        let row = listener(&summary, churn.port, churn.netns);
        let warm_up = (seconds / 2).min(WARM_UP_SECONDS);
        let (first, last, max) = rss_figures(&samples, warm_up);
        Ok(Soak {
            seconds,
            rate,
            made: churn.connections,
            counted: row.and_then(|l| l["accepted"].as_u64()),
            closed: row.and_then(|l| l["closed"].as_u64()),
            established_now: row.and_then(|l| l["established_now"].as_u64()),
            expected_established: 0,
            rss_samples: samples,
            warm_up_seconds: warm_up,
            rss_first_kib: first,
            rss_last_kib: last,
            rss_max_kib: max,
            rss_flat: is_flat(first, last),
            tracer_cpu_s: usage.cpu_s,
            lost: counters(&summary["lost"]),
            churn,
        })
    }
}

/// The soak's report, for people.
pub(super) fn render(s: &Soak) -> String {
    let mib = |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let lost: Vec<String> = s.lost.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "sockwatch soak: {} s at {} connections/s under `sockwatch top` ({:.0}/s achieved, {} errors)\n\
         connections: made {}  counted {}  closed {}  established_now {} (expected {})\n\
         RSS MiB: first (after {} s warm-up) {}  last {}  max {}  flat: {}\n\
         sockwatch CPU: {:.1} s ({:.3} s per 100k connections)\n\
         lost: {}\n\
         result: {}\n",
        s.seconds,
        s.rate,
        s.churn.rate,
        s.churn.errors,
        s.made,
        opt(s.counted),
        opt(s.closed),
        opt(s.established_now),
        s.expected_established,
        s.warm_up_seconds,
        mib(s.rss_first_kib),
        mib(s.rss_last_kib),
        mib(s.rss_max_kib),
        if s.rss_flat { "yes" } else { "NO" },
        s.tracer_cpu_s,
        s.tracer_cpu_s / (s.made.max(1) as f64 / 100_000.0),
        lost.join(" "),
        if s.passed() { "PASS" } else { "FAIL" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_taken_after_the_warm_up() {
        let samples = [(0, 50_000), (5, 90_000), (10, 95_000), (15, 96_000)];
        assert_eq!(
            rss_figures(&samples, 10),
            (Some(95_000), Some(96_000), Some(96_000))
        );
        // A run shorter than the warm-up compares with its last sample.
        assert_eq!(rss_figures(&samples, 99).0, Some(96_000));
        assert_eq!(rss_figures(&[], 10), (None, None, None));
    }

    #[test]
    fn flat_allows_ten_percent_and_a_little() {
        assert!(is_flat(Some(100_000), Some(110_000)));
        assert!(is_flat(Some(100_000), Some(114_000)));
        assert!(!is_flat(Some(100_000), Some(115_000)));
        assert!(is_flat(Some(100_000), Some(60_000)));
        assert!(!is_flat(None, Some(1)));
    }
}
