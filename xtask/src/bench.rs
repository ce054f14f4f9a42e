//! `cargo xtask bench`: what tracing costs under connection churn, side by side.
//!
//! Builds sockwatch and sockwatch-churn in release mode, then runs the same churn load (in a
//! fresh network namespace each time, `sockwatch-churn --new-netns`) once per mode per round,
//! the modes alternating so that drift in a shared machine hits them all alike:
//!
//! - `untraced`: no tracer;
//! - `trace`: `sockwatch trace --output FILE --format jsonl` (every event to a file);
//! - `top`: `sockwatch top --format json --interval 1` (aggregation only);
//! - `bpftrace`, when it is on PATH: a one-line peer on the same tracepoint, printing to a file.
//!
//! The tracers run in the host namespace (they see every namespace) and are started, waited for
//! (`--ready-file`, or bpftrace's "Attaching" line), stopped with SIGTERM and reaped with
//! `wait4`, whose rusage gives their CPU time and peak RSS. `--concurrency N` then holds N
//! connections open under `sockwatch top` and checks that its count of established connections
//! matches. Results: a table on stdout and `target/bench/results.json`; progress on stderr.
//! Every process started here is stopped by its pid, also on errors (and dies with xtask through
//! PR_SET_PDEATHSIG if xtask is killed).
use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io::{self, BufRead, BufReader, Read as _},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    sync::mpsc::{self, Receiver},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

/// The churn's server port (in its own namespace; also used to pick out bpftrace's lines).
const PORT: u16 = 7913;
const SOURCES: u32 = 4;
const MAX_SOCKETS: &str = "1048576";
/// The churn's own bound (`--max-seconds`); we give it a minute more before killing it.
const CHURN_MAX_SECONDS: u64 = 600;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Stopping includes draining the ring buffer and finishing the output file.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Trace,
    Top,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Trace => "trace",
            Mode::Top => "top",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%d %d %d\n", args->oldstate, args->newstate, args->sport); }"#;

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// What sockwatch-churn prints at the end.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct Churn {
    connections: u64,
    seconds: f64,
    rate: f64,
    errors: u64,
    port: u16,
    netns: u64,
    timed_out: bool,
}

/// One mode's run in one round.
#[derive(Debug, Clone, Serialize)]
struct Round {
    round: u32,
    churn: Churn,
    /// The tracer's user + system CPU seconds over its whole life (wait4 rusage).
    tracer_cpu_s: Option<f64>,
    /// Of which before it was ready (loading and attaching; from /proc at readiness).
    tracer_startup_cpu_s: Option<f64>,
    /// ru_maxrss.
    tracer_peak_rss_kib: Option<u64>,
    /// trace: connections of the churn with connect, accept and both closes in the file;
    /// top: `accepted` of the churn's listener; bpftrace: server-side CLOSE transitions.
    seen: Option<u64>,
    /// trace: the churn's connections with some of their events missing from the file.
    incomplete: Option<u64>,
    /// The final loss counters (trace: the file's `lost` record; top: the summary's `lost`).
    lost: Option<BTreeMap<String, u64>>,
}

impl Round {
    fn cpu_per_100k(&self) -> Option<f64> {
        let cpu = self.tracer_cpu_s?;
        (self.churn.connections > 0).then(|| cpu / self.churn.connections as f64 * 1e5)
    }
}

#[derive(Debug, Serialize)]
struct ModeSummary {
    mode: &'static str,
    command: String,
    rate_median: f64,
    ratio_to_untraced: Option<f64>,
    connections_made_median: f64,
    seen_median: Option<f64>,
    cpu_s_per_100k_median: Option<f64>,
    startup_cpu_s_median: Option<f64>,
    peak_rss_mib_median: Option<f64>,
    lost_median: Option<BTreeMap<String, f64>>,
    lost_max: Option<BTreeMap<String, u64>>,
    rounds: Vec<Round>,
}

#[derive(Debug, Serialize)]
struct Concurrency {
    requested: u64,
    held: u64,
    established_now: Option<u64>,
    matches: bool,
    peak_rss_kib: u64,
    rss_at_ready_kib: Option<u64>,
    /// (peak - at ready) / held.
    rss_bytes_per_connection: Option<f64>,
    /// peak / held.
    peak_rss_bytes_per_connection: f64,
    tracer_cpu_s: f64,
    lost: Option<BTreeMap<String, u64>>,
    churn: Option<Churn>,
}

