//! The HTTP flusher: it runs on the worker thread's own runtime, drains the queue, groups
//! rows into data-stream requests and keeps a few of them in flight.
//!
//! - Rows with the same pipeline and config share a request of at most `batch_max_rows`
//!   rows and `batch_max_bytes` bytes; a request leaves when full, when its oldest row has
//!   waited `linger`, or at once during a flush or a shutdown.
//! - Up to `max_in_flight` requests run at once; the queue keeps being drained meanwhile.
//!   Rows waiting for a request or in flight are bounded: `queue_capacity` rows waiting,
//!   and what they hold counts in the memory budget shared with the queue and the spool
//!   writer (`queue_max_bytes`, see `pipeline::Budget`) until they are settled; beyond
//!   that they overflow (spooled or dropped, counted).
//! - A request is retried by the transport. When retries run out, the rows are spooled,
//!   or dropped and counted. When the server asked for a wait (`Retry-After`) longer
//!   than a request waits, or than its retries lasted, no request of any kind starts
//!   until it has passed (at most 10 minutes): rows wait as they would for a slow server.
//! - Only 400, 413 and 422 reject rows for good: a rejected batch of several rows is
//!   bisected, so that one bad row does not take its neighbours with it; a single
//!   rejected row is counted as `rejected`, logged (rate-limited) and told to
//!   `on_failure`. A row too large for a request on its own has its longest values cut
//!   until it fits (see `encode::row_policy`), and is rejected before it is sent only
//!   when it cannot be made to fit.
//! - 3xx, 401, 403, 404 (and any other non-retryable status) mean that the configuration
//!   is broken (a wrong key, URL or pipeline id): nothing is destroyed. With a spool, the
//!   rows go to (or stay in) it, live rows are spooled without being sent, replay stops,
//!   and a probe of one row retries with a long backoff; without one, rows are dropped as
//!   `rejected`. Either way the error is reported at most once a minute.
//! - Spooled rows are replayed at start, after a 2xx (the server is back), and by a
//!   probe with exponential backoff while the spool holds rows. While the server does
//!   not answer, a probe carries a single row, so that memory holds no batches read back
//!   from the spool only to fail again.
//! - At shutdown, whatever is not delivered shortly before the deadline is spooled (or
//!   dropped as `deadline`), so that the caller gets its answer in time.
//! - A row update (`PUT .../rows?inferenceId=..`) is sent on its own, under the same
//!   limits and policy. While a row with its inference id is batched or in flight here,
//!   it is held back, and sent once that row is settled (2xx, spooled or dropped).

pub(crate) mod batch;
pub(crate) mod epochs;
mod replay;
mod settle;
mod shutdown;
mod updates;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::util::queue::Receiver;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use crate::config::{Config, FailureFn};
use crate::encode::OutRow;
use crate::encode::row_policy::Shaper;
use crate::error::Error;
use crate::export::budget::{Budget, Freed, Tier};
use crate::export::counted_drops::CountedDrops;
use crate::export::hold::Hold;
use crate::export::protocol::Msg;
use crate::export::spool::replay::ReplayBatch;
use crate::export::spool::segment::WalRef;
use crate::export::spool::{Spool, Tell};
use crate::record::pool::Returns;
use crate::report::{Counters, DeliveryFailure, DropReason, notify};
use crate::transport::{SendOutcome, Transport};
use crate::util::signal::Completion;

use batch::{Batch, Flight, Group, Row, Update, body_overhead, row_cost};
use epochs::Epochs;

/// The longest wait between two replay probes.
const MAX_REPLAY_BACKOFF: Duration = Duration::from_secs(60);
/// The shortest wait between two replay probes.
const MIN_REPLAY_BACKOFF: Duration = Duration::from_millis(10);
/// While the configuration is broken (401, 403, 404, 3xx), the probe's first wait is
/// this many times the base backoff (30 s by default)...
const BROKEN_BACKOFF_FACTOR: u32 = 60;
/// ...and its longest wait.
const MAX_BROKEN_BACKOFF: Duration = Duration::from_secs(600);
/// A broken configuration is reported at most this often.
const BROKEN_REPORT_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Waiter {
    limit: u64,
    done: Arc<Completion>,
    deadline: Instant,
}

