//! What a run prints: the table of kernels with the closing `N passed, N failed` line, and a
//! measurement's tables per kernel.
use super::results::{Outcome, RunResults};

/// Every kernel's reports (a measurement's tables), or why a kernel has none.
pub(super) fn reports(run: &RunResults) -> String {
    let mut out = String::new();
    for k in &run.kernels {
        out.push_str(&format!("== {} ({}) ==\n", k.suite, k.release));
        let reports: Vec<_> = k.binaries.iter().flat_map(|b| &b.reports).collect();
        if reports.is_empty() {
            let failed = k
                .binaries
                .iter()
                .flat_map(|b| &b.tests)
                .find(|t| t.outcome == Outcome::Failed);
            let why = match (failed, &k.problem) {
                // With --nocapture libtest keeps no detail: the panic is in the results log.
                (Some(t), _) => t
                    .detail
                    .as_deref()
                    .and_then(|d| d.lines().find(|l| !l.trim().is_empty()))
                    .unwrap_or("the measurement failed")
                    .to_string(),
                (None, Some(p)) => p.clone(),
                (None, None) => format!("{} (the measurement printed nothing)", k.outcome),
            };
            out.push_str(&format!(
                "no table: {why} (see target/vm/logs/{}.results)\n",
                k.suite
            ));
        }
        for r in reports {
            out.push_str(&r.text);
            out.push('\n');
            if !r.complete {
                out.push_str("(cut short)\n");
            }
        }
        out.push('\n');
    }
    out
}

/// The table on stdout and the closing `N passed, N failed` line; true when all went well.
pub(super) fn summary(run: &RunResults) -> bool {
    println!();
    println!(
        "{:<9} {:<22} {:<28} {:>6} {:>6} {:>6} {:>7}  VM",
        "KERNEL", "VERSION", "RELEASE", "TIME", "PASSED", "FAILED", "IGNORED"
    );
    let (mut passed, mut failed, mut ok) = (0, 0, true);
    for k in &run.kernels {
        let c = k.counts();
        println!(
            "{:<9} {:<22} {:<28} {:>5.0}s {:>6} {:>6} {:>7}  {}",
            k.suite,
            k.version,
            k.release,
            k.duration_secs,
            c.passed,
            c.failed,
            c.ignored,
            k.outcome
        );
        passed += c.passed;
        failed += c.failed;
        ok &= c.failed == 0 && k.outcome == "ok";
    }
    println!("{passed} passed, {failed} failed");
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::results::KernelResult;

    #[test]
    fn reports_per_kernel_or_why_not() {
        use super::super::results::{BinaryResult, Report, TestResult};
        let measured = |suite: &str, reports: Vec<Report>, outcome: Outcome| KernelResult {
            suite: suite.into(),
            release: format!("{suite}-release"),
            outcome: "ok".into(),
            binaries: vec![BinaryResult {
                name: "hook_cost".into(),
                exit_code: Some(0),
                complete: true,
                tests: vec![TestResult {
                    name: "measure_hook_cost".into(),
                    outcome,
                    detail: None,
                }],
                reports,
            }],
            ..Default::default()
        };
        let table = Report {
            title: "hook cost".into(),
            text: "configuration  ratio\nnothing  1.000".into(),
            complete: true,
        };
        let run = RunResults {
            sockwatch_version: "0".into(),
            date: "2026-01-01".into(),
            test_set: "hook-cost".into(),
            filter: None,
            kernels: vec![
                measured("bookworm", vec![table], Outcome::Ok),
                measured("trixie", Vec::new(), Outcome::Failed),
            ],
        };
        assert_eq!(
            reports(&run),
            "== bookworm (bookworm-release) ==\nconfiguration  ratio\nnothing  1.000\n\n\
             == trixie (trixie-release) ==\nno table: the measurement failed \
             (see target/vm/logs/trixie.results)\n\n"
        );
    }
}
