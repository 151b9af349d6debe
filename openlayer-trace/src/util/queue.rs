//! The bounded queue between the threads that complete traces and the worker: many
//! senders, one receiver, with the subset of `tokio::sync::mpsc`'s bounded channel that the
//! pipeline uses (`try_send`, `send`, `recv`, `try_recv`, `close`), the
//! same semantics, and no allocation per message.
//!
//! Why not tokio's channel: it stores messages in linked blocks of 32 slots, allocated by
//! the sender that fills one and freed (or, for a few, recycled) by the receiver. A
//! completed trace travels by value (about 300 bytes), so a block is a 9 KiB allocation on
//! the application's thread every 32 traces, freed on the worker's: outside glibc's
//! per-thread caches, with `malloc_consolidate` on the way. With the worker resting a
//! millisecond between drains, most blocks are freed rather than recycled. Measured on the
//! tower middleware's request path (BENCHMARKS.md, "tower middleware"), the channel was
//! about a tenth of a request's cost, most of it in those allocations.
//!
//! Here messages wait in a `VecDeque` behind a mutex. The receiver swaps the whole queue
//! for its own empty one when it has taken everything it had, so the senders and the
//! receiver meet once per drain rather than once per message, and the two buffers are
//! reused (one that grew beyond [`KEEP_BYTES`] is freed when it empties). A sender takes
//! the lock (uncontended: one compare-and-swap), checks the count, pushes, and wakes the
//! receiver only when it is waiting. Senders that wait for room (`send`) are served in the order they came, and room made while one waits is its own, as with
//! tokio: `try_send` on the hot path cannot starve a sender waiting to be queued. The receiver gives room back in groups of up to
//! [`RELEASE_EVERY`] messages (and at once when it has taken everything), so that the
//! count the senders read is not written by another core for every message.
//!
//! `send`, and with it the line of senders waiting for room, is used by the OTLP exporter
//! only (which hands traces on to the data stream's worker); the tracing paths and the
//! control messages never wait.
#![cfg_attr(not(feature = "otlp"), allow(dead_code))]

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// An emptied buffer whose capacity holds more than this many bytes of messages is freed
/// rather than kept for the next drain.
const KEEP_BYTES: usize = 256 * 1024;

/// Most messages received before the room they took is given back.
const RELEASE_EVERY: usize = 32;

/// A bounded queue of `capacity` messages (at least 1); see the module documentation.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
            rx_waker: None,
            waiters: VecDeque::new(),
            next_ticket: 0,
        }),
        len: AtomicUsize::new(0),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
        tx_waiting: AtomicBool::new(false),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            local: VecDeque::new(),
            unreleased: 0,
        },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Messages sent and not yet received: queued, or in the receiver's batch. Raised only
    /// by a sender holding the lock, so that two senders never both take the last place.
    len: AtomicUsize,
    capacity: usize,
    senders: AtomicUsize,
    /// The receiver closed the queue or was dropped (read without the lock).
    closed: AtomicBool,
    /// Some sender waits for room (read by the receiver after each message it takes).
    tx_waiting: AtomicBool,
}

struct State<T> {
    queue: VecDeque<T>,
    closed: bool,
    /// The receiver, when it waits for a message.
    rx_waker: Option<Waker>,
    /// Senders waiting for room, first come first served (as tokio's semaphore): room
    /// made goes to the front one, and `try_send` does not take it while any waits.
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

impl<T> State<T> {
    fn is_front(&self, ticket: Option<u64>) -> bool {
        match ticket {
            None => self.waiters.is_empty(),
            Some(t) => self.waiters.front().is_some_and(|w| w.0 == t),
        }
    }

