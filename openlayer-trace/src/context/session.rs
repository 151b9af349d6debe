//! A user and session scope, for middleware (the official SDK's
//! `set_user_session_context`): every trace started inside gets the row columns `user_id`
//! and `session_id`, unless the trace sets its own.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::record::{Json, TraceState, to_json, upsert};

/// The user and session columns of the traces started inside a scope.
#[derive(Debug)]
struct Columns {
    user_id: Option<Json>,
    session_id: Option<Json>,
}

thread_local! {
    static CURRENT: Cell<Option<Arc<Columns>>> = const { Cell::new(None) };
}

/// Sets the session columns on a trace that is starting (its state is new).
#[inline]
pub(crate) fn stamp(st: &mut TraceState) {
    let Ok(Some(cols)) = CURRENT.try_with(|c| {
        let cur = c.take();
        let copy = cur.clone();
        c.set(cur);
        copy
    }) else {
        return;
    };
    stamp_columns(st, &cols);
}

#[cold]
fn stamp_columns(st: &mut TraceState, cols: &Columns) {
    if let Some(u) = &cols.user_id {
        upsert(
            &mut st.extra_mut().columns,
            Cow::Borrowed("user_id"),
            u.clone(),
        );
    }
    if let Some(s) = &cols.session_id {
        upsert(
            &mut st.extra_mut().columns,
            Cow::Borrowed("session_id"),
            s.clone(),
        );
    }
}

/// A user id and a session id to give every trace started in a scope: the row columns
/// `user_id` and `session_id` (a trace that sets its own with `update_current_trace!`
/// keeps those). Made by [`with_user_session`] and [`enter_user_session`], or built here to
/// leave one of them out.
///
/// ```
/// use openlayer_trace::UserSession;
///
/// let _scope = UserSession::new().user_id("u-42").enter(); // no session id
/// ```
#[derive(Debug, Clone, Default)]
pub struct UserSession {
    user_id: Option<String>,
    session_id: Option<String>,
}

impl UserSession {
    /// A scope with neither id (set them with [`user_id`](Self::user_id) and
    /// [`session_id`](Self::session_id)).
    pub fn new() -> Self {
        Self::default()
    }

    /// The `user_id` column.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// The `session_id` column.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    fn columns(&self) -> Arc<Columns> {
        Arc::new(Columns {
            user_id: self.user_id.as_deref().and_then(to_json),
            session_id: self.session_id.as_deref().and_then(to_json),
        })
    }

    /// Makes this the scope of the current thread until the guard is dropped (scopes nest:
    /// the innermost one counts). The guard is not `Send`; for `async` code use
    /// [`scope`](Self::scope), which follows the future wherever it is polled.
    pub fn enter(&self) -> UserSessionGuard {
        let prev = CURRENT.try_with(|c| c.replace(Some(self.columns())));
        UserSessionGuard {
            prev: prev.ok().flatten(),
            _not_send: PhantomData,
        }
    }

    /// Runs `future` in this scope: the scope is current during each of its polls, on
    /// whichever thread polls it.
    pub fn scope<F: Future>(&self, future: F) -> WithUserSession<F> {
        WithUserSession {
            inner: future,
            columns: self.columns(),
        }
    }
}

/// Runs `future` with a user and session scope: every trace it starts gets the row
/// columns `user_id` and `session_id` (unless the trace sets its own).
///
/// ```
/// use openlayer_trace::{trace, with_user_session};
///
/// #[trace]
/// async fn chat(message: String) -> String { message.to_uppercase() }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // In a middleware, around the request's handler:
/// let answer = with_user_session("u-42", "s-7", chat("hi".into())).await;
/// # assert_eq!(answer, "HI");
/// # });
/// ```
pub fn with_user_session<F: Future>(
    user_id: impl Into<String>,
    session_id: impl Into<String>,
    future: F,
) -> WithUserSession<F> {
    UserSession::new()
        .user_id(user_id)
        .session_id(session_id)
        .scope(future)
}

/// The synchronous form of [`with_user_session`]: the scope lasts until the guard is
/// dropped, on this thread.
///
/// ```
/// use openlayer_trace::{enter_user_session, trace};
///
/// #[trace]
/// fn chat(message: &str) -> String { message.to_uppercase() }
///
/// let _scope = enter_user_session("u-42", "s-7");
/// chat("hi"); // its row has user_id "u-42" and session_id "s-7"
/// ```
pub fn enter_user_session(
    user_id: impl Into<String>,
    session_id: impl Into<String>,
) -> UserSessionGuard {
    UserSession::new()
        .user_id(user_id)
        .session_id(session_id)
        .enter()
}

/// Keeps a [`UserSession`] current on this thread; restores the previous one when dropped.
#[must_use = "the scope ends when the guard is dropped"]
pub struct UserSessionGuard {
    prev: Option<Arc<Columns>>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for UserSessionGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let _ = CURRENT.try_with(|c| c.set(prev));
    }
}

impl std::fmt::Debug for UserSessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserSessionGuard")
    }
}

pin_project! {
    /// A future running in a user and session scope; see [`with_user_session`].
    #[must_use = "futures do nothing unless polled"]
    pub struct WithUserSession<F> {
        #[pin]
        inner: F,
        columns: Arc<Columns>,
    }
}

impl<F> std::fmt::Debug for WithUserSession<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithUserSession")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for WithUserSession<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let prev = CURRENT.try_with(|c| c.replace(Some(this.columns.clone())));
        let _restore = UserSessionGuard {
            prev: prev.ok().flatten(),
            _not_send: PhantomData,
        };
        this.inner.poll(cx)
    }
}
