//! One shared timer thread for the async waits (`flush_async`, `shutdown_async`): it wakes
//! each waiting future at its deadline, so that a wait needs no async runtime of its own
//! and no thread per call. Started on first use; waits that ended are forgotten.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use crate::util::signal::Completion;

struct Timer {
    /// Deadlines, and the completion whose waiter to wake then.
    entries: Mutex<Vec<(Instant, Weak<Completion>)>>,
    cv: Condvar,
}

static TIMER: Timer = Timer {
    entries: Mutex::new(Vec::new()),
    cv: Condvar::new(),
};
/// Whether the timer thread started (decided once).
static STARTED: OnceLock<bool> = OnceLock::new();

fn entries() -> MutexGuard<'static, Vec<(Instant, Weak<Completion>)>> {
    TIMER.entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes the waiter of `completion` at `deadline` (unless it is gone by then). False
/// when the timer thread could not be started.
pub(crate) fn wake_at(deadline: Instant, completion: &Arc<Completion>) -> bool {
    let started = STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("openlayer-trace-timer".into())
            .spawn(run)
            .is_ok()
    });
    if !started {
        return false;
    }
    entries().push((deadline, Arc::downgrade(completion)));
    TIMER.cv.notify_one();
    true
}

fn run() {
    crate::util::reentry::suppress_this_thread();
    let mut g = entries();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        g.retain(|(at, w)| {
            if w.strong_count() == 0 {
                return false; // the wait has ended
            }
            if *at <= now {
                due.push(w.clone());
                return false;
            }
            true
        });
        if !due.is_empty() {
            drop(g);
            for w in due {
                if let Some(c) = w.upgrade() {
                    c.wake();
                }
            }
            g = entries();
            continue;
        }
        g = match g.iter().map(|(at, _)| *at).min() {
            None => TIMER.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                TIMER
                    .cv
                    .wait_timeout(g, at.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}
