//! Capture your own traces in memory and assert on them (feature `test-util`).
//!
//! Traces started inside [`capture`] or [`capture_async`] (on this thread or task, and in
//! work spawned with the trace-carrying helpers) are encoded exactly as they would be sent,
//! and returned instead of exported. Captures in concurrent tests do not see each other's
//! traces.
//!
//! They are shaped as delivery shapes them: the `mask`, `field_budget` and `sample_rate`
//! of the configuration installed by `init` apply (a trace that sampling leaves out is
//! not captured), so a test can check a PII mask. [`capture_with`] applies those of a
//! given [`Config`] instead, without `init`.
//!
//! ```
//! use openlayer_trace::{testing, trace};
//!
//! #[trace]
//! fn greet(name: &str) -> String { format!("Hello, {name}!") }
//!
//! let (out, traces) = testing::capture(|| greet("Ada"));
//! assert_eq!(out, "Hello, Ada!");
//! assert_eq!(traces.len(), 1);
//! assert_eq!(traces[0].row()["output"], "Hello, Ada!");
//! assert_eq!(traces[0].row()["name"], "Ada");
//! assert_eq!(traces[0].root()["name"], "greet");
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;

use crate::config::Config;
use crate::context;
use crate::encode::EncodedRow;
use crate::export::capture::CaptureSink;
use crate::record::sink::TraceSink;

/// A trace as it would have been sent: its pipeline, config and row.
#[derive(Debug, Clone)]
pub struct CapturedTrace {
    pipeline_id: Option<String>,
    inference_id: String,
    config_json: String,
    row_json: String,
    config: Value,
    row: Value,
}

impl CapturedTrace {
    fn new(e: EncodedRow) -> Self {
        let config = crate::encode::row_policy::from_str_deep(&e.config).unwrap_or(Value::Null);
        let row = crate::encode::row_policy::from_str_deep(&e.row).unwrap_or(Value::Null);
        CapturedTrace {
            pipeline_id: e.pipeline_id.map(|p| p.into_owned()),
            inference_id: e.inference_id,
            config_json: e.config,
            row_json: e.row,
            config,
            row,
        }
    }

    /// The row (`inferenceId`, `output`, `latency`, `steps`, columns, ...).
    pub fn row(&self) -> &Value {
        &self.row
    }
    /// The data-stream `config` object.
    pub fn config(&self) -> &Value {
        &self.config
    }
    /// The row's JSON text, keys in wire order.
    pub fn row_json(&self) -> &str {
        &self.row_json
    }
    /// The config's JSON text, keys in wire order.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }
    /// The pipeline set with `#[trace(inference_pipeline_id = ...)]`, if any.
    pub fn pipeline_id(&self) -> Option<&str> {
        self.pipeline_id.as_deref()
    }
    /// The row's `inferenceId`.
    pub fn inference_id(&self) -> &str {
        &self.inference_id
    }
    /// The root step.
    pub fn root(&self) -> &Value {
        &self.row["steps"][0]
    }
    /// Every step, depth first, in start order.
    pub fn steps(&self) -> Vec<&Value> {
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
            out.push(v);
            if let Some(children) = v["steps"].as_array() {
                for c in children {
                    walk(c, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root(), &mut out);
        out
    }
    /// The first step with this name, depth first.
    pub fn step(&self, name: &str) -> Option<&Value> {
        self.steps().into_iter().find(|s| s["name"] == name)
    }
}

/// Runs `f` and returns the traces it completed.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<CapturedTrace>) {
    let sink = Arc::new(CaptureSink::default());
    let out = context::with_capture(Some(sink.clone() as Arc<dyn TraceSink>), f);
    (
        out,
        sink.take().into_iter().map(CapturedTrace::new).collect(),
    )
}

/// Runs `f` and returns the traces it completed, shaped by `config`'s `mask`,
/// `field_budget` and `sample_rate` (whatever `init` installed).
///
/// ```
/// use openlayer_trace::{Config, testing, trace};
///
/// #[trace]
/// fn sign_up(email: &str) -> bool { true }
///
/// let config = Config::builder()
///     .mask(|row| { row.insert("email".into(), "***".into()); })
///     .build()
///     .unwrap();
/// let (_, traces) = testing::capture_with(&config, || sign_up("ada@example.com"));
/// assert_eq!(traces[0].row()["email"], "***");
/// ```
pub fn capture_with<R>(config: &Config, f: impl FnOnce() -> R) -> (R, Vec<CapturedTrace>) {
    let sink = Arc::new(CaptureSink::with_config(config));
    let out = context::with_capture(Some(sink.clone()), f);
    (
        out,
        sink.take().into_iter().map(CapturedTrace::new).collect(),
    )
}

/// Runs `future` and returns the traces it completed.
pub async fn capture_async<F: Future>(future: F) -> (F::Output, Vec<CapturedTrace>) {
    let sink = Arc::new(CaptureSink::default());
    let out = Capturing {
        inner: Box::pin(future),
        sink: sink.clone(),
    }
    .await;
    (
        out,
        sink.take().into_iter().map(CapturedTrace::new).collect(),
    )
}

struct Capturing<F: Future> {
    inner: Pin<Box<F>>,
    sink: Arc<CaptureSink>,
}

impl<F: Future> Future for Capturing<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let sink = self.sink.clone();
        context::with_capture(Some(sink as Arc<dyn TraceSink>), || {
            self.inner.as_mut().poll(cx)
        })
    }
}
