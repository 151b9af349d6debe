//! A one-shot signal that can be awaited with a deadline, from sync or async code (a flush
//! or shutdown waiting for the worker).

use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Completion {
    done: Mutex<(bool, Option<Waker>)>,
    cv: Condvar,
}

impl Completion {
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
        let timer = if crate::util::timer::wake_at(deadline, &self) {
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
