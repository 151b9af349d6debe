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
//! server's 2xx and that write, or after a power loss that loses the sidecar's tail. A
//! segment is only replayed while none of its rows is still on its way in this process
//! (so a row is never in flight twice). Lines are told apart by their position (segment
//! and offset), never by `inferenceId`: two distinct rows that share one are both sent. A
//! row update is replayed as a `PUT`, on its own, and only once no line before it is still
//! being replayed, so that it follows its trace's row.
//!
//! The spool is bounded by `spool_max_bytes`: before an append would exceed it, the
//! oldest segments are evicted whole, and their unacknowledged rows are counted as
//! dropped (`spool_evicted`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Config, FailureFn, SpoolMode};
use crate::encode::OutRow;
use crate::encode::row_policy::Shaper;
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::report::{Counters, DeliveryFailure, DropReason, notify};
use crate::util::heap::heap_bytes;
use crate::util::signal::Completion;

/// The bookkeeping's subdirectory: the spool directory itself holds only segments, so
/// that it reads as a set of local trace files (`openlayer show DIR`).
const STATE_DIR: &str = "state";
const LOCK_FILE: &str = "lock";
const DATA_EXT: &str = "jsonl";
const ACK_EXT: &str = "acks";
/// Most `inferenceId`s of spooled rows remembered (see `Index::held_ids`).
const MAX_HELD_IDS: usize = 200_000;

/// The state of one segment that other threads read without the index lock.
#[derive(Debug)]
pub(crate) struct LiveSeg {
    seq: u64,
    /// No more appends (rotated, closed, or from an earlier process).
    sealed: AtomicBool,
    /// Rows appended ahead by this process and still on their way (queued or in flight).
    outstanding: AtomicU64,
    /// Length of the complete lines.
    bytes: AtomicU64,
    /// Number of complete lines, once known.
    lines: AtomicU64,
    lines_known: AtomicBool,
    /// A write-ahead row of it was given up on (it waits for a replay).
    gave_up: AtomicBool,
}

impl LiveSeg {
    fn new(seq: u64, sealed: bool, bytes: u64, lines: Option<u64>) -> Arc<LiveSeg> {
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
    seg: Arc<LiveSeg>,
    offset: u64,
}

#[derive(Debug)]
struct Segment {
    live: Arc<LiveSeg>,
    acked: HashSet<u64>,
    /// Lines handed out to a replay that has not finished.
    inflight: HashSet<u64>,
    /// Lines before it were handed out or acknowledged in this replay pass.
    cursor: u64,
    ack_file: Option<File>,
}

#[derive(Debug, Default)]
struct Index {
    segments: BTreeMap<u64, Segment>,
    next_seq: u64,
    /// `inferenceId`s of rows this process spooled: their row updates are spooled behind
    /// them, never sent before them. Forgotten when the spool is empty.
    held_ids: HashSet<String>,
}

#[derive(Debug)]
struct WaWriter {
    live: Arc<LiveSeg>,
    file: File,
    len: u64,
    broken: bool,
}

/// Work for the spool writer thread.
pub(crate) enum Job {
    /// A trace that overflowed the queue (still to be encoded).
    Trace(Box<CompletedTrace>, usize),
    /// Rows to keep, and the reason to count if they cannot be written.
    Rows(Vec<OutRow>, DropReason, usize),
    /// Row updates to keep (their pipeline resolved), and the reason to count if they
    /// cannot be written.
    Updates(Vec<RowUpdate>, DropReason, usize),
    /// Completed once everything sent before it is written and synced.
    Barrier(Arc<Completion>),
    /// Rotate the write-ahead segment or evict, as requested.
    Maintain,
    /// Write what is left, seal the segments, release the directory, then complete.
    Close(Vec<Arc<Completion>>),
}

/// A batch of spooled lines to send again: data-stream rows of one pipeline and one
/// config, or one row update.
#[derive(Debug)]
pub(crate) struct ReplayBatch {
    seq: u64,
    offsets: Vec<u64>,
    pub pipeline: String,
    /// The data-stream config; for a row update, its config (empty when it has none).
    pub config: String,
    /// The rows; for a row update, its one row (the columns to set).
    pub rows: Vec<String>,
    ids: Vec<String>,
    /// For each line (offset): how many rows and how many ids it gave.
    per_line: Vec<(usize, usize)>,
    /// For a row update, the inference id of the row it updates.
    pub update: Option<String>,
}

impl ReplayBatch {
    /// Splits off the second half of a batch of several lines (for bisecting a rejected
    /// batch); `None` for a batch of one line.
    pub(crate) fn split_off(&mut self) -> Option<ReplayBatch> {
        if self.update.is_some() || self.offsets.len() < 2 {
            return None;
        }
        let half = self.offsets.len() / 2;
        let (rows, ids) = self.per_line[..half]
            .iter()
            .fold((0, 0), |(r, i), (lr, li)| (r + lr, i + li));
        Some(ReplayBatch {
            seq: self.seq,
            offsets: self.offsets.split_off(half),
            pipeline: self.pipeline.clone(),
            config: self.config.clone(),
            rows: self.rows.split_off(rows),
            ids: self.ids.split_off(ids),
            per_line: self.per_line.split_off(half),
            update: None,
        })
    }
}

/// How a replayed batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayEnd {
    /// 2xx: the rows are gone from the spool.
    Acked,
    /// Rejected for good (a non-retryable 4xx): gone too, counted by the caller.
    Rejected,
    /// Not delivered: the rows stay for the next pass.
    Failed,
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
    wa: Option<Mutex<WaWriter>>,
    rotate_requested: AtomicBool,
    maintain_requested: AtomicBool,
    jobs: mpsc::Sender<Job>,
    backlog_rows: AtomicUsize,
    backlog_max_rows: usize,
    /// The memory budget the writer's backlog counts in, shared with the queue and the
    /// worker (see `pipeline::Budget`).
    budget: Arc<Budget>,
    counters: Arc<Counters>,
    on_failure: Option<FailureFn>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(unix)]
