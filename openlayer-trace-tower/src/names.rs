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
//! request, as before, and never kept.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
/// The set is full: skip it.
static FULL: AtomicBool = AtomicBool::new(false);

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
        Some(name) => {
            let _ = TABLE.try_with(|t| t[slot].set(name));
            Cow::Borrowed(name)
        }
        None => Cow::Owned(build(method, route)),
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

/// The kept name, kept now if new and there is room; `None` when there is none.
#[cold]
fn keep(method: &str, route: &str) -> Option<&'static str> {
    let len = method.len() + 1 + route.len();
    if len > MAX_LEN {
        return None;
    }
    let name = build(method, route);
    if let Some(kept) = KEPT.read().unwrap_or_else(|e| e.into_inner()).as_ref()
        && let Some(name) = kept.names.get(name.as_str())
    {
        return Some(name);
    }
    if FULL.load(Relaxed) {
        return None;
    }
    let mut kept = KEPT.write().unwrap_or_else(|e| e.into_inner());
    let kept = kept.get_or_insert_with(|| Kept {
        names: HashSet::new(),
        bytes: 0,
    });
    if let Some(name) = kept.names.get(name.as_str()) {
        return Some(name);
    }
    if kept.names.len() >= MAX_NAMES || kept.bytes + len > MAX_BYTES {
        FULL.store(true, Relaxed);
        return None;
    }
    // Kept for the life of the process, within the bounds above.
    let name: &'static str = Box::leak(name.into_boxed_str());
    kept.names.insert(name);
    kept.bytes += len;
    Some(name)
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
        assert!(FULL.load(Relaxed));
        assert!(matches!(
            method_and_route("GET", "/items/{id}"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            method_and_route("GET", "/bounded/new"),
            Cow::Owned(_)
        ));
    }
}
