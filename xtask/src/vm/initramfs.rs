//! Builds the initramfs the VMs boot: busybox (shell and tools), /init, the test binaries and
//! the binaries they run at their host absolute paths (tests find sockwatch through a path
//! compiled in), their shared libraries, and per kernel the modules to load.
//!
//! The part common to all kernels is built once; each kernel's image is that archive followed
//! by a small one with its modules (the kernel unpacks concatenated archives in turn).
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{cpio::Newc, kernel::Module};

/// Where /init finds the modules and their load order.
const MODULES_DIR: &str = "lib/vm-modules";

/// One test binary to run inside the VM.
pub struct Run {
    pub name: String,
    pub exe: PathBuf,
    /// The crate directory (cargo runs tests there; some tests rely on it).
    pub cwd: PathBuf,
    /// More arguments for libtest (`--ignored --exact NAME --nocapture` for one measurement).
    pub args: Vec<String>,
}

pub struct Plan<'a> {
    pub busybox: &'a Path,
    pub sockwatch: &'a Path,
    /// Every executable to place at its own path: the test binaries, sockwatch, the churn.
    pub exes: Vec<PathBuf>,
    pub runs: Vec<Run>,
    pub filter: Option<&'a str>,
    /// Where stripped copies are kept between runs.
    pub stage: &'a Path,
}

