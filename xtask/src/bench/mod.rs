//! `cargo xtask bench`: what tracing costs under connection churn, side by side.
//!
//! Builds sockwatch and sockwatch-churn in release mode, then runs the same churn load (in a
//! fresh network namespace each time) once per mode per round, the modes alternating so that
//! drift in a shared machine hits them all alike. Under sockwatch the namespace is kept by a
//! holder process (`sockwatch-churn --netns /proc/PID/ns/net`) until sockwatch has stopped, so
//! that its last check of the open connections covers it; otherwise `--new-netns`.
//!
//! - `untraced`: no tracer;
//! - `trace`: `sockwatch trace --output FILE --format jsonl` (every event to a file);
//! - `top`: `sockwatch top --format json --interval 1` (aggregation only);
//! - `hooks`: the same `top`, built with `--features hooks-only`: every program is attached and
//!   returns at once, so the row is what the hooks cost before any work, the floor under the
//!   other two;
//! - `bpftrace`, when it is on PATH: a one-line peer on the same tracepoint, printing to a file.
//!
//! The tracers run in the host namespace (they see every namespace) and are started, waited for
//! (`--ready-file`, or bpftrace's "Attaching" line), stopped with SIGTERM and reaped with
//! `wait4`, whose rusage gives their CPU time and peak RSS. `--concurrency N` then holds N
//! connections open under `sockwatch top` and checks that its count of established connections
//! matches. Results: a table on stdout and `target/bench/results.json`; progress on stderr.
//! `--soak SECONDS` instead runs a steady churn at `--soak-rate` under `sockwatch top` for that
//! long, sampling sockwatch's RSS (`target/bench/soak.json`).
//! Every process started here is stopped by its pid, also on errors (and dies with xtask through
//! PR_SET_PDEATHSIG if xtask is killed).
mod concurrency;
mod count;
mod report;
mod run;
mod soak;
mod tracer;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::{
    count::{count_bpftrace_closes, count_connections, counters, listener},
    report::{ModeSummary, Results, Round, Settings, render, summarize},
    run::find_on_path,
    tracer::NetnsHolder,
};

