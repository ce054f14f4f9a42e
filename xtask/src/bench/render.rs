//! The table on stdout: one line per row, what the columns mean, and the per-round lines.
use std::collections::BTreeMap;

use super::{
    bpf_stats::ProgramMedians,
    report::{Results, median_of},
};

pub(super) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(super) fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// `name=NS` per program, the costliest first.
fn per_program(programs: &BTreeMap<String, ProgramMedians>) -> String {
    let mut v: Vec<(&String, &ProgramMedians)> = programs.iter().collect();
    v.sort_by(|a, b| b.1.ns_per_connection.total_cmp(&a.1.ns_per_connection));
    v.iter()
        .map(|(name, p)| format!("{name}={:.0}", p.ns_per_connection))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn render(res: &Results) -> String {
    let s = &res.settings;
    let mut out = format!(
        "\nsockwatch bench: {} connections per run, {} clients x {} in flight, {} servers, close {}, \
         {} sources; median of {} round(s); {} CPUs, Linux {}\n\n",
        s.connections,
        s.clients,
        s.in_flight,
        s.servers,
        s.close,
        s.sources,
        s.rounds,
        s.cpus,
        s.kernel
    );
    let mut rows = vec![
        [
            "MODE",
            "CONN/S",
            "VS UNTRACED",
            "MADE",
            "SEEN",
            "CPU S/100K",
            "KERNEL NS/CONN",
            "START-UP CPU S",
            "PEAK RSS MIB",
            "LOST",
            "EXACT",
            "FOUND",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in &res.modes {
        rows.push(vec![
            m.mode.to_string(),
            format!("{:.0}", m.rate_median),
            opt(m.ratio_to_untraced, |r| format!("{r:.2}")),
            num(m.connections_made_median),
            opt(m.seen_median, num),
            opt(m.cpu_s_per_100k_median, |c| format!("{c:.3}")),
            opt(m.kernel_ns_per_conn_median, |k| format!("{k:.0}")),
            opt(m.startup_cpu_s_median, |c| format!("{c:.2}")),
            opt(m.peak_rss_mib_median, |r| format!("{r:.1}")),
            m.lost_median
                .as_ref()
                .and_then(|l| l.get("total"))
                .map_or_else(|| "-".into(), |t| num(*t)),
            m.exact_rounds
                .map_or_else(|| "-".into(), |e| format!("{e}/{}", m.rounds.len())),
            opt(
                median_of(&m.rounds, |r| {
                    r.exact.as_ref().map(|e| e.closes_found as f64)
                }),
                num,
            ),
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(
        "\nSEEN: trace (and trace-baseline) = the churn's connections with connect, accept and both \
         closes in the file (a close the kernel never reported counts when sockwatch wrote it as `expired`: see lost); \
         top = accepted on the churn's port in the summary (hooks: 0, it sees nothing); bpftrace = \
         server-side closes on the port.\n\
         hooks: `top` built with --features hooks-only, every program attached but returning at once: \
         what the hooks cost before any work is done, the floor under trace and top.\n\
         VS UNTRACED: the median over rounds of the mode's rate over the same round's untraced rate.\n\
         CPU S/100K: the tracer's user+system CPU over its whole life (start-up included) per 100k connections.\n\
         KERNEL NS/CONN: the run time of the BPF programs sockwatch loaded, as the kernel accounts it \
         (kernel.bpf_stats_enabled, on for the rounds: every program run then also pays for its \
         timing, in every row alike), summed over its programs from its start to just before it \
         was stopped, per connection made; median. It is spent by whatever hits the hooks (the \
         churn's threads, softirqs), not in the tracer's CPU above; per program below and in \
         results.json.\n\
         EXACT: top rounds whose listener row had accepted = connections made = closed + closes found gone \
         from the kernel's socket table (open_corrections.released, or lost.expired before it), and \
         established_now = 0; FOUND: those closes (the kernel never ran a program for them), median.\n",
    );
    if let Some(b) = &res.baseline {
        out.push_str(&format!(
            "trace-baseline, top-baseline: `trace` and `top` (the same options) built at {} \
             ({}: {})\n",
            b.rev, b.commit, b.subject
        ));
    }
    if let Some(size) = &s.top_ring_size {
        out.push_str(&format!("top-ring: `top --ring-size {size}`\n"));
    }
    if let Some(size) = &s.trace_ring_size {
        out.push_str(&format!("trace rows: `trace --ring-size {size}`\n"));
    }
    for m in res.modes.iter().filter(|m| m.mode != "untraced") {
        let each: Vec<String> = m
            .ratio_per_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        out.push_str(&format!(
            "{} vs untraced, per round: {}\n",
            m.mode,
            each.join(" ")
        ));
    }
    if !res.vs_baseline.is_empty() {
        out.push_str(
            "VS BASELINE: per round, a row's VS UNTRACED minus that of its baseline row, run next to \
             it (after it in odd rounds, before it in even ones); then the same for KERNEL NS/CONN. \
             Below 0: the row costs more than its baseline.\n",
        );
    }
    for v in &res.vs_baseline {
        let signed = |x: &f64, digits: usize| format!("{x:+.digits$}");
        let each = |xs: &[f64], digits: usize| {
            xs.iter()
                .map(|x| signed(x, digits))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            "{} vs {}: VS UNTRACED median {} (per round: {}); KERNEL NS/CONN median {} (per \
             round: {})\n",
            v.mode,
            v.baseline,
            v.ratio_diff_median
                .map_or_else(|| "-".into(), |x| signed(&x, 3)),
            each(&v.ratio_diff_per_round, 2),
            v.kernel_ns_diff_median
                .map_or_else(|| "-".into(), |x| signed(&x, 0)),
            each(&v.kernel_ns_diff_per_round, 0),
        ));
    }
    for m in &res.modes {
        if let Some(programs) = m.kernel_programs_median.as_ref().filter(|p| !p.is_empty()) {
            out.push_str(&format!(
                "{} kernel ns per connection, per program (median): {}\n",
                m.mode,
                per_program(programs)
            ));
        }
    }
    for m in &res.modes {
        if let (Some(med), Some(max)) = (&m.lost_median, &m.lost_max) {
            let fmt = |it: Vec<String>| it.join(" ");
            out.push_str(&format!(
                "{} lost (median): {}\n",
                m.mode,
                fmt(med
                    .iter()
                    .map(|(k, v)| format!("{k}={}", num(*v)))
                    .collect())
            ));
            if max.values().zip(med.values()).any(|(a, b)| *a as f64 != *b) {
                out.push_str(&format!(
                    "{} lost (worst round): {}\n",
                    m.mode,
                    fmt(max.iter().map(|(k, v)| format!("{k}={v}")).collect())
                ));
            }
        }
    }
    if let Some(c) = &res.concurrency {
        out.push_str(&super::concurrency::render(c));
    }
    if let Some(t) = &res.trace_hold {
        out.push_str(&super::tracehold::render(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        Mode,
        baseline::Baseline,
        report::{
            summarize,
            tests::{results, round, traced},
        },
    };

    #[test]
    fn render_shows_kernel_time_and_the_baseline_rows() {
        let untraced = vec![round(1, 100.0)];
        let modes = vec![
            summarize(Mode::Untraced, "-".into(), untraced.clone(), &untraced),
            summarize(
                Mode::Trace,
                "sockwatch trace".into(),
                vec![traced(1, 40_000, 2_000)],
                &untraced,
            ),
            summarize(
                Mode::TraceBaseline,
                "sockwatch trace".into(),
                vec![traced(1, 50_000, 2_000)],
                &untraced,
            ),
            summarize(
                Mode::TopBaseline,
                "sockwatch top".into(),
                vec![traced(1, 30_000, 1_000)],
                &untraced,
            ),
        ];
        let baseline = Baseline {
            rev: "HEAD~1".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            subject: "The change before".into(),
            worktree: "target/bench/baseline-0123456789ab".into(),
            binary: "target/bench/baseline-0123456789ab-target/release/sockwatch".into(),
        };
        let out = render(&results(modes, Some(baseline)));
        let lines: Vec<&str> = out.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("MODE")).unwrap();
        let col = header.find("KERNEL NS/CONN").unwrap();
        let cell = |mode: &str| {
            let l = lines
                .iter()
                .find(|l| l.starts_with(&format!("{mode} ")))
                .unwrap();
            l[col..].split_whitespace().next().unwrap().to_string()
        };
        assert_eq!(cell("untraced"), "-");
        assert_eq!(cell("trace"), "420");
        assert_eq!(cell("trace-baseline"), "520");
        assert_eq!(cell("top-baseline"), "310");
        assert!(out.contains("\ntrace-baseline vs untraced, per round: 0.90\n"));
        assert!(out.contains("\ntop-baseline vs untraced, per round: 0.90\n"));
        assert!(out.contains(
            "trace-baseline, top-baseline: `trace` and `top` (the same options) built at HEAD~1 \
             (0123456789abcdef0123456789abcdef01234567: The change before)"
        ));
        assert!(out.contains("\nKERNEL NS/CONN: "));
        // The costliest program first.
        assert!(out.contains(
            "\ntrace-baseline kernel ns per connection, per program (median): state=500 \
             accept=20\n"
        ));
        assert!(!out.contains("untraced kernel ns"));
    }
}
