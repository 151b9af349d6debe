//! Our own diagnostics: `tracing` events under target `openlayer_trace`, rate-limited so
//! that a misconfigured hot path cannot flood the application's logs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One rate limit: at most one event per `period_secs` per site.
pub(crate) struct RateLimit {
    last: AtomicU64,
    suppressed: AtomicU64,
    period_secs: u64,
}

impl RateLimit {
    pub(crate) const fn new(period_secs: u64) -> Self {
        RateLimit {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            period_secs,
        }
    }

    /// Returns `Some(suppressed_since_last)` when an event may be emitted now.
    pub(crate) fn allow(&self) -> Option<u64> {
        // The monotonic clock: the wall clock set back would silence every site for as
        // long as it went back.
        let now = u64::try_from(crate::util::clock::now() / 1_000_000_000).unwrap_or(0) + 1;
        let last = self.last.load(Relaxed);
        if (last == 0 || now >= last + self.period_secs)
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Emits a rate-limited `warn!` event (target `openlayer_trace`).
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::util::diag::RateLimit = $crate::util::diag::RateLimit::new(60);
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::warn!(target: "openlayer_trace", suppressed, $($arg)+);
        }
    }};
}
pub(crate) use warn_limited;

/// Emits a rate-limited `error!` event (target `openlayer_trace`).
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::util::diag::RateLimit = $crate::util::diag::RateLimit::new(60);
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::error!(target: "openlayer_trace", suppressed, $($arg)+);
        }
    }};
}
pub(crate) use error_limited;

/// Called by the `update_current_*`-style APIs when no trace is active.
pub(crate) fn outside_trace(api: &'static str) {
    warn_limited!(api, "{api} was called outside of a trace; ignored");
}

/// Writes a notice line to the process's stderr, ignoring a failure: `eprintln!` panics
/// when stderr is a closed pipe (`2>&1 | head`, a restarted journal), and the notices run
/// inside the first traced call, which must never panic into the application.
pub(crate) fn notice(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_once_per_period_and_counts_the_rest() {
        let l = RateLimit::new(3600);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(l.suppressed.load(Relaxed), 2);
    }
}
