//! The state lock of a trace: one compare-and-swap to take it and a store to release it.

/// The lock of a trace's state. Taken twice per step, almost never contended (only steps
/// of one trace running on several threads at once meet here), and held for a few
/// hundred instructions that never run user code: a flag set with one compare-and-swap
/// and cleared with a plain store (a `Mutex` also swaps on unlock, to wake waiters).
/// Waiters spin briefly, then yield. A panic while it is held cannot leave the state
/// half-written in a way tracing depends on, so there is no poisoning.
///
/// It stays because it pays: `benches/state_lock.rs` measures it at about half the cost of
/// `std::sync::Mutex` uncontended (3.4 ns against 6.9 ns) and contended by two threads
/// (12 ns against 22 ns); see BENCHMARKS.md, "The trace's state lock".
pub(crate) struct StateLock<T> {
    locked: std::sync::atomic::AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only reached through the lock (or `&mut self`), which gives one
// thread at a time access, so sharing the lock is as safe as sending the value.
unsafe impl<T: Send> Sync for StateLock<T> {}

impl<T> StateLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        StateLock {
            locked: std::sync::atomic::AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> StateGuard<'_, T> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        StateGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        }
    }

    #[cold]
    fn lock_contended(&self) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let mut spins = 0u32;
        loop {
            while self.locked.load(Relaxed) {
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Acquire, Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for StateLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLock").finish_non_exhaustive()
    }
}

/// The state of a trace, locked; unlocked when dropped.
pub(crate) struct StateGuard<'a, T> {
    lock: &'a StateLock<T>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<T> std::ops::Deref for StateGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for StateGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for StateGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock
            .locked
            .store(false, std::sync::atomic::Ordering::Release);
    }
}
