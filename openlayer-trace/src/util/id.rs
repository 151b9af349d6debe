//! Ids: cheap random bits on the hot path, formatted as UUIDs off it.
//!
//! A default `uuid::Uuid::new_v4()` costs one `getrandom` syscall (~385 ns). A traced call
//! instead draws 128 bits from a per-thread generator (a few ns) with 128 bits of state (two
//! wyrand streams), seeded once per thread from the OS (`getrandom`, falling back to `std`'s
//! OS-keyed `RandomState`), and the background worker formats them as version-4 UUID strings.
//! A forked child reseeds before its next draw (a `pthread_atfork` handler bumps a
//! generation that each thread compares with one relaxed load), so parent and child never
//! draw the same ids.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bumped in a forked child; a thread whose state is of an older generation reseeds.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Per-thread state: two 64-bit wyrand streams and the generation they were seeded in.
#[derive(Clone, Copy)]
struct State {
    hi: u64,
    lo: u64,
    generation: u64,
}

/// A generation no thread is ever seeded in: the first draw on a thread seeds it.
const UNSEEDED: u64 = u64::MAX;

thread_local! {
    // Const-initialized, and without a destructor: reading it is a plain thread-local
    // access, with no lazy-initialization check (the floor benchmark's `step_id` went
    // from 13.6 to 9.1 ns with this).
    static STATE: Cell<State> = const {
        Cell::new(State { hi: 0, lo: 0, generation: UNSEEDED })
    };
}

#[cfg(all(unix, feature = "enable"))]
fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        // Async-signal-safe: one atomic add.
        GENERATION.fetch_add(1, Relaxed);
    }
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic; it is never unregistered.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
}

// Without `enable` no ids are drawn (only `inference_id_for`, which hashes).
#[cfg(not(all(unix, feature = "enable")))]
fn watch_forks() {}

/// How many forks separate this process from the one that first asked (0 there, and in
/// a process that never forked since): a value taken before a fork differs in the child.
#[cfg(feature = "enable")]
pub(crate) fn fork_generation() -> u64 {
    watch_forks();
    GENERATION.load(Relaxed)
}

/// [`fork_generation`] once forks are watched (after the first call of it): one load.
#[cfg(feature = "enable")]
#[inline]
pub(crate) fn fork_generation_now() -> u64 {
    GENERATION.load(Relaxed)
}

/// 128 bits from the OS, else from `std`'s OS-keyed hasher, the clock and an address.
fn seed() -> State {
    watch_forks();
    let generation = GENERATION.load(Relaxed);
    #[cfg_attr(not(feature = "enable"), allow(unused_mut))]
    let mut bytes = [0u8; 16];
    #[cfg(feature = "enable")]
    let from_os = getrandom::getrandom(&mut bytes).is_ok();
    #[cfg(not(feature = "enable"))]
    let from_os = false;
    let (hi, lo) = if from_os {
        let v = u128::from_le_bytes(bytes);
        ((v >> 64) as u64, v as u64)
    } else {
        (fallback_seed(1), fallback_seed(2))
    };
    State { hi, lo, generation }
}

fn fallback_seed(stream: u64) -> u64 {
    // `RandomState::new()` is keyed from OS randomness once per thread, then varied per call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(stream);
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.write_usize(&h as *const _ as usize);
    h.finish()
}

/// wyrand: a small, fast generator with good statistical quality (not for secrets).
#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) ^ t) as u64
}

/// 128 random bits for a step id.
#[inline]
pub(crate) fn next_id() -> u128 {
    STATE
        .try_with(|cell| {
            let mut s = cell.get();
            if s.generation != GENERATION.load(Relaxed) {
                s = seed();
            }
            let (hi, lo) = (wyrand(&mut s.hi), wyrand(&mut s.lo));
            cell.set(s);
            (u128::from(hi) << 64) | u128::from(lo)
        })
        .unwrap_or_else(|_| {
            // The thread is being torn down: a fresh seed is random enough for one id.
            let mut s = seed();
            (u128::from(wyrand(&mut s.hi)) << 64) | u128::from(wyrand(&mut s.lo))
        })
}

/// Formats random bits as a version-4 UUID string.
pub(crate) fn uuid_v4(bits: u128) -> String {
    let mut s = String::with_capacity(uuid::fmt::Hyphenated::LENGTH);
    push_uuid_v4(&mut s, bits);
    s
}

/// Appends random bits formatted as a version-4 UUID (the version and variant bits set as
/// `uuid::Builder::from_random_bytes` sets them; a test checks the two agree).
///
/// Formatted here, a byte at a time through a table of the 256 two-digit pairs, rather
/// than with `uuid`'s digit-by-digit lookups: a step's id is formatted once per step on the
/// worker, and the inference id once per request by the web middleware, where it measured
/// 228 instructions with `uuid` against 110 this way (callgrind, the tower middleware
/// benchmark).
pub(crate) fn push_uuid_v4(out: &mut String, bits: u128) {
    out.push_str(UuidText::new(bits).as_str());
}

/// Random bits formatted as a version-4 UUID, on the stack (see [`push_uuid_v4`]).
///
/// Always ASCII (dashes and hex digits): [`new`](Self::new) is the only constructor, and
/// [`as_str`](Self::as_str) relies on it.
pub(crate) struct UuidText([u8; 36]);

impl UuidText {
    #[inline]
    pub(crate) fn new(bits: u128) -> Self {
        let mut bytes = bits.to_be_bytes();
        // Version 4 in the high nibble of byte 6, variant 10 in the top bits of byte 8.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let mut buf = [b'-'; 36];
        for (b, at) in bytes.into_iter().zip(AT) {
            buf[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        UuidText(buf)
    }

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        // SAFETY: hex digits and dashes only, all ASCII.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

/// Where each byte's two digits go in `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The two lowercase hex digits of every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// The namespace of [`inference_id_for`]: UUID v5 of the URL namespace and
/// `https://openlayer.com/inference-id` (checked by a test).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x82012a73_7c20_52ee_a47d_1906994bfa79);

/// Derives a deterministic inference id (a UUID v5) from a business key, so that a
/// feedback service can compute the id of a row without a lookup.
///
/// The id is the UUID v5 of `key` (its UTF-8 bytes) in the namespace
/// `82012a73-7c20-52ee-a47d-1906994bfa79`, itself the UUID v5 of the URL
/// `https://openlayer.com/inference-id`: a service in another language computes the same,
/// in Python `uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL,
/// "https://openlayer.com/inference-id"), key)`.
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
    /// The namespace is what the docs say (another language derives it the same way),
    /// and an id is the UUID v5 of its key in it (checked against Python's `uuid`).
    #[test]
    fn inference_ids_are_uuid_v5_in_the_documented_namespace() {
        let ns = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            b"https://openlayer.com/inference-id",
        );
        assert_eq!(super::NAMESPACE, ns);
        assert_eq!(
            super::inference_id_for("order-1234"),
            "d36f1c26-ba82-503a-be36-2507e9b4c3e7"
        );
    }

    use super::*;
    use std::collections::HashSet;

    #[test]
    fn uuid_v4_formats_as_the_uuid_crate_does() {
        // splitmix64, for values that cover every digit in every place.
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let samples = [0, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
            .into_iter()
            .chain((0..10_000).map(|_| u128::from(next()) << 64 | u128::from(next())));
        for bits in samples {
            let expected = uuid::Builder::from_random_bytes(bits.to_be_bytes())
                .into_uuid()
                .hyphenated()
                .to_string();
            assert_eq!(uuid_v4(bits), expected, "{bits:#x}");
        }
    }

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
