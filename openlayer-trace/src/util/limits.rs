//! The defaults of the open-trace limits, shared by `Config` and the accounting in
//! `open_traces` (and by the compile-out build, which has only the former).

use std::time::Duration;

/// The default of `max_steps_per_trace`.
pub(crate) const DEFAULT_MAX_STEPS: usize = 10_000;
/// The default of `open_trace_warn_after`.
pub(crate) const DEFAULT_WARN_AFTER: Duration = Duration::from_secs(600);

/// The stack of our worker threads: room for the recursion of parsing and shaping a
/// trace `max_steps_per_trace` steps deep (address space reserved, not memory used).
pub(crate) const WORKER_STACK: usize = 64 * 1024 * 1024;
