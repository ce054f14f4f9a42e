//! In-kernel filters: events that fail them never reach the ring buffer.
//!
//! Every criterion is a load-time global read with its own volatile load: the verifier knows
//! the value of a frozen read-only global, so with no filter set (`active == 0`) it removes
//! every filter branch and the unfiltered path is unchanged.
//!
//! Owner criteria (pid, comm, cgroup) are decided where the owner is recorded, in process
//! context (connect, listen, accept), and kept as `flags::OWNER_MATCH` in the socket map, so
//! that a socket's softirq events (a close) follow its owner. Socket criteria (netns, family,
//! ports, event kind) are checked on each event as userspace would see it.
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;
use sockwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnEvent, FilterConfig, MAX_FILTER_PORTS, SockInfo, filter, flags,
};

/// Filled by userspace before load; read-only to the programs.
#[unsafe(no_mangle)]
static FILTER: FilterConfig = FilterConfig::NONE;

macro_rules! get {
    ($field:ident) => {
        // Volatile so the compiler keeps the load the verifier resolves.
        unsafe { core::ptr::read_volatile(&FILTER.$field) }
    };
}

/// Whether any filter is set.
#[inline(always)]
pub fn any() -> bool {
    get!(active) != 0
}

/// What to do with one event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// This event only (its kind, or its owner is not known to match yet).
    DropEvent,
    /// Every event of the socket: its namespace, family or ports fail, and they do not change.
    DropSocket,
}

/// Owner criteria for the current task (process context only).
#[inline(always)]
pub fn current_task_matches(pid: u32, comm: &[u8; COMM_LEN]) -> bool {
    let active = get!(active);
    if active & filter::PID != 0 && pid != get!(pid) {
        return false;
    }
    if active & filter::COMM != 0 {
        // Two 8-byte loads (the field is 8-aligned in the repr(C) struct).
        let want = unsafe {
            let p = core::ptr::addr_of!(FILTER.comm).cast::<u64>();
            (
                core::ptr::read_volatile(p),
                core::ptr::read_volatile(p.add(1)),
            )
        };
        if halves(comm) != want {
            return false;
        }
    }
    if active & filter::CGROUP != 0 {
        // The owner is in the cgroup or below iff its ancestor at the cgroup's depth is it.
        let level = get!(cgroup_level) as i32;
        if unsafe { bpf_get_current_ancestor_cgroup_id(level) } != get!(cgroup_id) {
            return false;
        }
    }
    true
}

#[inline(always)]
fn halves(c: &[u8; COMM_LEN]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&c[..8]);
    b.copy_from_slice(&c[8..]);
    (u64::from_ne_bytes(a), u64::from_ne_bytes(b))
}

/// Whether a socket born now, with this owner (or none yet) and namespace, can have events
/// kept; when not, it is not tracked at all (it takes no map entry and can never be counted
/// as a loss).
#[inline(always)]
pub fn birth_ok(netns: u32, owner: Option<&SockInfo>) -> bool {
    let active = get!(active);
    if active & filter::NETNS != 0 && netns != get!(netns) {
        return false;
    }
    match owner {
        Some(o) if active & filter::OWNER != 0 => o.flags & flags::OWNER_MATCH != 0,
        _ => true,
    }
}

/// The checks that need no socket memory: run before reading it.
#[inline(always)]
pub fn before_read(kind: u8, owner_flags: u8) -> Verdict {
    let active = get!(active);
    if active & filter::KIND != 0 && get!(kinds) & (1u32 << (kind & 31)) == 0 {
        return Verdict::DropEvent;
    }
    if active & filter::OWNER != 0 && owner_flags & flags::OWNER_MATCH == 0 {
        return Verdict::DropEvent;
    }
    Verdict::Keep
}

/// The socket criteria, on the event as userspace would decode it.
#[inline(always)]
pub fn after_read(ev: &ConnEvent) -> Verdict {
    let active = get!(active);
    if active & filter::NETNS != 0 && ev.netns != get!(netns) {
        return Verdict::DropSocket;
    }
    if active & filter::FAMILY != 0 {
        let want_v4 = get!(family) == AF_INET;
        match ipv4_on_wire(ev) {
            Some(v4) if v4 == want_v4 => {}
            _ => return Verdict::DropSocket,
        }
    }
    if active & filter::PORT != 0 {
        let n = get!(nports) as usize;
        let mut hit = false;
        for i in 0..MAX_FILTER_PORTS {
            if i < n {
                let p = unsafe { core::ptr::read_volatile(&FILTER.ports[i]) };
                hit |= p == ev.local_port || p == ev.peer_port;
            }
        }
        if !hit {
            return Verdict::DropSocket;
        }
    }
    Verdict::Keep
}

/// IPv4 (true) or IPv6 (false) as userspace reports it: an IPv6 socket with v4-mapped
/// addresses is IPv4. None for another family.
#[inline(always)]
fn ipv4_on_wire(ev: &ConnEvent) -> Option<bool> {
    if ev.family == AF_INET {
        return Some(true);
    }
    if ev.family != AF_INET6 {
        return None;
    }
    let peer_unspecified = halves(&ev.peer_addr) == (0, 0);
    Some(v4_mapped(&ev.local_addr) && (v4_mapped(&ev.peer_addr) || peer_unspecified))
}

#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    let (head, tail) = halves(a);
    // ::ffff:a.b.c.d: 10 zero bytes, then 0xff 0xff.
    head == 0 && tail.to_ne_bytes()[..4] == [0, 0, 0xff, 0xff]
}
