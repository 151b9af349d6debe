//! Panics and the application's code on tracing paths: the message of the thread's last
//! panic (kept by the library's panic hook, which `api::step` installs, so that the steps
//! a panic unwinds through record it), and [`caught`], which runs the application's code
//! (a `Serialize`, `Debug` or `Display` implementation) so that its panic stops there.

use std::cell::RefCell;

/// The message of a panic, and the key of the trace it happened in (its clock anchor).
pub(crate) type KeyedMessage = (i64, String);

thread_local! {
    static PANIC_MESSAGE: RefCell<Option<KeyedMessage>> = const { RefCell::new(None) };
}

/// Replaces the message of the thread's last panic (`None`: no panic to tell of).
pub(crate) fn set_message(message: Option<KeyedMessage>) {
    let _ = PANIC_MESSAGE.try_with(|m| *m.borrow_mut() = message);
}

/// The message of the thread's last panic, if one is kept, with the key of its trace.
pub(crate) fn message() -> Option<KeyedMessage> {
    PANIC_MESSAGE
        .try_with(|m| m.borrow().clone())
        .ok()
        .flatten()
}

/// The message of the thread's last panic if it happened in the trace keyed `key`. A
/// panic caught (by a runtime, say) leaves its message here; another trace that a later
/// `resume_unwind` (which runs no hook) unwinds through must not record it: it may hold
/// another request's data.
pub(crate) fn message_of(key: i64) -> Option<String> {
    PANIC_MESSAGE
        .try_with(|m| match &*m.borrow() {
            Some((k, text)) if *k == key => Some(text.clone()),
            _ => None,
        })
        .ok()
        .flatten()
}

/// Runs `f`, the application's code on a tracing path: `None` when it panicked, the panic
/// stopped here, so that traced code goes on as if untraced.
///
/// The panic hooks have run as for any panic, and the library's replaced the message its
/// steps record: it is put back to that of the panic already unwinding through them (if
/// the thread is unwinding, as in a `Drop`), or cleared, so that a step never records the
/// message of a panic that was stopped here. The payload is dropped under a second catch:
/// a payload whose own `Drop` panics must not escape either (that one's payload is
/// leaked).
#[inline]
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    let unwinding = std::thread::panicking();
    let kept = if unwinding { message() } else { None };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            if let Err(inner) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
            {
                std::mem::forget(inner);
            }
            set_message(kept);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_gives_none_and_puts_back_the_message_of_the_unwinding_one() {
        assert_eq!(caught(|| 7), Some(7));
        set_message(Some((1, "stale".into())));
        let r: Option<u8> = caught(|| panic!("caught here"));
        assert_eq!(r, None);
        // Not unwinding: no panic is in flight, so no message is kept.
        assert_eq!(message(), None);

        struct InDrop;
        impl Drop for InDrop {
            fn drop(&mut self) {
                // As the library's hook would have kept it for the panic unwinding now.
                set_message(Some((1, "db down".into())));
                let r = caught(|| -> u8 { panic!("caught during the unwind") });
                OUT.with(|o| *o.borrow_mut() = Some((r, message_of(1))));
            }
        }
        thread_local! {
            static OUT: RefCell<Option<(Option<u8>, Option<String>)>> = const { RefCell::new(None) };
        }
        let outer = std::panic::catch_unwind(|| {
            let _d = InDrop;
            panic!("db down");
        });
        assert!(outer.is_err());
        let (r, msg) = OUT.with(|o| o.borrow_mut().take()).unwrap();
        assert_eq!(r, None);
        assert_eq!(msg.as_deref(), Some("db down"));
        set_message(None);
    }

    #[test]
    fn a_message_is_told_only_to_its_own_trace() {
        set_message(Some((7, "in trace 7".into())));
        assert_eq!(message_of(7).as_deref(), Some("in trace 7"));
        assert_eq!(message_of(8), None);
        set_message(None);
    }
}
