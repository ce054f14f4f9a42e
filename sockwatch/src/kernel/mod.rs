//! The kernel side: what the running kernel offers, loading and attaching the eBPF programs,
//! and turning what they send into events.
//!
//! - [`btf`] and [`tp_format`]: struct field and tracepoint record offsets of this kernel.
//! - [`tracefs`]: tracefs for the syscall tracepoints, without touching the host's mounts.
//! - [`probes`] -> [`capabilities`]: what this kernel supports, probed (never inferred from a
//!   version), and which programs and hooks that makes sockwatch use.
//! - [`hooks`]: which hooks see connect() and accept() return: fexit, kprobes or syscalls.
//! - [`loader`]: loads, attaches and detaches the programs; reads their counters.
//! - [`programs`]: which programs a run loads, and where each attaches.
//! - [`load_errors`]: why a load or an attach failed, in one line.
//! - [`raw_bpf`]: the few bpf() calls made by hand (probe programs, program info).
//! - [`map_sizes`]: how big the maps are, preallocated where the kernel needs it.
//! - [`counts`]: the in-kernel per-port, per-error and per-process counts, read from their maps.
//! - [`source`] -> [`decode`]: the ring buffer read on the event loop, bytes to events.
//! - [`loss`]: every way an event can go missing, counted.
pub mod btf;
pub mod capabilities;
pub mod counts;
pub mod decode;
pub mod hooks;
pub mod load_errors;
pub mod loader;
pub mod loss;
pub mod map_sizes;
pub mod probes;
pub mod programs;
pub mod raw_bpf;
pub mod source;
pub mod tp_format;
pub mod tracefs;

#[cfg(test)]
mod object_tests;
