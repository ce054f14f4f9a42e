//! `--concurrency N`: holds N connections open under `sockwatch top` (its default options but
//! a shorter `--expire-interval`), opened as fast as the machine opens them (or at
//! `--concurrency-rate`), and measures:
//!
//! - its counts: `established_now` and `accepted` on the churn's port must be exactly N;
//! - its memory above ready: VmHWM (the peak RSS, read before it is stopped) minus VmRSS at
//!   ready, per connection;
//! - the kernel memory of its BPF maps: the sum of `memlock:` over the maps in
//!   /proc/PID/fdinfo (the largest sample during the hold) minus the sum at ready, per
//!   connection;
//! - its time to ready (from its start to its `--ready-file`);
//! - its CPU per check against the kernel's socket table (see `super::check_cost`);
//! - then, the N connections still held, a second `top`: its time to ready, and whether its
//!   `established_now` is exactly N too.
//!
//! Before the ramp it checks that the host can take 2N sockets (memory, open files).
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    Bench, CHURN_MAX_SECONDS, Mode, check_cost,
    count::{counters, listener},
    procfs::{bpf_map_memlock, file_nr, hwm_kib, meminfo, rss_kib},
    progress,
    render::{num, opt},
    run::{Churn, parse_churn},
    tracer::{NetnsHolder, Reaped, Tracer, lines_in_background, spawn_dying_with_us},
};

/// sockwatch's `--expire-interval` here (its default is 30 s): the quiet window spans
/// CHECKS_IN_WINDOW checks.
pub(super) const EXPIRE_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const CHECKS_IN_WINDOW: u32 = 4;
/// Kernel memory per idle loopback TCP socket, as planned (measured: about 3.2 KiB on 6.18,
/// socket, file and inode together), and what is kept free besides.
const SOCKET_KIB: u64 = 4;
const MEMORY_MARGIN_KIB: u64 = 1 << 20;
const FILES_MARGIN: u64 = 50_000;
/// Closing N connections, and the kernel freeing them.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the host has for the held sockets.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HostFit {
    pub(super) mem_total_kib: u64,
    pub(super) mem_available_kib: u64,
    /// 2N sockets at SOCKET_KIB each, plus MEMORY_MARGIN_KIB.
    pub(super) mem_needed_kib: u64,
    pub(super) files_open: u64,
    pub(super) files_max: u64,
}

/// Refuses a hold the host cannot take, before anything is opened.
pub(super) fn check_fit(n: u64) -> anyhow::Result<HostFit> {
    let (total, available) = meminfo().context("cannot read /proc/meminfo")?;
    let (open, max) = file_nr().context("cannot read /proc/sys/fs/file-nr")?;
    let fit = HostFit {
        mem_total_kib: total,
        mem_available_kib: available,
        mem_needed_kib: 2 * n * SOCKET_KIB + MEMORY_MARGIN_KIB,
        files_open: open,
        files_max: max,
    };
    if fit.mem_needed_kib > available {
        bail!(
            "holding {n} connections takes {} sockets, about {} MiB of kernel memory here; only {} \
             MiB are available (of {} MiB): ask for fewer",
            2 * n,
            fit.mem_needed_kib / 1024,
            available / 1024,
            total / 1024
        );
    }
    if open + 2 * n + FILES_MARGIN > max {
        bail!(
            "holding {n} connections takes {} open files; the host allows {max} (fs.file-max) and \
             {open} are open: ask for fewer, or raise fs.file-max",
            2 * n
        );
    }
    Ok(fit)
}

/// The churn holding connections open (`sockwatch-churn --hold`), until `release`.
pub(super) struct Held {
    child: Reaped,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub(super) held: u64,
    /// From the churn's start to all held (connected and accepted).
    pub(super) ramp_s: f64,
}

