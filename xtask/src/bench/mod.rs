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
//! - `bpftrace`, when it is on PATH: a one-line peer on the same tracepoint, printing to a file;
//! - `top-ring`, with `--top-ring-size SIZE`: `top` with `--ring-size SIZE` (its counts are
//!   made in the kernel, so even the smallest ring should leave them exact);
//! - `trace-baseline` and `top-baseline`, with `--baseline REV`: `trace` and `top` (the same
//!   options) of sockwatch built at git revision REV (see `baseline`), each run next to its
//!   own build's row (see `run_order`) and compared with it round by round (`VsBaseline`);
//!   `--baseline-only` leaves out the other rows but untraced.
//!
//! The tracers run in the host namespace (they see every namespace) and are started, waited for
//! (`--ready-file`, or bpftrace's "Attaching" line), stopped with SIGTERM and reaped with
//! `wait4`, whose rusage gives their CPU time and peak RSS. `--concurrency N` then holds N
//! connections open under `sockwatch top` with its default options, opened as fast as the
//! machine can (or at `--concurrency-rate`), checks its counts, and measures its memory, its
//! BPF maps' kernel memory, its time to ready and its CPU per check against the kernel's socket
//! table, then starts a second `top` with the N connections already open (see `concurrency`);
//! `--concurrency-trace` runs `sockwatch trace` on the same ramp, doubling its ring until it
//! loses nothing (see `tracehold`). Results: a table on stdout and `target/bench/results.json`;
//! progress on stderr.
//! For the rounds `kernel.bpf_stats_enabled` is set to 1, and every sockwatch run reads the
//! kernel time of the BPF programs it loaded, just before it is stopped (see `bpf_stats`); the
//! old value is put back after the rounds, also on errors and on SIGINT, SIGTERM or SIGHUP.
//! `--soak SECONDS` instead runs a steady churn at `--soak-rate` under `sockwatch top` for that
//! long, sampling sockwatch's RSS (`target/bench/soak.json`).
//! Every process started here is stopped by its pid, also on errors (and dies with xtask through
//! PR_SET_PDEATHSIG if xtask is killed).
mod baseline;
mod bpf_stats;
mod check_cost;
mod concurrency;
mod count;
mod mode;
mod procfs;
mod render;
mod report;
mod round;
mod run;
mod soak;
mod tracehold;
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
    mode::{Mode, run_order},
    render::render,
    report::{ModeSummary, Results, Round, Settings, summarize},
    run::find_on_path,
};

