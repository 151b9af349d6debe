//! What happened to the traces: counters, snapshots and delivery reports.

use std::sync::Arc;
#[cfg(feature = "enable")]
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, Release},
};

/// Why data was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The hand-off queue was full (in traces or bytes) and no spool was configured, or
    /// the spool's writer had no room left for its backlog either.
    QueueFull,
    /// The server rejected the data for good (400, 413 or 422), or a row was larger than a
    /// request may be (`batch_max_bytes`) even with its longest values cut; also a 401, 403, 404 or 3xx when no spool can keep
    /// the rows until the configuration is fixed; also a row update refused before it was
    /// sent (an empty id, a row that is not a JSON object).
    Rejected,
    /// Retries were exhausted and no spool was configured (or the spool could not store
    /// the rows).
    RetriesExhausted,
    /// The shutdown deadline passed and no spool was configured (or the spool could not
    /// store the rows).
    Deadline,
    /// The spool was over its byte limit and evicted its oldest data.
    SpoolEvicted,
    /// The trace could not be encoded (a row nesting deeper than a worker can parse, a
    /// panic in the mask), or a spooled row could not be read back (an unreadable line,
    /// a spool file set aside).
    Encoding,
    /// The pipeline had shut down.
    Shutdown,
    /// No inference pipeline id was known for a trace that had to go over HTTP.
    NoPipeline,
    /// Nowhere to go: no API key, no `init` call and no `OPENLAYER_TRACE_FILE`, so
    /// traces are counted and not written anywhere.
    NoDestination,
    /// The local trace file could not be written (a full disk, a missing permission).
    LocalFile,
}

/// Rows dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// See [`DropReason::QueueFull`].
    pub queue_full: u64,
    /// See [`DropReason::Rejected`].
    pub rejected: u64,
    /// See [`DropReason::RetriesExhausted`].
    pub retries_exhausted: u64,
    /// See [`DropReason::Deadline`].
    pub deadline: u64,
    /// See [`DropReason::SpoolEvicted`].
    pub spool_evicted: u64,
    /// See [`DropReason::Encoding`].
    pub encoding: u64,
    /// See [`DropReason::Shutdown`].
    pub shutdown: u64,
    /// See [`DropReason::NoPipeline`].
    pub no_pipeline: u64,
    /// See [`DropReason::NoDestination`].
    pub no_destination: u64,
    /// See [`DropReason::LocalFile`].
    pub local_file: u64,
}

impl Dropped {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.rejected
            + self.retries_exhausted
            + self.deadline
            + self.spool_evicted
            + self.encoding
            + self.shutdown
            + self.no_pipeline
            + self.no_destination
            + self.local_file
    }
}