impl Bench<'_> {
    /// Starts the churn in `netns`, holding `n` connections opened at `rate` per second (None:
    /// unpaced), and waits until they are held, calling `tick` every half second meanwhile.
    /// Its progress lines (every 5 s) go to stderr.
    pub(super) fn hold(
        &self,
        n: u64,
        rate: Option<u64>,
        netns: &std::path::Path,
        mut tick: impl FnMut(),
    ) -> anyhow::Result<Held> {
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args(Some(netns))).args([
            "--hold",
            "--connections",
            &n.to_string(),
            "--max-seconds",
            &CHURN_MAX_SECONDS.to_string(),
        ]);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = Reaped(spawn_dying_with_us(cmd, libc::SIGKILL, "sockwatch-churn")?);
        let stdin = child.0.stdin.take();
        let lines = lines_in_background(child.0.stdout.take());
        let until = started + Duration::from_secs(CHURN_MAX_SECONDS);
        let held = loop {
            tick();
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
        Ok(Held {
            child,
            stdin,
            lines,
            held,
            ramp_s: started.elapsed().as_secs_f64(),
        })
    }
}

impl Held {
    /// Closes the churn's standard input: it closes every connection, reports and exits.
    /// Returns its result line and how long that took (bounded: killed past RELEASE_TIMEOUT).
    pub(super) fn release(mut self) -> (Option<Churn>, f64) {
        progress(format!("closing the {} held connections", self.held));
        let started = Instant::now();
        drop(self.stdin.take());
        let until = started + RELEASE_TIMEOUT;
        let mut out = String::new();
        let mut next_word = started + Duration::from_secs(10);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > until {
                progress(format!(
                    "warning: sockwatch-churn did not exit within {} s of being told to close \
                     (killed)",
                    RELEASE_TIMEOUT.as_secs()
                ));
                break;
            }
            if Instant::now() > next_word {
                progress(format!(
                    "closing: {:.0} s so far",
                    started.elapsed().as_secs_f64()
                ));
                next_word += Duration::from_secs(10);
            }
        }
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let seconds = started.elapsed().as_secs_f64();
        // Kills it if it is still there.
        drop(self.child);
        (parse_churn(&out).ok(), seconds)
    }
}

/// Waits (bounded) until the host's available memory is back near `before`: the kernel frees
/// closed sockets and a namespace's leftovers in the background. Returns the seconds waited.
pub(super) fn settle(before_kib: u64) -> f64 {
    let started = Instant::now();
    let mut next_word = started + Duration::from_secs(10);
    while started.elapsed() < SETTLE_TIMEOUT {
        let Some((total, available)) = meminfo() else {
            break;
        };
        if available + total / 50 >= before_kib {
            break;
        }
        if Instant::now() > next_word {
            progress(format!(
                "waiting for the kernel to free the sockets: {} MiB available, {} before",
                available / 1024,
                before_kib / 1024
            ));
            next_word += Duration::from_secs(10);
        }
        thread::sleep(Duration::from_millis(500));
    }
    started.elapsed().as_secs_f64()
}

/// The largest kernel memory of sockwatch's maps seen.
#[derive(Debug, Default)]
struct MapPeak {
    bytes: u64,
    maps: usize,
}

impl MapPeak {
    fn sample(&mut self, pid: libc::pid_t) {
        if let Some((bytes, maps)) = bpf_map_memlock(pid)
            && bytes >= self.bytes
        {
            self.bytes = bytes;
            self.maps = maps;
        }
    }
}

