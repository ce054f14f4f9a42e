//! `cargo xtask run | test | bench | vmtest`: prepares the toolchain, then builds and runs
//! sockwatch, its tests, the benchmark, or the tests on other kernels under qemu.
mod bench;
#[cfg(test)]
mod docs_links;
mod toolchain;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "sockwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build sockwatch in release mode and run it as root: `cargo xtask run -- trace`.
    Run {
        /// Arguments for sockwatch.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests and the root integration tests that load the real programs,
    /// then the core integration tests on each Debian kernel under qemu (see `vmtest`).
    Test {
        /// Skip the kernel matrix (the qemu VMs).
        #[arg(long)]
        no_vm: bool,
        /// Run every integration test on each kernel, not just the core set.
        #[arg(long, conflicts_with = "no_vm")]
        vm_full: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark under connection churn (root): no tracer vs `sockwatch trace` vs `sockwatch
    /// top` vs the hooks alone (programs that return at once) (vs bpftrace when on PATH; vs
    /// `top` of another revision with --baseline); --concurrency N holds N connections under
    /// `top` (memory, BPF map memory, time to ready, CPU per check); results in
    /// target/bench/results.json. See docs/performance.md.
    Bench(bench::BenchArgs),
    /// Boot Debian's kernels (5.10, 6.1, 6.12, testing) under qemu and run the integration
    /// tests in each; results in target/vm/results.json, the support table in docs/kernels.md.
    Vmtest(vm::VmArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn status(cmd: &mut Command) -> anyhow::Result<ExitCode> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    toolchain::ensure()?;
    match cli.task {
        Task::Run { args } => {
            let built = Command::new("cargo")
                .args(["build", "--release", "--package", "sockwatch"])
                .status()
                .context("cannot run cargo build")?;
            if !built.success() {
                bail!("building sockwatch failed");
            }
            let bin = workspace_root()?.join("target/release/sockwatch");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                eprintln!("xtask: sockwatch needs root; running it with sudo");
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            status(cmd.args(&args))
        }
        Task::Test {
            no_vm,
            vm_full,
            args,
        } => {
            if !is_root() {
                eprintln!(
                    "xtask: not root: the integration tests that load eBPF programs will be skipped \
                     (run `sudo -E cargo xtask test` to include them)"
                );
            }
            let host = status(
                Command::new("cargo")
                    .args(["test", "--workspace", "--all-targets"])
                    .args(&args),
            )?;
            if host != ExitCode::SUCCESS {
                eprintln!("xtask: the host tests failed; the kernel matrix did not run");
                return Ok(host);
            }
            if no_vm {
                return Ok(host);
            }
            // vm::run says how long the matrix took and ends with its totals line.
            vm::run(&vm::VmArgs {
                full: vm_full,
                ..Default::default()
            })
        }
        Task::Bench(args) => bench::run(&args),
        Task::Vmtest(args) => vm::run(&args),
    }
}

fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("xtask is not inside the workspace")
}
