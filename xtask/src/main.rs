//! `cargo xtask run | test | bench`: prepares the toolchain, then builds and runs sockwatch, its
//! tests, or the benchmark.
mod bench;
mod toolchain;

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
    /// Run every test: unit tests and the root integration tests that load the real programs.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark under connection churn (root): no tracer vs `sockwatch trace` vs `sockwatch
    /// top` vs the hooks alone (programs that return at once) (vs bpftrace when on PATH);
    /// results in target/bench/results.json.
    Bench(bench::BenchArgs),
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
        Task::Test { args } => {
            if !is_root() {
                eprintln!(
                    "xtask: not root: the integration tests that load eBPF programs will be skipped \
                     (run `sudo -E cargo xtask test` to include them)"
                );
            }
            status(
                Command::new("cargo")
                    .args(["test", "--workspace", "--all-targets"])
                    .args(&args),
            )
        }
        Task::Bench(args) => bench::run(&args),
    }
}

fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("xtask is not inside the workspace")
}
