//! `--concurrency N`: holds N connections open under `sockwatch top` and checks its count.
use std::{
    collections::BTreeMap,
    fs,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    Bench, CHURN_MAX_SECONDS, INTERVAL, Mode,
    count::{counters, listener},
    progress,
    run::{Churn, parse_churn},
    tracer::{Reaped, lines_in_background, rss_kib, spawn_dying_with_us},
};

/// sockwatch's `--expire-interval` here: the first check (a sock_diag dump of every
/// connection) comes once the ramp is over, while all are held, so that its memory is in the
/// peak too.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(15);
/// Time for that check to finish.
const EXPIRE_CHECK_TIME: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub(super) struct Concurrency {
    pub(super) requested: u64,
    /// Connections opened per second during the ramp (--concurrency-rate).
    pub(super) ramp_rate: u64,
    pub(super) held: u64,
    pub(super) established_now: Option<u64>,
    pub(super) matches: bool,
    pub(super) peak_rss_kib: u64,
    pub(super) rss_at_ready_kib: Option<u64>,
    /// (peak - at ready) / held.
    pub(super) rss_bytes_per_connection: Option<f64>,
    /// peak / held.
    pub(super) peak_rss_bytes_per_connection: f64,
    pub(super) tracer_cpu_s: f64,
    pub(super) lost: Option<BTreeMap<String, u64>>,
    pub(super) churn: Option<Churn>,
}

impl Bench<'_> {
    /// Holds `n` connections, opened at `rate` per second, under `sockwatch top` and compares
    /// its count with `n`.
    pub(super) fn concurrency(&self, n: u64, rate: u64) -> anyhow::Result<Concurrency> {
        progress(format!(
            "concurrency: starting sockwatch top, then opening {n} connections at {rate}/s and holding them"
        ));
        let expire = EXPIRE_INTERVAL.as_secs().to_string();
        let mut t = self.start_sockwatch(Mode::Top, true, &["--expire-interval", &expire])?;
        let started = Instant::now();
        let rss_ready = rss_kib(t.pid);
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args(None))
            .args([
                "--hold",
                "--connections",
                &n.to_string(),
                "--max-seconds",
                &CHURN_MAX_SECONDS.to_string(),
                "--rate",
                &rate.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = Reaped(spawn_dying_with_us(cmd, libc::SIGKILL, "sockwatch-churn")?);
        let stdin: Option<ChildStdin> = child.0.stdin.take();
        let lines = lines_in_background(child.0.stdout.take());
        let until = Instant::now() + Duration::from_secs(CHURN_MAX_SECONDS);
        let held = loop {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    if let Some(h) = line.strip_prefix("held ") {
                        break h.trim().parse::<u64>().context("bad `held` line")?;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {
                    if let Some(st) = child.0.try_wait()? {
                        bail!(
                            "sockwatch-churn --hold exited ({st}) before holding its connections"
                        );
                    }
                }
                Err(_) => bail!("sockwatch-churn --hold did not report `held` in time"),
            }
        };
        progress(format!(
            "concurrency: {held} connections held; waiting for two samples and an expiry check"
        ));
        let samples_done = Instant::now() + Duration::from_millis(2 * INTERVAL * 1000 + 500);
        thread::sleep(
            samples_done
                .max(started + EXPIRE_INTERVAL + EXPIRE_CHECK_TIME)
                .saturating_duration_since(Instant::now()),
        );
        let usage = t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let summary_text = t.stdout();
        // Let the churn close everything and report.
        drop(stdin);
        let mut churn_out = String::new();
        let until = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            churn_out.push_str(&line);
            churn_out.push('\n');
        }
        let exit = loop {
            if let Some(st) = child.0.try_wait()? {
                break Some(st);
            }
            if Instant::now() > until {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        if exit.is_none() {
            progress(
                "warning: sockwatch-churn --hold did not exit within 60 s of its stdin closing (killed)",
            );
        }
        let churn = parse_churn(&churn_out).ok();
        let summary: serde_json::Value = serde_json::from_str(&summary_text)
            .context("sockwatch top --format json printed no valid summary")?;
        let established_now = churn
            .as_ref()
            .and_then(|c| listener(&summary, c.port, c.netns))
            .and_then(|l| l["established_now"].as_u64());
        let peak = usage.maxrss_kib;
        let per_conn = |kib: u64| (kib * 1024) as f64 / held.max(1) as f64;
        Ok(Concurrency {
            requested: n,
            ramp_rate: rate,
            held,
            established_now,
            matches: established_now == Some(n) && held == n,
            peak_rss_kib: peak,
            rss_at_ready_kib: rss_ready,
            rss_bytes_per_connection: rss_ready.map(|r| per_conn(peak.saturating_sub(r))),
            peak_rss_bytes_per_connection: per_conn(peak),
            tracer_cpu_s: usage.cpu_s,
            lost: Some(counters(&summary["lost"])),
            churn,
        })
    }
}
