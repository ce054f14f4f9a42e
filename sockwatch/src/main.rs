use std::process::ExitCode;

use clap::Parser as _;
use sockwatch::{cli::Cli, commands};

fn main() -> ExitCode {
    match commands::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
