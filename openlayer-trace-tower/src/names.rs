//! Step names (`"{METHOD} {route}"`) made once and then borrowed.
//!
//! A service sees few distinct routes (axum's `MatchedPath` is the route's template), so
//! each name is made once, kept for the life of the process, and borrowed by every later
//! request's step: no allocation on the request's thread, and none freed on the worker's
//! (where a free of another thread's memory costs more than the allocation did).
//!
//! Lookups go to a small per-thread table first (no lock), then to the process-wide set
//! (a read lock). The set is bounded: past [`MAX_NAMES`] names or [`MAX_BYTES`] bytes
//! (paths with ids in them, when no route template is known), new names are allocated per
//! request, as before, and never kept, and the set, which no longer changes, is looked up
//! without its lock.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

/// Most names kept for the process.
pub(crate) const MAX_NAMES: usize = 1024;
/// Most bytes of names kept for the process.
pub(crate) const MAX_BYTES: usize = 64 * 1024;
/// Longest name kept (a longer one is allocated per request).
const MAX_LEN: usize = 256;
/// Slots of the per-thread table (a power of two).
const SLOTS: usize = 64;

struct Kept {
    names: HashSet<&'static str>,
    bytes: usize,
}

static KEPT: RwLock<Option<Kept>> = RwLock::new(None);
/// The set, once full (it no longer changes then): looked up without a lock.
static FROZEN: OnceLock<HashSet<&'static str>> = OnceLock::new();

thread_local! {
    static TABLE: [Cell<&'static str>; SLOTS] = const { [const { Cell::new("") }; SLOTS] };
}

/// `"{method} {route}"`: a kept name when there is one (or room for one), else a new
/// string.
pub(crate) fn method_and_route(method: &str, route: &str) -> Cow<'static, str> {
    method_and_route_if(method, route, || true)
}

/// [`method_and_route`] when `needed()`, asked only when the name is not in this thread's
/// table; else an empty name (for a step that is not recorded), made and kept nowhere.
pub(crate) fn method_and_route_if(
    method: &str,
    route: &str,
    needed: impl FnOnce() -> bool,
) -> Cow<'static, str> {
    let slot = hash(method, route) as usize & (SLOTS - 1);
    let cached = TABLE
        .try_with(|t| {
            let name = t[slot].get();
            is_name(name, method, route).then_some(name)
        })
        .ok()
        .flatten();
    if let Some(name) = cached {
        return Cow::Borrowed(name);
    }
    if !needed() {
        return Cow::Borrowed("");
    }
    match keep(method, route) {
        Ok(name) => {
            let _ = TABLE.try_with(|t| t[slot].set(name));
            Cow::Borrowed(name)
        }
        Err(name) => Cow::Owned(name),
    }
}

/// Whether `name` is `"{method} {route}"`.
#[inline]
fn is_name(name: &str, method: &str, route: &str) -> bool {
    let n = name.as_bytes();
    n.len() == method.len() + 1 + route.len()
        && n[..method.len()] == *method.as_bytes()
        && n[method.len()] == b' '
        && n[method.len() + 1..] == *route.as_bytes()
}

/// The kept name, kept now if new and there is room; else the name, made for this request
/// only.
///
/// Once the set is full, it no longer changes, and is looked up as a frozen copy without
/// its lock: names that fill the set are mostly paths with ids in them, each seen once,
/// for which every thread would otherwise take the lock.
#[cold]
fn keep(method: &str, route: &str) -> Result<&'static str, String> {
    let len = method.len() + 1 + route.len();
    let name = build(method, route);
    if len > MAX_LEN {
        return Err(name);
    }
    if let Some(frozen) = FROZEN.get() {
        return frozen.get(name.as_str()).copied().ok_or(name);
    }
    if let Some(kept) = KEPT.read().unwrap_or_else(|e| e.into_inner()).as_ref()
        && let Some(name) = kept.names.get(name.as_str())
    {
        return Ok(name);
    }
    let mut kept = KEPT.write().unwrap_or_else(|e| e.into_inner());
    let kept = kept.get_or_insert_with(|| Kept {
        names: HashSet::new(),
        bytes: 0,
    });
    if let Some(name) = kept.names.get(name.as_str()) {
        return Ok(name);
    }
    if kept.names.len() >= MAX_NAMES || kept.bytes + len > MAX_BYTES {
        // Full for good: nothing is added from now on.
        let _ = FROZEN.set(kept.names.clone());
        return Err(name);
    }
    // Kept for the life of the process, within the bounds above.
    let name: &'static str = Box::leak(name.into_boxed_str());
    kept.names.insert(name);
    kept.bytes += len;
    Ok(name)
}