#[derive(Debug, Serialize)]
struct Results {
    settings: Settings,
    modes: Vec<ModeSummary>,
    concurrency: Option<Concurrency>,
}

#[derive(Debug, Serialize)]
struct Settings {
    rounds: u32,
    connections: u64,
    clients: u32,
    servers: u32,
    in_flight: u32,
    close: String,
    sources: u32,
    port: u16,
    max_sockets: u64,
    cpus: usize,
    kernel: String,
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
    progress("building sockwatch and sockwatch-churn (release)");
    let built = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "sockwatch",
            "-p",
            "sockwatch-churn",
        ])
        .status()
        .context("cannot run cargo build")?;
    if !built.success() {
        bail!("building sockwatch and sockwatch-churn failed (see above)");
    }
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bench = Bench {
        sockwatch: root.join("target/release/sockwatch"),
        churn: root.join("target/release/sockwatch-churn"),
        dir: dir.clone(),
        args,
    };
    let bpftrace = find_on_path("bpftrace");
    let mut modes = vec![Mode::Untraced, Mode::Trace, Mode::Top];
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
            let result = bench.round(mode, r, bpftrace.as_deref())?;
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
    let untraced_rate = median(rounds[0].iter().map(|r| r.churn.rate));
    let summaries: Vec<ModeSummary> = modes
        .iter()
        .zip(rounds)
        .map(|(&m, rs)| summarize(m, bench.command(m), rs, untraced_rate))
        .collect();

    let concurrency = match args.concurrency {
        Some(n) => Some(bench.concurrency(n)?),
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

struct Bench<'a> {
    sockwatch: PathBuf,
    churn: PathBuf,
    dir: PathBuf,
    args: &'a BenchArgs,
}

