//! Starting the tracers (sockwatch, bpftrace) and running the churn load generator.
use std::{
    fs::{self, File},
    io::{self, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{
    BPFTRACE_PROGRAM, Bench, CHURN_MAX_SECONDS, INTERVAL, MAX_SOCKETS, Mode, PORT, SOURCES,
    progress,
    tracer::{Reaped, Tracer, read_all_in_background, spawn_dying_with_us},
};

/// What sockwatch-churn prints at the end.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(super) struct Churn {
    pub(super) connections: u64,
    pub(super) seconds: f64,
    pub(super) rate: f64,
    pub(super) errors: u64,
    pub(super) port: u16,
    pub(super) netns: u64,
    pub(super) timed_out: bool,
}

impl Bench<'_> {
    pub(super) fn ready_file(&self) -> PathBuf {
        self.dir.join("sockwatch.ready")
    }

    pub(super) fn trace_file(&self) -> PathBuf {
        self.dir.join("trace.jsonl")
    }

    pub(super) fn bpftrace_file(&self) -> PathBuf {
        self.dir.join("bpftrace.out")
    }

    /// sockwatch's options in `mode`, with `--max-sockets MAX_SOCKETS` for the rounds (the
    /// same for every build compared), none with `defaults`.
    fn sockwatch_args(&self, mode: Mode, defaults: bool) -> Vec<String> {
        let mut v: Vec<String> = match mode {
            Mode::Trace | Mode::TraceBaseline => vec![
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
        let ring = match mode {
            Mode::TopRing => self.args.top_ring_size.as_ref(),
            m if m.traces() => self.args.trace_ring_size.as_ref(),
            _ => None,
        };
        if let Some(size) = ring {
            v.extend(["--ring-size".into(), size.clone()]);
        }
        if !defaults {
            v.extend(["--max-sockets".into(), MAX_SOCKETS.into()]);
        }
        v.extend([
            "--ready-file".into(),
            self.ready_file().display().to_string(),
        ]);
        v
    }

    pub(super) fn command(&self, mode: Mode) -> String {
        match mode {
            Mode::Untraced => "-".into(),
            Mode::Trace | Mode::Top | Mode::TopRing => {
                format!("sockwatch {}", self.sockwatch_args(mode, false).join(" "))
            }
            Mode::Hooks => format!(
                "sockwatch {} (built with --features hooks-only: every program returns at once)",
                self.sockwatch_args(mode, false).join(" ")
            ),
            Mode::TraceBaseline | Mode::TopBaseline => format!(
                "sockwatch {} (built at {})",
                self.sockwatch_args(mode, false).join(" "),
                self.baseline.as_ref().map_or("?", |b| b.commit.as_str())
            ),
            Mode::Bpftrace => format!(
                "bpftrace -e '{BPFTRACE_PROGRAM}' > {}",
                self.bpftrace_file().display()
            ),
        }
    }

    /// The churn's options; it runs in `netns` (a /proc/PID/ns/net path), or in a new
    /// namespace of its own.
    pub(super) fn churn_args(&self, netns: Option<&Path>) -> Vec<String> {
        let a = self.args;
        let mut v: Vec<String> = match netns {
            Some(p) => vec!["--netns".into(), p.display().to_string()],
            None => vec!["--new-netns".into()],
        };
        v.extend(
            [
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
            .map(|s| s.to_string()),
        );
        v
    }

    /// Starts sockwatch in `mode` (with `extra` options) and waits until it is ready.
    pub(super) fn start_sockwatch(
        &self,
        mode: Mode,
        capture_stdout: bool,
        extra: &[&str],
    ) -> anyhow::Result<Tracer> {
        self.spawn_sockwatch(mode, capture_stdout, extra, false)
    }

    /// The same with sockwatch's defaults (no --max-sockets).
    pub(super) fn start_sockwatch_default(
        &self,
        mode: Mode,
        capture_stdout: bool,
        extra: &[&str],
    ) -> anyhow::Result<Tracer> {
        self.spawn_sockwatch(mode, capture_stdout, extra, true)
    }

    /// The command line `start_sockwatch_default` runs, for the report.
    pub(super) fn default_command(&self, mode: Mode, extra: &[&str]) -> String {
        let mut v = self.sockwatch_args(mode, true);
        v.extend(extra.iter().map(|s| s.to_string()));
        format!("sockwatch {}", v.join(" "))
    }

    fn spawn_sockwatch(
        &self,
        mode: Mode,
        capture_stdout: bool,
        extra: &[&str],
        defaults: bool,
    ) -> anyhow::Result<Tracer> {
        let ready = self.ready_file();
        match fs::remove_file(&ready) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", ready.display())),
        }
        let log = self.dir.join(format!("sockwatch-{}.stderr", mode.name()));
        let bin = match (mode, &self.hooks_only, &self.baseline) {
            (Mode::Hooks, Some(b), _) => b,
            (Mode::Hooks, None, _) => bail!("the hooks row needs the hooks-only build"),
            (Mode::TraceBaseline | Mode::TopBaseline, _, Some(b)) => &b.binary,
            (Mode::TraceBaseline | Mode::TopBaseline, _, None) => {
                bail!("the {} row needs --baseline", mode.name())
            }
            _ => &self.sockwatch,
        };
        let mut cmd = Command::new(bin);
        cmd.args(self.sockwatch_args(mode, defaults))
            .args(extra)
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut t = Tracer::spawn("sockwatch", cmd, &log, libc::SIGTERM)?;
        t.wait_ready(|| ready.exists())?;
        Ok(t)
    }

    pub(super) fn start_bpftrace(&self, bin: &Path) -> anyhow::Result<Tracer> {
        let out_path = self.bpftrace_file();
        let out = File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let log = self.dir.join("bpftrace.stderr");
        // bpftrace needs tracefs; where the host has none mounted, mount it in a mount
        // namespace of bpftrace's own (as sockwatch does), so the host's mounts never change.
        // unshare and sh exec, so the pid stays bpftrace's.
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; \
             exec \"$0\" \"$@\"",
        ])
        .arg(bin)
        .args(["-e", BPFTRACE_PROGRAM])
        .stdout(out);
        let mut t = Tracer::spawn("bpftrace", cmd, &log, libc::SIGTERM)?;
        // Older releases print "Attaching N probes..." on stdout, newer ones on stderr.
        t.wait_ready(|| {
            file_contains(&log, "Attaching") || file_starts_with(&out_path, "Attaching")
        })?;
        Ok(t)
    }

    /// Runs the churn to completion (bounded in time) and returns its result line.
    pub(super) fn run_churn(&self, netns: Option<&Path>) -> anyhow::Result<Churn> {
        // An earlier run's writes (trace's file: 160 MB per 100k connections) go to disk now,
        // not in the background during this run, which would then pay for them.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let mut cmd = Command::new(&self.churn);
        cmd.args(self.churn_args(netns))
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
}

pub(super) fn parse_churn(stdout: &str) -> anyhow::Result<Churn> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("sockwatch-churn printed no result line")?;
    serde_json::from_str(line).with_context(|| format!("bad sockwatch-churn result: {line}"))
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

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_line_parses() {
        let c = parse_churn(
            "held 5\n{\"connections\":5,\"seconds\":0.5,\"rate\":10.0,\"errors\":0,\"port\":7913,\"netns\":4026532177,\"timed_out\":false}\n",
        )
        .unwrap();
        assert_eq!((c.connections, c.port, c.netns), (5, 7913, 4026532177));
        assert!(parse_churn("held 5\n").is_err());
    }
}
