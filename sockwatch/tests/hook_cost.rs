//! What each kind of connect/accept hook costs the host, measured side by side in one boot:
//!
//! - every process's system calls: ns per getppid() with nothing attached and with `sockwatch
//!   top` running with each hook kind this kernel offers (`--hooks fentry|kprobe|syscall`). The
//!   syscall tracepoints put every system call of every process on the kernel's slow path; the
//!   other kinds should leave getppid() as it was. Each round's figure is its fastest short
//!   stretch: under qemu's TCG both vCPUs share one host thread, which other work on the host
//!   takes away at times, and so do sockwatch's own wake-ups (on a real host they run on
//!   another CPU); all of that only ever adds time;
//! - each connection: the kernel time of each of sockwatch's programs per loopback connection
//!   (connect, accept, close), from the kernel's own accounting (kernel.bpf_stats_enabled).
//!
//! A measurement, not a check: ignored by `cargo test` and the kernel matrix. Run it with
//! `cargo xtask vmtest --hook-cost` (every kernel), or as root on this host with
//! `cargo test -p sockwatch --test hook_cost -- --ignored --nocapture`. It prints one table
//! framed by `=== report: hook cost ===` and `=== end report ===` (xtask collects it); see
//! docs/performance.md#hook-kinds-what-each-costs-the-host.
mod common;
#[path = "common/prog_stats.rs"]
mod prog_stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{TempDir, root_or_skip};
use prog_stats::StatsEnabled;
use serde_json::Value;

/// Rounds of the getppid() measurement; every configuration runs once per round.
const ROUNDS: usize = 3;
/// Aim for rounds this long (calibrated with nothing attached): long enough to dwarf a timer
/// tick, short enough that the whole test stays within minutes under TCG.
const ROUND_TARGET: Duration = Duration::from_secs(1);
const MIN_CALLS: u64 = 100_000;
const MAX_CALLS: u64 = 5_000_000;
/// Each timed loop is cut into this many stretches (a few ms each), and its figure is its
/// fastest stretch's. What the hooks add is there in every one; the host taking the VM's CPU
/// away (other VMs, builds), timer ticks and sockwatch's wake-ups are not.
const CHUNKS: u64 = 500;
/// Loopback connections made under each hook kind for the per-connection kernel time, in
/// batches: each program's figure is its fastest batch's, for the same reason (a program's run
/// time as the kernel counts it grows when the host takes the VM's CPU away mid-run).
const BATCHES: u64 = 20;
const PER_BATCH: u64 = 10;
const CONNECTIONS: u64 = BATCHES * PER_BATCH;
/// How long sockwatch may take to attach (TCG is slow) or to stop.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// `top` counting in the kernel, and otherwise as idle as it gets: one JSON summary at its end
/// and a sampling interval longer than the test, so that what the rounds see is the hooks more
/// than sockwatch's own periodic work in user space (the bench measures that).
const TOP: &[&str] = &[
    "top",
    "--format",
    "json",
    "--interval",
    "3600",
    "--expire-interval",
    "3600",
    "--max-sockets",
    "65536",
];

/// The report's frame: `cargo xtask vmtest --hook-cost` picks the lines between them out of
/// the test's output.
const REPORT_BEGIN: &str = "=== report: hook cost ===";
const REPORT_END: &str = "=== end report ===";

/// The hook kinds this kernel allows, in `sockwatch check`'s order, and whether sockwatch
/// takes `--hooks` at all (a build without it only has the syscall tracepoints).
fn offered_kinds(check: &Value) -> (Vec<String>, bool) {
    match check["hooks"]["offered"].as_array() {
        Some(kinds) => (
            kinds
                .iter()
                .map(|k| k.as_str().expect("hook kind").to_string())
                .collect(),
            true,
        ),
        None => (vec!["syscall".to_string()], false),
    }
}

/// One configuration of the rounds: nothing attached, or `top` with one hook kind.
#[derive(Clone)]
struct Config {
    label: String,
    /// None: nothing attached. Some(args): sockwatch's extra arguments (the `--hooks` option).
    hooks: Option<Vec<String>>,
}

