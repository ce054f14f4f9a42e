//! sockwatch: a TCP connection tracer built on eBPF.
//!
//! Data path: eBPF programs (sockwatch-ebpf) -> ring buffer -> [`kernel::source`] ->
//! [`kernel::decode`] -> [`record::sink`]. [`kernel::loader`] loads and attaches the programs with
//! offsets from [`kernel::btf`]; [`kernel::loss`] accounts for every event that could not be
//! delivered.
pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod feed;
pub mod filter;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod record;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_dir;
