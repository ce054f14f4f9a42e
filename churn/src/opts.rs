//! Command-line options, and the sizing of `--hold` runs (pure, unit-tested).
use clap::{Parser, ValueEnum};

/// Who closes a connection, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloseMode {
    /// The server closes right after accept(); the client reads EOF, then closes.
    ServerFirst,
    /// The client closes right after connect(); the server reads EOF, then closes.
    ClientFirst,
    /// The client closes with SO_LINGER 0 (a RST); the server reads the reset, then closes.
    Reset,
}

impl CloseMode {
    pub fn name(self) -> &'static str {
        match self {
            CloseMode::ServerFirst => "server-first",
            CloseMode::ClientFirst => "client-first",
            CloseMode::Reset => "reset",
        }
    }
}

/// What a process of the run is; the user only ever starts the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Server,
    Client,
}

#[derive(Debug, Parser)]
#[command(
    name = "sockwatch-churn",
    version,
    about = "Open and close TCP connections on loopback as fast as possible (or hold many open), \
             to measure what tracing them costs",
    after_help = "Prints one JSON line at the end: \
                  {\"connections\":N,\"seconds\":S,\"rate\":R,\"errors\":E,\"port\":P,\"netns\":INODE,\"timed_out\":false}"
)]
pub struct Opts {
    /// Connections in total (with --hold: connections to open and keep open).
    #[arg(long, value_name = "N", default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,

    /// Connections in progress at once in each client process (one thread each).
    #[arg(long, value_name = "C", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub in_flight: u32,

    /// Client processes (--hold raises it so that each stays under its open-file limit).
    #[arg(long, value_name = "J", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,

    /// Server processes, each with its own SO_REUSEPORT listener on the port (--hold raises it
    /// like --clients).
    #[arg(long, value_name = "K", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub servers: u32,

    /// Who closes first; `reset` aborts from the client with SO_LINGER 0.
    #[arg(long, value_enum, default_value_t = CloseMode::ServerFirst)]
    pub close: CloseMode,

    /// Spread client source addresses over 127.0.0.1 .. 127.0.0.M, so that many connections do
    /// not run out of ephemeral ports (--hold raises it when needed).
    #[arg(long, value_name = "M", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=254))]
    pub sources: u32,

    /// Server port on 127.0.0.1; 0 picks a free one (printed in the JSON line).
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub port: u16,

    /// Hard time bound for the whole run: stop early (saying so on stderr and with
    /// "timed_out":true) when it is reached.
    #[arg(long, value_name = "S", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_seconds: u64,

    /// At most R new connections per second in all (spread evenly over the clients); without
    /// it, as fast as possible. For steady, long runs (soak tests).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: Option<u64>,

    /// Open --connections connections and keep them all open until standard input is closed;
    /// prints `held N` once they are all established (and accepted).
    #[arg(long)]
    pub hold: bool,

    /// Run in a new network namespace of its own (with its loopback up); needs root.
    #[arg(long, conflicts_with = "netns")]
    pub new_netns: bool,

    /// Run in the network namespace at PATH (e.g. /proc/PID/ns/net of a process that keeps it
    /// alive after this run), with its loopback brought up; needs root.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<std::path::PathBuf>,

    /// Internal: the role of a child process.
    #[arg(long, value_enum, hide = true)]
    pub role: Option<Role>,

    /// Internal: global index of a client's first connection (spreads the sources).
    #[arg(long, hide = true, default_value_t = 0)]
    pub first: u64,

    /// Internal: a child's time budget, in milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    pub budget_ms: u64,
}

/// Open descriptors kept free in each process for everything but held connections.
pub const FD_RESERVE: u64 = 64;

/// Process and source counts for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub clients: u32,
    pub servers: u32,
    pub sources: u32,
    /// Why a count was raised above what was asked for.
    pub notes: Vec<String>,
}

