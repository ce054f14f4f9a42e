//! `sockwatch report FILE...`: the summary of recorded JSON Lines, with the very aggregation the
//! live view uses.
use std::{
    fs::File,
    io::{BufRead, BufReader},
};

use anyhow::Context as _;

use crate::{
    aggregate::{Aggregator, Summary},
    cli::{ReportArgs, SummaryFormat},
    feed::{self, Fed},
    view,
};

/// Lines that could not be used are reported on stderr (at most this many) and skipped.
const MAX_LINE_ERRORS_SHOWN: u64 = 10;

pub struct Read {
    pub summary: Summary,
    pub bad_lines: u64,
}

pub fn read(args: &ReportArgs) -> anyhow::Result<Read> {
    let filter = args.filter.filter();
    let mut agg = Aggregator::new();
    let mut bad_lines = 0u64;
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            let result = match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => feed::exported_line(&mut agg, &filter, text).map_err(|e| e.to_string()),
                Err(_) => Err("not UTF-8 text".to_string()),
            };
            if let Err(why) = result {
                bad_lines += 1;
                if bad_lines <= MAX_LINE_ERRORS_SHOWN {
                    eprintln!("sockwatch: {}:{}: skipped: {why}", path.display(), n + 1);
                }
            } else if let Ok(Fed::Lost(_)) = result {
                // Nothing more to do: the loss is part of the summary.
            }
        }
    }
    if bad_lines > MAX_LINE_ERRORS_SHOWN {
        eprintln!("sockwatch: {bad_lines} lines skipped in all");
    }
    Ok(Read {
        summary: agg.summary(),
        bad_lines,
    })
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let read = read(&args)?;
    match args.format {
        SummaryFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&read.summary).context("formatting the summary")?
        ),
        SummaryFormat::Table => print!("{}", view::render(&read.summary, usize::MAX)),
    }
    Ok(())
}
