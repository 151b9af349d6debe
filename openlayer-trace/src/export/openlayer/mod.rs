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
//!   or dropped and counted.
//! - Only 400, 413 and 422 reject rows for good: a rejected batch of several rows is
//!   bisected, so that one bad row does not take its neighbours with it; a single
//!   rejected row is counted as `rejected`, logged (rate-limited) and told to
//!   `on_failure`. A row too large for a request on its own is rejected before it is sent.
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use crate::config::{Config, FailureFn};
use crate::encode::row_policy::Shaper;
use crate::encode::{self, OutRow};
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::export::protocol::Msg;
use crate::export::spool::Spool;
use crate::export::spool::replay::{ReplayBatch, ReplayEnd};
use crate::export::spool::segment::WalRef;
use crate::record::row_update::RowUpdate;
use crate::report::{Counters, DeliveryFailure, DropReason, notify};
use crate::transport::{ApiRequest, SendOutcome, Transport, is_retryable_status};
use crate::util::heap::heap_bytes;
use crate::util::signal::Completion;

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

/// A row waiting for, or in, a request.
#[derive(Debug)]
struct Row {
    row: String,
    inference_id: String,
    /// What it counts in the memory budget until it is settled (see [`row_cost`]).
    cost: usize,
    /// Where it was written ahead, in write-ahead mode.
    wal: Option<WalRef>,
    /// Which flush generation it belongs to.
    epoch: u64,
}

/// Rows of one pipeline and config, lingering.
#[derive(Debug)]
struct Group {
    rows: Vec<Row>,
    bytes: usize,
    since: Instant,
}

/// The rows of one request.
#[derive(Debug)]
struct Batch {
    pipeline: String,
    config: String,
    rows: Vec<Row>,
}

impl Batch {
    fn request(&self) -> ApiRequest {
        let body = encode::request_body(&self.config, self.rows.iter().map(|r| r.row.as_str()));
        ApiRequest::post_json(data_stream_path(&self.pipeline), body)
    }

    fn into_out_rows(self) -> (Vec<OutRow>, Vec<WalRef>, Vec<u64>) {
        let mut out = Vec::with_capacity(self.rows.len());
        let mut refs = Vec::new();
        let mut epochs = Vec::with_capacity(self.rows.len());
        for r in self.rows {
            epochs.push(r.epoch);
            match r.wal {
                Some(w) => refs.push(w),
                None => out.push(OutRow {
                    pipeline: self.pipeline.clone(),
                    config: self.config.clone(),
                    row: r.row,
                    inference_id: r.inference_id,
                }),
            }
        }
        (out, refs, epochs)
    }
}

/// What a row holds in memory while it is here, counted in the memory budget until it
/// is settled: its strings (as the allocator hands them out), its slot in a group's list
/// (twice, as lists grow by doubling), its copy in the request body while in flight, and
/// its entry in the per-inference-id count.
fn row_cost(row: &OutRow) -> usize {
    2 * size_of::<Row>()
        + heap_bytes(row.row.capacity())
        + heap_bytes(row.inference_id.capacity())
        + row.size()
        + heap_bytes(row.inference_id.len())
        + 2 * size_of::<(String, usize)>()
}

fn data_stream_path(pipeline: &str) -> String {
    format!(
        "/inference-pipelines/{}/data-stream",
        crate::transport::segment(pipeline)
    )
}

/// `PUT /inference-pipelines/{pipeline}/rows?inferenceId=..` with `body`.
fn row_update_request(pipeline: &str, inference_id: &str, body: String) -> ApiRequest {
    ApiRequest {
        method: reqwest::Method::PUT,
        path: format!(
            "/inference-pipelines/{}/rows",
            crate::transport::segment(pipeline)
        ),
        query: vec![("inferenceId".into(), inference_id.into())],
        body: Some(body.into()),
    }
}

