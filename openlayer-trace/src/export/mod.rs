//! Where rows go.
//!
//! It owns the worker's message protocol, the byte budget, the producer side of the queue
//! and the test capture, and the destinations: the local trace file (`local_file/`), the
//! Openlayer API (`openlayer/`), the on-disk spool (`spool/`) and OTLP (`otlp/`). It may
//! import from `util/`, `error.rs`, `report.rs`, `config.rs`, `record/`, `encode/` and
//! `transport/`.

pub(crate) mod budget;
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod capture;
pub(crate) mod counted_drops;
pub(crate) mod hold;
pub(crate) mod local_file;
pub(crate) mod openlayer;
#[cfg(feature = "otlp")]
pub(crate) mod otlp;
pub(crate) mod producer;
pub(crate) mod protocol;
pub(crate) mod spool;

#[cfg(test)]
mod tests;
