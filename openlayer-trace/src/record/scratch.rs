//! This thread's scratch buffer, to serialize into without a growing allocation.

use std::cell::Cell;

thread_local! {
    /// A reusable buffer to serialize into, so that a value costs one exact allocation
    /// (or none, when it is copied into its trace's text) instead of a growing one.
    static SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// Runs `f` with this thread's scratch buffer, empty. A nested call (a `Serialize` impl
/// that traces) gets a fresh buffer instead.
#[inline]
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut String) -> R) -> R {
    let mut buf = take_scratch();
    let r = f(&mut buf);
    give_scratch(buf);
    r
}

/// Takes this thread's scratch buffer, empty (a new one if it is in use).
#[inline]
pub(crate) fn take_scratch() -> String {
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf
}

/// Gives a buffer taken with [`take_scratch`] back (or a larger one in its place).
#[inline]
pub(crate) fn give_scratch(buf: String) {
    if buf.capacity() <= SCRATCH_MAX {
        let _ = SCRATCH.try_with(|c| {
            let prev = c.take();
            c.set(if prev.capacity() > buf.capacity() {
                prev
            } else {
                buf
            });
        });
    }
}

/// The largest scratch buffer a thread keeps.
const SCRATCH_MAX: usize = 64 * 1024;
