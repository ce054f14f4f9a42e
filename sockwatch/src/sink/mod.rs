//! Where decoded events go: human-readable text or JSON Lines, on stdout or in a file.
mod json_line;
mod jsonl;
mod text;

use std::io::{self, Write};

pub use jsonl::JsonlSink;
#[cfg(test)]
pub(crate) use jsonl::serde_event_line;
pub use text::TextSink;

use crate::{
    clock::WallClock,
    decode::Event,
    feed::Sample,
    loss::{Loss, Quiet},
};

/// Output formats of `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per event, for people.
    Text,
    /// One JSON object per line, for programs.
    Jsonl,
}

/// A destination for the event stream. Each record is written whole or not at all by the
/// sink; `flush` pushes buffered records to the writer.
pub trait Sink {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// Host state the summary needs (snapshot, queue samples, ...); text output skips them.
    fn sample(&mut self, s: &Sample) -> io::Result<()>;
    /// Counts of normal outcomes that have no event (written just before the loss record).
    fn stats(&mut self, quiet: &Quiet, at_unix_ns: i128) -> io::Result<()>;
    /// The final record: what was lost, even when nothing was.
    fn lost(&mut self, loss: &Loss, at_unix_ns: i128) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Builds the sink for `format` over `out`.
pub fn make(format: Format, out: Box<dyn Write>, clock: WallClock) -> io::Result<Box<dyn Sink>> {
    Ok(match format {
        Format::Text => Box::new(TextSink::new(out, clock)?),
        Format::Jsonl => Box::new(JsonlSink::new(out, clock)),
    })
}
