//! The hand-off from traced code to the background worker, and the public surface
//! (`init`, `Guard`, `flush`, `stats`).
//!
//! A completed trace is handed off once, through a bounded queue that never blocks the
//! caller. When the queue is full (in traces or in estimated bytes) the trace goes to the
//! spool writer's own small bounded backlog when a spool is configured, and is otherwise
//! dropped and counted. A dedicated thread owns a small runtime, encodes traces off the
//! application's threads, and hands them to the sink: the local trace file (the embedded
//! default, with no API key; see `filesink`) or the Openlayer API (see `flusher`).
//!
//! In write-ahead mode the completing thread also encodes the trace and appends it to the
//! spool before handing it off (see `spool`); that is the only mode with work on the
//! application's threads.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::Error;
use crate::flusher::Flusher;
use crate::record::CompletedTrace;
use crate::report::{Counters, DeliveryReport, DropReason, Stats};
use crate::shape::Shaper;
use crate::spool::{Spool, WalRef};
use crate::transport::{Transport, TransportConfig};
use crate::wire::{self, EncodedRow, OutRow, OutUpdate};

// ---------------------------------------------------------------------------------------
// Global state

const UNINIT: u8 = 0;
const ENABLED: u8 = 1;
const DISABLED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static PIPELINE: RwLock<Option<Arc<Pipeline>>> = RwLock::new(None);
static INIT: Mutex<()> = Mutex::new(());

/// Whether new traces are recorded. One relaxed load once configured; the first call
/// configures the SDK from the environment.
#[inline]
pub(crate) fn tracing_enabled() -> bool {
    match STATE.load(Relaxed) {
        ENABLED => true,
        DISABLED => false,
        _ => lazy_init(),
    }
}

#[cold]
fn lazy_init() -> bool {
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    match STATE.load(Relaxed) {
        ENABLED => return true,
        DISABLED => return false,
        _ => {}
    }
    match Config::from_env().and_then(|c| Pipeline::start(c, Start::Lazy)) {
        Ok(pipeline) => {
            let enabled = !pipeline.config.disabled;
            install(pipeline);
            enabled
        }
        Err(e) => {
            tracing::error!(target: "openlayer_trace", error = %e, "tracing is off: bad configuration");
            STATE.store(DISABLED, Relaxed);
            false
        }
    }
}

fn install(pipeline: Arc<Pipeline>) -> Option<Arc<Pipeline>> {
    let c = &pipeline.config;
    crate::open::configure(
        c.max_steps_per_trace,
        c.queue_max_bytes,
        c.open_trace_warn_after,
    );
    let state = if pipeline.config.disabled {
        DISABLED
    } else {
        ENABLED
    };
    let previous = PIPELINE
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace(pipeline);
    STATE.store(state, Relaxed);
    previous
}

