//! Boots the prepared kernels under qemu, a few at a time, and turns what each reported into
//! its results, with progress on stderr.
use std::{
    collections::VecDeque,
    fs,
    path::Path,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    FETCH_FAILED, Prepared, initramfs, qemu,
    results::{Channel, Event, KernelResult, Outcome},
};

/// Console lines shown when a VM fails as a whole.
const CONSOLE_TAIL: usize = 25;
/// Lines of a failed test's output shown on stderr (all of them are in results.json).
const DETAIL_SHOWN: usize = 6;

/// What every VM of a run shares.
pub(super) struct VmSettings<'a> {
    pub(super) vm_dir: &'a Path,
    pub(super) qemu: &'a Path,
    /// The initramfs without modules.
    pub(super) common: &'a [u8],
    pub(super) timeout: Duration,
    pub(super) keep: bool,
}

/// Boots the kernels, `jobs` at a time; results in the kernels' order.
pub(super) fn boot_all(
    vm: &VmSettings<'_>,
    prepared: Vec<(&'static str, anyhow::Result<Prepared>)>,
    jobs: usize,
) -> anyhow::Result<Vec<KernelResult>> {
    let n = prepared.len();
    let queue = Mutex::new(prepared.into_iter().enumerate().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::with_capacity(n));
    thread::scope(|scope| {
        for _ in 0..jobs.min(n) {
            scope.spawn(|| {
                loop {
                    let Some((i, (suite, p))) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let k = match p {
                        Ok(p) => boot(vm, suite, &p),
                        Err(e) => Ok(KernelResult {
                            suite: suite.to_string(),
                            outcome: FETCH_FAILED.into(),
                            problem: Some(format!("{e:#}")),
                            ..Default::default()
                        }),
                    };
                    done.lock().unwrap().push((i, k));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, k)| k).collect()
}

/// Boots one kernel and turns what it reported into its results, showing progress on stderr.
fn boot(vm: &VmSettings<'_>, suite: &str, p: &Prepared) -> anyhow::Result<KernelResult> {
    let VmSettings {
        vm_dir,
        qemu,
        common,
        timeout,
        keep,
    } = *vm;
    let run_dir = vm_dir.join("run").join(suite);
    fs::create_dir_all(&run_dir)?;
    let initrd = run_dir.join("initrd.cpio");
    let mut image = common.to_vec();
    image.extend(initramfs::modules(&p.modules)?);
    fs::write(&initrd, &image).with_context(|| format!("cannot write {}", initrd.display()))?;
    drop(image);
    let console_log = vm_dir.join("logs").join(format!("{suite}.log"));
    let results_log = vm_dir.join("logs").join(format!("{suite}.results"));
    let upstream = p
        .image
        .version
        .split('-')
        .next()
        .unwrap_or(&p.image.version);
    eprintln!("vm: booting {upstream} ({suite}, {}) ...", p.kernel.release);

    let mut channel = Channel::default();
    let start = Instant::now();
    let show = |e: Event| {
        let at = start.elapsed().as_secs_f64();
        match e {
            Event::Uname(u) => eprintln!("vm: {suite}: up after {at:.1}s: {u}"),
            Event::Check { exit_code } => {
                eprintln!("vm: {suite}: sockwatch check exited {exit_code} ({at:.1}s)")
            }
            Event::Start(b) => eprintln!("vm: {suite}: running {b} ({at:.1}s)"),
            Event::Test {
                binary,
                name,
                outcome,
            } => {
                let o = match outcome {
                    Outcome::Ok => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Ignored => "ignored",
                };
                eprintln!("vm: {suite}: {binary}: {name} ... {o} ({at:.1}s)");
            }
            Event::End { binary, exit_code } => {
                eprintln!("vm: {suite}: {binary} exited {exit_code} ({at:.1}s)")
            }
            Event::Warn(w) => eprintln!("vm: {suite}: warning: {w}"),
        }
    };
    let machine = qemu::Vm {
        qemu,
        vmlinuz: &p.kernel.vmlinuz,
        initrd: &initrd,
        console_log: &console_log,
        results: &results_log,
        timeout,
    };
    let (exit, took) = qemu::run(&machine, &mut |line| {
        channel.line(line).into_iter().for_each(show)
    })?;
    let (parsed, events) = channel.finish();
    events.into_iter().for_each(show);
    if !keep {
        let _ = fs::remove_file(&initrd);
        let _ = fs::remove_dir(&run_dir);
    }

    let mut k = KernelResult {
        suite: suite.to_string(),
        package: p.image.name.clone(),
        version: p.image.version.clone(),
        release: parsed
            .uname
            .clone()
            .unwrap_or_else(|| p.kernel.release.clone()),
        duration_secs: (took.as_secs_f64() * 10.0).round() / 10.0,
        check: parsed.check,
        check_error: parsed.check_error,
        binaries: parsed.binaries,
        ..Default::default()
    };
    let tests: usize = k.binaries.iter().map(|b| b.tests.len()).sum();
    let broken = k.binaries.iter().find(|b| {
        let failed = b.tests.iter().any(|t| t.outcome == Outcome::Failed);
        !b.complete || (b.exit_code != Some(0) && !failed)
    });
    let (outcome, problem) = match exit {
        qemu::Exit::TimedOut => (
            "timeout",
            Some(format!("killed after {}s", timeout.as_secs())),
        ),
        qemu::Exit::Hung(sign) => (
            "hung",
            Some(format!(
                "the guest kernel is stuck ({sign}) and the tests went silent: killed"
            )),
        ),
        qemu::Exit::Exited(st) if !parsed.done => (
            "crashed",
            Some(format!(
                "the VM stopped before the tests finished (qemu: {st})"
            )),
        ),
        qemu::Exit::Exited(_) if tests == 0 => ("no results", Some("no test ran".to_string())),
        qemu::Exit::Exited(_) => match broken {
            Some(b) => (
                "error",
                Some(format!(
                    "{} exited {:?} without a failing test result",
                    b.name, b.exit_code
                )),
            ),
            None => ("ok", None),
        },
    };
    k.outcome = outcome.to_string();
    k.problem = problem;

    if let Some(e) = &k.check_error {
        eprintln!("vm: {suite}: sockwatch check: {e}");
    }
    for b in &k.binaries {
        for t in b.tests.iter().filter(|t| t.outcome == Outcome::Failed) {
            eprintln!("vm: {suite}: FAILED {}::{}", b.name, t.name);
            for l in t
                .detail
                .as_deref()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(DETAIL_SHOWN)
            {
                eprintln!("vm: {suite}:     {l}");
            }
        }
    }
    let c = k.counts();
    eprintln!(
        "vm: {suite}: {} passed, {} failed, {} ignored in {:.0}s ({})",
        c.passed, c.failed, c.ignored, k.duration_secs, k.outcome
    );
    if let Some(problem) = &k.problem {
        eprintln!(
            "vm: {suite}: {problem}; the end of its console ({}):\n{}",
            console_log.display(),
            qemu::tail(&console_log, CONSOLE_TAIL)
        );
    }
    Ok(k)
}
