//! `sockwatch top`: the live per-port table, or one JSON summary at the end.
use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    cli::{SummaryFormat, TopArgs},
    clock::{WallClock, write_time_of_day},
    committed::CommittedFile,
    output,
    session::{self, Export, Outcome, SessionOptions},
    sink::JsonlSink,
    view,
};

/// Rows per table on screen.
const MAX_ROWS: usize = 20;

pub async fn run(args: TopArgs) -> anyhow::Result<Outcome> {
    let export = match &args.output {
        Some(path) => {
            let file = output::create(path, args.follow_symlinks)?;
            Some(Export {
                sink: Box::new(JsonlSink::new(
                    CommittedFile::new(file, path.clone()),
                    WallClock::new(),
                )),
                flush_each_batch: false,
                samples: true,
            })
        }
        None => None,
    };
    let tty = io::stdout().is_terminal();
    let live = args.format == SummaryFormat::Table;
    let clock = WallClock::new();
    let interval = args.run.interval;
    let mut last_events = 0u64;
    let outcome = session::run(
        SessionOptions {
            load: args.run.kernel.load_options(),
            duration: args.run.duration.map(Duration::from_secs),
            ready_file: args.run.ready_file,
            expire_interval: Duration::from_secs(args.run.expire_interval),
            interval: Duration::from_secs_f64(interval),
            filter: args.filter.filter(),
            export,
            aggregate: true,
        },
        |summary, events, loss| {
            if !live {
                return;
            }
            let mut out = Vec::new();
            if tty {
                // Clear the screen and go home: a full redraw each interval.
                out.extend_from_slice(b"\x1b[2J\x1b[H");
            }
            let _ = write_time_of_day(&mut out, clock.unix_ns(WallClock::monotonic_now()));
            let rate = (events - last_events) as f64 / interval;
            last_events = events;
            let accepted: u64 = summary.listeners.iter().map(|l| l.accepted).sum();
            let open: u64 = summary
                .listeners
                .iter()
                .map(|l| l.established_now)
                .sum::<u64>()
                + summary.outbound.iter().map(|o| o.open_now).sum::<u64>();
            let _ = writeln!(
                out,
                " UTC  listeners: {}  accepted: {accepted}  open: {open}  events: {events} \
                 ({rate:.0}/s)  lost: {}",
                summary.listeners.len(),
                loss.total()
            );
            out.extend_from_slice(view::render(summary, MAX_ROWS).as_bytes());
            if !tty {
                out.push(b'\n');
            }
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        },
    )
    .await?;
    if let Some(summary) = &outcome.summary {
        match args.format {
            SummaryFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(summary).context("formatting the summary")?
            ),
            SummaryFormat::Table => print!("{}", view::render(summary, usize::MAX)),
        }
    }
    Ok(outcome)
}
