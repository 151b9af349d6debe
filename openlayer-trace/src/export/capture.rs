//! The test capture: traces encoded into memory instead of being exported (see
//! `testing::capture`).

use std::sync::{Mutex, RwLock};

#[cfg(any(test, feature = "test-util"))]
use crate::config::Config;
use crate::encode::row_policy::{Prepared, Shaper};
use crate::encode::{self, EncodedRow};
use crate::record::CompletedTrace;

/// The shaping of the installed configuration (set by `runtime/` when it installs one).
static INSTALLED: RwLock<Option<Shaper>> = RwLock::new(None);

/// Records the shaping of the configuration just installed, for captures that use it.
pub(crate) fn set_installed_shaper(shaper: Shaper) {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(shaper);
}

/// Traces captured in memory instead of being exported (see `testing::capture`), shaped
/// (sampled, masked, cut to the field budget) as delivery would shape them.
#[derive(Debug, Default)]
pub(crate) struct CaptureSink {
    rows: Mutex<Vec<EncodedRow>>,
    /// The shaping of this configuration; `None`: that of the configuration installed
    /// when a trace completes (none before `init`).
    shaper: Option<Shaper>,
}

impl crate::record::sink::TraceSink for CaptureSink {
    fn submit(&self, trace: CompletedTrace) {
        self.push(&trace);
    }
}

impl CaptureSink {
    /// A capture shaped as `config`'s delivery would shape its rows.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn with_config(config: &Config) -> Self {
        CaptureSink {
            rows: Mutex::new(Vec::new()),
            shaper: Some(Shaper::new(config)),
        }
    }

    fn push(&self, trace: &CompletedTrace) {
        let installed;
        let shaper = match &self.shaper {
            Some(s) => Some(s),
            None => {
                installed = INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone();
                installed.as_ref()
            }
        };
        let row = match shaper {
            Some(s) => match s.prepare(trace) {
                Prepared::Row(row) => Some(row),
                // Too deep to mask on this thread: as a worker would, on a stack of the
                // worker's size (tests only).
                Prepared::TooDeep => std::thread::scope(|scope| {
                    std::thread::Builder::new()
                        .stack_size(crate::util::limits::WORKER_STACK)
                        .spawn_scoped(scope, || {
                            crate::encode::row_policy::shape_on_big_stack();
                            match s.prepare(trace) {
                                Prepared::Row(row) => Some(row),
                                _ => None,
                            }
                        })
                        .ok()?
                        .join()
                        .ok()
                        .flatten()
                }),
                _ => None,
            },
            None => encode::encode(trace),
        };
        if let Some(row) = row {
            self.rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(row);
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn take(&self) -> Vec<EncodedRow> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