/// A snapshot of the delivery counters. All counts are rows (traces or row updates).
///
/// Every row handed off ends up in exactly one of `sent`, `written`, `sampled_out`,
/// `dropped` or `spooled`, or is still `pending`. A spooled row (of this run or an
/// earlier one) later ends up in `replayed`, or is dropped (evicted from a full spool,
/// rejected on replay, unreadable): such drops are counted by reason in `dropped` and, in total, in
/// `spool_dropped`. So:
///
/// `enqueued = sent + written + sampled_out + spooled + (dropped.total() - spool_dropped) + pending`
///
/// When it holds: exactly in a snapshot taken while no row is being handed off or
/// settled, as in the report of a `flush` or `shutdown` that returned `complete` with no
/// traced code running meanwhile. The counters are separate atomics read one after
/// another, so a snapshot taken while rows move may be off by the rows that moved during
/// it (never by more), and `pending` covers a row from its hand-off to its settlement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Rows handed off to the pipeline by traced code.
    pub enqueued: u64,
    /// Rows the server acknowledged with a 2xx.
    pub sent: u64,
    /// Rows written to the local trace file (embedded default) or captured in memory.
    pub written: u64,
    /// Lines of the local trace file (traces and row updates) discarded by this run's
    /// rotations: each replaced a `<file>.1`, with whatever it held (lines this run wrote,
    /// and counted in `written`, or an earlier run's). Raise `trace_file_max_bytes`, or
    /// push more often, when this grows.
    pub rotated_out: u64,
    /// Retried requests.
    pub retried: u64,
    /// Rows dropped, by reason.
    pub dropped: Dropped,
    /// Rows written to the spool.
    pub spooled: u64,
    /// Spooled rows later delivered from the spool.
    pub replayed: u64,
    /// Rows not sampled (see `Config::sample_rate`); not a loss.
    pub sampled_out: u64,
    /// Of `dropped`, the rows that had been spooled (by this run or an earlier one):
    /// evicted from a full spool, or rejected or unreadable when replayed.
    pub spool_dropped: u64,
    /// Rows still waiting in the queue or in flight when the snapshot was taken.
    pub pending: u64,
    /// Traces open now (started, not yet completed), in the whole process.
    pub open_traces: u64,
    /// The age of the oldest open trace (zero when none is open).
    pub oldest_open_trace_age: std::time::Duration,
    /// Steps not recorded, in the whole process: beyond `max_steps_per_trace`, or because
    /// open traces held their share of `queue_max_bytes`. Not rows: their traces are sent,
    /// marked `stepsDropped`.
    pub steps_dropped: u64,
    /// Spans the OTLP endpoint accepted (a 2xx; less the partially rejected ones).
    #[cfg(feature = "otlp")]
    pub otlp_spans_sent: u64,
    /// Spans not delivered to the OTLP endpoint (rejected request, retries exhausted,
    /// deadline, full queue, and the spans of traces that overflowed the queue to the spool,
    /// which replays them as rows only). With `otlp_only`, their traces are also counted in
    /// `dropped`.
    #[cfg(feature = "otlp")]
    pub otlp_spans_dropped: u64,
    /// Spans the OTLP endpoint reported as rejected in a partial success
    /// (`ExportTraceServiceResponse.partial_success.rejected_spans`).
    #[cfg(feature = "otlp")]
    pub otlp_rejected_spans: u64,
}

/// The outcome of a `flush` or `shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryReport {
    /// The counters when the call returned.
    pub stats: Stats,
    /// Whether everything handed off before the call was settled (sent, written,
    /// spooled or counted as dropped) by the deadline.
    pub complete: bool,
}

/// A delivery failure, as given to `Config::on_failure`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeliveryFailure {
    /// How many rows were affected (0 for an OTLP partial success, whose answer counts
    /// spans, not rows, and for a spool file set aside whose rows were not known: see
    /// `message`).
    pub rows: u64,
    /// Whether they were dropped (and why) or spooled (`None`).
    pub dropped: Option<DropReason>,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The server's message or the transport error.
    pub message: String,
}

/// A callback told about delivery failures that lose or spool data (called on a
/// background thread; keep it short).
pub type FailureFn = Arc<dyn Fn(&DeliveryFailure) + Send + Sync>;

/// Tells the configured failure callback; a panic in it is contained and logged.
#[cfg(feature = "enable")]
pub(crate) fn notify(callback: Option<&FailureFn>, failure: DeliveryFailure) {
    if let Some(cb) = callback
        && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::util::reentry::untraced(|| cb(&failure))
        }))
        .is_err()
    {
        crate::util::diag::warn_limited!("the on_failure callback panicked");
    }
}

/// A value on a cache line (two, for the adjacent-line prefetcher) of its own.
#[cfg(feature = "enable")]
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub T);