/// `"{method} {route}"`, in one allocation of the exact size (`format!` goes through the
/// formatting machinery, which costs more than the rest of the name).
fn build(method: &str, route: &str) -> String {
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(route);
    name
}

/// A cheap hash of the method and route, to pick a slot (FxHash's multiply-rotate, eight
/// bytes at a time).
#[inline]
fn hash(method: &str, route: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (method.len() as u64).wrapping_mul(K);
    for b in method.as_bytes() {
        h = (h.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
    }
    let mut chunks = route.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exact_kept_once_and_bounded() {
        let a = method_and_route("GET", "/items/{id}");
        assert_eq!(a, "GET /items/{id}");
        let Cow::Borrowed(a) = a else {
            panic!("not kept")
        };
        // The same name again (this thread, then another): the same memory.
        let Cow::Borrowed(b) = method_and_route("GET", "/items/{id}") else {
            panic!("not kept")
        };
        assert!(std::ptr::eq(a, b));
        let c = std::thread::spawn(|| match method_and_route("GET", "/items/{id}") {
            Cow::Borrowed(c) => c as *const str as *const u8 as usize,
            Cow::Owned(_) => 0,
        })
        .join()
        .unwrap();
        assert_eq!(c, a.as_ptr() as usize);
        // Names that share a slot or a prefix are told apart.
        assert_eq!(method_and_route("POST", "/items/{id}"), "POST /items/{id}");
        assert_eq!(
            method_and_route("GET", "/items/{id}/x"),
            "GET /items/{id}/x"
        );
        assert_eq!(method_and_route("GET", "/items/{i"), "GET /items/{i");
        assert_eq!(method_and_route("GE", "T /items/{id}"), "GE T /items/{id}");
        for i in 0..200 {
            let route = format!("/r/{i}");
            assert_eq!(method_and_route("PUT", &route), format!("PUT {route}"));
        }
        // A name too long to keep is still right.
        let long = "/x".repeat(200);
        let name = method_and_route("GET", &long);
        assert!(matches!(name, Cow::Owned(_)));
        assert_eq!(name, format!("GET {long}"));

        // Far more distinct paths than may be kept (one test, as the set is the
        // process's): all named right, the set stays within its bounds, and later new
        // names are allocated while the kept ones are still borrowed.
        for i in 0..(MAX_NAMES + 500) {
            let route = format!("/bounded/{i}");
            assert_eq!(method_and_route("GET", &route), format!("GET {route}"));
        }
        {
            let kept = KEPT.read().unwrap();
            let kept = kept.as_ref().unwrap();
            assert!(kept.names.len() <= MAX_NAMES);
            assert!(kept.bytes <= MAX_BYTES);
        }
        assert!(FROZEN.get().is_some());
        assert!(matches!(
            method_and_route("GET", "/items/{id}"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            method_and_route("GET", "/bounded/new"),
            Cow::Owned(_)
        ));

        // Once full, names are looked up without waiting for the set's lock (held here by
        // a writer), on a thread whose table has none of them: a new one is made, a kept
        // one still borrowed.
        let writer = KEPT.write().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let named = std::thread::spawn(move || {
            let new = method_and_route("GET", "/bounded/after-full");
            let kept = method_and_route("GET", "/items/{id}");
            let _ = tx.send((new, kept));
        });
        let names = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(writer);
        named.join().unwrap();
        match names {
            Ok((Cow::Owned(new), Cow::Borrowed(kept))) => {
                assert_eq!(new, "GET /bounded/after-full");
                assert!(std::ptr::eq(kept, a));
            }
            other => panic!("waited for the full set's lock, or kept: {other:?}"),
        }
    }
}
