//! A one-shot signal that can be awaited with a deadline, from sync or async code (a flush
//! or shutdown waiting for the worker), and the shared timer thread that wakes async
//! waiters at their deadlines.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Completion {
    done: Mutex<(bool, Option<Waker>)>,
    cv: Condvar,
    /// Counts this completion while it lives on (see [`Completion::count_in`]).
    count: Mutex<Option<Counted>>,
}

/// Keeps its counter raised while it lives.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Completion {
    /// Counts this completion in `counter` from now until it is dropped: a flush whose
    /// caller stopped waiting while its message may still be queued (the worker drops the
    /// message once it has done with it), so that a stalled worker's backlog of abandoned
    /// flushes is bounded.
    pub(crate) fn count_in(&self, counter: &Arc<AtomicUsize>) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        if count.is_none() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *count = Some(Counted(counter.clone()));
        }
    }

    pub(crate) fn complete(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = true;
        if let Some(w) = g.1.take() {
            w.wake();
        }
        self.cv.notify_all();
    }

    pub(crate) fn wake(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = g.1.take() {
            w.wake();
        }
    }

    /// Waits until completed or `deadline`; true when completed.
    pub(crate) fn wait_until(&self, deadline: Instant) -> bool {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !g.0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Awaits completion or `deadline` without needing any particular async runtime.
    pub(crate) async fn wait_until_async(self: Arc<Self>, deadline: Instant) -> bool {
        // The shared timer thread wakes the future at the deadline; without it, a thread
        // of its own does.
        let timer = if wake_at(deadline, &self) {
            None
        } else {
            let me = self.clone();
            std::thread::Builder::new()
                .name("openlayer-trace-deadline".into())
                .spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    me.wake();
                })
                .ok()
        };
        let done = std::future::poll_fn(|cx| {
            let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 {
                return std::task::Poll::Ready(true);
            }
            if Instant::now() >= deadline {
                return std::task::Poll::Ready(false);
            }
            g.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        drop(timer);
        done
    }
}

// ---------------------------------------------------------------------------------------
// The shared timer
//
// One shared timer thread for the async waits (`flush_async`, `shutdown_async`): it wakes
// each waiting future at its deadline, so that a wait needs no async runtime of its own
// and no thread per call. Started on first use; waits that ended are forgotten.

struct Timer {
    /// Deadlines, and the completion whose waiter to wake then.
    entries: Mutex<Vec<(Instant, Weak<Completion>)>>,
    cv: Condvar,
}

static TIMER: Timer = Timer {
    entries: Mutex::new(Vec::new()),
    cv: Condvar::new(),
};
/// Whether the timer thread started, and in which process: the fork generation it was
/// started in (a forked child has no timer thread, and starts its own).
static STARTED: Mutex<Option<(u64, bool)>> = Mutex::new(None);

fn entries() -> MutexGuard<'static, Vec<(Instant, Weak<Completion>)>> {
    TIMER.entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes the waiter of `completion` at `deadline` (unless it is gone by then). False
/// when the timer thread could not be started.
pub(crate) fn wake_at(deadline: Instant, completion: &Arc<Completion>) -> bool {
    let generation = crate::util::id::fork_generation();
    let started = {
        let mut s = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            Some((g, started)) if g == generation => started,
            _ => {
                // The parent's entries are not this process's waits.
                entries().clear();
                let started = std::thread::Builder::new()
                    .name("openlayer-trace-timer".into())
                    .spawn(run)
                    .is_ok();
                *s = Some((generation, started));
                started
            }
        }
    };
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
