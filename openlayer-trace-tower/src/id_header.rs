//! The response header that carries the row's inference id, made without an allocation
//! per request.
//!
//! Each id is copied into a per-thread slab and the header value shares it: making one
//! costs a copy of the id and a reference count (one atomic increment, and a decrement
//! when the response is dropped), where a header value of its own costs an allocation
//! and a free. In the middleware benchmark that is one allocation and 107 instructions
//! fewer per request (callgrind; see `BENCHMARKS.md`). A slab is freed when the last
//! response that shares it is dropped, so one response held for long keeps its slab's
//! 4 KiB alive.
//!
//! The value is marked sensitive, so that HTTP/2's header compression never adds it to a
//! connection's table (HPACK's "never indexed"): an id is unique to its response, so an
//! entry for it could never be used again, would push out entries that could, and would
//! keep its slab alive for as long as the connection's table held it.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;

/// Bytes of one slab: a hundred generated ids.
const SLAB: usize = 4096;
/// Ids longer than this get a value of their own rather than a slab's room.
const SHARED_MAX: usize = 128;

thread_local! {
    static SLAB_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The header value for `id`, marked sensitive; `None` when `id` is not a valid header
/// value (a custom id with control characters), is not ASCII (a client would read other
/// characters back from the header's bytes, and send feedback for another id), or is
/// longer than [`MAX_INFERENCE_ID_LEN`](crate::MAX_INFERENCE_ID_LEN) (no response
/// carries a header that large back).
pub(crate) fn header_value(id: &str) -> Option<HeaderValue> {
    if id.len() > crate::MAX_INFERENCE_ID_LEN || !id.is_ascii() {
        return None;
    }
    let mut value = shared_value(id).or_else(|| HeaderValue::try_from(id).ok())?;
    value.set_sensitive(true);
    Some(value)
}

/// `id`'s value in this thread's slab; `None` when `id` is too long for one, not a valid
/// value, or the slab is gone (the thread is ending).
fn shared_value(id: &str) -> Option<HeaderValue> {
    if id.len() > SHARED_MAX || !valid_value(id.as_bytes()) {
        return None;
    }
    SLAB_BUF
        .try_with(|slab| {
            // Nothing below calls back in here: the borrow cannot fail, and is a guard only.
            let mut slab = slab.try_borrow_mut().ok()?;
            if slab.capacity() - slab.len() < id.len() {
                // The old slab lives on in the values that share it.
                *slab = BytesMut::with_capacity(SLAB);
            }
            slab.extend_from_slice(id.as_bytes());
            let bytes = slab.split().freeze();
            // SAFETY: the bytes are a copy of a `str`, so valid UTF-8 (the only condition),
            // and were checked above to be a valid header value.
            Some(unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) })
        })
        .ok()
        .flatten()
}

/// Whether `b` is a valid header value: no control character but tab, and no DEL (the
/// check of `HeaderValue::from_bytes`).
///
/// Eight bytes at a time, without a branch per word: `from_maybe_shared`'s own check cost
/// about 60 instructions per generated id in the middleware benchmark (it did not
/// vectorize there), this one about 27. A value with a byte below 0x20 or equal to 0x7f
/// anywhere (a tab, say) is checked again byte by byte.
#[inline]
fn valid_value(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let valid_byte = |c: u8| (c >= 0x20 && c != 0x7f) || c == b'\t';
    // A byte's high bit is set here only if some byte of the word is below 0x20 (first
    // term) or is 0x7f (second): bytes of 0x80 and above are masked out by `!x`, and a
    // borrow only ever flags bytes above a byte that is flagged itself.
    let flags = |word: &[u8; 8]| {
        let x = u64::from_ne_bytes(*word);
        let del = x ^ (ONES * 0x7f);
        (x.wrapping_sub(ONES * 0x20) & !x) | (del.wrapping_sub(ONES) & !del)
    };
    let Some(last) = b.last_chunk::<8>() else {
        return b.iter().all(|&c| valid_byte(c));
    };
    // The whole words, and the last eight bytes (overlapping them) for the rest.
    let (words, _) = b.as_chunks::<8>();
    let flagged = words.iter().fold(flags(last), |f, w| f | flags(w)) & HIGH;
    flagged == 0 || b.iter().all(|&c| valid_byte(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exact_and_slabs_roll_over() {
        let mut kept = Vec::new();
        // Well past one slab, with ids of varying length (the custom ones).
        for i in 0..500 {
            let id = format!("{i:08x}-{}", "x".repeat(i % 40));
            let v = header_value(&id).expect("valid");
            assert_eq!(v.to_str().unwrap(), id);
            kept.push((id, v));
        }
        // Values made earlier are unchanged by later ones (each owns its range).
        for (id, v) in &kept {
            assert_eq!(v.as_bytes(), id.as_bytes());
            assert!(v.is_sensitive());
        }
        // Consecutive values share a slab: each starts where the one before ended.
        let shared = kept
            .windows(2)
            .filter(|w| {
                let (a, b) = (w[0].1.as_bytes(), w[1].1.as_bytes());
                std::ptr::eq(a.as_ptr_range().end, b.as_ptr())
            })
            .count();
        // All but the first value of each new slab (500 ids of 9 to 48 bytes: a few slabs).
        assert!(shared >= 490, "{shared} of 499 pairs shared a slab");
        // Long ids (a value of their own), the longest there is, and the longest shared.
        let long = "a".repeat(crate::MAX_INFERENCE_ID_LEN);
        let long_value = header_value(&long).unwrap();
        assert_eq!(long_value.as_bytes(), long.as_bytes());
        assert!(long_value.is_sensitive());
        assert!(header_value(&format!("{long}a")).is_none());
        let edge = "b".repeat(SHARED_MAX);
        assert_eq!(header_value(&edge).unwrap().as_bytes(), edge.as_bytes());
        // Invalid header values are refused, and the next one is still right.
        assert!(header_value("bad\nid").is_none());
        assert!(header_value(&format!("{long}\u{7f}")).is_none());
        assert_eq!(header_value("ok-id").unwrap(), "ok-id");
    }

    #[test]
    fn the_check_agrees_with_http() {
        // Every byte, alone and inside an id, in and out of the vector-wide part.
        for b in 0..=255u8 {
            for at in [0, 5, 17, 35] {
                let mut id = *b"0123456789abcdef0123456789abcdef0123";
                id[at] = b;
                assert_eq!(
                    valid_value(&id),
                    HeaderValue::from_bytes(&id).is_ok(),
                    "byte {b:#04x} at {at}"
                );
            }
        }
        // Random ids, a quarter of their bytes from the edges (borrows across bytes).
        let edges = [
            0x00, 0x08, 0x09, 0x0a, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xa0, 0xff,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut id = [0u8; 19];
            for b in &mut id {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let r = (seed >> 33) as usize;
                *b = if r.is_multiple_of(4) {
                    edges[r / 4 % edges.len()]
                } else {
                    b'a' + (r % 26) as u8
                };
            }
            assert_eq!(
                valid_value(&id),
                HeaderValue::from_bytes(&id).is_ok(),
                "{id:?}"
            );
        }
        // Every length around the word size, each edge byte at each place.
        for len in 1..=20 {
            for at in 0..len {
                for &e in &edges {
                    let mut id = vec![b'x'; len];
                    id[at] = e;
                    assert_eq!(
                        valid_value(&id),
                        HeaderValue::from_bytes(&id).is_ok(),
                        "{id:?}"
                    );
                }
            }
        }
        assert!(valid_value(b""));
        assert!(valid_value("caf\u{e9}\tok".as_bytes()));
    }
}