fn current() -> Option<Arc<Pipeline>> {
    if STATE.load(Relaxed) == UNINIT {
        tracing_enabled();
    }
    PIPELINE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Hands a completed trace off: to the test capture when there is one, else to the queue.
pub(crate) fn submit(trace: CompletedTrace, capture: Option<&Arc<CaptureSink>>) {
    if let Some(capture) = capture {
        capture.push(&trace);
        return;
    }
    match current() {
        Some(p) => p.enqueue(trace),
        None => tracing::debug!(target: "openlayer_trace", "trace dropped: no pipeline"),
    }
}

/// Hands a row update off to the queue (see `crate::update_row`).
pub(crate) fn submit_update(update: OutUpdate) {
    match current() {
        Some(p) => p.enqueue_update(update),
        None => tracing::debug!(target: "openlayer_trace", "row update dropped: no pipeline"),
    }
}

/// Counts a row update that was invalid: enqueued and dropped as rejected.
pub(crate) fn reject_update() {
    if let Some(p) = current() {
        let c = &p.counters;
        c.enqueued.fetch_add(1, Relaxed);
        c.drop_rows(DropReason::Rejected, 1);
        c.settled.fetch_add(1, Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Test capture

/// Traces captured in memory instead of being exported (see `testing::capture`), shaped
/// (sampled, masked, cut to the field budget) as delivery would shape them.
#[derive(Debug, Default)]
pub(crate) struct CaptureSink {
    rows: Mutex<Vec<EncodedRow>>,
    /// The shaping of this configuration; `None`: that of the configuration installed
    /// when a trace completes (none before `init`).
    shaper: Option<Shaper>,
}

impl CaptureSink {
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn with_config(config: &Config) -> Self {
        CaptureSink {
            rows: Mutex::new(Vec::new()),
            shaper: Some(Shaper::new(config)),
        }
    }

    fn push(&self, trace: &CompletedTrace) {
        let installed;
        let shaper = match &self.shaper {
            Some(s) => Some(s),
            None => {
                installed = PIPELINE
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|p| p.shaper.clone());
                installed.as_ref()
            }
        };
        let row = match shaper {
            Some(s) => match s.prepare(trace) {
                crate::shape::Prepared::Row(row) => Some(row),
                _ => None,
            },
            None => wire::encode(trace),
        };
        if let Some(row) = row {
            self.rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(row);
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn take(&self) -> Vec<EncodedRow> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// ---------------------------------------------------------------------------------------
// Completion: a one-shot signal that can be awaited with a deadline, sync or async.

#[derive(Debug, Default)]
pub(crate) struct Completion {
    done: Mutex<(bool, Option<Waker>)>,
    cv: Condvar,
}

impl Completion {
    pub(crate) fn complete(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = true;
        if let Some(w) = g.1.take() {
            w.wake();
        }
        self.cv.notify_all();
    }

    pub(crate) fn wake(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = g.1.take() {
            w.wake();
        }
    }

    /// Waits until completed or `deadline`; true when completed.
    pub(crate) fn wait_until(&self, deadline: Instant) -> bool {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !g.0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Awaits completion or `deadline` without needing any particular async runtime.
    pub(crate) async fn wait_until_async(self: Arc<Self>, deadline: Instant) -> bool {
        // The shared timer thread wakes the future at the deadline; without it, a thread
        // of its own does.
        let timer = if crate::timer::wake_at(deadline, &self) {
            None
        } else {
            let me = self.clone();
            std::thread::Builder::new()
                .name("openlayer-trace-deadline".into())
                .spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    me.wake();
                })
                .ok()
        };
        let done = std::future::poll_fn(|cx| {
            let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 {
                return std::task::Poll::Ready(true);
            }
            if Instant::now() >= deadline {
                return std::task::Poll::Ready(false);
            }
            g.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        drop(timer);
        done
    }
}

// ---------------------------------------------------------------------------------------
// The pipeline

/// The stack of our worker threads: room for the recursion of parsing and shaping a
/// trace `max_steps_per_trace` steps deep (address space reserved, not memory used).
const WORKER_STACK: usize = 64 * 1024 * 1024;

/// How long the worker rests after draining the queue before it waits on it again.
///
/// While it waits, the queue holds its waker, so every hand-off from a traced call would
/// wake it: a futex call, and often a context switch, on the application's thread per
/// trace. Resting a little after each drain lets hand-offs be a few atomics and the next
/// drain take many traces at once. A flush waits at most this much longer.
pub(crate) const WORKER_PACE: Duration = Duration::from_millis(1);

/// Heap bytes an allocation of `n` bytes really takes: glibc's malloc adds an 8-byte
/// header and rounds each chunk up to 16 bytes, 32 at least. Other allocators differ by a
/// few bytes; the budget only needs to be a close upper estimate.
pub(crate) const fn heap_bytes(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// Heap bytes a string that may be borrowed holds (none when borrowed).
#[allow(clippy::ptr_arg)] // whether it is owned is the point
pub(crate) fn cow_heap_bytes(s: &std::borrow::Cow<'static, str>) -> usize {
    match s {
        std::borrow::Cow::Owned(s) => heap_bytes(s.capacity()),
        std::borrow::Cow::Borrowed(_) => 0,
    }
}

/// Who reserves room in the [`Budget`], and so which share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Traces (and rows, row updates) handed off to the queue: half of the budget.
    Queue,
    /// The worker's encoded rows, waiting for a request or in flight (with their request
    /// bodies): three eighths.
    Worker,
    /// Traced code's overflow (the queue is full) into the spool writer's backlog: up to
    /// half of the writer's share.
    Overflow,
    /// What the worker hands to the spool writer (failed requests, rows it has no room
    /// for): the spool writer's whole share, an eighth of the budget.
    Spool,
}

/// The memory budget of undelivered data (`queue_max_bytes`), split between every
/// buffer that holds traces or rows not yet delivered, spooled or dropped: the queue
/// (half), the worker's rows, lingering, ready or in flight (three eighths), and the spool
/// writer's backlog (an eighth). Each holder reserves what it takes before it takes it and
/// releases it when the data has moved on; what does not fit goes to the next stage (the
/// spool) or is dropped and counted, so a reservation never waits.
///
/// The shares are fixed, not pooled: each buffer is filled and emptied by different
/// threads, whose allocator arenas keep the memory of their own peak, so what the process
/// holds follows the sum of the buffers' peaks rather than the peak of their sum.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    queue: AtomicUsize,
    worker: AtomicUsize,
    spool: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit: limit.max(1),
            queue: AtomicUsize::new(0),
            worker: AtomicUsize::new(0),
            spool: AtomicUsize::new(0),
        }
    }

    /// The count `tier` reserves in, and the most it may fill it to.
    fn share(&self, tier: Tier) -> (&AtomicUsize, usize) {
        let eighth = self.limit / 8;
        match tier {
            Tier::Queue => (&self.queue, self.limit / 2),
            Tier::Worker => (&self.worker, self.limit / 2 - eighth),
            Tier::Overflow => (&self.spool, eighth / 2),
            Tier::Spool => (&self.spool, eighth),
        }
    }

    /// Counts `bytes` in if they fit in `tier`'s share; false (and nothing counted)
    /// otherwise. Never waits.
    pub(crate) fn reserve(&self, bytes: usize, tier: Tier) -> bool {
        let (used, cap) = self.share(tier);
        // Open traces share the queue's half (see `crate::open`).
        let cap = match tier {
            Tier::Queue => cap.saturating_sub(crate::open::held()),
            _ => cap,
        };
        used.fetch_update(Relaxed, Relaxed, |u| {
            let total = u.checked_add(bytes)?;
            (total <= cap).then_some(total)
        })
        .is_ok()
    }

    /// Gives back bytes reserved earlier under `tier`.
    pub(crate) fn release(&self, bytes: usize, tier: Tier) {
        self.share(tier).0.fetch_sub(bytes, Relaxed);
    }

    /// Bytes reserved now, in all shares.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.queue.load(Relaxed) + self.worker.load(Relaxed) + self.spool.load(Relaxed)
    }

    /// The whole budget, in bytes.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// What a completed trace holds while it waits in the queue: its slot in the channel
/// (it travels by value) and what its records hold (see `TraceState::approx_bytes`).
pub(crate) fn queued_trace_bytes(trace: &CompletedTrace) -> usize {
    size_of::<Msg>() + trace.state.approx_bytes()
}

/// What a control message asks of the worker.
#[derive(Debug, Clone, Copy)]
enum Control {
    Flush,
    Shutdown,
}

// Deliberately by value (see `Trace`): the other messages are small and rare.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    /// A completed trace, with its estimated size. By value: handing it off allocates
    /// nothing on the application's thread (nor frees anything on the worker's).
    Trace(CompletedTrace, usize),
    /// A row already encoded (and written ahead, unless that failed), with its size.
    Row(Box<(OutRow, Option<WalRef>)>, usize),
    /// A row update, with its size; sent after any row with its inference id still on
    /// its way.
    Update(Box<OutUpdate>, usize),
    Flush(Arc<Completion>, Instant),
    Shutdown(Arc<Completion>, Instant),
}

/// The queue, the counters and the background threads of one configuration.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) config: Config,
    tx: Option<mpsc::Sender<Msg>>,
    pub(crate) counters: Arc<Counters>,
    budget: Arc<Budget>,
    /// Used on the completing thread in write-ahead mode only.
    shaper: Shaper,
    spool: Option<Arc<Spool>>,
    /// Whether the completing thread writes traces ahead to the spool.
    write_ahead: bool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.into())
        // Deep traces are encoded, masked and parsed here (reserved, not committed).
        .stack_size(WORKER_STACK)
        .spawn(move || {
            // Our own threads never start a trace (a mask calling traced code, say).
            crate::context::suppress_this_thread();
            f()
        })
        .map_err(|e| {
            tracing::error!(target: "openlayer_trace", error = %e, "could not start a background thread");
            Error::Io(e)
        })
}

/// How a pipeline is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// By `init`: every problem is an error for the caller.
    Explicit,
    /// By the first traced call: an unusable spool is logged and done without, rather
    /// than turning tracing off.
    Lazy,
}

