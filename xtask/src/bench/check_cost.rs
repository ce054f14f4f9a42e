//! The CPU of sockwatch's checks against the kernel's socket table, for `--concurrency`:
//! sockwatch is sampled (CPU time, whether its dump thread runs) over a quiet window of several
//! checks, and the idle rate is taken off.
use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;

use super::{
    concurrency::CHECKS_IN_WINDOW,
    procfs::{clock_ticks, parse_stat_ticks, threads_named},
    progress,
};

/// How often the window samples sockwatch's CPU time and threads.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// After its dump thread ends, a check goes on for a moment on the main thread (the expiry
/// and the corrections of the open counts): this long counts as the check's too.
const AFTER_DUMP: Duration = Duration::from_secs(1);
/// The name of the thread that reads the kernel's socket table for a check.
const DUMP_THREAD: &str = "sockwatch-dump";
/// One reading of sockwatch during the window: seconds since its start, its CPU time in
/// clock ticks, and whether a check's dump thread was running.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) t: f64,
    pub(super) ticks: u64,
    pub(super) dump: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct CheckCost {
    pub(super) expire_interval_s: u64,
    pub(super) window_s: f64,
    /// Checks that ended in the window (dump threads seen to end).
    pub(super) checks: u32,
    /// sockwatch's CPU over the window (utime + stime).
    pub(super) cpu_s: f64,
    /// The part of the window outside checks, and sockwatch's CPU per second there.
    pub(super) idle_s: f64,
    pub(super) idle_cpu_s_per_s: f64,
    /// (cpu_s - idle_cpu_s_per_s * window_s) / checks.
    pub(super) cpu_s_per_check: Option<f64>,
    /// How long a check's dump thread lived (median; to the sampling's 0.1 s).
    pub(super) dump_s_median: Option<f64>,
}

/// CPU per check from samples taken every SAMPLE_EVERY over a window: a stretch between two
/// samples belongs to a check when a dump thread is seen at either end, or when it starts less
/// than `after_s` after a dump thread was first seen gone; the rest is idle, and its CPU per second, times the whole window, is
/// what the window would have cost without checks. The remainder over the checks that ended in
/// the window is the CPU of one check.
pub(super) fn check_cost(
    samples: &[Sample],
    hz: f64,
    after_s: f64,
    interval_s: u64,
) -> Option<CheckCost> {
    let (first, last) = (samples.first()?, samples.last()?);
    let mut idle_s = 0.0;
    let mut idle_ticks = 0u64;
    // When the last check's dump thread was first seen gone.
    let mut ended: Option<f64> = None;
    let mut checks = 0u32;
    let mut dumps = Vec::new();
    let mut dump_start: Option<f64> = None;
    for w in samples.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.dump {
            dump_start.get_or_insert(a.t);
        }
        if a.dump && !b.dump {
            checks += 1;
            ended = Some(b.t);
            if let Some(s) = dump_start.take() {
                dumps.push(b.t - s);
            }
        }
        let busy = a.dump || b.dump || ended.is_some_and(|e| a.t < e + after_s);
        if !busy {
            idle_s += b.t - a.t;
            idle_ticks += b.ticks.saturating_sub(a.ticks);
        }
    }
    let window_s = last.t - first.t;
    let cpu_s = last.ticks.saturating_sub(first.ticks) as f64 / hz;
    let idle_cpu_s_per_s = if idle_s > 0.0 {
        idle_ticks as f64 / hz / idle_s
    } else {
        0.0
    };
    Some(CheckCost {
        expire_interval_s: interval_s,
        window_s,
        checks,
        cpu_s,
        idle_s,
        idle_cpu_s_per_s,
        cpu_s_per_check: (checks > 0)
            .then(|| (cpu_s - idle_cpu_s_per_s * window_s) / f64::from(checks)),
        dump_s_median: (!dumps.is_empty()).then(|| super::report::median(dumps)),
    })
}

