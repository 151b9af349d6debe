//! The OTLP exporter (feature `otlp`): completed traces also go, or only go, to an
//! OTLP/HTTP protobuf endpoint, an OpenTelemetry Collector or Openlayer's own
//! `{base}/otel/v1/traces`.
//!
//! - **Spans** (see `convert`): one per step, with its parent, start and end; the trace id
//!   is the inference id when it is a UUID, else derived from it (UUID v5), so traces
//!   that reuse an inference id share one trace id, with a root span each; CLIENT spans
//!   with the GenAI semantic conventions' attributes for model calls, INTERNAL otherwise;
//!   the root span carries the trace's input and output messages. `session.id` and
//!   `user.id` are set only when the trace set them. Values are strings, integers,
//!   doubles and booleans: lists and objects go as JSON text, never as OTLP arrays or
//!   key-value lists. Each string attribute (and status message) is cut to
//!   `field_budget`, else to `convert::ATTRIBUTE_MAX_BYTES` (1 MiB), with a marker.
//! - **Delivery** (see `flusher`): the worker's router takes each completed trace from
//!   the one bounded queue of the SDK, hands it to the data-stream flusher (unless
//!   `otlp_only`) and its spans to the OTLP side, which batches them (`batch_max_rows`
//!   traces, `batch_max_bytes`, `linger`), keeps `max_in_flight` requests in flight over
//!   our transport, and settles them by the flush and shutdown deadlines. Only 429, 502,
//!   503 and 504, connection errors, timeouts and a 2xx whose body failed to arrive whole
//!   (which the server may have taken: its spans may arrive twice) are retried;
//!   `Retry-After` is honoured; redirects are not followed (a 3xx is final, `rejected`);
//!   `partial_success.rejected_spans` is counted, at most the request's spans. Requests
//!   in flight at the shutdown deadline are abandoned and counted as `deadline` drops,
//!   though the server may have taken them. Spans are never spooled:
//!   what cannot be delivered is dropped and counted (`Stats::otlp_spans_dropped`; with
//!   `otlp_only`, also by reason in `Stats::dropped`), and told to `on_failure`: as rows
//!   with `otlp_only`, else with `rows: 0` and the span count in the message (the rows go
//!   on through the data stream). Alongside the data stream, the spans waiting or in
//!   flight have their own half of the worker's memory share (`Tier::Otlp`), so neither
//!   destination's trouble takes the other's room. With an OTLP endpoint the
//!   write-ahead spool mode falls back to overflow (a trace written ahead is encoded as a
//!   row before the worker sees it).
//!
//! # Why `prost` and our own message types
//!
//! The messages (`proto`) are `prost`-derived types transcribed from the official OTLP
//! `.proto` files; `prost` does all the encoding: each span as it is converted (into its
//! trace's buffer, which its batch appends), and the request's head around them (see
//! `flusher`). The alternative, the
//! `opentelemetry-proto` crate, carries the same generated types, but it depends on the
//! OpenTelemetry API and SDK crates (`opentelemetry`, `opentelemetry_sdk`) for its
//! conversions, which this exporter does not use: our own types keep the feature's cost
//! to `prost` alone (no `protoc` at build time either). In exchange, the tests decode our
//! requests with `opentelemetry-proto`'s types, an independent reading of the official
//! definitions, so that a mistake in ours cannot pass unnoticed.

pub(crate) mod convert;
mod cut;
pub(crate) mod flusher;
pub(crate) mod proto;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::encode::row_policy::Shaper;
use crate::error::Error;
use crate::export::budget::{Budget, Tier};
use crate::export::openlayer::Flusher;
use crate::export::protocol::Msg;
use crate::report::{Counters, DropReason};
use crate::transport::TransportConfig;
use crate::util::signal::Completion;

pub(crate) use flusher::{OtlpFlusher, OtlpMsg};

/// The traces URL of an endpoint: as given when it ends in `/v1/traces`, else with
/// `/v1/traces` appended (OpenTelemetry's convention for a base endpoint).
/// A query or fragment stays after the path.
pub(crate) fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim();
    let (base, rest) = match e.find(['?', '#']) {
        Some(i) => e.split_at(i),
        None => (e, ""),
    };
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        format!("{base}{rest}")
    } else {
        format!("{base}/v1/traces{rest}")
    }
}

