//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    decode::Family,
    filter::{self, Filter},
    loader::LoadOptions,
    sink::Format,
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

    /// Also report every TCP state transition (old and new state, like tcpstates) as `state`
    /// events. Off by default: it costs an event per transition, about ten per connection.
    #[arg(long)]
    pub states: bool,

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

    /// Create PATH, holding sockwatch's pid, once every program is attached: from then on no
    /// event is missed. For scripts and tests.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

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
}

impl KernelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_sockets: self.max_sockets,
            ring_bytes: self.ring_size,
            states: false,
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
}