    /// Forgets a waiter; the front one's waker when room is left for it.
    fn leave(&mut self, ticket: u64, shared: &Shared<T>) -> Option<Waker> {
        if let Some(i) = self.waiters.iter().position(|w| w.0 == ticket) {
            self.waiters.remove(i);
        }
        if self.waiters.is_empty() {
            shared.tx_waiting.store(false, SeqCst);
            return None;
        }
        (shared.len.load(SeqCst) < shared.capacity).then(|| self.waiters[0].1.clone())
    }
}

impl<T> Shared<T> {
    /// Locks the state; a poisoned lock is still used (nothing in it runs user code).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the first sender waiting for room (after room was made); it wakes the next
    /// one if room is left when it has sent.
    fn wake_front(&self) {
        let waker = self.lock().waiters.front().map(|w| w.1.clone());
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Why [`Sender::try_send`] failed; the message is handed back.
#[derive(PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` messages.
    Full(T),
    /// The receiver closed the queue or is gone.
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub(crate) fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) => v,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "Full(..)",
            TrySendError::Closed(_) => "Closed(..)",
        })
    }
}

/// [`Sender::send`] failed: the receiver closed the queue or is gone.
#[derive(PartialEq, Eq)]
pub(crate) struct SendError<T>(pub(crate) T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

/// Why [`Receiver::try_recv`] returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued, and nothing will be: every sender is gone, or the queue was
    /// closed.
    Disconnected,
}

/// The sending half; cheap to clone.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `value` if there is room; never waits.
    #[inline]
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        // Room made while senders wait is theirs (as in tokio).
        self.try_push(value, 0, true)
    }

    /// Queues `value` if fewer than `capacity + extra` messages are queued; never waits.
    /// For messages that must stay in order behind those already queued (a row update
    /// behind its row), allowed past the capacity by a bounded margin, and ahead of the
    /// senders waiting for room (which then wait for one more message to be taken).
    pub(crate) fn try_send_beyond(&self, value: T, extra: usize) -> Result<(), TrySendError<T>> {
        self.try_push(value, extra, false)
    }

    /// Queues `value` if fewer than `capacity + extra` messages are queued (and, with
    /// `behind_waiters`, no sender waits for room).
    #[inline]
    fn try_push(
        &self,
        value: T,
        extra: usize,
        behind_waiters: bool,
    ) -> Result<(), TrySendError<T>> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.closed {
            return Err(TrySendError::Closed(value));
        }
        if (behind_waiters && !st.waiters.is_empty())
            || shared.len.load(Relaxed) >= shared.capacity.saturating_add(extra)
        {
            return Err(TrySendError::Full(value));
        }
        shared.len.fetch_add(1, Relaxed);
        st.queue.push_back(value);
        let waker = st.rx_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `value`, waiting for room; senders that wait are served in turn.
    pub(crate) async fn send(&self, value: T) -> Result<(), SendError<T>> {
        /// The place in the line of waiting senders, given up when the future is dropped.
        struct Place<'a, T> {
            shared: &'a Shared<T>,
            ticket: Option<u64>,
        }
        impl<T> Drop for Place<'_, T> {
            fn drop(&mut self) {
                if let Some(t) = self.ticket.take() {
                    let next = self.shared.lock().leave(t, self.shared);
                    if let Some(w) = next {
                        w.wake();
                    }
                }
            }
        }
        let mut place = Place {
            shared: &self.shared,
            ticket: None,
        };
        let mut value = Some(value);
        poll_fn(|cx| self.poll_send(&mut place.ticket, &mut value, cx)).await
    }

    fn poll_send(
        &self,
        ticket: &mut Option<u64>,
        value: &mut Option<T>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError<T>>> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.closed {
            // `close` emptied the line.
            *ticket = None;
            let v = value.take().expect("polled after completion");
            return Poll::Ready(Err(SendError(v)));
        }
        if ticket.is_none()
            && (!st.waiters.is_empty() || shared.len.load(Relaxed) >= shared.capacity)
        {
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.waiters.push_back((t, cx.waker().clone()));
            *ticket = Some(t);
        } else if let Some(t) = *ticket
            && let Some(w) = st.waiters.iter_mut().find(|w| w.0 == t)
            && !w.1.will_wake(cx.waker())
        {
            w.1 = cx.waker().clone();
        }
        if ticket.is_some() {
            // Seen by a receiver that makes room after this (it then wakes the front
            // sender), or the room it made is seen below.
            shared.tx_waiting.store(true, SeqCst);
        }
        if !st.is_front(*ticket) || shared.len.load(SeqCst) >= shared.capacity {
            return Poll::Pending;
        }
        let v = value.take().expect("polled after completion");
        shared.len.fetch_add(1, Relaxed);
        st.queue.push_back(v);
        let next = ticket.take().and_then(|t| st.leave(t, shared));
        let rx = st.rx_waker.take();
        drop(st);
        for w in next.into_iter().chain(rx) {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Queues `value`, blocking this thread until there is room. Not for async code.
    #[cfg(test)]
    pub(crate) fn blocking_send(&self, value: T) -> Result<(), SendError<T>> {
        use std::future::Future;
        use std::task::Wake;
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut send = std::pin::pin!(self.send(value));
        loop {
            if let Poll::Ready(r) = send.as_mut().poll(&mut cx) {
                return r;
            }
            std::thread::park();
        }
    }

    /// Whether the receiver closed the queue or is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, SeqCst) == 1 {
            // The last one: a waiting receiver learns that nothing more will come.
            let waker = self.shared.lock().rx_waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.shared.len.load(Relaxed))
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The batch taken from the queue and not yet received.
    local: VecDeque<T>,
    /// Messages received whose room is not given back yet.
    unreleased: usize,
}

