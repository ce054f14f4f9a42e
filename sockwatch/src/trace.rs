//! `sockwatch trace`: every event, as text or JSON Lines.
use std::io::{self, BufWriter, IsTerminal, Write};

use anyhow::Context as _;

use crate::{
    cli::TraceArgs,
    clock::WallClock,
    committed::CommittedFile,
    output,
    session::{self, Export, Outcome, SessionOptions},
    sink::{self, Format},
};

pub async fn run(args: TraceArgs) -> anyhow::Result<Outcome> {
    // Open the output before touching the kernel, so a bad path fails fast.
    let (out, interactive): (Box<dyn Write>, bool) = match &args.output {
        Some(path) => {
            let file = output::create(path, args.follow_symlinks)?;
            (Box::new(CommittedFile::new(file, path.clone())), false)
        }
        None => (
            Box::new(BufWriter::new(io::stdout())),
            io::stdout().is_terminal(),
        ),
    };
    let sink = sink::make(args.format, out, WallClock::new()).context("cannot write output")?;
    if interactive || args.output.is_some() {
        eprintln!("sockwatch: tracing TCP connections; Ctrl-C to stop");
    }
    session::run(
        SessionOptions {
            load: args.run.kernel.load_options(),
            duration: args.run.duration.map(std::time::Duration::from_secs),
            ready_file: args.run.ready_file,
            interval: std::time::Duration::from_secs_f64(args.run.interval),
            // Nothing is aggregated, so nothing is expired.
            expire_interval: std::time::Duration::from_secs(args.run.expire_interval),
            filter: args.filter.filter(),
            export: Some(Export {
                sink,
                flush_each_batch: interactive,
                samples: args.format == Format::Jsonl,
            }),
            aggregate: false,
        },
        |_, _, _| {},
    )
    .await
}
