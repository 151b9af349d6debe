//! The update macros without `enable`: the same syntax and the same type checks (values
//! are `Serialize`), and nothing evaluated at run time.

/// Merges keys into the current trace (compiled out: does nothing, and evaluates nothing).
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

/// Merges keys into the current step (compiled out: does nothing, and evaluates nothing).
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