impl Pipeline {
    /// Starts the background threads for `config` (none when disabled): the worker, and
    /// the spool writer when there is a spool.
    pub(crate) fn start(config: Config, how: Start) -> Result<Arc<Pipeline>, Error> {
        let counters = Arc::new(Counters::default());
        let budget = Arc::new(Budget::new(config.queue_max_bytes));
        let shaper = Shaper::new(&config);
        if config.disabled {
            return Ok(Arc::new(Pipeline {
                config,
                tx: None,
                counters,
                budget,
                shaper,
                spool: None,
                write_ahead: false,
                threads: Mutex::new(Vec::new()),
            }));
        }
        if how == Start::Lazy && config.api_key.is_none() && !config.trace_file_set {
            // Nobody asked for the local file: traces are counted, not written (a library
            // using `#[trace]` must not make every binary linking it write prompts to disk).
            eprintln!(
                "openlayer-trace: no OPENLAYER_API_KEY, no init call and no OPENLAYER_TRACE_FILE; \
                 traces are counted but not written anywhere (call openlayer_trace::init_from_env() \
                 or set OPENLAYER_TRACE_FILE to write them to a local file)"
            );
            return Ok(Arc::new(Pipeline {
                config,
                tx: None,
                counters,
                budget,
                shaper,
                spool: None,
                write_ahead: false,
                threads: Mutex::new(Vec::new()),
            }));
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let mut threads = Vec::new();
        let mut spool = None;
        if config.api_key.is_none() {
            if let Some(dir) = &config.spool_dir {
                tracing::info!(target: "openlayer_trace", dir = %dir.display(), "the spool is only used when sending to Openlayer; without an API key it is ignored");
            }
            let sink = crate::filesink::FileSink::new(&config);
            let (counters, budget, shaper) = (counters.clone(), budget.clone(), shaper.clone());
            threads.push(spawn("openlayer-trace", move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(crate::filesink::run(
                        rx,
                        sink,
                        counters,
                        budget,
                        shaper,
                    )),
                    Err(e) => {
                        tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker")
                    }
                }
            })?);
        } else {
            // Checked here; built on the worker thread, so that the traced call that
            // configures the SDK lazily does not pay for the TLS setup.
            let transport_config = TransportConfig::from_config(&config);
            transport_config.validate()?;
            let opened = match &config.spool_dir {
                None => None,
                Some(_) => match Spool::open(&config, counters.clone(), budget.clone()) {
                    Ok(opened) => Some(opened),
                    Err(e) if how == Start::Lazy => {
                        tracing::error!(target: "openlayer_trace", error = %e, "the spool cannot be used; traces are sent without it");
                        None
                    }
                    Err(e) => return Err(e),
                },
            };
            if let Some((s, jobs)) = opened {
                let (writer_spool, shaper, default) = (
                    s.clone(),
                    shaper.clone(),
                    config.inference_pipeline_id.clone(),
                );
                threads.push(spawn("openlayer-trace-spool", move || {
                    crate::spool::run_writer(writer_spool, jobs, shaper, default)
                })?);
                spool = Some(s);
            }
            let (worker_config, counters, budget, shaper, worker_spool) = (
                config.clone(),
                counters.clone(),
                budget.clone(),
                shaper.clone(),
                spool.clone(),
            );
            let worker = spawn("openlayer-trace", move || {
                let started = Transport::new(transport_config).and_then(|t| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok((t, rt))
                });
                match started {
                    Ok((transport, rt)) => {
                        let flusher = Flusher::new(
                            &worker_config,
                            transport,
                            counters,
                            budget,
                            shaper,
                            worker_spool,
                        );
                        rt.block_on(flusher.run(rx));
                        // Not a plain drop: that waits for blocking tasks, and a name
                        // lookup (`getaddrinfo`) can hang past any deadline.
                        rt.shutdown_background();
                    }
                    Err(e) => {
                        // Traces handed off from now on are dropped as `shutdown` (counted).
                        tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker");
                        if let Some(s) = worker_spool {
                            s.close(Vec::new());
                        }
                    }
                }
            });
            match worker {
                Ok(h) => threads.push(h),
                Err(e) => {
                    if let Some(s) = &spool {
                        s.close(Vec::new());
                    }
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(Pipeline {
            config,
            tx: Some(tx),
            counters,
            budget,
            shaper,
            write_ahead: spool.as_ref().is_some_and(|s| s.write_ahead()),
            spool,
            threads: Mutex::new(threads),
        }))
    }

