//! Command-line interface.
use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::{
    filter::{self, Filter},
    kernel::decode::Family,
    kernel::hooks::HookKind,
    kernel::loader::LoadOptions,
    record::compress::Compression,
    record::rotate::Rotation,
    record::sink::Format,
};

#[derive(Debug, Parser)]
#[command(
    name = "sockwatch",
    version,
    about = "Trace TCP connections on this host with eBPF: who connects, who listens and accepts, \
             how long connections live, and why clients fail",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "With no subcommand, sockwatch runs `top` (and takes its options). Tracing needs root. Examples:\n  \
                  sockwatch                                       live per-port table\n  \
                  sockwatch top --duration 60 --format json       one JSON summary after 60 s\n  \
                  sockwatch trace --port 5432                     every event on port 5432\n  \
                  sockwatch trace --output conns.jsonl --format jsonl\n  \
                  sockwatch trace -o /var/log/sw/conns.jsonl -f jsonl --rotate-size 256M --compress zstd\n  \
                  sockwatch report conns.jsonl                    the summary of a recording\n\n\
                  Reference, in the source tree: docs/usage.md (subcommands, filters, files), \
                  docs/records.md (every field), docs/troubleshooting.md (every error)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `top`'s options, for `sockwatch` without a subcommand.
    #[command(flatten)]
    pub top: TopArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live per-port table: connections accepted, open now, accept failures, queue depth and
    /// overflows, lifetimes; outbound connections by remote port; processes near their fd limit.
    Top(TopArgs),
    /// Print every connection event as it happens: connect, established, accept, close (with
    /// its duration), listen and listen_stop, and the failures accept_failed and connect_failed.
    /// JSON Lines output also records host samples, and `expired` for a connection whose close
    /// was missed (found gone from the kernel).
    Trace(TraceArgs),
    /// Print the per-port summary of recorded JSON Lines files (from `trace --output`), plain,
    /// rotated or compressed, or of directories of them.
    Report(ReportArgs),
    /// Probe what this kernel lets sockwatch see (BTF, ring buffer, syscall hooks, drop
    /// reasons, sock_diag, ...), load and attach the programs once, detach them, and print the
    /// result. Exits non-zero when sockwatch cannot run here.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A table for people, or one JSON object.
    #[arg(short, long, value_enum, default_value_t = SummaryFormat::Table)]
    pub format: SummaryFormat,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Which build of the kernel programs to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Programs {
    /// The one the running kernel supports (probed at start).
    #[default]
    Auto,
    /// The build for kernels before 5.15 (hash maps by thread, syscall entry hooks), which
    /// also runs on newer kernels: to compare the two.
    Compat,
}

/// Summary output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// Aligned tables.
    Table,
    /// One JSON object (schema: docs/records.md#the-summary-json).
    Json,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Summary format: a live table, or one JSON summary printed at the end (use with
    /// --duration).
    #[arg(short, long, value_enum, default_value_t = SummaryFormat::Table)]
    pub format: SummaryFormat,

    /// Also record the event stream to PATH as JSON Lines (for `sockwatch report`). The file is
    /// created (or truncated) with mode 0600: it shows who talks to whom. A symbolic link at
    /// PATH is refused (see --follow-symlinks).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Write --output through a symbolic link at PATH instead of refusing it. Only for links you
    /// made yourself: in a directory others can write to, a planted link could point anywhere.
    #[arg(long, requires = "output")]
    pub follow_symlinks: bool,

    #[command(flatten)]
    pub rotate: RotateArgs,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Write events to PATH instead of standard output. The file is created (or truncated) with
    /// mode 0600: it shows who talks to whom. A symbolic link at PATH is refused (see
    /// --follow-symlinks).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Write --output through a symbolic link at PATH instead of refusing it. Only for links you
    /// made yourself: in a directory others can write to, a planted link could point anywhere.
    #[arg(long, requires = "output")]
    pub follow_symlinks: bool,

    #[command(flatten)]
    pub rotate: RotateArgs,

    /// Output format: aligned text for people, JSON Lines (one object per event, plus the host
    /// samples `report` needs), or CSV (one row per event, with a header row).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Also report every TCP state transition (old and new state, like tcpstates) as `state`
    /// events. Off by default: it costs an event per transition, about ten per connection.
    #[arg(long)]
    pub states: bool,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Rotation of the --output file.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(ArgGroup::new("rotation").args(["rotate_size", "rotate_interval"]).multiple(true)))]
