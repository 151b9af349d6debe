//! What the update macros expand to without `enable`. Not a public API.

/// The update macros' target: never active, so the values are never evaluated.
#[derive(Debug)]
pub struct Update(());

impl Update {
    /// An update of the current trace (none: tracing is compiled out).
    #[inline(always)]
    pub fn trace() -> Self {
        Update(())
    }

    /// An update of the current step (none).
    #[inline(always)]
    pub fn step() -> Self {
        Update(())
    }

    /// Always false.
    #[inline(always)]
    pub fn is_active(&self) -> bool {
        false
    }

    /// Does nothing (only type-checks `value` as the enabled build does).
    #[inline(always)]
    pub fn set<T: serde::Serialize + ?Sized>(&mut self, _key: &str, _value: &T) {}

    /// Does nothing.
    #[inline(always)]
    pub fn apply(self) {}
}

pub use crate::__ol_key as key;