/// A second `top`, started with the connections already open.
#[derive(Debug, Serialize)]
pub(super) struct AlreadyOpen {
    pub(super) ready_s: Option<f64>,
    pub(super) startup_cpu_s: Option<f64>,
    /// How long it ran before it was stopped and its summary read.
    pub(super) ran_s: f64,
    pub(super) established_now: Option<u64>,
    pub(super) matches: bool,
    pub(super) open_corrections: Option<serde_json::Value>,
    pub(super) rss_at_ready_kib: Option<u64>,
    pub(super) peak_rss_kib: Option<u64>,
    pub(super) bpf_map_bytes_at_ready: Option<u64>,
    pub(super) bpf_map_bytes_peak: u64,
    pub(super) lost: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct Concurrency {
    pub(super) requested: u64,
    /// Connections opened per second during the ramp (--concurrency-rate); None: unpaced.
    pub(super) ramp_rate: Option<u64>,
    pub(super) held: u64,
    /// From the churn's start to every connection held, and the rate that makes.
    pub(super) ramp_s: f64,
    pub(super) ramp_connections_per_s: f64,
    /// The sockwatch command (default options, but --expire-interval).
    pub(super) command: String,
    pub(super) established_now: Option<u64>,
    pub(super) accepted: Option<u64>,
    /// established_now = accepted = held = requested.
    pub(super) matches: bool,
    pub(super) ready_s: Option<f64>,
    pub(super) startup_cpu_s: Option<f64>,
    pub(super) rss_at_ready_kib: Option<u64>,
    /// VmHWM just before it was stopped.
    pub(super) peak_rss_kib: Option<u64>,
    /// (peak - at ready) / held.
    pub(super) rss_bytes_per_connection: Option<f64>,
    /// wait4's ru_maxrss (its stop, a last dump of every connection, included).
    pub(super) maxrss_kib: u64,
    pub(super) bpf_map_bytes_at_ready: Option<u64>,
    pub(super) bpf_map_bytes_peak: u64,
    pub(super) bpf_maps: usize,
    /// (peak - at ready) / held.
    pub(super) bpf_map_bytes_per_connection: Option<f64>,
    pub(super) check: Option<check_cost::CheckCost>,
    /// Its CPU over its whole life.
    pub(super) tracer_cpu_s: f64,
    pub(super) lost: Option<BTreeMap<String, u64>>,
    pub(super) open_corrections: Option<serde_json::Value>,
    pub(super) already_open: Option<AlreadyOpen>,
    pub(super) host: HostFit,
    /// The host's available memory the held sockets took (both ends), per socket.
    pub(super) kernel_bytes_per_socket: Option<f64>,
    /// From telling the churn to close to its exit.
    pub(super) teardown_s: f64,
    pub(super) churn: Option<Churn>,
}

/// The netns inode of a /proc/PID/ns/net path.
pub(super) fn netns_inode(path: &std::path::Path) -> anyhow::Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .ino())
}

/// What a `top --format json` summary says of the churn's listener.
struct TopSummary {
    row: Option<serde_json::Value>,
    open_corrections: Option<serde_json::Value>,
    lost: BTreeMap<String, u64>,
}

impl TopSummary {
    fn read(t: &mut Tracer, port: u16, netns: u64) -> anyhow::Result<Self> {
        let summary: serde_json::Value = serde_json::from_str(&t.stdout())
            .context("sockwatch top --format json printed no valid summary")?;
        Ok(Self {
            row: listener(&summary, port, netns).cloned(),
            open_corrections: summary.get("open_corrections").cloned(),
            lost: counters(&summary["lost"]),
        })
    }

    /// The listener row's field `name`.
    fn field(&self, name: &str) -> Option<u64> {
        self.row.as_ref().and_then(|r| r[name].as_u64())
    }
}

