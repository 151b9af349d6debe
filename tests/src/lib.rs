//! Shared helpers of the end-to-end tests.
//!
//! [`server`] is the loopback fault server (the `openlayer-testserver` crate): a
//! scriptable HTTP/1.1 server on `127.0.0.1` that records every request and can answer
//! with errors, hang, reset connections, or refuse them for a while.

pub use openlayer_testserver as server;
pub use openlayer_testserver::{Action, Behavior, Outcome, RecordedRequest, Response, TestServer};

pub mod ordered_json;
