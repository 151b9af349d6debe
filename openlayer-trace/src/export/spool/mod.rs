//! The spool: rows that could not be delivered (yet) wait on disk, and are replayed.
//!
//! # Layout
//!
//! The spool directory holds numbered **segments**, `00000000000000000042.jsonl`, each a
//! file of lines in the local trace file's format (one row per line:
//! `{"pipelineId":..,"config":..,"rows":[row]}`, or one row update:
//! `{"pipelineId":..,"inferenceId":..,"row":..,"config":..}`), so that it reads as a set
//! of local trace files. Its `state/` subdirectory holds the bookkeeping: for each segment,
//! `00000000000000000042.acks` lists the byte offsets of its lines that need not be sent
//! again (acknowledged with a 2xx, rejected, or unreadable), one decimal offset per line;
//! `lock` is the OS file lock (`flock`) of the process that owns the spool, and names
//! it. A segment is deleted once every line of
//! it is acknowledged. Files are created with mode 0600 and directories with 0700 (unix).
//!
//! # Writers
//!
//! - The **spool writer thread** appends rows that overflowed the queue, batches that
//!   exhausted their retries and whatever missed the shutdown deadline, to its current
//!   segment, and `fsync`s after each group of appends. Only then are the rows counted
//!   as `spooled`.
//! - In **write-ahead** mode, the thread that completes a trace appends its row to the
//!   current write-ahead segment (one `write(2)` under `O_APPEND`, no `fsync`: the page
//!   cache survives the death of the process, not a power loss), then hands it off. After
//!   a 2xx the flusher acknowledges it; a row that is not delivered simply stays.
//!
//! # Bookkeeping and replay
//!
//! The flusher reads unacknowledged lines in order (oldest segment first), sends them in
//! batches, and appends their offsets to the sidecar right after the 2xx (one `write(2)`;
//! not synced). A row can therefore be sent twice only if the process dies between the
//! server's 2xx and that write, or after a power loss that loses the sidecar's tail; a
//! row update written ahead and then again behind its row (see `Spool::send_updates`),
//! also if it dies between the writer's write and the acknowledgement of the first copy. A
//! segment is only replayed while none of its rows is still on its way in this process
//! (so a row is never in flight twice). Lines are told apart by their position (segment
//! and offset), never by `inferenceId`: two distinct rows that share one are both sent. A
//! row update is replayed as a `PUT`, on its own, and only once no line before it is still
//! being replayed, so that it follows its trace's row.
//!
//! The spool is bounded by `spool_max_bytes`: before an append would exceed it, the
//! oldest segments are evicted whole, and their unacknowledged rows are counted as
//! dropped (`spool_evicted`).

mod dir;
mod held;
mod line;
pub(crate) mod replay;
pub(crate) mod segment;
pub(crate) mod writer;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};

use crate::config::{Config, FailureFn, SpoolMode};
use crate::encode::OutRow;
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::report::{Counters, DropReason};
use crate::util::heap::heap_bytes;
use crate::util::signal::Completion;

use dir::{
    ACK_EXT, DATA_EXT, STATE_DIR, create_private_dir, lock, parse_seq, private_file, read_acks,
    sync_dir, take_lock,
};
use segment::{Index, LiveSeg, Segment, WaWriter, WalRef};

/// What the spool writer tells `on_failure` once rows it was handed are written and
/// synced (nothing when it could not write them: it tells their drop instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tell {
    /// Nothing: the caller tells (or reports in aggregate).
    Nothing,
    /// Rows that overflowed the queue: told with the traces that did.
    Overflowed,
    /// Rows the platform did not take: told as spooled, with the failure.
    Failure {
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// The error.
        message: String,
    },
}

