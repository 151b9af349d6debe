//! The trace position and its propagation (futures, tasks, threads, user sessions),
//! compiled out: there is never a current trace, and the wrappers only pass through.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A position in a trace (compiled out: none is ever current, so none is ever made).
#[derive(Debug, Clone)]
pub struct TraceContext {
    _private: (),
}

impl TraceContext {
    /// Always `None`.
    #[inline(always)]
    pub fn current() -> Option<TraceContext> {
        None
    }

    /// A guard that does nothing.
    #[inline(always)]
    pub fn attach(&self) -> AttachGuard<'_> {
        AttachGuard { _ctx: PhantomData }
    }

    /// Runs `f`.
    #[inline(always)]
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `future`, passed through.
    #[inline(always)]
    pub fn wrap<F: Future>(self, future: F) -> WithTrace<F> {
        WithTrace { inner: future }
    }
}

/// What [`TraceContext::attach`] returns (compiled out: does nothing).
#[must_use = "the context is detached when the guard is dropped"]
#[derive(Debug)]
pub struct AttachGuard<'a> {
    _ctx: PhantomData<(&'a TraceContext, *const ())>,
}

/// Always `None`.
#[inline(always)]
pub fn current_context() -> Option<TraceContext> {
    None
}

/// A future carrying a trace position (compiled out: the inner future, passed through).
#[must_use = "futures do nothing unless polled"]
pub struct WithTrace<F> {
    inner: F,
}

impl<F> std::fmt::Debug for WithTrace<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithTrace").finish_non_exhaustive()
    }
}

impl<F: Future> Future for WithTrace<F> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: never moved out of the pinned `self`.
        unsafe { self.map_unchecked_mut(|s| &mut s.inner) }.poll(cx)
    }
}

/// Carries the current trace into futures (compiled out: passes them through).
pub trait FutureExt: Future + Sized {
    /// This future, passed through.
    #[inline(always)]
    fn in_current_trace(self) -> WithTrace<Self> {
        WithTrace { inner: self }
    }

    /// This future, passed through.
    #[inline(always)]
    fn with_trace_context(self, ctx: Option<TraceContext>) -> WithTrace<Self> {
        let _ = ctx;
        WithTrace { inner: self }
    }
}

impl<F: Future> FutureExt for F {}

/// `tokio::spawn` (there is no trace to carry). Needs the `tokio` feature (which `enable`
/// turns on).
///
/// # Panics
///
/// Like `tokio::spawn`, when called outside a Tokio runtime.
#[cfg(feature = "tokio")]
#[inline(always)]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Threads that carry the current trace (compiled out: plain threads).
pub mod thread {
    /// `std::thread::spawn`.
    #[inline(always)]
    pub fn spawn<F, T>(f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::thread::spawn(f)
    }
}

/// The user and session of the traces started in a scope (compiled out: kept nowhere).
#[derive(Debug, Clone, Default)]
pub struct UserSession {
    _private: (),
}

impl UserSession {
    /// A scope with neither id.
    #[inline(always)]
    pub fn new() -> Self {
        Self::default()
    }

    /// The `user_id` column (ignored).
    #[inline(always)]
    pub fn user_id(self, user_id: impl Into<String>) -> Self {
        let _ = user_id;
        self
    }

    /// The `session_id` column (ignored).
    #[inline(always)]
    pub fn session_id(self, session_id: impl Into<String>) -> Self {
        let _ = session_id;
        self
    }

    /// A guard that does nothing.
    #[inline(always)]
    pub fn enter(&self) -> UserSessionGuard {
        UserSessionGuard {
            _not_send: PhantomData,
        }
    }

    /// `future`, passed through.
    #[inline(always)]
    pub fn scope<F: Future>(&self, future: F) -> WithUserSession<F> {
        WithUserSession { inner: future }
    }
}

/// `future`, passed through.
#[inline(always)]
pub fn with_user_session<F: Future>(
    user_id: impl Into<String>,
    session_id: impl Into<String>,
    future: F,
) -> WithUserSession<F> {
    let _ = (user_id, session_id);
    WithUserSession { inner: future }
}

/// A guard that does nothing.
#[inline(always)]
pub fn enter_user_session(
    user_id: impl Into<String>,
    session_id: impl Into<String>,
) -> UserSessionGuard {
    let _ = (user_id, session_id);
    UserSessionGuard {
        _not_send: PhantomData,
    }
}

/// What [`UserSession::enter`] returns (compiled out: does nothing).
#[must_use = "the scope ends when the guard is dropped"]
#[derive(Debug)]
pub struct UserSessionGuard {
    _not_send: PhantomData<*const ()>,
}

/// A future in a user session scope (compiled out: the inner future, passed through).
#[must_use = "futures do nothing unless polled"]
pub struct WithUserSession<F> {
    inner: F,
}

impl<F> std::fmt::Debug for WithUserSession<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithUserSession").finish_non_exhaustive()
    }
}

impl<F: Future> Future for WithUserSession<F> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: never moved out of the pinned `self`.
        unsafe { self.map_unchecked_mut(|s| &mut s.inner) }.poll(cx)
    }
}
