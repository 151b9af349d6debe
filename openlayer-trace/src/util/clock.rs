//! The clock of steps: monotonic nanoseconds as one `i64`, and the wall-clock time of a
//! reading.
//!
//! A step reads the clock twice. `Instant` costs the same system call but then needs
//! `Duration` arithmetic (about a hundred instructions) to become a number; on Linux this
//! reads `CLOCK_MONOTONIC` (the clock behind `Instant`) and is one multiply-add. The wall
//! clock is not read per trace: a reading's Unix time is its monotonic time plus an offset
//! between the two clocks, measured again whenever it is older than [`WALL_REFRESH_NS`], so
//! a change of the system time shows within that long.

use std::sync::atomic::{
    AtomicI64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far "never" is: any longer wait is cut to this (about 30 years), so that any
/// `Duration` is a valid timeout.
pub(crate) const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `from + wait`, saturating at [`FOREVER`] from `from`: never panics, whatever `wait`.
pub(crate) fn after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait.min(FOREVER))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(from)
}

/// [`after`] for tokio's `Instant`.
pub(crate) fn after_tokio(from: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(after(from.into_std(), wait))
}

/// Nanoseconds on the monotonic clock, from an arbitrary origin.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
pub(crate) fn now() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // `time_t` and `c_long` are 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    secs.wrapping_mul(1_000_000_000).wrapping_add(nanos)
}

/// Nanoseconds on the monotonic clock, from an arbitrary origin.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
pub(crate) fn now() -> i64 {
    portable_now()
}

/// [`now`] through `Instant`, for targets without `clock_gettime`. Compiled (and tested)
/// everywhere, so that it keeps building where it is used.
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
fn portable_now() -> i64 {
    static ORIGIN: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    ORIGIN.elapsed().as_nanos() as i64
}

/// How old the measured offset between the wall clock and the monotonic clock may get.
pub(crate) const WALL_REFRESH_NS: i64 = 100_000_000;

/// Unix nanoseconds minus monotonic nanoseconds, as last measured.
static WALL_OFFSET: AtomicI64 = AtomicI64::new(0);
/// The monotonic time of that measurement (`i64::MIN`: never). Stored after the offset
/// (release) and loaded before it (acquire), so that whoever sees a measurement sees its
/// offset too.
static WALL_MEASURED: AtomicI64 = AtomicI64::new(i64::MIN);

/// Unix time, in nanoseconds, of the monotonic reading `mono` (a recent one).
#[inline]
pub(crate) fn unix_ns(mono: i64) -> i128 {
    let measured = WALL_MEASURED.load(Acquire);
    let offset = if measured == i64::MIN || mono.saturating_sub(measured) > WALL_REFRESH_NS {
        measure_offset()
    } else {
        WALL_OFFSET.load(Relaxed)
    };
    i128::from(mono) + i128::from(offset)
}

#[cold]
fn measure_offset() -> i64 {
    let wall = unix_ns_of(SystemTime::now());
    let mono = now();
    let offset = (wall - i128::from(mono)) as i64;
    WALL_OFFSET.store(offset, Relaxed);
    WALL_MEASURED.store(mono, Release);
    offset
}

/// Nanoseconds since the Unix epoch (negative before it).
pub(crate) fn unix_ns_of(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_clock_is_monotonic_nanoseconds() {
        // Our interval lies within `Instant`'s (the same monotonic clock), so it can be
        // no longer, however long the thread is preempted between the readings.
        let i = Instant::now();
        let a = now();
        std::thread::sleep(Duration::from_millis(20));
        let b = now();
        let theirs = i.elapsed().as_nanos() as i64;
        let ours = b - a;
        assert!(ours >= 20_000_000, "{ours}");
        assert!(ours <= theirs, "{ours} vs {theirs}");
    }

    #[test]
    fn the_portable_clock_counts_nanoseconds_too() {
        let a = portable_now();
        std::thread::sleep(Duration::from_millis(5));
        let b = portable_now();
        assert!(b - a >= 5_000_000 && b - a < 1_000_000_000, "{}", b - a);
    }

    #[test]
    fn unix_time_of_a_reading_is_the_wall_clock() {
        let before = unix_ns_of(SystemTime::now());
        let t = unix_ns(now());
        let after = unix_ns_of(SystemTime::now());
        // Within 20 ms of the wall clock: the offset was measured up to 100 ms ago, from
        // two readings a preempted thread may have taken some milliseconds apart.
        assert!(
            t >= before - 20_000_000 && t <= after + 20_000_000,
            "{before} {t} {after}"
        );
    }
}
