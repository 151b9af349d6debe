//! Where rows go.

pub(crate) mod budget;
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod capture;
pub(crate) mod local_file;
pub(crate) mod openlayer;
#[cfg(feature = "otlp")]
pub(crate) mod otlp;
pub(crate) mod producer;
pub(crate) mod protocol;
pub(crate) mod spool;

#[cfg(test)]
mod tests;
