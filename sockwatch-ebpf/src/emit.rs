//! Building events from a socket and its record, counting them and writing them to the ring.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
};
use sockwatch_common::{
    AF_INET, AF_INET6, ConnEvent, KernelOffsets, SockInfo, counter, flags, kind, tcp_state,
};

use crate::{
    count::{count, count_connect_established, count_needs_time, to_ring},
    filter::{self, Verdict},
    maps::{EVENTS, bump, counting, offsets, take_scratch},
    sock::{SockCommon, netns_of},
    store::{copy_words, copy16, put, put16, zero_bytes, zero16},
};

/// Bytes past the wake-up threshold in which a submit still wakes the reader (about 80
/// events).
const WAKEUP_WINDOW: u64 = 8192;

/// Emit one event for `sk`: the 5-tuple is read from the socket now, the owner and birth from
/// `info` when known. Says whether the filters kept it.
#[inline(always)]
pub fn emit(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Verdict {
    emit_patched(sk, kind, old, new, info, extra_flags, |_, _| {})
}

/// As [`emit`], letting the caller set fields the socket does not hold (errno, a destination,
/// what it carried), given the head of `struct sock` read for the event.
///
/// A kept event is counted (`Mode::count`), and written to the ring if its kind goes there
/// (see `count::to_ring`). With filters set, or when the event is only counted, it is built in
/// a per-CPU scratch buffer, so that it takes ring space only if it is sent. Otherwise (always
/// without filters in the default mode: the verifier drops every other branch then) it is built
/// in the ring directly.
#[inline(always)]
pub fn emit_patched(
    sk: u64,
    kind: u8,
    old: u8,
    new: u8,
    info: Option<&SockInfo>,
    extra_flags: u8,
    patch: impl FnOnce(&mut ConnEvent, &SockCommon),
) -> Verdict {
    let off = offsets();
    if filter::any() {
        let owner_flags = match info {
            Some(i) => i.flags,
            None => 0,
        };
        let early = filter::before_read(kind, owner_flags);
        if early != Verdict::Keep {
            return early;
        }
    }
    let ring = to_ring(kind, info, extra_flags);
    // An event that is only counted, and whose count takes no duration, is seen by nobody with
    // its time: the clock (tens of nanoseconds on a virtual machine) is not read for it.
    let now = if ring || filter::any() || count_needs_time(kind, info, extra_flags) {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // A scratch slot is only taken when a run interrupting this one on its CPU (a softirq) is
    // not already using both; then the event goes through the ring, discarded if not sent.
    // When counting, the event is built in scratch even when it goes to the ring, so that a
    // full ring costs the event, never its count.
    if (filter::any() || !ring || counting())
        && let Some(scratch) = take_scratch()
    {
        let ev = &mut scratch.event;
        let verdict = match fill(
            ev,
            &raw mut scratch.common,
            sk,
            &off,
            kind,
            old,
            new,
            now,
            info,
            extra_flags,
        ) {
            Ok(head) => {
                patch(ev, head);
                let verdict = if filter::any() {
                    filter::after_read(ev)
                } else {
                    Verdict::Keep
                };
                if verdict == Verdict::Keep {
                    count(ev);
                    if ring
                        && EVENTS
                            .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                            .is_err()
                    {
                        bump(counter::RINGBUF_FULL);
                    }
                }
                verdict
            }
            Err(_) => {
                bump(counter::READ_FAILED);
                Verdict::DropEvent
            }
        };
        scratch.busy = 0;
        return verdict;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return Verdict::DropEvent;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let mut common = MaybeUninit::<SockCommon>::uninit();
    let Ok(head) = fill(
        ev,
        common.as_mut_ptr(),
        sk,
        &off,
        kind,
        old,
        new,
        now,
        info,
        extra_flags,
    ) else {
        entry.discard(0);
        bump(counter::READ_FAILED);
        return Verdict::DropEvent;
    };
    patch(ev, head);
    let verdict = if filter::any() {
        filter::after_read(ev)
    } else {
        Verdict::Keep
    };
    if verdict == Verdict::Keep {
        count(ev);
        if ring {
            entry.submit(wakeup_flags(&off));
            return verdict;
        }
    }
    entry.discard(BPF_RB_NO_WAKEUP as u64);
    verdict
}

/// A client's `connect` and `established` when they come together (the connect was still
/// pending at its SYN_SENT->ESTABLISHED), for the socket whose record is `info`: the socket is
/// read once, and when both go to the ring, one slot holding both is reserved. Only without
/// filters (the verifier drops it otherwise), where every event is kept. False when it could
/// not emit them (counted only, and no scratch slot free on this CPU): the caller emits them one
/// by one.
#[inline(always)]
pub fn emit_connect_established(sk: u64, info: &SockInfo) -> bool {
    let off = offsets();
    let now = unsafe { bpf_ktime_get_ns() };
    let ring_connect = to_ring(kind::CONNECT, Some(info), 0);
    let ring_established = to_ring(kind::ESTABLISHED, Some(info), flags::ESTABLISHED);
    // Counting: built in scratch, so that a full ring costs the events, never their counts.
    if !(ring_connect && ring_established) || counting() {
        let Some(scratch) = take_scratch() else {
            return false;
        };
        let ev = &mut scratch.event;
        if fill(
            ev,
            &raw mut scratch.common,
            sk,
            &off,
            kind::CONNECT,
            tcp_state::CLOSE,
            tcp_state::SYN_SENT,
            now,
            Some(info),
            0,
        )
        .is_err()
        {
            bump(counter::READ_FAILED);
            bump(counter::READ_FAILED);
        } else {
            count_connect_established(ev);
            if ring_connect
                && EVENTS
                    .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                    .is_err()
            {
                bump(counter::RINGBUF_FULL);
            }
            established_from_connect(ev, now);
            if ring_established
                && EVENTS
                    .output::<ConnEvent>(&*ev, wakeup_flags(&off))
                    .is_err()
            {
                bump(counter::RINGBUF_FULL);
            }
        }
        scratch.busy = 0;
        return true;
    }
    let Some(mut entry) = EVENTS.reserve::<[ConnEvent; 2]>(0) else {
        bump(counter::RINGBUF_FULL);
        bump(counter::RINGBUF_FULL);
        return true;
    };
    // SAFETY: the reservation holds two events and is ours until submitted.
    let [connect, established] = unsafe { &mut *entry.as_mut_ptr() };
    let mut common = MaybeUninit::<SockCommon>::uninit();
    if fill(
        connect,
        common.as_mut_ptr(),
        sk,
        &off,
        kind::CONNECT,
        tcp_state::CLOSE,
        tcp_state::SYN_SENT,
        now,
        Some(info),
        0,
    )
    .is_err()
    {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        bump(counter::READ_FAILED);
        bump(counter::READ_FAILED);
        return true;
    }
    copy_words(established, connect);
    established_from_connect(established, now);
    count_connect_established(connect);
    entry.submit(wakeup_flags(&off));
    true
}

/// Turns a copy of a `connect` event into the `established` of the same socket at the same
/// moment: only the kind, the states, the time and the ESTABLISHED flag differ.
#[inline(always)]
fn established_from_connect(ev: &mut ConnEvent, now: u64) {
    put(&mut ev.kind, kind::ESTABLISHED);
    put(&mut ev.old_state, tcp_state::SYN_SENT);
    put(&mut ev.new_state, tcp_state::ESTABLISHED);
    put(&mut ev.ts_ns, now);
    let established = ev.flags | flags::ESTABLISHED;
    put(&mut ev.flags, established);
}

/// Batch wake-ups: each one is an irq_work (a self-IPI: a VM exit on a virtual machine) on this
/// CPU, which also makes it likelier that a softirq interrupts one of our programs (a recursion
/// miss, i.e. a lost run). So wake the reader only as the backlog crosses the threshold, not on
/// every event above it: a reader that is behind has been woken already, and it also polls on a
/// short timer. The window is wider than one record so that concurrent submits on other CPUs
/// cannot step over it.
#[inline(always)]
fn wakeup_flags(off: &KernelOffsets) -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = u64::from(off.wakeup_bytes);
    let flags = if avail >= threshold && avail < threshold + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}

/// Builds the event of `sk` in `ev`, from one read of the socket's head into `common`, which it
/// returns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill<'a>(
    ev: &mut ConnEvent,
    common: *mut SockCommon,
    sk: u64,
    off: &KernelOffsets,
    kind: u8,
    old: u8,
    new: u8,
    now: u64,
    info: Option<&SockInfo>,
    extra_flags: u8,
) -> Result<&'a SockCommon, i64> {
    // SAFETY: `common` is scratch space of the caller's, used by nothing else meanwhile.
    let common = unsafe { SockCommon::read(common, sk)? };
    let sport: [u8; 2] =
        unsafe { bpf_probe_read_kernel((sk + off.inet_sport as u64) as *const [u8; 2])? };

    let family = u16::from_ne_bytes(common.bytes::<2>(off.skc_family)) as u8;
    put(&mut ev.family, family);
    if family == AF_INET {
        let [a, b, c, d] = common.bytes::<4>(off.skc_rcv_saddr);
        put16(&mut ev.local_addr, [a, b, c, d, 0, 0, 0, 0], [0; 8]);
        let [a, b, c, d] = common.bytes::<4>(off.skc_daddr);
        put16(&mut ev.peer_addr, [a, b, c, d, 0, 0, 0, 0], [0; 8]);
    } else if family == AF_INET6 {
        let v6 = off.skc_v6_rcv_saddr;
        put16(
            &mut ev.local_addr,
            common.bytes::<8>(v6),
            common.bytes::<8>(v6 + 8),
        );
        let v6 = off.skc_v6_daddr;
        put16(
            &mut ev.peer_addr,
            common.bytes::<8>(v6),
            common.bytes::<8>(v6 + 8),
        );
    } else {
        zero16(&mut ev.local_addr);
        zero16(&mut ev.peer_addr);
    }
    put(&mut ev.local_port, u16::from_be_bytes(sport));
    put(
        &mut ev.peer_port,
        u16::from_be_bytes(common.bytes::<2>(off.skc_dport)),
    );
    let mut ts = now;
    if kind == sockwatch_common::kind::CONNECT
        && let Some(info) = info
    {
        // A connect is emitted once its port is bound; it happened at the socket's birth.
        ts = info.birth_ns;
    }
    put(&mut ev.ts_ns, ts);
    put(&mut ev.kind, kind);
    put(&mut ev.old_state, old);
    put(&mut ev.new_state, new);
    put(&mut ev.errno, 0);
    zero_bytes(&mut ev._pad);
    put(&mut ev.fin, 0);
    put(&mut ev.bytes_received, 0);
    put(&mut ev.bytes_acked, 0);
    put(&mut ev.total_retrans, 0);
    put(&mut ev.srtt_us, 0);
    match info {
        Some(info) => {
            let duration = if info.flags & flags::BIRTH_KNOWN != 0 {
                now.saturating_sub(info.birth_ns)
            } else {
                0
            };
            put(&mut ev.duration_ns, duration);
            put(&mut ev.cgroup_id, info.cgroup_id);
            put(&mut ev.pid, info.pid);
            copy16(&mut ev.comm, &info.comm);
            let netns = if info.netns != 0 {
                info.netns
            } else {
                netns_of(sk, off)
            };
            put(&mut ev.netns, netns);
            put(&mut ev.flags, info.flags | extra_flags);
        }
        None => {
            put(&mut ev.duration_ns, 0);
            put(&mut ev.cgroup_id, 0);
            put(&mut ev.pid, 0);
            zero16(&mut ev.comm);
            put(&mut ev.netns, netns_of(sk, off));
            put(&mut ev.flags, extra_flags);
        }
    }
    Ok(common)
}
