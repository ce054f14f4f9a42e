//! Types shared by the eBPF programs and the userspace loader.
//!
//! Everything here crosses the kernel/user boundary as raw bytes: `#[repr(C)]`, fixed-width
//! integers, explicit padding, and sizes pinned by const asserts so both sides agree.
#![no_std]

mod counts;
mod event;
mod filter_config;
mod offsets;

pub use counts::*;
pub use event::*;
pub use filter_config::*;
pub use offsets::*;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: repr(C), integer fields only, explicit padding.
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::StatsOffsets {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::Mode {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::ListenerCounts {}
    unsafe impl aya::Pod for super::OutboundCounts {}
    unsafe impl aya::Pod for super::ErrorKey {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::ProcessCounts {}
    unsafe impl aya::Pod for super::PeerKey {}
}
