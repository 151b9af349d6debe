//! The OTLP side of the worker: batches converted traces into export requests, keeps a
//! few in flight, settles them, and answers flushes and the shutdown by their deadlines.
//!
//! # How a request is encoded
//!
//! `prost` encodes every message: each span as it is converted (see `convert`), as an
//! element of `ScopeSpans.spans` (field 2: key, length, `Span`), and the `Resource` and
//! `InstrumentationScope` once, at start, as fields 1 of `ResourceSpans` and `ScopeSpans`.
//! A batch appends its traces' encoded spans to one buffer, after room left for the
//! request's head. A request is then
//!
//! ```text
//! ExportTraceServiceRequest.resource_spans (1) { ResourceSpans:
//!     resource (1) { Resource }
//!     scope_spans (2) { ScopeSpans:
//!         scope (1) { InstrumentationScope }
//!         spans (2) { Span } spans (2) { Span } ...
//! }}
//! ```
//!
//! where the two enclosing fields' keys and lengths are written by `prost`'s own field
//! helpers (`encoding::encode_key`, `encode_varint`, `encoded_len_varint`) into the room
//! before the spans: exactly what `prost` writes for the same request built as one
//! `ExportTraceServiceRequest` (a repeated field's elements simply concatenate, and
//! `prost` writes fields in field-number order), without holding every span as a message
//! until the batch leaves nor copying the spans again. A unit test checks that the two
//! encodings are the same bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use crate::util::clock::after_tokio;

use crate::config::{Config, FailureFn};
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::export::counted_drops::CountedDrops;
use crate::export::hold::Hold;
use crate::export::openlayer::epochs::Epochs;
use crate::export::otlp::convert::Converted;
use crate::export::otlp::proto::{
    ExportTraceServiceResponse, InstrumentationScope, KeyValue, Resource,
};
use crate::report::{Counters, DeliveryFailure, DropReason, notify};
use crate::transport::{ApiRequest, SendOutcome, Transport, is_retryable_otlp_status};
use crate::util::signal::Completion;

/// What the router hands to the OTLP side.
#[derive(Debug)]
pub(crate) enum OtlpMsg {
    /// One trace's spans.
    Spans(Converted),
    Flush(Arc<Completion>, std::time::Instant),
    Shutdown(Arc<Completion>, std::time::Instant),
}

/// The spans of one request, and the flush generations of their traces.
#[derive(Debug)]
struct Batch {
    pipeline: Option<String>,
    /// The request: room for its head (`Head::room`), then the encoded spans. Empty once
    /// it has left.
    body: Vec<u8>,
    /// How many spans it has.
    count: usize,
    epochs: Vec<u64>,
    bytes: usize,
    since: Instant,
}

#[derive(Debug)]
struct Waiter {
    limit: u64,
    done: Arc<Completion>,
    deadline: Instant,
}

/// The OTLP side; see the module docs.
pub(crate) struct OtlpFlusher {
    transport: Transport,
    /// Openlayer's endpoint: requests carry `x-bt-parent: pipeline_id:<id>`.
    openlayer: bool,
    by_pipeline: HashMap<String, Transport>,
    default_pipeline: Option<String>,
    /// Whether traces go only here: then this side settles them in the row counters.
    primary: bool,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    on_failure: Option<FailureFn>,
    /// Drops counted elsewhere, told to `on_failure` here when this side is primary.
    counted_drops: CountedDrops,
    /// Alongside the data stream: of `otlp_spans_dropped` and `otlp_spans_unconverted`,
    /// the spans told to `on_failure` so far (see `report_drops`).
    told_spans: u64,
    told_unconverted: u64,
    head: Head,
    /// The size of the last batch to leave: the next batch's first allocation (up to
    /// `BODY_HINT_MAX`).
    last_body: usize,
    batch_max_rows: usize,
    batch_max_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    backlog_max: usize,
    shutdown_timeout: Duration,

    groups: HashMap<Option<String>, Batch>,
    ready: VecDeque<Batch>,
    backlog: usize,
    tasks: JoinSet<SendOutcome>,
    flights: HashMap<Id, Batch>,
    epochs: Epochs,
    waiters: Vec<Waiter>,
    shutdown: Option<(Vec<Arc<Completion>>, Instant)>,
    /// The endpoint asked (`Retry-After`) for no request before a time.
    hold: Hold,
}

