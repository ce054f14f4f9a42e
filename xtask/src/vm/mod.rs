//! `cargo xtask vmtest`: the kernel matrix. Boots Debian's own cloud kernels (5.10 to testing)
//! under qemu with an initramfs of our own and runs sockwatch's integration tests inside each,
//! as root on a real kernel of that version.
//!
//! - apt.rs: fetches the kernel and busybox .debs through a private apt setup (cached);
//! - kernel.rs: unpacks a kernel, finds vmlinuz and the modules to load;
//! - cpio.rs / initramfs.rs: the initramfs (busybox, /init, the test binaries, modules);
//! - qemu.rs: boots it, follows the results channel, enforces the timeout;
//! - results.rs: parses that channel (markers + libtest output) into results;
//! - table.rs: renders docs/kernels.md from the results.
//!
//! `--hook-cost` boots the same kernels to run one measurement instead of the tests
//! (sockwatch/tests/hook_cost.rs, an ignored test) and prints the table it reports per kernel.
//!
//! Everything lives in target/vm/: apt lists, debs, unpacked kernels, stripped binaries, the
//! console logs (logs/<suite>.log) and results.json.
mod apt;
mod artifacts;
mod cpio;
mod initramfs;
mod kernel;
mod qemu;
mod results;
mod table;

use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Mutex,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::{
    apt::{Apt, Package},
    artifacts::TestBinary,
    results::{Channel, Event, KernelResult, Outcome, RunResults},
};

/// The core test set: the integration test binaries run on every kernel by default
/// (sockwatch/tests/kernels.rs: what differs between kernels; health.rs: what the programs
/// read from `struct tcp_sock` at close, whose fields and flags each kernel lays out itself).
const CORE_TESTS: &[&str] = &["kernels", "health"];

/// `--hook-cost`: the one measurement run instead of the tests (an ignored test, so that the
/// matrix and `cargo test` skip it), and the libtest arguments that pick it out.
const HOOK_COST_BINARY: &str = "hook_cost";
const HOOK_COST_ARGS: &[&str] = &["--ignored", "--exact", "measure_hook_cost", "--nocapture"];

/// The kernels: Debian suites, each with the names it is also known by.
const SUITES: &[(&str, &[&str])] = &[
    ("bullseye", &["5.10"]),
    ("bookworm", &["6.1"]),
    ("trixie", &["6.12"]),
    ("forky", &["testing"]),
];
/// The metapackage that names each suite's current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// busybox-static comes from here (any suite would do; its binary is static).
const BUSYBOX_SUITE: &str = "bookworm";

const CORE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const FULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Console lines shown when a VM fails as a whole.
const CONSOLE_TAIL: usize = 25;
/// At most this many VMs at once by default (one per host core up to it): each runs on one
/// host thread (see qemu.rs), and two at once on two cores took as long each as one alone.
const MAX_DEFAULT_JOBS: usize = 4;
const FETCH_FAILED: &str = "fetch failed";
/// Lines of a failed test's output shown on stderr (all of them are in results.json).
const DETAIL_SHOWN: usize = 6;

#[derive(Debug, Default, Args)]
pub struct VmArgs {
    /// Kernels to boot, by Debian suite: bullseye, bookworm, trixie, forky (or 5.10, 6.1,
    /// 6.12, testing). Default: all four.
    #[arg(long = "kernel", value_name = "SUITE", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Run every integration test binary (sockwatch's and the churn's), not just the core set.
    #[arg(long)]
    pub full: bool,
    /// Only tests whose names contain FILTER (passed to each test binary).
    #[arg(long = "test", value_name = "FILTER")]
    pub filter: Option<String>,
    /// Seconds each VM may run before it is killed [default: 900, with --full 1800].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Keep each VM's initramfs in target/vm/run/ (it is deleted after the VM otherwise).
    #[arg(long)]
    pub keep: bool,
    /// VMs run at once (each takes one host core and 3 GB) [default: one per core, at most 4].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Instead of the tests, measure what each hook kind costs the host on each kernel
    /// (sockwatch/tests/hook_cost.rs): ns per getppid() with nothing attached and under `top`
    /// with each kind, and the kernel time per connection. Prints each kernel's table; results
    /// in target/vm/hook_cost.json and target/vm/logs/hook-cost.txt; docs/kernels.md untouched.
    #[arg(long, conflicts_with_all = ["full", "filter"])]
    pub hook_cost: bool,
}

/// A kernel ready to boot.
struct Prepared {
    image: Package,
    kernel: kernel::Kernel,
    modules: Vec<kernel::Module>,
}

