//! Kernel timestamps (CLOCK_MONOTONIC) to wall-clock time, and RFC 3339 formatting.
use std::io;

use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

/// Converts CLOCK_MONOTONIC nanoseconds to Unix nanoseconds, using the offset between the two
/// clocks measured once at start-up (a later wall-clock step does not reorder events).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; clock ids are constants this kernel supports.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    /// The process-wide clock: the offset is measured once, so every part of sockwatch (the
    /// exported file, the live summary) turns a kernel timestamp into the very same time.
    pub fn new() -> Self {
        static OFFSET: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
        let offset_ns = *OFFSET.get_or_init(|| {
            let mono = now_ns(libc::CLOCK_MONOTONIC);
            let real = now_ns(libc::CLOCK_REALTIME);
            real - mono
        });
        Self { offset_ns }
    }

    /// A clock with a fixed offset, for tests.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix nanoseconds, kept within what an i64 holds (years 1677 to 2262), so every
    /// consumer (file, summary) sees the same value even for a nonsensical kernel timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        (i128::from(monotonic_ns) + self.offset_ns)
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
    }

    pub fn monotonic_now() -> u64 {
        now_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

const RFC3339_NS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
const TIME_OF_DAY_US: &[BorrowedFormatItem<'static>] =
    format_description!("[hour]:[minute]:[second].[subsecond digits:6]");

fn utc(unix_ns: i128) -> io::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `unix_ns` as RFC 3339 UTC with nanoseconds, e.g. `2026-11-21T09:41:02.123456789Z`.
pub fn write_rfc3339(out: &mut impl io::Write, unix_ns: i128) -> io::Result<()> {
    utc(unix_ns)?
        .format_into(out, RFC3339_NS)
        .map(|_| ())
        .map_err(io::Error::other)
}

/// Writes the UTC time of day with microseconds, e.g. `09:41:02.123456`.
pub fn write_time_of_day(out: &mut impl io::Write, unix_ns: i128) -> io::Result<()> {
    utc(unix_ns)?
        .format_into(out, TIME_OF_DAY_US)
        .map(|_| ())
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(ns: i128) -> String {
        let mut v = Vec::new();
        write_rfc3339(&mut v, ns).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn rfc3339_keeps_all_nine_digits() {
        assert_eq!(rfc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc(1_795_254_062_123_456_789),
            "2026-11-21T09:41:02.123456789Z"
        );
        assert_eq!(rfc(1_000_000_001), "1970-01-01T00:00:01.000000001Z");
    }

    #[test]
    fn time_of_day() {
        let mut v = Vec::new();
        write_time_of_day(&mut v, 1_795_254_062_123_456_789).unwrap();
        assert_eq!(v, b"09:41:02.123456");
    }

    #[test]
    fn every_clock_agrees() {
        assert_eq!(WallClock::new().unix_ns(42), WallClock::new().unix_ns(42));
    }

    #[test]
    fn offset_is_applied() {
        let c = WallClock::with_offset(1_000);
        assert_eq!(c.unix_ns(5), 1_005);
        // The real clock maps "now" to within a minute of the system time.
        let c = WallClock::new();
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((c.unix_ns(WallClock::monotonic_now()) - sys).abs() < 60_000_000_000);
    }
}