impl Bench<'_> {
    fn ready_file(&self) -> PathBuf {
        self.dir.join("sockwatch.ready")
    }

    fn trace_file(&self) -> PathBuf {
        self.dir.join("trace.jsonl")
    }

    fn bpftrace_file(&self) -> PathBuf {
        self.dir.join("bpftrace.out")
    }

    fn sockwatch_args(&self, mode: Mode) -> Vec<String> {
        let mut v: Vec<String> = match mode {
            Mode::Trace => vec![
                "trace".into(),
                "--output".into(),
                self.trace_file().display().to_string(),
                "--format".into(),
                "jsonl".into(),
            ],
            _ => vec![
                "top".into(),
                "--format".into(),
                "json".into(),
                "--interval".into(),
                INTERVAL.to_string(),
            ],
        };
        v.extend([
            "--max-sockets".into(),
            MAX_SOCKETS.into(),
            "--ready-file".into(),
            self.ready_file().display().to_string(),
        ]);
        v
    }

    fn command(&self, mode: Mode) -> String {
        match mode {
            Mode::Untraced => "-".into(),
            Mode::Trace | Mode::Top => format!("sockwatch {}", self.sockwatch_args(mode).join(" ")),
            Mode::Bpftrace => format!(
                "bpftrace -e '{BPFTRACE_PROGRAM}' > {}",
                self.bpftrace_file().display()
            ),
        }
    }

    fn churn_args(&self) -> Vec<String> {
        let a = self.args;
        [
            "--new-netns",
            "--clients",
            &a.clients.to_string(),
            "--servers",
            &a.servers.to_string(),
            "--in-flight",
            &a.in_flight.to_string(),
            "--sources",
            &SOURCES.to_string(),
            "--port",
            &PORT.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start_sockwatch(&self, mode: Mode, capture_stdout: bool) -> anyhow::Result<Tracer> {
        let ready = self.ready_file();
        match fs::remove_file(&ready) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", ready.display())),
        }
        let log = self.dir.join(format!("sockwatch-{}.stderr", mode.name()));
        let mut cmd = Command::new(&self.sockwatch);
        cmd.args(self.sockwatch_args(mode))
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut t = Tracer::spawn("sockwatch", cmd, &log, libc::SIGTERM)?;
        t.wait_ready(|| ready.exists())?;
        Ok(t)
    }

    fn start_bpftrace(&self, bin: &Path) -> anyhow::Result<Tracer> {
        let out_path = self.bpftrace_file();
        let out = File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let log = self.dir.join("bpftrace.stderr");
        let mut cmd = Command::new(bin);
        cmd.args(["-e", BPFTRACE_PROGRAM]).stdout(out);
        let mut t = Tracer::spawn("bpftrace", cmd, &log, libc::SIGTERM)?;
        // Older releases print "Attaching N probes..." on stdout, newer ones on stderr.
        t.wait_ready(|| {
            file_contains(&log, "Attaching") || file_starts_with(&out_path, "Attaching")
        })?;
        Ok(t)
    }

    /// Runs the churn to completion (bounded in time) and returns its result line.
    fn run_churn(&self) -> anyhow::Result<Churn> {
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args())
            .args([
                "--connections",
                &self.args.connections.to_string(),
                "--close",
                &self.args.close,
                "--max-seconds",
                &CHURN_MAX_SECONDS.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = Reaped(spawn_dying_with_us(cmd, libc::SIGKILL, "sockwatch-churn")?);
        let stdout = read_all_in_background(child.0.stdout.take());
        let until = Instant::now() + Duration::from_secs(CHURN_MAX_SECONDS + 60);
        let status = loop {
            if let Some(st) = child.0.try_wait()? {
                break st;
            }
            if Instant::now() > until {
                bail!(
                    "sockwatch-churn did not finish within {} s (killed)",
                    CHURN_MAX_SECONDS + 60
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = stdout.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "sockwatch-churn failed ({status}); its output: {}",
                stdout.trim()
            );
        }
        let churn = parse_churn(&stdout)?;
        if churn.timed_out {
            progress(format!(
                "warning: the churn stopped early at --max-seconds {CHURN_MAX_SECONDS}"
            ));
        }
        Ok(churn)
    }

    fn round(&self, mode: Mode, round: u32, bpftrace: Option<&Path>) -> anyhow::Result<Round> {
        Ok(match mode {
            Mode::Untraced => Round {
                round,
                churn: self.run_churn()?,
                tracer_cpu_s: None,
                tracer_startup_cpu_s: None,
                tracer_peak_rss_kib: None,
                seen: None,
                incomplete: None,
                lost: None,
            },
            Mode::Trace | Mode::Top => {
                let file = self.trace_file();
                let _ = fs::remove_file(&file);
                let mut t = self.start_sockwatch(mode, mode == Mode::Top)?;
                let churn = self.run_churn()?;
                let usage = t.stop()?;
                let _ = fs::remove_file(self.ready_file());
                let (seen, incomplete, lost) = if mode == Mode::Trace {
                    progress(format!(
                        "counting the churn's connections in {}",
                        file.display()
                    ));
                    let count = count_connections(&file, churn.port, churn.netns)?;
                    // Hundreds of megabytes: not kept.
                    let _ = fs::remove_file(&file);
                    (Some(count.complete), Some(count.incomplete), count.lost)
                } else {
                    let summary: serde_json::Value = serde_json::from_str(&t.stdout())
                        .context("sockwatch top --format json printed no valid summary")?;
                    let seen = listener(&summary, churn.port, churn.netns)
                        .and_then(|l| l["accepted"].as_u64());
                    (seen, None, Some(counters(&summary["lost"])))
                };
                Round {
                    round,
                    churn,
                    tracer_cpu_s: Some(usage.cpu_s),
                    tracer_startup_cpu_s: t.startup_cpu_s,
                    tracer_peak_rss_kib: Some(usage.maxrss_kib),
                    seen,
                    incomplete,
                    lost,
                }
            }
            Mode::Bpftrace => {
                let bin = bpftrace.context("bpftrace is not on PATH")?;
                let mut t = self.start_bpftrace(bin)?;
                let churn = self.run_churn()?;
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
                    lost: None,
                }
            }
        })
    }

    /// Holds `n` connections under `sockwatch top` and compares its count with `n`.
    fn concurrency(&self, n: u64) -> anyhow::Result<Concurrency> {
        progress(format!(
            "concurrency: starting sockwatch top, then holding {n} connections"
        ));
        let mut t = self.start_sockwatch(Mode::Top, true)?;
        let rss_ready = rss_kib(t.pid);
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args())
            .args([
                "--hold",
                "--connections",
                &n.to_string(),
                "--max-seconds",
                &CHURN_MAX_SECONDS.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = Reaped(spawn_dying_with_us(cmd, libc::SIGKILL, "sockwatch-churn")?);
        let stdin: Option<ChildStdin> = child.0.stdin.take();
        let lines = lines_in_background(child.0.stdout.take());
        let until = Instant::now() + Duration::from_secs(CHURN_MAX_SECONDS);
        let held = loop {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    if let Some(h) = line.strip_prefix("held ") {
                        break h.trim().parse::<u64>().context("bad `held` line")?;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {
                    if let Some(st) = child.0.try_wait()? {
                        bail!(
                            "sockwatch-churn --hold exited ({st}) before holding its connections"
                        );
                    }
                }
                Err(_) => bail!("sockwatch-churn --hold did not report `held` in time"),
            }
        };
        progress(format!(
            "concurrency: {held} connections held; waiting two sampling intervals"
        ));
        thread::sleep(Duration::from_millis(2 * INTERVAL * 1000 + 500));
        let usage = t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let summary_text = t.stdout();
        // Let the churn close everything and report.
        drop(stdin);
        let mut churn_out = String::new();
        let until = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            churn_out.push_str(&line);
            churn_out.push('\n');
        }
        let exit = loop {
            if let Some(st) = child.0.try_wait()? {
                break Some(st);
            }
            if Instant::now() > until {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        if exit.is_none() {
            progress(
                "warning: sockwatch-churn --hold did not exit within 60 s of its stdin closing (killed)",
            );
        }
        let churn = parse_churn(&churn_out).ok();
        let summary: serde_json::Value = serde_json::from_str(&summary_text)
            .context("sockwatch top --format json printed no valid summary")?;
        let established_now = churn
            .as_ref()
            .and_then(|c| listener(&summary, c.port, c.netns))
            .and_then(|l| l["established_now"].as_u64());
        let peak = usage.maxrss_kib;
        let per_conn = |kib: u64| (kib * 1024) as f64 / held.max(1) as f64;
        Ok(Concurrency {
            requested: n,
            held,
            established_now,
            matches: established_now == Some(n) && held == n,
            peak_rss_kib: peak,
            rss_at_ready_kib: rss_ready,
            rss_bytes_per_connection: rss_ready.map(|r| per_conn(peak.saturating_sub(r))),
            peak_rss_bytes_per_connection: per_conn(peak),
            tracer_cpu_s: usage.cpu_s,
            lost: Some(counters(&summary["lost"])),
            churn,
        })
    }
}

/// A child process reaped with `wait4` (for its rusage); killed by pid if dropped unreaped.
struct Tracer {
    name: &'static str,
    pid: libc::pid_t,
    reaped: bool,
    stdout: Option<JoinHandle<String>>,
    log: PathBuf,
    startup_cpu_s: Option<f64>,
}

struct Usage {
    cpu_s: f64,
    maxrss_kib: u64,
}

impl Tracer {
    fn spawn(
        name: &'static str,
        cmd: Command,
        log: &Path,
        death: libc::c_int,
    ) -> anyhow::Result<Tracer> {
        let mut cmd = cmd;
        let err = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stderr(err);
        let mut child = spawn_dying_with_us(cmd, death, name)?;
        let stdout = child.stdout.take().map(|o| read_all_in_background(Some(o)));
        let pid = child.id() as libc::pid_t;
        // From here on the pid is ours to reap (wait4), not std's.
        drop(child);
        Ok(Tracer {
            name,
            pid,
            reaped: false,
            stdout,
            log: log.to_path_buf(),
            startup_cpu_s: None,
        })
    }

    fn wait_ready(&mut self, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if ready() {
                self.startup_cpu_s = cpu_seconds(self.pid);
                return Ok(());
            }
            if let Some((status, _)) = wait4(self.pid, false)? {
                self.reaped = true;
                bail!(
                    "{} exited before it was ready ({}): {} (log: {})",
                    self.name,
                    describe(status),
                    last_line(&self.log),
                    self.log.display()
                );
            }
            if Instant::now() > until {
                bail!(
                    "{} was not ready within {} s (log: {})",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    self.log.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (bounded) for it to finish cleanly.
    fn stop(&mut self) -> anyhow::Result<Usage> {
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let until = Instant::now() + STOP_TIMEOUT;
        let (status, ru) = loop {
            if let Some(done) = wait4(self.pid, false)? {
                break done;
            }
            if Instant::now() > until {
                bail!(
                    "{} did not stop within {} s of SIGTERM (killed; log: {})",
                    self.name,
                    STOP_TIMEOUT.as_secs(),
                    self.log.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.reaped = true;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bail!(
                "{} failed ({}): {} (log: {})",
                self.name,
                describe(status),
                last_line(&self.log),
                self.log.display()
            );
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Ok(Usage {
            cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
            maxrss_kib: ru.ru_maxrss as u64,
        })
    }

    fn stdout(&mut self) -> String {
        self.stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not yet reaped: the pid is still ours.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = wait4(self.pid, true);
        }
    }
}

/// A std child that is killed (by pid) and reaped if dropped while still running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `cmd` so that it gets `signal` if xtask dies first.
fn spawn_dying_with_us(mut cmd: Command, signal: libc::c_int, name: &str) -> anyhow::Result<Child> {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("cannot start {name}"))
}

fn wait4(pid: libc::pid_t, block: bool) -> anyhow::Result<Option<(libc::c_int, libc::rusage)>> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        match r {
            0 => return Ok(None),
            r if r == pid => return Ok(Some((status, ru))),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("wait4({pid})"));
                }
            }
        }
    }
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}

/// utime + stime of a live process, from /proc/PID/stat.
fn cpu_seconds(pid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) / hz as f64)
}

