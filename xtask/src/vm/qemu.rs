//! Boots one kernel + initramfs under qemu (TCG: no KVM needed) and follows its results
//! channel while it runs; kills it by its pid when it overruns its time.
use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const QEMU: &str = "qemu-system-x86_64";
const POLL: Duration = Duration::from_millis(500);

pub struct Vm<'a> {
    pub qemu: &'a Path,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// The kernel console (serial 0) and qemu's own messages.
    pub console_log: &'a Path,
    /// The results channel (serial 1).
    pub results: &'a Path,
    pub timeout: Duration,
}

/// The kernel command line. loglevel=5 rather than `quiet`: the boot stays terse, but the
/// stack traces of warnings, oopses and lockups reach the console log.
const APPEND: &str = "console=ttyS0 panic=-1 loglevel=5";

pub enum Exit {
    /// qemu exited by itself (the guest powered off, or panicked: `panic=-1` + `-no-reboot`).
    Exited(std::process::ExitStatus),
    TimedOut,
    /// The guest kernel reported a lockup and the tests said nothing for HUNG_AFTER since:
    /// stopped early rather than waiting out the whole timeout.
    Hung(String),
}

/// Kernel messages that say the guest is stuck (a soft lockup or an RCU stall).
const LOCKUP_SIGNS: &[&str] = &[
    "BUG: soft lockup",
    "self-detected stall",
    "detected stalls on CPUs",
];
/// How long the results channel may stay silent after such a message.
const HUNG_AFTER: Duration = Duration::from_secs(120);

/// Runs the VM to its end, calling `on_line` for each complete line of the results channel.
pub fn run(vm: &Vm<'_>, on_line: &mut dyn FnMut(&str)) -> anyhow::Result<(Exit, Duration)> {
    let console = File::create(vm.console_log)
        .with_context(|| format!("cannot create {}", vm.console_log.display()))?;
    File::create(vm.results).with_context(|| format!("cannot create {}", vm.results.display()))?;
    let mut cmd = Command::new(vm.qemu);
    // Single-threaded TCG: both vCPUs take turns on one host thread. Multi-threaded TCG ran
    // no faster here (the tests mostly wait), and under it a 6.12 guest died of a stray int3
    // while a tracepoint was being patched in (code patched on one vCPU, run on the other).
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"])
        .args([
            "-m",
            "3072",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", vm.results.display()))
        .arg("-kernel")
        .arg(vm.vmlinuz)
        .arg("-initrd")
        .arg(vm.initrd)
        .args(["-append", APPEND])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    // SAFETY: prctl is async-signal-safe; qemu then dies with xtask instead of running on.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", vm.qemu.display()))?;
    let mut follow = Follow::new(vm.results.to_path_buf());
    let mut console = Follow::new(vm.console_log.to_path_buf());
    let mut last_result = Instant::now();
    let mut lockup: Option<String> = None;
    let exit = loop {
        let mut got = false;
        follow.poll(&mut |l| {
            got = true;
            on_line(l);
        })?;
        if got {
            last_result = Instant::now();
            lockup = None;
        }
        console.poll(&mut |l| {
            if lockup.is_none() && LOCKUP_SIGNS.iter().any(|s| l.contains(s)) {
                lockup = Some(l.trim().to_string());
            }
        })?;
        if let Some(st) = child.try_wait().context("waiting for qemu")? {
            break Exit::Exited(st);
        }
        let hung = lockup.is_some() && last_result.elapsed() > HUNG_AFTER;
        if hung || start.elapsed() > vm.timeout {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
            break match lockup {
                Some(l) if hung => Exit::Hung(l),
                _ => Exit::TimedOut,
            };
        }
        thread::sleep(POLL);
    };
    follow.poll(on_line)?;
    follow.flush(on_line);
    Ok((exit, start.elapsed()))
}

/// Reads what was appended to a file since the last call and hands out complete lines.
struct Follow {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
}

impl Follow {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            pos: 0,
            partial: Vec::new(),
        }
    }

    fn poll(&mut self, on_line: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
        let mut f = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.pos))?;
        let n = f.read_to_end(&mut self.partial)?;
        self.pos += n as u64;
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            on_line(String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'));
        }
        Ok(())
    }

    /// The last line, if it had no newline (a run cut short).
    fn flush(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            on_line(String::from_utf8_lossy(&rest).trim_end_matches('\r'));
        }
    }
}

/// The last `n` lines of a console log, for showing why a VM failed.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// qemu-system-x86_64 on PATH; installed with apt-get when missing and we are root.
pub fn ensure(is_root: bool) -> anyhow::Result<PathBuf> {
    if let Some(p) = find_on_path(QEMU) {
        return Ok(p);
    }
    if !is_root {
        bail!(
            "{QEMU} is missing: run `apt-get install -y --no-install-recommends qemu-system-x86` as root"
        );
    }
    eprintln!("vm: {QEMU} is missing: installing qemu-system-x86 with apt-get (a minute or two)");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")
    };
    if !install()?.success() {
        // A new machine's package lists may be older than the mirror: refresh them once.
        eprintln!("vm: refreshing the package lists (apt-get update) and trying again");
        let updated = Command::new("apt-get")
            .args(["-q", "update"])
            .status()
            .context("cannot run apt-get")?;
        let st = install()?;
        if !updated.success() || !st.success() {
            bail!(
                "apt-get install qemu-system-x86 failed ({st}): install it yourself, then run this again"
            );
        }
    }
    find_on_path(QEMU)
        .with_context(|| format!("{QEMU} still missing after installing qemu-system-x86"))
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
