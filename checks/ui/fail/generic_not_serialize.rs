use openlayer_trace::trace;
use serde::Serialize;

#[trace]
fn first<T: Serialize>(items: Vec<T>) -> Option<T> {
    items.into_iter().next()
}

// Without a `Serialize` bound, a generic argument or return value cannot be recorded:
// the compiler suggests the bound.
#[trace]
fn repeat<T: Clone>(value: T) -> Vec<T> {
    vec![value.clone(), value]
}

fn main() {
    let _ = first(repeat(1));
}
