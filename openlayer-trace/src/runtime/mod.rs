//! The hand-off from traced code to the background worker, and the public surface
//! (`init`, `Guard`, `flush`, `stats`).
//!
//! A completed trace is handed off once, through a bounded queue that never blocks the
//! caller. When the queue is full (in traces or in estimated bytes) the trace goes to the
//! spool writer's own small bounded backlog when a spool is configured, and is otherwise
//! dropped and counted. A dedicated thread owns a small runtime, encodes traces off the
//! application's threads, and hands them to the sink: the local trace file (the embedded
//! default, with no API key; see `export::local_file`) or the Openlayer API (see
//! `export::openlayer`).
//!
//! In write-ahead mode the completing thread also encodes the trace and appends it to the
//! spool before handing it off (see `spool`); that is the only mode with work on the
//! application's threads.
//!
//! It is the composition root: it owns the global state and the lazy start, starts the
//! pipeline, and provides `Guard`, `init`, `flush` and `stats`. It may import from
//! `util/`, `error.rs`, `report.rs`, `config.rs`, `record/`, `encode/`, `export/` and
//! `transport/`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;
use crate::export::producer::Exporter;
use crate::record::row_update::RowUpdate;
use crate::record::sink::{self, TraceSink};
use crate::report::{DeliveryReport, DropReason, Stats};

mod handover;
mod start;

pub(crate) use start::Start;

static PIPELINE: RwLock<Option<Arc<Exporter>>> = RwLock::new(None);
static INIT: Mutex<()> = Mutex::new(());

/// Whether new traces are recorded; the first call configures the SDK from the
/// environment. One relaxed load once configured.
#[inline]
pub(crate) fn tracing_enabled() -> bool {
    sink::enabled(lazy_init)
}

/// Configures the SDK from the environment, unless that was done already; whether
/// tracing is on. Cold: called by the first traced call only.
#[cold]
pub(crate) fn lazy_init() -> bool {
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if sink::configured() {
        return sink::enabled(|| false);
    }
    match Config::from_env().and_then(|c| start::start(c, Start::Lazy)) {
        Ok(pipeline) => {
            let enabled = !pipeline.config.disabled;
            install(pipeline);
            enabled
        }
        Err(e) => {
            // On stderr too, as the notice of a missing destination: without a `tracing`
            // subscriber, nothing else would say why nothing is traced.
            crate::util::diag::notice(&format!(
                "openlayer-trace: tracing is off: the configuration from the environment \
                 cannot be used ({e}); fix it, or call openlayer_trace::init"
            ));
            tracing::error!(target: "openlayer_trace", error = %e, "tracing is off: bad configuration");
            sink::set_enabled(false);
            false
        }
    }
}

fn install(pipeline: Arc<Exporter>) -> Option<Arc<Exporter>> {
    let c = &pipeline.config;
    crate::util::open_traces::configure(
        c.max_steps_per_trace,
        c.queue_max_bytes,
        c.batch_max_bytes,
        c.open_trace_warn_after,
    );
    #[cfg(any(test, feature = "test-util"))]
    crate::export::capture::set_installed_shaper(pipeline.shaper.clone());
    let on = !pipeline.config.disabled;
    // The sink's lock first (see `sink::install_with`).
    sink::install_with(|| {
        let mut slot = PIPELINE.write().unwrap_or_else(|e| e.into_inner());
        let previous = slot.replace(pipeline.clone());
        (Some((Some(pipeline as Arc<dyn TraceSink>), on)), previous)
    })
}

