//! In-kernel counters (`Mode::count`): per-port, per-error and per-process counts updated as
//! each event passes the filters, so that the counts stay exact when the ring buffer cannot keep
//! up; and which events still go to the ring (`Mode::ring_kinds`).
//!
//! The rules are those of userspace's aggregator for one event. A socket is tracked when its
//! birth is known (`flags::BIRTH_KNOWN`: its record was made here at its birth); the
//! `established` and `close` events of an untracked socket are not counted here but always sent
//! to the ring, so that userspace counts them.
use core::mem::MaybeUninit;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_smp_processor_id, maps::HashMap};
use sockwatch_common::{
    ConnEvent, ErrorKey, LATENCY_BUCKETS, LIFETIME_BUCKETS, ListenerCounts, MAX_COUNT_SHARDS,
    OutboundCounts, PeerKey, PortKey, ProcessKey, SockInfo, counter, data_bytes, flags, kind,
    latency_bucket, lifetime_bucket, side,
};

use crate::{
    maps::{
        ERRORS, LISTENERS, OUTBOUND, PEERS, PROCESSES, ZEROS, add, bump, count_shard_mask,
        counting, ring_kinds,
    },
    store::{copy16, put, put16},
};

const EEXIST: i32 = 17;
/// `-1` for an atomic add.
const MINUS_ONE: u64 = u64::MAX;

/// The flags of an event of the socket whose record is `info`: its flags and `extra_flags` (as
/// `emit::fill` sets them).
#[inline(always)]
fn event_flags(info: Option<&SockInfo>, extra_flags: u8) -> u8 {
    match info {
        Some(i) => i.flags | extra_flags,
        None => extra_flags,
    }
}

/// Whether an event of `kind` of the socket whose record is `info` is written to the ring
/// buffer.
#[inline(always)]
pub fn to_ring(kind: u8, info: Option<&SockInfo>, extra_flags: u8) -> bool {
    if ring_kinds() & (1u32 << (kind & 31)) != 0 {
        return true;
    }
    if kind != kind::ESTABLISHED && kind != kind::CLOSE {
        return false;
    }
    event_flags(info, extra_flags) & flags::BIRTH_KNOWN == 0
}

/// Whether counting an event of `kind` of the socket whose record is `info` (its flags as in
/// [`to_ring`]) takes its duration: an accept's (the queue wait), an active established's (the
/// handshake), a passive close's (the lifetime). The others' counts take no time.
#[inline(always)]
pub fn count_needs_time(kind: u8, info: Option<&SockInfo>, extra_flags: u8) -> bool {
    let passive = event_flags(info, extra_flags) & flags::PASSIVE != 0;
    match kind {
        kind::ACCEPT => true,
        kind::ESTABLISHED => !passive,
        kind::CLOSE => passive,
        _ => false,
    }
}

/// Counts `ev`, which passed the filters, when counting is on.
#[inline(always)]
pub fn count(ev: &ConnEvent) {
    if counting() {
        // The result is kept so that the call sets R0 (see `state::step`).
        core::hint::black_box(count_event(ev, 0));
    }
}

/// Counts the `connect` event `ev` and the `established` of the same socket at the same moment
/// (see `sock::emit_connect_established`), with one lookup of each counter entry for both.
#[inline(always)]
pub fn count_connect_established(ev: &ConnEvent) {
    if counting() {
        core::hint::black_box(count_event(ev, 1));
    }
}

