//! Deciding which open connections to expire: those the kernel's socket table lacks at two
//! checks in a row. A close event can be missed (ring full, a skipped program run); without
//! this such a connection would stay open in the summary forever.
//!
//! Live only: the decision needs the kernel. It is recorded (`expired`) so that `report`
//! replays it instead of deciding again.
use std::collections::HashSet;

use super::{Conn, Expired};

/// Connections absent at the last check. One absence is not enough: the close may still be in
/// the ring buffer, waiting to be read.
#[derive(Debug, Default)]
pub struct Expiry {
    suspects: HashSet<Conn>,
}

/// Addresses as both sides are compared: an IPv4-mapped IPv6 address as IPv4.
pub fn canonical(c: &Conn) -> Conn {
    Conn {
        local_addr: c.local_addr.to_canonical(),
        peer_addr: c.peer_addr.to_canonical(),
        ..*c
    }
}

impl Expiry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Compares the connections the aggregator holds open (`open`) with the kernel's table.
    /// `kernel_has` answers for the namespaces that were read; `checked` says which ones were
    /// (a namespace that could not be read expires nothing). Returns the connections to expire
    /// at `time_ns`: absent now and at the previous check.
    pub fn check(
        &mut self,
        open: impl IntoIterator<Item = Conn>,
        kernel_has: impl Fn(&Conn) -> bool,
        checked: impl Fn(u32) -> bool,
        time_ns: i64,
    ) -> Vec<Expired> {
        let mut expire = Vec::new();
        let mut absent = HashSet::new();
        for conn in open {
            if !checked(conn.netns) || kernel_has(&canonical(&conn)) {
                continue;
            }
            if self.suspects.contains(&conn) {
                expire.push(Expired { time_ns, conn });
            } else {
                absent.insert(conn);
            }
        }
        self.suspects = absent;
        sorted(expire)
    }

    /// The last check, as sockwatch stops. `absent` holds the connections that were open when
    /// the kernel's table was dumped and missing from it; the events were then read up to after
    /// the dump, so one of them still open now had its close missed (a close before the dump
    /// would have been read). One absence is enough here.
    pub fn check_final(
        &mut self,
        open: impl IntoIterator<Item = Conn>,
        absent: &HashSet<Conn>,
        time_ns: i64,
    ) -> Vec<Expired> {
        self.suspects.clear();
        let expire = open
            .into_iter()
            .filter(|c| absent.contains(c))
            .map(|conn| Expired { time_ns, conn })
            .collect();
        sorted(expire)
    }

    /// Connections absent at the last check (not yet expired).
    pub fn suspects(&self) -> usize {
        self.suspects.len()
    }
}

/// A stable order, so that the records are easy to compare.
fn sorted(mut expire: Vec<Expired>) -> Vec<Expired> {
    expire.sort_by_key(|e| {
        let c = e.conn;
        (
            c.netns,
            c.local_addr,
            c.local_port,
            c.peer_addr,
            c.peer_port,
        )
    });
    expire
}