/// The request that replays a spooled batch.
fn replay_request(batch: &ReplayBatch) -> ApiRequest {
    match &batch.update {
        Some(inference_id) => {
            let config = (!batch.config.is_empty()).then_some(batch.config.as_str());
            let row = batch.rows.first().map_or("{}", String::as_str);
            row_update_request(
                &batch.pipeline,
                inference_id,
                encode::update_body(row, config),
            )
        }
        None => {
            let body = encode::request_body(&batch.config, batch.rows.iter().map(String::as_str));
            ApiRequest::post_json(data_stream_path(&batch.pipeline), body)
        }
    }
}

/// A row update in the flusher: its pipeline resolved, counted in a flush generation.
#[derive(Debug)]
struct Update {
    update: RowUpdate,
    pipeline: String,
    epoch: u64,
}

impl Update {
    fn request(&self) -> ApiRequest {
        row_update_request(
            &self.pipeline,
            &self.update.inference_id,
            self.update.request_body(),
        )
    }
}

/// The bytes of a request body around its rows.
fn body_overhead(config: &str) -> usize {
    config.len() + 24
}

#[derive(Debug)]
enum Flight {
    Live(Batch),
    Replay(ReplayBatch),
    Update(Update),
}

/// Rows counted per flush generation: a flush waits until every row handed off before
/// it (an earlier generation) is settled.
#[derive(Debug)]
pub(crate) struct Epochs {
    base: u64,
    counts: VecDeque<u64>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Epochs {
            base: 0,
            counts: VecDeque::from([0]),
        }
    }

    pub(crate) fn acquire(&mut self) -> u64 {
        *self.counts.back_mut().expect("never empty") += 1;
        self.base + self.counts.len() as u64 - 1
    }

    pub(crate) fn release(&mut self, epoch: u64) {
        if let Some(c) = epoch
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            *c = c.saturating_sub(1);
        }
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// Starts a new generation; returns the last one of the old ones.
    pub(crate) fn advance(&mut self) -> u64 {
        self.counts.push_back(0);
        self.base + self.counts.len() as u64 - 2
    }

    /// Whether every generation up to `limit` is settled.
    pub(crate) fn settled_upto(&self, limit: u64) -> bool {
        let Some(n) = limit.checked_sub(self.base) else {
            return true;
        };
        self.counts.iter().take(n as usize + 1).all(|c| *c == 0)
    }
}

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

