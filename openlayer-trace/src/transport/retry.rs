//! The retry policy's inputs: the wait a server asks for (`retry-after-ms`, or
//! `Retry-After` in seconds or as an HTTP date), and the jitter added to a backoff.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The wait asked for by `retry-after-ms` (milliseconds) or `Retry-After` (seconds, or
/// an HTTP date), if any.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |s: f64| (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(1e9)));
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Some(wait) = seconds(ms / 1000.0)
    {
        return Some(wait);
    }
    let value = header(RETRY_AFTER.as_str())?;
    if let Ok(s) = value.parse::<f64>() {
        return seconds(s);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP date in any of the three formats recipients must accept (IMF-fixdate,
/// RFC 850, asctime).
pub(super) fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}

/// A number in `[0, 1)` to spread retries (not for anything secret): a per-thread
/// `fastrand` generator, seeded once per thread from the OS (`getrandom`), off the traced
/// path (only the worker retries).
pub(super) fn jitter() -> f64 {
    thread_local! {
        static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new({
            let mut seed = [0u8; 8];
            match getrandom::getrandom(&mut seed) {
                Ok(()) => fastrand::Rng::with_seed(u64::from_le_bytes(seed)),
                // `fastrand`'s own seeding (std's OS-keyed hasher, the thread, the clock).
                Err(_) => fastrand::Rng::new(),
            }
        });
    }
    RNG.try_with(|rng| rng.borrow_mut().f64())
        .unwrap_or_else(|_| fastrand::f64())
}
