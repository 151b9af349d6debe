//! Checks of the workspace that need little to build; see `tests/ui.rs` (the
//! compile-time behaviour of `#[trace]`) and `tests/msrv.rs` (the minimum supported Rust
//! version of what users build).