pub struct RotateArgs {
    /// Start a new --output file once the current one holds SIZE bytes (K, M or G suffix; at
    /// least 4K). The full file is renamed with its UTC time of rotation (conns.jsonl ->
    /// conns.20261121T101500Z.jsonl); PATH is always the live file. Files are cut between
    /// records only, and each starts with its own header.
    #[arg(long, value_name = "SIZE", requires = "output", value_parser = parse_rotate_size)]
    pub rotate_size: Option<u64>,

    /// Start a new --output file every DURATION (30s, 10m, 1h, 1h30m; at least 1s), when the
    /// current one holds any record.
    #[arg(long, value_name = "DURATION", requires = "output", value_parser = parse_rotate_interval)]
    pub rotate_interval: Option<Duration>,

    /// Rotated files to keep (compressed or not, from this run and earlier ones); the oldest
    /// beyond N are deleted.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "rotation",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rotate_keep: u32,

    /// Compress each rotated file in the background, to NAME.zst or NAME.gz (the uncompressed
    /// file is deleted once the compressed one is complete on disk).
    #[arg(long, value_enum, value_name = "CODEC", requires = "rotation")]
    pub compress: Option<Compression>,
}

impl RotateArgs {
    /// The rotation asked for, if any.
    pub fn rotation(&self) -> Option<Rotation> {
        (self.rotate_size.is_some() || self.rotate_interval.is_some()).then_some(Rotation {
            max_bytes: self.rotate_size,
            every: self.rotate_interval,
            keep: self.rotate_keep as usize,
            compress: self.compress,
        })
    }
}

fn parse_rotate_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes < 4096 {
        return Err(format!(
            "rotation size must be at least 4K, got {bytes} bytes"
        ));
    }
    Ok(bytes)
}