/// Work for the spool writer thread.
pub(crate) enum Job {
    /// A trace that overflowed the queue (still to be encoded).
    Trace(Box<CompletedTrace>, usize),
    /// Rows to keep, the reason to count if they cannot be written, and what to tell
    /// once they are on disk.
    Rows(Vec<OutRow>, DropReason, usize, Tell),
    /// Row updates to keep (their pipeline resolved), and the reason to count if they
    /// cannot be written; then the lines written ahead for them, acknowledged once the
    /// updates are written here and synced (or dropped and counted).
    Updates(Vec<RowUpdate>, DropReason, usize, Vec<WalRef>),
    /// Lines written ahead to acknowledge: an application's thread hands them over
    /// rather than take the index's lock, which the writer holds across disk I/O.
    Ack(Vec<WalRef>),
    /// Completed once everything sent before it is written and synced.
    Barrier(Arc<Completion>),
    /// Rotate the write-ahead segment or evict, as requested.
    Maintain,
    /// Write what is left, seal the segments, release the directory, then complete.
    Close(Vec<Arc<Completion>>),
}

/// The spool of one pipeline.
pub(crate) struct Spool {
    dir: PathBuf,
    /// Holds the OS lock on `state/lock` (see [`take_lock`]) until the spool is closed.
    lock_file: File,
    max_bytes: u64,
    segment_bytes: u64,
    total: AtomicU64,
    index: Mutex<Index>,
    /// `inferenceId`s of rows this process spooled (see [`held`]): their row updates are
    /// spooled behind them, never sent before them. Each is forgotten once its lines are
    /// replayed, all of them when the spool is empty. Apart from the index, whose lock is
    /// held across disk I/O: traced code notes ids here when the queue is full, and must
    /// never wait for a disk.
    held_ids: Mutex<held::HeldIds>,
    /// The first segment this process made: lines of earlier ones (an earlier process's)
    /// were not held by it, and give nothing back to `held_ids` when replayed.
    own_from: u64,
    wa: Option<Mutex<WaWriter>>,
    rotate_requested: AtomicBool,
    maintain_requested: AtomicBool,
    /// When (second of the monotonic clock) a broken write-ahead file last asked to be
    /// replaced: at most once a second while it stays broken.
    rotation_retried: AtomicU64,
    jobs: mpsc::Sender<Job>,
    /// Set by the writer when it closes: no job is sent after it (read-locked around
    /// each send, so that none is in flight when the writer settles what is left).
    closed: std::sync::RwLock<bool>,
    backlog_rows: AtomicUsize,
    backlog_max_rows: usize,
    /// The memory budget the writer's backlog counts in, shared with the queue and the
    /// worker (see `pipeline::Budget`).
    budget: Arc<Budget>,
    counters: Arc<Counters>,
    on_failure: Option<FailureFn>,
    /// What `on_failure` was told of the drops counted away from the worker: shared by
    /// the flusher, which reports them as they grow, and the writer, which reports those
    /// it counted after the flusher's last report (traces overflowed near shutdown).
    pub(crate) told_drops: Mutex<crate::export::counted_drops::CountedDrops>,
    /// Signalled after each synced write, so that the flusher looks for rows to replay
    /// even when no request succeeds afterwards.
    pub(crate) written: tokio::sync::Notify,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("bytes", &self.total.load(Relaxed))
            .field("write_ahead", &self.wa.is_some())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool directory of `config`, takes it for this
    /// process, and indexes the segments earlier processes left. Returns the spool and
    /// the receiving end of its writer's jobs (for [`writer::run_writer`]).
    pub(crate) fn open(
        config: &Config,
        counters: Arc<Counters>,
        budget: Arc<Budget>,
    ) -> Result<(Arc<Spool>, mpsc::Receiver<Job>), Error> {
        let dir = config
            .spool_dir
            .clone()
            .ok_or_else(|| Error::Config("no spool directory".into()))?;
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let state = dir.join(STATE_DIR);
        create_private_dir(&dir)?;
        create_private_dir(&state)?;
        let lock_file = take_lock(&state)?;
        let mut index = Index::default();
        let mut total = 0u64;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(replay::UNREADABLE_SUFFIX)
                .and_then(|stem| parse_seq(stem, DATA_EXT))
            {
                // Set aside: its number is not given to a new file (which would take its
                // place when set aside in turn).
                index.next_seq = index.next_seq.max(seq + 1);
                continue;
            }
            if let Some(seq) = parse_seq(name, DATA_EXT) {
                // Only a regular file is ours (not a symbolic link planted under a
                // segment's name, whose target we would send).
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    crate::util::diag::warn_limited!(
                        path = %entry.path().display(),
                        "a spool file that is not a regular file is left alone"
                    );
                    continue;
                }
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    // Removed since it was listed (another process's spool, let go).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                total += len;
                let acked = read_acks(&state.join(format!("{seq:020}.{ACK_EXT}")));
                index.segments.insert(
                    seq,
                    Segment {
                        live: LiveSeg::new(seq, true, len, None),
                        acked,
                        inflight: HashSet::new(),
                        cursor: 0,
                        ack_file: None,
                        read_failures: 0,
                        failing_since: None,
                    },
                );
                index.next_seq = index.next_seq.max(seq + 1);
            }
        }
        for entry in fs::read_dir(&state)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(|n| parse_seq(n, ACK_EXT)) else {
                continue;
            };
            if index.segments.contains_key(&seq) {
                total += entry.metadata().map_or(0, |m| m.len());
            } else {
                // The segment is gone: its acknowledgements are of no use.
                let _ = fs::remove_file(entry.path());
            }
            // Never a number a sidecar still has (its removal may have failed): a new
            // segment under it would take its acknowledgements for its own lines.
            index.next_seq = index.next_seq.max(seq + 1);
        }
        index.next_seq = index.next_seq.max(1);
        let (jobs, rx) = mpsc::channel();
        let own_from = index.next_seq;
        let mut spool = Spool {
            max_bytes: config.spool_max_bytes,
            // At most half the spool: a file as large as the spool itself (64 KiB in a
            // smaller one) would fill it before it is rotated, and an unsealed file is
            // never evicted.
            segment_bytes: (config.spool_max_bytes / 8)
                .clamp(64 * 1024, 16 * 1024 * 1024)
                .min((config.spool_max_bytes / 2).max(1)),
            total: AtomicU64::new(total),
            index: Mutex::new(index),
            held_ids: Mutex::default(),
            own_from,
            wa: None,
            rotate_requested: AtomicBool::new(false),
            maintain_requested: AtomicBool::new(false),
            rotation_retried: AtomicU64::new(0),
            jobs,
            closed: std::sync::RwLock::new(false),
            backlog_rows: AtomicUsize::new(0),
            backlog_max_rows: (config.queue_capacity / 4).max(64),
            budget,
            counters,
            on_failure: config.on_failure.clone(),
            told_drops: Mutex::default(),
            written: tokio::sync::Notify::new(),
            lock_file,
            dir,
        };
        if config.spool_mode == SpoolMode::WriteAhead {
            let (live, file) = spool.new_segment()?;
            spool.wa = Some(Mutex::new(WaWriter {
                live,
                file,
                len: 0,
                broken: false,
            }));
        }
        Ok((Arc::new(spool), rx))
    }

    fn data_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{DATA_EXT}"))
    }

    fn ack_path(&self, seq: u64) -> PathBuf {
        self.dir
            .join(STATE_DIR)
            .join(format!("{seq:020}.{ACK_EXT}"))
    }

    /// Whether completed traces are written ahead.
    pub(crate) fn write_ahead(&self) -> bool {
        self.wa.is_some()
    }

    /// Creates and indexes a new, open segment.
    fn new_segment(&self) -> io::Result<(Arc<LiveSeg>, File)> {
        let mut index = lock(&self.index);
        loop {
            let seq = index.next_seq;
            index.next_seq += 1;
            let path = self.data_path(seq);
            let file =
                match private_file(OpenOptions::new().append(true).create_new(true)).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                };
            sync_dir(&self.dir);
            let live = LiveSeg::new(seq, false, 0, Some(0));
            index.segments.insert(
                seq,
                Segment {
                    live: live.clone(),
                    acked: HashSet::new(),
                    inflight: HashSet::new(),
                    cursor: 0,
                    ack_file: None,
                    read_failures: 0,
                    failing_since: None,
                },
            );
            return Ok((live, file));
        }
    }

    fn request_maintenance(&self) {
        if !self.maintain_requested.swap(true, SeqCst) {
            let _ = self.jobs.send(Job::Maintain);
        }
    }

    // -----------------------------------------------------------------------------------
    // Hand-off to the writer thread (never blocks)

    /// Hands a trace that overflowed the queue to the writer; gives it back when the
    /// writer's backlog is full (in rows, or in the memory budget for traced code's
    /// overflow). `bytes` is its size as the queue counts it.
    pub(crate) fn send_trace(
        &self,
        trace: Box<CompletedTrace>,
        bytes: usize,
    ) -> Result<(), Box<CompletedTrace>> {
        // Its updates follow it into the spool, whether its id is a custom or the root
        // step's.
        match trace.state.inference_id.as_deref() {
            Some(id) => self.hold_ids([id]),
            None => {
                if let Some(root) = trace.root() {
                    self.hold_ids([crate::util::id::uuid_v4(root.id).as_str()]);
                }
            }
        }
        self.send_job(
            trace,
            1,
            bytes,
            Tier::Overflow,
            Job::Trace,
            |job| match job {
                Job::Trace(t, _) => Some(t),
                _ => None,
            },
        )
    }

    /// Hands rows to the writer, counted in the memory budget under `tier`; gives them
    /// back when there is no room.
    pub(crate) fn send_rows(
        &self,
        rows: Vec<OutRow>,
        reason: DropReason,
        tier: Tier,
        tell: Tell,
    ) -> Result<(), Vec<OutRow>> {
        let bytes = heap_bytes(rows.capacity() * size_of::<OutRow>())
            + rows.iter().map(OutRow::held_bytes).sum::<usize>();
        // Their updates follow them into the spool, rather than reach the platform first.
        self.hold_ids(rows.iter().map(|r| r.inference_id.as_str()));
        let n = rows.len();
        let job = |rows, bytes| Job::Rows(rows, reason, bytes, tell);
        self.send_job(rows, n, bytes, tier, job, |job| match job {
            Job::Rows(rows, _, _, _) => Some(rows),
            _ => None,
        })
    }

    /// Hands row updates to the writer (their pipeline resolved), counted in the memory
    /// budget under `tier`; gives them back when there is no room.
    ///
    /// `ahead` are the lines written ahead for these updates, moved here to follow their
    /// rows: the writer acknowledges them once it has written the updates and synced its
    /// file. A `kill -9` before that leaves them ahead: replayed after a restart, ahead of
    /// their rows when those are in a later file, where a 404 drops them as rejected
    /// (counted, not lost silently). A `kill -9` after the writer's write and before the
    /// acknowledgement leaves both copies (the update may be sent twice). When the
    /// updates are given back (to be dropped and counted), they are acknowledged here.
    pub(crate) fn send_updates(
        &self,
        updates: Vec<RowUpdate>,
        ahead: Vec<WalRef>,
        reason: DropReason,
        tier: Tier,
    ) -> Result<(), Vec<RowUpdate>> {
        let bytes = heap_bytes(updates.capacity() * size_of::<RowUpdate>())
            + updates.iter().map(RowUpdate::size).sum::<usize>();
        // Later updates of the same rows follow them into the spool, rather than reach
        // the platform first (where the last one written wins).
        self.hold_ids(updates.iter().map(|u| u.inference_id.as_str()));
        let n = updates.len();
        let job = |(updates, ahead), bytes| Job::Updates(updates, reason, bytes, ahead);
        self.send_job((updates, ahead), n, bytes, tier, job, |job| match job {
            Job::Updates(updates, _, _, ahead) => Some((updates, ahead)),
            _ => None,
        })
        .map_err(|(updates, ahead)| {
            // Dropped and counted by the caller (maybe traced code, when the queue is
            // full): their lines ahead are acknowledged by the writer, or here once it
            // has closed.
            if !ahead.is_empty()
                && let Err(Job::Ack(ahead)) = self.send_open(Job::Ack(ahead))
            {
                self.ack_ahead(ahead);
            }
            updates
        })
    }

    /// Reserves room for `n` rows of `bytes` under `tier` and sends `what` as the job
    /// `job` makes of it; gives `what` back (through `back`) when there is no room or the
    /// writer is gone.
    fn send_job<T>(
        &self,
        what: T,
        n: usize,
        bytes: usize,
        tier: Tier,
        job: impl FnOnce(T, usize) -> Job,
        back: fn(Job) -> Option<T>,
    ) -> Result<(), T> {
        if !self.reserve(n, bytes, tier) {
            return Err(what);
        }
        self.send_open(job(what, bytes)).map_err(|job| {
            self.release(n, bytes);
            back(job).unwrap_or_else(|| unreachable!("the job sent is the job given back"))
        })
    }

    /// Counts a job into the backlog: `rows` against its row limit (the worker's tiers
    /// may use twice traced code's share), its bytes, plus the job's slot in the
    /// channel, against the memory budget.
    fn reserve(&self, rows: usize, bytes: usize, tier: Tier) -> bool {
        let share = match tier {
            Tier::Overflow => 1,
            // Already in memory, and the last: no limit of rows either.
            Tier::SpoolAtShutdown => usize::MAX,
            _ => 2,
        };
        let r = self.backlog_rows.fetch_add(rows, SeqCst);
        if r + rows > self.backlog_max_rows.saturating_mul(share) {
            self.backlog_rows.fetch_sub(rows, SeqCst);
            return false;
        }
        if !self.budget.reserve(bytes + size_of::<Job>(), tier) {
            self.backlog_rows.fetch_sub(rows, SeqCst);
            return false;
        }
        true
    }

    fn release(&self, rows: usize, bytes: usize) {
        self.backlog_rows.fetch_sub(rows, SeqCst);
        // Traced code's overflow and the worker's rows share the writer's count.
        self.budget.release(bytes + size_of::<Job>(), Tier::Spool);
    }

    /// Completes `done` once everything handed to the writer so far is on disk.
    pub(crate) fn barrier(&self, done: Arc<Completion>) {
        if let Err(Job::Barrier(done)) = self.send_open(Job::Barrier(done)) {
            done.complete();
        }
    }

    /// Asks the writer to finish, seal everything and release the directory, then
    /// complete `done`.
    pub(crate) fn close(&self, done: Vec<Arc<Completion>>) {
        if let Err(Job::Close(done)) = self.send_open(Job::Close(done)) {
            for d in done {
                d.complete();
            }
        }
    }

    /// Sends a job to the writer unless it has closed; the job back when it has.
    fn send_open(&self, job: Job) -> Result<(), Job> {
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(job);
        }
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// The spool's directory (absolute).
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Called by the writer as it closes: no job is sent from now on, and those already
    /// sent are settled, as the writer will not write them: rows and traces dropped
    /// (`shutdown`) with their room given back, the lines written ahead for dropped
    /// updates acknowledged, barriers and closes completed.
    pub(crate) fn settle_after_close(&self, jobs: &mpsc::Receiver<Job>) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
        let c = &self.counters;
        while let Ok(job) = jobs.try_recv() {
            let (n, bytes) = match job {
                Job::Trace(_, bytes) => (1, bytes),
                Job::Rows(rows, _, bytes, _) => (rows.len(), bytes),
                Job::Updates(updates, _, bytes, ahead) => {
                    // Dropped and counted below: not to be replayed as well.
                    self.ack_ahead(ahead);
                    (updates.len(), bytes)
                }
                Job::Ack(ahead) => {
                    self.ack_ahead(ahead);
                    continue;
                }
                Job::Barrier(done) => {
                    done.complete();
                    continue;
                }
                Job::Close(done) => {
                    done.into_iter().for_each(|d| d.complete());
                    continue;
                }
                Job::Maintain => continue,
            };
            self.release(n, bytes);
            c.drop_rows(DropReason::Shutdown, n as u64);
            c.settled.fetch_add(n as u64, SeqCst);
            // The flusher has made its last report: told here.
            crate::report::notify(
                self.on_failure.as_ref(),
                crate::report::DeliveryFailure {
                    rows: n as u64,
                    dropped: Some(DropReason::Shutdown),
                    status: None,
                    message: "the spool was closed before these rows could be written".into(),
                },
            );
        }
    }

    // -----------------------------------------------------------------------------------
    // Write-ahead (on the thread that completed the trace)

    /// Appends a row ahead of sending it: one `write(2)`, no `fsync`. `None` when the
    /// spool is full or the write failed (the row then travels unprotected).
    pub(crate) fn append_ahead(&self, line: &str) -> Option<WalRef> {
        let wa = self.wa.as_ref()?;
        let n = line.len() as u64;
        // Counted before it is written: threads append at the same time, and a check
        // followed by an add would let them pass the limit together.
        if self.total.fetch_add(n, SeqCst).saturating_add(n) > self.max_bytes {
            self.total.fetch_sub(n, SeqCst);
            self.request_maintenance();
            crate::util::diag::warn_limited!(
                dir = %self.dir.display(),
                "the spool is full; traces are sent without being written ahead"
            );
            return None;
        }
        let mut w = lock(wa);
        if w.broken {
            drop(w);
            self.total.fetch_sub(n, SeqCst);
            self.retry_rotation();
            return None;
        }
        let offset = w.len;
        w.live.outstanding.fetch_add(1, SeqCst);
        match write_counted(&w.file, line.as_bytes()) {
            Ok(()) => {
                w.len += n;
                w.live.lines.fetch_add(1, SeqCst);
                w.live.bytes.store(w.len, SeqCst);
                let seg = w.live.clone();
                let full = w.len >= self.segment_bytes;
                drop(w);
                if full && !self.rotate_requested.swap(true, SeqCst) {
                    self.maintain_requested.store(true, SeqCst);
                    let _ = self.jobs.send(Job::Maintain);
                }
                Some(WalRef { seg, offset })
            }
            Err((written, e)) => {
                // What did reach the file stays counted (it is removed with the file).
                self.total.fetch_sub(n - written as u64, SeqCst);
                w.live.outstanding.fetch_sub(1, SeqCst);
                w.broken = true;
                drop(w);
                self.rotate_requested.store(true, SeqCst);
                self.maintain_requested.store(true, SeqCst);
                let _ = self.jobs.send(Job::Maintain);
                crate::util::diag::warn_limited!(
                    dir = %self.dir.display(),
                    error = %e,
                    "could not write a trace ahead to the spool"
                );
                None
            }
        }
    }

    /// Asks again (at most once a second) for a broken write-ahead file to be replaced:
    /// a replacement that could not be made (no file could be created) is not asked for
    /// by anything else, and writing ahead would stay off for good.
    fn retry_rotation(&self) {
        let now = u64::try_from(crate::util::clock::now() / 1_000_000_000).unwrap_or(0) + 1;
        let last = self.rotation_retried.load(Relaxed);
        if now > last
            && self
                .rotation_retried
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.rotate_requested.store(true, SeqCst);
            self.maintain_requested.store(true, SeqCst);
            let _ = self.jobs.send(Job::Maintain);
            crate::util::diag::warn_limited!(
                dir = %self.dir.display(),
                "the spool's write-ahead file could not be replaced yet; traces are sent \
                 without being written ahead"
            );
        }
    }

    /// A written-ahead row that will not be delivered now: it stays in the spool, to be
    /// replayed.
    pub(crate) fn give_up(&self, r: WalRef) {
        r.seg.gave_up.store(true, SeqCst);
        r.seg.outstanding.fetch_sub(1, SeqCst);
    }

    /// Lines written ahead that are settled for good (delivered, rejected, dropped and
    /// counted, or written again behind their row by the writer and synced): acknowledged.
    pub(crate) fn ack_ahead(&self, refs: impl IntoIterator<Item = WalRef>) {
        let mut by_seg: BTreeMap<u64, (Arc<LiveSeg>, Vec<u64>)> = BTreeMap::new();
        for r in refs {
            by_seg
                .entry(r.seg.seq)
                .or_insert_with(|| (r.seg.clone(), Vec::new()))
                .1
                .push(r.offset);
        }
        if by_seg.is_empty() {
            return;
        }
        let mut index = lock(&self.index);
        for (seq, (live, offsets)) in by_seg {
            self.ack_locked(&mut index, seq, &offsets);
            live.outstanding.fetch_sub(offsets.len() as u64, SeqCst);
            self.delete_if_done(&mut index, seq);
        }
    }

    // -----------------------------------------------------------------------------------
    // Acknowledgements and deletion

    fn ack_locked(&self, index: &mut Index, seq: u64, offsets: &[u64]) {
        let ack_path = self.ack_path(seq);
        let Some(seg) = index.segments.get_mut(&seq) else {
            return;
        };
        let mut text = String::new();
        for o in offsets {
            seg.inflight.remove(o);
            if seg.acked.insert(*o) {
                text.push_str(&o.to_string());
                text.push('\n');
            }
        }
        if text.is_empty() {
            return;
        }
        if seg.ack_file.is_none() {
            match private_file(OpenOptions::new().append(true).create(true).read(true))
                .open(&ack_path)
            {
                Ok(mut f) => {
                    // A record torn by a failed write or a crash must not run into the
                    // next one ("10" then "2048\n" would read as 102048): it is ended
                    // with a mark that no offset parses as.
                    if dir::ends_torn(&mut f) {
                        text.insert_str(0, "#\n");
                    }
                    seg.ack_file = Some(f);
                }
                Err(e) => {
                    crate::util::diag::warn_limited!(path = %ack_path.display(), error = %e, "could not record delivered rows in the spool; they may be sent again after a restart");
                    return;
                }
            }
        }
        if let Some(f) = &seg.ack_file {
            match (&*f).write_all(text.as_bytes()) {
                Ok(()) => {
                    self.total.fetch_add(text.len() as u64, SeqCst);
                }
                Err(e) => {
                    // Opened again (and its tail checked) by the next acknowledgement.
                    seg.ack_file = None;
                    crate::util::diag::warn_limited!(path = %ack_path.display(), error = %e, "could not record delivered rows in the spool; they may be sent again after a restart");
                }
            }
        }
    }

    /// Deletes a segment that is sealed, settled and fully acknowledged.
    fn delete_if_done(&self, index: &mut Index, seq: u64) {
        let Some(seg) = index.segments.get(&seq) else {
            return;
        };
        let l = &seg.live;
        let done = l.sealed.load(SeqCst)
            && l.outstanding.load(SeqCst) == 0
            && l.lines_known.load(SeqCst)
            && seg.inflight.is_empty()
            && seg.acked.len() as u64 >= l.lines.load(SeqCst);
        if done {
            self.remove_segment(index, seq);
        }
    }

    /// Notes rows spooled by this process (see `Spool::held_ids`). Takes no lock that
    /// is held across disk I/O.
    pub(crate) fn hold_ids<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = lock(&self.held_ids);
        for id in ids {
            held.hold(id);
        }
    }

    /// Gives back the holds of replayed lines of segment `seq` (their rows' ids, or the
    /// id a row update updates): an id with no line left in the spool is forgotten.
    fn release_ids<'a>(&self, seq: u64, ids: impl IntoIterator<Item = &'a str>) {
        if seq < self.own_from {
            return;
        }
        let mut held = lock(&self.held_ids);
        for id in ids {
            held.release(id);
        }
    }

    /// Whether a row with this `inferenceId` was spooled by this process and may still
    /// be in the spool: its updates must follow it there.
    pub(crate) fn holds_row(&self, inference_id: &str) -> bool {
        lock(&self.held_ids).contains(inference_id)
    }

    fn remove_segment(&self, index: &mut Index, seq: u64) {
        if index.segments.is_empty() {
            lock(&self.held_ids).clear();
        }
        if let Some(seg) = index.segments.remove(&seq) {
            drop(seg.ack_file);
            for path in [self.data_path(seq), self.ack_path(seq)] {
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        // Never below zero, even if the count fell short of the disk.
                        let _ = self
                            .total
                            .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(len)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        crate::util::diag::warn_limited!(path = %path.display(), error = %e, "could not remove a spool file");
                    }
                }
            }
        }
        if index.segments.is_empty() {
            lock(&self.held_ids).clear();
        }
    }
}

/// `write_all`, telling how many bytes were written when it fails.
fn write_counted(mut file: &File, mut buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(k) => {
                written += k;
                buf = &buf[k..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
