//! The subcommands, and what they share.
//!
//! - [`top`] (the default) and [`trace`]: live sessions, run by [`session`]; [`view`] draws the
//!   summary as text tables for `top` and `report`.
//! - [`report`]: the summary of a recording.
//! - [`check`]: what this kernel supports, and a trial load of the programs.
pub mod check;
pub mod report;
pub mod session;
pub mod top;
pub mod trace;
pub mod view;

use anyhow::Context as _;

use crate::{
    cli::{Cli, Command},
    kernel::{loader, tracefs},
};
use session::Outcome;

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // `sockwatch [OPTIONS]` is `sockwatch top [OPTIONS]`.
    let command = cli.command.unwrap_or(Command::Top(cli.top));
    match command {
        Command::Report(args) => report::run(args),
        Command::Check(args) => {
            loader::require_root()?;
            tracefs::ensure()?;
            check::run(args)
        }
        Command::Trace(args) => live(|rt| rt.block_on(trace::run(args))),
        Command::Top(args) => live(|rt| rt.block_on(top::run(args))),
    }
}

/// Prepares the host (root, tracefs) and an event loop, runs a live session, and reports what
/// it did not see.
fn live(
    session: impl FnOnce(&tokio::runtime::Runtime) -> anyhow::Result<Outcome>,
) -> anyhow::Result<()> {
    loader::require_root()?;
    // Before any thread exists: it may need to unshare a mount namespace.
    tracefs::ensure()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let outcome = session(&runtime)?;
    if let (n, Some(first)) = &outcome.sampler_errors {
        eprintln!("sockwatch: {n} host samples could not be read; first: {first}");
    }
    eprintln!("sockwatch: {}", outcome.quiet);
    eprintln!("sockwatch: {}", outcome.loss);
    Ok(())
}
