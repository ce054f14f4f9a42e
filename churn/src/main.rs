//! `sockwatch-churn`: a connection-churn load generator for benchmarking sockwatch.
//!
//! It opens and closes TCP connections on loopback as fast as it can from several client
//! processes to several SO_REUSEPORT server processes (or, with `--hold`, opens many and keeps
//! them open), and prints one JSON line with the rate.
//!
//! # Why blocking threads rather than epoll
//!
//! Each in-flight connection is one thread doing blocking calls. On loopback the kernel runs the
//! whole handshake inside the client's connect() (the SYN, SYN-ACK and ACK are delivered by
//! softirq on the same CPU before connect() returns), and the peer's FIN or RST arrives just as
//! synchronously, so a thread rarely sleeps: the cost per connection is the syscalls themselves,
//! which an epoll state machine would need too (plus epoll_ctl/epoll_wait on top). Threads keep
//! each close mode a few straight lines of code, and --in-flight is simply the number of
//! threads. Held connections (`--hold`) need no thread: their descriptors are just kept.
//!
//! # Processes
//!
//! The process you start is the coordinator (see `coord`); the servers and clients are this
//! same binary re-executed with a hidden `--role`, talking to it over their stdin and stdout.
mod client;
mod coord;
mod net;
mod opts;
mod server;

use std::process::ExitCode;

use clap::Parser as _;

use opts::{Opts, Role};

fn main() -> ExitCode {
    let o = Opts::parse();
    let result = match o.role {
        None => coord::run(&o),
        Some(Role::Client) => client::run(&o),
        Some(Role::Server) => server::run(&o),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockwatch-churn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
