//! The hand-off from traced code to the background worker, and the worker itself.
//!
//! A completed trace is handed off once, through a bounded queue that never blocks the
//! caller: when the queue is full (in traces or in estimated bytes) the trace is dropped
//! and counted. A dedicated thread owns a small runtime, encodes traces off the
//! application's threads, and writes them to the sink: the local trace file (the embedded
//! default, with no API key) or the Openlayer API.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::Error;
use crate::record::CompletedTrace;
use crate::report::{Counters, DeliveryReport, DropReason, Stats};
use crate::wire::{self, EncodedRow};

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
    match Config::from_env() {
        Ok(config) => {
            let enabled = !config.disabled;
            install(Pipeline::start(config));
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

// ---------------------------------------------------------------------------------------
// Test capture

/// Traces captured in memory instead of being exported (see `testing::capture`).
#[derive(Debug, Default)]
pub(crate) struct CaptureSink {
    rows: Mutex<Vec<EncodedRow>>,
}

impl CaptureSink {
    fn push(&self, trace: &CompletedTrace) {
        if let Some(row) = wire::encode(trace) {
            self.rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(row);
        }
    }

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

    fn wake(&self) {
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
        // A timer thread wakes the future at the deadline.
        let timer = {
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

pub(crate) enum Msg {
    /// By value: the queue's blocks are reused, so a hand-off allocates nothing.
    Trace(CompletedTrace, usize),
    Flush(Arc<Completion>, Instant),
    Shutdown(Arc<Completion>, Instant),
}

/// The queue, the counters and the worker thread of one configuration.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) config: Config,
    tx: Option<mpsc::Sender<Msg>>,
    pub(crate) counters: Arc<Counters>,
    queued_bytes: Arc<AtomicUsize>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the worker thread for `config` (none when disabled).
    pub(crate) fn start(config: Config) -> Arc<Pipeline> {
        let counters = Arc::new(Counters::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        if config.disabled {
            return Arc::new(Pipeline {
                config,
                tx: None,
                counters,
                queued_bytes,
                worker: Mutex::new(None),
            });
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let sink = Sink::new(&config);
        let worker = {
            let counters = counters.clone();
            let queued_bytes = queued_bytes.clone();
            std::thread::Builder::new()
                .name("openlayer-trace".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
                    match rt {
                        Ok(rt) => rt.block_on(run(rx, sink, counters, queued_bytes)),
                        Err(e) => tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker"),
                    }
                })
        };
        let worker = match worker {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker thread");
                None
            }
        };
        let tx = worker.as_ref().map(|_| tx);
        Arc::new(Pipeline {
            config,
            tx,
            counters,
            queued_bytes,
            worker: Mutex::new(worker),
        })
    }

    fn enqueue(&self, trace: CompletedTrace) {
        let c = &self.counters;
        c.enqueued.fetch_add(1, Relaxed);
        let Some(tx) = &self.tx else {
            c.drop_rows(DropReason::Shutdown, 1);
            c.settled.fetch_add(1, Relaxed);
            return;
        };
        let bytes = trace.state.approx_bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Relaxed);
        if queued + bytes > self.config.queue_max_bytes {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            self.drop_full();
            return;
        }
        match tx.try_send(Msg::Trace(trace, bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(bytes, Relaxed);
                self.drop_full();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(bytes, Relaxed);
                c.drop_rows(DropReason::Shutdown, 1);
                c.settled.fetch_add(1, Relaxed);
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

    /// Sends a control message and waits for it until `deadline`.
    fn wait_for(
        &self,
        deadline: Instant,
        make: impl FnOnce(Arc<Completion>) -> Msg,
    ) -> Result<bool, Error> {
        if self.tx.is_none() {
            return Ok(true); // disabled: nothing is ever pending
        }
        let done = self.control(make).ok_or(Error::Shutdown)?;
        Ok(done.wait_until(deadline))
    }

    async fn wait_for_async(
        &self,
        deadline: Instant,
        make: impl FnOnce(Arc<Completion>) -> Msg,
    ) -> Result<bool, Error> {
        if self.tx.is_none() {
            return Ok(true);
        }
        let done = self.control(make).ok_or(Error::Shutdown)?;
        Ok(done.wait_until_async(deadline).await)
    }

    pub(crate) fn flush(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let deadline = Instant::now() + timeout;
        let complete = self.wait_for(deadline, |c| Msg::Flush(c, deadline))?;
        Ok(self.report(complete))
    }

    pub(crate) async fn flush_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let deadline = Instant::now() + timeout;
        let complete = self
            .wait_for_async(deadline, |c| Msg::Flush(c, deadline))
            .await?;
        Ok(self.report(complete))
    }

    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let deadline = Instant::now() + timeout;
        let complete = self.wait_for(deadline, |c| Msg::Shutdown(c, deadline))?;
        if complete {
            if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = h.join();
            }
        }
        Ok(self.report(complete))
    }

    pub(crate) async fn shutdown_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let deadline = Instant::now() + timeout;
        let complete = self
            .wait_for_async(deadline, |c| Msg::Shutdown(c, deadline))
            .await?;
        Ok(self.report(complete))
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

// ---------------------------------------------------------------------------------------
// The worker

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    mut sink: Sink,
    counters: Arc<Counters>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut batch: Vec<EncodedRow> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut traces = 0usize;
        let mut next = Some(first);
        // Drain what is already queued, so that one write serves many traces.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Trace(mut trace, bytes) => {
                    traces += 1;
                    queued_bytes.fetch_sub(bytes, Relaxed);
                    match encode(&trace) {
                        Some(row) => batch.push(row),
                        None => {
                            counters.drop_rows(DropReason::Encoding, 1);
                            counters.settled.fetch_add(1, Relaxed);
                        }
                    }
                    crate::record::recycle(&mut trace.state);
                    drop(trace);
                    if batch.len() >= 512 {
                        sink.write(std::mem::take(&mut batch), &counters);
                    }
                    next = rx.try_recv().ok();
                }
                Msg::Flush(done, _deadline) => {
                    sink.write(std::mem::take(&mut batch), &counters);
                    sink.flush();
                    done.complete();
                    next = rx.try_recv().ok();
                }
                Msg::Shutdown(done, _deadline) => {
                    rx.close();
                    // Settle whatever is still queued behind the shutdown message.
                    while let Ok(msg) = rx.try_recv() {
                        if let Msg::Trace(trace, bytes) = msg {
                            queued_bytes.fetch_sub(bytes, Relaxed);
                            match encode(&trace) {
                                Some(row) => batch.push(row),
                                None => {
                                    counters.drop_rows(DropReason::Encoding, 1);
                                    counters.settled.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    }
                    sink.write(std::mem::take(&mut batch), &counters);
                    sink.flush();
                    done.complete();
                    return;
                }
            }
        }
        sink.write(std::mem::take(&mut batch), &counters);
        if traces > 0 {
            // Pace the worker: while it sleeps, no waker is registered on the queue, so
            // hand-offs do not wake it (a futex call and a context switch per trace on the
            // application's thread); it drains a whole pace's worth at once instead.
            tokio::time::sleep(WORKER_PACE).await;
        }
    }
    sink.write(batch, &counters);
    sink.flush();
}

/// How long the worker waits after draining traces before it looks at the queue again.
/// At most this much is added to a flush; the queue absorbs any burst shorter than
/// `queue_capacity` traces per pace.
const WORKER_PACE: Duration = Duration::from_millis(1);

/// Encodes a trace; a bug in encoding costs that trace (counted), never the worker.
fn encode(trace: &CompletedTrace) -> Option<EncodedRow> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wire::encode(trace))) {
        Ok(row) => row,
        Err(_) => {
            crate::diag::warn_limited!("a trace could not be encoded; dropped (counted)");
            None
        }
    }
}