impl Bench<'_> {
    /// Holds `n` connections, opened at `rate` per second (None: unpaced), under `sockwatch
    /// top`; see the module's comment.
    pub(super) fn concurrency(&self, n: u64, rate: Option<u64>) -> anyhow::Result<Concurrency> {
        let host = check_fit(n)?;
        progress(format!(
            "concurrency: {n} connections are {} sockets: about {} MiB of kernel memory planned, \
             {} MiB available; {} files open of {}",
            2 * n,
            host.mem_needed_kib / 1024,
            host.mem_available_kib / 1024,
            host.files_open,
            host.files_max
        ));
        let expire = EXPIRE_INTERVAL.as_secs().to_string();
        let extra = ["--expire-interval", expire.as_str()];
        let command = self.default_command(Mode::Top, &extra);
        progress(format!("concurrency: starting {command}"));
        let mut t = self.start_sockwatch_default(Mode::Top, true, &extra)?;
        progress(format!(
            "concurrency: sockwatch ready in {} s",
            opt(t.ready_s, |s| format!("{s:.2}"))
        ));
        let rss_ready = rss_kib(t.pid);
        let maps_ready = bpf_map_memlock(t.pid);
        let mut peak = MapPeak::default();
        peak.sample(t.pid);
        let holder = NetnsHolder::spawn()?;
        let netns = netns_inode(&holder.path())?;
        progress(format!(
            "concurrency: opening {n} connections {} and holding them",
            rate.map_or_else(|| "unpaced".to_string(), |r| format!("at {r}/s"))
        ));
        let before = meminfo().map(|m| m.1);
        let pid = t.pid;
        let held = self.hold(n, rate, &holder.path(), || peak.sample(pid))?;
        let during = meminfo().map(|m| m.1);
        let kernel_bytes_per_socket = match (before, during) {
            (Some(b), Some(d)) if held.held > 0 => {
                Some(b.saturating_sub(d) as f64 * 1024.0 / (2 * held.held) as f64)
            }
            _ => None,
        };
        progress(format!(
            "concurrency: {} connections held after {:.1} s ({:.0}/s); the host's available \
             memory fell by {} bytes per socket",
            held.held,
            held.ramp_s,
            held.held as f64 / held.ramp_s.max(1e-9),
            opt(kernel_bytes_per_socket, |b| format!("{b:.0}"))
        ));
        let check = check_cost::measure_checks(t.pid, EXPIRE_INTERVAL, &mut || peak.sample(pid))?;
        peak.sample(pid);
        let hwm = hwm_kib(t.pid);
        progress("concurrency: stopping sockwatch (its last look covers every connection)");
        let usage = t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let summary = TopSummary::read(&mut t, super::PORT, netns)?;
        let established_now = summary.field("established_now");
        let accepted = summary.field("accepted");
        progress(format!(
            "concurrency: established_now {} accepted {} (of {n})",
            opt(established_now.map(|v| v as f64), num),
            opt(accepted.map(|v| v as f64), num)
        ));

        // The same again, started with every connection already open.
        progress(format!(
            "concurrency: starting a second sockwatch top with the {} connections already open",
            held.held
        ));
        let already_open = match self.already_open(&extra, netns, held.held) {
            Ok(a) => Some(a),
            Err(e) => {
                progress(format!(
                    "warning: the second top (connections already open) failed: {e:#}"
                ));
                None
            }
        };
        let (held_n, ramp_s) = (held.held, held.ramp_s);
        let (churn, teardown_s) = held.release();
        drop(holder);
        progress(format!("concurrency: closed in {teardown_s:.1} s"));
        if let Some(b) = before {
            settle(b);
        }
        let per_conn = |bytes: f64| bytes / held_n.max(1) as f64;
        Ok(Concurrency {
            requested: n,
            ramp_rate: rate,
            held: held_n,
            ramp_s,
            ramp_connections_per_s: held_n as f64 / ramp_s.max(1e-9),
            command,
            established_now,
            accepted,
            matches: established_now == Some(n) && accepted == Some(n) && held_n == n,
            ready_s: t.ready_s,
            startup_cpu_s: t.startup_cpu_s,
            rss_at_ready_kib: rss_ready,
            peak_rss_kib: hwm,
            rss_bytes_per_connection: rss_ready
                .zip(hwm)
                .map(|(r, h)| per_conn(h.saturating_sub(r) as f64 * 1024.0)),
            maxrss_kib: usage.maxrss_kib,
            bpf_map_bytes_at_ready: maps_ready.map(|m| m.0),
            bpf_map_bytes_peak: peak.bytes,
            bpf_maps: peak.maps,
            bpf_map_bytes_per_connection: maps_ready
                .map(|m| per_conn(peak.bytes.saturating_sub(m.0) as f64)),
            check,
            tracer_cpu_s: usage.cpu_s,
            lost: Some(summary.lost),
            open_corrections: summary.open_corrections,
            already_open,
            host,
            kernel_bytes_per_socket,
            teardown_s,
            churn,
        })
    }

    /// A second `top` started while `held` connections are open in `netns`: its time to ready,
    /// and its established_now after two checks.
    fn already_open(&self, extra: &[&str], netns: u64, held: u64) -> anyhow::Result<AlreadyOpen> {
        let mut t = self.start_sockwatch_default(Mode::Top, true, extra)?;
        let started = Instant::now();
        progress(format!(
            "concurrency: the second sockwatch was ready in {} s; letting it run two checks",
            opt(t.ready_s, |s| format!("{s:.2}"))
        ));
        let rss_ready = rss_kib(t.pid);
        let maps_ready = bpf_map_memlock(t.pid);
        let mut peak = MapPeak::default();
        let until = started + 2 * EXPIRE_INTERVAL + Duration::from_secs(3);
        while Instant::now() < until {
            peak.sample(t.pid);
            thread::sleep(Duration::from_millis(500));
        }
        let hwm = hwm_kib(t.pid);
        let ran_s = started.elapsed().as_secs_f64();
        t.stop()?;
        let _ = fs::remove_file(self.ready_file());
        let summary = TopSummary::read(&mut t, super::PORT, netns)?;
        let established_now = summary.field("established_now");
        progress(format!(
            "concurrency: the second sockwatch's established_now: {} (of {held})",
            opt(established_now.map(|v| v as f64), num)
        ));
        Ok(AlreadyOpen {
            ready_s: t.ready_s,
            startup_cpu_s: t.startup_cpu_s,
            ran_s,
            established_now,
            matches: established_now == Some(held),
            open_corrections: summary.open_corrections,
            rss_at_ready_kib: rss_ready,
            peak_rss_kib: hwm,
            bpf_map_bytes_at_ready: maps_ready.map(|m| m.0),
            bpf_map_bytes_peak: peak.bytes,
            lost: summary.lost,
        })
    }
}

