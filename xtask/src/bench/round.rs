//! One run of one row: the churn, with the row's tracer around it, and what it measured.
use std::{collections::BTreeSet, fs, path::Path, thread};

use anyhow::{Context as _, bail};

use super::{
    Bench, CLOSE_GRACE, Mode, bpf_stats,
    count::{count_bpftrace_closes, count_connections, counters, listener},
    progress,
    report::{Exact, Round, is_exact},
    tracer::NetnsHolder,
};

impl Bench<'_> {
    pub(super) fn round(
        &self,
        mode: Mode,
        round: u32,
        bpftrace: Option<&Path>,
    ) -> anyhow::Result<Round> {
        Ok(match mode {
            Mode::Untraced => Round::untraced(round, self.run_churn(None)?),
            Mode::Trace
            | Mode::Top
            | Mode::Hooks
            | Mode::TopRing
            | Mode::TraceBaseline
            | Mode::TopBaseline => {
                let file = self.trace_file();
                let _ = fs::remove_file(&file);
                let holder = NetnsHolder::spawn()?;
                let programs_before = self.programs_before();
                let mut t = self.start_sockwatch(mode, !mode.traces(), &[])?;
                let churn = self.run_churn(Some(&holder.path()))?;
                // The churn is done when its sockets are closed, not fully gone: a last FIN
                // may still be retransmitted (RTO 200 ms+) and the close come after; give
                // those closes time to happen before counting.
                thread::sleep(CLOSE_GRACE);
                let kernel = programs_before.and_then(|before| {
                    bpf_stats::read(&before, t.pid, churn.connections)
                        .map_err(|e| {
                            progress(format!(
                                "warning: {}: no kernel time for this run: {e:#}",
                                mode.name()
                            ));
                        })
                        .ok()
                });
                let usage = t.stop()?;
                drop(holder);
                let _ = fs::remove_file(self.ready_file());
                let mut exact = None;
                let (seen, incomplete, expired_closes, lost) = if mode.traces() {
                    progress(format!(
                        "counting the churn's connections in {}",
                        file.display()
                    ));
                    let count = count_connections(&file, churn.port, churn.netns)?;
                    // Hundreds of megabytes: not kept.
                    let _ = fs::remove_file(&file);
                    (
                        Some(count.complete),
                        Some(count.incomplete),
                        Some(count.expired_closes),
                        count.lost,
                    )
                } else {
                    let summary: serde_json::Value = serde_json::from_str(&t.stdout())
                        .context("sockwatch top --format json printed no valid summary")?;
                    let seen = listener(&summary, churn.port, churn.netns)
                        .and_then(|l| l["accepted"].as_u64());
                    if mode == Mode::Hooks {
                        // Its programs do nothing, so the churn's port never shows up; and with
                        // nothing to lose, its loss counters mean nothing (the kernel's skipped
                        // runs of empty programs are not recovered).
                        let seen = seen.unwrap_or(0);
                        if seen > 0 {
                            bail!(
                                "the hooks-only build counted {seen} connections: the feature did \
                                 not take effect"
                            );
                        }
                        (Some(seen), None, None, None)
                    } else {
                        let row = listener(&summary, churn.port, churn.netns);
                        let field = |name: &str| row.and_then(|l| l[name].as_u64());
                        let closes_found = summary["open_corrections"]["released"]
                            .as_u64()
                            .unwrap_or(0)
                            + summary["lost"]["expired"].as_u64().unwrap_or(0);
                        exact = Some(Exact {
                            accepted: field("accepted"),
                            closed: field("closed"),
                            established_now: field("established_now"),
                            open_corrections: summary.get("open_corrections").cloned(),
                            closes_found,
                            exact: is_exact(
                                churn.connections,
                                field("accepted"),
                                field("closed"),
                                closes_found,
                                field("established_now"),
                            ),
                        });
                        (seen, None, None, Some(counters(&summary["lost"])))
                    }
                };
                Round {
                    round,
                    churn,
                    tracer_cpu_s: Some(usage.cpu_s),
                    tracer_startup_cpu_s: t.startup_cpu_s,
                    tracer_peak_rss_kib: Some(usage.maxrss_kib),
                    seen,
                    incomplete,
                    expired_closes,
                    lost,
                    exact,
                    kernel,
                }
            }
            Mode::Bpftrace => {
                let bin = bpftrace.context("bpftrace is not on PATH")?;
                let mut t = self.start_bpftrace(bin)?;
                let churn = self.run_churn(None)?;
                thread::sleep(CLOSE_GRACE);
                let usage = t.stop()?;
                let seen = count_bpftrace_closes(&self.bpftrace_file(), churn.port)?;
                let _ = fs::remove_file(self.bpftrace_file());
                Round {
                    round,
                    churn,
                    tracer_cpu_s: Some(usage.cpu_s),
                    tracer_startup_cpu_s: t.startup_cpu_s,
                    tracer_peak_rss_kib: Some(usage.maxrss_kib),
                    seen: Some(seen),
                    incomplete: None,
                    expired_closes: None,
                    lost: None,
                    exact: None,
                    kernel: None,
                }
            }
        })
    }

    /// The BPF programs loaded before a tracer starts, when the rounds read kernel time.
    fn programs_before(&self) -> Option<BTreeSet<u32>> {
        if !self.kernel_time {
            return None;
        }
        bpf_stats::program_ids()
            .map_err(|e| {
                progress(format!(
                    "warning: cannot list the BPF programs, no kernel time for this run: {e}"
                ))
            })
            .ok()
    }
}