    /// Why a row is dropped when this pipeline has no worker: nowhere to go (configured
    /// lazily with neither a key nor a local file), or shut down.
    fn no_sink_reason(&self) -> DropReason {
        if self.config.api_key.is_none() && !self.config.trace_file_set && !self.config.disabled {
            DropReason::NoDestination
        } else {
            DropReason::Shutdown
        }
    }

    /// Hands a completed trace off, then the row updates that rode with it.
    fn enqueue(&self, mut trace: CompletedTrace) {
        let updates = std::mem::take(&mut trace.state.updates);
        self.enqueue_trace(trace);
        for u in updates {
            self.enqueue_update(u);
        }
    }

    fn enqueue_trace(&self, trace: CompletedTrace) {
        let c = &self.counters;
        c.enqueued.fetch_add(1, Relaxed);
        let Some(tx) = &self.tx else {
            c.drop_rows(self.no_sink_reason(), 1);
            c.settled.fetch_add(1, Relaxed);
            return;
        };
        if self.write_ahead
            && let Some(spool) = &self.spool
        {
            return self.enqueue_ahead(tx, spool, trace);
        }
        let bytes = queued_trace_bytes(&trace);
        if !self.reserve(bytes) {
            return self.overflow(Box::new(trace), bytes);
        }
        match tx.try_send(Msg::Trace(trace, bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.budget.release(bytes, Tier::Queue);
                if let Msg::Trace(trace, bytes) = msg {
                    self.overflow(Box::new(trace), bytes);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.budget.release(bytes, Tier::Queue);
                c.drop_rows(DropReason::Shutdown, 1);
                c.settled.fetch_add(1, Relaxed);
                crate::diag::warn_limited!("a trace completed after shutdown; dropped (counted)");
            }
        }
    }

    /// Hands a row update off; like a trace, it overflows to the spool (or is dropped and
    /// counted) when the queue is full. Never blocks.
    pub(crate) fn enqueue_update(&self, update: OutUpdate) {
        let c = &self.counters;
        c.enqueued.fetch_add(1, Relaxed);
        if !self.shaper.keeps(&update.inference_id) {
            // Its row was left out by sampling (decided on the same id): nothing to update.
            c.sampled_out.fetch_add(1, Relaxed);
            c.settled.fetch_add(1, Relaxed);
            return;
        }
        let Some(tx) = &self.tx else {
            c.drop_rows(self.no_sink_reason(), 1);
            c.settled.fetch_add(1, Relaxed);
            return;
        };
        // Its box (the allocator's header on top of its size) and its slot in the channel.
        let bytes = update.size() + 16 + size_of::<Msg>();
        let update = if self.reserve(bytes) {
            match tx.try_send(Msg::Update(Box::new(update), bytes)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(Msg::Update(u, _))) => {
                    self.budget.release(bytes, Tier::Queue);
                    *u
                }
                Err(e) => {
                    self.budget.release(bytes, Tier::Queue);
                    drop(e);
                    c.drop_rows(DropReason::Shutdown, 1);
                    c.settled.fetch_add(1, Relaxed);
                    crate::diag::warn_limited!(
                        "a row update came after shutdown; dropped (counted)"
                    );
                    return;
                }
            }
        } else {
            update
        };
        // The queue is full: the spool keeps it when it can (with its pipeline resolved,
        // as replay needs it).
        if let Some(spool) = &self.spool {
            let pipeline = update
                .pipeline
                .clone()
                .or_else(|| self.config.inference_pipeline_id.clone());
            if pipeline.is_some() {
                let update = OutUpdate { pipeline, ..update };
                if spool
                    .send_updates(vec![update], DropReason::QueueFull, Tier::Overflow)
                    .is_ok()
                {
                    return;
                }
            }
        }
        self.drop_full();
    }

