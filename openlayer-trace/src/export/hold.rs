//! A pause of every request that the server asked for (`Retry-After`), shared by the
//! flushers.

use std::time::Duration;

use tokio::time::Instant;

/// The longest pause of all requests that a `Retry-After` obtains.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(600);

/// Until when requests wait, if the server asked them to.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    until: Option<Instant>,
}

impl Hold {
    /// The server asked for `wait` before the next request (`Retry-After` beyond what a
    /// request waits, or beyond its retries): no request starts until then, at most
    /// [`MAX_HOLD`] from now. A shorter wait than one already asked for changes nothing.
    pub(crate) fn asked(&mut self, wait: Duration, what: &str) {
        let wait = wait.min(MAX_HOLD);
        let until = crate::util::clock::after_tokio(Instant::now(), wait);
        if self.until.is_some_and(|t| t >= until) {
            return;
        }
        self.until = Some(until);
        crate::util::diag::warn_limited!(
            wait_s = wait.as_secs_f64(),
            "{what} asked to wait before the next request (Retry-After); requests paused until then"
        );
    }

    /// Whether requests wait now (forgetting a pause that has ended).
    pub(crate) fn active(&mut self) -> bool {
        match self.until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }

    /// Whether, with no request in flight (`in_flight` is 0), the pause lasts past
    /// `deadline`: nothing can be sent before it, so a shutdown need not wait for it.
    pub(crate) fn outlasts(&self, deadline: Instant, in_flight: usize) -> bool {
        in_flight == 0 && self.until.is_some_and(|t| t >= deadline)
    }

    /// When the pause ends, for the flusher's next wake.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }
}