/// The churn's server port (in its own namespace; also used to pick out bpftrace's lines).
const PORT: u16 = 7913;
const SOURCES: u32 = 4;
const MAX_SOCKETS: &str = "1048576";
/// The churn's own bound (`--max-seconds`); we give it a minute more before killing it.
const CHURN_MAX_SECONDS: u64 = 600;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Stopping includes draining the ring buffer and finishing the output file.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the tracer keeps running after the churn has exited (see its use).
const CLOSE_GRACE: Duration = Duration::from_millis(1500);
/// sockwatch's sampling interval in the `top` runs, in seconds.
const INTERVAL: u64 = 1;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds; each runs every mode once, in turn. Medians over rounds are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,

    /// Connections per run.
    #[arg(long, default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    connections: u64,

    /// Client processes of the churn.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,

    /// Server processes of the churn (SO_REUSEPORT listeners on one port).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    servers: u32,

    /// Connections in flight per client process.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    in_flight: u32,

    /// Who closes first.
    #[arg(long, default_value = "server-first",
          value_parser = ["server-first", "client-first", "reset"])]
    close: String,

    /// Also hold N connections open under `sockwatch top` and compare its count with N
    /// (e.g. 250000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    concurrency: Option<u64>,

    /// Connections opened per second while --concurrency ramps up. A ramp as fast as the machine
    /// allows is the churn rounds' test; this one is about holding them, so it opens them at a
    /// rate sockwatch's reader keeps up with on a small machine.
    #[arg(long, value_name = "N", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    concurrency_rate: u64,

    /// Instead of the side-by-side rounds: a steady churn at --soak-rate for SECONDS under
    /// `sockwatch top`, sampling its RSS every 5 s; reports whether memory stayed flat, every
    /// connection was counted and none is left open (target/bench/soak.json).
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    soak: Option<u64>,

    /// Connections per second during --soak.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    soak_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Trace,
    Top,
    /// `top` from the `hooks-only` build.
    Hooks,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Trace => "trace",
            Mode::Top => "top",
            Mode::Hooks => "hooks",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%d %d %d\n", args->oldstate, args->newstate, args->sport); }"#;

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask bench needs root (it loads eBPF programs and creates network \
             namespaces): run it as root, e.g. `sudo -E cargo xtask bench`"
        );
    }
    let root = crate::workspace_root()?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The soak has no hooks row.
    let hooks_only = match args.soak {
        None => Some(build_hooks_only(&root)?),
        Some(_) => None,
    };
    cargo_build(
        &["-p", "sockwatch", "-p", "sockwatch-churn"],
        "sockwatch and sockwatch-churn",
    )?;
    let bench = Bench {
        sockwatch: root.join("target/release/sockwatch"),
        hooks_only,
        churn: root.join("target/release/sockwatch-churn"),
        dir: dir.clone(),
        args,
    };
    if let Some(seconds) = args.soak {
        let result = bench.soak(seconds, args.soak_rate)?;
        print!("{}", soak::render(&result));
        let path = dir.join("soak.json");
        fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        progress(format!("wrote {}", path.display()));
        return Ok(if result.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let bpftrace = find_on_path("bpftrace");
    let mut modes = vec![Mode::Untraced, Mode::Trace, Mode::Top, Mode::Hooks];
    match &bpftrace {
        Some(p) => {
            progress(format!(
                "found {}: adding the bpftrace peer row",
                p.display()
            ));
            modes.push(Mode::Bpftrace);
        }
        None => progress("bpftrace is not on PATH: no peer row"),
    }
    progress(format!(
        "{} round(s) of {} connections per mode ({} clients x {} in flight, {} servers, close {}, {} sources)",
        args.rounds,
        args.connections,
        args.clients,
        args.in_flight,
        args.servers,
        args.close,
        SOURCES
    ));

    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); modes.len()];
    for r in 1..=args.rounds {
        for (i, &mode) in modes.iter().enumerate() {
            progress(format!("round {r}/{}: {} ...", args.rounds, mode.name()));
            let result = match bench.round(mode, r, bpftrace.as_deref()) {
                Ok(result) => result,
                // The peer is a tool of its own: its failure (it has hung on SIGTERM once)
                // costs its round, not the benchmark.
                Err(e) if mode == Mode::Bpftrace => {
                    progress(format!(
                        "warning: round {r}/{}: bpftrace failed, its row keeps the rounds it finished: {e:#}",
                        args.rounds
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            progress(format!(
                "round {r}/{}: {}: {:.0} connections/s ({} made, {} errors{})",
                args.rounds,
                mode.name(),
                result.churn.rate,
                result.churn.connections,
                result.churn.errors,
                if result.churn.timed_out {
                    ", STOPPED EARLY by --max-seconds"
                } else {
                    ""
                }
            ));
            rounds[i].push(result);
        }
    }
    let untraced = rounds[0].clone();
    let summaries: Vec<ModeSummary> = modes
        .iter()
        .zip(rounds)
        .filter(|(_, rs)| !rs.is_empty())
        .map(|(&m, rs)| summarize(m, bench.command(m), rs, &untraced))
        .collect();

    let concurrency = match args.concurrency {
        Some(n) => Some(bench.concurrency(n, args.concurrency_rate)?),
        None => None,
    };

    let results = Results {
        settings: Settings {
            rounds: args.rounds,
            connections: args.connections,
            clients: args.clients,
            servers: args.servers,
            in_flight: args.in_flight,
            close: args.close.clone(),
            sources: SOURCES,
            port: PORT,
            max_sockets: MAX_SOCKETS.parse().unwrap_or(0),
            cpus: thread::available_parallelism().map_or(0, usize::from),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        modes: summaries,
        concurrency,
    };
    print!("{}", render(&results));
    let path = dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    progress(format!("wrote {}", path.display()));
    if let Some(c) = &results.concurrency
        && !c.matches
    {
        eprintln!(
            "bench: sockwatch's established_now ({}) does not match the {} held connections",
            c.established_now
                .map_or_else(|| "no listener row".to_string(), |n| n.to_string()),
            c.held
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo build --release ARGS`, announced as building `what`.
fn cargo_build(args: &[&str], what: &str) -> anyhow::Result<()> {
    progress(format!("building {what} (release)"));
    let built = Command::new("cargo")
        .args(["build", "--release"])
        .args(args)
        .status()
        .context("cannot run cargo build")?;
    if !built.success() {
        bail!("building {what} failed (see above)");
    }
    Ok(())
}

/// Builds sockwatch with `--features hooks-only` and returns the binary's path. In a target
/// directory of its own, so that target/release/sockwatch is never a build that sees nothing.
fn build_hooks_only(root: &Path) -> anyhow::Result<PathBuf> {
    let target = root.join("target/hooks-only");
    cargo_build(
        &[
            "-p",
            "sockwatch",
            "--features",
            "hooks-only",
            "--target-dir",
            &target.display().to_string(),
        ],
        "sockwatch with --features hooks-only",
    )?;
    Ok(target.join("release/sockwatch"))
}

struct Bench<'a> {
    sockwatch: PathBuf,
    /// sockwatch built with `--features hooks-only` (the `hooks` row), when there is one.
    hooks_only: Option<PathBuf>,
    churn: PathBuf,
    dir: PathBuf,
    args: &'a BenchArgs,
}

impl Bench<'_> {
    fn round(&self, mode: Mode, round: u32, bpftrace: Option<&Path>) -> anyhow::Result<Round> {
        Ok(match mode {
            Mode::Untraced => Round::untraced(round, self.run_churn(None)?),
            Mode::Trace | Mode::Top | Mode::Hooks => {
                let file = self.trace_file();
                let _ = fs::remove_file(&file);
                let holder = NetnsHolder::spawn()?;
                let mut t = self.start_sockwatch(mode, mode != Mode::Trace, &[])?;
                let churn = self.run_churn(Some(&holder.path()))?;
                // The churn is done when its sockets are closed, not fully gone: a last FIN
                // may still be retransmitted (RTO 200 ms+) and the close come after; give
                // those closes time to happen before counting.
                thread::sleep(CLOSE_GRACE);
                let usage = t.stop()?;
                drop(holder);
                let _ = fs::remove_file(self.ready_file());
                let (seen, incomplete, expired_closes, lost) = if mode == Mode::Trace {
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
                }
            }
        })
    }
}
