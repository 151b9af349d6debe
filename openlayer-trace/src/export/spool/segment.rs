//! Segments and their bookkeeping: the state other threads read without the index lock,
//! where a write-ahead row sits, the index of segments and the write-ahead writer.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// The state of one segment that other threads read without the index lock.
#[derive(Debug)]
pub(crate) struct LiveSeg {
    pub(super) seq: u64,
    /// No more appends (rotated, closed, or from an earlier process).
    pub(super) sealed: AtomicBool,
    /// Rows appended ahead by this process and still on their way (queued or in flight).
    pub(super) outstanding: AtomicU64,
    /// Length of the complete lines.
    pub(super) bytes: AtomicU64,
    /// Number of complete lines, once known.
    pub(super) lines: AtomicU64,
    pub(super) lines_known: AtomicBool,
    /// A write-ahead row of it was given up on (it waits for a replay).
    pub(super) gave_up: AtomicBool,
}

impl LiveSeg {
    pub(super) fn new(seq: u64, sealed: bool, bytes: u64, lines: Option<u64>) -> Arc<LiveSeg> {
        Arc::new(LiveSeg {
            seq,
            sealed: AtomicBool::new(sealed),
            outstanding: AtomicU64::new(0),
            bytes: AtomicU64::new(bytes),
            lines: AtomicU64::new(lines.unwrap_or(0)),
            lines_known: AtomicBool::new(lines.is_some()),
            gave_up: AtomicBool::new(false),
        })
    }
}

/// Where a write-ahead row sits in the spool.
#[derive(Debug)]
pub(crate) struct WalRef {
    pub(super) seg: Arc<LiveSeg>,
    pub(super) offset: u64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) live: Arc<LiveSeg>,
    pub(super) acked: HashSet<u64>,
    /// Lines handed out to a replay that has not finished.
    pub(super) inflight: HashSet<u64>,
    /// Lines before it were handed out or acknowledged in this replay pass.
    pub(super) cursor: u64,
    pub(super) ack_file: Option<File>,
    /// Replay passes in a row that could not read it (see `Spool::next_replay`), and
    /// since when.
    pub(super) read_failures: u32,
    pub(super) failing_since: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) segments: BTreeMap<u64, Segment>,
    pub(super) next_seq: u64,
}

#[derive(Debug)]
pub(super) struct WaWriter {
    pub(super) live: Arc<LiveSeg>,
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) broken: bool,
}
