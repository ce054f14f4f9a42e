//! Reading the kernel's ring buffer from the tokio event loop.
use std::io;

use aya::maps::{MapData, RingBuf};
use sockwatch_common::CONN_EVENT_SIZE;
use tokio::io::{Interest, unix::AsyncFd};

pub struct Source {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Source {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as it
        // lives; the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { ring })
    }

    /// Waits until the kernel signals data, then hands every available record to `f`.
    /// Cancel-safe: nothing is consumed before readiness.
    pub async fn next_batch(
        &mut self,
        f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let n = drain_ring(guard.get_inner_mut(), f)?;
        guard.clear_ready();
        Ok(n)
    }

    /// Hands every record already in the ring to `f`, without waiting.
    pub fn drain(&mut self, f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<usize> {
        drain_ring(self.ring.get_mut(), f)
    }
}

fn drain_ring(
    ring: &mut RingBuf<MapData>,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += each_event(&item, &mut f)?;
    }
    Ok(n)
}

/// Hands the events of one ring record to `f`, and says how many there were. A record holds one
/// event, or several of one socket written together (a client's connect and established). A
/// record of any other size goes to `f` whole, which reports it as undecodable.
fn each_event(record: &[u8], f: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<usize> {
    if record.len() > CONN_EVENT_SIZE && record.len().is_multiple_of(CONN_EVENT_SIZE) {
        for event in record.chunks_exact(CONN_EVENT_SIZE) {
            f(event)?;
        }
        return Ok(record.len() / CONN_EVENT_SIZE);
    }
    f(record)?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(record: &[u8]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let n = each_event(record, &mut |b: &[u8]| {
            got.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, got.len());
        got
    }

    #[test]
    fn a_record_of_two_events_gives_both_in_order() {
        let mut record = vec![1u8; CONN_EVENT_SIZE];
        record.extend(vec![2u8; CONN_EVENT_SIZE]);
        assert_eq!(
            split(&record),
            vec![vec![1u8; CONN_EVENT_SIZE], vec![2u8; CONN_EVENT_SIZE]]
        );
    }

    #[test]
    fn other_sizes_go_whole_to_the_decoder() {
        for len in [
            0,
            1,
            CONN_EVENT_SIZE,
            CONN_EVENT_SIZE + 1,
            2 * CONN_EVENT_SIZE - 8,
        ] {
            assert_eq!(split(&vec![7u8; len]), vec![vec![7u8; len]], "{len} bytes");
        }
    }
}