/// The server answered as if the configuration were broken (401, 403, 404, 3xx).
#[derive(Debug)]
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
    /// Set while the server answers as if the configuration were broken.
    broken: Option<Broken>,
    broken_report: BrokenReport,
    /// Halves of rejected spooled batches, sent before anything else is read back.
    bisected: VecDeque<ReplayBatch>,
    shutdown: Option<Shutdown>,
    no_pipeline_warned: bool,
    /// Drops already told to `on_failure`: queue full, encoding, no pipeline.
    reported: [u64; 3],
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
            broken_report: BrokenReport::default(),
            bisected: VecDeque::new(),
            shutdown: None,
            no_pipeline_warned: false,
            reported: [0; 3],
            overflow_spooled: 0,
        }
    }

    /// Runs until shut down (or until every sender is gone).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        if self.spool.as_ref().is_some_and(|s| s.has_replayable()) {
            self.replay.wanted = true;
        }
        let mut open = true;
        let mut paced = false;
        loop {
            self.dispatch();
            self.check_waiters();
            self.report_overflow();
            if let Some(s) = &self.shutdown {
                if self.idle() {
                    return self.finish();
                }
                if Instant::now() >= s.send_deadline {
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
                        self.on_msg(msg, &mut rx);
                        for _ in 0..256 {
                            match rx.try_recv() {
                                Ok(msg) => self.on_msg(msg, &mut rx),
                                Err(_) => break,
                            }
                        }
                        paced = true;
                    }
                    None => {
                        open = false;
                        if self.shutdown.is_none() {
                            let deadline =
                                crate::util::clock::after(std::time::Instant::now(), self.shutdown_timeout);
                            self.begin_shutdown(None, deadline, &mut rx);
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

    fn on_msg(&mut self, msg: Msg, rx: &mut mpsc::Receiver<Msg>) {
        match msg {
            Msg::Trace(mut trace, bytes) => {
                self.budget.release(bytes, Tier::Queue);
                let prepared = self.shaper.prepare(&trace);
                // The trace's buffers go back to the producers' pool.
                crate::record::recycle(&mut trace.state);
                drop(trace);
                if let Some(row) = prepared.into_row(&self.counters) {
                    match OutRow::resolve(row, self.default_pipeline.as_deref()) {
                        Some(row) => self.accept(row, None),
                        None => self.no_pipeline(1),
                    }
                }
            }
            Msg::Row(row, bytes) => {
                self.budget.release(bytes, Tier::Queue);
                let (row, wal) = *row;
                self.accept(row, wal);
            }
            Msg::Update(update, bytes) => {
                self.budget.release(bytes, Tier::Queue);
                self.accept_update(*update);
            }
            Msg::Flush(done, deadline) => {
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

    /// Takes a row update: held back while a row with its inference id is on its way
    /// here, else ready to be sent.
    fn accept_update(&mut self, update: RowUpdate) {
        let Some(pipeline) = update
            .pipeline
            .clone()
            .or_else(|| self.default_pipeline.clone())
        else {
            return self.no_pipeline(1);
        };
        let u = Update {
            update,
            pipeline,
            epoch: self.epochs.acquire(),
        };
        let id = u.update.inference_id.clone();
        if self.rows_by_id.contains_key(&id) {
            self.held.entry(id).or_default().push(u);
        } else {
            // On its way: later updates of the same row wait for it, so that they reach
            // the platform in order (the last write wins there).
            *self.rows_by_id.entry(id).or_default() += 1;
            self.updates.push_back(u);
        }
    }

    /// A row or row update with `inference_id` is settled: when nothing else with that id
    /// is on its way, the next held update (only one: updates of a row go one at a time,
    /// in order) becomes ready.
    fn row_settled(&mut self, inference_id: &str) {
        let Some(n) = self.rows_by_id.get_mut(inference_id) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        match self.held.get_mut(inference_id) {
            Some(queue) if !queue.is_empty() => {
                let next = queue.remove(0);
                if queue.is_empty() {
                    self.held.remove(inference_id);
                }
                *n = 1;
                self.updates.push_back(next);
            }
            _ => {
                self.rows_by_id.remove(inference_id);
                self.held.remove(inference_id);
            }
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
            // Already on disk: it stays there for a replay.
            if let Some(s) = &self.spool {
                s.give_up(w);
            }
            c.spooled.fetch_add(1, Relaxed);
            c.settled.fetch_add(1, Relaxed);
            self.overflow_spooled += 1;
            self.schedule_probe();
            return;
        }
        if let Some(s) = &self.spool
            && s.send_rows(vec![row], DropReason::QueueFull, Tier::Spool)
                .is_ok()
        {
            self.overflow_spooled += 1;
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
        let c = &self.counters;
        let counted = [
            (
                DropReason::QueueFull,
                c.queue_full.load(Relaxed),
                "the trace queue was full; traces were dropped",
            ),
            (
                DropReason::Encoding,
                c.encoding.load(Relaxed),
                "traces could not be encoded (or masked); they were dropped",
            ),
            (
                DropReason::NoPipeline,
                c.no_pipeline.load(Relaxed),
                "no inference pipeline id is configured; traces were dropped",
            ),
        ];
        for (i, (reason, now, message)) in counted.into_iter().enumerate() {
            let last = &mut self.reported[i];
            if now > *last {
                let rows = now - *last;
                *last = now;
                notify(
                    self.on_failure.as_ref(),
                    DeliveryFailure {
                        rows,
                        dropped: Some(reason),
                        status: None,
                        message: message.into(),
                    },
                );
            }
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
        while self.tasks.len() < self.max_in_flight {
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
            && let Some(b) = &self.broken
        {
            // The configuration is broken: the rows wait in the spool for the probe.
            let (status, message) = (b.status, b.message.clone());
            let (spooled, dropped) = self.store(batch, DropReason::Rejected);
            return self.report_broken(status, &message, spooled, dropped);
        }
        let req = batch.request();
        let deadline = self.shutdown.as_ref().map(|s| s.send_deadline);
        let t = self.transport.clone();
        let handle = self
            .tasks
            .spawn(async move { t.send(&req, deadline).await });
        self.flights.insert(handle.id(), Flight::Live(batch));
    }

    fn start_replays(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        // While the server is down, one probe of one row at a time.
        let (rows, slots) = if self.replay.down {
            (1, 1)
        } else {
            (self.batch_max_rows, self.replay.slots)
        };
        while self.shutdown.is_none()
            && self.replay.in_flight < self.replay.slots
            && self.tasks.len() < self.max_in_flight
        {
            let Some(batch) = self.bisected.pop_front() else {
                break;
            };
            self.start_replay(batch);
        }
        while self.shutdown.is_none()
            && self.replay.wanted
            && self.bisected.is_empty()
            && self.ready.is_empty()
            && self.replay.in_flight < slots
            && self.tasks.len() < self.max_in_flight
        {
            match spool.next_replay(rows, self.batch_max_bytes, self.default_pipeline.as_deref()) {
                Some(batch) => self.start_replay(batch),
                None => {
                    self.replay.wanted = false;
                    if self.replay.in_flight == 0 && spool.has_replayable() {
                        // Rows still on their way hold some back: look again soon. This is
                        // not a failure, so the probe's backoff does not grow.
                        self.schedule_recheck();
                    }
                }
            }
        }
    }

    fn start_replay(&mut self, batch: ReplayBatch) {
        let req = replay_request(&batch);
        let t = self.transport.clone();
        let handle = self.tasks.spawn(async move { t.send(&req, None).await });
        self.flights.insert(handle.id(), Flight::Replay(batch));
        self.replay.in_flight += 1;
    }

    /// Plans another look at the spool after the base delay, unless one is due already
    /// (while the configuration is broken, only the probe looks).
    fn schedule_recheck(&mut self) {
        if self.broken.is_some() {
            return self.schedule_probe();
        }
        if self.spool.is_none() || self.replay.wanted || self.replay.next_try.is_some() {
            return;
        }
        self.replay.next_try = Some(crate::util::clock::after_tokio(
            Instant::now(),
            self.replay.base,
        ));
    }

    /// Plans a replay probe after the current backoff, unless one is due already.
    fn schedule_probe(&mut self) {
        if self.spool.is_none() || self.replay.wanted || self.replay.next_try.is_some() {
            return;
        }
        self.replay.next_try = Some(crate::util::clock::after_tokio(
            Instant::now(),
            self.replay.backoff,
        ));
        let max = match self.broken {
            Some(_) => MAX_BROKEN_BACKOFF,
            None => MAX_REPLAY_BACKOFF,
        };
        self.replay.backoff = (self.replay.backoff.saturating_mul(2)).min(max);
    }

    /// The server answered 2xx: replay what waits in the spool now.
    fn server_is_up(&mut self) {
        if self.broken.take().is_some() {
            tracing::info!(
                target: "openlayer_trace",
                "the Openlayer API accepts requests again; replaying the spool"
            );
            self.flush_broken_report(false);
        }
        self.replay.backoff = self.replay.base;
        self.replay.down = false;
        if let Some(s) = &self.spool
            && !self.replay.wanted
            && s.has_replayable()
        {
            self.replay.wanted = true;
            self.replay.next_try = None;
        }
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

    fn live_done(&mut self, batch: Batch, result: Result<(), Error>) {
        let n = batch.rows.len() as u64;
        match result {
            Ok(()) => {
                self.counters.sent.fetch_add(n, Relaxed);
                self.finish_rows(batch);
                self.server_is_up();
            }
            Err(e) => match classify(&e) {
                Class::Rejected(_) if n > 1 => {
                    // Bisect: one bad row must not take its neighbours with it.
                    let Batch {
                        pipeline,
                        config,
                        mut rows,
                    } = batch;
                    let right = rows.split_off(rows.len() / 2);
                    self.backlog_rows += n as usize;
                    for rows in [right, rows] {
                        self.ready.push_front(Batch {
                            pipeline: pipeline.clone(),
                            config: config.clone(),
                            rows,
                        });
                    }
                }
                Class::Rejected(status) => {
                    self.counters.drop_rows(DropReason::Rejected, n);
                    self.report_rejected(&batch.pipeline, n, status, &e);
                    // Final: written-ahead copies are acknowledged, not replayed.
                    self.finish_rows(batch);
                }
                Class::Broken(status) => {
                    self.set_broken(status, &e);
                    let (spooled, dropped) = self.store(batch, DropReason::Rejected);
                    self.report_broken(status, &api_message(&e), spooled, dropped);
                }
                Class::Deadline => self.give_up(batch, DropReason::Deadline, None, &e),
                Class::Retryable(status) => {
                    self.give_up(batch, DropReason::RetriesExhausted, status, &e)
                }
            },
        }
    }

    fn update_done(&mut self, u: Update, result: Result<(), Error>) {
        let id = u.update.inference_id.clone();
        self.update_settled(u, result);
        self.row_settled(&id);
    }

    fn update_settled(&mut self, u: Update, result: Result<(), Error>) {
        match result {
            Ok(()) => {
                self.epochs.release(u.epoch);
                self.counters.sent.fetch_add(1, Relaxed);
                self.counters.settled.fetch_add(1, Relaxed);
                self.server_is_up();
            }
            Err(e) => match classify(&e) {
                Class::Rejected(status) => {
                    self.epochs.release(u.epoch);
                    self.counters.drop_rows(DropReason::Rejected, 1);
                    self.counters.settled.fetch_add(1, Relaxed);
                    self.report_rejected(&u.pipeline.clone(), 1, status, &e);
                }
                Class::Broken(status) => {
                    self.set_broken(status, &e);
                    self.epochs.release(u.epoch);
                    let spooled = self.store_update(u, DropReason::Rejected);
                    self.report_broken(
                        status,
                        &api_message(&e),
                        u64::from(spooled),
                        u64::from(!spooled),
                    );
                }
                Class::Deadline => self.give_up_update(u, DropReason::Deadline, None, &e),
                Class::Retryable(status) => {
                    self.give_up_update(u, DropReason::RetriesExhausted, status, &e)
                }
            },
        }
    }

    /// A row update that will not be delivered now: spooled when there is a spool (the
    /// spool writer counts it once on disk), else dropped.
    fn give_up_update(&mut self, u: Update, reason: DropReason, status: Option<u16>, e: &Error) {
        self.replay.down = true;
        self.epochs.release(u.epoch);
        let spooled = self.store_update(u, reason);
        if spooled {
            crate::util::diag::warn_limited!(error = %e, "a row update was not delivered; spooled");
            self.schedule_probe();
        } else {
            crate::util::diag::warn_limited!(error = %e, "a row update was not delivered; dropped (counted)");
        }
        notify(
            self.on_failure.as_ref(),
            DeliveryFailure {
                rows: 1,
                dropped: (!spooled).then_some(reason),
                status,
                message: e.to_string(),
            },
        );
    }

    /// Keeps a row update in the spool (which counts it once on disk), or drops it as
    /// `reason`; returns whether it was spooled. Its epoch is released by the caller.
    fn store_update(&mut self, u: Update, reason: DropReason) -> bool {
        let update = RowUpdate {
            pipeline: Some(u.pipeline),
            ..u.update
        };
        let spooled = match &self.spool {
            Some(s) => s.send_updates(vec![update], reason, Tier::Spool).is_ok(),
            None => false,
        };
        if !spooled {
            self.counters.drop_rows(reason, 1);
            self.counters.settled.fetch_add(1, Relaxed);
        }
        spooled
    }

    /// Settles delivered or rejected rows; acknowledges their written-ahead copies.
    fn finish_rows(&mut self, batch: Batch) {
        let n = batch.rows.len() as u64;
        let mut refs = Vec::new();
        for r in batch.rows {
            self.budget.release(r.cost, Tier::Worker);
            self.epochs.release(r.epoch);
            self.row_settled(&r.inference_id);
            if let Some(w) = r.wal {
                refs.push(w);
            }
        }
        if let Some(s) = &self.spool
            && !refs.is_empty()
        {
            s.ack_ahead(refs);
        }
        self.counters.settled.fetch_add(n, Relaxed);
    }

    /// Rows that will not be delivered now: spooled when there is a spool, else dropped.
    fn give_up(&mut self, batch: Batch, reason: DropReason, status: Option<u16>, e: &Error) {
        self.replay.down = true;
        let (spooled, dropped) = self.store(batch, reason);
        let what = match reason {
            DropReason::Deadline => "the shutdown deadline passed",
            _ => "retries are exhausted",
        };
        if spooled > 0 {
            crate::util::diag::warn_limited!(rows = spooled, error = %e, "{what}; rows spooled");
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows: spooled,
                    dropped: None,
                    status,
                    message: e.to_string(),
                },
            );
            self.schedule_probe();
        }
        if dropped > 0 {
            crate::util::diag::warn_limited!(rows = dropped, error = %e, "{what}; rows dropped (counted)");
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows: dropped,
                    dropped: Some(reason),
                    status,
                    message: e.to_string(),
                },
            );
        }
    }

    /// Keeps the rows of a batch that is not delivered now in the spool (written-ahead
    /// rows simply stay there), or drops them as `reason`; settles them here. Returns
    /// (spooled, dropped).
    fn store(&mut self, batch: Batch, reason: DropReason) -> (u64, u64) {
        let n = batch.rows.len() as u64;
        let ids: Vec<String> = batch.rows.iter().map(|r| r.inference_id.clone()).collect();
        // Released before the rows go to the spool writer, which counts them again.
        self.budget
            .release(batch.rows.iter().map(|r| r.cost).sum(), Tier::Worker);
        let (rows, refs, epochs) = batch.into_out_rows();
        for epoch in epochs {
            self.epochs.release(epoch);
        }
        let c = &self.counters;
        let ahead = refs.len() as u64;
        if let Some(s) = &self.spool {
            for w in refs {
                s.give_up(w);
            }
        }
        if ahead > 0 {
            c.spooled.fetch_add(ahead, Relaxed);
            c.settled.fetch_add(ahead, Relaxed);
        }
        if let Some(s) = &self.spool {
            // Updates of these rows must follow them into the spool (those dropped below
            // are forgotten with it: a later update of them is harmless).
            s.hold_ids(ids.iter().map(String::as_str));
        }
        let mut dropped = 0;
        if !rows.is_empty() {
            let rest = match &self.spool {
                Some(s) => s.send_rows(rows, reason, Tier::Spool).err(),
                None => Some(rows),
            };
            if let Some(rest) = rest {
                dropped = rest.len() as u64;
                c.drop_rows(reason, dropped);
                c.settled.fetch_add(dropped, Relaxed);
            }
        }
        for id in &ids {
            self.row_settled(id);
        }
        (n - dropped, dropped)
    }

    /// Enters (or stays in) the broken-configuration state: replay stops, and only the
    /// probe, with its long backoff, tries again.
    fn set_broken(&mut self, status: Option<u16>, e: &Error) {
        if self.broken.is_none() {
            self.replay.backoff = self
                .replay
                .base
                .saturating_mul(BROKEN_BACKOFF_FACTOR)
                .min(MAX_BROKEN_BACKOFF);
            self.replay.next_try = None;
        }
        self.broken = Some(Broken {
            status,
            message: api_message(e),
        });
        self.replay.down = true;
        self.replay.wanted = false;
        self.schedule_probe();
    }

    /// Counts what a broken configuration did, and reports it (as an `error` event and to
    /// `on_failure`) at most once a minute.
    fn report_broken(&mut self, status: Option<u16>, message: &str, spooled: u64, dropped: u64) {
        let r = &mut self.broken_report;
        r.status = status;
        r.message = message.to_string();
        r.spooled += spooled;
        r.dropped += dropped;
        let now = Instant::now();
        if r.last.is_some_and(|t| now < t + BROKEN_REPORT_PERIOD) {
            return;
        }
        r.last = Some(now);
        self.flush_broken_report(true);
    }

    /// Reports what a broken configuration did since the last report: to `on_failure`,
    /// and, when `log`, as an `error` event.
    fn flush_broken_report(&mut self, log: bool) {
        let r = &mut self.broken_report;
        let (spooled, dropped) = (
            std::mem::take(&mut r.spooled),
            std::mem::take(&mut r.dropped),
        );
        if spooled == 0 && dropped == 0 {
            return;
        }
        let (status, message) = (r.status, r.message.clone());
        if log {
            tracing::error!(
            target: "openlayer_trace",
            status = status.unwrap_or(0),
            message = %message,
            spooled,
            dropped,
            "the Openlayer API refused the credentials or the route (check OPENLAYER_API_KEY, \
             OPENLAYER_BASE_URL and the pipeline id); rows are kept in the spool and retried \
             later, or without a spool dropped (counted as rejected)"
            );
        }
        for (rows, dropped) in [(spooled, None), (dropped, Some(DropReason::Rejected))] {
            if rows > 0 {
                notify(
                    self.on_failure.as_ref(),
                    DeliveryFailure {
                        rows,
                        dropped,
                        status,
                        message: message.clone(),
                    },
                );
            }
        }
    }

    fn report_rejected(&self, pipeline: &str, rows: u64, status: Option<u16>, e: &Error) {
        let message = api_message(e);
        crate::util::diag::error_limited!(
            status = status.unwrap_or(0),
            message = %message,
            pipeline,
            rows,
            "the Openlayer API rejected a request; its rows are dropped (counted as rejected)"
        );
        notify(
            self.on_failure.as_ref(),
            DeliveryFailure {
                rows,
                dropped: Some(DropReason::Rejected),
                status,
                message,
            },
        );
    }

    fn replay_done(&mut self, batch: ReplayBatch, result: Result<(), Error>) {
        self.replay.in_flight -= 1;
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let n = batch.rows.len() as u64;
        match result {
            Ok(()) => {
                self.counters.replayed.fetch_add(n, Relaxed);
                spool.replay_done(batch, ReplayEnd::Acked);
                self.server_is_up();
                // Lines held behind this batch (a row update) may go now.
                if spool.has_replayable() {
                    self.replay.wanted = true;
                }
            }
            Err(e) => match classify(&e) {
                Class::Rejected(_) => {
                    let mut batch = batch;
                    match batch.split_off() {
                        Some(right) => {
                            // Bisect: one bad row must not take its neighbours with it.
                            self.replay.down = false;
                            self.bisected.push_front(right);
                            self.bisected.push_front(batch);
                        }
                        None => self.replay_rejected(&spool, batch, &e),
                    }
                }
                Class::Broken(status) => {
                    spool.replay_done(batch, ReplayEnd::Failed);
                    self.give_back_bisected(&spool);
                    self.set_broken(status, &e);
                    // Not delivered, and kept in the spool.
                    self.report_broken(status, &api_message(&e), n, 0);
                    crate::util::diag::warn_limited!(error = %e, "could not replay spooled rows; they stay in the spool");
                }
                _ => {
                    spool.replay_done(batch, ReplayEnd::Failed);
                    self.give_back_bisected(&spool);
                    self.replay.down = true;
                    self.replay.wanted = false;
                    self.schedule_probe();
                    crate::util::diag::warn_limited!(error = %e, "could not replay spooled rows; they stay in the spool");
                }
            },
        }
    }

    /// Halves of a bisected batch not sent yet go back to the spool's next pass.
    fn give_back_bisected(&mut self, spool: &Spool) {
        for b in self.bisected.drain(..) {
            spool.replay_done(b, ReplayEnd::Failed);
        }
    }

    fn replay_rejected(&mut self, spool: &Spool, batch: ReplayBatch, e: &Error) {
        let n = batch.rows.len() as u64;
        let status = match e {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        };
        self.replay.down = false;
        self.counters.drop_spooled(DropReason::Rejected, n);
        self.report_rejected(&batch.pipeline.clone(), n, status, e);
        spool.replay_done(batch, ReplayEnd::Rejected);
    }

    fn check_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if self.epochs.settled_upto(w.limit) {
                let w = self.waiters.swap_remove(i);
                match &self.spool {
                    // Done once the rows handed to the spool writer are on disk.
                    Some(s) => s.barrier(w.done),
                    None => w.done.complete(),
                }
            } else if now >= w.deadline {
                // The caller has its answer; stop hurrying.
                self.waiters.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn begin_shutdown(
        &mut self,
        done: Option<Arc<Completion>>,
        deadline: std::time::Instant,
        rx: &mut mpsc::Receiver<Msg>,
    ) {
        if let Some(s) = &mut self.shutdown {
            s.done.extend(done);
            return;
        }
        rx.close();
        let now = std::time::Instant::now();
        let left = deadline.saturating_duration_since(now);
        // Leave time to spool what is not delivered by then.
        let margin = (left / 5).clamp(Duration::from_millis(20), Duration::from_millis(250));
        self.shutdown = Some(Shutdown {
            done: done.into_iter().collect(),
            send_deadline: Instant::from_std(now + left.saturating_sub(margin)),
        });
        // Everything still queued is taken in (and sent, or spooled if there is no room).
        while let Ok(msg) = rx.try_recv() {
            self.on_msg(msg, rx);
        }
    }

    /// The deadline has come: in-flight requests are abandoned and every row not
    /// delivered is spooled (or dropped as `deadline`).
    fn abandon(&mut self) {
        self.tasks.abort_all();
        let e = Error::Timeout(self.shutdown_timeout);
        let flights: Vec<Flight> = self.flights.drain().map(|(_, f)| f).collect();
        for f in flights {
            match f {
                Flight::Live(batch) => self.give_up(batch, DropReason::Deadline, None, &e),
                Flight::Replay(batch) => {
                    self.replay.in_flight -= 1;
                    if let Some(s) = &self.spool {
                        s.replay_done(batch, ReplayEnd::Failed);
                    }
                }
                Flight::Update(u) => self.give_up_update(u, DropReason::Deadline, None, &e),
            }
        }
        let groups = std::mem::take(&mut self.groups);
        for (pipeline, by_config) in groups {
            for (config, g) in by_config {
                self.ready.push_back(Batch {
                    pipeline: pipeline.clone(),
                    config,
                    rows: g.rows,
                });
            }
        }
        while let Some(batch) = self.ready.pop_front() {
            self.backlog_rows -= batch.rows.len();
            self.give_up(batch, DropReason::Deadline, None, &e);
        }
        // Every row is settled by now, so no update is held back any more.
        let held: Vec<Update> = self.held.drain().flat_map(|(_, u)| u).collect();
        self.updates.extend(held);
        while let Some(u) = self.updates.pop_front() {
            self.give_up_update(u, DropReason::Deadline, None, &e);
        }
    }

    fn finish(mut self) {
        self.check_waiters();
        self.report_overflow();
        // What the last minute's report did not cover (`on_failure` hears of every row).
        self.flush_broken_report(false);
        if let Some(s) = self.spool.clone() {
            self.give_back_bisected(&s);
        }
        let done = self.shutdown.take().map(|s| s.done).unwrap_or_default();
        match &self.spool {
            // The writer completes them once the spool is sealed and released.
            Some(s) => s.close(done),
            None => {
                for d in done {
                    d.complete();
                }
            }
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

enum Class {
    /// Rejected for good: 400, 413 or 422 (or a request that cannot be built).
    Rejected(Option<u16>),
    /// The configuration is broken: 3xx, 401, 403, 404 or any other non-retryable
    /// status. Nothing is destroyed.
    Broken(Option<u16>),
    /// Retries ran out.
    Retryable(Option<u16>),
    /// The shutdown deadline passed.
    Deadline,
}

fn classify(e: &Error) -> Class {
    match e {
        Error::Api { status, .. } if is_retryable_status(*status) => {
            Class::Retryable(Some(*status))
        }
        Error::Api {
            status: status @ (400 | 413 | 422),
            ..
        } => Class::Rejected(Some(*status)),
        Error::Api { status, .. } => Class::Broken(Some(*status)),
        Error::InvalidInput(_) => Class::Rejected(None),
        Error::Config(_) => Class::Broken(None),
        Error::Timeout(_) => Class::Deadline,
        _ => Class::Retryable(None),
    }
}

/// The server's message of an API error, else the error's text.
fn api_message(e: &Error) -> String {
    match e {
        Error::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
