//! Heap accounting: what an allocation really takes, for the memory budget of undelivered
//! data.

/// Heap bytes an allocation of `n` bytes really takes: glibc's malloc adds an 8-byte
/// header and rounds each chunk up to 16 bytes, 32 at least. Other allocators differ by a
/// few bytes; the budget only needs to be a close upper estimate.
pub(crate) const fn heap_bytes(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// Heap bytes a string that may be borrowed holds (none when borrowed).
#[allow(clippy::ptr_arg)] // whether it is owned is the point
pub(crate) fn cow_heap_bytes(s: &std::borrow::Cow<'static, str>) -> usize {
    match s {
        std::borrow::Cow::Owned(s) => heap_bytes(s.capacity()),
        std::borrow::Cow::Borrowed(_) => 0,
    }
}
