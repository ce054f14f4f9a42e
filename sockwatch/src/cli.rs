//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{loader::LoadOptions, sink::Format};

#[derive(Debug, Parser)]
#[command(
    name = "sockwatch",
    version,
    about = "Trace TCP connections on this host with eBPF: who connects, who listens, how long \
             connections live",
    long_about = None,
    after_help = "sockwatch must run as root. Examples:\n  \
                  sockwatch trace\n  \
                  sockwatch trace --output conns.jsonl --format jsonl --duration 60"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every connection event as it happens: connect, established, close (with its
    /// duration), listen and listen_stop.
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Write events to PATH (created or truncated) instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Output format: aligned text for people, or JSON Lines (one object per event).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stop by itself after SECONDS (default: run until Ctrl-C or SIGTERM).
    #[arg(short, long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,

    /// Create PATH, holding sockwatch's pid, once every program is attached: from then on no
    /// event is missed. For scripts and tests.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    #[command(flatten)]
    pub kernel: KernelArgs,
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
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_size: u32,
}

impl KernelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_sockets: self.max_sockets,
            ring_bytes: self.ring_size,
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
        let Command::Trace(t) = cli.command;
        assert_eq!(t.format, Format::Text);
        assert_eq!(t.kernel.max_sockets, 1 << 20);
        assert_eq!(t.kernel.ring_size, 8 << 20);
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["sockwatch", "trace", "--max-sockets", "10"]).is_err());
    }
}
