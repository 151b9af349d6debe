//! Wire encoding: a completed trace becomes one data-stream row and its config, exactly as
//! the official SDKs send them (see the crate docs for the format). Runs off the
//! application's threads, in the background worker.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::record::{CompletedTrace, NO_PARENT, Status, StepRecord};

/// One encoded trace, ready for a data-stream request.
#[derive(Debug, Clone)]
pub(crate) struct EncodedRow {
    /// The inference pipeline of a `#[trace(inference_pipeline_id = ...)]` root, if any.
    pub pipeline_id: Option<Cow<'static, str>>,
    /// The compact JSON of the data-stream `config` object.
    pub config: String,
    /// The compact JSON of the row object.
    pub row: String,
    /// The row's `inferenceId`.
    pub inference_id: String,
}

fn push_str(out: &mut String, s: &str) {
    // Most strings written here (keys, step names) need no escaping.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // serde_json escapes exactly as JSON requires and leaves non-ASCII as UTF-8.
    if crate::record::write_json(out, s).is_err() {
        out.push_str("\"\"");
    }
}

fn push_f64(out: &mut String, v: f64) {
    // `f64`'s shortest round-trip form, with a `.0` for whole numbers (as Python prints).
    if !v.is_finite() || crate::record::write_json(out, &v).is_err() {
        out.push_str("null");
    }
}

/// Seconds since the epoch of an offset from the trace's anchor.
fn unix_secs(anchor_unix_ns: i128, offset_ns: i64) -> f64 {
    (anchor_unix_ns + offset_ns as i128) as f64 / 1e9
}

fn latency_ms(rec: &StepRecord) -> f64 {
    (rec.end - rec.start).max(0) as f64 / 1e6
}

/// A number out of a JSON text (`null` and non-numbers give `None`).
fn number(json: Option<&str>) -> Option<f64> {
    json.and_then(|j| j.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// The tokens of a step: its `tokens`, else prompt + completion tokens.
fn step_tokens(rec: &StepRecord) -> Option<f64> {
    number(rec.field("tokens")).or_else(|| {
        let p = number(rec.field("promptTokens"));
        let c = number(rec.field("completionTokens"));
        if p.is_none() && c.is_none() {
            None
        } else {
            Some(p.unwrap_or(0.0) + c.unwrap_or(0.0))
        }
    })
}

struct Tree<'a> {
    trace: &'a CompletedTrace,
    /// Children of each step, in start order.
    children: Vec<Vec<u32>>,
}

impl<'a> Tree<'a> {
    fn new(trace: &'a CompletedTrace) -> Self {
        let n = trace.state.steps.len();
        let mut children = vec![Vec::new(); n];
        for (i, rec) in trace.state.steps.iter().enumerate().skip(1) {
            let p = if rec.parent == NO_PARENT {
                0
            } else {
                rec.parent as usize
            };
            if p < n && p != i {
                children[p].push(i as u32);
            }
        }
        Tree { trace, children }
    }

    fn write_step(&self, out: &mut String, idx: usize, root_output: Option<&str>) {
        let rec = &self.trace.state.steps[idx];
        out.push_str("{\"name\":");
        push_str(out, &rec.name);
        out.push_str(",\"id\":\"");
        crate::id::push_uuid_v4(out, rec.id);
        out.push_str("\",\"type\":\"");
        out.push_str(rec.kind.as_str());
        out.push_str("\",\"inputs\":");
        out.push_str(self.trace.state.inputs(rec).unwrap_or("null"));
        out.push_str(",\"output\":");
        let output = if idx == 0 {
            root_output
        } else {
            self.trace.state.output(rec)
        };
        out.push_str(output.unwrap_or("null"));
        out.push_str(",\"groundTruth\":");
        out.push_str(rec.ground_truth.as_deref().unwrap_or("null"));
        out.push_str(",\"metadata\":");
        write_metadata(out, rec);
        out.push_str(",\"steps\":[");
        for (i, child) in self.children[idx].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.write_step(out, *child as usize, None);
        }
        out.push_str("],\"latency\":");
        push_f64(out, latency_ms(rec));
        out.push_str(",\"startTime\":");
        push_f64(out, unix_secs(self.trace.anchor_unix_ns, rec.start));
        out.push_str(",\"endTime\":");
        push_f64(out, unix_secs(self.trace.anchor_unix_ns, rec.end));
        let tokens = step_tokens(rec);
        for field in rec.kind.fields() {
            out.push_str(",\"");
            out.push_str(field);
            out.push_str("\":");
            if *field == "tokens" && rec.field("tokens").is_none() {
                match tokens {
                    Some(t) => push_number(out, t),
                    None => out.push_str("null"),
                }
            } else {
                out.push_str(rec.field(field).unwrap_or("null"));
            }
        }
        for field in rec.kind.optional_fields() {
            if let Some(v) = rec.field(field) {
                out.push_str(",\"");
                out.push_str(field);
                out.push_str("\":");
                out.push_str(v);
            }
        }
        out.push('}');
    }
}

