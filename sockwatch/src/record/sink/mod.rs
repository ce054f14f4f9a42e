//! Where decoded events go: human-readable text, JSON Lines or CSV, on stdout or in a file.
mod csv;
pub mod header;
mod json_line;
mod jsonl;
mod text;

use std::io::{self, Write};

pub use csv::{COLUMNS as CSV_COLUMNS, CsvSink};
pub use jsonl::JsonlSink;
#[cfg(test)]
pub(crate) use jsonl::serde_event_line;
pub use text::TextSink;

use crate::{
    clock::WallClock,
    feed::Sample,
    host::workload::Workload,
    kernel::decode::Event,
    kernel::loss::{Loss, Quiet},
};

/// Output formats of `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per event, for people.
    Text,
    /// One JSON object per line, for programs (and `report`).
    Jsonl,
    /// One row per event with a header row, for spreadsheets and data frames.
    Csv,
}

/// What each output file (or stream) starts with: the column line of text, the header row of
/// CSV, or the JSON Lines header record (see [`header`]). Rotation writes it again at the top
/// of every new file, so each file stands on its own.
#[derive(Debug, Clone, Copy)]
pub struct FileHeader {
    pub format: Format,
    /// When the run started (the same in every file of the run).
    pub started_unix_ns: i128,
    /// What the kernel let this run see, as a JSON object (see [`crate::kernel::capabilities`]);
    /// in the JSON Lines header only. Made once per run (see [`leak_capabilities`]).
    pub capabilities: Option<&'static str>,
}

/// The capabilities' JSON text for [`FileHeader`], which is `Copy` and written again at the top
/// of every rotated file: made once per run and kept for the rest of the process.
pub fn leak_capabilities(caps: &crate::kernel::capabilities::Capabilities) -> &'static str {
    Box::leak(caps.to_json().to_string().into_boxed_str())
}

impl FileHeader {
    /// Writes the header of the run's `part`th file (from 1), begun at `at_unix_ns`.
    pub fn write(&self, out: &mut impl Write, at_unix_ns: i128, part: u64) -> io::Result<()> {
        match self.format {
            Format::Text => text::write_header(out),
            Format::Jsonl => header::write_jsonl(
                out,
                at_unix_ns,
                self.started_unix_ns,
                part,
                self.capabilities,
            ),
            Format::Csv => csv::write_header(out),
        }
    }
}

/// A destination for the event stream. Each record is written whole or not at all by the
/// sink; `flush` pushes buffered records to the writer.
pub trait Sink {
    /// An event whose owner's workload is not known (or not asked for).
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.event_in(ev, None)
    }
    /// An event with the workload its `cgroup_id` resolved to: the workload keys are written
    /// only with one, so that recordings made without a resolver keep their old shape.
    fn event_in(&mut self, ev: &Event, workload: Option<&Workload>) -> io::Result<()>;
    /// Host state the summary needs (snapshot, queue samples, ...); text output skips them.
    fn sample(&mut self, s: &Sample) -> io::Result<()>;
    /// Counts of normal outcomes that have no event (written just before the loss record).
    fn stats(&mut self, quiet: &Quiet, at_unix_ns: i128) -> io::Result<()>;
    /// The final record: what was lost, even when nothing was.
    fn lost(&mut self, loss: &Loss, at_unix_ns: i128) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Builds the sink for `format` over `out` (which already has its [`FileHeader`]).
pub fn make(format: Format, out: Box<dyn Write>, clock: WallClock) -> Box<dyn Sink> {
    match format {
        Format::Text => Box::new(TextSink::new(out, clock)),
        Format::Jsonl => Box::new(JsonlSink::new(out, clock)),
        Format::Csv => Box::new(CsvSink::new(out, clock)),
    }
}
