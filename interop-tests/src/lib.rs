//! Tests and benchmarks of openlayer-trace's interop (see `tests/` and `benches/`).