fn parse_rotate_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration ({e}; examples: 30s, 10m, 1h)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("rotation interval must be at least 1s, got {s}"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// JSON Lines files written by `sockwatch trace --output` (or `top --output`), plain or
    /// compressed (zstd, gzip), or directories of them (every such file inside, not
    /// recursively). They are read in time order, whatever their names.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,

    /// Summary format.
    #[arg(short, long, value_enum, default_value_t = SummaryFormat::Table)]
    pub format: SummaryFormat,

    /// Stop at the first line that is not a valid record (exit code 1, naming the file, the line
    /// and why) instead of reporting it on stderr and skipping it.
    #[arg(long)]
    pub strict: bool,

    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Options of a live session.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Stop by itself after SECONDS (default: run until Ctrl-C or SIGTERM).
    #[arg(short, long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,

    /// Refresh and host-sampling period, in seconds.
    #[arg(short, long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,

    /// How often, in seconds, the connections counted as open are checked against the
    /// kernel's socket table. One missing at two checks in a row had its close missed (events
    /// lost): it is expired (an `expired` record), and counted as lost (expired).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub expire_interval: u64,

    /// Create PATH, holding sockwatch's pid, once every program is attached: from then on no
    /// event is missed. For scripts and tests.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics while running: per-port counts and
    /// failures, losses, sockwatch's own CPU and memory (names: docs/metrics.md#the-metrics), refreshed each
    /// --interval. ADDR is an IP address: 127.0.0.1 for this host only, 0.0.0.0 or [::] for
    /// every interface. With `trace`, sockwatch also keeps the per-port summary for them.
    #[arg(long, value_name = "ADDR:PORT", value_parser = crate::metrics::server::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Where the kubelet keeps pod logs (one directory per pod, NAMESPACE_NAME_UID): pods are
    /// named from it. In a container, mount the node's directory here read-only.
    #[arg(long, value_name = "DIR", default_value = crate::host::workload::DEFAULT_PODS_DIR)]
    pub pods_dir: PathBuf,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Filters, shared by every subcommand. Live, the kernel applies them: filtered-out events
/// never reach sockwatch.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only connections with this local or remote port (repeatable, at most 16).
    #[arg(short, long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only sockets owned by this process id (the process that connected, listened or
    /// accepted).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets owned by processes with this command name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME", value_parser = filter::parse_comm)]
    pub comm: Option<String>,

    /// Only sockets owned by processes in this cgroup v2 directory or below it (e.g.
    /// /sys/fs/cgroup/system.slice/nginx.service).
    #[arg(long, value_name = "PATH", value_parser = filter::parse_cgroup)]
    pub cgroup: Option<filter::Cgroup>,

    /// Only sockets owned by processes of this container: its id or the first hex digits of
    /// it (as `docker ps` or `crictl ps` shows them). See docs/usage.md#workloads.
    #[arg(long, value_name = "ID-PREFIX", value_parser = filter::parse_container,
          conflicts_with_all = ["cgroup", "pod", "unit"])]
    pub container: Option<filter::WorkloadMatch>,

    /// Only sockets owned by processes of this Kubernetes pod (NAME in any namespace, or
    /// NAMESPACE/NAME), named from --pods-dir.
    #[arg(long, value_name = "[NAMESPACE/]NAME", value_parser = filter::parse_pod,
          conflicts_with_all = ["cgroup", "unit"])]
    pub pod: Option<filter::WorkloadMatch>,

    /// Only sockets owned by processes of this systemd service or scope (e.g. nginx.service).
    #[arg(long, value_name = "NAME", value_parser = filter::parse_unit,
          conflicts_with = "cgroup")]
    pub unit: Option<filter::WorkloadMatch>,

    /// Only sockets in this network namespace: its inode, or a namespace file such as
    /// /proc/PID/ns/net.
    #[arg(long, value_name = "INODE|PATH", value_parser = filter::parse_netns)]
    pub netns: Option<u32>,

    /// Only these events, comma-separated: connect, connect_failed, established, accept,
    /// accept_failed, close, listen, listen_stop, overflow, state.
    #[arg(long = "event", value_name = "KINDS", value_delimiter = ',', value_parser = filter::parse_kind)]
    pub events: Vec<u8>,

    /// Only IPv4 (including IPv4 on IPv6 sockets).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            pid: self.pid,
            comm: self.comm.clone(),
            family: if self.ipv4 {
                Some(Family::Ipv4)
            } else if self.ipv6 {
                Some(Family::Ipv6)
            } else {
                None
            },
            cgroup: self.cgroup.clone(),
            netns: self.netns,
            kinds: (!self.events.is_empty())
                .then(|| self.events.iter().fold(0, |k, &code| k | (1 << code))),
            workload: self
                .container
                .clone()
                .or_else(|| self.pod.clone())
                .or_else(|| self.unit.clone()),
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&v) {
        return Err(format!(
            "interval must be from 0.1 to 3600 seconds, got {v}"
        ));
    }
    Ok(v)
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Sockets tracked at once in the kernel [default: one per 8 KiB of the host's memory,
    /// as many as it can hold]. Each tracked socket takes about 100 bytes of kernel memory while
    /// it lives, and the table 16 bytes per entry up front. A socket beyond it is not tracked
    /// (sock_map_full): its events still come, its lifetime and owner are unknown.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1024..=i64::from(crate::host::limits::MAX_SOCKETS)))]
    pub max_sockets: Option<u32>,

    /// Size of the kernel-to-user ring buffer: a power of two from 4K to 1G, with an optional
    /// K, M or G suffix. A larger ring absorbs longer bursts. [default: 64M when every event
    /// goes through it (`trace`, `top --output`), else 32M]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// Read the kernel's type information (BTF) from PATH: a BTF file of this very kernel, for
    /// kernels without /sys/kernel/btf/vmlinux (e.g. from the distribution's debug package).
    #[arg(long, value_name = "PATH", default_value = crate::kernel::btf::VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Where tracefs is mounted, for the syscall tracepoints' record formats (default: found,
    /// or mounted automatically).
    #[arg(long, value_name = "PATH")]
    pub tracefs: Option<PathBuf>,

    /// Which build of the kernel programs to load (see `sockwatch check`).
    #[arg(long, value_enum, default_value_t = Programs::Auto)]
    pub programs: Programs,

    /// What sees connect() and accept() return: fentry (fexit programs on kernel functions),
    /// kprobe (kprobes on the same functions) or syscall (the syscall tracepoints, which slow
    /// every system call on the host a little). auto: the first of these the kernel allows
    /// (`sockwatch check` says which). See docs/how-it-works.md#hook-kinds.
    #[arg(long, value_enum, default_value_t = Hooks::Auto)]
    pub hooks: Hooks,
}

