//! Re-entrancy: a thread-local flag, set on our own threads and while our callbacks run.
//!
//! Where a root step would start, `context/` checks [`suppressed`]: traced code called
//! from a user's `mask` or `on_failure`, or running on our worker, spool or timer threads,
//! never starts a trace (so it cannot recurse into us, nor make a row per masked row).

use std::cell::Cell;

thread_local! {
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread (one of ours: the worker, the spool writer, the timer) as never
/// starting a trace.
pub(crate) fn suppress_this_thread() {
    let _ = SUPPRESSED.try_with(|s| s.set(true));
}

/// Whether a root step may not start on this thread now.
#[inline]
pub(crate) fn suppressed() -> bool {
    SUPPRESSED.try_with(Cell::get).unwrap_or(true)
}

/// Runs one of our callbacks (a user's `mask` or `on_failure`) with root steps
/// suppressed: traced code it calls starts no trace. The flag is restored afterwards,
/// even if `f` unwinds.
pub(crate) fn untraced<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(was) = self.0 {
                let _ = SUPPRESSED.try_with(|s| s.set(was));
            }
        }
    }
    let _restore = Restore(SUPPRESSED.try_with(|s| s.replace(true)).ok());
    f()
}
