//! Starting a configuration: the queue, the worker and the spool writer, wired to the
//! destination the configuration names.

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::encode::row_policy::Shaper;
use crate::error::Error;
use crate::export::budget::Budget;
use crate::export::openlayer::Flusher;
use crate::export::producer::Exporter;
use crate::export::spool::Spool;
use crate::report::Counters;
use crate::transport::{Transport, TransportConfig};

use crate::util::limits::WORKER_STACK;

/// In a child forked from this process, recording is off (its pipeline's threads are the
/// parent's, and nothing would drain its queue) until the child calls `init`.
fn stop_recording_in_forked_children() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        extern "C" fn in_child() {
            // Async-signal-safe: one atomic store.
            crate::record::sink::set_enabled(false);
        }
        ONCE.call_once(|| {
            // SAFETY: registers a handler that only stores to an atomic; it is never
            // unregistered.
            unsafe {
                libc::pthread_atfork(None, None, Some(in_child));
            }
        });
    }
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
            crate::util::reentry::suppress_this_thread();
            // Their stack holds the masking of deep rows.
            crate::encode::row_policy::shape_on_big_stack();
            f()
        })
        .map_err(|e| {
            tracing::error!(target: "openlayer_trace", error = %e, "could not start a background thread");
            Error::Io(e)
        })
}

/// Settles what was handed to a worker that could not start, so that nothing is lost
/// uncounted: traces, rows and updates are dropped (`shutdown`) and their room given back,
/// rows already written ahead to the spool are counted as spooled (the next process
/// replays them), and flushes and shutdowns waiting are completed. The queue is closed
/// first: what is handed off later is counted by the producer (`shutdown` too).
fn settle_unstarted(
    rx: &mut crate::util::queue::Receiver<crate::export::protocol::Msg>,
    counters: &Counters,
    budget: &Budget,
    spool: Option<&Spool>,
) {
    use crate::export::budget::Tier;
    use crate::export::protocol::Msg;
    use crate::report::DropReason;
    use std::sync::atomic::Ordering::Relaxed;
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Trace(_, bytes) | Msg::Update(_, bytes, None) => {
                budget.release(bytes, Tier::Queue);
                counters.drop_rows(DropReason::Shutdown, 1);
            }
            Msg::Update(_, bytes, Some(w)) => {
                // Written ahead: the next process replays it.
                budget.release(bytes, Tier::Queue);
                match spool {
                    Some(s) => {
                        s.give_up(w);
                        counters.spooled.fetch_add(1, Relaxed);
                    }
                    None => counters.drop_rows(DropReason::Shutdown, 1),
                }
            }
            Msg::Row(row, bytes) => {
                budget.release(bytes, Tier::Queue);
                match (row.1, spool) {
                    (Some(w), Some(s)) => {
                        s.give_up(w);
                        counters.spooled.fetch_add(1, Relaxed);
                    }
                    _ => counters.drop_rows(DropReason::Shutdown, 1),
                }
            }
            Msg::Flush(done, _) | Msg::Shutdown(done, _) => {
                done.complete();
                continue;
            }
        }
        counters.settled.fetch_add(1, Relaxed);
    }
}

/// Runs a worker's `body` on the queue. Should it panic (a bug of ours: user callbacks
/// are caught where they run), the queue is closed and settled as by
/// [`settle_unstarted`]: what waits in it, and what is handed off later, is counted (as
/// `shutdown`) rather than lost with the receiver. What the worker itself held is not.
fn guarded(
    rx: crate::util::queue::Receiver<crate::export::protocol::Msg>,
    counters: &Counters,
    budget: &Budget,
    spool: Option<&Spool>,
    body: impl FnOnce(&mut crate::util::queue::Receiver<crate::export::protocol::Msg>),
) {
    let mut rx = rx;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut rx)));
    if run.is_err() {
        tracing::error!(
            target: "openlayer_trace",
            "the trace worker stopped on an internal error; traces queued or handed off from now on are dropped (counted as shutdown)"
        );
        settle_unstarted(&mut rx, counters, budget, spool);
        // Sealed and let go, as when the worker could not start.
        if let Some(s) = spool {
            s.close(Vec::new());
        }
    }
}