    /// Counts `bytes` into the memory budget, for the queue; false when they do not fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.budget.reserve(bytes, Tier::Queue)
    }

    /// The queue is full: the spool writer takes the trace if it has room, else it is
    /// dropped and counted. Never blocks.
    fn overflow(&self, trace: Box<CompletedTrace>, bytes: usize) {
        if let Some(spool) = &self.spool
            && spool.send_trace(trace, bytes).is_ok()
        {
            return;
        }
        self.drop_full();
    }

    /// Write-ahead: encode here, append to the spool, then hand the row off.
    fn enqueue_ahead(&self, tx: &mpsc::Sender<Msg>, spool: &Spool, mut trace: CompletedTrace) {
        let c = &self.counters;
        let prepared = self.shaper.prepare(&trace);
        // Encoded here: its buffers go back to the pool for the next traces.
        crate::record::recycle(&mut trace.state);
        drop(trace);
        let Some(row) = prepared.into_row(c) else {
            return;
        };
        let Some(row) = OutRow::resolve(row, self.config.inference_pipeline_id.as_deref()) else {
            c.drop_rows(DropReason::NoPipeline, 1);
            c.settled.fetch_add(1, Relaxed);
            crate::diag::warn_limited!(
                "no inference pipeline id is configured; traces are dropped (counted)"
            );
            return;
        };
        let wal = spool.append_ahead(&row.spool_line());
        let bytes =
            row.held_bytes() + heap_bytes(size_of::<(OutRow, Option<WalRef>)>()) + size_of::<Msg>();
        let msg = if self.reserve(bytes) {
            match tx.try_send(Msg::Row(Box::new((row, wal)), bytes)) {
                Ok(()) => return,
                Err(e) => {
                    self.budget.release(bytes, Tier::Queue);
                    e.into_inner()
                }
            }
        } else {
            Msg::Row(Box::new((row, wal)), bytes)
        };
        let Msg::Row(row, _) = msg else {
            unreachable!("sent a row")
        };
        let (row, wal) = *row;
        match wal {
            // On disk already: it waits there for a replay.
            Some(w) => {
                spool.give_up(w);
                c.spooled.fetch_add(1, Relaxed);
                c.settled.fetch_add(1, Relaxed);
            }
            None => {
                if spool
                    .send_rows(vec![row], DropReason::QueueFull, Tier::Overflow)
                    .is_err()
                {
                    self.drop_full();
                }
            }
        }
    }

    fn drop_full(&self) {
        self.counters.drop_rows(DropReason::QueueFull, 1);
        self.counters.settled.fetch_add(1, Relaxed);
        crate::diag::warn_limited!("the trace queue is full; trace dropped (counted in stats)");
    }

    fn report(&self, complete: bool) -> DeliveryReport {
        DeliveryReport {
            stats: self.counters.snapshot(),
            complete,
        }
    }

    /// Sends a control message; `None` when the worker is gone.
    fn control(&self, make: impl FnOnce(Arc<Completion>) -> Msg) -> Option<Arc<Completion>> {
        let tx = self.tx.as_ref()?;
        let done = Arc::new(Completion::default());
        // Control messages may wait for room, but never past the caller's deadline: the
        // worker drains the queue continuously, so a blocking send from a helper is avoided
        // by trying first and falling back to a detached send.
        match tx.try_send(make(done.clone())) {
            Ok(()) => Some(done),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name("openlayer-trace-control".into())
                    .spawn(move || {
                        let _ = tx.blocking_send(msg);
                    })
                    .ok()?;
                Some(done)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    /// Sends a flush or shutdown message and waits for it until `timeout` has passed;
    /// `Ok(true)` when everything handed off before it was settled.
    fn wait_for(&self, what: Control, timeout: Duration) -> Result<bool, Error> {
        let Some((done, deadline)) = self.start_control(what, timeout)? else {
            return Ok(true); // disabled: nothing is ever pending
        };
        Ok(done.wait_until(deadline))
    }

    async fn wait_for_async(&self, what: Control, timeout: Duration) -> Result<bool, Error> {
        let Some((done, deadline)) = self.start_control(what, timeout)? else {
            return Ok(true);
        };
        Ok(done.wait_until_async(deadline).await)
    }

    /// Sends a flush or shutdown message; `None` when disabled (there is no worker).
    fn start_control(
        &self,
        what: Control,
        timeout: Duration,
    ) -> Result<Option<(Arc<Completion>, Instant)>, Error> {
        if self.tx.is_none() {
            return Ok(None);
        }
        let deadline = crate::clock::after(Instant::now(), timeout);
        let done = self
            .control(|c| match what {
                Control::Flush => Msg::Flush(c, deadline),
                Control::Shutdown => Msg::Shutdown(c, deadline),
            })
            .ok_or(Error::Shutdown)?;
        Ok(Some((done, deadline)))
    }

    pub(crate) fn flush(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let complete = self.wait_for(Control::Flush, timeout)?;
        Ok(self.report(complete))
    }

    pub(crate) async fn flush_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let complete = self.wait_for_async(Control::Flush, timeout).await?;
        Ok(self.report(complete))
    }

    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let complete = self.wait_for(Control::Shutdown, timeout)?;
        if complete {
            let threads =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            for h in threads {
                let _ = h.join();
            }
        }
        Ok(self.report(complete))
    }

    pub(crate) async fn shutdown_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let complete = self.wait_for_async(Control::Shutdown, timeout).await?;
        Ok(self.report(complete))
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