fn private_file(o: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o600)
}

#[cfg(not(unix))]
fn private_file(o: &mut OpenOptions) -> &mut OpenOptions {
    o
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Makes a new directory entry durable.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Takes the spool for this process: an OS file lock on `state/lock` (`flock` on unix,
/// `LockFileEx` on Windows), held for as long as the returned file is open and released
/// by the kernel when the process dies, whatever its PID namespace. The file names the
/// owner's process id, for the error message of the next process that tries.
fn take_lock(state: &Path) -> io::Result<File> {
    let path = state.join(LOCK_FILE);
    let mut file = private_file(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let owner = fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            return Err(io::Error::other(format!(
                "the spool directory {} is in use by process {} (it holds the lock {})",
                state.parent().unwrap_or(state).display(),
                if owner.is_empty() { "?" } else { owner },
                path.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    Ok(file)
}

fn parse_seq(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn read_acks(path: &Path) -> HashSet<u64> {
    let Ok(text) = fs::read_to_string(path) else {
        return HashSet::new();
    };
    // Only newline-terminated records count: a torn last record is ignored.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Counts the complete lines of a file; returns (lines, length of the complete lines).
fn count_lines(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut pos, mut end) = (0u64, 0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((lines, end));
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                end = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "pipelineId", default)]
    pipeline_id: Option<String>,
    #[serde(borrow)]
    config: &'a RawValue,
    #[serde(borrow)]
    rows: Vec<&'a RawValue>,
}

/// A row-update line (see `localfile`).
#[derive(Deserialize)]
struct UpdateLine<'a> {
    #[serde(rename = "pipelineId", default)]
    pipeline_id: Option<String>,
    #[serde(rename = "inferenceId")]
    inference_id: String,
    #[serde(borrow)]
    row: &'a RawValue,
    #[serde(borrow, default)]
    config: Option<&'a RawValue>,
}

/// How a row update keeps its place behind the lines before it during a replay.
struct Order {
    /// A line of an earlier segment is still being replayed.
    earlier_busy: bool,
    /// Set when a row update was reached that must wait: the replay stops there.
    held: bool,
}

/// A spool line: data-stream rows or a row update.
enum Parsed<'a> {
    Stream(Line<'a>),
    Update(UpdateLine<'a>),
}

fn parse_line(text: &str) -> Option<Parsed<'_>> {
    if let Ok(line) = serde_json::from_str::<Line<'_>>(text) {
        return Some(Parsed::Stream(line));
    }
    serde_json::from_str::<UpdateLine<'_>>(text)
        .ok()
        .map(Parsed::Update)
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(rename = "inferenceId", default)]
    inference_id: Option<serde_json::Value>,
}

fn row_id(row: &RawValue) -> Option<String> {
    match serde_json::from_str::<IdOnly>(row.get())
        .ok()?
        .inference_id?
    {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool directory of `config`, takes it for this
    /// process, and indexes the segments earlier processes left. Returns the spool and
    /// the receiving end of its writer's jobs (for [`run_writer`]).
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
        create_private_dir(&state)?;
        let lock_file = take_lock(&state)?;
        let mut index = Index::default();
        let mut total = 0u64;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = parse_seq(name, DATA_EXT) {
                let len = entry.metadata()?.len();
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
                total += entry.metadata()?.len();
            } else {
                // The segment is gone: its acknowledgements are of no use.
                let _ = fs::remove_file(entry.path());
            }
        }
        index.next_seq = index.next_seq.max(1);
        let (jobs, rx) = mpsc::channel();
        let mut spool = Spool {
            max_bytes: config.spool_max_bytes,
            segment_bytes: (config.spool_max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024),
            total: AtomicU64::new(total),
            index: Mutex::new(index),
            wa: None,
            rotate_requested: AtomicBool::new(false),
            maintain_requested: AtomicBool::new(false),
            jobs,
            backlog_rows: AtomicUsize::new(0),
            backlog_max_rows: (config.queue_capacity / 4).max(64),
            budget,
            counters,
            on_failure: config.on_failure.clone(),
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
        if let Some(id) = trace.state.inference_id.as_deref() {
            self.hold_ids([id]);
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
    ) -> Result<(), Vec<OutRow>> {
        let bytes = heap_bytes(rows.capacity() * size_of::<OutRow>())
            + rows.iter().map(OutRow::held_bytes).sum::<usize>();
        let n = rows.len();
        let job = |rows, bytes| Job::Rows(rows, reason, bytes);
        self.send_job(rows, n, bytes, tier, job, |job| match job {
            Job::Rows(rows, _, _) => Some(rows),
            _ => None,
        })
    }

    /// Hands row updates to the writer (their pipeline resolved), counted in the memory
    /// budget under `tier`; gives them back when there is no room.
    pub(crate) fn send_updates(
        &self,
        updates: Vec<RowUpdate>,
        reason: DropReason,
        tier: Tier,
    ) -> Result<(), Vec<RowUpdate>> {
        let bytes = heap_bytes(updates.capacity() * size_of::<RowUpdate>())
            + updates.iter().map(RowUpdate::size).sum::<usize>();
        let n = updates.len();
        let job = |updates, bytes| Job::Updates(updates, reason, bytes);
        self.send_job(updates, n, bytes, tier, job, |job| match job {
            Job::Updates(updates, _, _) => Some(updates),
            _ => None,
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
        self.jobs.send(job(what, bytes)).map_err(|e| {
            self.release(n, bytes);
            back(e.0).unwrap_or_else(|| unreachable!("the job sent is the job given back"))
        })
    }

    /// Counts a job into the backlog: `rows` against its row limit (the worker's tiers
    /// may use twice traced code's share), its bytes, plus the job's slot in the
    /// channel, against the memory budget.
    fn reserve(&self, rows: usize, bytes: usize, tier: Tier) -> bool {
        let share = if tier == Tier::Overflow { 1 } else { 2 };
        let r = self.backlog_rows.fetch_add(rows, SeqCst);
        if r + rows > self.backlog_max_rows * share {
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
        if let Err(e) = self.jobs.send(Job::Barrier(done))
            && let Job::Barrier(done) = e.0
        {
            done.complete();
        }
    }

    /// Asks the writer to finish, seal everything and release the directory, then
    /// complete `done`.
    pub(crate) fn close(&self, done: Vec<Arc<Completion>>) {
        if let Err(e) = self.jobs.send(Job::Close(done))
            && let Job::Close(done) = e.0
        {
            for d in done {
                d.complete();
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Write-ahead (on the thread that completed the trace)

    /// Appends a row ahead of sending it: one `write(2)`, no `fsync`. `None` when the
    /// spool is full or the write failed (the row then travels unprotected).
    pub(crate) fn append_ahead(&self, line: &str) -> Option<WalRef> {
        let wa = self.wa.as_ref()?;
        let n = line.len() as u64;
        if self.total.load(SeqCst) + n > self.max_bytes {
            self.request_maintenance();
            crate::util::diag::warn_limited!(
                dir = %self.dir.display(),
                "the spool is full; traces are sent without being written ahead"
            );
            return None;
        }
        let mut w = lock(wa);
        if w.broken {
            return None;
        }
        let offset = w.len;
        w.live.outstanding.fetch_add(1, SeqCst);
        match (&w.file).write_all(line.as_bytes()) {
            Ok(()) => {
                w.len += n;
                w.live.lines.fetch_add(1, SeqCst);
                w.live.bytes.store(w.len, SeqCst);
                self.total.fetch_add(n, SeqCst);
                let seg = w.live.clone();
                let full = w.len >= self.segment_bytes;
                drop(w);
                if full && !self.rotate_requested.swap(true, SeqCst) {
                    self.maintain_requested.store(true, SeqCst);
                    let _ = self.jobs.send(Job::Maintain);
                }
                Some(WalRef { seg, offset })
            }
            Err(e) => {
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

    /// A written-ahead row that will not be delivered now: it stays in the spool, to be
    /// replayed.
    pub(crate) fn give_up(&self, r: WalRef) {
        r.seg.gave_up.store(true, SeqCst);
        r.seg.outstanding.fetch_sub(1, SeqCst);
    }

    /// Written-ahead rows that were delivered (or rejected for good): acknowledged.
    pub(crate) fn ack_ahead(&self, refs: impl IntoIterator<Item = WalRef>) {
        let mut by_seg: BTreeMap<u64, (Arc<LiveSeg>, Vec<u64>)> = BTreeMap::new();
        for r in refs {
            by_seg
                .entry(r.seg.seq)
                .or_insert_with(|| (r.seg.clone(), Vec::new()))
                .1
                .push(r.offset);
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
            match private_file(OpenOptions::new().append(true).create(true)).open(&ack_path) {
                Ok(f) => seg.ack_file = Some(f),
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

    /// Notes rows spooled by this process (see `Index::held_ids`).
    pub(crate) fn hold_ids<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut index = lock(&self.index);
        for id in ids {
            if index.held_ids.len() < MAX_HELD_IDS {
                index.held_ids.insert(id.to_string());
            }
        }
    }

    /// Whether a row with this `inferenceId` was spooled by this process and may still
    /// be in the spool: its updates must follow it there.
    pub(crate) fn holds_row(&self, inference_id: &str) -> bool {
        lock(&self.index).held_ids.contains(inference_id)
    }

    fn remove_segment(&self, index: &mut Index, seq: u64) {
        if index.segments.is_empty() {
            index.held_ids = HashSet::new();
        }
        if let Some(seg) = index.segments.remove(&seq) {
            drop(seg.ack_file);
            for path in [self.data_path(seq), self.ack_path(seq)] {
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        self.total
                            .fetch_sub(len.min(self.total.load(SeqCst)), SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        crate::util::diag::warn_limited!(path = %path.display(), error = %e, "could not remove a spool file");
                    }
                }
            }
        }
        if index.segments.is_empty() {
            index.held_ids = HashSet::new();
        }
    }

    // -----------------------------------------------------------------------------------
    // Replay (on the flusher's thread)

    /// Whether some spooled rows could be replayed now. Asks for the write-ahead segment
    /// to be rotated when rows given up on wait in it behind rows still on their way.
    pub(crate) fn has_replayable(&self) -> bool {
        let index = lock(&self.index);
        let mut any = false;
        for seg in index.segments.values() {
            let l = &seg.live;
            let end = l.bytes.load(SeqCst);
            if seg.cursor >= end {
                continue;
            }
            if l.outstanding.load(SeqCst) == 0 {
                any = true;
            } else if !l.sealed.load(SeqCst) && l.gave_up.load(SeqCst) && self.wa.is_some() {
                // Seal it so that it settles and becomes replayable.
                if !self.rotate_requested.swap(true, SeqCst) {
                    self.maintain_requested.store(true, SeqCst);
                    let _ = self.jobs.send(Job::Maintain);
                }
            }
        }
        any
    }

    /// The next batch of spooled rows to send: the oldest unacknowledged lines of the
    /// oldest replayable segment that share one pipeline and config, within the limits.
    pub(crate) fn next_replay(
        &self,
        max_rows: usize,
        max_bytes: usize,
        default_pipeline: Option<&str>,
    ) -> Option<ReplayBatch> {
        let mut index = lock(&self.index);
        let seqs: Vec<u64> = index.segments.keys().copied().collect();
        // Whether a line of an earlier segment is still being replayed: a row update
        // after it waits.
        let mut earlier = false;
        for seq in seqs {
            let (end, eligible, busy) = {
                let seg = &index.segments[&seq];
                let busy = !seg.inflight.is_empty();
                let end = seg.live.bytes.load(SeqCst);
                let eligible = seg.cursor < end && seg.live.outstanding.load(SeqCst) == 0;
                (end, eligible, busy)
            };
            if !eligible {
                earlier |= busy;
                continue;
            }
            let mut order = Order {
                earlier_busy: earlier,
                held: false,
            };
            let read = self.read_batch(
                &mut index,
                seq,
                end,
                (max_rows, max_bytes),
                default_pipeline,
                &mut order,
            );
            match read {
                Ok(Some(batch)) => return Some(batch),
                Ok(None) if order.held => return None,
                Ok(None) => earlier |= busy,
                Err(e) => {
                    crate::util::diag::warn_limited!(path = %self.data_path(seq).display(), error = %e, "could not read a spool file");
                }
            }
        }
        None
    }

    fn read_batch(
        &self,
        index: &mut Index,
        seq: u64,
        end: u64,
        (max_rows, max_bytes): (usize, usize),
        default_pipeline: Option<&str>,
        order: &mut Order,
    ) -> io::Result<Option<ReplayBatch>> {
        let path = self.data_path(seq);
        let Index { segments, .. } = index;
        let seg = segments.get_mut(&seq).expect("listed above");
        let mut file = File::open(&path)?;
        file.seek(SeekFrom::Start(seg.cursor))?;
        let mut reader = BufReader::new(file.take(end - seg.cursor));
        let mut pos = seg.cursor;
        let mut line = Vec::new();
        let mut batch: Option<ReplayBatch> = None;
        let mut batch_bytes = 0usize;
        let mut to_ack = Vec::new();
        let mut unreadable = 0u64;
        let mut no_pipeline = 0u64;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A torn last line (the writer died mid-write): never complete, ignore.
                if seg.live.sealed.load(SeqCst) {
                    seg.live.bytes.store(pos, SeqCst);
                }
                break;
            }
            let offset = pos;
            pos += n as u64;
            if seg.acked.contains(&offset) || seg.inflight.contains(&offset) {
                seg.cursor = pos;
                continue;
            }
            // A write interrupted by a crash may leave NUL bytes before the next line.
            let text = std::str::from_utf8(&line)
                .map(|t| t.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
                .unwrap_or("");
            let parsed = match parse_line(text) {
                Some(Parsed::Stream(line)) => line,
                Some(Parsed::Update(u)) => {
                    if batch.is_some() {
                        break; // the next batch starts here
                    }
                    let Some(pipeline) = u
                        .pipeline_id
                        .clone()
                        .or_else(|| default_pipeline.map(str::to_string))
                    else {
                        no_pipeline += 1;
                        to_ack.push(offset);
                        seg.cursor = pos;
                        continue;
                    };
                    if order.earlier_busy || !seg.inflight.is_empty() {
                        // Lines before it (its trace's row, maybe) are still being
                        // replayed: it waits for them, and so does everything after it.
                        order.held = true;
                        break;
                    }
                    seg.inflight.insert(offset);
                    seg.cursor = pos;
                    batch = Some(ReplayBatch {
                        seq,
                        offsets: vec![offset],
                        pipeline,
                        config: u.config.map(|c| c.get().to_string()).unwrap_or_default(),
                        rows: vec![u.row.get().to_string()],
                        ids: Vec::new(),
                        per_line: vec![(1, 0)],
                        update: Some(u.inference_id),
                    });
                    break;
                }
                None => {
                    unreadable += 1;
                    to_ack.push(offset);
                    seg.cursor = pos;
                    continue;
                }
            };
            let Some(pipeline) = parsed
                .pipeline_id
                .clone()
                .or_else(|| default_pipeline.map(str::to_string))
            else {
                no_pipeline += parsed.rows.len() as u64;
                to_ack.push(offset);
                seg.cursor = pos;
                continue;
            };
            let config = parsed.config.get();
            if let Some(b) = &batch
                && (b.pipeline != pipeline || b.config != config)
            {
                break; // the next batch starts here
            }
            // Deduplicated by position (a line is acknowledged or in flight by its offset),
            // never by `inferenceId`: two distinct rows may share one.
            let mut rows = Vec::new();
            let mut ids = Vec::new();
            for row in &parsed.rows {
                rows.push(row.get().to_string());
                ids.push(row_id(row));
            }
            if rows.is_empty() {
                to_ack.push(offset);
                seg.cursor = pos;
                continue;
            }
            let size: usize = rows.iter().map(|r| r.len() + 1).sum();
            if let Some(b) = &batch
                && (b.rows.len() + rows.len() > max_rows
                    || batch_bytes + size + b.config.len() + 32 > max_bytes)
            {
                break;
            }
            let b = batch.get_or_insert_with(|| ReplayBatch {
                seq,
                offsets: Vec::new(),
                pipeline: pipeline.clone(),
                config: config.to_string(),
                rows: Vec::new(),
                ids: Vec::new(),
                per_line: Vec::new(),
                update: None,
            });
            batch_bytes += size;
            b.offsets.push(offset);
            let known = ids.iter().flatten().count();
            b.per_line.push((rows.len(), known));
            b.rows.extend(rows);
            b.ids.extend(ids.into_iter().flatten());
            seg.inflight.insert(offset);
            seg.cursor = pos;
        }
        if unreadable > 0 {
            self.counters.drop_spooled(DropReason::Encoding, unreadable);
            crate::util::diag::warn_limited!(path = %path.display(), lines = unreadable, "unreadable lines in the spool were skipped (counted)");
        }
        if no_pipeline > 0 {
            self.counters
                .drop_spooled(DropReason::NoPipeline, no_pipeline);
            crate::util::diag::warn_limited!(path = %path.display(), rows = no_pipeline, "spooled rows without an inference pipeline id were dropped (counted)");
        }
        if !to_ack.is_empty() {
            self.ack_locked(index, seq, &to_ack);
            self.delete_if_done(index, seq);
        }
        Ok(batch)
    }

    /// Records how a replayed batch ended.
    pub(crate) fn replay_done(&self, batch: ReplayBatch, end: ReplayEnd) {
        let mut index = lock(&self.index);
        match end {
            ReplayEnd::Acked | ReplayEnd::Rejected => {
                self.ack_locked(&mut index, batch.seq, &batch.offsets);
                self.delete_if_done(&mut index, batch.seq);
            }
            ReplayEnd::Failed => {
                if let Some(seg) = index.segments.get_mut(&batch.seq) {
                    for o in &batch.offsets {
                        seg.inflight.remove(o);
                    }
                    if let Some(first) = batch.offsets.iter().min() {
                        seg.cursor = seg.cursor.min(*first);
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // The writer thread's side

    /// Counts the lines of segments left by earlier processes, and deletes those already
    /// fully acknowledged.
    fn scan_old_segments(&self) {
        let unknown: Vec<u64> = lock(&self.index)
            .segments
            .values()
            .filter(|s| !s.live.lines_known.load(SeqCst))
            .map(|s| s.live.seq)
            .collect();
        for seq in unknown {
            let counted = count_lines(&self.data_path(seq));
            let mut index = lock(&self.index);
            let Some(seg) = index.segments.get(&seq) else {
                continue;
            };
            match counted {
                Ok((lines, end)) => {
                    seg.live.lines.store(lines, SeqCst);
                    seg.live.bytes.store(end, SeqCst);
                    seg.live.lines_known.store(true, SeqCst);
                    self.delete_if_done(&mut index, seq);
                }
                Err(e) => {
                    crate::util::diag::warn_limited!(path = %self.data_path(seq).display(), error = %e, "could not read a spool file");
                }
            }
        }
    }

    /// Evicts the oldest segment that nothing in this process still uses; false when
    /// there is none.
    fn evict_oldest(&self) -> bool {
        let mut index = lock(&self.index);
        let candidate = index
            .segments
            .values()
            .find(|s| {
                s.live.sealed.load(SeqCst)
                    && s.live.outstanding.load(SeqCst) == 0
                    && s.inflight.is_empty()
            })
            .map(|s| s.live.seq);
        let Some(seq) = candidate else {
            return false;
        };
        let seg = &index.segments[&seq];
        let lines = if seg.live.lines_known.load(SeqCst) {
            seg.live.lines.load(SeqCst)
        } else {
            count_lines(&self.data_path(seq)).map_or(0, |(l, _)| l)
        };
        let evicted = lines.saturating_sub(seg.acked.len() as u64);
        self.remove_segment(&mut index, seq);
        drop(index);
        if evicted > 0 {
            self.counters
                .drop_spooled(DropReason::SpoolEvicted, evicted);
            crate::util::diag::warn_limited!(dir = %self.dir.display(), rows = evicted, "the spool is full; its oldest rows were evicted (counted)");
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows: evicted,
                    dropped: Some(DropReason::SpoolEvicted),
                    status: None,
                    message: "the spool is full; its oldest rows were evicted".into(),
                },
            );
        }
        true
    }

    /// Replaces the write-ahead segment with a new one and seals the old one.
    fn rotate_ahead(&self) {
        self.rotate_requested.store(false, SeqCst);
        let Some(wa) = &self.wa else { return };
        {
            let w = lock(wa);
            if w.len == 0 && !w.broken {
                return;
            }
        }
        let (live, file) = match self.new_segment() {
            Ok(s) => s,
            Err(e) => {
                crate::util::diag::warn_limited!(dir = %self.dir.display(), error = %e, "could not create a spool file");
                return;
            }
        };
        let old = std::mem::replace(
            &mut *lock(wa),
            WaWriter {
                live,
                file,
                len: 0,
                broken: false,
            },
        );
        old.live.sealed.store(true, SeqCst);
        drop(old.file);
        let mut index = lock(&self.index);
        self.delete_if_done(&mut index, old.live.seq);
    }
}

/// The spool writer's open segment.
struct Current {
    live: Arc<LiveSeg>,
    file: File,
    len: u64,
    dirty: bool,
}

/// Rows written but not yet synced, to count once they are.
#[derive(Default)]
struct Unsynced {
    rows: u64,
    /// Of which traces that overflowed the queue (reported to `on_failure` together).
    overflowed: u64,
}

/// The spool writer thread: appends handed-off rows, syncs, evicts, rotates.
pub(crate) fn run_writer(
    spool: Arc<Spool>,
    jobs: mpsc::Receiver<Job>,
    shaper: Shaper,
    default_pipeline: Option<String>,
) {
    spool.scan_old_segments();
    let mut w = Writer {
        spool: &spool,
        current: None,
        unsynced: Unsynced::default(),
        shaper,
        default_pipeline,
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut barriers = Vec::new();
        let mut close = None;
        for job in batch {
            match job {
                Job::Trace(trace, bytes) => {
                    spool.release(1, bytes);
                    w.write_trace(&trace);
                }
                Job::Rows(rows, reason, bytes) => {
                    spool.release(rows.len(), bytes);
                    w.write_rows(rows, reason);
                }
                Job::Updates(updates, reason, bytes) => {
                    spool.release(updates.len(), bytes);
                    w.write_updates(updates, reason);
                }
                Job::Barrier(done) => barriers.push(done),
                Job::Maintain => w.maintain(),
                Job::Close(done) => close = Some(done),
            }
        }
        w.sync();
        spool.written.notify_one();
        for done in barriers {
            done.complete();
        }
        if let Some(done) = close {
            w.close();
            for d in done {
                d.complete();
            }
            return;
        }
    }
    w.close();
}

struct Writer<'a> {
    spool: &'a Spool,
    current: Option<Current>,
    unsynced: Unsynced,
    shaper: Shaper,
    default_pipeline: Option<String>,
}

impl Writer<'_> {
    fn counters(&self) -> &Counters {
        &self.spool.counters
    }

    fn write_trace(&mut self, trace: &CompletedTrace) {
        let c = &self.spool.counters;
        let Some(row) = self.shaper.prepare(trace).into_row(c) else {
            return;
        };
        match OutRow::resolve(row, self.default_pipeline.as_deref()) {
            Some(row) => {
                if self.write_rows(vec![row], DropReason::QueueFull) {
                    self.unsynced.overflowed += 1;
                }
            }
            None => {
                c.drop_rows(DropReason::NoPipeline, 1);
                c.settled.fetch_add(1, Relaxed);
                crate::util::diag::warn_limited!(
                    "no inference pipeline id is configured; traces are dropped (counted)"
                );
            }
        }
    }

    /// Appends rows (settled by this thread: spooled once synced, or dropped). Returns
    /// whether they were written.
    fn write_rows(&mut self, rows: Vec<OutRow>, reason: DropReason) -> bool {
        if rows.is_empty() {
            return true;
        }
        let n = rows.len() as u64;
        let mut buf = String::new();
        for r in &rows {
            buf.push_str(&r.spool_line());
        }
        drop(rows);
        self.write_lines(&buf, n, reason)
    }

    /// Appends row updates, one line each, like [`Writer::write_rows`].
    fn write_updates(&mut self, updates: Vec<RowUpdate>, reason: DropReason) -> bool {
        if updates.is_empty() {
            return true;
        }
        let n = updates.len() as u64;
        let mut buf = String::new();
        for u in &updates {
            buf.push_str(&u.file_line(None));
            buf.push('\n');
        }
        drop(updates);
        self.write_lines(&buf, n, reason)
    }

    /// Appends `n` whole lines (settled by this thread: spooled once synced, or dropped).
    fn write_lines(&mut self, buf: &str, n: u64, reason: DropReason) -> bool {
        match self.append(buf.as_bytes(), n) {
            Ok(()) => {
                self.unsynced.rows += n;
                true
            }
            Err(e) => {
                let c = self.counters();
                c.drop_rows(reason, n);
                c.settled.fetch_add(n, Relaxed);
                crate::util::diag::warn_limited!(dir = %self.spool.dir.display(), error = %e, rows = n, "could not write to the spool; rows dropped (counted)");
                notify(
                    self.spool.on_failure.as_ref(),
                    DeliveryFailure {
                        rows: n,
                        dropped: Some(reason),
                        status: None,
                        message: format!("could not write to the spool: {e}"),
                    },
                );
                false
            }
        }
    }

    fn append(&mut self, buf: &[u8], lines: u64) -> io::Result<()> {
        let need = buf.len() as u64;
        if !self.make_room(need) {
            return Err(io::Error::other(format!(
                "the spool is full ({} bytes, limit {})",
                self.spool.total.load(SeqCst),
                self.spool.max_bytes
            )));
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.len > 0 && c.len + need > self.spool.segment_bytes)
        {
            self.seal_current();
        }
        if self.current.is_none() {
            let (live, file) = self.spool.new_segment()?;
            self.current = Some(Current {
                live,
                file,
                len: 0,
                dirty: false,
            });
        }
        let c = self.current.as_mut().expect("opened above");
        if let Err(e) = (&c.file).write_all(buf) {
            // A partial line may be there now: never append after it.
            let on_disk = c.file.metadata().map(|m| m.len()).unwrap_or(c.len);
            self.spool
                .total
                .fetch_add(on_disk.saturating_sub(c.len), SeqCst);
            self.seal_current();
            return Err(e);
        }
        c.len += need;
        c.dirty = true;
        c.live.lines.fetch_add(lines, SeqCst);
        c.live.bytes.store(c.len, SeqCst);
        self.spool.total.fetch_add(need, SeqCst);
        Ok(())
    }

    /// Evicts the oldest data until `need` more bytes fit; false when they cannot.
    fn make_room(&mut self, need: u64) -> bool {
        let s = self.spool;
        if need > s.max_bytes {
            return false;
        }
        loop {
            if s.total.load(SeqCst) + need <= s.max_bytes {
                return true;
            }
            if s.evict_oldest() {
                continue;
            }
            if self.current.as_ref().is_some_and(|c| c.len > 0) {
                self.seal_current();
                continue;
            }
            return false;
        }
    }

    fn sync(&mut self) {
        if let Some(c) = &mut self.current
            && c.dirty
        {
            if let Err(e) = c.file.sync_data() {
                crate::util::diag::warn_limited!(dir = %self.spool.dir.display(), error = %e, "could not sync the spool");
            }
            c.dirty = false;
        }
        let Unsynced { rows, overflowed } = std::mem::take(&mut self.unsynced);
        if rows > 0 {
            let c = self.counters();
            c.spooled.fetch_add(rows, Relaxed);
            c.settled.fetch_add(rows, Relaxed);
        }
        if overflowed > 0 {
            notify(
                self.spool.on_failure.as_ref(),
                DeliveryFailure {
                    rows: overflowed,
                    dropped: None,
                    status: None,
                    message: "the trace queue was full; traces were spooled".into(),
                },
            );
        }
    }

    fn seal_current(&mut self) {
        if let Some(c) = self.current.take() {
            if c.dirty {
                let _ = c.file.sync_data();
            }
            c.live.sealed.store(true, SeqCst);
            drop(c.file);
            let mut index = lock(&self.spool.index);
            self.spool.delete_if_done(&mut index, c.live.seq);
        }
    }

    fn maintain(&mut self) {
        self.spool.maintain_requested.store(false, SeqCst);
        if self.spool.rotate_requested.load(SeqCst) {
            self.spool.rotate_ahead();
        }
        while self.spool.total.load(SeqCst) > self.spool.max_bytes && self.spool.evict_oldest() {}
        // A fully acknowledged segment of ours is replaced, so that it can be deleted.
        let done = self.current.as_ref().is_some_and(|c| {
            let index = lock(&self.spool.index);
            index
                .segments
                .get(&c.live.seq)
                .is_some_and(|s| s.acked.len() as u64 >= c.live.lines.load(SeqCst))
        });
        if done {
            self.seal_current();
        }
    }

    fn close(&mut self) {
        self.sync();
        self.seal_current();
        let s = self.spool;
        if let Some(wa) = &s.wa {
            let w = lock(wa);
            let _ = w.file.sync_data();
            w.live.sealed.store(true, SeqCst);
            let seq = w.live.seq;
            drop(w);
            let mut index = lock(&s.index);
            s.delete_if_done(&mut index, seq);
        }
        {
            let mut index = lock(&s.index);
            let seqs: Vec<u64> = index.segments.keys().copied().collect();
            for seq in seqs {
                s.delete_if_done(&mut index, seq);
            }
        }
        // The lock file stays: removing it would let two processes lock two files.
        let _ = s.lock_file.unlock();
    }
}

#[cfg(test)]
mod tests;
