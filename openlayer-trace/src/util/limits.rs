//! The defaults of the open-trace limits, shared by `Config` and the accounting in
//! `open_traces` (and by the compile-out build, which has only the former).

use std::time::Duration;

/// The default of `max_steps_per_trace`.
pub(crate) const DEFAULT_MAX_STEPS: usize = 10_000;
/// The default of `open_trace_warn_after`.
pub(crate) const DEFAULT_WARN_AFTER: Duration = Duration::from_secs(600);
