//! `cargo xtask vmtest`: the kernel matrix. Boots Debian's own cloud kernels (5.10 to testing)
//! under qemu with an initramfs of our own and runs sockwatch's integration tests inside each,
//! as root on a real kernel of that version.
//!
//! - apt.rs: fetches the kernel and busybox .debs through a private apt setup (cached);
//! - kernel.rs: unpacks a kernel, finds vmlinuz and the modules to load;
//! - cpio.rs / initramfs.rs: the initramfs (busybox, /init, the test binaries, modules);
//! - qemu.rs: boots it, follows the results channel, enforces the timeout;
//! - boot.rs: boots the kernels a few at a time and gathers each one's results;
//! - results.rs: parses that channel (markers + libtest output) into results;
//! - report.rs: the table of kernels on stdout, a measurement's tables;
//! - table.rs: renders docs/kernels.md from the results.
//!
//! `--hook-cost` boots the same kernels to run one measurement instead of the tests
//! (sockwatch/tests/hook_cost.rs, an ignored test) and prints the table it reports per kernel.
//!
//! Everything lives in target/vm/: apt lists, debs, unpacked kernels, stripped binaries, the
//! console logs (logs/<suite>.log) and results.json.
mod apt;
mod artifacts;
mod boot;
mod cpio;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod results;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::{
    apt::{Apt, Package},
    artifacts::TestBinary,
    results::RunResults,
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
/// At most this many VMs at once by default (one per host core up to it): each runs on one
/// host thread (see qemu.rs), and two at once on two cores took as long each as one alone.
const MAX_DEFAULT_JOBS: usize = 4;
const FETCH_FAILED: &str = "fetch failed";

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
    let vm = boot::VmSettings {
        vm_dir: &vm_dir,
        qemu: &qemu,
        common: &common,
        timeout,
        keep: args.keep,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_JOBS))
    });
    let kernels = boot::boot_all(&vm, prepared, jobs.max(1))?;

    let run = RunResults {
        sockwatch_version: env!("CARGO_PKG_VERSION").to_string(),
        date: time::OffsetDateTime::now_utc().date().to_string(),
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
        let text = report::reports(&run);
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
    let ok = report::summary(&run);
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

#[cfg(test)]
mod tests {
    use super::*;

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