/// A whole number without a fraction, else a float.
fn push_number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        push_f64(out, v);
    }
}

/// The metadata of a step, in order: `has_guardrails` (traced functions), the user's keys,
/// then `Exceptions` for a failed step.
fn metadata_entries(rec: &StepRecord) -> Vec<(&str, Cow<'_, str>)> {
    let mut entries: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(rec.metadata.len() + 2);
    if rec.traced_fn {
        entries.push(("has_guardrails", Cow::Borrowed("false")));
    }
    for (k, v) in &rec.metadata {
        set_entry(&mut entries, k, Cow::Borrowed(&**v));
    }
    if let Some(err) = &rec.error {
        let mut quoted = String::with_capacity(err.len() + 2);
        push_str(&mut quoted, err);
        set_entry(&mut entries, "Exceptions", Cow::Owned(quoted));
    }
    entries
}

fn set_entry<'a>(entries: &mut Vec<(&'a str, Cow<'a, str>)>, key: &'a str, value: Cow<'a, str>) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => entries.push((key, value)),
    }
}

fn write_object(out: &mut String, entries: &[(&str, Cow<'_, str>)]) {
    out.push('{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, k);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
}

fn write_metadata(out: &mut String, rec: &StepRecord) {
    write_object(out, &metadata_entries(rec));
}

/// Splits a JSON object text into its keys and value texts, in order.
pub(crate) fn object_entries(json: &str) -> Vec<(String, Box<serde_json::value::RawValue>)> {
    struct Entries(Vec<(String, Box<serde_json::value::RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Entries, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Entries(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Entries>(json)
        .map(|e| e.0)
        .unwrap_or_default()
}

/// Encodes a completed trace as a data-stream row and config.
pub(crate) fn encode(trace: &CompletedTrace) -> Option<EncodedRow> {
    let st = &trace.state;
    let root = trace.root()?;
    let tree = Tree::new(trace);
    let inputs = st.inputs(root).map(object_entries).unwrap_or_default();

    let inference_id = match &st.inference_id {
        Some(id) => id.to_string(),
        None => crate::id::uuid_v4(root.id),
    };
    // A trace-level `output` (log_output) replaces the root's output everywhere.
    let trace_output = st
        .columns
        .iter()
        .find(|(k, _)| k == "output")
        .map(|(_, v)| &**v);
    let root_output = if root.status == Status::Ok || trace_output.is_some() {
        trace_output.or(st.output(root))
    } else {
        None
    };

    let (mut cost, mut tokens, mut has_cost) = (0.0f64, 0.0f64, false);
    for rec in &st.steps {
        if let Some(c) = number(rec.field("cost")) {
            cost += c;
            has_cost = true;
        }
        if let Some(t) = step_tokens(rec) {
            tokens += t;
        }
    }

    // The row, in wire order; a later key replaces an earlier one in place.
    let mut row: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    let mut s = String::new();
    push_f64(&mut s, unix_secs(trace.anchor_unix_ns, root.start));
    row.push(("inferenceTimestamp", Cow::Owned(s)));
    let mut s = String::with_capacity(inference_id.len() + 2);
    push_str(&mut s, &inference_id);
    row.push(("inferenceId", Cow::Owned(s)));
    row.push(("output", Cow::Borrowed(root_output.unwrap_or("null"))));
    let mut s = String::new();
    push_f64(&mut s, latency_ms(root));
    row.push(("latency", Cow::Owned(s)));
    let mut s = String::new();
    if has_cost {
        push_f64(&mut s, cost)
    } else {
        s.push('0')
    }
    row.push(("cost", Cow::Owned(s)));
    let mut s = String::new();
    push_number(&mut s, tokens);
    row.push(("tokens", Cow::Owned(s)));
    // About 400 bytes of keys, ids and numbers per step, plus its inputs and output.
    let mut steps = String::with_capacity(st.text.len() + 400 * st.steps.len());
    steps.push('[');
    tree.write_step(&mut steps, 0, root_output);
    steps.push(']');
    row.push(("steps", Cow::Owned(steps)));
    for (k, v) in metadata_entries(root) {
        set_entry(&mut row, k, v);
    }
    for (k, v) in &st.columns {
        if k != "output" {
            set_entry(&mut row, k, Cow::Borrowed(&**v));
        }
    }
    if let Some(gt) = &root.ground_truth {
        set_entry(&mut row, "groundTruth", Cow::Borrowed(&**gt));
    }
    for (k, v) in &inputs {
        set_entry(&mut row, k, Cow::Borrowed(v.get()));
    }
    if let Some(c) = &st.context {
        set_entry(&mut row, "context", Cow::Borrowed(&**c));
    }
    if let Some(q) = &st.question {
        set_entry(&mut row, "_question", Cow::Borrowed(&**q));
    }

    let mut row_json = String::with_capacity(row.iter().map(|(k, v)| k.len() + v.len() + 4).sum());
    write_object(&mut row_json, &row);

    // The config, in wire order.
    let has = |key: &str| row.iter().any(|(k, _)| *k == key);
    let mut config = String::with_capacity(320);
    config.push_str("{\"outputColumnName\":\"output\",\"inputVariableNames\":[");
    for (i, (k, _)) in inputs.iter().enumerate() {
        if i > 0 {
            config.push(',');
        }
        push_str(&mut config, k);
    }
    config.push_str(
        "],\"latencyColumnName\":\"latency\",\"costColumnName\":\"cost\",\
         \"timestampColumnName\":\"inferenceTimestamp\",\"inferenceIdColumnName\":\"inferenceId\",\
         \"numOfTokenColumnName\":\"tokens\"",
    );
    for (column, key) in [
        ("user_id", "userIdColumnName"),
        ("session_id", "sessionIdColumnName"),
        ("groundTruth", "groundTruthColumnName"),
        ("context", "contextColumnName"),
        ("_question", "questionColumnName"),
    ] {
        if has(column) {
            let _ = write!(config, ",\"{key}\":\"{column}\"");
        }
    }
    config.push('}');

    Some(EncodedRow {
        pipeline_id: st.pipeline_id.clone(),
        config,
        row: row_json,
        inference_id,
    })
}

/// The body of a data-stream request: `{"config": ..., "rows": [...]}`.
pub(crate) fn request_body<'a>(config: &str, rows: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::with_capacity(config.len() + 64);
    out.push_str("{\"config\":");
    out.push_str(config);
    out.push_str(",\"rows\":[");
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(row);
    }
    out.push_str("]}");
    out
}

/// A line of the local trace file (and of the spool): a data-stream request body with
/// its pipeline id, `{"pipelineId": ..., "config": ..., "rows": [...]}`, without newline.
pub(crate) fn file_line<'a>(
    pipeline_id: Option<&str>,
    config: &str,
    rows: impl IntoIterator<Item = &'a str>,
) -> String {
    let body = request_body(config, rows);
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str("{\"pipelineId\":");
    match pipeline_id {
        Some(id) => push_str(&mut out, id),
        None => out.push_str("null"),
    }
    out.push(',');
    out.push_str(&body[1..]);
    out
}

/// A row on its way out of the process: encoded, shaped, its pipeline resolved.
#[derive(Debug, Clone)]
pub(crate) struct OutRow {
    /// The inference pipeline it goes to.
    pub pipeline: String,
    /// The compact JSON of the data-stream `config` object.
    pub config: String,
    /// The compact JSON of the row object.
    pub row: String,
    /// The row's `inferenceId`.
    pub inference_id: String,
}

impl OutRow {
    /// The row with its pipeline: the row's own, else `default`; `None` when neither is known.
    pub(crate) fn resolve(row: EncodedRow, default: Option<&str>) -> Option<OutRow> {
        let pipeline = match row.pipeline_id {
            Some(p) => p.into_owned(),
            None => default?.to_string(),
        };
        Some(OutRow {
            pipeline,
            config: row.config,
            row: row.row,
            inference_id: row.inference_id,
        })
    }

    /// Its line in the spool (and the local trace file's format), with the newline.
    pub(crate) fn spool_line(&self) -> String {
        let mut line = file_line(Some(&self.pipeline), &self.config, [self.row.as_str()]);
        line.push('\n');
        line
    }

    /// Bytes it takes in a request body.
    pub(crate) fn size(&self) -> usize {
        self.row.len() + 1
    }

    /// Heap bytes its strings hold (see `pipeline::heap_bytes`), plus its own size.
    pub(crate) fn held_bytes(&self) -> usize {
        use crate::pipeline::heap_bytes;
        size_of::<OutRow>()
            + heap_bytes(self.pipeline.capacity())
            + heap_bytes(self.config.capacity())
            + heap_bytes(self.row.capacity())
            + heap_bytes(self.inference_id.capacity())
    }
}

/// A row update on its way out of the process (see `crate::update_row`).
#[derive(Debug, Clone)]
pub(crate) struct OutUpdate {
    /// The inference pipeline of the row; `None` for the configured default.
    pub pipeline: Option<String>,
    /// The `inferenceId` of the row to update.
    pub inference_id: String,
    /// The compact JSON of the columns to set (an object).
    pub row: String,
    /// The compact JSON of the row-update config, when there is one.
    pub config: Option<String>,
}

impl OutUpdate {
    /// The body of `PUT .../rows?inferenceId=..`: `{"row": ..., "config": ...}`, `config`
    /// omitted when there is none.
    pub(crate) fn request_body(&self) -> String {
        update_body(&self.row, self.config.as_deref())
    }

    /// Its line in the local trace file and the spool, without the newline:
    /// `{"pipelineId": .., "inferenceId": .., "row": .., "config": ..}`.
    pub(crate) fn file_line(&self, default_pipeline: Option<&str>) -> String {
        let mut out = String::with_capacity(self.row.len() + 96);
        out.push_str("{\"pipelineId\":");
        match self.pipeline.as_deref().or(default_pipeline) {
            Some(id) => push_str(&mut out, id),
            None => out.push_str("null"),
        }
        out.push_str(",\"inferenceId\":");
        push_str(&mut out, &self.inference_id);
        out.push_str(",\"row\":");
        out.push_str(&self.row);
        if let Some(config) = &self.config {
            out.push_str(",\"config\":");
            out.push_str(config);
        }
        out.push('}');
        out
    }

    /// Bytes it holds in memory (its strings, as the allocator hands them out, and its
    /// own size): what it counts in the memory budget.
    pub(crate) fn size(&self) -> usize {
        use crate::pipeline::heap_bytes;
        size_of::<OutUpdate>()
            + heap_bytes(self.pipeline.as_ref().map_or(0, String::capacity))
            + heap_bytes(self.inference_id.capacity())
            + heap_bytes(self.row.capacity())
            + heap_bytes(self.config.as_ref().map_or(0, String::capacity))
    }
}

/// The body of a row update: `{"row": ..., "config": ...}`, `config` omitted when `None`.
pub(crate) fn update_body(row: &str, config: Option<&str>) -> String {
    let mut out = String::with_capacity(row.len() + config.map_or(0, str::len) + 24);
    out.push_str("{\"row\":");
    out.push_str(row);
    if let Some(config) = config {
        out.push_str(",\"config\":");
        out.push_str(config);
    }
    out.push('}');
    out
}
