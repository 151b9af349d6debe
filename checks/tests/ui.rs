//! Compile-time behaviour of `#[trace]`: what must compile, and the exact diagnostics of
//! what must not.
//!
//! The expected compiler output lives next to each case in `ui/fail/*.stderr`. After a
//! deliberate change of a diagnostic, regenerate them with
//! `TRYBUILD=overwrite cargo test -p openlayer-trace-checks --test ui`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
