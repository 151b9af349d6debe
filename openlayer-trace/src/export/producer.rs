//! The producer side of the queue: hands completed traces and row updates to the worker
//! without blocking (overflowing to the spool or dropping and counting when full), and
//! sends flush and shutdown messages.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::encode::OutRow;
use crate::encode::row_policy::Shaper;
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::export::protocol::{Control, Msg, queued_trace_bytes};
use crate::export::spool::Spool;
use crate::export::spool::segment::WalRef;
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::report::{Counters, DeliveryReport, DropReason, Stats};
use crate::util::heap::heap_bytes;
use crate::util::queue::{Sender, TrySendError};
use crate::util::signal::Completion;

/// The most flushes whose callers stopped waiting while their messages may still be
/// queued (see `Exporter::control`).
const MAX_ABANDONED_FLUSHES: usize = 1024;

/// The queue, the counters and the background threads of one configuration.
#[derive(Debug)]
pub(crate) struct Exporter {
    pub(crate) config: Config,
    pub(crate) tx: Option<Sender<Msg>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) budget: Arc<Budget>,
    /// Used on the completing thread in write-ahead mode only.
    pub(crate) shaper: Shaper,
    pub(crate) spool: Option<Arc<Spool>>,
    /// Whether the completing thread writes traces ahead to the spool.
    pub(crate) write_ahead: bool,
    pub(crate) threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Flushes whose callers stopped waiting (timed out) while their messages are alive.
    pub(crate) abandoned_flushes: Arc<AtomicUsize>,
    /// The process's fork generation when this started (see `util::id::fork_generation`):
    /// in a child forked since, its threads do not exist, and nothing waits for them.
    pub(crate) generation: u64,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if self.forked() {
            // In a forked child the handles name the parent's threads: dropping one
            // detaches a thread that does not exist here (undefined behaviour).
            let threads = std::mem::take(self.threads.get_mut().unwrap_or_else(|e| e.into_inner()));
            std::mem::forget(threads);
        }
    }
}

impl crate::record::sink::TraceSink for Exporter {
    fn submit(&self, trace: CompletedTrace) {
        self.enqueue(trace);
    }
}