impl<T> Receiver<T> {
    /// The next message, without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(v) = self.take_local() {
            return Ok(v);
        }
        let done = self.refill();
        match self.take_local() {
            Some(v) => Ok(v),
            None if done => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next message, waiting for one; `None` once the queue is closed (or every
    /// sender is gone) and empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(v) = self.take_local() {
            return Poll::Ready(Some(v));
        }
        let shared = &*self.shared;
        let mut st = shared.lock();
        let done = Self::swap(&mut st, &mut self.local, shared);
        if !self.local.is_empty() {
            drop(st);
            return Poll::Ready(self.take_local());
        }
        if done {
            return Poll::Ready(None);
        }
        match &st.rx_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.rx_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Stops the senders (they get `Closed`); what is queued can still be received.
    pub(crate) fn close(&mut self) {
        let shared = &*self.shared;
        let waiters = {
            let mut st = shared.lock();
            st.closed = true;
            shared.tx_waiting.store(false, SeqCst);
            std::mem::take(&mut st.waiters)
        };
        shared.closed.store(true, Release);
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// Takes the next message of the batch; its room is given back with the next
    /// [`RELEASE_EVERY`] (or when the batch is used up).
    #[inline]
    fn take_local(&mut self) -> Option<T> {
        let v = self.local.pop_front()?;
        self.unreleased += 1;
        if self.unreleased >= RELEASE_EVERY || self.local.is_empty() {
            self.release();
        }
        Some(v)
    }

    /// Gives back the room of the messages received so far.
    fn release(&mut self) {
        let shared = &*self.shared;
        shared
            .len
            .fetch_sub(std::mem::take(&mut self.unreleased), SeqCst);
        if shared.tx_waiting.load(SeqCst) {
            shared.wake_front();
        }
    }

    /// Takes what is queued as the next batch (the batch is empty); true when nothing
    /// more can come after it.
    fn refill(&mut self) -> bool {
        let shared = &*self.shared;
        let mut st = shared.lock();
        Self::swap(&mut st, &mut self.local, shared)
    }

    fn swap(st: &mut State<T>, local: &mut VecDeque<T>, shared: &Shared<T>) -> bool {
        debug_assert!(local.is_empty());
        if local.capacity() * size_of::<T>() > KEEP_BYTES {
            *local = VecDeque::new();
        }
        std::mem::swap(&mut st.queue, local);
        st.closed || shared.senders.load(SeqCst) == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
        // As tokio: what is queued goes now, not with the last sender (dropped outside
        // the lock: a message's drop may run anything).
        let queued = std::mem::take(&mut self.shared.lock().queue);
        drop(queued);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.shared.len.load(Relaxed))
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests;