/// Runs the worker: the data-stream flusher alone, or, with an OTLP endpoint, the router
/// in front of it (when there is one) and the OTLP side.
fn run_worker(
    rt: &tokio::runtime::Runtime,
    rx: &mut crate::util::queue::Receiver<crate::export::protocol::Msg>,
    flusher: Option<Flusher>,
    config: &Config,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    shaper: Shaper,
) {
    #[cfg(feature = "otlp")]
    if let Some((transport_config, openlayer)) = crate::export::otlp::transport_config(config) {
        match Transport::new(transport_config) {
            Ok(t) => {
                let otlp = crate::export::otlp::OtlpFlusher::new(
                    config,
                    t,
                    openlayer,
                    flusher.is_none(),
                    counters.clone(),
                    budget.clone(),
                );
                rt.block_on(crate::export::otlp::run(
                    rx, flusher, otlp, shaper, counters, budget, config,
                ));
                return;
            }
            Err(e) => {
                tracing::error!(target: "openlayer_trace", error = %e, "could not start the OTLP exporter; spans are not sent");
            }
        }
    }
    let _ = (config, shaper);
    match flusher {
        Some(f) => rt.block_on(f.run(rx)),
        // OTLP only, and its exporter could not start.
        None => settle_unstarted(rx, &counters, &budget, None),
    }
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

/// Starts the background threads for `config` (none when disabled): the worker, and
/// the spool writer when there is a spool.
pub(crate) fn start(config: Config, how: Start) -> Result<Arc<Exporter>, Error> {
    let generation = crate::util::id::fork_generation();
    stop_recording_in_forked_children();
    let counters = Arc::new(Counters::default());
    #[cfg(feature = "otlp")]
    let (otlp_on, data_stream) = (
        config.otlp.endpoint.is_some(),
        !(config.otlp.endpoint.is_some() && crate::export::otlp::only(&config)),
    );
    #[cfg(not(feature = "otlp"))]
    let (otlp_on, data_stream) = (false, true);
    // Alongside the data stream, the OTLP exporter has its own half of the worker's share.
    let budget = Arc::new(if otlp_on && data_stream && !config.disabled {
        Budget::with_otlp_alongside(config.queue_max_bytes)
    } else {
        Budget::new(config.queue_max_bytes)
    });
    let shaper = Shaper::new(&config);
    if config.disabled {
        return Ok(Arc::new(Exporter {
            config,
            tx: None,
            counters,
            budget,
            shaper,
            spool: None,
            write_ahead: false,
            threads: Mutex::new(Vec::new()),
            abandoned_flushes: Default::default(),
            generation,
        }));
    }
    let mut config = config;
    if otlp_on && config.spool_mode == crate::config::SpoolMode::WriteAhead {
        // A trace written ahead is a row before the worker sees it: no spans could be made.
        tracing::warn!(target: "openlayer_trace", "with an OTLP endpoint, the spool is used in overflow mode, not write-ahead");
        config.spool_mode = crate::config::SpoolMode::Overflow;
    }
    if how == Start::Lazy && config.api_key.is_none() && !config.trace_file_set && !otlp_on {
        // Nobody asked for the local file: traces are counted, not written (a library
        // using `#[trace]` must not make every binary linking it write prompts to disk).
        crate::util::diag::notice(
            "openlayer-trace: no OPENLAYER_API_KEY, no init call and no OPENLAYER_TRACE_FILE; \
             traces are counted but not written anywhere (call openlayer_trace::init_from_env() \
             or set OPENLAYER_TRACE_FILE to write them to a local file)",
        );
        return Ok(Arc::new(Exporter {
            config,
            tx: None,
            counters,
            budget,
            shaper,
            spool: None,
            write_ahead: false,
            threads: Mutex::new(Vec::new()),
            abandoned_flushes: Default::default(),
            generation,
        }));
    }
    let (tx, rx) = crate::util::queue::channel(config.queue_capacity);
    let mut threads = Vec::new();
    let mut spool = None;
    if config.api_key.is_none() && !otlp_on {
        if let Some(dir) = &config.spool_dir {
            tracing::info!(target: "openlayer_trace", dir = %dir.display(), "the spool is only used when sending to Openlayer; without an API key it is ignored");
        }
        if how == Start::Explicit {
            // `init` says so when the file cannot be written (a read-only directory, a
            // missing mount), rather than dropping every trace later.
            crate::export::local_file::writer::check_writable(&config.trace_file).map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("the local trace file {}: {e}", config.trace_file.display()),
                ))
            })?;
        }
        let sink = crate::export::local_file::writer::FileSink::new(&config);
        let (counters, budget, shaper) = (counters.clone(), budget.clone(), shaper.clone());
        threads.push(spawn("openlayer-trace", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build();
            match rt {
                Ok(rt) => guarded(rx, &counters.clone(), &budget.clone(), None, |rx| {
                    rt.block_on(crate::export::local_file::writer::run(
                        rx, sink, counters, budget, shaper,
                    ))
                }),
                Err(e) => {
                    tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker");
                    settle_unstarted(&mut { rx }, &counters, &budget, None);
                }
            }
        })?);
    } else {
        // Checked here; built on the worker thread, so that the traced call that
        // configures the SDK lazily does not pay for the TLS setup.
        let transport_config = TransportConfig::from_config(&config);
        transport_config.validate()?;
        if how != Start::Lazy {
            // Off the traced path: `init` reports roots that cannot be loaded.
            transport_config.check_tls_roots()?;
        }
        #[cfg(feature = "otlp")]
        crate::export::otlp::validate(&config)?;
        let opened = match &config.spool_dir {
            None => None,
            Some(_) if !data_stream => {
                tracing::info!(target: "openlayer_trace", "spans sent only over OTLP are not spooled; the spool is not used");
                None
            }
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
                crate::export::spool::writer::run_writer(writer_spool, jobs, shaper, default)
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
                    let spool_for_settling = worker_spool.clone();
                    let flusher = data_stream.then(|| {
                        Flusher::new(
                            &worker_config,
                            transport,
                            counters.clone(),
                            budget.clone(),
                            shaper.clone(),
                            worker_spool,
                        )
                    });
                    let (c, b) = (counters.clone(), budget.clone());
                    guarded(rx, &c, &b, spool_for_settling.as_deref(), |rx| {
                        run_worker(&rt, rx, flusher, &worker_config, counters, budget, shaper)
                    });
                    // Not a plain drop: that waits for blocking tasks, and a name
                    // lookup (`getaddrinfo`) can hang past any deadline.
                    rt.shutdown_background();
                }
                Err(e) => {
                    // Traces handed off from now on are dropped as `shutdown` (counted).
                    tracing::error!(target: "openlayer_trace", error = %e, "could not start the trace worker");
                    settle_unstarted(&mut { rx }, &counters, &budget, worker_spool.as_deref());
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
    Ok(Arc::new(Exporter {
        config,
        tx: Some(tx),
        counters,
        budget,
        shaper,
        write_ahead: spool.as_ref().is_some_and(|s| s.write_ahead()),
        spool,
        threads: Mutex::new(threads),
        abandoned_flushes: Default::default(),
        generation,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::export::budget::Tier;
    use crate::export::protocol::Msg;
    use crate::record::row_update::RowUpdate;
    use crate::util::queue::TrySendError;

    fn update(id: &str) -> Box<RowUpdate> {
        Box::new(RowUpdate {
            pipeline: None,
            inference_id: id.into(),
            row: "{}".into(),
            config: None,
        })
    }

    /// A worker that panics (a bug of ours) leaves nothing queued uncounted: what waits in
    /// the queue is settled as dropped, and later hand-offs are refused (their senders
    /// count them).
    #[test]
    fn a_worker_that_panics_leaves_nothing_queued_uncounted() {
        let counters = Counters::default();
        let budget = Budget::new(1 << 20);
        let (tx, rx) = crate::util::queue::channel(8);
        for id in ["a", "b", "c"] {
            assert!(budget.reserve(100, Tier::Queue));
            tx.try_send(Msg::Update(update(id), 100, None)).unwrap();
        }
        guarded(rx, &counters, &budget, None, |rx| {
            let _taken = rx.try_recv().unwrap();
            panic!("a bug in the worker");
        });
        assert_eq!(counters.shutdown.load(Relaxed), 2);
        assert_eq!(counters.settled.load(Relaxed), 2);
        // The room of the two left is given back (the first went with the worker).
        assert_eq!(budget.used(), 100);
        assert!(matches!(
            tx.try_send(Msg::Update(update("d"), 100, None)),
            Err(TrySendError::Closed(_))
        ));
    }

    /// A worker that ends normally leaves the queue as it is.
    #[test]
    fn a_worker_that_returns_is_left_alone() {
        let counters = Counters::default();
        let budget = Budget::new(1 << 20);
        let (tx, rx) = crate::util::queue::channel(8);
        tx.try_send(Msg::Update(update("a"), 0, None)).unwrap();
        guarded(rx, &counters, &budget, None, |_| {});
        assert_eq!(counters.settled.load(Relaxed), 0);
    }
}
