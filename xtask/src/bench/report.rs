//! Each row's rounds summed up: medians over rounds, the comparison with the untraced run and
//! with the baseline build, and what goes into results.json (rendered by `render`).
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    Mode,
    baseline::Baseline,
    bpf_stats::{KernelTime, ProgramMedians, program_medians},
    concurrency::Concurrency,
    run::Churn,
    tracehold::TraceHold,
};

/// One mode's run in one round.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Round {
    pub(super) round: u32,
    pub(super) churn: Churn,
    /// The tracer's user + system CPU seconds over its whole life (wait4 rusage).
    pub(super) tracer_cpu_s: Option<f64>,
    /// Of which before it was ready (loading and attaching; from /proc at readiness).
    pub(super) tracer_startup_cpu_s: Option<f64>,
    /// ru_maxrss.
    pub(super) tracer_peak_rss_kib: Option<u64>,
    /// trace: connections of the churn with connect, accept and both closes in the file;
    /// top: `accepted` of the churn's listener; bpftrace: server-side CLOSE transitions.
    pub(super) seen: Option<u64>,
    /// trace: the churn's connections with some of their events missing from the file.
    pub(super) incomplete: Option<u64>,
    /// trace: closes in `seen` that are `expired` records (no close from the kernel).
    pub(super) expired_closes: Option<u64>,
    /// The final loss counters (trace: the file's `lost` record; top: the summary's `lost`).
    pub(super) lost: Option<BTreeMap<String, u64>>,
    /// top: its counts on the churn's port against what the churn made.
    pub(super) exact: Option<Exact>,
    /// sockwatch: its BPF programs' kernel time (kernel.bpf_stats_enabled), read just before
    /// it was stopped.
    pub(super) kernel: Option<KernelTime>,
}

/// A `top` round's counts on the churn's listener, and whether they are exact.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Exact {
    pub(super) accepted: Option<u64>,
    pub(super) closed: Option<u64>,
    pub(super) established_now: Option<u64>,
    /// The summary's `open_corrections` (builds that have it).
    pub(super) open_corrections: Option<serde_json::Value>,
    /// Closes the kernel never reported (it skips a few runs under churn, see
    /// docs/limits.md#missed-closes), found from its socket table instead: `released` in
    /// open_corrections, or `expired` in lost (builds before the in-kernel counts).
    pub(super) closes_found: u64,
    /// See `is_exact`.
    pub(super) exact: bool,
}

/// Whether a churn round's counts are exact: every connection made was accepted, and closed
/// (as a close event, or found gone from the kernel's socket table: `closes_found`), and none
/// is left open (the churn closes them all).
pub(super) fn is_exact(
    made: u64,
    accepted: Option<u64>,
    closed: Option<u64>,
    closes_found: u64,
    established_now: Option<u64>,
) -> bool {
    accepted == Some(made)
        && closed.map(|c| c + closes_found) == Some(made)
        && established_now == Some(0)
}

impl Round {
    /// A round with only the churn's figures (no tracer, or before they are known).
    pub(super) fn untraced(round: u32, churn: Churn) -> Self {
        Self {
            round,
            churn,
            tracer_cpu_s: None,
            tracer_startup_cpu_s: None,
            tracer_peak_rss_kib: None,
            seen: None,
            incomplete: None,
            expired_closes: None,
            lost: None,
            exact: None,
            kernel: None,
        }
    }

    fn cpu_per_100k(&self) -> Option<f64> {
        let cpu = self.tracer_cpu_s?;
        (self.churn.connections > 0).then(|| cpu / self.churn.connections as f64 * 1e5)
    }
}

#[derive(Debug, Serialize)]
pub(super) struct ModeSummary {
    pub(super) mode: &'static str,
    pub(super) command: String,
    pub(super) rate_median: f64,
    /// Median over rounds of the round's rate over that round's untraced rate: each pair ran
    /// minutes apart at most, so slow drift of a shared machine cancels out.
    pub(super) ratio_to_untraced: Option<f64>,
    /// Those per-round ratios, in round order.
    pub(super) ratio_per_round: Vec<f64>,
    pub(super) connections_made_median: f64,
    pub(super) seen_median: Option<f64>,
    pub(super) cpu_s_per_100k_median: Option<f64>,
    pub(super) startup_cpu_s_median: Option<f64>,
    pub(super) peak_rss_mib_median: Option<f64>,
    pub(super) lost_median: Option<BTreeMap<String, f64>>,
    pub(super) lost_max: Option<BTreeMap<String, u64>>,
    /// top: rounds whose counts were exact (see `Exact`), of those with a summary.
    pub(super) exact_rounds: Option<u32>,
    /// sockwatch: the kernel time of its BPF programs per connection made (all programs
    /// summed), median over rounds.
    pub(super) kernel_ns_per_conn_median: Option<f64>,
    /// The same per program (by name), with its runs per connection and time per run.
    pub(super) kernel_programs_median: Option<BTreeMap<String, ProgramMedians>>,
    pub(super) rounds: Vec<Round>,
}