impl Plan {
    /// `fd_limit`: the open-file limit of each process; `ports`: the size of the ephemeral port
    /// range. Only --hold needs sizing: a churned connection lives a moment, a held one keeps a
    /// descriptor in a client and one in a server, and an ephemeral port of its source address.
    pub fn new(o: &Opts, fd_limit: u64, ports: u64) -> anyhow::Result<Plan> {
        let mut plan = Plan {
            clients: o.clients,
            servers: o.servers,
            sources: o.sources,
            notes: Vec::new(),
        };
        if !o.hold {
            return Ok(plan);
        }
        let per_process = fd_limit.saturating_sub(FD_RESERVE);
        if per_process < 100 {
            anyhow::bail!(
                "the open-file limit ({fd_limit}) is too low to hold connections; raise it (ulimit -n)"
            );
        }
        let n = o.connections;
        // Clients take exact shares; SO_REUSEPORT spreads connections over servers by a hash,
        // so servers keep a margin.
        let clients = n.div_ceil(per_process);
        let servers = n.div_ceil(per_process * 9 / 10);
        // connect() searches the ephemeral range for a free port per source: measured on
        // 6.18, holding 70% of a source's range makes each connect ten times slower than
        // holding 15%, so keep well under a quarter.
        let ports_per_source = (ports / 4).max(1);
        let sources = n.div_ceil(ports_per_source);
        if sources > 254 {
            anyhow::bail!(
                "{n} connections need more than 254 source addresses ({ports} ephemeral ports each)"
            );
        }
        if clients > u64::from(plan.clients) {
            plan.clients = clients as u32;
            plan.notes.push(format!(
                "using {clients} client processes to hold {n} connections (open-file limit {fd_limit} each)"
            ));
        }
        if servers > u64::from(plan.servers) {
            plan.servers = servers as u32;
            plan.notes.push(format!(
                "using {servers} server processes to hold {n} connections (open-file limit {fd_limit} each)"
            ));
        }
        if sources > u64::from(plan.sources) {
            plan.sources = sources as u32;
            plan.notes.push(format!(
                "using {sources} source addresses to hold {n} connections ({ports} ephemeral ports each)"
            ));
        }
        Ok(plan)
    }
}

/// When a client's `i`th connection may start, at `rate` per second (its share of --rate):
/// evenly spaced from the client's start, so a late one is not followed by a burst.
pub fn start_offset(i: u64, rate: u64) -> std::time::Duration {
    std::time::Duration::from_nanos(
        (u128::from(i) * 1_000_000_000 / u128::from(rate.max(1))).min(u128::from(u64::MAX)) as u64,
    )
}