/// Waits for a check to come and go, then samples sockwatch over the next CHECKS_IN_WINDOW
/// checks (see `check_cost`). None if no check was seen in time.
pub(super) fn measure_checks(
    pid: libc::pid_t,
    interval: Duration,
    tick: &mut impl FnMut(),
) -> anyhow::Result<Option<CheckCost>> {
    let ticks = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat_ticks(&s))
    };
    let dumping = || !threads_named(pid, DUMP_THREAD).is_empty();
    progress(format!(
        "concurrency: waiting for sockwatch's next check (every {} s) to start the quiet window",
        interval.as_secs()
    ));
    let until = Instant::now() + 2 * interval + Duration::from_secs(60);
    let mut seen = false;
    loop {
        let d = dumping();
        if d {
            seen = true;
        } else if seen {
            break;
        }
        if Instant::now() > until {
            progress("warning: no check of sockwatch's seen in time: no CPU per check");
            return Ok(None);
        }
        thread::sleep(SAMPLE_EVERY);
    }
    thread::sleep(AFTER_DUMP);
    progress(format!(
        "concurrency: quiet window: sockwatch's CPU over {CHECKS_IN_WINDOW} checks (about {} s)",
        interval.as_secs() * u64::from(CHECKS_IN_WINDOW)
    ));
    let start = Instant::now();
    let until = start + interval * (CHECKS_IN_WINDOW + 1) + Duration::from_secs(60);
    let mut samples = Vec::new();
    let mut done = 0;
    let mut last_done = start;
    let mut prev = false;
    let mut next_tick = start;
    loop {
        let Some(t) = ticks() else {
            bail!("sockwatch exited during the quiet window");
        };
        let d = dumping();
        samples.push(Sample {
            t: start.elapsed().as_secs_f64(),
            ticks: t,
            dump: d,
        });
        if prev && !d {
            done += 1;
            last_done = Instant::now();
            progress(format!(
                "concurrency: check {done}/{CHECKS_IN_WINDOW} over ({:.0} s into the window)",
                start.elapsed().as_secs_f64()
            ));
        }
        prev = d;
        if done >= CHECKS_IN_WINDOW && last_done.elapsed() >= AFTER_DUMP {
            break;
        }
        if Instant::now() > until {
            progress(format!(
                "warning: only {done} of {CHECKS_IN_WINDOW} checks ended in the window"
            ));
            break;
        }
        if Instant::now() >= next_tick {
            tick();
            next_tick += Duration::from_millis(500);
        }
        thread::sleep(SAMPLE_EVERY);
    }
    Ok(check_cost(
        &samples,
        clock_ticks(),
        AFTER_DUMP.as_secs_f64(),
        interval.as_secs(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(spec: &[(f64, u64, bool)]) -> Vec<Sample> {
        spec.iter()
            .map(|&(t, ticks, dump)| Sample { t, ticks, dump })
            .collect()
    }

    #[test]
    fn check_cost_takes_the_idle_rate_off() {
        // 100 ticks/s. Idle: 1 tick per second. Two checks of 1 s, each costing 50 ticks
        // beyond idle, at t = 2..3 and 6..7; AFTER_DUMP 0.5 s.
        let s = samples(&[
            (0.0, 0, false),
            (1.0, 1, false),
            (2.0, 2, false),
            (2.5, 30, true),
            (3.0, 53, false),
            (4.0, 54, false),
            (5.0, 55, false),
            (6.0, 56, false),
            (6.5, 90, true),
            (7.0, 107, false),
            (8.0, 108, false),
        ]);
        let c = check_cost(&s, 100.0, 0.5, 10).unwrap();
        assert_eq!(c.checks, 2);
        assert!((c.window_s - 8.0).abs() < 1e-9);
        assert!((c.cpu_s - 1.08).abs() < 1e-9);
        // Busy: 2-2.5 and 2.5-3 (the dump), 3-4 (it starts as the dump is seen gone), and
        // the same from 6 to 8; idle: 0-2 and 4-6.
        assert!((c.idle_s - 4.0).abs() < 1e-9);
        assert!((c.idle_cpu_s_per_s - 0.01).abs() < 1e-9);
        // (1.08 - 0.08) / 2
        assert!((c.cpu_s_per_check.unwrap() - 0.5).abs() < 1e-9);
        assert!((c.dump_s_median.unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn check_cost_without_checks() {
        let s = samples(&[(0.0, 0, false), (1.0, 3, false)]);
        let c = check_cost(&s, 100.0, 1.0, 10).unwrap();
        assert_eq!((c.checks, c.cpu_s_per_check), (0, None));
        assert!((c.idle_cpu_s_per_s - 0.03).abs() < 1e-9);
        assert!(check_cost(&[], 100.0, 1.0, 10).is_none());
    }

    #[test]
    fn the_stretch_right_after_a_check_is_the_checks() {
        let s = samples(&[
            (0.0, 0, true),
            (0.5, 10, false),
            (1.0, 20, false),
            (2.0, 21, false),
        ]);
        let c = check_cost(&s, 100.0, 1.0, 10).unwrap();
        // 0-0.5 (dump), 0.5-1.0 and 1.0-2.0 (they start less than 1 s after the dump was
        // seen gone at 0.5): busy; nothing idle.
        assert_eq!(c.checks, 1);
        assert_eq!(c.idle_s, 0.0);
        assert!((c.cpu_s_per_check.unwrap() - 0.21).abs() < 1e-9);
    }
}
