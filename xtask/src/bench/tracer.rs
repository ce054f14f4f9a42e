//! Child processes: tracers reaped with `wait4` for their rusage, the churn killed if dropped,
//! and their output read in the background.
use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{READY_TIMEOUT, STOP_TIMEOUT, procfs::cpu_seconds};

/// A child process reaped with `wait4` (for its rusage); killed by pid if dropped unreaped.
pub(super) struct Tracer {
    name: &'static str,
    pub(super) pid: libc::pid_t,
    reaped: bool,
    stdout: Option<JoinHandle<String>>,
    log: PathBuf,
    spawned: Instant,
    pub(super) startup_cpu_s: Option<f64>,
    /// Seconds from its start to its readiness.
    pub(super) ready_s: Option<f64>,
}

pub(super) struct Usage {
    pub(super) cpu_s: f64,
    pub(super) maxrss_kib: u64,
}

impl Tracer {
    pub(super) fn spawn(
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
            spawned: Instant::now(),
            startup_cpu_s: None,
            ready_s: None,
        })
    }

    pub(super) fn wait_ready(&mut self, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if ready() {
                self.ready_s = Some(self.spawned.elapsed().as_secs_f64());
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
    pub(super) fn stop(&mut self) -> anyhow::Result<Usage> {
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

    pub(super) fn stdout(&mut self) -> String {
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
pub(super) struct Reaped(pub(super) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A process alone in a new network namespace, keeping it alive: the churn runs there, and
/// sockwatch, which finds namespaces through their processes, still reads it after the churn
/// has exited (its last look at the kernel's connections, as it stops). Killed when dropped.
pub(super) struct NetnsHolder(Reaped);

impl NetnsHolder {
    pub(super) fn spawn() -> anyhow::Result<Self> {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600").stdin(Stdio::null());
        // SAFETY: unshare is async-signal-safe; it affects only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_dying_with_us(cmd, libc::SIGKILL, "a network namespace holder (sleep)")?;
        Ok(Self(Reaped(child)))
    }

    /// Its namespace, as a path the churn can join.
    pub(super) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.0.id()))
    }
}

/// Spawns `cmd` so that it gets `signal` if xtask dies first.
pub(super) fn spawn_dying_with_us(
    mut cmd: Command,
    signal: libc::c_int,
    name: &str,
) -> anyhow::Result<Child> {
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

pub(super) fn read_all_in_background(
    r: Option<impl io::Read + Send + 'static>,
) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

pub(super) fn lines_in_background(r: Option<impl io::Read + Send + 'static>) -> Receiver<String> {
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
