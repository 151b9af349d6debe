//! `init`, the guard, `flush` and `stats`, compiled out: there is no worker, nothing is
//! ever pending, and every counter stays zero.

use std::time::Duration;

use crate::config::Config;
use crate::error::Error;
use crate::report::{DeliveryReport, Stats};

/// Configures the SDK (compiled out: accepts any configuration and starts nothing).
#[inline(always)]
pub fn init(config: Config) -> Result<Guard, Error> {
    let _ = config;
    Ok(Guard { _private: () })
}

/// Configures the SDK from the environment (compiled out: reads nothing, starts nothing).
#[inline(always)]
pub fn init_from_env() -> Result<Guard, Error> {
    Ok(Guard { _private: () })
}

/// Whether a step started now would be recorded (compiled out: never).
#[inline(always)]
pub fn is_recording() -> bool {
    false
}

/// What [`init`] returns (compiled out: dropping it does nothing).
#[must_use = "dropping the guard flushes and stops the trace pipeline"]
#[derive(Debug)]
pub struct Guard {
    _private: (),
}

/// The report of a flush with nothing pending: complete, every counter zero.
#[inline(always)]
fn settled() -> DeliveryReport {
    DeliveryReport {
        stats: Stats::default(),
        complete: true,
    }
}

impl Guard {
    /// Returns at once: nothing is pending.
    #[inline(always)]
    pub fn flush(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let _ = timeout;
        Ok(settled())
    }

    /// Returns at once: nothing is pending.
    #[inline(always)]
    pub async fn flush_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let _ = timeout;
        Ok(settled())
    }

    /// Returns at once: there is no worker to stop.
    #[inline(always)]
    pub fn shutdown(self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let _ = timeout;
        Ok(settled())
    }

    /// Returns at once: there is no worker to stop.
    #[inline(always)]
    pub async fn shutdown_async(self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let _ = timeout;
        Ok(settled())
    }

    /// Every counter zero.
    #[inline(always)]
    pub fn stats(&self) -> Stats {
        Stats::default()
    }
}

/// Returns at once: nothing is pending.
#[inline(always)]
pub fn flush(timeout: Duration) -> Result<DeliveryReport, Error> {
    let _ = timeout;
    Ok(settled())
}

/// Returns at once: nothing is pending.
#[inline(always)]
pub async fn flush_async(timeout: Duration) -> Result<DeliveryReport, Error> {
    let _ = timeout;
    Ok(settled())
}

/// Every counter zero.
#[inline(always)]
pub fn stats() -> Stats {
    Stats::default()
}