/// The churn's server port (in its own namespace; also used to pick out bpftrace's lines).
const PORT: u16 = 7913;
const SOURCES: u32 = 4;
const MAX_SOCKETS: &str = "1048576";
/// The churn's own bound (`--max-seconds`); we give it a minute more before killing it.
const CHURN_MAX_SECONDS: u64 = 600;
/// Loading, attaching, and a first look at every connection already open (a million, with
/// --concurrency).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Stopping includes draining the ring buffer and finishing the output file.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the tracer keeps running after the churn has exited (see its use).
const CLOSE_GRACE: Duration = Duration::from_millis(1500);
/// sockwatch's sampling interval in the `top` runs, in seconds.
const INTERVAL: u64 = 1;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds; each runs every mode once, in turn. Medians over rounds are reported. 0 skips
    /// the rounds (with --concurrency: only the held connections).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
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

    /// Also hold N connections open (e.g. 1000000) under `sockwatch top` with its default
    /// options, and check that its established_now and accepted are exactly N; measures its
    /// memory and its BPF maps' kernel memory per connection, its time to ready, and its CPU per
    /// check against the kernel's socket table; then its time to ready and count with the N
    /// connections already open when it starts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    concurrency: Option<u64>,

    /// Connections opened per second while --concurrency ramps up; 0: as fast as the machine
    /// opens them (unpaced).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    concurrency_rate: u64,

    /// With --concurrency: also run `sockwatch trace --output FILE` (default options) on the
    /// same ramp: what it loses with the default ring, then with the ring doubled until it
    /// loses nothing (at most 1G), and its reader's events per CPU second.
    #[arg(long, requires = "concurrency")]
    concurrency_trace: bool,

    /// Also run, in every round, `trace` and `top` of sockwatch built at git revision REV (e.g.
    /// the commit before a change), with the same options as the `trace` and `top` rows:
    /// checked out with `git worktree add` in target/bench/baseline-COMMIT and built there with
    /// a target directory of its own.
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,

    /// With --baseline: run only the untraced, trace and top rows and their baseline rows (no
    /// hooks, top-ring or bpftrace row), so that more rounds fit in the same time.
    #[arg(long, requires = "baseline", conflicts_with = "top_ring_size")]
    baseline_only: bool,

    /// Also run, in every round, `top --ring-size SIZE` (e.g. 4K, the smallest ring), to show
    /// whether its counts stay exact with a ring that overflows.
    #[arg(long, value_name = "SIZE")]
    top_ring_size: Option<String>,

    /// Run the trace rows (`trace`, and `trace-baseline` with --baseline) with `--ring-size
    /// SIZE`: builds whose default rings differ then do the same work (a ring that fills loses
    /// events, and a lost event costs less than one written).
    #[arg(long, value_name = "SIZE")]
    trace_ring_size: Option<String>,

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
    if args.rounds == 0 && args.concurrency.is_none() && args.soak.is_none() {
        bail!("--rounds 0 leaves nothing to run without --concurrency");
    }
    for size in [&args.top_ring_size, &args.trace_ring_size]
        .into_iter()
        .flatten()
    {
        check_ring_size(size)?;
    }
    let root = crate::workspace_root()?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let side_by_side = args.soak.is_none() && args.rounds > 0;
    // The soak has no hooks row, nor has --baseline-only.
    let hooks_only = if side_by_side && !args.baseline_only {
        Some(build_hooks_only(&root)?)
    } else {
        None
    };
    let baseline = match (&args.baseline, side_by_side) {
        (Some(rev), true) => Some(baseline::prepare(&root, rev)?),
        (Some(_), false) => {
            progress("--baseline is for the rounds: none run here, so it is not built");
            None
        }
        (None, _) => None,
    };
    cargo_build(
        &["-p", "sockwatch", "-p", "sockwatch-churn"],
        "sockwatch and sockwatch-churn",
    )?;
    let mut bench = Bench {
        sockwatch: root.join("target/release/sockwatch"),
        hooks_only,
        baseline: baseline.clone(),
        churn: root.join("target/release/sockwatch-churn"),
        dir: dir.clone(),
        args,
        kernel_time: false,
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
    let bpftrace = find_on_path("bpftrace").filter(|_| side_by_side && !args.baseline_only);
    let mut modes = vec![Mode::Untraced, Mode::Trace, Mode::Top];
    if !args.baseline_only {
        modes.push(Mode::Hooks);
    }
    if args.top_ring_size.is_some() {
        modes.push(Mode::TopRing);
    }
    if baseline.is_some() {
        modes.extend([Mode::TraceBaseline, Mode::TopBaseline]);
    }
    match &bpftrace {
        Some(p) => {
            progress(format!(
                "found {}: adding the bpftrace peer row",
                p.display()
            ));
            modes.push(Mode::Bpftrace);
        }
        None if side_by_side && !args.baseline_only => {
            progress("bpftrace is not on PATH: no peer row")
        }
        None => {}
    }
    if !side_by_side {
        modes.clear();
    }
    if side_by_side {
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
    }

    // The kernel keeps the programs' run times only while asked to: for the rounds, the only
    // runs that read them. Put back when this is dropped (also on errors and signals).
    let stats_on = if side_by_side {
        match bpf_stats::StatsOn::enable() {
            Ok(s) => Some(s),
            Err(e) => {
                progress(format!(
                    "warning: no kernel time per connection in this run: {e:#}"
                ));
                None
            }
        }
    } else {
        None
    };
    bench.kernel_time = stats_on.is_some();
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); modes.len()];
    for r in 1..=args.rounds {
        for i in run_order(&modes, r) {
            let mode = modes[i];
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
    drop(stats_on);
    let untraced = rounds.first().cloned().unwrap_or_default();
    let summaries: Vec<ModeSummary> = modes
        .iter()
        .zip(rounds)
        .filter(|(_, rs)| !rs.is_empty())
        .map(|(&m, rs)| summarize(m, bench.command(m), rs, &untraced))
        .collect();
    let row = |m: Mode| summaries.iter().find(|s| s.name() == m.name());
    let vs_baseline = [Mode::Trace, Mode::Top]
        .into_iter()
        .filter_map(|m| {
            let base = row(m.baseline()?)?;
            Some(report::vs_baseline(row(m)?, base, &untraced))
        })
        .collect();

    let rate = (args.concurrency_rate > 0).then_some(args.concurrency_rate);
    let concurrency = match args.concurrency {
        Some(n) => Some(bench.concurrency(n, rate)?),
        None => None,
    };
    let trace_hold = match (args.concurrency, args.concurrency_trace) {
        // Its failure costs its own figures, not those measured before it.
        (Some(n), true) => match bench.trace_hold(n, rate) {
            Ok(t) => Some(t),
            Err(e) => {
                progress(format!("warning: the trace runs failed: {e:#}"));
                None
            }
        },
        _ => None,
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
            mem_total_mib: procfs::meminfo().map_or(0, |(total, _)| total / 1024),
            top_ring_size: args.top_ring_size.clone(),
            trace_ring_size: args.trace_ring_size.clone(),
            kernel_time: bench.kernel_time,
        },
        baseline,
        modes: summaries,
        vs_baseline,
        concurrency,
        trace_hold,
    };
    print!("{}", render(&results));
    let path = dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    progress(format!("wrote {}", path.display()));
    let mut failed = false;
    if let Some(c) = &results.concurrency {
        let show =
            |v: Option<u64>| v.map_or_else(|| "no listener row".to_string(), |n| n.to_string());
        if !c.matches {
            eprintln!(
                "bench: sockwatch's established_now ({}) and accepted ({}) do not both match the \
                 {} connections asked for ({} held)",
                show(c.established_now),
                show(c.accepted),
                c.requested,
                c.held
            );
            failed = true;
        }
        if let Some(a) = &c.already_open
            && !a.matches
        {
            eprintln!(
                "bench: with the connections already open at its start, sockwatch's \
                 established_now ({}) does not match the {} held",
                show(a.established_now),
                c.held
            );
            failed = true;
        }
    }
    for m in results.modes.iter().filter(|m| m.inexact_rounds() > 0) {
        eprintln!(
            "bench: {}: counts not exact in {} round(s) (accepted = made = closed + closes \
             found gone, established_now = 0)",
            m.name(),
            m.inexact_rounds()
        );
        if m.name() == "top" || m.name() == "top-ring" {
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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

/// Refuses a --top-ring-size sockwatch would refuse (a power of two from 4K to 1G), before
/// anything is built or run.
fn check_ring_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--top-ring-size {s}: not a size"))?;
    let bytes = match unit.to_ascii_uppercase().as_str() {
        "" => Some(n),
        "K" => n.checked_mul(1 << 10),
        "M" => n.checked_mul(1 << 20),
        "G" => n.checked_mul(1 << 30),
        _ => None,
    }
    .with_context(|| format!("--top-ring-size {s}: the unit is K, M or G"))?;
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        bail!("--top-ring-size {s}: a power of two from 4K to 1G");
    }
    Ok(bytes)
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
    /// sockwatch built at --baseline (the `trace-baseline` and `top-baseline` rows).
    baseline: Option<baseline::Baseline>,
    churn: PathBuf,
    dir: PathBuf,
    args: &'a BenchArgs,
    /// Whether kernel.bpf_stats_enabled is on: the rounds read their tracer's kernel time.
    kernel_time: bool,
}
