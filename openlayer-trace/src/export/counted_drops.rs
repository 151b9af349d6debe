//! Drops counted where they happen, away from the worker (the producer's full queue, a
//! trace that could not be encoded, a missing pipeline, an invalid row update), told to
//! `on_failure` by the one flusher that settles rows, as their counters grow.

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::config::FailureFn;
use crate::report::{Counters, DeliveryFailure, DropReason, notify};

/// What was told so far, per counter.
#[derive(Debug, Default)]
pub(crate) struct CountedDrops {
    told: [u64; 4],
}

impl CountedDrops {
    /// Tells `on_failure` of the drops counted since the last call.
    pub(crate) fn report(&mut self, c: &Counters, on_failure: Option<&FailureFn>) {
        let counted = [
            (
                // Less those the spool writer told itself (counted there before the
                // counter: a report between the two sees too few, made up for by the next).
                DropReason::QueueFull,
                // Acquire, before the told count: with the writer's order, the told
                // count read is never behind the drops it saw counted.
                c.queue_full
                    .load(Acquire)
                    .saturating_sub(c.queue_full_told.load(Relaxed)),
                "the trace queue was full; traces were dropped",
            ),
            (
                DropReason::Encoding,
                c.encoding.load(Relaxed),
                "traces could not be encoded (or masked); they were dropped",
            ),
            (
                DropReason::NoPipeline,
                c.no_pipeline.load(Relaxed),
                "no inference pipeline id is configured; traces were dropped",
            ),
            (
                DropReason::Rejected,
                c.invalid_updates.load(Relaxed),
                "row updates were invalid (an empty id, a row that is not a JSON object, a \
                 config naming a column the row lacks); they were dropped",
            ),
        ];
        for ((reason, now, message), last) in counted.into_iter().zip(&mut self.told) {
            if now > *last {
                let rows = now - *last;
                *last = now;
                notify(
                    on_failure,
                    DeliveryFailure {
                        rows,
                        dropped: Some(reason),
                        status: None,
                        message: message.into(),
                    },
                );
            }
        }
    }
}
