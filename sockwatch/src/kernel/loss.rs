//! Loss accounting: every way an event can go missing, counted and reported.
use serde::{Deserialize, Serialize};

/// Raw counters as read from the kernel at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_full: u64,
    pub sock_inserted: u64,
    pub sock_removed: u64,
    pub sock_insert_failed: u64,
    pub pending_inserted: u64,
    pub pending_removed: u64,
    pub pending_insert_failed: u64,
    pub read_failed: u64,
    /// Runs the kernel skipped because a program was already running on that CPU.
    pub recursion_misses: u64,
    pub accept_would_block: u64,
    pub accept_interrupted: u64,
    /// State changes the kernel skipped in the main program that the backup program handled.
    pub recursion_recovered: u64,
    /// In-kernel counts that could not be made (a counter map full, or no memory): the counts
    /// of `Tracer::counts` are short by this many events.
    pub counts_full: u64,
    /// Peer addresses the peer map had no room for: the `peers` counts are lower bounds.
    pub peers_full: u64,
}

/// Counts of normal outcomes that produce no event, reported at the end in a `stats` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    /// accept() on a TCP listener returned EAGAIN/EWOULDBLOCK (non-blocking servers do this).
    pub accept_would_block: u64,
    /// accept() on a TCP listener was interrupted by a signal (EINTR or a restart).
    pub accept_interrupted: u64,
    /// State changes whose run the kernel skipped (a softirq interrupting the lifecycle program
    /// on its CPU) and the backup program handled instead: nothing lost.
    #[serde(default)]
    pub recursion_recovered: u64,
}

impl Quiet {
    pub fn from_counters(c: &KernelCounters) -> Self {
        Self {
            accept_would_block: c.accept_would_block,
            accept_interrupted: c.accept_interrupted,
            recursion_recovered: c.recursion_recovered,
        }
    }
}

impl std::fmt::Display for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not failures: accept_would_block={} accept_interrupted={} recursion_recovered={}",
            self.accept_would_block, self.accept_interrupted, self.recursion_recovered
        )
    }
}

/// What was lost, by cause. Serialised as the fields of the final `lost` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Events dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Program runs the kernel skipped (nested on one CPU): their events are missing.
    pub recursion_misses: u64,
    /// Sockets that could not be tracked (socket map full): their events lack owner and duration.
    pub sock_map_full: u64,
    /// Tracked sockets pushed out of the socket map before their close (map too small). Only
    /// an LRU socket map evicts (sockwatch's before the in-kernel counters, in older
    /// recordings); the plain hash map since refuses new sockets when full (`sock_map_full`).
    pub sock_map_evicted: u64,
    /// Connect events lost because their pending record could not be kept.
    pub connect_lost: u64,
    /// Events dropped because kernel memory could not be read.
    pub read_failed: u64,
    /// Records from the kernel that userspace could not decode.
    pub decode_errors: u64,
    /// Open connections found gone from the kernel's socket table: their close was missed
    /// (set from the aggregator; absent from files written before it existed).
    #[serde(default)]
    pub expired: u64,
    /// In-kernel counts that could not be made (a counter map full, or no kernel memory): a
    /// count, or a distinct-peer count, of the live summary is short by this many (absent from
    /// files written before the kernel counted).
    #[serde(default)]
    pub counts_full: u64,
}

impl Loss {
    /// Derives the loss report. `live_socks` and `live_pending` are the entries still in the
    /// maps: whatever was inserted and neither removed nor still there was evicted.
    pub fn from_counters(
        c: &KernelCounters,
        live_socks: u64,
        live_pending: u64,
        decode_errors: u64,
    ) -> Self {
        let evicted = |ins: u64, rem: u64, live: u64| ins.saturating_sub(rem).saturating_sub(live);
        Self {
            ringbuf_full: c.ringbuf_full,
            recursion_misses: c.recursion_misses,
            sock_map_full: c.sock_insert_failed,
            sock_map_evicted: evicted(c.sock_inserted, c.sock_removed, live_socks),
            connect_lost: c.pending_insert_failed.saturating_add(evicted(
                c.pending_inserted,
                c.pending_removed,
                live_pending,
            )),
            read_failed: c.read_failed,
            decode_errors,
            expired: 0,
            counts_full: c.counts_full.saturating_add(c.peers_full),
        }
    }

    /// The losses known while running: evictions are only known once the maps can be counted
    /// at the end, so they are left out (0) here.
    pub fn so_far(c: &KernelCounters, decode_errors: u64) -> Self {
        let live_socks = c.sock_inserted.saturating_sub(c.sock_removed);
        let live_pending = c.pending_inserted.saturating_sub(c.pending_removed);
        Self::from_counters(c, live_socks, live_pending, decode_errors)
    }

    pub fn total(&self) -> u64 {
        // Saturating: a hand-edited record may hold anything.
        self.fields()
            .iter()
            .fold(0u64, |sum, (_, v)| sum.saturating_add(*v))
    }

    /// `name=value` pairs for humans, in the order of the JSON record.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("ringbuf_full", self.ringbuf_full),
            ("recursion_misses", self.recursion_misses),
            ("sock_map_full", self.sock_map_full),
            ("sock_map_evicted", self.sock_map_evicted),
            ("connect_lost", self.connect_lost),
            ("read_failed", self.read_failed),
            ("decode_errors", self.decode_errors),
            ("expired", self.expired),
            ("counts_full", self.counts_full),
        ]
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lost events: {}", self.total())?;
        for (name, value) in self.fields() {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_is_neither_removed_nor_live() {
        let c = KernelCounters {
            sock_inserted: 100,
            sock_removed: 60,
            pending_inserted: 10,
            pending_removed: 7,
            pending_insert_failed: 1,
            ..Default::default()
        };
        let l = Loss::from_counters(&c, 30, 2, 0);
        assert_eq!(l.sock_map_evicted, 10);
        assert_eq!(l.connect_lost, 2);
        assert_eq!(l.total(), 12);
    }

    #[test]
    fn nothing_lost_is_all_zero_and_still_listed() {
        let c = KernelCounters {
            sock_inserted: 5,
            sock_removed: 5,
            ..Default::default()
        };
        let l = Loss::from_counters(&c, 0, 0, 0);
        assert_eq!(l.total(), 0);
        assert_eq!(
            l.to_string(),
            "lost events: 0 ringbuf_full=0 recursion_misses=0 sock_map_full=0 sock_map_evicted=0 connect_lost=0 read_failed=0 decode_errors=0 expired=0 counts_full=0"
        );
    }

    #[test]
    fn while_running_open_sockets_are_not_losses() {
        let c = KernelCounters {
            sock_inserted: 500,
            sock_removed: 100,
            pending_inserted: 20,
            pending_removed: 5,
            ringbuf_full: 2,
            ..Default::default()
        };
        let l = Loss::so_far(&c, 1);
        assert_eq!((l.sock_map_evicted, l.connect_lost), (0, 0));
        assert_eq!(l.total(), 3);
    }

    #[test]
    fn counters_read_mid_update_never_underflow() {
        // Per-CPU counters are summed without a lock: removed may briefly exceed inserted.
        let c = KernelCounters {
            sock_inserted: 3,
            sock_removed: 4,
            ..Default::default()
        };
        assert_eq!(Loss::from_counters(&c, 1, 0, 0).sock_map_evicted, 0);
    }
}
