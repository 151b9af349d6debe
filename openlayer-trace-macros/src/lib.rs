//! The `#[trace]` attribute of `openlayer-trace`. Use it through `openlayer_trace::trace`.
