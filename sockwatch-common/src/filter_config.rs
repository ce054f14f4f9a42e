//! The filters applied in the kernel, as the programs read them.
use crate::event::COMM_LEN;

/// Most `--port` filters the programs compare against.
pub const MAX_FILTER_PORTS: usize = 16;

/// `FilterConfig::active` bits: which criteria are set.
pub mod filter {
    pub const PORT: u32 = 1;
    pub const PID: u32 = 2;
    pub const COMM: u32 = 4;
    pub const CGROUP: u32 = 8;
    pub const NETNS: u32 = 16;
    pub const FAMILY: u32 = 32;
    pub const KIND: u32 = 64;
    /// Criteria on the owning process, known in process context only.
    pub const OWNER: u32 = PID | COMM | CGROUP;
}

/// In-kernel filters, a load-time global. With `active == 0` the verifier sees every filter
/// branch as dead and removes it, so an unfiltered run pays nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// cgroup v2 id (the directory's inode) the owner must be in, or below.
    pub cgroup_id: u64,
    /// `filter::*` bits.
    pub active: u32,
    /// Bit `1 << kind` for every `kind::*` kept.
    pub kinds: u32,
    /// Thread-group id of the owner.
    pub pid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Depth of `cgroup_id` in the cgroup v2 hierarchy (the root is 0).
    pub cgroup_level: u32,
    /// How many of `ports` are set.
    pub nports: u32,
    /// Local or peer port, host byte order.
    pub ports: [u16; MAX_FILTER_PORTS],
    /// Owner's command name, NUL-padded as the kernel keeps it.
    pub comm: [u8; COMM_LEN],
    /// AF_INET: IPv4, including IPv4 on IPv6 sockets (v4-mapped); AF_INET6: native IPv6.
    pub family: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<FilterConfig>() == 88);

impl FilterConfig {
    /// No filter.
    pub const NONE: Self = Self {
        cgroup_id: 0,
        active: 0,
        kinds: 0,
        pid: 0,
        netns: 0,
        cgroup_level: 0,
        nports: 0,
        ports: [0; MAX_FILTER_PORTS],
        comm: [0; COMM_LEN],
        family: 0,
        _pad: [0; 7],
    };
}