// One copy per program (a BPF-to-BPF call), not one inlined at every emit. `established` (0 or
// 1, a plain integer for the call): `ev` is a connect whose established is counted with it.
#[inline(never)]
fn count_event(ev: &ConnEvent, established: u64) -> i32 {
    let fl = ev.flags;
    let tracked = fl & flags::BIRTH_KNOWN != 0;
    let passive = fl & flags::PASSIVE != 0;
    let shard = count_shard();
    let listener = port_key(ev.netns, ev.local_port, side::LISTENER, shard);
    let outbound = port_key(ev.netns, ev.peer_port, side::OUTBOUND, shard);
    match ev.kind {
        kind::ACCEPT => {
            if let Some((c, _)) = entry(&LISTENERS, &listener) {
                // SAFETY: `c` is a live map value.
                unsafe {
                    add(&raw mut (*c).accepted, 1);
                    if new_peer(&listener, ev) {
                        add(&raw mut (*c).peers, 1);
                    }
                    if tracked {
                        // Its duration is its wait in the accept queue.
                        add(&raw mut (*c).queue_wait_sum_ns, ev.duration_ns);
                        latency((&raw mut (*c).queue_waits).cast(), ev.duration_ns);
                    }
                }
            }
        }
        kind::ACCEPT_FAILED => error(&listener, ev.errno),
        kind::CONNECT_FAILED => error(&outbound, ev.errno),
        kind::OVERFLOW => {
            if let Some((c, _)) = entry(&LISTENERS, &listener) {
                unsafe { add(&raw mut (*c).overflows, 1) };
            }
        }
        kind::CONNECT => {
            // The established counted with it: active, so counted as below when tracked.
            let established = established != 0 && tracked;
            if let Some((c, _)) = entry(&OUTBOUND, &outbound) {
                unsafe {
                    add(&raw mut (*c).connects, 1);
                    if new_peer(&outbound, ev) {
                        add(&raw mut (*c).peers, 1);
                    }
                    if established {
                        outbound_established(c, ev);
                    }
                }
            }
            if let Some(p) = process(&outbound, ev) {
                unsafe {
                    add(&raw mut (*p).connects, 1);
                    if established {
                        add((&raw mut (*p).open).cast(), 1);
                    }
                }
            }
        }
        kind::ESTABLISHED if tracked => {
            if passive {
                if let Some((c, _)) = entry(&LISTENERS, &listener) {
                    unsafe {
                        add(&raw mut (*c).established, 1);
                        add((&raw mut (*c).open).cast(), 1);
                    }
                }
            } else {
                if let Some((c, _)) = entry(&OUTBOUND, &outbound) {
                    unsafe { outbound_established(c, ev) };
                }
                if let Some(p) = process(&outbound, ev) {
                    unsafe { add((&raw mut (*p).open).cast(), 1) };
                }
            }
        }
        kind::CLOSE if tracked => {
            // Counted in `open` at its establishment.
            let was_open = fl & flags::ESTABLISHED != 0;
            if passive {
                if let Some((c, _)) = entry(&LISTENERS, &listener) {
                    unsafe {
                        if was_open {
                            add((&raw mut (*c).open).cast(), MINUS_ONE);
                        }
                        add(&raw mut (*c).closed, 1);
                        carried(
                            &raw mut (*c).bytes_in,
                            &raw mut (*c).bytes_out,
                            &raw mut (*c).retrans,
                            ev,
                        );
                        lifetime(c, ev.duration_ns);
                    }
                }
            } else if was_open {
                if let Some((c, _)) = entry(&OUTBOUND, &outbound) {
                    unsafe {
                        add((&raw mut (*c).open).cast(), MINUS_ONE);
                        carried(
                            &raw mut (*c).bytes_in,
                            &raw mut (*c).bytes_out,
                            &raw mut (*c).retrans,
                            ev,
                        );
                    }
                }
                if let Some(p) = process(&outbound, ev) {
                    unsafe { add((&raw mut (*p).open).cast(), MINUS_ONE) };
                }
            }
        }
        _ => {}
    }
    core::hint::black_box(0)
}

#[inline(always)]
fn port_key(netns: u32, port: u16, side: u8, shard: u8) -> PortKey {
    PortKey {
        netns,
        port,
        side,
        shard,
    }
}

/// This CPU's entry of a port's counts (`PortKey::shard`).
#[inline(always)]
fn count_shard() -> u8 {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    (cpu & count_shard_mask() & (MAX_COUNT_SHARDS - 1)) as u8
}

/// Adds what the closed connection of `ev` carried, if known (`flags::STATS`): data bytes
/// received and sent, segments retransmitted, to the counters at `c_in`, `c_out`, `c_retrans`.
/// Zeros are not added: each add is an atomic operation on a line other CPUs add to, and most
/// connections retransmit nothing. (Computed here, after the counters' lookup, so that no value
/// is kept across its helper calls: the program's stack is nearly full.)
///
/// # Safety
/// The pointers must point into a live map value.
#[inline(always)]
unsafe fn carried(c_in: *mut u64, c_out: *mut u64, c_retrans: *mut u64, ev: &ConnEvent) {
    if ev.flags & flags::STATS == 0 {
        return;
    }
    let (bytes_in, bytes_out) = data_bytes(ev);
    if bytes_in != 0 {
        add(c_in, bytes_in);
    }
    if bytes_out != 0 {
        add(c_out, bytes_out);
    }
    if ev.total_retrans != 0 {
        add(c_retrans, u64::from(ev.total_retrans));
    }
}

/// An active `established` of a tracked socket in the remote port's counts at `c`; its
/// duration (that of the `connect` counted with it too) is the handshake.
///
/// # Safety
/// `c` must point to a live map value.
#[inline(always)]
unsafe fn outbound_established(c: *mut OutboundCounts, ev: &ConnEvent) {
    unsafe {
        add(&raw mut (*c).established, 1);
        add(&raw mut (*c).handshake_sum_ns, ev.duration_ns);
        add((&raw mut (*c).open).cast(), 1);
        latency((&raw mut (*c).handshakes).cast(), ev.duration_ns);
    }
}

