//! The flat records a traced call writes: one [`StepRecord`] per step, in start order,
//! inside the [`TraceState`] of its trace. Building the tree and encoding JSON happen later,
//! off the application's threads (see `encode/`).
//!
//! It owns what a traced call writes, with no I/O and no encoding: step and trace
//! records, row updates, the buffer pool, the state lock, and the [`sink::TraceSink`]
//! seam through which a completed trace leaves the hot path. It may import from `util/`
//! only.

pub(crate) mod kind;
pub(crate) mod lock;
pub(crate) mod pool;
pub(crate) mod row_update;
pub(crate) mod scratch;
pub(crate) mod shared;
pub(crate) mod sink;
pub(crate) mod step;
pub(crate) mod trace;

pub(crate) use lock::StateGuard;
pub(crate) use pool::recycle;
pub(crate) use scratch::{give_scratch, take_scratch, with_scratch};
pub(crate) use shared::TraceShared;
pub(crate) use step::{Json, NO_PARENT, REFUSED, Status, StepRecord, to_json, upsert, write_json};
pub(crate) use trace::{CompletedTrace, TraceState};

#[cfg(test)]
mod tests;
