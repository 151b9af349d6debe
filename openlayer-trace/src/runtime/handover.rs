//! Traces and row updates completed while `init` hands the spool directory from the
//! running pipeline to the next one (the old one must release it before the new one can
//! take it): kept here, bounded, and handed to the new pipeline once it runs, rather than
//! dropped by the old one as shut down.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::export::producer::Exporter;
use crate::export::protocol::queued_trace_bytes;
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::record::sink::{self, TraceSink};
use crate::report::DropReason;

/// What is kept, and how much may be.
struct Kept {
    traces: Vec<CompletedTrace>,
    updates: Vec<RowUpdate>,
    /// Bounds, as the old pipeline's queue had: items and (estimated) bytes.
    max_items: usize,
    max_bytes: usize,
    bytes: usize,
    /// Kept nowhere (past a bound), a trace's riding updates included: counted as dropped
    /// (`queue_full`) by the new pipeline.
    overflowed: u64,
}

impl Kept {
    /// Whether one more item of `bytes` fits.
    fn room(&self, bytes: usize) -> bool {
        self.traces.len() + self.updates.len() < self.max_items
            && self.bytes.saturating_add(bytes) <= self.max_bytes
    }
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
        let bytes = queued_trace_bytes(&trace);
        if let Some(k) = kept().as_mut() {
            if k.room(bytes) {
                k.bytes += bytes;
                k.traces.push(trace);
            } else {
                let riding = trace.state.extra.as_ref().map_or(0, |e| e.updates.len());
                k.overflowed += 1 + riding as u64;
            }
        }
    }
}

/// Starts keeping what completes, within the old pipeline's queue bounds; recording stays
/// as it was. The returned guard ends the hand-over (to whichever pipeline is installed
/// then) if `init` unwinds before [`end`].
pub(super) fn begin(old: &Arc<Exporter>) -> Unwinding {
    let (max_items, max_bytes) = (old.config.queue_capacity, old.config.queue_max_bytes);
    *kept() = Some(Kept {
        traces: Vec::new(),
        updates: Vec::new(),
        max_items: max_items.max(1),
        max_bytes: max_bytes.max(1),
        bytes: 0,
        overflowed: 0,
    });
    ACTIVE.store(true, Relaxed);
    sink::install_with(|| {
        let on = sink::enabled(|| false);
        (Some((Some(Arc::new(Keeper) as Arc<dyn TraceSink>), on)), ())
    });
    Unwinding(old.clone())
}

/// Ends a hand-over left under way by a panic in `init` (it holds the old pipeline):
/// before the new pipeline was installed, the old one becomes the sink again, shut down
/// (what was kept is counted there as dropped); after, the new one gets what was kept.
pub(super) struct Unwinding(Arc<Exporter>);

impl Drop for Unwinding {
    fn drop(&mut self) {
        if !ACTIVE.load(Relaxed) {
            return;
        }
        let current = super::PIPELINE
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match current {
            Some(p) if !Arc::ptr_eq(&p, &self.0) => end(&p),
            _ => {
                sink::install(Some(self.0.clone() as Arc<dyn TraceSink>), false);
                end(&self.0);
            }
        }
    }
}

/// Keeps a row update during a hand-over (`None`); else gives it back.
pub(super) fn keep_update(update: RowUpdate) -> Option<RowUpdate> {
    if !ACTIVE.load(Relaxed) {
        return Some(update);
    }
    let mut g = kept();
    let Some(k) = g.as_mut() else {
        return Some(update);
    };
    let bytes = update.size();
    if k.room(bytes) {
        k.bytes += bytes;
        k.updates.push(update);
    } else {
        k.overflowed += 1;
    }
    None
}

/// How many times [`end`] hands on what came in while it handed on the rest, before it
/// stops keeping (so that it ends however fast updates keep coming).
const DRAIN_PASSES: usize = 16;

/// Ends the hand-over (the global sink is already the pipeline `to`): what was kept goes
/// to `to`, in the order it completed within traces and within updates. Row updates made
/// meanwhile are kept too, behind those, for a few passes; then keeping stops.
pub(super) fn end(to: &Arc<Exporter>) {
    for pass in 1..=DRAIN_PASSES {
        let (traces, updates, overflowed, last) = {
            let mut g = kept();
            let Some(k) = g.as_mut() else {
                ACTIVE.store(false, Relaxed);
                return;
            };
            let last = pass == DRAIN_PASSES
                || (k.traces.is_empty() && k.updates.is_empty() && k.overflowed == 0);
            if last {
                // Under the lock, with what is kept taken whole: an update is either
                // kept (and handed on here) or finds nothing to keep it and goes on.
                ACTIVE.store(false, Relaxed);
                let k = g.take().expect("checked above");
                (k.traces, k.updates, k.overflowed, true)
            } else {
                k.bytes = 0;
                (
                    std::mem::take(&mut k.traces),
                    std::mem::take(&mut k.updates),
                    std::mem::take(&mut k.overflowed),
                    false,
                )
            }
        };
        for trace in traces {
            to.submit(trace);
        }
        for update in updates {
            to.enqueue_update(update);
        }
        if overflowed > 0 {
            to.count_dropped(overflowed, DropReason::QueueFull);
        }
        if last {
            return;
        }
    }
}
