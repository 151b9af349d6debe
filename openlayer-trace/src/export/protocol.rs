//! The worker's message protocol: what the producer side hands to the worker, and how
//! often the worker drains its queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::encode::OutRow;
use crate::export::spool::segment::WalRef;
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::util::signal::Completion;

/// How long the worker rests after draining the queue before it waits on it again.
///
/// While it waits, the queue holds its waker, so every hand-off from a traced call would
/// wake it: a futex call, and often a context switch, on the application's thread per
/// trace. Resting a little after each drain lets hand-offs be a few atomics and the next
/// drain take many traces at once. A flush waits at most this much longer.
pub(crate) const WORKER_PACE: Duration = Duration::from_millis(1);

/// What a control message asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Flush,
    Shutdown,
}

// Deliberately by value (see `Trace`): the other messages are small and rare.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    /// A completed trace, with its estimated size. By value: handing it off allocates
    /// nothing on the application's thread (nor frees anything on the worker's).
    Trace(CompletedTrace, usize),
    /// A row already encoded (and written ahead, unless that failed), with its size.
    Row(Box<(OutRow, Option<WalRef>)>, usize),
    /// A row update, with its size, and where it was written ahead to the spool (in
    /// write-ahead mode); sent after any row with its inference id still on its way.
    Update(Box<RowUpdate>, usize, Option<WalRef>),
    Flush(Arc<Completion>, Instant),
    Shutdown(Arc<Completion>, Instant),
}

/// What a completed trace holds while it waits in the queue: its slot in the channel
/// (it travels by value) and what its records hold (see `TraceState::approx_bytes`).
pub(crate) fn queued_trace_bytes(trace: &CompletedTrace) -> usize {
    size_of::<Msg>() + trace.state.approx_bytes()
}