/// Whether the endpoint is below the configured API base URL (Openlayer's own
/// `{base}/otel`): only then are the API key and the pipeline sent along.
pub(crate) fn is_openlayer(endpoint: &str, base_url: &str) -> bool {
    let base = base_url.trim().trim_end_matches('/');
    endpoint
        .trim()
        .strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The OTLP transport's settings, and whether the endpoint is Openlayer's; `None`
/// without an OTLP endpoint.
pub(crate) fn transport_config(config: &Config) -> Option<(TransportConfig, bool)> {
    let endpoint = config.otlp.endpoint.as_deref()?;
    let openlayer = is_openlayer(endpoint, config.base_url());
    let given = |name: &str| {
        config
            .otlp
            .headers
            .iter()
            .any(|(k, _)| k.trim().eq_ignore_ascii_case(name))
    };
    let mut t = TransportConfig::from_config(config);
    t.base_url = traces_url(endpoint);
    t.protobuf = true;
    t.extra_headers = config.otlp.headers.clone();
    // The API key goes only to Openlayer, and not over a header the caller set.
    if !openlayer || given("authorization") {
        t.api_key = None;
    }
    Some((t, openlayer && !given("x-bt-parent")))
}

/// Whether traces go to the OTLP endpoint only (asked for, or no API key to send rows).
pub(crate) fn only(config: &Config) -> bool {
    config.otlp.only || config.api_key.is_none()
}

/// The worker's router: takes the queue's messages and hands traces to the data-stream
/// flusher (when there is one) and their spans to the OTLP side; a flush or shutdown
/// completes when both sides have settled.
pub(crate) async fn run(
    rx: &mut crate::util::queue::Receiver<Msg>,
    data_stream: Option<Flusher>,
    otlp: OtlpFlusher,
    shaper: Shaper,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    config: &Config,
) {
    let capacity = config.queue_capacity;
    let on_failure = config.on_failure.clone();
    let (otx, orx) = mpsc::channel::<OtlpMsg>(capacity.max(1));
    let (ftx, frx) = match data_stream {
        Some(_) => {
            let (t, r) = crate::util::queue::channel::<Msg>(capacity);
            (Some(t), Some(r))
        }
        None => (None, None),
    };
    let primary = ftx.is_none();
    // String attributes are cut as the data stream cuts fields, else at a fixed bound.
    let attr_max = config.field_budget.unwrap_or(convert::ATTRIBUTE_MAX_BYTES);
    let router = async move {
        let mut combiners = JoinSet::new();
        let mut ctx = Router {
            otx,
            ftx,
            shaper,
            counters,
            budget,
            primary,
            scratch: convert::Scratch::new(attr_max),
            on_failure,
        };
        while let Some(msg) = rx.recv().await {
            while combiners.try_join_next().is_some() {}
            if let Msg::Shutdown(done, deadline) = msg {
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    ctx.route(msg, &mut combiners).await;
                }
                ctx.route(Msg::Shutdown(done, deadline), &mut combiners)
                    .await;
                break;
            }
            ctx.route(msg, &mut combiners).await;
        }
        // Dropping the senders lets both sides finish (within their shutdown deadline).
        drop(ctx);
        while combiners.join_next().await.is_some() {}
    };
    let data_stream = async move {
        if let (Some(f), Some(frx)) = (data_stream, frx) {
            f.run(&mut { frx }).await;
        }
    };
    tokio::join!(router, data_stream, otlp.run(orx));
}

struct Router {
    otx: mpsc::Sender<OtlpMsg>,
    ftx: Option<crate::util::queue::Sender<Msg>>,
    shaper: Shaper,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    primary: bool,
    /// What conversion reuses from one trace to the next.
    scratch: convert::Scratch,
    on_failure: Option<crate::config::FailureFn>,
}

