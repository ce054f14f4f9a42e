//! Reading the kernel's ring buffer from the tokio event loop.
use std::io;

use aya::maps::{MapData, RingBuf};
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
        f(&item)?;
        n += 1;
    }
    Ok(n)
}