/// `--hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Hooks {
    #[default]
    Auto,
    Fentry,
    Kprobe,
    Syscall,
}

impl Hooks {
    pub fn forced(self) -> Option<HookKind> {
        match self {
            Hooks::Auto => None,
            Hooks::Fentry => Some(HookKind::Fentry),
            Hooks::Kprobe => Some(HookKind::Kprobe),
            Hooks::Syscall => Some(HookKind::Syscall),
        }
    }
}

/// `--ring-size` when every event goes through the ring. A churn of 100k connections/s on 2
/// CPUs starves the reader of CPU for the whole burst: with 96-byte events 16M overflowed there
/// and 32M did not (docs/performance.md#what-the-figures-say); events are 120 bytes since they
/// carry what a connection carried.
pub const RING_SIZE_ALL_EVENTS: u32 = 64 << 20;
/// `--ring-size` when the kernel counts and the ring carries little (`top`, `check`).
pub const RING_SIZE_COUNTING: u32 = 32 << 20;

impl KernelArgs {
    /// The options given, with `ring` as the ring size unless `--ring-size` says otherwise.
    pub fn load_options(&self, ring: u32) -> LoadOptions {
        LoadOptions {
            max_sockets: self
                .max_sockets
                .unwrap_or_else(crate::host::limits::default_max_sockets),
            ring_bytes: self.ring_size.unwrap_or(ring),
            states: false,
            btf: self.btf.clone(),
            tracefs: self.tracefs.clone(),
            force_compat: self.programs == Programs::Compat,
            hooks: self.hooks.forced(),
            mode: sockwatch_common::Mode::RING_ONLY,
        }
    }
}

/// Parses `8M`, `64K`, `1G` or plain bytes; the kernel wants a power of two of pages.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let bytes = parse_bytes(s)?;
    if !bytes.is_power_of_two() || !(4096..=(1 << 30)).contains(&bytes) {
        return Err(format!(
            "ring size must be a power of two from 4K to 1G, got {bytes} bytes"
        ));
    }
    Ok(bytes as u32)
}