// ---------------------------------------------------------------------------------------
// The public surface: init, Guard, flush, shutdown, stats

/// Keeps the SDK configured; dropping it flushes pending traces (with the configured
/// `shutdown_timeout`, 5 s by default) and stops the background worker.
///
/// ```
/// fn main() -> Result<(), openlayer_trace::Error> {
///     let _guard = openlayer_trace::init_from_env()?;
///     // ... traced work ...
///     Ok(())
/// } // pending traces are flushed here
/// ```
#[must_use = "dropping the guard flushes and stops the trace pipeline"]
#[derive(Debug)]
pub struct Guard {
    pipeline: Option<Arc<Pipeline>>,
}

impl Guard {
    /// Waits until every trace completed so far is delivered (or settled otherwise), or
    /// until `timeout`. Always returns by the deadline; the report says whether
    /// everything was settled.
    pub fn flush(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        self.pipeline
            .as_ref()
            .ok_or(Error::Shutdown)?
            .flush(timeout)
    }

    /// [`Guard::flush`] for async code; it never blocks the executor.
    pub async fn flush_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        self.pipeline
            .as_ref()
            .ok_or(Error::Shutdown)?
            .flush_async(timeout)
            .await
    }

    /// Flushes, then stops the worker. Always returns by the deadline.
    pub fn shutdown(mut self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let p = self.pipeline.take().ok_or(Error::Shutdown)?;
        let report = p.shutdown(timeout);
        uninstall(&p);
        report
    }

    /// [`Guard::shutdown`] for async code.
    pub async fn shutdown_async(mut self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let p = self.pipeline.take().ok_or(Error::Shutdown)?;
        let report = p.shutdown_async(timeout).await;
        uninstall(&p);
        report
    }

    /// A snapshot of the delivery counters.
    pub fn stats(&self) -> Stats {
        self.pipeline
            .as_ref()
            .map(|p| p.stats())
            .unwrap_or_default()
    }
}