/// Client `j`'s share of `n` connections over `clients`, and the global index of its first.
pub fn share(n: u64, clients: u32, j: u32) -> (u64, u64) {
    let (base, extra) = (n / u64::from(clients), n % u64::from(clients));
    let j = u64::from(j);
    let count = base + u64::from(j < extra);
    let first = j * base + j.min(extra);
    (count, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("sockwatch-churn").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Opts::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.connections, 200_000);
        assert_eq!(o.in_flight, 64);
        assert_eq!((o.clients, o.servers, o.sources), (2, 2, 4));
        assert_eq!(o.close, CloseMode::ServerFirst);
        assert_eq!(o.port, 0);
        assert_eq!(o.max_seconds, 600);
        assert!(!o.hold && !o.new_netns);
        assert_eq!(o.role, None);
    }

    #[test]
    fn every_option() {
        let o = parse(&[
            "--connections",
            "5000",
            "--in-flight",
            "8",
            "--clients",
            "3",
            "--servers",
            "5",
            "--close",
            "reset",
            "--sources",
            "16",
            "--port",
            "9000",
            "--max-seconds",
            "30",
            "--hold",
            "--new-netns",
        ])
        .unwrap();
        assert_eq!(o.connections, 5000);
        assert_eq!(o.in_flight, 8);
        assert_eq!((o.clients, o.servers, o.sources), (3, 5, 16));
        assert_eq!(o.close, CloseMode::Reset);
        assert_eq!(o.port, 9000);
        assert_eq!(o.max_seconds, 30);
        assert!(o.hold && o.new_netns);
        let o = parse(&["--netns", "/proc/1/ns/net"]).unwrap();
        assert_eq!(
            o.netns.as_deref(),
            Some(std::path::Path::new("/proc/1/ns/net"))
        );
        assert!(parse(&["--netns", "/proc/1/ns/net", "--new-netns"]).is_err());
        assert_eq!(parse(&["--rate", "500"]).unwrap().rate, Some(500));
        assert_eq!(o.rate, None);
        for (arg, mode) in [
            ("server-first", CloseMode::ServerFirst),
            ("client-first", CloseMode::ClientFirst),
            ("reset", CloseMode::Reset),
        ] {
            assert_eq!(parse(&["--close", arg]).unwrap().close, mode);
            assert_eq!(mode.name(), arg);
        }
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--connections", "0"][..],
            &["--connections", "-1"],
            &["--in-flight", "0"],
            &["--clients", "0"],
            &["--servers", "0"],
            &["--sources", "0"],
            &["--sources", "255"],
            &["--port", "65536"],
            &["--max-seconds", "0"],
            &["--rate", "0"],
            &["--close", "later"],
            &["--role", "driver"],
            &["--bogus"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hidden_child_options() {
        let o = parse(&["--role", "client", "--first", "100", "--budget-ms", "2500"]).unwrap();
        assert_eq!(o.role, Some(Role::Client));
        assert_eq!((o.first, o.budget_ms), (100, 2500));
        let help = Opts::command().render_help().to_string();
        assert!(!help.contains("--role") && !help.contains("--budget-ms"));
    }

    #[test]
    fn shares_cover_everything_once() {
        for (n, j) in [(10, 3), (200, 2), (1, 4), (7, 7), (100_001, 13)] {
            let mut next = 0;
            for c in 0..j {
                let (count, first) = share(n, j, c);
                assert_eq!(first, next);
                next += count;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn rate_spaces_starts_evenly() {
        use std::time::Duration;
        assert_eq!(start_offset(0, 100), Duration::ZERO);
        assert_eq!(start_offset(1, 100), Duration::from_millis(10));
        assert_eq!(start_offset(250, 100), Duration::from_millis(2500));
        assert_eq!(start_offset(3, 0), Duration::from_secs(3));
    }

    #[test]
    fn churn_is_not_resized() {
        let o = parse(&["--connections", "10000000"]).unwrap();
        let p = Plan::new(&o, 1024, 28232).unwrap();
        assert_eq!((p.clients, p.servers, p.sources), (2, 2, 4));
        assert!(p.notes.is_empty());
    }

    #[test]
    fn hold_sizing_respects_fd_limit_and_ports() {
        let o = parse(&["--hold", "--connections", "250000"]).unwrap();
        let p = Plan::new(&o, 20000, 28232).unwrap();
        let per = 20000 - FD_RESERVE;
        assert!(u64::from(p.clients) * per >= 250_000);
        assert!(u64::from(p.servers) * per * 9 / 10 >= 250_000);
        assert!(u64::from(p.sources) * 28232 / 4 >= 250_000);
        assert_eq!((p.clients, p.servers, p.sources), (13, 14, 36));
        assert_eq!(p.notes.len(), 3);

        // Small runs keep what was asked for.
        let o = parse(&["--hold", "--connections", "1000", "--clients", "3"]).unwrap();
        let p = Plan::new(&o, 20000, 28232).unwrap();
        assert_eq!((p.clients, p.servers, p.sources), (3, 2, 4));
        assert!(p.notes.is_empty());

        // Too many for the address plan, or a limit too low to hold anything.
        let o = parse(&["--hold", "--connections", "2000000"]).unwrap();
        assert!(Plan::new(&o, 20000, 28232).is_err());
        let o = parse(&["--hold", "--connections", "10"]).unwrap();
        assert!(Plan::new(&o, 100, 28232).is_err());
    }
}
