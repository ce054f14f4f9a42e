//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{decode::Family, filter::Filter, loader::LoadOptions, sink::Format};

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
                  sockwatch report conns.jsonl                    the summary of a recording"
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
    Trace(TraceArgs),
    /// Print the per-port summary of recorded JSON Lines files (from `trace --output`).
    Report(ReportArgs),
}

/// Summary output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// Aligned tables.
    Table,
    /// One JSON object (schema in the README).
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

    /// Output format: aligned text for people, or JSON Lines (one object per event, plus the
    /// host samples `report` needs).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// JSON Lines files written by `sockwatch trace --output` (or `top --output`).
    #[arg(required = true, value_name = "FILE")]
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

    /// How often, in seconds, `top` checks the connections it counts as open against the
    /// kernel's socket table. One missing at two checks in a row had its close missed (events
    /// lost): it is expired, and counted as lost (expired).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub expire_interval: u64,

    /// Create PATH, holding sockwatch's pid, once every program is attached: from then on no
    /// event is missed. For scripts and tests.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Filters, shared by every subcommand.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only connections with this local or remote port (repeatable).
    #[arg(short, long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only sockets owned by this process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets owned by processes with this command name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

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
    /// Sockets tracked at once in the kernel (about 100 bytes of kernel memory each). Sockets
    /// beyond it are counted as lost (sock_map_evicted).
    #[arg(long, value_name = "N", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)))]
    pub max_sockets: u32,

    /// Size of the kernel-to-user ring buffer: a power of two from 4K to 1G, with an optional
    /// K, M or G suffix. A larger ring absorbs longer bursts.
    // 32M: a churn of 100k connections/s on 2 CPUs starves the reader of CPU for the whole
    // burst; 16M overflowed there, 32M did not (see README, Performance).
    #[arg(long, value_name = "BYTES", default_value = "32M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Read the kernel's type information (BTF) from PATH: a BTF file of this very kernel, for
    /// kernels without /sys/kernel/btf/vmlinux (e.g. from the distribution's debug package).
    #[arg(long, value_name = "PATH", default_value = crate::kernel_btf::VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Where tracefs is mounted, for the syscall tracepoints' record formats (default: found,
    /// or mounted automatically).
    #[arg(long, value_name = "PATH")]
    pub tracefs: Option<PathBuf>,
}

impl KernelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_sockets: self.max_sockets,
            ring_bytes: self.ring_size,
            btf: self.btf.clone(),
            tracefs: self.tracefs.clone(),
        }
    }
}

/// Parses `8M`, `64K`, `1G` or plain bytes; the kernel wants a power of two of pages.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
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
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if !bytes.is_power_of_two() || !(4096..=(1 << 30)).contains(&bytes) {
        return Err(format!(
            "ring size must be a power of two from 4K to 1G, got {bytes} bytes"
        ));
    }
    Ok(bytes as u32)
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
    fn trace_defaults_and_validation() {
        let cli = Cli::try_parse_from(["sockwatch", "trace"]).unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        assert_eq!(t.format, Format::Text);
        assert_eq!(t.run.kernel.max_sockets, 1 << 20);
        assert_eq!(t.run.kernel.ring_size, 32 << 20);
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
}