/// The concurrency part of the report, for people.
pub(super) fn render(c: &Concurrency) -> String {
    let f = |v: Option<f64>, d: usize| opt(v, |x| format!("{x:.d$}"));
    let u = |v: Option<u64>| opt(v.map(|x| x as f64), num);
    let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), |m| format!("{m:.1} MiB"));
    let mut out = format!(
        "\nCONCURRENCY: {} connections held (asked {}, opened {}) in {:.1} s ({:.0}/s)\n  {}\n",
        c.held,
        c.requested,
        c.ramp_rate
            .map_or_else(|| "unpaced".to_string(), |r| format!("at {r}/s")),
        c.ramp_s,
        c.ramp_connections_per_s,
        c.command
    );
    out.push_str(&format!(
        "  established_now {}, accepted {} of {} ({})\n",
        u(c.established_now),
        u(c.accepted),
        c.requested,
        if c.matches { "exact" } else { "MISMATCH" }
    ));
    out.push_str(&format!(
        "  time to ready: {} s (start-up CPU {} s)\n",
        f(c.ready_s, 2),
        f(c.startup_cpu_s, 2)
    ));
    out.push_str(&format!(
        "  memory above ready: {} bytes per connection (RSS {} at ready, peak {}; ru_maxrss with \
         the stop {:.1} MiB)\n",
        f(c.rss_bytes_per_connection, 0),
        mib(c.rss_at_ready_kib),
        mib(c.peak_rss_kib),
        c.maxrss_kib as f64 / 1024.0
    ));
    out.push_str(&format!(
        "  BPF maps' kernel memory (memlock): {} bytes per connection ({} at ready, {} at the \
         peak, {} maps)\n",
        f(c.bpf_map_bytes_per_connection, 0),
        mib(c.bpf_map_bytes_at_ready.map(|b| b / 1024)),
        mib(Some(c.bpf_map_bytes_peak / 1024)),
        c.bpf_maps
    ));
    match &c.check {
        Some(k) => out.push_str(&format!(
            "  CPU per check of the kernel's socket table: {} s ({} checks, every {} s, in a \
             {:.0} s window: {:.2} CPU s, less {:.4} CPU s/s idle; dump thread {} s per check)\n",
            f(k.cpu_s_per_check, 3),
            k.checks,
            k.expire_interval_s,
            k.window_s,
            k.cpu_s,
            k.idle_cpu_s_per_s,
            f(k.dump_s_median, 1)
        )),
        None => out.push_str("  CPU per check: not measured (no check seen)\n"),
    }
    if let Some(a) = &c.already_open {
        out.push_str(&format!(
            "  started with them already open: ready in {} s (start-up CPU {} s); after {:.0} s \
             established_now {} ({}); open_corrections {}\n",
            f(a.ready_s, 2),
            f(a.startup_cpu_s, 2),
            a.ran_s,
            u(a.established_now),
            if a.matches { "exact" } else { "MISMATCH" },
            a.open_corrections
                .as_ref()
                .map_or_else(|| "-".to_string(), |v| v.to_string())
        ));
    }
    out.push_str(&format!(
        "  host: {:.1} GiB, kernel memory per held socket {} bytes; closing took {:.1} s\n",
        c.host.mem_total_kib as f64 / 1024.0 / 1024.0,
        f(c.kernel_bytes_per_socket, 0),
        c.teardown_s
    ));
    if let Some(lost) = &c.lost {
        let l: Vec<String> = lost.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("  lost: {}\n", l.join(" ")));
    }
    if let Some(o) = &c.open_corrections {
        out.push_str(&format!("  open_corrections: {o}\n"));
    }
    out
}
