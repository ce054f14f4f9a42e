//! sockwatch: a TCP connection tracer built on eBPF.
//!
//! The tree follows the data path:
//!
//! ```text
//! eBPF programs (sockwatch-ebpf)
//!   -> ring buffer -> kernel::source -> kernel::decode --+-> record::sink (text, JSON Lines, CSV)
//!                                                        +-> feed -> aggregate -> commands::view
//!   host (sock_diag, /proc) -> host::sampler ------------+            (top, report), metrics
//! ```
//!
//! - [`kernel`]: what this kernel supports, loading and attaching the programs, the ring buffer,
//!   decoding, loss accounting. Only here (and in [`host`]) does sockwatch make system calls
//!   about the kernel; [`kernel::decode`] itself is pure.
//! - [`host`]: state the events do not carry (sockets older than sockwatch, accept queues,
//!   descriptor pressure, workload names from cgroups), read from netlink, /proc and cgroupfs.
//! - [`record`]: output files, rotation, compression, and recordings read back.
//! - [`feed`] and [`aggregate`]: records into the per-port summary; pure, so a live summary and
//!   the report of its recording agree.
//! - [`metrics`]: the summary for Prometheus.
//! - [`commands`]: `top`, `trace`, `report`, `check`; [`cli`] parses them, [`filter`] is shared
//!   by all, [`clock`] turns kernel time into wall-clock time.
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
