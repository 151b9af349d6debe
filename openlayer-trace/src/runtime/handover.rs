//! Traces and row updates completed while `init` hands the spool directory from the
//! running pipeline to the next one (the old one must release it before the new one can
//! take it): kept here, bounded, and handed to the new pipeline once it runs, rather than
//! dropped by the old one as shut down.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::export::producer::Exporter;
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::record::sink::{self, TraceSink};
use crate::report::DropReason;

/// What is kept, and how much may be.
struct Kept {
    traces: Vec<CompletedTrace>,
    updates: Vec<RowUpdate>,
    max: usize,
    /// Kept nowhere (past `max`): counted as dropped (`queue_full`) by the new pipeline.
    overflowed: u64,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);
/// Whether a hand-over is under way: row updates look at [`KEPT`] only then.
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn kept() -> MutexGuard<'static, Option<Kept>> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sink while the spool changes hands.
#[derive(Debug)]
struct Keeper;

impl TraceSink for Keeper {
    fn submit(&self, trace: CompletedTrace) {
        if let Some(k) = kept().as_mut() {
            if k.traces.len() + k.updates.len() < k.max {
                k.traces.push(trace);
            } else {
                k.overflowed += 1;
            }
        }
    }
}

/// Starts keeping what completes (at most `max` traces and updates, as many as the old
/// pipeline's queue held); recording stays as it was.
pub(super) fn begin(max: usize) {
    *kept() = Some(Kept {
        traces: Vec::new(),
        updates: Vec::new(),
        max: max.max(1),
        overflowed: 0,
    });
    ACTIVE.store(true, Relaxed);
    sink::install_with(|| {
        let on = sink::enabled(|| false);
        (Some((Some(Arc::new(Keeper) as Arc<dyn TraceSink>), on)), ())
    });
}

/// Keeps a row update during a hand-over (`None`); else gives it back.
pub(super) fn keep_update(update: RowUpdate) -> Option<RowUpdate> {
    if !ACTIVE.load(Relaxed) {
        return Some(update);
    }
    match kept().as_mut() {
        Some(k) if k.traces.len() + k.updates.len() < k.max => {
            k.updates.push(update);
            None
        }
        Some(k) => {
            k.overflowed += 1;
            None
        }
        None => Some(update),
    }
}

/// Ends the hand-over (the global sink is already the pipeline `to`): what was kept goes
/// to `to`, in the order it completed within traces and within updates.
pub(super) fn end(to: Option<&Arc<Exporter>>) {
    ACTIVE.store(false, Relaxed);
    let Some(k) = kept().take() else {
        return;
    };
    let Some(to) = to else {
        return;
    };
    for trace in k.traces {
        to.submit(trace);
    }
    for update in k.updates {
        to.enqueue_update(update);
    }
    if k.overflowed > 0 {
        to.count_dropped(k.overflowed, DropReason::QueueFull);
    }
}