/// Parses a byte count: plain, or with a K, M or G suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4M, 65536)"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown size unit in '{s}' (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert_eq!(parse_ring_size("4k"), Ok(4096));
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert_eq!(parse_ring_size("1G"), Ok(1 << 30));
        assert!(parse_ring_size("3M").unwrap_err().contains("power of two"));
        assert!(parse_ring_size("2K").unwrap_err().contains("power of two"));
        assert!(parse_ring_size("2G").is_err());
        assert!(parse_ring_size("8X").unwrap_err().contains("unit"));
        assert!(parse_ring_size("").is_err());
    }

    #[test]
    fn rotation_options() {
        let parse = |args: &[&str]| {
            let mut all = vec!["sockwatch", "trace"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Some(Command::Trace(t))) => Ok(t),
                Ok(_) => panic!("trace"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&["-o", "x"]).unwrap().rotate.rotation(), None);
        let t = parse(&[
            "-o",
            "x",
            "--rotate-size",
            "256M",
            "--rotate-interval",
            "1h30m",
        ])
        .unwrap();
        assert_eq!(
            t.rotate.rotation(),
            Some(Rotation {
                max_bytes: Some(256 << 20),
                every: Some(Duration::from_secs(5400)),
                keep: 10,
                compress: None,
            })
        );
        let t = parse(&[
            "-o",
            "x",
            "--rotate-interval",
            "30s",
            "--rotate-keep",
            "3",
            "--compress",
            "gzip",
        ])
        .unwrap();
        let r = t.rotate.rotation().unwrap();
        assert_eq!((r.keep, r.compress), (3, Some(Compression::Gzip)));
        assert_eq!(parse(&["-f", "csv"]).unwrap().format, Format::Csv);
        // Rotation needs --output; keep and compress need a rotation.
        assert!(
            parse(&["--rotate-size", "8K"])
                .unwrap_err()
                .contains("--output")
        );
        for args in [
            &["-o", "x", "--rotate-keep", "3"][..],
            &["-o", "x", "--compress", "zstd"],
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains("--rotate-size"), "{e}");
        }
        assert!(
            parse(&["-o", "x", "--rotate-size", "1K"])
                .unwrap_err()
                .contains("rotation size must be at least 4K")
        );
        assert!(
            parse(&["-o", "x", "--rotate-size", "3X"])
                .unwrap_err()
                .contains("unit")
        );
        assert!(
            parse(&["-o", "x", "--rotate-interval", "500ms"])
                .unwrap_err()
                .contains("at least 1s")
        );
        assert!(
            parse(&["-o", "x", "--rotate-interval", "soon"])
                .unwrap_err()
                .contains("is not a duration")
        );
        assert!(parse(&["-o", "x", "--rotate-size", "8K", "--rotate-keep", "0"]).is_err());
        assert!(parse(&["-o", "x", "--rotate-size", "8K", "--compress", "xz"]).is_err());
        // top records too.
        let cli =
            Cli::try_parse_from(["sockwatch", "top", "-o", "x", "--rotate-size", "1M"]).unwrap();
        let Some(Command::Top(t)) = cli.command else {
            panic!("top")
        };
        assert_eq!(t.rotate.rotation().unwrap().max_bytes, Some(1 << 20));
        assert!(Cli::try_parse_from(["sockwatch", "-o", "x", "--rotate-interval", "1m"]).is_ok());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("3k"), Ok(3072));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(
            parse_bytes("99999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn trace_defaults_and_validation() {
        let cli = Cli::try_parse_from(["sockwatch", "trace"]).unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        assert_eq!(t.format, Format::Text);
        assert_eq!(t.run.kernel.max_sockets, None);
        assert_eq!(t.run.kernel.ring_size, None);
        assert_eq!(
            t.run.kernel.load_options(RING_SIZE_ALL_EVENTS).ring_bytes,
            64 << 20
        );
        let cli = Cli::try_parse_from(["sockwatch", "trace", "--ring-size", "8M"]).unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        assert_eq!(
            t.run.kernel.load_options(RING_SIZE_ALL_EVENTS).ring_bytes,
            8 << 20
        );
        assert_eq!(t.run.interval, 1.0);
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--port", "65536"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "top", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "report"]).is_err());
        let cli = Cli::try_parse_from(["sockwatch", "top", "-p", "80", "-p", "443", "-6"]).unwrap();
        let Some(Command::Top(t)) = cli.command else {
            panic!("top")
        };
        let f = t.filter.filter();
        assert_eq!(f.ports, vec![80, 443]);
        assert_eq!(f.family, Some(Family::Ipv6));
        assert!(
            Cli::try_parse_from(["sockwatch"])
                .unwrap()
                .command
                .is_none()
        );
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--max-sockets", "10"]).is_err());
    }

    fn trace_filter(args: &[&str]) -> Result<Filter, String> {
        let mut argv = vec!["sockwatch", "trace"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Some(Command::Trace(t)),
                ..
            }) => Ok(t.filter.filter()),
            Ok(_) => Err("not trace".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn filter_options() {
        let f = trace_filter(&["--event", "connect,close", "--event", "state"]).unwrap();
        use sockwatch_common::kind;
        assert_eq!(
            f.kinds,
            Some((1 << kind::CONNECT) | (1 << kind::CLOSE) | (1 << kind::STATE))
        );
        assert_eq!(trace_filter(&[]).unwrap().kinds, None);
        let f = trace_filter(&["--netns", "4026531840", "--comm", "nginx", "--pid", "9"]).unwrap();
        assert_eq!(
            (f.netns, f.comm.as_deref(), f.pid),
            (Some(4026531840), Some("nginx"), Some(9))
        );

        let e = trace_filter(&["--event", "connect,bogus"]).unwrap_err();
        assert!(
            e.contains("invalid value 'bogus' for '--event <KINDS>': unknown event kind 'bogus' (valid: connect, connect_failed, established, accept, accept_failed, close, listen, listen_stop, overflow, state)"),
            "{e}"
        );
        let e = trace_filter(&["--netns", "/tmp"]).unwrap_err();
        assert!(
            e.contains("for '--netns <INODE|PATH>'") && e.contains("not a network namespace"),
            "{e}"
        );
        let e = trace_filter(&["--cgroup", "/nonexistent/cg"]).unwrap_err();
        assert!(
            e.contains("for '--cgroup <PATH>': cannot open /nonexistent/cg: "),
            "{e}"
        );
        let e = trace_filter(&["--comm", "a-name-too-long-for-comm"]).unwrap_err();
        assert!(e.contains("1 to 15 bytes"), "{e}");
        let cli = Cli::try_parse_from(["sockwatch", "trace", "--states"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Trace(t)) if t.states));
        // Filters apply to report too; --states is trace's alone.
        assert!(Cli::try_parse_from(["sockwatch", "report", "f", "--event", "close"]).is_ok());
        assert!(Cli::try_parse_from(["sockwatch", "top", "--states"]).is_err());
    }

    #[test]
    fn workload_filter_options() {
        use crate::filter::WorkloadMatch;
        let f = trace_filter(&["--container", "3F4E8d"]).unwrap();
        assert_eq!(f.workload, Some(WorkloadMatch::Container("3f4e8d".into())));
        let f = trace_filter(&["--pod", "shop/web-0"]).unwrap();
        assert_eq!(
            f.workload,
            Some(WorkloadMatch::Pod {
                namespace: Some("shop".into()),
                name: "web-0".into()
            })
        );
        let f = trace_filter(&["--unit", "nginx.service"]).unwrap();
        assert_eq!(
            f.workload,
            Some(WorkloadMatch::Unit("nginx.service".into()))
        );
        assert_eq!(trace_filter(&[]).unwrap().workload, None);

        let e = trace_filter(&["--container", "xyz"]).unwrap_err();
        assert!(
            e.contains("for '--container <ID-PREFIX>': 'xyz' is not a container id: give 1 to 64 hex digits"),
            "{e}"
        );
        let e = trace_filter(&["--pod", "Shop/web_0"]).unwrap_err();
        assert!(
            e.contains("'Shop/web_0' is not a pod: give NAME or NAMESPACE/NAME"),
            "{e}"
        );
        let e = trace_filter(&["--pod", "shop/"]).unwrap_err();
        assert!(e.contains("is not a pod"), "{e}");
        let e = trace_filter(&["--unit", "nginx"]).unwrap_err();
        assert!(e.contains("'nginx' is not a systemd unit"), "{e}");
        // One workload at a time, and not with --cgroup.
        let e = trace_filter(&["--pod", "web-0", "--unit", "a.service"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = trace_filter(&["--container", "ab", "--pod", "web-0"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        // The pods directory is the kubelet's unless told.
        let cli =
            Cli::try_parse_from(["sockwatch", "top", "--pods-dir", "/host/var/log/pods"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Top(t)) if t.run.pods_dir == std::path::Path::new("/host/var/log/pods"))
        );
        let cli = Cli::try_parse_from(["sockwatch", "trace"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Trace(t)) if t.run.pods_dir == std::path::Path::new("/var/log/pods"))
        );
        // Filters on recorded names.
        assert!(Cli::try_parse_from(["sockwatch", "report", "f", "--pod", "web-0"]).is_ok());
    }
}