/// Where encoded traces go.
enum Sink {
    /// The embedded default: a local JSONL file of data-stream request bodies.
    File(FileSink),
}

impl Sink {
    fn new(config: &Config) -> Sink {
        let path = absolute(&config.trace_file);
        let notice = format!(
            "openlayer-trace: OPENLAYER_API_KEY is not set; traces are written to {}",
            path.display()
        );
        eprintln!("{notice}");
        tracing::info!(target: "openlayer_trace", path = %path.display(), "traces are written to a local file");
        Sink::File(FileSink {
            path,
            file: None,
            default_pipeline: config.inference_pipeline_id.clone(),
        })
    }

    fn write(&mut self, rows: Vec<EncodedRow>, counters: &Counters) {
        if rows.is_empty() {
            return;
        }
        match self {
            Sink::File(f) => f.write(rows, counters),
        }
    }

    fn flush(&mut self) {
        match self {
            Sink::File(f) => f.flush(),
        }
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Appends one line per trace to the local trace file.
struct FileSink {
    path: PathBuf,
    file: Option<File>,
    default_pipeline: Option<String>,
}

impl FileSink {
    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn write(&mut self, rows: Vec<EncodedRow>, counters: &Counters) {
        let n = rows.len() as u64;
        let len = rows.iter().map(|r| r.config.len() + r.row.len() + 48);
        let mut buf = String::with_capacity(len.sum());
        for row in &rows {
            let pipeline = row
                .pipeline_id
                .as_deref()
                .or(self.default_pipeline.as_deref());
            buf.push_str(&wire::file_line(pipeline, &row.config, [row.row.as_str()]));
            buf.push('\n');
        }
        let result = self.open().and_then(|f| f.write_all(buf.as_bytes()));
        match result {
            Ok(()) => {
                counters.written.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.file = None;
                counters.drop_rows(DropReason::Encoding, n);
                crate::diag::warn_limited!(path = %self.path.display(), error = %e, "could not write the trace file; traces dropped (counted)");
            }
        }
        counters.settled.fetch_add(n, Relaxed);
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
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
pub fn init(config: Config) -> Result<Guard, Error> {
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let pipeline = Pipeline::start(config);
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