#[cfg(feature = "enable")]
impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Live counters, shared by the producers and the background worker.
#[cfg(feature = "enable")]
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Written by every thread that hands a trace off, once per trace: on a cache line of
    /// its own, which the worker's counters (written as it delivers) do not share.
    pub enqueued: OwnLine<AtomicU64>,
    pub sent: AtomicU64,
    pub written: AtomicU64,
    pub rotated_out: AtomicU64,
    pub retried: AtomicU64,
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub sampled_out: AtomicU64,
    pub spool_dropped: AtomicU64,
    pub settled: AtomicU64,
    pub queue_full: AtomicU64,
    /// Of `queue_full`, the rows already told to `on_failure` where they were dropped (by
    /// the spool writer), which the flusher's report of the counter leaves out.
    pub queue_full_told: AtomicU64,
    pub rejected: AtomicU64,
    /// Of `rejected`, the row updates refused where they were handed off (invalid), which
    /// the worker tells `on_failure` of.
    pub invalid_updates: AtomicU64,
    pub retries_exhausted: AtomicU64,
    pub deadline: AtomicU64,
    pub spool_evicted: AtomicU64,
    pub encoding: AtomicU64,
    pub shutdown: AtomicU64,
    pub no_pipeline: AtomicU64,
    pub no_destination: AtomicU64,
    pub local_file: AtomicU64,
    #[cfg(feature = "otlp")]
    pub otlp_spans_sent: AtomicU64,
    #[cfg(feature = "otlp")]
    pub otlp_spans_dropped: AtomicU64,
    #[cfg(feature = "otlp")]
    pub otlp_rejected_spans: AtomicU64,
    /// Of `otlp_spans_dropped`, the spans of traces that could not be converted, which
    /// the OTLP side tells `on_failure` of as encoding drops.
    #[cfg(feature = "otlp")]
    pub otlp_spans_unconverted: AtomicU64,
}

#[cfg(feature = "enable")]
impl Counters {
    pub(crate) fn drop_rows(&self, reason: DropReason, n: u64) {
        let c = match reason {
            DropReason::QueueFull => &self.queue_full,
            DropReason::Rejected => &self.rejected,
            DropReason::RetriesExhausted => &self.retries_exhausted,
            DropReason::Deadline => &self.deadline,
            DropReason::SpoolEvicted => &self.spool_evicted,
            DropReason::Encoding => &self.encoding,
            DropReason::Shutdown => &self.shutdown,
            DropReason::NoPipeline => &self.no_pipeline,
            DropReason::NoDestination => &self.no_destination,
            DropReason::LocalFile => &self.local_file,
        };
        // Release: a report that sees this count sees what was written before it (the
        // spool writer's `queue_full_told`, raised first; see `CountedDrops::report`).
        c.fetch_add(n, Release);
    }

    /// Drops of rows that had been spooled: counted by reason and as `spool_dropped`.
    pub(crate) fn drop_spooled(&self, reason: DropReason, n: u64) {
        self.drop_rows(reason, n);
        self.spool_dropped.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let (open_traces, oldest_open_trace_age, steps_dropped) =
            crate::util::open_traces::snapshot();
        let dropped = Dropped {
            queue_full: self.queue_full.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            retries_exhausted: self.retries_exhausted.load(Relaxed),
            deadline: self.deadline.load(Relaxed),
            spool_evicted: self.spool_evicted.load(Relaxed),
            encoding: self.encoding.load(Relaxed),
            shutdown: self.shutdown.load(Relaxed),
            no_pipeline: self.no_pipeline.load(Relaxed),
            no_destination: self.no_destination.load(Relaxed),
            local_file: self.local_file.load(Relaxed),
        };
        let enqueued = self.enqueued.load(Relaxed);
        let settled = self.settled.load(Relaxed);
        Stats {
            enqueued,
            sent: self.sent.load(Relaxed),
            written: self.written.load(Relaxed),
            rotated_out: self.rotated_out.load(Relaxed),
            retried: self.retried.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            sampled_out: self.sampled_out.load(Relaxed),
            spool_dropped: self.spool_dropped.load(Relaxed),
            pending: enqueued.saturating_sub(settled),
            dropped,
            open_traces,
            oldest_open_trace_age,
            steps_dropped,
            #[cfg(feature = "otlp")]
            otlp_spans_sent: self.otlp_spans_sent.load(Relaxed),
            #[cfg(feature = "otlp")]
            otlp_spans_dropped: self.otlp_spans_dropped.load(Relaxed),
            #[cfg(feature = "otlp")]
            otlp_rejected_spans: self.otlp_rejected_spans.load(Relaxed),
        }
    }
}
