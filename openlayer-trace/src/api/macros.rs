//! The update macros (`update_current_trace!`, `update_current_step!`). Exported at the
//! crate root; they expand to calls into the macro support (`__private`).

/// Merges keys into the current trace: `update_current_trace!(key = value, ...)`.
///
/// Values are any `Serialize`; keys are identifiers or string literals. See
/// [`update_current_trace()`](fn@crate::update_current_trace) for what each key does. The values are only
/// evaluated inside a trace.
///
/// ```
/// use openlayer_trace::{trace, update_current_trace};
///
/// #[trace]
/// fn chat(user: &str, message: &str) -> String {
///     update_current_trace!(
///         inference_id = format!("chat-{user}"),
///         user_id = user,
///         session_id = Some("s-1"),
///         "ab-test" = "variant-b",
///         nothing = None::<u8>, // ignored
///     );
///     message.to_string()
/// }
/// chat("u-1", "hi");
/// ```
#[macro_export]
macro_rules! update_current_trace {
    ($($key:tt = $value:expr),* $(,)?) => {{
        let mut __ol_update = $crate::__private::Update::trace();
        if __ol_update.is_active() {
            $( __ol_update.set($crate::__private::key!($key), &$value); )*
        }
        __ol_update.apply();
    }};
}

/// Merges keys into the current step: `update_current_step!(key = value, ...)`.
///
/// See [`update_current_step()`](fn@crate::update_current_step) for what each key does.
///
/// ```
/// use openlayer_trace::{trace, update_current_step};
///
/// #[trace(kind = "chat_completion")]
/// fn call_model(prompt: &str) -> String {
///     update_current_step!(model = "gpt-4o", prompt_tokens = 12, completion_tokens = 3, temperature = 0.2);
///     format!("echo: {prompt}")
/// }
/// call_model("hi");
/// ```
#[macro_export]
macro_rules! update_current_step {
    ($($key:tt = $value:expr),* $(,)?) => {{
        let mut __ol_update = $crate::__private::Update::step();
        if __ol_update.is_active() {
            $( __ol_update.set($crate::__private::key!($key), &$value); )*
        }
        __ol_update.apply();
    }};
}

/// A key of the update macros: an identifier or a string literal.
#[doc(hidden)]
#[macro_export]
macro_rules! __ol_key {
    ($key:ident) => {
        stringify!($key)
    };
    ($key:literal) => {
        $key
    };
}