fn uninstall(p: &Arc<Pipeline>) {
    let mut slot = PIPELINE.write().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, p)) {
        // Shut down on purpose: later traces are not recorded until `init` is called again.
        *slot = None;
        STATE.store(DISABLED, Relaxed);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            let timeout = p.config.shutdown_timeout;
            let report = p.shutdown(timeout);
            uninstall(&p);
            match report {
                Ok(r) if !r.complete => {
                    tracing::warn!(target: "openlayer_trace", pending = r.stats.pending, "traces still pending at shutdown")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(target: "openlayer_trace", error = %e, "shutdown"),
            }
        }
    }
}

/// Configures the SDK with `config` and starts its background worker.
///
/// Replaces any earlier configuration (whose pending traces are flushed first, within
/// its `shutdown_timeout`). Returns a [`Guard`] that flushes when dropped.
///
/// Unless tracing is disabled, it also installs (once) the SDK's panic hook, which
/// remembers a panic's message for the steps it unwinds through and then calls the hook
/// that was installed before it. Install your own hook before `init`, or chain to the
/// previous one (`std::panic::take_hook`), to keep both. Without `init`, the first
/// recorded step installs it.
pub fn init(config: Config) -> Result<Guard, Error> {
    if !config.disabled {
        crate::step::install_panic_hook();
    }
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if config.spool_dir.is_some() && config.api_key.is_some() && !config.disabled {
        // The spool directory belongs to one pipeline at a time: the previous one
        // releases it (spooling what it could not deliver) before the new one starts.
        let old = PIPELINE.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(old) = old {
            let _ = old.shutdown(old.config.shutdown_timeout);
        }
    }
    let pipeline = Pipeline::start(config, Start::Explicit)?;
    if let Some(old) = install(pipeline.clone()) {
        let timeout = old.config.shutdown_timeout;
        let _ = old.shutdown(timeout);
    }
    Ok(Guard {
        pipeline: Some(pipeline),
    })
}

/// Configures the SDK from the environment (`OPENLAYER_API_KEY`,
/// `OPENLAYER_INFERENCE_PIPELINE_ID`, `OPENLAYER_BASE_URL`, `OPENLAYER_DISABLE_PUBLISH`,
/// ...); see [`init`]. Without a key, traces go to the local file of the embedded default.
pub fn init_from_env() -> Result<Guard, Error> {
    init(Config::from_env()?)
}

fn installed() -> Result<Arc<Pipeline>, Error> {
    current().ok_or(Error::Shutdown)
}

/// Flushes the current configuration's pending traces; see [`Guard::flush`].
pub fn flush(timeout: Duration) -> Result<DeliveryReport, Error> {
    installed()?.flush(timeout)
}

/// [`flush`] for async code.
pub async fn flush_async(timeout: Duration) -> Result<DeliveryReport, Error> {
    installed()?.flush_async(timeout).await
}