#[derive(Debug)]
struct Shutdown {
    done: Vec<Arc<Completion>>,
    /// Sending stops here; what is left is spooled before the caller's deadline.
    send_deadline: Instant,
}

#[derive(Debug)]
struct Replay {
    /// Ask the spool for batches now.
    wanted: bool,
    /// The next probe, when not wanted now.
    next_try: Option<Instant>,
    backoff: Duration,
    base: Duration,
    in_flight: usize,
    slots: usize,
    /// The server did not answer the last request: a probe carries one spooled row (not a
    /// whole batch read back into memory) until it answers again.
    down: bool,
}

/// The most pipelines told apart as broken (see `Flusher::broken_pipelines`).
const MAX_BROKEN_PIPELINES: usize = 64;

/// The server answered as if the configuration were broken (401, 403, 404, 3xx).
#[derive(Debug, Clone)]
struct Broken {
    status: Option<u16>,
    message: String,
}

/// What a broken configuration did since it was last reported.
#[derive(Debug, Default)]
struct BrokenReport {
    last: Option<Instant>,
    status: Option<u16>,
    message: String,
    spooled: u64,
    dropped: u64,
}

/// The flusher of one configuration; see the module docs.
pub(crate) struct Flusher {
    transport: Transport,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    /// The queue bytes and trace buffers of the messages taken, given back a group at a
    /// time (and whenever a drain ends).
    freed: Freed,
    returns: Returns,
    shaper: Shaper,
    spool: Option<Arc<Spool>>,
    default_pipeline: Option<String>,
    on_failure: Option<FailureFn>,
    shutdown_timeout: Duration,
    batch_max_rows: usize,
    batch_max_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    backlog_max_rows: usize,

    groups: HashMap<String, HashMap<String, Group>>,
    ready: VecDeque<Batch>,
    backlog_rows: usize,
    tasks: JoinSet<SendOutcome>,
    flights: HashMap<Id, Flight>,
    epochs: Epochs,
    waiters: Vec<Waiter>,
    /// Row updates ready to be sent, in order.
    updates: VecDeque<Update>,
    /// How many rows of each inference id are batched or in flight here.
    rows_by_id: HashMap<String, usize>,
    /// Row updates held back until the rows with their inference id are settled.
    held: HashMap<String, Vec<Update>>,
    replay: Replay,
    /// Replayed row updates answered 404 (their row not visible yet), by spool line: how
    /// many times, and when the line may be sent again.
    replay_404: HashMap<(u64, u64), (u32, Instant)>,
    /// Inference ids of the rows sent lately (replayed, or whose update a live 404 sent to
    /// the spool), with when, and their order: a row update replayed right behind its row
    /// may find it not visible yet (see `replay::REPLAYED_404_RETRIES`).
    recent_rows: HashMap<String, Instant>,
    recent_order: VecDeque<(Instant, String)>,
    /// Set while the server answers as if the configuration were broken.
    broken: Option<Broken>,
    /// Pipelines the server answered 403 or 404 for (one deleted, mistyped, or that the
    /// key may not see): with a spool, their rows wait there, and the other pipelines'
    /// go on. Forgotten when one of their rows is accepted (a probe). At most
    /// [`MAX_BROKEN_PIPELINES`]; past it, one is forgotten (and refused again).
    broken_pipelines: HashMap<String, Broken>,
    broken_report: BrokenReport,
    /// Halves of rejected spooled batches, sent before anything else is read back.
    bisected: VecDeque<ReplayBatch>,
    shutdown: Option<Shutdown>,
    /// The shutdown deadline has come: what is left goes to the spool whatever its share
    /// holds (see `Tier::SpoolAtShutdown`).
    abandoning: bool,
    no_pipeline_warned: bool,
    /// The server asked (`Retry-After`) for no request before a time: none starts until then.
    hold: Hold,
    /// Drops counted elsewhere (queue full, encoding, no pipeline), told to `on_failure`.
    counted_drops: CountedDrops,
    overflow_spooled: u64,
}