impl Router {
    async fn route(&mut self, msg: Msg, combiners: &mut JoinSet<()>) {
        match msg {
            Msg::Trace(mut trace, bytes) => {
                let id = convert::inference_id(&trace);
                // Sampled as the row is: on the inference id.
                let kept = id.as_deref().is_some_and(|id| self.shaper.keeps(id));
                let scratch = &mut self.scratch;
                let converted = id.filter(|_| kept).and_then(|id| {
                    // A panic in conversion costs that trace, not the worker (the
                    // scratch is emptied before each span).
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        convert::convert(&trace, &id, scratch)
                    }))
                    .ok()
                    .flatten()
                });
                match &self.ftx {
                    Some(ftx) => {
                        if kept && converted.is_none() {
                            // The row still goes; the spans are counted as dropped.
                            let n = trace.state.steps.len() as u64;
                            self.counters.otlp_spans_dropped.fetch_add(n, Relaxed);
                            self.counters.otlp_spans_unconverted.fetch_add(n, Relaxed);
                            crate::util::diag::warn_limited!(
                                "a trace could not be converted to spans; its spans are dropped (counted)"
                            );
                        }
                        // The data-stream flusher releases its queue bytes and samples it.
                        let _ = ftx.send(Msg::Trace(trace, bytes)).await;
                        if let Some(c) = converted {
                            let n = c.spans as u64;
                            if self.otx.try_send(OtlpMsg::Spans(c)).is_err() {
                                self.counters.otlp_spans_dropped.fetch_add(n, Relaxed);
                                crate::util::diag::warn_limited!(
                                    "the OTLP side is behind; a trace's spans were dropped (counted)"
                                );
                            }
                        }
                    }
                    None => {
                        self.budget.release(bytes, Tier::Queue);
                        crate::record::recycle(&mut trace.state);
                        drop(trace);
                        match converted {
                            Some(c) => {
                                let _ = self.otx.send(OtlpMsg::Spans(c)).await;
                            }
                            None => self.not_converted(kept),
                        }
                    }
                }
            }
            Msg::Row(row, bytes) => match &self.ftx {
                Some(ftx) => {
                    let _ = ftx.send(Msg::Row(row, bytes)).await;
                }
                None => {
                    self.budget.release(bytes, Tier::Queue);
                    self.counters.drop_rows(DropReason::Encoding, 1);
                    self.counters.settled.fetch_add(1, Relaxed);
                }
            },
            // Without the data stream there is no spool, so nothing is written ahead.
            Msg::Update(update, bytes, wal) => match &self.ftx {
                Some(ftx) => {
                    let _ = ftx.send(Msg::Update(update, bytes, wal)).await;
                }
                None => {
                    self.budget.release(bytes, Tier::Queue);
                    self.counters.drop_rows(DropReason::Rejected, 1);
                    self.counters.settled.fetch_add(1, Relaxed);
                    crate::util::diag::warn_limited!(
                        "row updates have no OTLP form; dropped (counted as rejected)"
                    );
                    crate::report::notify(
                        self.on_failure.as_ref(),
                        crate::report::DeliveryFailure {
                            rows: 1,
                            dropped: Some(DropReason::Rejected),
                            status: None,
                            message: "row updates have no OTLP form (spans only)".into(),
                        },
                    );
                }
            },
            Msg::Flush(done, deadline) => {
                self.fan_out(done, deadline, combiners, Msg::Flush, OtlpMsg::Flush)
                    .await
            }
            Msg::Shutdown(done, deadline) => {
                self.fan_out(done, deadline, combiners, Msg::Shutdown, OtlpMsg::Shutdown)
                    .await
            }
        }
    }

    /// A trace the OTLP side will not see: sampled out, or it could not be converted.
    fn not_converted(&self, kept: bool) {
        // Only reached when this side settles rows (no data-stream flusher).
        debug_assert!(self.primary);
        if kept {
            self.counters.drop_rows(DropReason::Encoding, 1);
            crate::util::diag::warn_limited!(
                "a trace could not be converted to spans; dropped (counted)"
            );
        } else {
            self.counters.sampled_out.fetch_add(1, Relaxed);
        }
        self.counters.settled.fetch_add(1, Relaxed);
    }

    /// Sends a flush or shutdown to both sides; `done` completes when both have.
    async fn fan_out(
        &self,
        done: Arc<Completion>,
        deadline: std::time::Instant,
        combiners: &mut JoinSet<()>,
        to_rows: fn(Arc<Completion>, std::time::Instant) -> Msg,
        to_spans: fn(Arc<Completion>, std::time::Instant) -> OtlpMsg,
    ) {
        let Some(ftx) = &self.ftx else {
            // Spans only: the OTLP side answers the caller itself.
            let _ = self.otx.send(to_spans(done, deadline)).await;
            return;
        };
        let spans = Arc::new(Completion::default());
        let _ = self.otx.send(to_spans(spans.clone(), deadline)).await;
        let rows = match Some(ftx) {
            Some(ftx) => {
                let rows = Arc::new(Completion::default());
                let _ = ftx.send(to_rows(rows.clone(), deadline)).await;
                Some(rows)
            }
            None => None,
        };
        combiners.spawn(async move {
            let mut ok = spans.wait_until_async(deadline).await;
            if let Some(rows) = rows {
                ok &= rows.wait_until_async(deadline).await;
            }
            if ok {
                done.complete();
            }
        });
    }
}

/// Checks the OTLP settings where the worker is started.
pub(crate) fn validate(config: &Config) -> Result<(), Error> {
    if let Some((t, _)) = transport_config(config) {
        t.validate()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_goes_before_a_query() {
        assert_eq!(traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(traces_url(" http://h:4318/ "), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h/v1/traces"), "http://h/v1/traces");
        assert_eq!(
            traces_url("http://h:4318/otlp?k=v"),
            "http://h:4318/otlp/v1/traces?k=v"
        );
        assert_eq!(
            traces_url("http://h:4318?tenant=a"),
            "http://h:4318/v1/traces?tenant=a"
        );
        assert_eq!(
            traces_url("http://h/v1/traces?x=1"),
            "http://h/v1/traces?x=1"
        );
    }
}
