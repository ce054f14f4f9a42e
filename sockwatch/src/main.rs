use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use sockwatch::{
    cli::{Cli, Command},
    loader,
    trace::{self, TraceOptions},
    tracefs,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => {
            loader::require_root()?;
            // Before any thread exists: it may need to unshare a mount namespace.
            tracefs::ensure()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the event loop")?;
            let (quiet, loss) = runtime.block_on(trace::run(TraceOptions {
                output: args.output,
                format: args.format,
                duration: args.duration.map(Duration::from_secs),
                ready_file: args.ready_file,
                load: args.kernel.load_options(),
            }))?;
            eprintln!("sockwatch: {quiet}");
            eprintln!("sockwatch: {loss}");
            Ok(())
        }
    }
}