impl Flusher {
    pub(crate) fn new(
        config: &Config,
        transport: Transport,
        counters: Arc<Counters>,
        budget: Arc<Budget>,
        shaper: Shaper,
        spool: Option<Arc<Spool>>,
    ) -> Self {
        let base = config.retry_base_backoff.max(MIN_REPLAY_BACKOFF);
        Flusher {
            transport,
            counters,
            freed: Freed::new(budget.clone()),
            returns: Returns::default(),
            budget,
            shaper,
            spool,
            default_pipeline: config.inference_pipeline_id.clone(),
            on_failure: config.on_failure.clone(),
            shutdown_timeout: config.shutdown_timeout,
            batch_max_rows: config.batch_max_rows.max(1),
            batch_max_bytes: config.batch_max_bytes.max(1),
            linger: config.linger,
            max_in_flight: config.max_in_flight.max(1),
            backlog_max_rows: config.queue_capacity.max(1),
            groups: HashMap::new(),
            ready: VecDeque::new(),
            backlog_rows: 0,
            tasks: JoinSet::new(),
            flights: HashMap::new(),
            epochs: Epochs::new(),
            waiters: Vec::new(),
            updates: VecDeque::new(),
            rows_by_id: HashMap::new(),
            held: HashMap::new(),
            replay_404: HashMap::new(),
            recent_rows: HashMap::new(),
            recent_order: VecDeque::new(),
            replay: Replay {
                wanted: false,
                next_try: None,
                backoff: base,
                base,
                in_flight: 0,
                slots: (config.max_in_flight / 2).max(1),
                down: false,
            },
            broken: None,
            broken_pipelines: HashMap::new(),
            broken_report: BrokenReport::default(),
            bisected: VecDeque::new(),
            shutdown: None,
            abandoning: false,
            no_pipeline_warned: false,
            counted_drops: CountedDrops::default(),
            overflow_spooled: 0,
            hold: Hold::default(),
        }
    }