impl ModeSummary {
    pub(super) fn name(&self) -> &'static str {
        self.mode
    }

    /// top: rounds whose counts were not exact.
    pub(super) fn inexact_rounds(&self) -> usize {
        self.rounds
            .iter()
            .filter(|r| r.exact.as_ref().is_some_and(|e| !e.exact))
            .count()
    }
}

/// A row against the row of the --baseline build that ran the same command, round by round.
#[derive(Debug, Serialize)]
pub(super) struct VsBaseline {
    pub(super) mode: &'static str,
    pub(super) baseline: &'static str,
    /// Per round that ran both, in round order: the row's ratio to the untraced run minus the
    /// baseline row's (both over the same untraced run, and run next to each other).
    pub(super) ratio_diff_per_round: Vec<f64>,
    pub(super) ratio_diff_median: Option<f64>,
    /// The same for the kernel time per connection, in ns.
    pub(super) kernel_ns_diff_per_round: Vec<f64>,
    pub(super) kernel_ns_diff_median: Option<f64>,
}

/// `mode` against `base`, its --baseline row, with `untraced` the untraced row's rounds.
pub(super) fn vs_baseline(
    mode: &ModeSummary,
    base: &ModeSummary,
    untraced: &[Round],
) -> VsBaseline {
    let mut ratio = Vec::new();
    let mut kernel = Vec::new();
    for r in &mode.rounds {
        let Some(b) = base.rounds.iter().find(|b| b.round == r.round) else {
            continue;
        };
        if let Some(u) = untraced.iter().find(|u| u.round == r.round)
            && u.churn.rate > 0.0
        {
            ratio.push((r.churn.rate - b.churn.rate) / u.churn.rate);
        }
        let ns = |x: &Round| x.kernel.as_ref().and_then(|k| k.ns_per_connection);
        if let (Some(a), Some(b)) = (ns(r), ns(b)) {
            kernel.push(a - b);
        }
    }
    VsBaseline {
        mode: mode.mode,
        baseline: base.mode,
        ratio_diff_median: (!ratio.is_empty()).then(|| median(ratio.clone())),
        ratio_diff_per_round: ratio,
        kernel_ns_diff_median: (!kernel.is_empty()).then(|| median(kernel.clone())),
        kernel_ns_diff_per_round: kernel,
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Results {
    pub(super) settings: Settings,
    /// --baseline: the build of the `trace-baseline` and `top-baseline` rows.
    pub(super) baseline: Option<Baseline>,
    pub(super) modes: Vec<ModeSummary>,
    /// --baseline: `trace` and `top` against their baseline rows.
    pub(super) vs_baseline: Vec<VsBaseline>,
    pub(super) concurrency: Option<Concurrency>,
    /// --concurrency-trace.
    pub(super) trace_hold: Option<TraceHold>,
}

#[derive(Debug, Serialize)]
pub(super) struct Settings {
    pub(super) rounds: u32,
    pub(super) connections: u64,
    pub(super) clients: u32,
    pub(super) servers: u32,
    pub(super) in_flight: u32,
    pub(super) close: String,
    pub(super) sources: u32,
    pub(super) port: u16,
    pub(super) max_sockets: u64,
    pub(super) cpus: usize,
    pub(super) kernel: String,
    pub(super) mem_total_mib: u64,
    /// --top-ring-size: the ring of the `top-ring` row.
    pub(super) top_ring_size: Option<String>,
    /// --trace-ring-size: the ring of the trace rows.
    pub(super) trace_ring_size: Option<String>,
    /// Whether kernel.bpf_stats_enabled was on for the rounds (so that they have kernel time).
    pub(super) kernel_time: bool,
}

pub(super) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub(super) fn median_of(rounds: &[Round], f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = rounds.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| median(v))
}

pub(super) fn summarize(
    mode: Mode,
    command: String,
    rounds: Vec<Round>,
    untraced: &[Round],
) -> ModeSummary {
    let rate = median(rounds.iter().map(|r| r.churn.rate));
    let ratio_per_round: Vec<f64> = rounds
        .iter()
        .filter_map(|r| {
            let base = untraced.iter().find(|u| u.round == r.round)?.churn.rate;
            (base > 0.0).then(|| r.churn.rate / base)
        })
        .collect();
    let lost: Vec<&BTreeMap<String, u64>> = rounds.iter().filter_map(|r| r.lost.as_ref()).collect();
    let (lost_median, lost_max) = if lost.is_empty() {
        (None, None)
    } else {
        let keys: Vec<&String> = lost[0].keys().collect();
        let med = keys
            .iter()
            .map(|k| {
                let k = (*k).clone();
                let m = median(lost.iter().map(|l| l.get(&k).copied().unwrap_or(0) as f64));
                (k, m)
            })
            .collect();
        let max = keys
            .iter()
            .map(|k| {
                let m = lost.iter().map(|l| l.get(*k).copied().unwrap_or(0)).max();
                ((*k).clone(), m.unwrap_or(0))
            })
            .collect();
        (Some(med), Some(max))
    };
    ModeSummary {
        mode: mode.name(),
        command,
        rate_median: rate,
        ratio_to_untraced: (!ratio_per_round.is_empty()).then(|| median(ratio_per_round.clone())),
        ratio_per_round,
        connections_made_median: median(rounds.iter().map(|r| r.churn.connections as f64)),
        seen_median: median_of(&rounds, |r| r.seen.map(|s| s as f64)),
        cpu_s_per_100k_median: median_of(&rounds, Round::cpu_per_100k),
        startup_cpu_s_median: median_of(&rounds, |r| r.tracer_startup_cpu_s),
        peak_rss_mib_median: median_of(&rounds, |r| {
            r.tracer_peak_rss_kib.map(|k| k as f64 / 1024.0)
        }),
        lost_median,
        lost_max,
        exact_rounds: rounds.iter().any(|r| r.exact.is_some()).then(|| {
            rounds
                .iter()
                .filter(|r| r.exact.as_ref().is_some_and(|e| e.exact))
                .count() as u32
        }),
        kernel_ns_per_conn_median: median_of(&rounds, |r| {
            r.kernel.as_ref().and_then(|k| k.ns_per_connection)
        }),
        kernel_programs_median: rounds
            .iter()
            .any(|r| r.kernel.is_some())
            .then(|| program_medians(rounds.iter().filter_map(|r| r.kernel.as_ref()))),
        rounds,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::bpf_stats::{Program, kernel_time};

    #[test]
    fn exact_counts_take_the_closes_found_gone() {
        assert!(is_exact(100, Some(100), Some(100), 0, Some(0)));
        assert!(is_exact(100, Some(100), Some(95), 5, Some(0)));
        assert!(!is_exact(100, Some(100), Some(95), 0, Some(0)));
        assert!(!is_exact(100, Some(99), Some(100), 0, Some(0)));
        assert!(!is_exact(100, Some(100), Some(100), 0, Some(1)));
        assert!(!is_exact(100, None, Some(100), 0, Some(0)));
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([5.0]), 5.0);
        assert!(median([]).is_nan());
    }

    pub(in crate::bench) fn round(round: u32, rate: f64) -> Round {
        let churn = Churn {
            connections: 100,
            seconds: 1.0,
            rate,
            errors: 0,
            port: 1,
            netns: 1,
            timed_out: false,
        };
        Round::untraced(round, churn)
    }

    #[test]
    fn each_round_is_compared_with_its_own_untraced_run() {
        // The machine slowed down over the run: untraced 100, then 50, then 80.
        let untraced = [round(1, 100.0), round(2, 50.0), round(3, 80.0)];
        // A round the mode missed (2) is left out, not compared with another round's run.
        let traced = vec![round(1, 90.0), round(3, 76.0)];
        let s = summarize(Mode::Trace, "sockwatch trace".into(), traced, &untraced);
        assert_eq!(s.ratio_per_round, vec![0.9, 0.95]);
        assert_eq!(s.ratio_to_untraced, Some(0.925));
        let none = summarize(
            Mode::Trace,
            "sockwatch trace".into(),
            vec![round(4, 1.0)],
            &untraced,
        );
        assert_eq!(none.ratio_to_untraced, None);
    }

    fn program(id: u32, name: &str, run_time_ns: u64) -> Program {
        Program {
            id,
            name: name.into(),
            kind: "raw_tracepoint",
            run_time_ns,
            run_cnt: 100,
        }
    }

    /// A round of 100 connections whose tracer's programs took `a` and `b` ns in all.
    pub(in crate::bench) fn traced(r: u32, a: u64, b: u64) -> Round {
        Round {
            kernel: Some(kernel_time(
                vec![
                    program(r * 10, "state", a),
                    program(r * 10 + 1, "accept", b),
                ],
                100,
                0,
            )),
            ..round(r, 90.0)
        }
    }

    pub(in crate::bench) fn results(
        modes: Vec<ModeSummary>,
        baseline: Option<Baseline>,
    ) -> Results {
        Results {
            settings: Settings {
                rounds: 3,
                connections: 100,
                clients: 2,
                servers: 2,
                in_flight: 64,
                close: "server-first".into(),
                sources: 4,
                port: 7913,
                max_sockets: 1_048_576,
                cpus: 2,
                kernel: "6.18.0".into(),
                mem_total_mib: 4096,
                top_ring_size: None,
                trace_ring_size: None,
                kernel_time: true,
            },
            baseline,
            modes,
            vs_baseline: Vec::new(),
            concurrency: None,
            trace_hold: None,
        }
    }

    #[test]
    fn kernel_time_is_the_median_over_rounds() {
        let untraced = [round(1, 100.0), round(2, 100.0), round(3, 100.0)];
        // A round whose kernel time could not be read is left out of the medians.
        let rounds = vec![
            traced(1, 20_000, 1_000),
            traced(2, 30_000, 3_000),
            round(3, 90.0),
        ];
        let s = summarize(Mode::Top, "sockwatch top".into(), rounds, &untraced);
        // (21_000 + 33_000) / 2 / 100 connections.
        assert_eq!(s.kernel_ns_per_conn_median, Some(270.0));
        let p = s.kernel_programs_median.as_ref().unwrap();
        assert_eq!(p["state"].ns_per_connection, 250.0);
        assert_eq!(p["accept"].ns_per_connection, 20.0);
        assert_eq!(p["state"].runs_per_connection, 1.0);
        let none = summarize(
            Mode::Top,
            "sockwatch top".into(),
            vec![round(1, 90.0)],
            &untraced,
        );
        assert_eq!(none.kernel_ns_per_conn_median, None);
        assert!(none.kernel_programs_median.is_none());
    }

    #[test]
    fn a_row_is_compared_with_its_baseline_round_by_round() {
        // The machine slowed down in round 2.
        let untraced = [round(1, 100.0), round(2, 50.0), round(3, 80.0)];
        // (round, rate, kernel ns in all over its 100 connections)
        let row = |mode, runs: &[(u32, f64, u64)]| {
            let rounds = runs
                .iter()
                .map(|&(r, rate, ns)| {
                    let mut t = traced(r, ns, 0);
                    t.churn.rate = rate;
                    t
                })
                .collect();
            summarize(mode, "sockwatch trace".into(), rounds, &untraced)
        };
        let trace = row(
            Mode::Trace,
            &[(1, 88.0, 40_000), (2, 40.0, 41_000), (3, 76.0, 39_000)],
        );
        // Round 2 of the baseline is missing: that round is left out.
        let base = row(Mode::TraceBaseline, &[(1, 90.0, 39_000), (3, 72.0, 40_000)]);
        let v = vs_baseline(&trace, &base, &untraced);
        assert_eq!(v.ratio_diff_per_round, vec![-0.02, 0.05]);
        assert_eq!(v.kernel_ns_diff_per_round, vec![10.0, -10.0]);
        assert_eq!(v.kernel_ns_diff_median, Some(0.0));
        let out = crate::bench::render::render(&Results {
            vs_baseline: vec![v],
            ..results(Vec::new(), None)
        });
        assert!(out.contains(
            "\ntrace vs trace-baseline: VS UNTRACED median +0.015 (per round: -0.02 +0.05); \
             KERNEL NS/CONN median +0 (per round: +10 -10)\n"
        ));
    }
}
