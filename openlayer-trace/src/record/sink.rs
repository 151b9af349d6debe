//! The one seam through which a completed trace leaves the hot path.
//!
//! A [`TraceSink`] takes completed traces, once per trace. The runtime installs the
//! exporter of the current configuration here as the global sink; a test capture is a sink
//! carried by the thread's position instead. So `context/` and `record/` name no concrete
//! destination: the hot path reads [`enabled`] (one relaxed load) when it may start a
//! trace, and calls [`submit`] when one completes.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use crate::record::trace::CompletedTrace;

/// Where completed traces go.
pub(crate) trait TraceSink: Send + Sync + fmt::Debug {
    /// Takes a completed trace. Never blocks on I/O and never fails into the caller.
    fn submit(&self, trace: CompletedTrace);
}

const UNINIT: u8 = 0;
const ENABLED: u8 = 1;
const DISABLED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static GLOBAL: RwLock<Option<Arc<dyn TraceSink>>> = RwLock::new(None);

/// Whether new traces are recorded: one relaxed load once configured. Before the SDK is
/// configured, `configure` is called (once, cold) to configure it and say whether tracing
/// is on.
#[inline]
pub(crate) fn enabled(configure: fn() -> bool) -> bool {
    match STATE.load(Relaxed) {
        ENABLED => true,
        DISABLED => false,
        _ => configure(),
    }
}

/// Whether the SDK has been configured (by `init`, lazily, or turned off).
#[inline]
pub(crate) fn configured() -> bool {
    STATE.load(Relaxed) != UNINIT
}

/// Turns recording off or on without changing the global sink.
pub(crate) fn set_enabled(on: bool) {
    STATE.store(if on { ENABLED } else { DISABLED }, Relaxed);
}

/// Installs `sink` as the global sink (none: traces are dropped), then turns recording on
/// or off.
pub(crate) fn install(sink: Option<Arc<dyn TraceSink>>, on: bool) {
    install_with(|| (Some((sink, on)), ()));
}

/// A sink to install (none: traces are dropped) and whether recording is on.
pub(crate) type Installed = (Option<Arc<dyn TraceSink>>, bool);

/// Runs `decide` with the global sink locked for writing, then installs what it asks for,
/// if anything. The sink's lock is taken first, before any lock `decide` takes: a hand-off
/// under way holds it for reading and may call back into the SDK (a write-ahead mask
/// calling `flush`), which takes those other locks; taken in the other order, the two
/// would wait for each other.
pub(crate) fn install_with<R>(decide: impl FnOnce() -> (Option<Installed>, R)) -> R {
    let mut global = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    let (install, r) = decide();
    if let Some((sink, on)) = install {
        *global = sink;
        set_enabled(on);
    }
    r
}

/// Hands a completed trace off: to `capture` when there is one, else to the global sink.
pub(crate) fn submit(trace: CompletedTrace, capture: Option<&Arc<dyn TraceSink>>) {
    if let Some(capture) = capture {
        return capture.submit(trace);
    }
    // Submitted under the read lock rather than with a clone of the sink: a clone and its
    // drop are two more atomic writes to a line every tracing thread shares. `submit`
    // never blocks (and never completes a trace, which would take the lock again), so
    // `install` waits for no more than the hand-offs under way.
    let global = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    match &*global {
        Some(sink) => sink.submit(trace),
        None => tracing::debug!(target: "openlayer_trace", "trace dropped: no pipeline"),
    }
}