    /// Runs until shut down (or until every sender is gone).
    pub(crate) async fn run(mut self, rx: &mut Receiver<Msg>) {
        if self.spool.as_ref().is_some_and(|s| s.has_replayable()) {
            self.replay.wanted = true;
        }
        let mut open = true;
        let mut paced = false;
        loop {
            self.dispatch();
            // Told before a flush waiting on them returns.
            self.report_overflow();
            self.check_waiters();
            if let Some(s) = &self.shutdown {
                if self.idle() {
                    return self.finish();
                }
                if Instant::now() >= s.send_deadline
                    || self.hold.outlasts(s.send_deadline, self.tasks.len())
                {
                    self.abandon();
                    return self.finish();
                }
            }
            if std::mem::take(&mut paced) && self.shutdown.is_none() {
                // See `pipeline::WORKER_PACE`; requests in flight carry on meanwhile.
                tokio::time::sleep(crate::export::protocol::WORKER_PACE).await;
            }
            let wake = self.next_wake();
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(msg) => {
                        self.on_msg(msg, rx);
                        for _ in 0..256 {
                            match rx.try_recv() {
                                Ok(msg) => self.on_msg(msg, rx),
                                Err(_) => break,
                            }
                        }
                        self.settle_taken();
                        paced = true;
                    }
                    None => {
                        open = false;
                        if self.shutdown.is_none() {
                            let deadline =
                                crate::util::clock::after(std::time::Instant::now(), self.shutdown_timeout);
                            self.begin_shutdown(None, deadline, rx);
                        }
                    }
                },
                Some(res) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_done(res);
                }
                _ = sleep_until(wake), if wake.is_some() => self.on_timer(),
                // Rows reached the spool: replay them soon, whatever else happens.
                _ = spool_written(self.spool.as_deref()) => self.schedule_recheck(),
            }
        }
    }

    fn idle(&self) -> bool {
        self.groups.is_empty()
            && self.ready.is_empty()
            && self.tasks.is_empty()
            && self.updates.is_empty()
            && self.held.is_empty()
    }

    /// Gives back the queue bytes and trace buffers of the messages taken so far.
    fn settle_taken(&mut self) {
        self.freed.settle();
        self.returns.flush();
    }

    fn on_msg(&mut self, msg: Msg, rx: &mut Receiver<Msg>) {
        match msg {
            Msg::Trace(mut trace, bytes) => {
                self.freed.add(bytes);
                let prepared = self.shaper.prepare(&trace);
                // The trace's buffers go back to the producers' pool.
                self.returns.recycle(&mut trace.state);
                drop(trace);
                if let Some(row) = prepared.into_row(&self.counters) {
                    match OutRow::resolve(row, self.default_pipeline.as_deref()) {
                        Some(row) => self.accept(row, None),
                        None => self.no_pipeline(1),
                    }
                }
            }
            Msg::Row(row, bytes) => {
                self.freed.add(bytes);
                let (row, wal) = *row;
                self.accept(row, wal);
            }
            Msg::Update(update, bytes, wal) => {
                self.freed.add(bytes);
                self.accept_update(*update, wal);
            }
            Msg::Flush(done, deadline) => {
                self.settle_taken();
                let limit = self.epochs.advance();
                self.waiters.push(Waiter {
                    limit,
                    done,
                    deadline: Instant::from_std(deadline),
                });
            }
            Msg::Shutdown(done, deadline) => self.begin_shutdown(Some(done), deadline, rx),
        }
    }

    fn no_pipeline(&mut self, n: u64) {
        self.counters.drop_rows(DropReason::NoPipeline, n);
        self.counters.settled.fetch_add(n, Relaxed);
        if !self.no_pipeline_warned {
            self.no_pipeline_warned = true;
            tracing::warn!(
                target: "openlayer_trace",
                "no inference pipeline id is configured (OPENLAYER_INFERENCE_PIPELINE_ID or \
                 #[trace(inference_pipeline_id = ..)]); traces are dropped (counted)"
            );
        }
    }

    /// Takes a row into its group, or overflows it when the backlog is full.
    fn accept(&mut self, row: OutRow, wal: Option<WalRef>) {
        let size = row.size();
        if size + body_overhead(&row.config) > self.batch_max_bytes {
            return self.too_large(row, wal);
        }
        let cost = row_cost(&row);
        if self.backlog_rows >= self.backlog_max_rows || !self.budget.reserve(cost, Tier::Worker) {
            return self.overflow(row, wal);
        }
        let epoch = self.epochs.acquire();
        *self.rows_by_id.entry(row.inference_id.clone()).or_default() += 1;
        self.backlog_rows += 1;
        let OutRow {
            pipeline,
            config,
            row,
            inference_id,
        } = row;
        let r = Row {
            row,
            inference_id,
            cost,
            wal,
            epoch,
        };
        let (max_rows, max_bytes) = (self.batch_max_rows, self.batch_max_bytes);
        // A row that would make the group's request too large closes it first.
        if self
            .groups
            .get(&pipeline)
            .and_then(|by_config| by_config.get(config.as_str()))
            .is_some_and(|g| !g.rows.is_empty() && g.bytes + size > max_bytes)
        {
            self.close_group(pipeline.clone(), config.clone());
        }
        let by_config = self.groups.entry(pipeline.clone()).or_default();
        let overhead = body_overhead(&config);
        let g = by_config.entry(config.clone()).or_insert_with(|| Group {
            rows: Vec::new(),
            bytes: overhead,
            since: Instant::now(),
        });
        g.rows.push(r);
        g.bytes += size;
        if g.rows.len() >= max_rows || g.bytes >= max_bytes {
            self.close_group(pipeline, config);
        }
    }

    /// A row that no request can carry (`batch_max_bytes`): rejected before it is sent.
    fn too_large(&mut self, row: OutRow, wal: Option<WalRef>) {
        if let (Some(s), Some(w)) = (&self.spool, wal) {
            s.ack_ahead([w]);
        }
        self.counters.drop_rows(DropReason::Rejected, 1);
        self.counters.settled.fetch_add(1, Relaxed);
        let e = Error::InvalidInput(format!(
            "a row of {} bytes does not fit in a request of at most {} bytes \
             (batch_max_bytes)",
            row.size(),
            self.batch_max_bytes
        ));
        self.report_rejected(&row.pipeline, 1, None, &e);
    }

    /// Turns a lingering group into a request, ready to start.
    fn close_group(&mut self, pipeline: String, config: String) {
        let Some(by_config) = self.groups.get_mut(&pipeline) else {
            return;
        };
        let Some(g) = by_config.remove(&config) else {
            return;
        };
        if by_config.is_empty() {
            self.groups.remove(&pipeline);
        }
        self.ready.push_back(Batch {
            pipeline,
            config,
            rows: g.rows,
        });
    }

    /// A row the backlog has no room for: kept in the spool when there is one.
    fn overflow(&mut self, row: OutRow, wal: Option<WalRef>) {
        let c = &self.counters;
        if let Some(w) = wal {
            // Already on disk: it stays there for a replay, and its updates behind it.
            if let Some(s) = &self.spool {
                // Held first: once given up, it may be replayed at once.
                s.hold_ids([row.inference_id.as_str()]);
                s.give_up(w);
            }
            c.spooled.fetch_add(1, Relaxed);
            c.settled.fetch_add(1, Relaxed);
            self.overflow_spooled += 1;
            self.schedule_probe();
            return;
        }
        // Told by the spool writer once on disk (with the traces that overflowed).
        if let Some(s) = &self.spool
            && s.send_rows(
                vec![row],
                DropReason::QueueFull,
                Tier::Spool,
                Tell::Overflowed,
            )
            .is_ok()
        {
            self.schedule_probe();
            return;
        }
        c.drop_rows(DropReason::QueueFull, 1);
        c.settled.fetch_add(1, Relaxed);
        crate::util::diag::warn_limited!(
            "the trace queue is full; trace dropped (counted in stats)"
        );
    }

    /// Tells `on_failure` about the drops counted on other threads or in many places
    /// (a full queue, encoding, no pipeline id) since the last time, one call per reason,
    /// and about rows spooled because the queue was full.
    fn report_overflow(&mut self) {
        // With a spool, the record of what was told is shared with its writer.
        match &self.spool {
            Some(s) => s
                .told_drops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report(&self.counters, self.on_failure.as_ref()),
            None => self
                .counted_drops
                .report(&self.counters, self.on_failure.as_ref()),
        }
        if self.overflow_spooled > 0 {
            let rows = std::mem::take(&mut self.overflow_spooled);
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows,
                    dropped: None,
                    status: None,
                    message: "the trace queue was full; traces were spooled".into(),
                },
            );
        }
    }

    fn urgent(&self) -> bool {
        !self.waiters.is_empty() || self.shutdown.is_some()
    }

    /// Moves due groups into requests and starts what the in-flight limit allows.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let urgent = self.urgent();
        let linger = self.linger;
        let mut due = Vec::new();
        for (pipeline, by_config) in &self.groups {
            for (config, g) in by_config {
                if urgent || crate::util::clock::after_tokio(g.since, linger) <= now {
                    due.push((pipeline.clone(), config.clone()));
                }
            }
        }
        // Oldest first.
        due.sort_by_key(|(p, c)| self.groups[p][c].since);
        for (pipeline, config) in due {
            self.close_group(pipeline, config);
        }
        if self.hold.active() {
            return;
        }
        // A slot is kept for row updates when some wait and none is in flight: under a
        // steady load, live batches would take every slot, and the updates (and the
        // flushes waiting for them) none. (An update waits only for its own row, which is
        // settled by the time it is here.)
        let keep_for_updates = !self.updates.is_empty()
            && self.max_in_flight > 1
            && !self
                .flights
                .values()
                .any(|f| matches!(f, Flight::Update(_)));
        let live_slots = self.max_in_flight - usize::from(keep_for_updates);
        while self.tasks.len() < live_slots {
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            self.start_live(batch);
        }
        while self.tasks.len() < self.max_in_flight {
            let Some(u) = self.updates.pop_front() else {
                break;
            };
            if self
                .spool
                .as_ref()
                .is_some_and(|s| s.holds_row(&u.update.inference_id))
            {
                // Its row waits in the spool: the update waits behind it there.
                self.epochs.release(u.epoch);
                let id = u.update.inference_id.clone();
                self.store_update(u, DropReason::QueueFull);
                self.row_settled(&id);
                continue;
            }
            if self.spool.is_some()
                && let Some(b) = self.broken_for(&u.pipeline)
            {
                // The configuration is broken: it waits in the spool for the probe, as
                // live rows do (see `start_live`), not sent to be refused again.
                let (status, message) = (b.status, b.message.clone());
                self.epochs.release(u.epoch);
                let id = u.update.inference_id.clone();
                let spooled = self.store_update(u, DropReason::Rejected);
                self.row_settled(&id);
                self.report_broken(status, &message, u64::from(spooled), u64::from(!spooled));
                continue;
            }
            let req = u.request();
            let deadline = self.shutdown.as_ref().map(|s| s.send_deadline);
            let t = self.transport.clone();
            let handle = self
                .tasks
                .spawn(async move { t.send(&req, deadline).await });
            self.flights.insert(handle.id(), Flight::Update(u));
        }
        self.start_replays();
    }

    fn start_live(&mut self, batch: Batch) {
        self.backlog_rows -= batch.rows.len();
        if self.spool.is_some()
            && let Some(b) = self.broken_for(&batch.pipeline)
        {
            // The configuration (or this pipeline) is broken: the rows wait in the spool
            // for the probe.
            let (status, message) = (b.status, b.message.clone());
            let s = self.store(batch, DropReason::Rejected, Tell::Nothing);
            return self.report_broken(status, &message, s.spooled, s.dropped);
        }
        let req = batch.request();
        let deadline = self.shutdown.as_ref().map(|s| s.send_deadline);
        let t = self.transport.clone();
        let handle = self
            .tasks
            .spawn(async move { t.send(&req, deadline).await });
        self.flights.insert(handle.id(), Flight::Live(batch));
    }

    fn on_done(&mut self, res: Result<(Id, SendOutcome), JoinError>) {
        let (id, outcome) = match res {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(flight) = self.flights.remove(&id) else {
            return;
        };
        let result = match outcome {
            Ok(o) => {
                self.counters
                    .retried
                    .fetch_add(u64::from(o.retries), Relaxed);
                if let Some(wait) = o.wait {
                    self.hold.asked(wait, "the Openlayer API");
                }
                o.result.map(|_| ())
            }
            Err(e) => Err(Error::Transport {
                message: format!("the request task failed: {e}"),
                request: match &flight {
                    Flight::Update(_) => "PUT rows",
                    _ => "POST data-stream",
                }
                .into(),
                timeout: false,
            }),
        };
        match flight {
            Flight::Live(batch) => self.live_done(batch, result),
            Flight::Replay(batch) => self.replay_done(batch, result),
            Flight::Update(u) => self.update_done(u, result),
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if !self.urgent() {
            for by_config in self.groups.values() {
                for g in by_config.values() {
                    at(crate::util::clock::after_tokio(g.since, self.linger));
                }
            }
        }
        if let Some(t) = self.replay.next_try {
            at(t);
        }
        if let Some(t) = self.hold.until() {
            at(t);
        }
        if let Some(s) = &self.shutdown {
            at(s.send_deadline);
        }
        for w in &self.waiters {
            at(w.deadline);
        }
        wake
    }

    fn on_timer(&mut self) {
        if let Some(t) = self.replay.next_try
            && Instant::now() >= t
        {
            self.replay.next_try = None;
            self.replay.wanted = true;
        }
    }
}

async fn spool_written(spool: Option<&Spool>) {
    match spool {
        Some(s) => s.written.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