/// The common archive (without modules).
pub fn common(plan: &Plan<'_>) -> anyhow::Result<Vec<u8>> {
    let mut w = Newc::new(Vec::new());
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "etc",
        "mnt",
        MODULES_DIR,
    ] {
        w.dir(d)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;
    let busybox = fs::read(plan.busybox)
        .with_context(|| format!("cannot read {}", plan.busybox.display()))?;
    w.file("bin/busybox", 0o755, &busybox)?;
    for applet in applets(plan.busybox)? {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    w.file("init", 0o755, init_script(plan).as_bytes())?;
    let mut libs = BTreeSet::new();
    for exe in &plan.exes {
        let stripped = strip(exe, plan.stage)?;
        let data =
            fs::read(&stripped).with_context(|| format!("cannot read {}", stripped.display()))?;
        w.file(&exe.to_string_lossy(), 0o755, &data)?;
        libs.extend(shared_libs(exe)?);
    }
    for run in &plan.runs {
        w.dir(&run.cwd.to_string_lossy())?;
    }
    for lib in libs {
        let data = fs::read(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
        w.file(&lib.to_string_lossy(), 0o755, &data)?;
    }
    Ok(w.finish()?.0)
}

/// The per-kernel archive: the modules, and the order to load them in.
pub fn modules(mods: &[Module]) -> anyhow::Result<Vec<u8>> {
    let mut w = Newc::new(Vec::new());
    let mut order = String::new();
    for m in mods {
        w.file(&format!("{MODULES_DIR}/{}.ko", m.name), 0o644, &m.data)?;
        order.push_str(&m.name);
        order.push('\n');
    }
    w.file(&format!("{MODULES_DIR}/order"), 0o644, order.as_bytes())?;
    Ok(w.finish()?.0)
}

/// busybox's applets, except `busybox` itself (a link to itself would be a loop the kernel
/// refuses to exec through: ELOOP).
fn applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("cannot run {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect())
}

/// A copy without debug info (debug builds are 60-110 MB, a few MB without), kept in `stage`
/// and redone only when the binary is newer than the copy.
fn strip(exe: &Path, stage: &Path) -> anyhow::Result<PathBuf> {
    let dest = stage.join(exe.strip_prefix("/").unwrap_or(exe));
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let src_time = mtime(exe).with_context(|| format!("{} is missing", exe.display()))?;
    if mtime(&dest).is_some_and(|t| t >= src_time) {
        return Ok(dest);
    }
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(exe)
        .arg(&dest)
        .status()
        .context("cannot run objcopy (binutils)")?;
    if !st.success() {
        bail!("objcopy --strip-debug {} failed ({st})", exe.display());
    }
    Ok(dest)
}

/// The shared libraries `ldd` says an executable loads, the dynamic loader included.
fn shared_libs(exe: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: ldd says "not a dynamic executable" and fails.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Shell-quotes for the init script.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// /init, run by busybox sh as pid 1: mounts what a host has, loads the modules, runs
/// `sockwatch check` and the tests with their output on /dev/ttyS1, between `@@vm` markers
/// (see results.rs), then powers off (qemu exits: -no-reboot).
fn init_script(plan: &Plan<'_>) -> String {
    let mut runs = String::new();
    for run in &plan.runs {
        let args: String = run
            .args
            .iter()
            .map(String::as_str)
            .chain(plan.filter)
            .map(|a| format!(" {}", quote(a)))
            .collect();
        runs.push_str(&format!(
            "say run-begin {name}\n\
             cd {cwd} && {exe} --test-threads=1 --color never{args} >&3 2>&1\n\
             say run-end {name} $?\n\
             cd /\n",
            name = run.name,
            cwd = quote(&run.cwd.to_string_lossy()),
            exe = quote(&run.exe.to_string_lossy()),
        ));
    }
    INIT.replace("@SOCKWATCH@", &quote(&plan.sockwatch.to_string_lossy()))
        .replace("@MODULES@", MODULES_DIR)
        .replace("@RUNS@", &runs)
}

const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp CI=true RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# No tmpfs on /tmp: the root file system is already one, and a workspace under /tmp (a CI
# clone) would be hidden by it.
mkdir -p /sys/fs/bpf /sys/kernel/tracing /sys/kernel/debug /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# pid 1 starts with the kernel's 1024 open files; hosts (and CI) that run the tests give more,
# and some tests hold thousands of sockets.
ulimit -n 65536
# The results channel: raw, so that lines arrive as written.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1
say() { echo "@@vm $*" >&3; }
say uname "$(uname -r)"
for m in $(cat /@MODULES@/order); do
    insmod "/@MODULES@/$m.ko" 2>/tmp/insmod.err || say warn "insmod $m: $(cat /tmp/insmod.err)"
done
ip link set lo up
say check-begin
@SOCKWATCH@ check --format json >&3 2>/tmp/check.err
say check-end $?
say check-stderr-begin
cat /tmp/check.err >&3
say check-stderr-end
@RUNS@say done
# Let the serial port drain before the power goes.
sleep 1
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn init_runs_each_binary_between_markers() {
        let plan = Plan {
            busybox: Path::new("/bb"),
            sockwatch: Path::new("/w/target/debug/sockwatch"),
            exes: Vec::new(),
            runs: vec![Run {
                name: "accept".into(),
                exe: "/w/target/debug/deps/accept-123".into(),
                cwd: "/w/sockwatch".into(),
                args: Vec::new(),
            }],
            filter: Some("it's"),
            stage: Path::new("/s"),
        };
        let s = init_script(&plan);
        assert!(s.contains("'/w/target/debug/sockwatch' check --format json >&3"));
        assert!(s.contains(
            "say run-begin accept\ncd '/w/sockwatch' && '/w/target/debug/deps/accept-123' \
             --test-threads=1 --color never 'it'\\''s' >&3 2>&1\nsay run-end accept $?\n"
        ));
        assert!(s.contains("say done\n"));
    }

    #[test]
    fn init_passes_a_run_its_own_arguments() {
        let plan = Plan {
            busybox: Path::new("/bb"),
            sockwatch: Path::new("/w/target/debug/sockwatch"),
            exes: Vec::new(),
            runs: vec![Run {
                name: "hook_cost".into(),
                exe: "/w/target/debug/deps/hook_cost-1".into(),
                cwd: "/w/sockwatch".into(),
                args: ["--ignored", "--exact", "measure"]
                    .map(String::from)
                    .to_vec(),
            }],
            filter: None,
            stage: Path::new("/s"),
        };
        assert!(init_script(&plan).contains(
            "'/w/target/debug/deps/hook_cost-1' --test-threads=1 --color never \
             '--ignored' '--exact' 'measure' >&3 2>&1\n"
        ));
    }
}