/// `lifetimes[lifetime_bucket(ns)] += 1` of the listener counts at `c`.
///
/// # Safety
/// `c` must point to a live map value.
#[inline(always)]
unsafe fn lifetime(c: *mut ListenerCounts, ns: u64) {
    // Opaque, so that the compiler keeps the bound check: it knows the bucket is in range (the
    // last one holds u64::MAX), the verifier does not.
    let b = core::hint::black_box(lifetime_bucket(ns));
    if b < LIFETIME_BUCKETS {
        unsafe { add((&raw mut (*c).lifetimes).cast::<u64>().add(b), 1) };
    }
}

/// `buckets[latency_bucket(ns)] += 1`, `buckets` the `[u64; LATENCY_BUCKETS]` of a live map
/// value.
///
/// # Safety
/// `buckets` must point to such an array.
#[inline(always)]
unsafe fn latency(buckets: *mut u64, ns: u64) {
    // Opaque, as in `lifetime`.
    let b = core::hint::black_box(latency_bucket(ns));
    if b < LATENCY_BUCKETS {
        unsafe { add(buckets.add(b), 1) };
    }
}

/// `ERRORS[(port, errno)] += 1`.
#[inline(always)]
fn error(port: &PortKey, errno: u16) {
    let key = ErrorKey {
        port: *port,
        errno: u32::from(errno),
        _pad: 0,
    };
    if let Some((c, _)) = entry(&ERRORS, &key) {
        add(c, 1);
    }
}

/// The counts of the event's process towards `port`; a new entry takes the event's command.
#[inline(always)]
fn process(port: &PortKey, ev: &ConnEvent) -> Option<*mut sockwatch_common::ProcessCounts> {
    let key = ProcessKey {
        port: *port,
        pid: ev.pid,
        _pad: 0,
    };
    let (p, created) = entry(&PROCESSES, &key)?;
    if created {
        // SAFETY: a live map value; other CPUs only add to its counters meanwhile.
        copy16(unsafe { &mut (*p).comm }, &ev.comm);
    }
    Some(p)
}

/// Whether the event's peer address is new on `port` (recorded now).
#[inline(always)]
fn new_peer(port: &PortKey, ev: &ConnEvent) -> bool {
    let mut key = MaybeUninit::<PeerKey>::uninit();
    // SAFETY: both fields are written before the key is read.
    let key = unsafe {
        let k = &mut *key.as_mut_ptr();
        // One entry per peer and port, whichever CPU saw it.
        put(&mut k.port, PortKey { shard: 0, ..*port });
        let (lo, hi) = halves(&ev.peer_addr);
        put16(&mut k.addr, lo, hi);
        key.assume_init_ref()
    };
    // Looked up first: a lookup takes no lock, an insert takes its bucket's even when the key
    // is there, and one busy port's peer is the same key on every CPU.
    if PEERS.get_ptr(key).is_some() {
        return false;
    }
    match PEERS.insert(key, 0u8, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(e) if e == -EEXIST => false,
        Err(_) => {
            bump(counter::PEERS_FULL);
            false
        }
    }
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> ([u8; 8], [u8; 8]) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&a[..8]);
    hi.copy_from_slice(&a[8..]);
    (lo, hi)
}

/// The entry of `key`, created zeroed if absent; says whether this call created it. None when
/// it cannot be created (map full, no memory): counted, the count is short.
#[inline(always)]
fn entry<K, V>(map: &HashMap<K, V>, key: &K) -> Option<(*mut V, bool)> {
    const { assert!(core::mem::size_of::<V>() <= core::mem::size_of::<ListenerCounts>()) };
    if let Some(p) = map.get_ptr_mut(key) {
        return Some((p, false));
    }
    let Some(zeros) = ZEROS.get_ptr(0) else {
        bump(counter::COUNTS_FULL);
        return None;
    };
    // SAFETY: `ZEROS` holds one all-zero value at least as large as a `V` (asserted above), and
    // every counter type is valid all-zero.
    let zeros = unsafe { &*zeros.cast::<V>() };
    let created = match map.insert(key, zeros, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        // Another CPU created it meanwhile.
        Err(e) if e == -EEXIST => false,
        Err(_) => {
            bump(counter::COUNTS_FULL);
            return None;
        }
    };
    match map.get_ptr_mut(key) {
        Some(p) => Some((p, created)),
        None => {
            // Removed at once (only userspace removes entries): this count is lost.
            bump(counter::COUNTS_FULL);
            None
        }
    }
}