impl Exporter {
    /// Why a row is dropped when this exporter has no worker: nowhere to go (configured
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
        let has_updates = trace
            .state
            .extra
            .as_ref()
            .is_some_and(|e| !e.updates.is_empty());
        if !has_updates {
            return self.enqueue_trace(trace);
        }
        let updates = trace.state.take_updates();
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
        if self.forked_now() {
            // Open when the process forked, completed in the child: the queue and the
            // spool are the parent's.
            self.spans_lost(&trace);
            return self.drop_after_shutdown();
        }
        if self.write_ahead
            && let Some(spool) = &self.spool
        {
            if tx.is_closed() {
                // Shut down: not written ahead to a spool that is no longer ours.
                return self.drop_after_shutdown();
            }
            return self.enqueue_ahead(tx, spool, trace);
        }
        self.enqueue_queued(tx, trace);
    }

    /// Hands the trace to the worker through the queue (the spool writer takes it when
    /// the queue is full).
    fn enqueue_queued(&self, tx: &Sender<Msg>, trace: CompletedTrace) {
        let bytes = queued_trace_bytes(&trace);
        if !self.reserve(bytes) {
            return self.overflow(Box::new(trace), bytes);
        }
        match tx.try_send(Msg::Trace(trace, bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                self.budget.release(bytes, Tier::Queue);
                if let Msg::Trace(trace, bytes) = msg {
                    self.overflow(Box::new(trace), bytes);
                }
            }
            Err(TrySendError::Closed(msg)) => {
                self.budget.release(bytes, Tier::Queue);
                if let Msg::Trace(trace, _) = &msg {
                    self.spans_lost(trace);
                }
                self.drop_after_shutdown();
            }
        }
    }

    /// Counts the spans of a trace that will not reach the worker (which makes the spans)
    /// as not delivered to the OTLP endpoint, when there is one. A spooled trace is
    /// replayed as a row only.
    #[inline]
    fn spans_lost(&self, trace: &CompletedTrace) {
        #[cfg(feature = "otlp")]
        if self.config.otlp.endpoint.is_some() {
            self.counters
                .otlp_spans_dropped
                .fetch_add(trace.state.steps.len() as u64, Relaxed);
        }
        #[cfg(not(feature = "otlp"))]
        let _ = trace;
    }

    fn update_after_shutdown(&self) {
        self.counters.drop_rows(DropReason::Shutdown, 1);
        self.counters.settled.fetch_add(1, Relaxed);
        crate::util::diag::warn_limited!("a row update came after shutdown; dropped (counted)");
    }

    fn drop_after_shutdown(&self) {
        self.counters.drop_rows(DropReason::Shutdown, 1);
        self.counters.settled.fetch_add(1, Relaxed);
        crate::util::diag::warn_limited!("a trace completed after shutdown; dropped (counted)");
    }

    /// Hands a row update off; like a trace, it overflows to the spool (or is dropped and
    /// counted) when the queue is full. Never blocks.
    pub(crate) fn enqueue_update(&self, update: RowUpdate) {
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
        if self.forked_now() {
            // As a trace completed in a forked child.
            return self.update_after_shutdown();
        }
        let mut update = update;
        // Write-ahead: on disk (with its pipeline resolved, as a replay needs it) before it
        // is queued, as rows are, so that a crash does not lose it.
        let mut wal = None;
        if self.write_ahead
            && let Some(spool) = &self.spool
        {
            if tx.is_closed() {
                return self.update_after_shutdown();
            }
            let pipeline = update
                .pipeline
                .clone()
                .or_else(|| self.config.inference_pipeline_id.clone());
            if pipeline.is_some() {
                update.pipeline = pipeline;
                let mut line = update.file_line(None);
                line.push('\n');
                wal = spool.append_ahead(&line);
            }
        }
        // Its box (the allocator's header on top of its size) and its slot in the channel.
        let bytes = update.size() + 16 + size_of::<Msg>();
        // First within the queue's limits, as a trace; when the queue is full, past them
        // by a bounded margin: an update must stay behind its row, which may still be
        // queued (the spool, which the worker replays on its own schedule, could send the
        // update first).
        for (tier, extra) in [(Tier::Queue, 0), (Tier::QueueOver, self.update_margin())] {
            if !self.budget.reserve(bytes, tier) {
                continue;
            }
            match tx.try_send_beyond(Msg::Update(Box::new(update), bytes, wal), extra) {
                Ok(()) => return,
                Err(TrySendError::Full(Msg::Update(u, _, w))) => {
                    self.budget.release(bytes, tier);
                    update = *u;
                    wal = w;
                }
                Err(e) => {
                    self.budget.release(bytes, tier);
                    if let (Some(spool), Msg::Update(u, _, Some(w))) = (&self.spool, e.into_inner())
                    {
                        // On disk already: the next process replays it.
                        spool.hold_ids([u.inference_id.as_str()]);
                        spool.give_up(w);
                        c.spooled.fetch_add(1, Relaxed);
                        c.settled.fetch_add(1, Relaxed);
                        return;
                    }
                    c.drop_rows(DropReason::Shutdown, 1);
                    c.settled.fetch_add(1, Relaxed);
                    crate::util::diag::warn_limited!(
                        "a row update came after shutdown; dropped (counted)"
                    );
                    return;
                }
            }
        }
        // Still no room: the spool keeps it when it can (with its pipeline resolved, as
        // replay needs it). Its row may then still be queued.
        let mut ahead = Vec::new();
        if let (Some(spool), Some(w)) = (&self.spool, wal) {
            if !spool.holds_row(&update.inference_id) {
                // Written ahead: left there, to be replayed (later updates of its row
                // follow it there).
                spool.hold_ids([update.inference_id.as_str()]);
                spool.give_up(w);
                c.spooled.fetch_add(1, Relaxed);
                c.settled.fetch_add(1, Relaxed);
                return;
            }
            // Its row is in the spool, maybe in the spool writer's file, which comes after
            // every write-ahead file: written there behind it, as below (see
            // `Flusher::store_update`), the line ahead acknowledged once that is synced.
            ahead.push(w);
        }
        if let Some(spool) = &self.spool {
            let pipeline = update
                .pipeline
                .clone()
                .or_else(|| self.config.inference_pipeline_id.clone());
            if pipeline.is_some() {
                let update = RowUpdate { pipeline, ..update };
                if spool
                    .send_updates(vec![update], ahead, DropReason::QueueFull, Tier::Overflow)
                    .is_ok()
                {
                    return;
                }
            } else {
                // (Nothing is written ahead without a pipeline: `ahead` is empty here.)
                spool.ack_ahead(ahead);
            }
        }
        self.drop_full();
    }

    /// How many row updates may be queued past the queue's capacity (see
    /// [`enqueue_update`](Self::enqueue_update)).
    fn update_margin(&self) -> usize {
        (self.config.queue_capacity / 8).max(64)
    }

    /// Counts `bytes` into the memory budget, for the queue; false when they do not fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.budget.reserve(bytes, Tier::Queue)
    }

    /// The queue is full: the spool writer takes the trace if it has room, else it is
    /// dropped and counted. Never blocks.
    fn overflow(&self, trace: Box<CompletedTrace>, bytes: usize) {
        self.spans_lost(&trace);
        if let Some(spool) = &self.spool
            && spool.send_trace(trace, bytes).is_ok()
        {
            return;
        }
        self.drop_full();
    }

    /// Write-ahead: encode here, append to the spool, then hand the row off.
    fn enqueue_ahead(&self, tx: &Sender<Msg>, spool: &Spool, mut trace: CompletedTrace) {
        let c = &self.counters;
        let prepared = self.shaper.prepare(&trace);
        if matches!(prepared, crate::encode::row_policy::Prepared::TooDeep) {
            // Too deep to mask on this thread's stack, or too large for a request (cut to
            // fit on a worker): the worker does it, and the trace goes through the queue,
            // not written ahead.
            return self.enqueue_queued(tx, trace);
        }
        // Encoded here: its buffers go back to the pool for the next traces.
        crate::record::recycle(&mut trace.state);
        drop(trace);
        let Some(row) = prepared.into_row(c) else {
            return;
        };
        let Some(row) = OutRow::resolve(row, self.config.inference_pipeline_id.as_deref()) else {
            c.drop_rows(DropReason::NoPipeline, 1);
            c.settled.fetch_add(1, Relaxed);
            crate::util::diag::warn_limited!(
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
            // On disk already: it waits there for a replay, and its updates behind it.
            Some(w) => {
                // Held first: once given up, it may be replayed at once.
                spool.hold_ids([row.inference_id.as_str()]);
                spool.give_up(w);
                c.spooled.fetch_add(1, Relaxed);
                c.settled.fetch_add(1, Relaxed);
            }
            None => {
                if spool
                    .send_rows(
                        vec![row],
                        DropReason::QueueFull,
                        Tier::Overflow,
                        crate::export::spool::Tell::Overflowed,
                    )
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
        crate::util::diag::warn_limited!(
            "the trace queue is full; trace dropped (counted in stats)"
        );
    }

    fn report(&self, complete: bool) -> DeliveryReport {
        DeliveryReport {
            stats: self.counters.snapshot(),
            complete,
        }
    }

    /// Counts `n` traces or updates that never reached this pipeline's queue as handed off
    /// and dropped for `reason` (those a hand-over from an earlier pipeline had no room
    /// for).
    pub(crate) fn count_dropped(&self, n: u64, reason: DropReason) {
        let c = &self.counters;
        c.enqueued.fetch_add(n, Relaxed);
        c.drop_rows(reason, n);
        c.settled.fetch_add(n, Relaxed);
    }

    /// Whether this runs in a child forked after it started (its threads are the parent's).
    pub(crate) fn forked(&self) -> bool {
        crate::util::id::fork_generation() != self.generation
    }

    /// [`forked`](Self::forked) for the hot path: one relaxed load (the fork handler was
    /// registered when this pipeline started).
    #[inline]
    fn forked_now(&self) -> bool {
        crate::util::id::fork_generation_now() != self.generation
    }

    /// Sends a control message; `None` when the worker is gone.
    fn control(
        &self,
        what: Control,
        make: impl FnOnce(Arc<Completion>) -> Msg,
    ) -> Option<Arc<Completion>> {
        let tx = self.tx.as_ref()?;
        // Never waits for room: a control message goes past the queue's capacity, behind
        // everything handed off before it (which it must settle). (A full queue once meant
        // a thread per call, left blocked while the worker was stalled.) A flush that timed
        // out leaves its message queued, so while the worker is stalled they are bounded:
        // past `MAX_ABANDONED_FLUSHES` of them, a flush is not queued, and its wait ends at
        // its deadline, incomplete, as it would have anyway. Flushes being waited for do
        // not count, nor those the worker has done with. A shutdown is always queued.
        if what == Control::Flush && self.abandoned_flushes.load(Relaxed) >= MAX_ABANDONED_FLUSHES {
            if tx.is_closed() {
                return None;
            }
            crate::util::diag::warn_limited!(
                "the trace worker has not taken the last {MAX_ABANDONED_FLUSHES} flushes that timed out; this one is not queued"
            );
            return Some(Arc::new(Completion::default()));
        }
        let done = Arc::new(Completion::default());
        match tx.try_send_beyond(make(done.clone()), usize::MAX) {
            Ok(()) => Some(done),
            Err(_) => None,
        }
    }

    /// Sends a flush or shutdown message and waits for it until `timeout` has passed;
    /// `Ok(true)` when everything handed off before it was settled.
    fn wait_for(&self, what: Control, timeout: Duration) -> Result<bool, Error> {
        let Some((done, deadline)) = self.start_control(what, timeout)? else {
            return Ok(true); // disabled: nothing is ever pending
        };
        if crate::util::reentry::suppressed() {
            // Called from one of our threads or callbacks (`on_failure`, a mask): the
            // worker it would wait for may be this very thread. Asked for, not waited
            // (and counted as a flush nobody waits for, which the bound limits).
            done.count_in(&self.abandoned_flushes);
            return Ok(false);
        }
        let complete = done.wait_until(deadline);
        if !complete {
            done.count_in(&self.abandoned_flushes);
        }
        Ok(complete)
    }

    async fn wait_for_async(&self, what: Control, timeout: Duration) -> Result<bool, Error> {
        let Some((done, deadline)) = self.start_control(what, timeout)? else {
            return Ok(true);
        };
        if crate::util::reentry::suppressed() {
            // As in `wait_for`.
            done.count_in(&self.abandoned_flushes);
            return Ok(false);
        }
        // Counted as abandoned also when this future is dropped before the end (a
        // `select!` or a timeout around it): its message stays queued all the same.
        struct Abandoned<'a>(&'a Completion, &'a Arc<AtomicUsize>, bool);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if self.2 {
                    self.0.count_in(self.1);
                }
            }
        }
        let mut abandoned = Abandoned(&done, &self.abandoned_flushes, true);
        let complete = done.clone().wait_until_async(deadline).await;
        abandoned.2 = !complete;
        Ok(complete)
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
        if self.forked() {
            // A forked child: the worker is the parent's, and never answers here.
            return Err(Error::Shutdown);
        }
        let deadline = crate::util::clock::after(Instant::now(), timeout);
        let done = self
            .control(what, |c| match what {
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

    /// Waits (at most `bound`) for the background threads to end, as after a shutdown
    /// that came back incomplete (the worker still gives up what it held, the spool
    /// writer still holds the spool's lock). Whether they all ended.
    pub(crate) fn wait_for_threads(&self, bound: Duration) -> bool {
        if self.forked() {
            // The threads are the parent's: they never end here.
            return false;
        }
        if crate::util::reentry::suppressed() {
            // On one of our threads (an `init` from `on_failure`): it may be one of them.
            return false;
        }
        let deadline = crate::util::clock::after(Instant::now(), bound);
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if threads.iter().all(|h| h.is_finished()) {
                for h in threads.drain(..) {
                    let _ = h.join();
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) async fn shutdown_async(&self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let complete = self.wait_for_async(Control::Shutdown, timeout).await?;
        Ok(self.report(complete))
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::spool::writer::run_writer;
    use crate::util::queue::{Receiver, TryRecvError, channel};

    fn update(id: &str) -> RowUpdate {
        RowUpdate {
            pipeline: Some("pipe".into()),
            inference_id: id.into(),
            row: r#"{"thumbs":"up"}"#.into(),
            config: None,
        }
    }

    /// An exporter whose queue (of `capacity`) nobody drains, with a spool.
    fn exporter(name: &str, capacity: usize) -> (Exporter, Receiver<Msg>) {
        exporter_of(name, capacity, crate::config::SpoolMode::Overflow)
    }

    /// An exporter whose queue (of `capacity`) nobody drains, with a spool in `mode`.
    fn exporter_of(
        name: &str,
        capacity: usize,
        mode: crate::config::SpoolMode,
    ) -> (Exporter, Receiver<Msg>) {
        let dir =
            std::env::temp_dir().join(format!("openlayer-producer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config::builder()
            .inference_pipeline_id("pipe")
            .queue_capacity(capacity)
            .spool_dir(&dir)
            .spool_mode(mode)
            .build()
            .unwrap();
        let counters = Arc::new(Counters::default());
        let budget = Arc::new(Budget::new(config.queue_max_bytes));
        let (spool, jobs) = Spool::open(&config, counters.clone(), budget.clone()).unwrap();
        let (s, shaper) = (spool.clone(), Shaper::new(&config));
        let writer = std::thread::spawn(move || run_writer(s, jobs, shaper, None));
        let (tx, rx) = channel(capacity);
        let exporter = Exporter {
            shaper: Shaper::new(&config),
            config,
            tx: Some(tx),
            counters,
            budget,
            spool: Some(spool),
            write_ahead: mode == crate::config::SpoolMode::WriteAhead,
            threads: Mutex::new(vec![writer]),
            abandoned_flushes: Default::default(),
            generation: crate::util::id::fork_generation(),
        };
        (exporter, rx)
    }

    fn queued_updates(rx: &mut Receiver<Msg>) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Msg::Update(u, _, _)) => ids.push(u.inference_id),
                Ok(_) => ids.push("other".into()),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return ids,
            }
        }
    }

    /// A row update finding the queue full joins it behind what is queued (its row may
    /// be there), rather than go to the spool, which the worker replays on its own
    /// schedule; past the margin, it goes to the spool.
    #[test]
    fn an_update_of_a_full_queue_stays_behind_it_within_a_margin() {
        let (exporter, mut rx) = exporter("update-margin", 8);
        let margin = exporter.update_margin();
        for i in 0..8 {
            exporter.enqueue_update(update(&format!("filler-{i}")));
        }
        // The queue is full: a trace would overflow now; updates still go in.
        for i in 0..margin {
            exporter.enqueue_update(update(&format!("late-{i}")));
        }
        assert_eq!(exporter.counters.spooled.load(Relaxed), 0);
        // One more than the margin: to the spool's writer.
        exporter.enqueue_update(update("beyond"));
        let ids = queued_updates(&mut rx);
        assert_eq!(ids.len(), 8 + margin);
        assert_eq!(ids[8], "late-0", "in the order they were handed off");
        assert_eq!(ids[8 + margin - 1], format!("late-{}", margin - 1));
        assert!(!ids.iter().any(|id| id == "beyond"));
        let done = Arc::new(Completion::default());
        exporter.spool.as_ref().unwrap().barrier(done.clone());
        assert!(done.wait_until(Instant::now() + Duration::from_secs(5)));
        assert_eq!(exporter.counters.spooled.load(Relaxed), 1);
        let done = Arc::new(Completion::default());
        exporter.spool.as_ref().unwrap().close(vec![done.clone()]);
        assert!(done.wait_until(Instant::now() + Duration::from_secs(5)));
    }

    /// Write-ahead, with the queue full past its margin: an update whose row is not
    /// spooled stays where it was written ahead (given up, its row held); one whose row is
    /// spooled goes to the spool writer, behind its row, its line ahead acknowledged.
    #[test]
    fn a_written_ahead_update_past_the_margin_follows_a_spooled_row() {
        let (exporter, mut rx) =
            exporter_of("update-ahead", 8, crate::config::SpoolMode::WriteAhead);
        let spool = exporter.spool.clone().unwrap();
        for i in 0..8 + exporter.update_margin() {
            exporter.enqueue_update(update(&format!("filler-{i}")));
        }
        let before = exporter.counters.spooled.load(Relaxed);
        exporter.enqueue_update(update("free"));
        assert_eq!(exporter.counters.spooled.load(Relaxed), before + 1);
        assert!(
            spool.holds_row("free"),
            "later updates of its row follow it"
        );
        // A row the spool writer spooled (its file comes after the write-ahead file).
        let row = OutRow {
            pipeline: "pipe".into(),
            config: r#"{"outputColumnName":"output"}"#.into(),
            row: r#"{"inferenceId":"spooled-row","output":"x"}"#.into(),
            inference_id: "spooled-row".into(),
        };
        spool
            .send_rows(
                vec![row],
                DropReason::RetriesExhausted,
                Tier::Spool,
                crate::export::spool::Tell::Nothing,
            )
            .unwrap();
        exporter.enqueue_update(update("spooled-row"));
        let done = Arc::new(Completion::default());
        spool.barrier(done.clone());
        assert!(done.wait_until(Instant::now() + Duration::from_secs(5)));
        // Counted by the spool writer once on disk (the row and the update).
        assert_eq!(exporter.counters.spooled.load(Relaxed), before + 3);
        // The queued updates are settled (acknowledged ahead) as the worker would; what
        // the replay then finds is "free" (given up ahead) and "spooled-row" (the writer's).
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Update(_, _, Some(w)) = msg {
                spool.ack_ahead([w]);
            }
        }
        let mut replayed = Vec::new();
        while let Some(b) = spool.next_replay(1, 1 << 20, None) {
            replayed.push(match &b.update {
                Some(id) => format!("update {id}"),
                None => format!("row {}", b.rows[0]),
            });
            spool.replay_done(b, crate::export::spool::replay::ReplayEnd::Acked);
        }
        assert_eq!(
            replayed,
            [
                "update free",
                r#"row {"inferenceId":"spooled-row","output":"x"}"#,
                "update spooled-row"
            ]
        );
        let done = Arc::new(Completion::default());
        spool.close(vec![done.clone()]);
        assert!(done.wait_until(Instant::now() + Duration::from_secs(5)));
    }
}
