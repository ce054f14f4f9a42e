//! Log-linear histograms of durations: fixed memory whatever the count, quantiles within 1/16
//! (about 6%) of the true value. Two sets of buckets, the kernel's own (so that live counts and
//! recorded events land alike): lifetimes ([`Histogram`]) and latencies, the accept-queue wait
//! and the handshake ([`Latencies`]).
use sockwatch_common::{
    LATENCY_BUCKETS, LIFETIME_BUCKETS, latency_bucket, latency_bucket_floor, lifetime_bucket,
    lifetime_bucket_floor,
};

// The lifetime buckets, as the tests name them.
#[cfg(test)]
use sockwatch_common::{
    LIFETIME_BUCKETS as BUCKETS, lifetime_bucket as index, lifetime_bucket_floor as lower_bound,
};

/// Counts by bucket, with the bucket functions they were counted with.
#[derive(Clone)]
pub struct Buckets {
    counts: Box<[u64]>,
    total: u64,
    /// Of the values recorded, and those added with [`Buckets::add_sum`].
    sum: u64,
    index: fn(u64) -> usize,
    floor: fn(usize) -> u64,
}

/// Lifetimes, in the kernel's lifetime buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram(Buckets);

/// Accept-queue waits or handshake times, in the kernel's latency buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latencies(Buckets);

/// Equal counts (the bucket functions go with the type that holds them).
impl PartialEq for Buckets {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.sum == other.sum && self.counts == other.counts
    }
}

impl Eq for Buckets {}

impl Default for Histogram {
    fn default() -> Self {
        Self(Buckets::new(
            LIFETIME_BUCKETS,
            lifetime_bucket,
            lifetime_bucket_floor,
        ))
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self(Buckets::new(
            LATENCY_BUCKETS,
            latency_bucket,
            latency_bucket_floor,
        ))
    }
}

impl std::ops::Deref for Histogram {
    type Target = Buckets;
    fn deref(&self) -> &Buckets {
        &self.0
    }
}

impl std::ops::DerefMut for Histogram {
    fn deref_mut(&mut self) -> &mut Buckets {
        &mut self.0
    }
}

impl std::ops::Deref for Latencies {
    type Target = Buckets;
    fn deref(&self) -> &Buckets {
        &self.0
    }
}

impl std::ops::DerefMut for Latencies {
    fn deref_mut(&mut self) -> &mut Buckets {
        &mut self.0
    }
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("total", &self.total)
            .finish()
    }
}

impl Buckets {
    fn new(n: usize, index: fn(u64) -> usize, floor: fn(usize) -> u64) -> Self {
        Self {
            counts: vec![0; n].into_boxed_slice(),
            total: 0,
            sum: 0,
            index,
            floor,
        }
    }

    /// Adds counts kept elsewhere in the same buckets (the kernel's).
    pub fn add_buckets(&mut self, counts: &[u64]) {
        for (mine, more) in self.counts.iter_mut().zip(counts) {
            *mine += more;
            self.total += more;
        }
    }

    pub fn record(&mut self, v: u64) {
        let i = (self.index)(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// Adds the sum of values counted elsewhere (with [`Buckets::add_buckets`]).
    pub fn add_sum(&mut self, sum: u64) {
        self.sum = self.sum.saturating_add(sum);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding it.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((self.floor)(i));
            }
        }
        None
    }

    /// How many values were below `bound` (a bucket counts when its lower bound is below it):
    /// the cumulative counts of a histogram with fixed bounds, such as OpenMetrics'.
    pub fn count_below(&self, bound: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(i, _)| (self.floor)(i) < bound)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut last = 0;
        for v in (0..10_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last || v > 10_000, "{v}");
            last = i;
            assert!(lower_bound(i) <= v, "{v}: bound {}", lower_bound(i));
        }
    }

    #[test]
    fn quantiles_within_a_sixteenth() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1_000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 1.0 / 16.0, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 1.0 / 16.0, "{p99}");
        assert_eq!(h.total(), 1000);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(1.0), Some(7));
    }

    #[test]
    fn latencies_are_kept_in_microseconds_within_a_sixteenth() {
        let mut h = Latencies::default();
        // 300 ms waits, and one hour-and-a-half: in the last bucket.
        for _ in 0..99 {
            h.record(300_000_000);
        }
        h.record(90 * 60 * 1_000_000_000);
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!(p50 <= 300e6 && (300e6 - p50) / 300e6 < 1.0 / 16.0, "{p50}");
        assert!(h.quantile(1.0).unwrap() >= 3_600_000_000_000);
        // Below 16 us, exact microseconds.
        let mut small = Latencies::default();
        small.record(7_500);
        assert_eq!(small.quantile(0.5), Some(7_000));
        assert_eq!(h.count_below(300_000_001), 99);
        assert_eq!(h.count_below(1_000), 0);
        assert_eq!(h.total(), 100);
    }
}
