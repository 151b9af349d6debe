//! The expansion must not depend on what the caller's scope names: shadowed prelude
//! items, local items named like the macro's own, generic parameters named `T`, and no
//! warnings under `deny(warnings)`.
#![deny(warnings, unused_qualifications, unused_results)]
#![allow(non_camel_case_types, dead_code)]

use openlayer_trace::{testing, trace};

mod core {}
mod std {}
mod serde {}
mod openlayer {}

struct Option;
struct Some;
struct None;
struct Ok;
struct Err;
struct Box;
struct String;
struct Vec;
trait Serialize {}
trait TracedArgument {}
trait Sized {}
fn drop() {}

#[trace]
fn plain(w: u8, name: &str, __ol_meta: u8) -> usize {
    name.len() + usize::from(w) + usize::from(__ol_meta)
}

#[trace]
fn generic<T: ::serde::Serialize + Clone>(value: T, items: &[T]) -> ::std::vec::Vec<T> {
    let mut out = items.to_vec();
    out.push(value);
    out
}

#[trace]
fn fallible(ok: bool) -> ::core::result::Result<u8, ::std::string::String> {
    if ok { ::core::result::Result::Ok(1) } else { ::core::result::Result::Err("no".into()) }
}

struct Holder<T>(T);

impl<T: ::serde::Serialize + Clone> Holder<T> {
    #[trace]
    fn get(&self, other: T) -> (T, T) {
        (self.0.clone(), other)
    }
}

fn main() {
    let ((), traces) = testing::capture(|| {
        let _ = plain(1, "x", 3);
        let _ = generic(1u8, &[2u8]);
        let _ = fallible(false);
        let _ = Holder(1u8).get(2);
    });
    assert_eq!(traces.len(), 4);
}