/// A snapshot of the current configuration's delivery counters.
pub fn stats() -> Stats {
    PIPELINE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.stats())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::borrow::Cow;
    use std::cell::Cell;

    use super::*;
    use crate::kind::StepKind;
    use crate::record::{NO_PARENT, StepRecord, TraceState};

    /// Counts, per thread, the heap bytes live allocations take (`heap_bytes` of each
    /// allocation's size), so that a test can compare an estimate with what was allocated.
    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn count(bytes: usize, sign: isize) {
        let _ = LIVE.try_with(|c| c.set(c.get() + sign * heap_bytes(bytes) as isize));
    }

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), 1);
            // SAFETY: forwarded as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), 1);
            // SAFETY: forwarded as is.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count(layout.size(), -1);
            // SAFETY: forwarded as is.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(layout.size(), -1);
            count(new_size, 1);
            // SAFETY: forwarded as is.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    fn live() -> isize {
        LIVE.with(Cell::get)
    }

    /// A trace like the ones traced code hands off: reused buffers of the usual sizes, a
    /// root with two arguments and three children, a few metadata keys, kind fields, an
    /// error, an owned name, trace columns and an inference id.
    fn representative_trace() -> Box<CompletedTrace> {
        let json = |s: &str| -> Box<str> { Box::from(s) };
        let mut state = TraceState {
            steps: Vec::with_capacity(8),
            text: String::with_capacity(512),
            ..TraceState::default()
        };
        let mut root = StepRecord::new(Cow::Borrowed("handle"), StepKind::UserCall, NO_PARENT, 0);
        root.traced_fn = true;
        root.inputs =
            state.push_text(r#"{"request_id":42,"text":"What is the capital of France?"}"#);
        root.output = state.push_text(r#""score=150""#);
        root.set_metadata(Cow::Borrowed("tenant"), json(r#""acme""#));
        state.steps.push(root);
        for (i, name) in ["tokenize", "score", "render"].into_iter().enumerate() {
            let mut step =
                StepRecord::new(Cow::Borrowed(name), StepKind::UserCall, 0, 10 * i as i64);
            step.traced_fn = true;
            step.inputs = state.push_text(r#"{"tokens":50,"bias":0}"#);
            step.output = state.push_text("150");
            step.end = 10 * i as i64 + 5;
            state.steps.push(step);
        }
        let mut chat = StepRecord::new(
            Cow::Owned(format!("chat-{}", 7)),
            StepKind::ChatCompletion,
            0,
            40,
        );
        chat.set_field("model", json(r#""gpt-4o-mini""#));
        chat.set_field("promptTokens", json("120"));
        chat.set_field("completionTokens", json("18"));
        chat.set_metadata(Cow::Owned("attempt".to_string()), json("2"));
        chat.extra_mut().error = Some(Box::from("rate limited, retried"));
        state.steps.push(chat);
        state.inference_id = Some(Box::from("chat-user-17-1700000000"));
        state
            .columns
            .push((Cow::Borrowed("user_id"), json(r#""user-17""#)));
        state.context = Some(json(r#"["Paris is the capital of France."]"#));
        Box::new(CompletedTrace {
            state,
            anchor_unix_ns: 0,
        })
    }

    #[test]
    fn a_queued_trace_is_not_counted_below_what_it_holds() {
        let before = live();
        let trace = representative_trace();
        let held = (live() - before) as usize;
        let counted = queued_trace_bytes(&trace);
        // Not below what it holds, and not far above it either.
        assert!(counted >= held, "counted {counted} < held {held}");
        assert!(counted <= held + held / 4, "counted {counted}, held {held}");
        drop(trace);
        assert_eq!(live(), before);
    }

    #[test]
    fn heap_bytes_follow_the_allocator() {
        assert_eq!(heap_bytes(0), 0);
        assert_eq!(heap_bytes(1), 32);
        assert_eq!(heap_bytes(24), 32);
        assert_eq!(heap_bytes(25), 48);
        assert_eq!(heap_bytes(512), 528);
    }

    #[test]
    fn each_stage_fills_only_its_share_of_the_budget() {
        let budget = Budget::new(8 * 1024);
        let fill = |tier| {
            let mut n = 0;
            while budget.reserve(16, tier) {
                n += 16;
            }
            n
        };
        // The queue takes half, the worker's rows three eighths, traced code's overflow
        // half of the spool writer's eighth and the worker's rows to the spool the rest.
        assert_eq!(fill(Tier::Queue), 4 * 1024);
        assert_eq!(fill(Tier::Worker), 3 * 1024);
        assert_eq!(fill(Tier::Overflow), 512);
        assert_eq!(fill(Tier::Spool), 512);
        assert_eq!(budget.used(), budget.limit());
        // Room freed in one share is not open to another.
        budget.release(1024, Tier::Worker);
        assert!(!budget.reserve(16, Tier::Queue));
        assert!(!budget.reserve(16, Tier::Spool));
        assert!(budget.reserve(1024, Tier::Worker));
        assert!(!budget.reserve(16, Tier::Worker));
        budget.release(512, Tier::Spool);
        assert!(!budget.reserve(16, Tier::Overflow));
        assert!(budget.reserve(512, Tier::Spool));
    }
}
