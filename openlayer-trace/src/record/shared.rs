//! A trace shared by its open steps and handles: its state behind the lock, its clock
//! anchor, and where it goes when it completes.

use std::sync::Arc;
use std::time::SystemTime;

use crate::record::lock::{StateGuard, StateLock};
use crate::record::pool::reused_buffers;
use crate::record::trace::TraceState;

/// A trace that is being recorded; shared by the steps, futures and handles of the trace.
#[derive(Debug)]
pub(crate) struct TraceShared {
    state: StateLock<TraceState>,
    /// The trace's clock anchor ([`clock::now`](crate::util::clock::now) nanoseconds): all step
    /// times are offsets from it.
    pub anchor: i64,
    /// The wall-clock time of the anchor, in nanoseconds since the Unix epoch.
    pub anchor_unix_ns: i128,
    /// Where the trace goes instead of the pipeline (test capture).
    pub capture: Option<Arc<dyn crate::record::sink::TraceSink>>,
}

impl TraceShared {
    /// A new trace whose clock anchor is `anchor`, a clock reading taken just now.
    pub(crate) fn new(
        capture: Option<Arc<dyn crate::record::sink::TraceSink>>,
        anchor: i64,
    ) -> Self {
        let (steps, text, extra) = reused_buffers();
        let state = TraceState {
            steps,
            text,
            extra,
            ..TraceState::default()
        };
        TraceShared {
            state: StateLock::new(state),
            anchor,
            anchor_unix_ns: crate::util::clock::unix_ns(anchor),
            capture,
        }
    }

    /// Makes a spent trace (completed, handed off, held by nothing else) a new one.
    pub(crate) fn reset(
        &mut self,
        capture: Option<Arc<dyn crate::record::sink::TraceSink>>,
        anchor: i64,
    ) {
        let (new_steps, new_text, new_extra) = reused_buffers();
        // Field by field, every field named (a new one must be reset here too): what a
        // spent trace has left is empty, so replacing it costs a check per field rather
        // than building a whole state and dropping the old one.
        let TraceState {
            steps,
            text,
            open,
            root_closed,
            shipped,
            inference_id,
            extra,
            open_key,
            held,
            steps_dropped,
        } = self.state.get_mut();
        *steps = new_steps;
        *text = new_text;
        *extra = new_extra;
        *open = 0;
        *root_closed = false;
        *shipped = false;
        *inference_id = None;
        *open_key = 0;
        *held = 0;
        *steps_dropped = 0;
        self.anchor = anchor;
        self.anchor_unix_ns = crate::util::clock::unix_ns(anchor);
        self.capture = capture;
    }

    /// Whether this trace has been handed off (its state was taken, leaving it empty).
    pub(crate) fn is_spent(&mut self) -> bool {
        let st = self.state.get_mut();
        st.shipped && st.steps.is_empty() && st.open == 0
    }

    /// Locks the state; a poisoned lock is still used (a panic elsewhere must not stop tracing).
    #[inline]
    pub(crate) fn lock(&self) -> StateGuard<'_, TraceState> {
        self.state.lock()
    }

    /// Nanoseconds from the anchor to the clock reading `t`.
    #[inline]
    pub(crate) fn offset(&self, t: i64) -> i64 {
        t.wrapping_sub(self.anchor)
    }

    /// The clock reading `offset` nanoseconds from the anchor.
    pub(crate) fn at(&self, offset: i64) -> i64 {
        self.anchor.saturating_add(offset)
    }

    /// Nanoseconds from the anchor to a wall-clock time.
    pub(crate) fn offset_of_wall(&self, t: SystemTime) -> i64 {
        let offset = crate::util::clock::unix_ns_of(t).saturating_sub(self.anchor_unix_ns);
        // Saturated: a time centuries away is a user's mistake, never a panic or a wrap.
        i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
    }
}
