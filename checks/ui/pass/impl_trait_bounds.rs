//! A returned `impl Iterator` with a bound the traced wrapper could not keep (`+ Clone`) is
//! traced as a call (its value is not recorded: `skip_output`), and keeps that bound; one
//! with only `Send` beside it is traced as an iterator.
use openlayer_trace::trace;

#[trace(skip_output)]
fn cloneable(v: Vec<u8>) -> impl Iterator<Item = u8> + Clone {
    v.into_iter()
}

#[trace]
fn sendable(v: Vec<u8>) -> impl Iterator<Item = u8> + Send {
    v.into_iter()
}

#[trace]
fn debuggable(v: Vec<u8>) -> impl Iterator<Item = u8> + std::fmt::Debug {
    v.into_iter()
}

fn main() {
    assert_eq!(debuggable(vec![5]).sum::<u8>(), 5);
    let it = cloneable(vec![1, 2]);
    assert_eq!(it.clone().count(), 2);
    assert_eq!(it.sum::<u8>(), 3);
    assert_eq!(sendable(vec![4]).sum::<u8>(), 4);
}
