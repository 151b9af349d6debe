//! Ids: cheap random bits on the hot path, formatted as UUIDs off it.
//!
//! A default `uuid::Uuid::new_v4()` costs one `getrandom` syscall (~385 ns). A traced call
//! instead draws 128 bits from a per-thread generator (a few ns) seeded once from the
//! OS-randomised keys of `std`'s `RandomState`, and the background worker formats them as
//! version-4 UUID strings.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // `RandomState::new()` is keyed from OS randomness once per thread, then varied per call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.write_usize(&h as *const _ as usize);
    h.finish() | 1
}

/// wyrand: a small, fast generator with good statistical quality (not for secrets).
#[inline]
fn next_u64() -> u64 {
    STATE
        .try_with(|s| {
            let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
            s.set(x);
            let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) ^ t) as u64
        })
        .unwrap_or_else(|_| seed())
}

/// 128 random bits for a step id.
#[inline]
pub(crate) fn next_id() -> u128 {
    (u128::from(next_u64()) << 64) | u128::from(next_u64())
}

/// Formats random bits as a version-4 UUID string.
pub(crate) fn uuid_v4(bits: u128) -> String {
    let mut s = String::with_capacity(uuid::fmt::Hyphenated::LENGTH);
    push_uuid_v4(&mut s, bits);
    s
}

/// Appends random bits formatted as a version-4 UUID.
pub(crate) fn push_uuid_v4(out: &mut String, bits: u128) {
    let u = uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push_str(u.hyphenated().encode_lower(&mut buf));
}

/// The namespace of [`inference_id_for`]: UUID v5 of the URL namespace and
/// `https://openlayer.com/inference-id`.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3c1d_7c2e_5b6a_5f0e_9d2a_4c8b_1e7f_6a90);

/// Derives a deterministic inference id (a UUID v5) from a business key, so that a
/// feedback service can compute the id of a row without a lookup.
///
/// ```
/// use openlayer_trace::inference_id_for;
/// let a = inference_id_for("order-1234");
/// assert_eq!(a, inference_id_for("order-1234"));
/// assert_ne!(a, inference_id_for("order-1235"));
/// assert_eq!(a.len(), 36);
/// ```
pub fn inference_id_for(key: &str) -> String {
    uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes())
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_v4_uuids_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let s = uuid_v4(next_id());
            let u = uuid::Uuid::parse_str(&s).unwrap();
            assert_eq!(u.get_version_num(), 4);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn threads_do_not_share_a_sequence() {
        let a: Vec<u128> = std::thread::spawn(|| (0..100).map(|_| next_id()).collect())
            .join()
            .unwrap();
        let b: Vec<u128> = std::thread::spawn(|| (0..100).map(|_| next_id()).collect())
            .join()
            .unwrap();
        let a: HashSet<_> = a.into_iter().collect();
        assert!(b.iter().all(|x| !a.contains(x)));
    }
}