pub fn run(args: &VmArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let root = super::workspace_root()?;
    let vm_dir = root.join("target/vm");
    let suites = select_suites(&args.kernels)?;
    if qemu::find_on_path("dpkg").is_none() {
        bail!(
            "dpkg is missing (it unpacks the kernel packages): run this on Debian or Ubuntu, or install dpkg"
        );
    }
    let qemu = qemu::ensure(super::is_root())?;
    for d in ["debs", "kernels", "logs", "run", "stage"] {
        fs::create_dir_all(vm_dir.join(d))
            .with_context(|| format!("cannot create target/vm/{d}"))?;
    }

    let built = artifacts::build(&root)?;
    let tests = if args.hook_cost {
        select_named(&built.tests, &[HOOK_COST_BINARY])?
    } else {
        select_tests(&built.tests, args.full)?
    };
    let bin = |name: &str| {
        built
            .bins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("cargo built no {name} binary"))
    };
    let sockwatch = bin("sockwatch")?;
    let churn = bin("sockwatch-churn")?;
    let set = if args.hook_cost {
        "hook-cost"
    } else if args.full {
        "full"
    } else {
        "core"
    };
    let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
    eprintln!("vm: {set} test set: {}", names.join(", "));

    let t = Instant::now();
    let busybox = fetch_busybox(&vm_dir)?;
    let mut prepared = Vec::new();
    for suite in &suites {
        let p = prepare(&vm_dir, suite);
        match &p {
            Ok(p) => eprintln!(
                "vm: {suite}: {} {} (uname {})",
                p.image.name, p.image.version, p.kernel.release
            ),
            Err(e) => eprintln!("vm: {suite}: cannot prepare the kernel: {e:#}"),
        }
        prepared.push((*suite, p));
    }
    eprintln!("vm: kernels ready in {:.1}s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut exes: Vec<PathBuf> = tests.iter().map(|t| t.exe.clone()).collect();
    exes.extend([sockwatch.clone(), churn]);
    let plan = initramfs::Plan {
        busybox: &busybox,
        sockwatch: &sockwatch,
        exes,
        runs: tests
            .iter()
            .map(|t| initramfs::Run {
                name: t.name.clone(),
                exe: t.exe.clone(),
                cwd: t.dir.clone(),
                args: if args.hook_cost {
                    HOOK_COST_ARGS.iter().map(|a| a.to_string()).collect()
                } else {
                    Vec::new()
                },
            })
            .collect(),
        filter: args.filter.as_deref(),
        stage: &vm_dir.join("stage"),
    };
    let common = initramfs::common(&plan)?;
    eprintln!(
        "vm: building initramfs ({:.0} MB) took {:.1}s",
        common.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let timeout = args.timeout.map_or(
        if args.full {
            FULL_TIMEOUT
        } else {
            CORE_TIMEOUT
        },
        Duration::from_secs,
    );
    let vm = VmSettings {
        vm_dir: &vm_dir,
        qemu: &qemu,
        common: &common,
        timeout,
        keep: args.keep,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_JOBS))
    });
    let kernels = boot_all(&vm, prepared, jobs.max(1))?;

    let run = RunResults {
        sockwatch_version: env!("CARGO_PKG_VERSION").to_string(),
        date: today(),
        test_set: set.to_string(),
        filter: args.filter.clone(),
        kernels,
    };
    // A measurement keeps its own results: the matrix's results.json stays the tests'.
    let path = vm_dir.join(if args.hook_cost {
        "hook_cost.json"
    } else {
        "results.json"
    });
    fs::write(&path, serde_json::to_string_pretty(&run)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    if args.hook_cost {
        let text = reports(&run);
        let log = vm_dir.join("logs/hook-cost.txt");
        fs::write(&log, &text).with_context(|| format!("cannot write {}", log.display()))?;
        eprintln!("\n{text}");
        eprintln!("vm: the tables are also in {}", log.display());
    }
    // The table is of the core set on every kernel: a subset run, a filtered or full one, or
    // one where a kernel could not even be fetched leaves the last such table in place.
    let all_ran = SUITES.iter().all(|(s, _)| {
        run.kernels
            .iter()
            .any(|k| k.suite == *s && k.outcome != FETCH_FAILED)
    });
    if all_ran && !args.full && args.filter.is_none() && !args.hook_cost {
        let docs = root.join("docs");
        fs::create_dir_all(&docs).context("cannot create docs/")?;
        fs::write(docs.join("kernels.md"), table::render(&run))
            .context("cannot write docs/kernels.md")?;
        eprintln!("vm: wrote docs/kernels.md");
    }
    eprintln!(
        "vm: the kernel matrix took {:.1} min; results in {}",
        started.elapsed().as_secs_f64() / 60.0,
        path.display()
    );
    // Last, so that the closing `N passed, N failed` line is the run's last line.
    let ok = summary(&run);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The suites named (aliases resolved, in the matrix's order), or all of them.
fn select_suites(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(SUITES.iter().map(|(s, _)| *s).collect());
    }
    let mut out = Vec::new();
    for n in names {
        let Some((suite, _)) = SUITES
            .iter()
            .find(|(s, aliases)| s == n || aliases.contains(&n.as_str()))
        else {
            let known: Vec<String> = SUITES
                .iter()
                .map(|(s, a)| format!("{s} ({})", a.join(", ")))
                .collect();
            bail!("unknown kernel {n:?}: one of {}", known.join(", "));
        };
        if !out.contains(suite) {
            out.push(*suite);
        }
    }
    out.sort_by_key(|s| SUITES.iter().position(|(x, _)| x == s));
    Ok(out)
}

fn select_tests(all: &[TestBinary], full: bool) -> anyhow::Result<Vec<TestBinary>> {
    if full {
        return Ok(all.to_vec());
    }
    select_named(all, CORE_TESTS)
}

/// sockwatch's integration test binaries of these names, all of which must have been built.
fn select_named(all: &[TestBinary], names: &[&str]) -> anyhow::Result<Vec<TestBinary>> {
    let picked: Vec<TestBinary> = all
        .iter()
        .filter(|t| t.dir.ends_with("sockwatch") && names.contains(&t.name.as_str()))
        .cloned()
        .collect();
    if picked.len() < names.len() {
        bail!(
            "the test binaries {} were not all built: found {:?}",
            names.join(", "),
            picked.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
    }
    Ok(picked)
}

/// Every kernel's reports (a measurement's tables), or why a kernel has none.
fn reports(run: &RunResults) -> String {
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

/// bin/busybox from busybox-static, unpacked under target/vm/busybox/<version>/.
fn fetch_busybox(vm_dir: &Path) -> anyhow::Result<PathBuf> {
    let apt = Apt::new(vm_dir, BUSYBOX_SUITE);
    apt.ensure_lists()?;
    let pkg = apt.show("busybox-static")?;
    let deb = apt.fetch(&pkg, &vm_dir.join("debs"))?;
    let dir = vm_dir.join("busybox").join(pkg.version.replace(':', "_"));
    let bin = dir.join("bin/busybox");
    if !bin.is_file() {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let st = std::process::Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&dir)
            .status()
            .context("cannot run dpkg")?;
        if !st.success() || !bin.is_file() {
            bail!("dpkg -x {} gave no bin/busybox", deb.display());
        }
    }
    Ok(bin)
}

/// Resolves, fetches and unpacks a suite's current cloud kernel.
fn prepare(vm_dir: &Path, suite: &str) -> anyhow::Result<Prepared> {
    let apt = Apt::new(vm_dir, suite);
    apt.ensure_lists()?;
    let pkgs = apt::resolve_kernel(KERNEL_META, &mut |name| apt.show(name))?;
    let debs = pkgs
        .contents
        .iter()
        .map(|p| apt.fetch(p, &vm_dir.join("debs")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dir = vm_dir
        .join("kernels")
        .join(format!("{}_{}", pkgs.image.name, pkgs.image.version));
    let kernel = kernel::extract(&debs, &dir)?;
    let modules = kernel::modules(&kernel, kernel::MODULES)?;
    Ok(Prepared {
        image: pkgs.image,
        kernel,
        modules,
    })
}

/// What every VM of a run shares.
struct VmSettings<'a> {
    vm_dir: &'a Path,
    qemu: &'a Path,
    /// The initramfs without modules.
    common: &'a [u8],
    timeout: Duration,
    keep: bool,
}

/// Boots the kernels, `jobs` at a time; results in the kernels' order.
fn boot_all(
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

/// The table on stdout and the closing `N passed, N failed` line; true when all went well.
fn summary(run: &RunResults) -> bool {
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

/// Today's date (UTC) as YYYY-MM-DD, from the days since 1970 (the civil-from-days algorithm).
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(i64::try_from(secs / 86_400).unwrap_or(0))
}

fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
    }

    #[test]
    fn reports_per_kernel_or_why_not() {
        use self::results::{BinaryResult, Report, TestResult};
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

    #[test]
    fn suites_and_aliases() {
        assert_eq!(
            select_suites(&[]).unwrap(),
            ["bullseye", "bookworm", "trixie", "forky"]
        );
        let names = ["testing", "6.1", "bookworm"].map(String::from);
        assert_eq!(select_suites(&names).unwrap(), ["bookworm", "forky"]);
        assert!(select_suites(&["sid".to_string()]).is_err());
    }
}
