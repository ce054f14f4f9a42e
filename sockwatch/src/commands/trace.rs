//! `sockwatch trace`: every event, as text, JSON Lines or CSV.
use std::io::{self, BufWriter, IsTerminal, Write};

use anyhow::Context as _;

use crate::{
    cli::TraceArgs,
    clock::WallClock,
    commands::session::{self, Export, Outcome, SessionOptions},
    kernel::loader::{self, LoadOptions},
    metrics::server,
    record::rotate,
    record::sink::{self, FileHeader, Format},
};

pub async fn run(args: TraceArgs) -> anyhow::Result<Outcome> {
    // First: a taken port must not cost an existing --output file its contents.
    let mut metrics = server::start(args.run.metrics).await?;
    let load = LoadOptions {
        states: args.states,
        ..args
            .run
            .kernel
            .load_options(crate::cli::RING_SIZE_ALL_EVENTS)
    };
    // Before the output: its header says what this kernel lets the run see.
    let kernel = loader::inspect(&load)?;
    let mut filter = args.filter.filter();
    // Before the output too: a workload that matches nothing fails fast.
    let workloads = session::workloads(&mut filter, &args.run.pods_dir)?;
    kernel.supports(&filter)?;
    let clock = WallClock::new();
    let header = FileHeader {
        format: args.format,
        started_unix_ns: clock.unix_ns(WallClock::monotonic_now()),
        capabilities: Some(sink::leak_capabilities(&kernel.capabilities)),
    };
    // Open the output before touching the kernel, so a bad path fails fast.
    let (out, worker, interactive): (Box<dyn Write>, _, bool) = match &args.output {
        Some(path) => {
            let (file, worker) =
                rotate::open(path, args.follow_symlinks, header, args.rotate.rotation())?;
            (Box::new(file), worker, false)
        }
        None => {
            let mut out = BufWriter::new(io::stdout());
            header
                .write(&mut out, header.started_unix_ns, 1)
                .context("cannot write output")?;
            (Box::new(out), None, io::stdout().is_terminal())
        }
    };
    let sink = sink::make(args.format, out, clock);
    if let Some(m) = &metrics {
        m.announce();
    }
    if interactive || args.output.is_some() {
        eprintln!("sockwatch: tracing TCP connections; Ctrl-C to stop");
    }
    let outcome = session::run(
        SessionOptions {
            load,
            kernel,
            duration: args.run.duration.map(std::time::Duration::from_secs),
            ready_file: args.run.ready_file,
            interval: std::time::Duration::from_secs_f64(args.run.interval),
            expire_interval: std::time::Duration::from_secs(args.run.expire_interval),
            workloads,
            filter,
            export: Some(Export {
                sink,
                flush_each_batch: interactive,
                samples: args.format == Format::Jsonl,
            }),
            // Always: the aggregator's table of open connections is what finds a close the
            // kernel never reported (see `Expiry`), written as an `expired` record, so that
            // every connection in the file ends. The metrics come from its summary too.
            aggregate: true,
        },
        |summary, events, loss| {
            if let Some(m) = &mut metrics {
                m.publish(summary, events, loss);
            }
        },
    )
    .await;
    // The output file is closed by now: let pending compressions finish, error or not.
    if let Some(worker) = worker {
        for warning in worker.finish(rotate::FINISH_WAIT).warnings() {
            eprintln!("sockwatch: {warning}");
        }
    }
    outcome
}
