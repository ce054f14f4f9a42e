//! Runs the chosen subcommand.
use anyhow::Context as _;

use crate::{
    check,
    cli::{Cli, Command},
    kernel::loader,
    kernel::tracefs,
    report,
    session::Outcome,
    top, trace,
};

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
