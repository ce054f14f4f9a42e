//! `sockwatch report FILE|DIR...`: the summary of recorded JSON Lines (plain, rotated or
//! compressed; files in time order: see [`recordings`]), with the very aggregation the live
//! view uses.
//!
//! Any input is survivable: a file cut short, empty, binary or edited by hand gives at worst
//! lines skipped with the reason on stderr (or, with `--strict`, an error at the first of them).
use std::{
    io::{self, BufRead, Read as _},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    aggregate::{Aggregator, Summary},
    cli::{ReportArgs, SummaryFormat},
    commands::view,
    feed,
    filter::Filter,
    record::recordings::{self, MAX_LINE_BYTES, display_name, one_line},
};

/// Lines that could not be used are reported on stderr (at most this many) and skipped.
const MAX_LINE_ERRORS_SHOWN: u64 = 10;

/// Starts the line naming what the recorded kernel did not let sockwatch see.
pub const NOT_SEEN: &str = "not seen in this recording";

pub struct Read {
    pub summary: Summary,
    /// What the kernel let the recorded runs see (their headers' merged), when known.
    pub capabilities: Option<serde_json::Map<String, serde_json::Value>>,
    pub bad_lines: u64,
}

/// A line of a file as read: its bytes, or too long to keep.
enum Line {
    Text { ended: bool },
    TooLong,
}

/// Reads the next line into `buf` (newline removed), keeping at most `MAX_LINE_BYTES` of it in
/// memory. `None` at the end of the input.
fn next_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<Line>> {
    buf.clear();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(Line::Text { ended: true }));
    }
    if n as u64 == limit {
        // More than the limit and no newline yet: drop the rest of the line unread.
        buf.clear();
        input.skip_until(b'\n')?;
        return Ok(Some(Line::TooLong));
    }
    // The last line of the input, without a newline.
    Ok(Some(Line::Text { ended: false }))
}

/// A line that cannot be used: why, and whether the whole file is unreadable.
struct Unusable {
    why: String,
    fatal: bool,
    /// Nothing after it can be read.
    ends_file: bool,
}

/// Why a line cannot be used, if it cannot.
fn feed_line(agg: &mut Aggregator, filter: &Filter, line: &Line, bytes: &[u8]) -> Option<Unusable> {
    let ended = match line {
        Line::TooLong => {
            return Some(Unusable {
                why: format!("line longer than {MAX_LINE_BYTES} bytes"),
                fatal: false,
                ends_file: false,
            });
        }
        Line::Text { ended } => *ended,
    };
    let (why, fatal) = match std::str::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => return None,
        Ok(text) => {
            let e = feed::exported_line(agg, filter, text).err()?;
            (e.to_string(), e.is_fatal())
        }
        Err(_) => ("not UTF-8 text".to_string(), false),
    };
    let why = if ended {
        why
    } else {
        format!("{why} (the last line has no newline: was the file cut short?)")
    };
    Some(Unusable {
        why,
        fatal,
        ends_file: false,
    })
}

fn read_file(
    path: &Path,
    args: &ReportArgs,
    agg: &mut Aggregator,
    filter: &Filter,
    bad_lines: &mut u64,
) -> anyhow::Result<()> {
    let name = display_name(path);
    let (mut input, compressed) =
        recordings::open(path).with_context(|| format!("cannot open {name}"))?;
    let mut buf = Vec::new();
    for n in 1u64.. {
        let unusable = match next_line(&mut input, &mut buf) {
            Ok(None) => break,
            Ok(Some(line)) => match feed_line(agg, filter, &line, &buf) {
                Some(u) => u,
                None => continue,
            },
            // Damaged compressed data ends the file, as a cut-short plain file would: the
            // lines before it count.
            Err(e) if compressed.is_some() => Unusable {
                why: format!("compressed data damaged or cut short ({e}); the rest is skipped"),
                fatal: false,
                ends_file: true,
            },
            Err(e) => return Err(e).with_context(|| format!("cannot read {name}")),
        };
        let why = one_line(&unusable.why);
        if args.strict || unusable.fatal {
            anyhow::bail!("{name}:{n}: {why}");
        }
        *bad_lines += 1;
        if *bad_lines <= MAX_LINE_ERRORS_SHOWN {
            eprintln!("sockwatch: {name}:{n}: skipped: {why}");
        }
        if unusable.ends_file {
            break;
        }
    }
    Ok(())
}

pub fn read(args: &ReportArgs) -> anyhow::Result<Read> {
    let filter = args.filter.filter();
    let mut agg = Aggregator::new();
    let mut bad_lines = 0u64;
    let files = recordings::collect(&args.files, |note| eprintln!("sockwatch: {note}"))?;
    for file in &files {
        read_file(&file.path, args, &mut agg, &filter, &mut bad_lines)?;
    }
    if bad_lines > MAX_LINE_ERRORS_SHOWN {
        eprintln!("sockwatch: {bad_lines} lines skipped in all");
    }
    Ok(Read {
        summary: agg.summary(),
        capabilities: agg.capabilities().cloned(),
        bad_lines,
    })
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let read = read(&args)?;
    match args.format {
        SummaryFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &read.summary.with_capabilities(read.capabilities.as_ref())
            )
            .context("formatting the summary")?
        ),
        SummaryFormat::Table => {
            print!("{}", view::render(&read.summary, usize::MAX));
            if let Some(line) = view::not_seen(read.capabilities.as_ref(), NOT_SEEN) {
                print!("\n{line}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<(Vec<u8>, &'static str)> {
        let mut r = io::BufReader::with_capacity(64, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = next_line(&mut r, &mut buf).unwrap() {
            let tag = match l {
                Line::Text { ended: true } => "ended",
                Line::Text { ended: false } => "cut",
                Line::TooLong => "long",
            };
            out.push((buf.clone(), tag));
        }
        out
    }

    #[test]
    fn lines_are_split_and_capped() {
        assert!(lines(b"").is_empty());
        assert_eq!(
            lines(b"a\n\nbc"),
            vec![
                (b"a".to_vec(), "ended"),
                (b"".to_vec(), "ended"),
                (b"bc".to_vec(), "cut")
            ]
        );
        let mut big = vec![b'x'; MAX_LINE_BYTES];
        big.push(b'\n');
        big.extend(vec![b'y'; MAX_LINE_BYTES + 1]);
        big.extend(b"\nok\n");
        big.extend(vec![b'z'; MAX_LINE_BYTES + 5]);
        let got = lines(&big);
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].0.len(), got[0].1), (MAX_LINE_BYTES, "ended"));
        assert_eq!(got[1], (Vec::new(), "long"));
        assert_eq!(got[2], (b"ok".to_vec(), "ended"));
        assert_eq!(got[3], (Vec::new(), "long"));
    }

    #[test]
    fn reasons_stay_on_one_line() {
        assert_eq!(one_line("a\nb\u{0}c\té"), "a\\nb\\u{0}c\\té");
    }
}
