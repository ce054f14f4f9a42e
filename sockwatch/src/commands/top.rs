//! `sockwatch top`: the live per-port table, or one JSON summary at the end.
use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context as _;
use sockwatch_common::{Mode, kind};

use crate::{
    cli::{SummaryFormat, TopArgs},
    clock::{WallClock, write_time_of_day},
    commands::session::{self, Export, Outcome, SessionOptions},
    commands::view,
    kernel::loader::{self, LoadOptions},
    metrics::server,
    record::rotate,
    record::sink::{self, FileHeader, Format, JsonlSink},
};

/// Rows per table on screen.
const MAX_ROWS: usize = 20;

/// Starts the line naming what this kernel does not let sockwatch see.
pub const NOT_SEEN: &str = "not seen on this kernel";

/// `top` counts in the kernel, so that its counts stay exact whatever the ring buffer loses.
/// The ring carries what the counters cannot: listeners' addresses and owners, and untracked
/// sockets; with `--output`, every event, for the recording.
pub fn counting_mode(recording: bool) -> Mode {
    Mode {
        count: 1,
        ring_kinds: if recording {
            u32::MAX
        } else {
            1 << kind::LISTEN | 1 << kind::LISTEN_STOP
        },
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<Outcome> {
    // First: a taken port must not cost an existing --output file its contents.
    let mut metrics = server::start(args.run.metrics).await?;
    let load = LoadOptions {
        mode: counting_mode(args.output.is_some()),
        ..args.run.kernel.load_options(if args.output.is_some() {
            crate::cli::RING_SIZE_ALL_EVENTS
        } else {
            crate::cli::RING_SIZE_COUNTING
        })
    };
    // Before the output: its header says what this kernel lets the run see.
    let kernel = loader::inspect(&load)?;
    let mut filter = args.filter.filter();
    // Before the output too: a workload that matches nothing fails fast.
    let workloads = session::workloads(&mut filter, &args.run.pods_dir)?;
    kernel.supports(&filter)?;
    // Under the live table's first line (and after the final tables) while anything is missing.
    let not_seen = view::not_seen(kernel.capabilities.to_json().as_object(), NOT_SEEN);
    let mut worker = None;
    let export = match &args.output {
        Some(path) => {
            let clock = WallClock::new();
            let header = FileHeader {
                format: Format::Jsonl,
                started_unix_ns: clock.unix_ns(WallClock::monotonic_now()),
                capabilities: Some(sink::leak_capabilities(&kernel.capabilities)),
            };
            let (file, w) =
                rotate::open(path, args.follow_symlinks, header, args.rotate.rotation())?;
            worker = w;
            Some(Export {
                sink: Box::new(JsonlSink::new(file, clock)),
                flush_each_batch: false,
                samples: true,
            })
        }
        None => None,
    };
    if let Some(m) = &metrics {
        m.announce();
    }
    let tty = io::stdout().is_terminal();
    let live = args.format == SummaryFormat::Table;
    let clock = WallClock::new();
    let interval = args.run.interval;
    let mut last_accepted = 0u64;
    let outcome = session::run(
        SessionOptions {
            load,
            kernel,
            duration: args.run.duration.map(Duration::from_secs),
            ready_file: args.run.ready_file,
            expire_interval: Duration::from_secs(args.run.expire_interval),
            workloads,
            interval: Duration::from_secs_f64(interval),
            filter,
            export,
            aggregate: true,
        },
        |summary, events, loss| {
            if let Some(m) = &mut metrics {
                m.publish(summary, events, loss);
            }
            if !live {
                return;
            }
            let mut out = Vec::new();
            if tty {
                // Clear the screen and go home: a full redraw each interval.
                out.extend_from_slice(b"\x1b[2J\x1b[H");
            }
            let _ = write_time_of_day(&mut out, clock.unix_ns(WallClock::monotonic_now()));
            let accepted: u64 = summary.listeners.iter().map(|l| l.accepted).sum();
            // Counted in the kernel, few events reach this process: the rate that tells is of
            // connections accepted.
            let rate = accepted.saturating_sub(last_accepted) as f64 / interval;
            last_accepted = accepted;
            let open: u64 = summary
                .listeners
                .iter()
                .map(|l| l.established_now)
                .sum::<u64>()
                + summary.outbound.iter().map(|o| o.open_now).sum::<u64>();
            let _ = writeln!(
                out,
                " UTC  listeners: {}  accepted: {accepted} ({rate:.0}/s)  open: {open}  lost: {}",
                summary.listeners.len(),
                loss.total()
            );
            if let Some(line) = &not_seen {
                out.extend_from_slice(line.as_bytes());
            }
            out.extend_from_slice(view::render(summary, MAX_ROWS).as_bytes());
            if !tty {
                out.push(b'\n');
            }
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        },
    )
    .await;
    // The output file is closed by now: let pending compressions finish, error or not.
    if let Some(worker) = worker {
        for warning in worker.finish(rotate::FINISH_WAIT).warnings() {
            eprintln!("sockwatch: {warning}");
        }
    }
    let outcome = outcome?;
    if let Some(summary) = &outcome.summary {
        match args.format {
            SummaryFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(
                    &summary.with_capabilities(outcome.capabilities.as_ref())
                )
                .context("formatting the summary")?
            ),
            SummaryFormat::Table => {
                print!("{}", view::render(summary, usize::MAX));
                if let Some(line) = &not_seen {
                    print!("\n{line}");
                }
            }
        }
    }
    Ok(outcome)
}