fn rss_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn read_all_in_background(r: Option<impl io::Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

fn lines_in_background(r: Option<impl io::Read + Send + 'static>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Some(r) = r else { return };
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn parse_churn(stdout: &str) -> anyhow::Result<Churn> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("sockwatch-churn printed no result line")?;
    serde_json::from_str(line).with_context(|| format!("bad sockwatch-churn result: {line}"))
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(no output)".into())
}

fn file_contains(path: &Path, needle: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

fn file_starts_with(path: &Path, prefix: &str) -> bool {
    let mut buf = vec![0u8; prefix.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok_and(|()| buf == prefix.as_bytes())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The summary's listener row of the churn's server port in its namespace.
fn listener(summary: &serde_json::Value, port: u16, netns: u64) -> Option<&serde_json::Value> {
    summary["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["port"].as_u64() == Some(u64::from(port)) && l["netns"].as_u64() == Some(netns))
}

/// The numeric fields of a `lost` object.
fn counters(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// One JSON Lines record, as far as counting connections needs.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(default, borrow)]
    local_addr: Option<&'a str>,
    #[serde(default)]
    local_port: Option<u16>,
    #[serde(default, borrow)]
    peer_addr: Option<&'a str>,
    #[serde(default)]
    peer_port: Option<u16>,
    #[serde(default)]
    netns: Option<u64>,
    #[serde(default, borrow)]
    direction: Option<&'a str>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counted {
    /// Connections with connect, accept, and the close of both sides.
    complete: u64,
    /// Connections with some of those events only.
    incomplete: u64,
    lines: u64,
    unparsed: u64,
    lost: Option<BTreeMap<String, u64>>,
}

const CONNECT: u8 = 1;
const ACCEPT: u8 = 2;
const CLOSE_CLIENT: u8 = 4;
const CLOSE_SERVER: u8 = 8;
const ALL: u8 = CONNECT | ACCEPT | CLOSE_CLIENT | CLOSE_SERVER;

/// Streams a `trace --format jsonl` file and counts the churn's connections (server `port` in
/// namespace `netns`) that have all their events. A connection is keyed by its client side
/// (namespace, address, port); client ports are reused over a run, so a key whose event comes
/// a second time starts a new connection (the previous one counted as incomplete).
fn count_connections(path: &Path, port: u16, netns: u64) -> anyhow::Result<Counted> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    count_records(BufReader::with_capacity(1 << 20, f), port, netns)
}

fn count_records(mut r: impl BufRead, port: u16, netns: u64) -> anyhow::Result<Counted> {
    let mut c = Counted::default();
    let mut open: HashMap<(u64, IpAddr, u16), u8> = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading the trace file")? == 0 {
            break;
        }
        c.lines += 1;
        let Ok(rec) = serde_json::from_str::<Record>(&line) else {
            c.unparsed += 1;
            continue;
        };
        if rec.event == "lost" {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            c.lost = Some(counters(&v));
            continue;
        }
        if rec.netns != Some(netns) {
            continue;
        }
        let (Some(lp), Some(pp)) = (rec.local_port, rec.peer_port) else {
            continue;
        };
        let active = rec.direction == Some("active");
        let passive = rec.direction == Some("passive");
        let (flag, addr, cport) = match rec.event {
            "connect" if pp == port => (CONNECT, rec.local_addr, lp),
            "accept" if lp == port => (ACCEPT, rec.peer_addr, pp),
            "close" if active && pp == port => (CLOSE_CLIENT, rec.local_addr, lp),
            "close" if passive && lp == port => (CLOSE_SERVER, rec.peer_addr, pp),
            _ => continue,
        };
        let Some(addr) = addr.and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        let seen = open.entry((netns, addr, cport)).or_insert(0);
        if *seen & flag != 0 {
            c.incomplete += 1;
            *seen = 0;
        }
        *seen |= flag;
        if *seen == ALL {
            c.complete += 1;
            open.remove(&(netns, addr, cport));
        }
    }
    c.incomplete += open.len() as u64;
    Ok(c)
}

/// bpftrace lines `OLDSTATE NEWSTATE SPORT` that close (7 = TCP_CLOSE) a socket on `port`: one
/// per server-side connection.
fn count_bpftrace_closes(path: &Path, port: u16) -> anyhow::Result<u64> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    for line in BufReader::new(f).lines() {
        let line = line?;
        let mut w = line.split_whitespace().skip(1);
        if w.next() == Some("7") && w.next().and_then(|p| p.parse::<u16>().ok()) == Some(port) {
            n += 1;
        }
    }
    Ok(n)
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn median_of(rounds: &[Round], f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = rounds.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| median(v))
}

fn summarize(mode: Mode, command: String, rounds: Vec<Round>, untraced: f64) -> ModeSummary {
    let rate = median(rounds.iter().map(|r| r.churn.rate));
    let lost: Vec<&BTreeMap<String, u64>> = rounds.iter().filter_map(|r| r.lost.as_ref()).collect();
    let (lost_median, lost_max) = if lost.is_empty() {
        (None, None)
    } else {
        let keys: Vec<&String> = lost[0].keys().collect();
        let med = keys
            .iter()
            .map(|k| {
                let k = (*k).clone();
                let m = median(lost.iter().map(|l| l.get(&k).copied().unwrap_or(0) as f64));
                (k, m)
            })
            .collect();
        let max = keys
            .iter()
            .map(|k| {
                let m = lost.iter().map(|l| l.get(*k).copied().unwrap_or(0)).max();
                ((*k).clone(), m.unwrap_or(0))
            })
            .collect();
        (Some(med), Some(max))
    };
    ModeSummary {
        mode: mode.name(),
        command,
        rate_median: rate,
        ratio_to_untraced: (untraced > 0.0).then(|| rate / untraced),
        connections_made_median: median(rounds.iter().map(|r| r.churn.connections as f64)),
        seen_median: median_of(&rounds, |r| r.seen.map(|s| s as f64)),
        cpu_s_per_100k_median: median_of(&rounds, Round::cpu_per_100k),
        startup_cpu_s_median: median_of(&rounds, |r| r.tracer_startup_cpu_s),
        peak_rss_mib_median: median_of(&rounds, |r| {
            r.tracer_peak_rss_kib.map(|k| k as f64 / 1024.0)
        }),
        lost_median,
        lost_max,
        rounds,
    }
}

fn table(rows: &[Vec<String>]) -> String {
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

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

fn render(res: &Results) -> String {
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
            "START-UP CPU S",
            "PEAK RSS MIB",
            "LOST",
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
            opt(m.startup_cpu_s_median, |c| format!("{c:.2}")),
            opt(m.peak_rss_mib_median, |r| format!("{r:.1}")),
            m.lost_median
                .as_ref()
                .and_then(|l| l.get("total"))
                .map_or_else(|| "-".into(), |t| num(*t)),
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(
        "\nSEEN: trace = the churn's connections with connect, accept and both closes in the file; \
         top = accepted on the churn's port in the summary; bpftrace = server-side closes on the port.\n\
         CPU S/100K: the tracer's user+system CPU over its whole life (start-up included) per 100k connections.\n",
    );
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
        out.push_str(&format!(
            "\nCONCURRENCY: {} connections held under `sockwatch top` (asked {})\n",
            c.held, c.requested
        ));
        out.push_str(&format!(
            "  established_now on the churn's port: {} of {} ({})\n",
            c.established_now
                .map_or_else(|| "no listener row".into(), |n| n.to_string()),
            c.requested,
            if c.matches { "match" } else { "MISMATCH" }
        ));
        out.push_str(&format!(
            "  sockwatch peak RSS: {:.1} MiB ({} at ready); {} bytes per held connection above \
             ready, {:.0} bytes per held connection in all; CPU {:.2} s\n",
            c.peak_rss_kib as f64 / 1024.0,
            c.rss_at_ready_kib
                .map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            opt(c.rss_bytes_per_connection, |b| format!("{b:.0}")),
            c.peak_rss_bytes_per_connection,
            c.tracer_cpu_s
        ));
        if let Some(lost) = &c.lost {
            let l: Vec<String> = lost.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("  lost: {}\n", l.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: &str, local: (&str, u16), peer: (&str, u16), dir: &str, ns: u64) -> String {
        format!(
            r#"{{"time":"2026-11-21T09:45:28.565087036Z","event":"{event}","family":"ipv4","local_addr":"{}","local_port":{},"peer_addr":"{}","peer_port":{},"pid":null,"comm":"a\"b","cgroup_id":1,"netns":{ns},"direction":"{dir}"}}"#,
            local.0, local.1, peer.0, peer.1
        )
    }

    fn conn(lines: &mut Vec<String>, client: (&str, u16), ns: u64) {
        let server = ("127.0.0.1", PORT);
        lines.push(rec("connect", client, server, "active", ns));
        lines.push(rec("established", client, server, "active", ns));
        lines.push(rec("established", server, client, "passive", ns));
        lines.push(rec("accept", server, client, "passive", ns));
        lines.push(rec("close", server, client, "passive", ns));
        lines.push(rec("close", client, server, "active", ns));
    }

    #[test]
    fn counts_complete_connections_with_reused_ports() {
        let mut lines = Vec::new();
        conn(&mut lines, ("127.0.0.2", 40000), 7);
        // The same client port again (a new connection), and the same port from another source.
        conn(&mut lines, ("127.0.0.2", 40000), 7);
        conn(&mut lines, ("127.0.0.3", 40000), 7);
        // Another namespace: not ours.
        conn(&mut lines, ("127.0.0.2", 40001), 8);
        // Missing its accept, then the port reused by a complete one.
        let server = ("127.0.0.1", PORT);
        lines.push(rec("connect", ("127.0.0.4", 40002), server, "active", 7));
        lines.push(rec("close", ("127.0.0.4", 40002), server, "active", 7));
        conn(&mut lines, ("127.0.0.4", 40002), 7);
        // Never closed.
        lines.push(rec("connect", ("127.0.0.4", 40003), server, "active", 7));
        lines.push("not json".into());
        lines.push(
            r#"{"time":"t","event":"stats","accept_would_block":0,"accept_interrupted":0}"#.into(),
        );
        lines.push(
            r#"{"time":"t","event":"lost","total":3,"ringbuf_full":2,"recursion_misses":1}"#.into(),
        );
        let text = lines.join("\n") + "\n";
        let c = count_records(text.as_bytes(), PORT, 7).unwrap();
        assert_eq!(c.complete, 4);
        assert_eq!(c.incomplete, 2);
        assert_eq!(c.unparsed, 1);
        assert_eq!(c.lines, lines.len() as u64);
        let lost = c.lost.unwrap();
        assert_eq!(lost["total"], 3);
        assert_eq!(lost["ringbuf_full"], 2);
        assert_eq!(lost["recursion_misses"], 1);
        assert!(!lost.contains_key("event") && !lost.contains_key("time"));
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([5.0]), 5.0);
        assert!(median([]).is_nan());
    }

    #[test]
    fn churn_line_parses() {
        let c = parse_churn(
            "held 5\n{\"connections\":5,\"seconds\":0.5,\"rate\":10.0,\"errors\":0,\"port\":7913,\"netns\":4026532177,\"timed_out\":false}\n",
        )
        .unwrap();
        assert_eq!((c.connections, c.port, c.netns), (5, 7913, 4026532177));
        assert!(parse_churn("held 5\n").is_err());
    }

    #[test]
    fn finds_the_churn_listener() {
        let s: serde_json::Value = serde_json::from_str(
            r#"{"listeners":[{"netns":1,"port":7913,"established_now":3},{"netns":2,"port":7913,"established_now":9}],"lost":{"total":0,"ringbuf_full":0}}"#,
        )
        .unwrap();
        assert_eq!(listener(&s, PORT, 2).unwrap()["established_now"], 9);
        assert!(listener(&s, PORT, 3).is_none());
        assert_eq!(counters(&s["lost"]).len(), 2);
    }
}