impl OtlpFlusher {
    pub(crate) fn new(
        config: &Config,
        transport: Transport,
        openlayer: bool,
        primary: bool,
        counters: Arc<Counters>,
        budget: Arc<Budget>,
    ) -> Self {
        OtlpFlusher {
            transport,
            openlayer,
            by_pipeline: HashMap::new(),
            default_pipeline: config.inference_pipeline_id.clone(),
            primary,
            counters,
            budget,
            on_failure: config.on_failure.clone(),
            counted_drops: CountedDrops::default(),
            told_spans: 0,
            told_unconverted: 0,
            head: Head::new(
                &Resource {
                    attributes: resource_attributes(
                        std::env::var("OTEL_SERVICE_NAME").ok(),
                        std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok(),
                    ),
                },
                &InstrumentationScope {
                    name: "openlayer-trace".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            ),
            last_body: 0,
            batch_max_rows: config.batch_max_rows.max(1),
            batch_max_bytes: config.batch_max_bytes.max(1),
            linger: config.linger,
            max_in_flight: config.max_in_flight.max(1),
            backlog_max: config.queue_capacity.max(1),
            shutdown_timeout: config.shutdown_timeout,
            groups: HashMap::new(),
            ready: VecDeque::new(),
            backlog: 0,
            tasks: JoinSet::new(),
            flights: HashMap::new(),
            epochs: Epochs::new(),
            waiters: Vec::new(),
            shutdown: None,
            hold: Hold::default(),
        }
    }

    /// Runs until shut down, or until the router is gone and what it sent is settled.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<OtlpMsg>) {
        let mut open = true;
        loop {
            self.dispatch();
            // Told before a flush waiting on them returns.
            self.report_drops();
            self.check_waiters();
            if let Some((_, deadline)) = &self.shutdown {
                if self.idle() {
                    return self.finish();
                }
                if Instant::now() >= *deadline || self.hold.outlasts(*deadline, self.tasks.len()) {
                    self.abandon();
                    return self.finish();
                }
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
                    }
                    None => {
                        open = false;
                        if self.shutdown.is_none() {
                            let deadline = crate::util::clock::after(std::time::Instant::now(), self.shutdown_timeout);
                            self.begin_shutdown(None, deadline, &mut rx);
                        }
                    }
                },
                Some(res) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_done(res);
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    fn idle(&self) -> bool {
        self.groups.is_empty() && self.ready.is_empty() && self.tasks.is_empty()
    }

    fn on_msg(&mut self, msg: OtlpMsg, rx: &mut mpsc::Receiver<OtlpMsg>) {
        match msg {
            OtlpMsg::Spans(c) => self.accept(c),
            OtlpMsg::Flush(done, deadline) => {
                let limit = self.epochs.advance();
                self.waiters.push(Waiter {
                    limit,
                    done,
                    deadline: Instant::from_std(deadline),
                });
            }
            OtlpMsg::Shutdown(done, deadline) => self.begin_shutdown(Some(done), deadline, rx),
        }
    }

    /// Takes a trace's spans into its pipeline's batch; a full backlog or memory budget
    /// drops them (counted).
    fn accept(&mut self, c: Converted) {
        if self.backlog >= self.backlog_max || !self.budget.reserve(c.bytes, Tier::Otlp) {
            self.counters
                .otlp_spans_dropped
                .fetch_add(c.spans as u64, Relaxed);
            if self.primary {
                self.counters.drop_rows(DropReason::QueueFull, 1);
                self.counters.settled.fetch_add(1, Relaxed);
            }
            crate::util::diag::warn_limited!(
                "the OTLP backlog is full; a trace's spans were dropped (counted)"
            );
            return;
        }
        self.backlog += 1;
        let epoch = self.epochs.acquire();
        // Openlayer's endpoint needs the pipeline of each request; a collector does not.
        let key = if self.openlayer {
            c.pipeline.or_else(|| self.default_pipeline.clone())
        } else {
            None
        };
        if self
            .groups
            .get(&key)
            .is_some_and(|b| b.count > 0 && b.bytes + c.bytes > self.batch_max_bytes)
        {
            self.close(&key);
        }
        let (room, hint) = (self.head.room, self.last_body);
        let b = self.groups.entry(key.clone()).or_insert_with(|| Batch {
            pipeline: key.clone(),
            body: {
                let mut body = Vec::with_capacity(hint.min(BODY_HINT_MAX).max(room + c.bytes));
                body.resize(room, 0);
                body
            },
            count: 0,
            epochs: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        b.count += c.spans;
        b.body.extend_from_slice(&c.encoded);
        b.epochs.push(epoch);
        b.bytes += c.bytes;
        if b.epochs.len() >= self.batch_max_rows || b.bytes >= self.batch_max_bytes {
            self.close(&key);
        }
    }

    fn close(&mut self, key: &Option<String>) {
        if let Some(b) = self.groups.remove(key) {
            self.ready.push_back(b);
        }
    }

    fn urgent(&self) -> bool {
        !self.waiters.is_empty() || self.shutdown.is_some()
    }

    fn dispatch(&mut self) {
        let now = Instant::now();
        let urgent = self.urgent();
        let due: Vec<Option<String>> = self
            .groups
            .iter()
            .filter(|(_, b)| urgent || after_tokio(b.since, self.linger) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.close(&k);
        }
        if self.hold.active() {
            return;
        }
        while self.tasks.len() < self.max_in_flight {
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            self.start(batch);
        }
    }

    /// The transport of a pipeline: Openlayer's endpoint gets `x-bt-parent`.
    fn transport_for(&mut self, pipeline: Option<&str>) -> Result<Transport, Error> {
        let Some(p) = pipeline.filter(|_| self.openlayer) else {
            return Ok(self.transport.clone());
        };
        if let Some(t) = self.by_pipeline.get(p) {
            return Ok(t.clone());
        }
        let t = self
            .transport
            .with_header("x-bt-parent", &format!("pipeline_id:{p}"))?;
        self.by_pipeline.insert(p.to_string(), t.clone());
        Ok(t)
    }

    fn start(&mut self, mut batch: Batch) {
        self.last_body = batch.body.len();
        let body = self.head.request(std::mem::take(&mut batch.body));
        let deadline = self.shutdown.as_ref().map(|s| s.1);
        let transport = self.transport_for(batch.pipeline.as_deref());
        let handle = self.tasks.spawn(async move {
            match transport {
                Ok(t) => t.send(&ApiRequest::post_json("", body), deadline).await,
                Err(e) => SendOutcome {
                    result: Err(e),
                    retries: 0,
                    wait: None,
                    uncertain: false,
                    maybe_acted: false,
                },
            }
        });
        self.flights.insert(handle.id(), batch);
    }

    fn on_done(&mut self, res: Result<(Id, SendOutcome), JoinError>) {
        let (id, outcome) = match res {
            Ok((id, o)) => (id, Ok(o)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(batch) = self.flights.remove(&id) else {
            return;
        };
        let result = match outcome {
            Ok(o) => {
                self.counters
                    .retried
                    .fetch_add(u64::from(o.retries), Relaxed);
                if let Some(wait) = o.wait {
                    self.hold.asked(wait, "the OTLP endpoint");
                }
                o.result
            }
            Err(e) => Err(Error::Transport {
                message: format!("the request task failed: {e}"),
                request: "POST OTLP traces".into(),
                timeout: false,
            }),
        };
        match result {
            Ok(response) => {
                let spans = batch.count as u64;
                // An answer too large to read whole says nothing of the spans.
                let (claimed, message) = if response.cut.is_some() {
                    (0, String::new())
                } else {
                    partial_rejections(&response.body)
                };
                // No more than the request had, whatever the answer claims.
                let rejected = claimed.min(spans);
                self.counters
                    .otlp_rejected_spans
                    .fetch_add(rejected, Relaxed);
                if rejected > 0 {
                    // Spans, not rows: which traces they were in is not said.
                    notify(
                        self.on_failure.as_ref(),
                        DeliveryFailure {
                            rows: 0,
                            dropped: Some(DropReason::Rejected),
                            status: Some(response.status),
                            message: format!(
                                "OTLP export: the endpoint rejected {rejected} of {spans} spans \
                                 (partial success{}): {message}",
                                if claimed > spans {
                                    format!(", claimed {claimed}")
                                } else {
                                    String::new()
                                }
                            ),
                        },
                    );
                }
                self.counters
                    .otlp_spans_sent
                    .fetch_add(spans.saturating_sub(rejected), Relaxed);
                self.settle(batch, None, None, "");
            }
            Err(e) => {
                let (reason, status) = match &e {
                    Error::Api { status, .. } if !is_retryable_otlp_status(*status) => {
                        (DropReason::Rejected, Some(*status))
                    }
                    Error::Api { status, .. } => (DropReason::RetriesExhausted, Some(*status)),
                    Error::InvalidInput(_) | Error::Config(_) => (DropReason::Rejected, None),
                    Error::Timeout(_) => (DropReason::Deadline, None),
                    _ => (DropReason::RetriesExhausted, None),
                };
                self.settle(batch, Some(reason), status, &e.to_string());
            }
        }
    }

    /// Settles a batch: delivered (`reason` `None`) or dropped and counted.
    fn settle(&mut self, batch: Batch, reason: Option<DropReason>, status: Option<u16>, e: &str) {
        let traces = batch.epochs.len() as u64;
        let c = &self.counters;
        self.budget.release(batch.bytes, Tier::Otlp);
        self.backlog -= batch.epochs.len();
        for epoch in &batch.epochs {
            self.epochs.release(*epoch);
        }
        match reason {
            None if self.primary => {
                c.sent.fetch_add(traces, Relaxed);
            }
            None => {}
            Some(reason) => {
                c.otlp_spans_dropped.fetch_add(batch.count as u64, Relaxed);
                crate::util::diag::warn_limited!(
                    error = %e,
                    spans = batch.count,
                    "the OTLP endpoint did not take a request; its spans are dropped (counted)"
                );
                let failure = if self.primary {
                    c.drop_rows(reason, traces);
                    DeliveryFailure {
                        rows: traces,
                        dropped: Some(reason),
                        status,
                        message: format!("OTLP export: {e}"),
                    }
                } else {
                    // The rows went on through the data stream: only spans were lost.
                    self.told_spans += batch.count as u64;
                    DeliveryFailure {
                        rows: 0,
                        dropped: Some(reason),
                        status,
                        message: format!(
                            "OTLP export: {} spans dropped (their rows go on through the data \
                             stream): {e}",
                            batch.count
                        ),
                    }
                };
                notify(self.on_failure.as_ref(), failure);
            }
        }
        if self.primary {
            c.settled.fetch_add(traces, Relaxed);
        }
    }

    fn check_waiters(&mut self) {
        let now = Instant::now();
        let epochs = &self.epochs;
        self.waiters.retain(|w| {
            if epochs.settled_upto(w.limit) {
                w.done.complete();
                false
            } else {
                // Past its deadline the caller has its answer; stop hurrying.
                now < w.deadline
            }
        });
    }

    fn begin_shutdown(
        &mut self,
        done: Option<Arc<Completion>>,
        deadline: std::time::Instant,
        rx: &mut mpsc::Receiver<OtlpMsg>,
    ) {
        if let Some((d, _)) = &mut self.shutdown {
            d.extend(done);
            return;
        }
        rx.close();
        let now = std::time::Instant::now();
        let left = deadline.saturating_duration_since(now);
        // Leave a little time to settle what is abandoned.
        let margin = (left / 10).min(Duration::from_millis(50));
        self.shutdown = Some((
            done.into_iter().collect(),
            Instant::from_std(now + left.saturating_sub(margin)),
        ));
        while let Ok(msg) = rx.try_recv() {
            self.on_msg(msg, rx);
        }
    }

    /// The deadline has come: what is in flight or waiting is dropped as `deadline`.
    fn abandon(&mut self) {
        // Requests that ended by now are settled as they ended (see the data stream's).
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.on_done(done);
        }
        self.tasks.abort_all();
        let mut left: Vec<Batch> = self.flights.drain().map(|(_, b)| b).collect();
        left.extend(self.ready.drain(..));
        left.extend(self.groups.drain().map(|(_, b)| b));
        let e = Error::Timeout(self.shutdown_timeout).to_string();
        for b in left {
            self.settle(b, Some(DropReason::Deadline), None, &e);
        }
    }

    /// With no data-stream flusher, this side tells `on_failure` of the drops counted
    /// elsewhere (the producer's full queue, encoding), as that flusher would. Alongside
    /// it, this side tells of the spans dropped and not told yet (a full queue, backlog
    /// or memory share, a trace that could not be converted), with `rows: 0`: their
    /// rows are the data stream's to tell of.
    fn report_drops(&mut self) {
        if self.primary {
            self.counted_drops
                .report(&self.counters, self.on_failure.as_ref());
            return;
        }
        // The router counts on this thread: the two loads see the same conversions.
        let unconverted = self.counters.otlp_spans_unconverted.load(Relaxed);
        let dropped = self.counters.otlp_spans_dropped.load(Relaxed);
        let encoding = unconverted.saturating_sub(self.told_unconverted);
        let full = dropped
            .saturating_sub(self.told_spans)
            .saturating_sub(encoding);
        self.told_unconverted = unconverted;
        self.told_spans = self.told_spans.max(dropped);
        for (spans, reason, why) in [
            (
                full,
                DropReason::QueueFull,
                "the OTLP side had no room for them (a full queue, backlog or memory share)",
            ),
            (
                encoding,
                DropReason::Encoding,
                "their traces could not be converted to spans",
            ),
        ] {
            if spans > 0 {
                notify(
                    self.on_failure.as_ref(),
                    DeliveryFailure {
                        rows: 0,
                        dropped: Some(reason),
                        status: None,
                        message: format!(
                            "OTLP export: {spans} spans dropped (their rows go on through the \
                             data stream): {why}"
                        ),
                    },
                );
            }
        }
    }

    fn finish(mut self) {
        self.report_drops();
        self.check_waiters();
        for d in self.shutdown.take().map(|s| s.0).unwrap_or_default() {
            d.complete();
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if !self.urgent() {
            for b in self.groups.values() {
                at(after_tokio(b.since, self.linger));
            }
        }
        if let Some(t) = self.hold.until() {
            at(t);
        }
        if let Some((_, d)) = &self.shutdown {
            at(*d);
        }
        for w in &self.waiters {
            at(w.deadline);
        }
        wake
    }
}

/// The part of every request before its spans, encoded once by `prost`, and how to
/// frame a batch's spans into a request with it (see the module docs).
#[derive(Debug)]
struct Head {
    /// `ResourceSpans.resource` (field 1: key, length, `Resource`).
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1: key, length, `InstrumentationScope`).
    scope: Vec<u8>,
    /// The room a batch leaves before its spans: the head at its longest.
    room: usize,
}

/// The most a new batch allocates ahead for its request (it grows past that as needed):
/// a batch that lingers with a few traces holds no more.
const BODY_HINT_MAX: usize = 1 << 20;

/// `ExportTraceServiceRequest.resource_spans`.
const RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.scope_spans`.
const SCOPE_SPANS: u32 = 2;

impl Head {
    fn new(resource: &Resource, scope: &InstrumentationScope) -> Head {
        let mut r = Vec::new();
        prost::encoding::message::encode(1, resource, &mut r);
        let mut s = Vec::new();
        prost::encoding::message::encode(1, scope, &mut s);
        // Two keys and two lengths (a varint of a `u64` takes at most 10 bytes).
        let room = r.len()
            + s.len()
            + prost::encoding::key_len(RESOURCE_SPANS)
            + prost::encoding::key_len(SCOPE_SPANS)
            + 20;
        Head {
            resource: r,
            scope: s,
            room,
        }
    }

    /// The request of a batch's body (`room` bytes, then its encoded spans): the head is
    /// written just before the spans and the request starts where it does.
    fn request(&self, mut body: Vec<u8>) -> bytes::Bytes {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let spans = body.len() - self.room;
        let scope_spans = self.scope.len() + spans;
        let resource_spans = self.resource.len()
            + key_len(SCOPE_SPANS)
            + encoded_len_varint(scope_spans as u64)
            + scope_spans;
        let mut head = Vec::with_capacity(self.room);
        encode_key(RESOURCE_SPANS, WireType::LengthDelimited, &mut head);
        encode_varint(resource_spans as u64, &mut head);
        head.extend_from_slice(&self.resource);
        encode_key(SCOPE_SPANS, WireType::LengthDelimited, &mut head);
        encode_varint(scope_spans as u64, &mut head);
        head.extend_from_slice(&self.scope);
        let start = self.room - head.len();
        body[start..self.room].copy_from_slice(&head);
        bytes::Bytes::from(body).slice(start..)
    }
}

/// The resource's attributes, as OpenTelemetry SDKs make them: those of
/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-decoded), `service.name` from
/// `OTEL_SERVICE_NAME` first, then from those, else `unknown_service`, and the SDK's own
/// `telemetry.sdk.*`.
fn resource_attributes(service: Option<String>, attributes: Option<String>) -> Vec<KeyValue> {
    let mut from_env = attributes
        .as_deref()
        .map(crate::config::parse_otlp_headers)
        .unwrap_or_default();
    from_env.retain(|(k, _)| !k.starts_with("telemetry.sdk."));
    let service = service
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            from_env
                .iter()
                .rev()
                .find(|(k, v)| k == "service.name" && !v.is_empty())
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "unknown_service".into());
    let mut out = vec![KeyValue::string("service.name", service)];
    for (k, v) in from_env {
        if k == "service.name" {
            continue;
        }
        // A key given twice: the last one.
        match out.iter_mut().find(|kv| kv.key == k) {
            Some(kv) => *kv = KeyValue::string(&k, v),
            None => out.push(KeyValue::string(&k, v)),
        }
    }
    out.extend([
        KeyValue::string("telemetry.sdk.name", "openlayer-trace"),
        KeyValue::string("telemetry.sdk.language", "rust"),
        KeyValue::string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ]);
    out
}

/// The spans a 2xx answer reports as rejected (`partial_success.rejected_spans`, as
/// claimed: the caller caps it at the request's spans), and its message. An answer that
/// is not an `ExportTraceServiceResponse` rejects nothing (a 2xx is a success for OTLP;
/// some endpoints answer `{}` or text), said at debug level.
fn partial_rejections(body: &[u8]) -> (u64, String) {
    let Ok(response) = <ExportTraceServiceResponse as prost::Message>::decode(body) else {
        tracing::debug!(
            target: "openlayer_trace",
            bytes = body.len(),
            "the OTLP endpoint answered 2xx with a body that is not an OTLP response; its \
             spans are counted as sent"
        );
        return (0, String::new());
    };
    let Some(p) = response.partial_success else {
        return (0, String::new());
    };
    let n = p.rejected_spans.max(0) as u64;
    if n > 0 || !p.error_message.is_empty() {
        crate::util::diag::warn_limited!(
            rejected_spans = n,
            message = %p.error_message,
            "the OTLP endpoint rejected some spans (partial success)"
        );
    }
    (n, p.error_message)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_takes_the_standard_environment() {
        let text = |attrs: &[KeyValue]| -> Vec<(String, String)> {
            attrs
                .iter()
                .map(|kv| {
                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(crate::export::otlp::proto::any_value::Value::StringValue(s)) => {
                            s.clone()
                        }
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect()
        };
        let attrs = text(&resource_attributes(
            None,
            Some(
                "service.name=checkout,deployment.environment=prod,team=a%2Cb,team=c,\
                 telemetry.sdk.name=other"
                    .into(),
            ),
        ));
        assert_eq!(attrs[0], ("service.name".into(), "checkout".into()));
        assert!(attrs.contains(&("deployment.environment".into(), "prod".into())));
        assert!(attrs.contains(&("team".into(), "c".into())));
        assert_eq!(attrs.iter().filter(|(k, _)| k == "team").count(), 1);
        assert!(attrs.contains(&("telemetry.sdk.name".into(), "openlayer-trace".into())));
        assert_eq!(
            attrs
                .iter()
                .filter(|(k, _)| k == "telemetry.sdk.name")
                .count(),
            1
        );
        // OTEL_SERVICE_NAME wins.
        let attrs = text(&resource_attributes(
            Some(" billing ".into()),
            Some("service.name=checkout".into()),
        ));
        assert_eq!(attrs[0], ("service.name".into(), "billing".into()));
        assert_eq!(attrs.iter().filter(|(k, _)| k == "service.name").count(), 1);
        let attrs = text(&resource_attributes(None, None));
        assert_eq!(attrs[0], ("service.name".into(), "unknown_service".into()));
    }

    /// At the shutdown deadline, a request that already ended (its answer waiting in the
    /// task set, as when the worker wakes at the deadline in the same instant) is settled
    /// as it ended: its spans count as sent, not as dropped at the deadline.
    #[test]
    fn a_request_answered_by_the_deadline_is_sent_not_abandoned() {
        let server = openlayer_testserver::TestServer::start();
        let config = Config::builder()
            .api_key("sk-test")
            .otlp_endpoint(server.url())
            .build()
            .unwrap();
        let counters = Arc::new(Counters::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (t, openlayer) = crate::export::otlp::transport_config(&config).unwrap();
            let transport = Transport::new(t).unwrap();
            let mut f = OtlpFlusher::new(
                &config,
                transport,
                openlayer,
                true,
                counters.clone(),
                Arc::new(Budget::new(1 << 20)),
            );
            let mut encoded = Vec::new();
            prost::encoding::message::encode(
                crate::export::otlp::convert::SCOPE_SPANS_SPANS,
                &span(1, 1),
                &mut encoded,
            );
            let bytes = encoded.len();
            f.accept(Converted {
                pipeline: None,
                encoded,
                spans: 1,
                bytes,
            });
            // Urgent, so that the batch leaves without waiting for the linger.
            f.shutdown = Some((Vec::new(), Instant::now() + Duration::from_secs(60)));
            f.dispatch();
            assert_eq!(f.tasks.len(), 1);
            // The request ends; its result waits in the task set, not collected (this
            // runtime runs the task while the test sleeps).
            while server.request_count() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            f.abandon();
        });
        let stats = counters.snapshot();
        assert_eq!(server.request_count(), 1);
        assert_eq!(stats.otlp_spans_sent, 1, "{stats:?}");
        assert_eq!(stats.otlp_spans_dropped, 0, "{stats:?}");
        assert_eq!(stats.sent, 1, "{stats:?}");
        assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    }
    use crate::export::otlp::proto::{
        ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span, StatusCode,
    };
    use prost::Message as _;

    fn span(n: u8, attrs: usize) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            parent_span_id: if n.is_multiple_of(2) {
                vec![]
            } else {
                vec![9; 8]
            },
            name: format!("step {n}"),
            kind: 1,
            start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(n),
            end_time_unix_nano: 1_700_000_000_000_000_100,
            attributes: (0..attrs)
                .map(|i| KeyValue::string(format!("k{i}"), "v".repeat(i * 50)))
                .collect(),
            status: (n == 3).then(|| crate::export::otlp::proto::Status {
                message: "boom".into(),
                code: StatusCode::Error as i32,
            }),
            flags: 1,
        }
    }

    /// A batch framed around its spans encodes as `prost` encodes the whole request, for
    /// no span, a few, and enough that the lengths take more bytes.
    #[test]
    fn a_framed_batch_is_the_request_prost_encodes() {
        let resource = Resource {
            attributes: vec![KeyValue::string("service.name", "svc")],
        };
        let scope = InstrumentationScope {
            name: "openlayer-trace".into(),
            version: "1.2.3".into(),
        };
        let head = Head::new(&resource, &scope);
        for (count, attrs) in [(0, 0), (1, 1), (4, 3), (300, 12)] {
            let spans: Vec<Span> = (0..count).map(|n| span(n as u8, attrs)).collect();
            let mut body = vec![0; head.room];
            for s in &spans {
                prost::encoding::message::encode(
                    crate::export::otlp::convert::SCOPE_SPANS_SPANS,
                    s,
                    &mut body,
                );
            }
            let framed = head.request(body);
            let whole = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: spans.clone(),
                    }],
                }],
            }
            .encode_to_vec();
            assert_eq!(&framed[..], &whole[..], "{count} spans");
            let back = ExportTraceServiceRequest::decode(framed).unwrap();
            assert_eq!(back.resource_spans[0].scope_spans[0].spans, spans);
        }
    }
}