/// sockwatch `top` started and attached; stopped with SIGTERM by [`Running::stop`], or when
/// dropped (a failed test leaves no programs attached).
struct Running {
    child: Child,
    dir: TempDir,
    stopped: bool,
}

impl Running {
    fn start(extra: &[String]) -> Self {
        let dir = TempDir::new("hook-cost");
        let ready = dir.path().join("ready");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sockwatch"))
            .args(TOP)
            .args(extra)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sockwatch");
        let deadline = Instant::now() + READY_WITHIN;
        while !ready.exists() {
            if let Some(st) = child.try_wait().expect("try_wait") {
                panic!(
                    "sockwatch {extra:?} exited before ready ({st}): {}",
                    read_stderr(dir.path())
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sockwatch {extra:?} not ready after {READY_WITHIN:?}: {}",
                    read_stderr(dir.path())
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            dir,
            stopped: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        self.stopped = true;
        let clean = common::stop(&mut self.child, libc::SIGTERM);
        assert!(
            clean,
            "sockwatch did not exit cleanly: {}",
            read_stderr(self.dir.path())
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

fn read_stderr(dir: &Path) -> String {
    fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

/// User plus system CPU time of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name: state is the 3rd, utime the 14th.
    let (_, rest) = stat.rsplit_once(") ").expect("stat format");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn ms_per_tick() -> f64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1000.0 / hz.max(1) as f64
}

/// Nanoseconds per getppid() (a system call that does next to nothing, so whatever the hooks
/// add to every system call shows) over `calls` calls: the fastest of `CHUNKS` stretches.
fn ns_per_getppid(calls: u64) -> f64 {
    let per_chunk = (calls / CHUNKS).max(1);
    (0..CHUNKS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_chunk {
                // SAFETY: getppid takes no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            t.elapsed().as_nanos() as f64 / per_chunk as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn fastest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One round's figure for one configuration.
struct Sample {
    /// ns per getppid().
    ns: f64,
    /// sockwatch's CPU time in ms per second of the loop (None: nothing attached).
    sockwatch_ms_per_s: Option<f64>,
}

/// One round of the getppid() loop under `config`.
fn measure(config: &Config, calls: u64) -> Sample {
    let warm_up = || {
        // An untimed tenth first, alike for all: the loop's code and the hooks' paths warm,
        // and whatever sockwatch still does right after attaching has room to end.
        ns_per_getppid(calls / 10);
    };
    let Some(extra) = &config.hooks else {
        warm_up();
        return Sample {
            ns: ns_per_getppid(calls),
            sockwatch_ms_per_s: None,
        };
    };
    let sw = Running::start(extra);
    warm_up();
    let before = cpu_ticks(sw.pid());
    let t = Instant::now();
    let ns = ns_per_getppid(calls);
    let ticks = cpu_ticks(sw.pid()) - before;
    let ms_per_s = ticks as f64 * ms_per_tick() / t.elapsed().as_secs_f64();
    sw.stop();
    Sample {
        ns,
        sockwatch_ms_per_s: Some(ms_per_s),
    }
}

/// One program's kernel time under one hook kind.
struct ProgCost {
    name: String,
    /// Runs over all the connections.
    runs: u64,
    /// Its kernel time per connection in each batch, in ns.
    ns_per_conn: Vec<f64>,
}

/// Each of sockwatch's programs' kernel time over `CONNECTIONS` loopback connections made in
/// a network namespace of the test's own, with `extra` (the `--hooks` option), batch by batch.
/// Needs kernel.bpf_stats_enabled on.
fn connection_cost(extra: &[String]) -> Vec<ProgCost> {
    thread::scope(|s| {
        thread::Builder::new()
            .name("hook-cost-netns".into())
            .spawn_scoped(s, || {
                common::enter_new_netns();
                let before: BTreeSet<u32> = prog_stats::program_ids().into_iter().collect();
                let sw = Running::start(extra);
                let ours: Vec<u32> = prog_stats::program_ids()
                    .into_iter()
                    .filter(|id| !before.contains(id))
                    .collect();
                assert!(
                    !ours.is_empty(),
                    "no new BPF program after sockwatch started"
                );
                let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
                let addr = listener.local_addr().expect("address");
                let mut costs: BTreeMap<u32, ProgCost> = BTreeMap::new();
                for _ in 0..BATCHES {
                    let start = prog_stats::stats_of(&ours);
                    for _ in 0..PER_BATCH {
                        let client = TcpStream::connect(addr).expect("connect");
                        let (server, _) = listener.accept().expect("accept");
                        drop(client);
                        drop(server);
                    }
                    // Every close transition has happened before the counters are read.
                    common::wait_connections_settled();
                    let end = prog_stats::stats_of(&ours);
                    for (id, d) in prog_stats::delta(&start, &end) {
                        let c = costs.entry(id).or_insert_with(|| ProgCost {
                            name: d.name.clone(),
                            runs: 0,
                            ns_per_conn: Vec::new(),
                        });
                        c.runs += d.run_cnt;
                        c.ns_per_conn.push(d.run_time_ns as f64 / PER_BATCH as f64);
                    }
                }
                sw.stop();
                costs.into_values().collect()
            })
            .expect("spawn netns thread")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

#[test]
#[ignore = "a measurement taking minutes under qemu: cargo xtask vmtest --hook-cost"]
fn measure_hook_cost() {
    if !root_or_skip("measure_hook_cost") {
        return;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let check = common::check_json();
    let (kinds, takes_hooks) = offered_kinds(&check);
    let hooks_args = |kind: &str| -> Vec<String> {
        if takes_hooks {
            vec!["--hooks".into(), kind.into()]
        } else {
            Vec::new()
        }
    };
    let mut configs = vec![Config {
        label: "nothing".into(),
        hooks: None,
    }];
    configs.extend(kinds.iter().map(|k| Config {
        label: if takes_hooks {
            format!("top --hooks {k}")
        } else {
            format!("top ({k})")
        },
        hooks: Some(hooks_args(k)),
    }));

    // Calibrate the count on nothing attached, after a warm-up.
    ns_per_getppid(MIN_CALLS);
    let probe = ns_per_getppid(MIN_CALLS * 4);
    let calls = ((ROUND_TARGET.as_nanos() as f64 / probe) as u64).clamp(MIN_CALLS, MAX_CALLS);

    // Rounds: every configuration once per round, the order shifted each round, so that a
    // drift of the machine's speed hits all alike.
    let mut samples: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for i in 0..configs.len() {
            let c = (i + round) % configs.len();
            let s = measure(&configs[c], calls);
            let ns = s.ns;
            assert!(ns.is_finite() && ns > 0.0, "{}: {ns} ns", configs[c].label);
            samples[c].push(s);
        }
    }
    for (c, s) in configs.iter().zip(&samples) {
        assert_eq!(s.len(), ROUNDS, "{} ran {} rounds", c.label, s.len());
    }

    // Per-connection kernel time, one hook kind after the other.
    let per_kind: Vec<(String, Vec<ProgCost>)> = {
        let _stats = StatsEnabled::new();
        kinds
            .iter()
            .map(|k| (k.clone(), connection_cost(&hooks_args(k))))
            .collect()
    };
    // The table first: it is the point of the run, whatever the checks below say.
    println!(
        "\n{}",
        report(
            release.trim(),
            calls,
            takes_hooks,
            &configs,
            &samples,
            &per_kind
        )
    );
    for (kind, progs) in &per_kind {
        let runs: u64 = progs.iter().map(|p| p.runs).sum();
        let time: f64 = progs.iter().flat_map(|p| &p.ns_per_conn).sum();
        assert!(
            runs >= CONNECTIONS && time > 0.0,
            "{kind}: {runs} runs, {time} ns per connection summed over the batches"
        );
        // At least the state changes' program and the connect hook run once per connection.
        let per_connection: Vec<&str> = progs
            .iter()
            .filter(|p| p.runs >= CONNECTIONS)
            .map(|p| p.name.as_str())
            .collect();
        assert!(
            per_connection.len() >= 2,
            "{kind}: only {per_connection:?} ran once per connection"
        );
    }
}

/// The table: rounds and ratios, then the kernel time per connection.
fn report(
    release: &str,
    calls: u64,
    takes_hooks: bool,
    configs: &[Config],
    samples: &[Vec<Sample>],
    per_kind: &[(String, Vec<ProgCost>)],
) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "{REPORT_BEGIN}");
    let _ = writeln!(
        w,
        "kernel {release}: ns per getppid(), {calls} calls per round, {ROUNDS} rounds, \
         configurations interleaved; a round's figure: its fastest of {CHUNKS} stretches of \
         {} calls",
        calls / CHUNKS
    );
    let _ = writeln!(
        w,
        "ratio: the median over the rounds of the round's figure over nothing's in that round; \
         sockwatch CPU: its own CPU time per second of the loop (the tests' debug build)"
    );
    if !takes_hooks {
        let _ = writeln!(
            w,
            "(this sockwatch has no --hooks: its only kind is the syscall tracepoints)"
        );
    }
    let rounds: String = (1..=ROUNDS)
        .map(|r| format!(" {:>9}", format!("round {r}")))
        .collect();
    let _ = writeln!(
        w,
        "{:<20}{rounds} {:>9} {:>8} {:>14}",
        "configuration", "median", "ratio", "sockwatch CPU"
    );
    let nothing = &samples[0];
    for (c, s) in configs.iter().zip(samples) {
        let ns: Vec<f64> = s.iter().map(|x| x.ns).collect();
        let ratios: Vec<f64> = s.iter().zip(nothing).map(|(x, n)| x.ns / n.ns).collect();
        let cells: String = ns.iter().map(|v| format!(" {v:>9.1}")).collect();
        let cpu: Vec<f64> = s.iter().filter_map(|x| x.sockwatch_ms_per_s).collect();
        let cpu = if cpu.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0} ms/s", median(&cpu))
        };
        let _ = writeln!(
            w,
            "{:<20}{cells} {:>9.1} {:>8.3} {:>14}",
            c.label,
            median(&ns),
            median(&ratios),
            cpu
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "kernel time per connection, kernel.bpf_stats_enabled: {CONNECTIONS} loopback \
         connections (connect, accept, close) in {BATCHES} batches of {PER_BATCH}; ns/conn: \
         the fastest batch's"
    );
    let _ = writeln!(
        w,
        "{:<8} {:<16} {:>10} {:>9}",
        "kind", "program", "runs/conn", "ns/conn"
    );
    let n = CONNECTIONS as f64;
    for (kind, progs) in per_kind {
        for p in progs {
            let _ = writeln!(
                w,
                "{:<8} {:<16} {:>10.2} {:>9.0}",
                kind,
                p.name,
                p.runs as f64 / n,
                fastest(&p.ns_per_conn)
            );
        }
        let runs: u64 = progs.iter().map(|p| p.runs).sum();
        let totals: Vec<f64> = (0..BATCHES as usize)
            .map(|b| progs.iter().filter_map(|p| p.ns_per_conn.get(b)).sum())
            .collect();
        let _ = writeln!(
            w,
            "{:<8} {:<16} {:>10.2} {:>9.0}",
            kind,
            "total",
            runs as f64 / n,
            fastest(&totals)
        );
    }
    let _ = write!(w, "{REPORT_END}");
    // Empty cells pad some lines with blanks.
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn median_of_odd_and_even() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
}

#[test]
fn kinds_without_the_hooks_key_are_the_syscall_tracepoints() {
    let old = serde_json::json!({"kernel": "6.1.0", "capabilities": []});
    assert_eq!(offered_kinds(&old), (vec!["syscall".to_string()], false));
    let new = serde_json::json!({"hooks": {"used": "fentry", "offered": ["fentry", "kprobe", "syscall"]}});
    assert_eq!(
        offered_kinds(&new),
        (
            vec!["fentry".into(), "kprobe".into(), "syscall".into()],
            true
        )
    );
}