fn current() -> Option<Arc<Exporter>> {
    if !sink::configured() {
        tracing_enabled();
    }
    PIPELINE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Hands a row update off to the queue (see `crate::update_row`).
pub(crate) fn submit_update(update: RowUpdate) {
    // While `init` hands a spool over, kept for the next pipeline.
    let Some(update) = handover::keep_update(update) else {
        return;
    };
    match current() {
        Some(p) => p.enqueue_update(update),
        None => tracing::debug!(target: "openlayer_trace", "row update dropped: no pipeline"),
    }
}

/// A row update made while tracing is off. After a shutdown it is counted as dropped
/// (`shutdown`, as a trace that completes then is) and logged; with tracing disabled it
/// is ignored, as every traced call is.
pub(crate) fn update_while_off() {
    let pipeline = PIPELINE.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(p) = pipeline
        && !p.config.disabled
    {
        let c = &p.counters;
        c.enqueued.fetch_add(1, Relaxed);
        c.drop_rows(DropReason::Shutdown, 1);
        c.settled.fetch_add(1, Relaxed);
        crate::util::diag::warn_limited!("a row update was made after shutdown; dropped (counted)");
    }
}

/// Counts a row update that was invalid: enqueued and dropped as rejected.
pub(crate) fn reject_update() {
    if let Some(p) = current() {
        let c = &p.counters;
        c.enqueued.fetch_add(1, Relaxed);
        c.drop_rows(DropReason::Rejected, 1);
        c.invalid_updates.fetch_add(1, Relaxed);
        c.settled.fetch_add(1, Relaxed);
    }
}

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
///
/// Bind it to a name that lives as long as tracing should (`let _ = init_from_env()` drops
/// it at once, which shuts tracing down). Dropping it blocks the thread for up to
/// `shutdown_timeout`: in async code, end with [`Guard::shutdown_async`] instead.
#[must_use = "dropping the guard flushes and stops the trace pipeline"]
#[derive(Debug)]
pub struct Guard {
    pipeline: Option<Arc<Exporter>>,
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
    ///
    /// Dropped before it returns (a `select!` or a timeout around it), the shutdown it
    /// asked for goes on, and recording stops all the same.
    pub async fn shutdown_async(mut self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let p = self.pipeline.take().ok_or(Error::Shutdown)?;
        struct Uninstall(Arc<Exporter>);
        impl Drop for Uninstall {
            fn drop(&mut self) {
                uninstall(&self.0);
            }
        }
        let _uninstall = Uninstall(p.clone());
        p.shutdown_async(timeout).await
    }

    /// A snapshot of the delivery counters.
    pub fn stats(&self) -> Stats {
        self.pipeline
            .as_ref()
            .map(|p| p.stats())
            .unwrap_or_default()
    }
}

fn uninstall(p: &Arc<Exporter>) {
    // The sink's lock first (see `sink::install_with`).
    sink::install_with(|| {
        let slot = PIPELINE.read().unwrap_or_else(|e| e.into_inner());
        // Shut down on purpose: later traces are not recorded until `init` is called
        // again. The exporter stays the sink, so that a trace started before and completed
        // after the shutdown is counted (dropped as `shutdown`), and `stats()` still shows
        // it.
        let current = slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, p));
        (
            current.then(|| (Some(p.clone() as Arc<dyn TraceSink>), false)),
            (),
        )
    });
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

/// Configures the SDK with `config` and starts its background worker (see `crate::init`,
/// which also installs the panic hook).
pub(crate) fn init(config: Config) -> Result<Guard, Error> {
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let mut old_shut_down = false;
    let mut handing_over = None;
    if config.spool_dir.is_some() && config.api_key.is_some() && !config.disabled {
        // The spool directory belongs to one pipeline at a time: the previous one, when
        // it holds this one, releases it (spooling what it could not deliver) before the
        // new one starts. Meanwhile what completes is kept for the new one.
        let old = PIPELINE.read().unwrap_or_else(|e| e.into_inner()).clone();
        // The same directory however it is named (a symlink, `..`, a relative path).
        let same_dir = |old: &Exporter| {
            let (Some(s), Some(dir)) = (&old.spool, &config.spool_dir) else {
                return false;
            };
            match (std::fs::canonicalize(dir), std::fs::canonicalize(s.dir())) {
                (Ok(a), Ok(b)) => a == b,
                _ => std::path::absolute(dir).is_ok_and(|d| d == s.dir()),
            }
        };
        if let Some(old) = old.filter(|o| same_dir(o)) {
            handing_over = Some(handover::begin(&old));
            let _ = old.shutdown(old.config.shutdown_timeout);
            // After a shutdown that came back incomplete (this one, or the guard's
            // before it), its threads may still hold the spool: waited for, within a
            // bound, so that the new pipeline does not find the spool locked by its own
            // process.
            old.wait_for_threads(old.config.shutdown_timeout.min(Duration::from_secs(10)));
            old_shut_down = true;
        }
    }
    let pipeline = match start::start(config, Start::Explicit) {
        Ok(p) => p,
        Err(e) => {
            // What was kept has nowhere to go: back to the pipeline it was first headed
            // for, shut down, which counts it as dropped (`shutdown`).
            drop(handing_over.take());
            // A failed `init` never leaves the first traced call to configure the SDK
            // from the environment alone (without the mask, the sampling or the pipeline
            // the caller asked for), nor a pipeline it shut down switched on: tracing is
            // off until an `init` succeeds. A working earlier pipeline stays as it was.
            if !sink::configured() {
                sink::install(None, false);
            } else if old_shut_down {
                // The shut-down pipeline stays the sink, so that traces completing now
                // are counted (as `shutdown`), but records nothing new.
                sink::set_enabled(false);
            }
            return Err(e);
        }
    };
    let old = install(pipeline.clone());
    if let Some(unwinding) = handing_over.take() {
        handover::end(&pipeline);
        // Ended: it has nothing left to do.
        drop(unwinding);
    }
    if let Some(old) = old {
        let timeout = old.config.shutdown_timeout;
        let _ = old.shutdown(timeout);
    }
    Ok(Guard {
        pipeline: Some(pipeline),
    })
}

fn installed() -> Result<Arc<Exporter>, Error> {
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

/// A snapshot of the current configuration's delivery counters (after a shutdown, those of
/// the configuration shut down, until `init` is called again).
pub fn stats() -> Stats {
    PIPELINE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.stats())
        .unwrap_or_default()
}
