//! Wire encoding: a completed trace becomes one data-stream row and its config, exactly as
//! the official SDKs send them (see the crate docs for the format). Runs off the
//! application's threads, in the background worker.
//!
//! It owns the row writer, the step tree's (`steps`), JSON scanning (`scan`), the row policy
//! (`row_policy`: sampling, mask and field budget) and the request and file-line framing.
//! It may import from `util/`, `record/`, `config.rs` and `report.rs`.

pub(crate) mod row_policy;
pub(crate) mod scan;
mod steps;
pub(crate) mod tree_view;

use std::borrow::Cow;
use std::cell::Cell;

use crate::record::row_update::RowUpdate;
use crate::record::{CompletedTrace, Status};
use crate::util::json::push_str;
use crate::util::text_inputs::{Fields, is_text_inputs, write_json_fields};
use smallvec::SmallVec;

use scan::borrowed_entries;
use steps::{RootParts, Tree, latency_ms, number, push_f64, push_number, step_tokens, unix_secs};

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

/// A value of the row: JSON text of the trace, bytes of the encoder's scratch, or the
/// step tree (written in place).
#[derive(Clone, Copy)]
enum Val<'a> {
    Text(&'a str),
    Scratch(usize, usize),
    Steps,
}

/// How a column's key is written.
#[derive(Clone, Copy)]
enum KeyText<'a> {
    /// One of ours, known to need no escaping.
    Ours,
    /// Escaped as it is written.
    Escape,
    /// Already a JSON string (quoted and escaped), written as it is.
    Quoted(&'a str),
}

/// A column of the row: its key (not escaped), its value, and how the key is written.
type Column<'a> = (&'a str, Val<'a>, KeyText<'a>);

/// The row's columns, in wire order: [`FIXED`] first, then the others as they are set.
/// A row has a few columns, so they are kept inline.
type Columns<'a> = SmallVec<[Column<'a>; 16]>;

/// The columns every row starts with, in wire order (see [`fixed_column`]).
const FIXED: [&str; 7] = [
    "inferenceTimestamp",
    "inferenceId",
    "output",
    "latency",
    "cost",
    "tokens",
    "steps",
];

/// Where `key` is among the [`FIXED`] columns.
#[inline]
fn fixed_column(key: &str) -> Option<usize> {
    Some(match key {
        "inferenceTimestamp" => 0,
        "inferenceId" => 1,
        "output" => 2,
        "latency" => 3,
        "cost" => 4,
        "tokens" => 5,
        "steps" => 6,
        _ => return None,
    })
}

/// Sets a row column; a later key replaces an earlier one in place. The [`FIXED`]
/// columns are at their index, so only the columns after them are searched.
fn set_val<'a>(row: &mut Columns<'a>, key: &'a str, value: Val<'a>) {
    set_column(row, key, KeyText::Escape, value);
}

/// [`set_val`], with how a new column's key is written.
fn set_column<'a>(row: &mut Columns<'a>, key: &'a str, text: KeyText<'a>, value: Val<'a>) {
    debug_assert!(row.len() >= FIXED.len());
    let slot = match fixed_column(key) {
        Some(i) => row.get_mut(i),
        None => row.iter_mut().skip(FIXED.len()).find(|(k, _, _)| *k == key),
    };
    match slot {
        Some(slot) => slot.1 = value,
        None => row.push((key, value, text)),
    }
}

/// The root's input fields, the row's columns: key, how it is written, value.
type InputColumns<'a> = SmallVec<[(Cow<'a, str>, KeyText<'a>, &'a str); 8]>;

/// The config's optional column names: the row's column, and the config key naming it.
const NAMED_COLUMNS: [(&str, &str); 5] = [
    ("user_id", "userIdColumnName"),
    ("session_id", "sessionIdColumnName"),
    ("groundTruth", "groundTruthColumnName"),
    ("context", "contextColumnName"),
    ("_question", "questionColumnName"),
];

/// The config, in wire order: the input variables (written by `inputs`, comma-separated),
/// the fixed columns' names (of those the row has, by `has`), and the named columns the
/// row has (`named`, bits of [`NAMED_COLUMNS`]).
fn push_config(
    config: &mut String,
    inputs: impl FnOnce(&mut String),
    named: u8,
    has: impl Fn(&str) -> bool,
) {
    config.push('{');
    if has("output") {
        config.push_str("\"outputColumnName\":\"output\",");
    }
    config.push_str("\"inputVariableNames\":[");
    inputs(config);
    config.push(']');
    // The fixed columns' names, each when the row has it (an encoded row always has
    // them all; a mask may have removed one).
    for (column, key) in [
        ("latency", "latencyColumnName"),
        ("cost", "costColumnName"),
        ("inferenceTimestamp", "timestampColumnName"),
        ("inferenceId", "inferenceIdColumnName"),
        ("tokens", "numOfTokenColumnName"),
    ] {
        if has(column) {
            config.push_str(",\"");
            config.push_str(key);
            config.push_str("\":\"");
            config.push_str(column);
            config.push('"');
        }
    }
    for (bit, (column, key)) in NAMED_COLUMNS.iter().enumerate() {
        if named & (1 << bit) != 0 {
            config.push_str(",\"");
            config.push_str(key);
            config.push_str("\":\"");
            config.push_str(column);
            config.push('"');
        }
    }
    config.push('}');
}

/// The config of a row that a mask changed (`row`, its JSON): the input variables and
/// fixed columns it no longer has are left out, and the named columns
/// (`userIdColumnName`, ...) are those it has now, so that the config never names a
/// column the row lacks. `None` when the row
/// or the config cannot be read.
pub(crate) fn reconcile_config(config: &str, row: &str) -> Option<String> {
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Inputs {
        input_variable_names: Vec<String>,
    }
    let inputs: Inputs = serde_json::from_str(config).ok()?;
    let mut de = serde_json::Deserializer::from_str(row);
    de.disable_recursion_limit();
    let columns = std::collections::HashMap::<String, IgnoredAny>::deserialize(&mut de).ok()?;
    let mut named = 0;
    for (bit, (column, _)) in NAMED_COLUMNS.iter().enumerate() {
        if columns.contains_key(*column) {
            named |= 1 << bit;
        }
    }
    let mut out = String::with_capacity(config.len());
    push_config(
        &mut out,
        |out| {
            let kept = inputs
                .input_variable_names
                .iter()
                .filter(|k| columns.contains_key(k.as_str()));
            for (i, k) in kept.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, k);
            }
        },
        named,
        |column| columns.contains_key(column),
    );
    Some(out)
}

/// Which of [`NAMED_COLUMNS`] the row has, as bits. None of them is a [`FIXED`] column,
/// so only the columns set after those are looked at.
fn named_columns(row: &Columns<'_>) -> u8 {
    let mut bits = 0;
    for (k, _, _) in row.iter().skip(FIXED.len()) {
        bits |= match *k {
            "user_id" => 1,
            "session_id" => 2,
            "groundTruth" => 4,
            "context" => 8,
            "_question" => 16,
            _ => 0,
        };
    }
    bits
}

/// Buffers the encoder reuses from one trace to the next (per thread).
#[derive(Default)]
struct Scratch {
    /// Small JSON texts made for the row (numbers, the quoted inference id, errors).
    small: String,
    first_child: Vec<u32>,
    next_sibling: Vec<u32>,
    /// The stack of open steps while the tree is written.
    open: Vec<(usize, u32)>,
    row: String,
    config: String,
    /// The root's inputs as JSON, when they were kept as text.
    inputs: String,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::default();
}

/// The largest row the per-thread buffers keep between traces.
const SCRATCH_KEEP: usize = 256 * 1024;

/// One encoded trace, borrowed from the encoder's buffers (see [`encode_with`]).
pub(crate) struct RowParts<'a> {
    /// The inference pipeline of a `#[trace(inference_pipeline_id = ...)]` root, if any.
    pub pipeline_id: Option<&'a Cow<'static, str>>,
    /// The compact JSON of the data-stream `config` object.
    pub config: &'a str,
    /// The compact JSON of the row object.
    pub row: &'a str,
    /// The row's `inferenceId`.
    pub inference_id: &'a str,
}

/// Encodes a completed trace as a data-stream row and config.
pub(crate) fn encode(trace: &CompletedTrace) -> Option<EncodedRow> {
    encode_with(trace, |parts| EncodedRow {
        pipeline_id: parts.pipeline_id.cloned(),
        config: parts.config.to_string(),
        row: parts.row.to_string(),
        inference_id: parts.inference_id.to_string(),
    })
}

/// Encodes a completed trace into this thread's reusable buffers and hands the parts to
/// `f`; `None` (and `f` not called) for a trace without steps.
pub(crate) fn encode_with<R>(
    trace: &CompletedTrace,
    f: impl FnOnce(RowParts<'_>) -> R,
) -> Option<R> {
    // Taken out while in use: a nested call (there is none) would get fresh buffers.
    let mut scratch = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let r = encode_into(trace, &mut scratch, f);
    if scratch.row.capacity() <= SCRATCH_KEEP && scratch.inputs.capacity() <= SCRATCH_KEEP {
        let _ = SCRATCH.try_with(|c| c.set(scratch));
    }
    r
}

fn encode_into<R>(
    trace: &CompletedTrace,
    scratch: &mut Scratch,
    f: impl FnOnce(RowParts<'_>) -> R,
) -> Option<R> {
    let Scratch {
        small,
        first_child,
        next_sibling,
        open,
        row: row_json,
        config,
        inputs: inputs_json,
    } = scratch;
    small.clear();
    row_json.clear();
    config.clear();
    inputs_json.clear();
    let st = &trace.state;
    let root = trace.root()?;
    let tree = Tree::new(trace, first_child, next_sibling);
    // The root's inputs as JSON, and their fields (the row's columns): inputs kept as text
    // are encoded here, listing their fields as they go; JSON inputs are split.
    // Each field: its key, the key's JSON string when the encoding made it, its value.
    let mut fields = Fields::new();
    let (root_inputs, inputs): (Option<&str>, InputColumns<'_>) = match st.text(root.inputs) {
        Some(text) if is_text_inputs(text) => {
            if write_json_fields(text, inputs_json, Some(&mut fields)) {
                let json: &str = inputs_json;
                let entries = fields
                    .iter()
                    .map(|f| {
                        (
                            Cow::Borrowed(f.key),
                            KeyText::Quoted(&json[f.quoted_key.clone()]),
                            &json[f.value.clone()],
                        )
                    })
                    .collect();
                (Some(json), entries)
            } else {
                debug_assert!(false, "malformed text inputs: {text:?}");
                (None, SmallVec::new())
            }
        }
        Some(json) => (
            Some(json),
            borrowed_entries(json)
                .into_iter()
                .map(|(k, v)| (k, KeyText::Escape, v))
                .collect(),
        ),
        None => (None, SmallVec::new()),
    };

    // Small values go into `small`, each remembered by its range.
    let put = |small: &mut String, write: &dyn Fn(&mut String)| {
        let start = small.len();
        write(small);
        (start, small.len())
    };
    // The root's id, quoted (it needs no escaping): the step tree's root `id`, and the
    // inference id unless the trace has its own.
    let root_id = put(small, &|s: &mut String| {
        s.push('"');
        crate::util::id::push_uuid_v4(s, root.id);
        s.push('"');
    });
    // A trace-level `output` (`update_current_trace!(output = ..)`) is the row's `output`
    // column; the root step in `steps` keeps its own (the official SDK: trace keys are row columns,
    // and a failed step's output is null).
    let trace_output = st
        .columns()
        .iter()
        .find(|(k, _)| k == "output")
        .map(|(_, v)| &**v);
    // A cancelled root keeps what it produced before it stopped (a stream dropped early).
    let root_output = if matches!(root.status, Status::Ok | Status::Cancelled) {
        st.output(root)
    } else {
        None
    };
    let row_output = trace_output.or(root_output);

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

    let scratch_val = |(a, b): (usize, usize)| Val::Scratch(a, b);
    // The row, in wire order (`FIXED` first); a later key replaces an earlier one in place.
    let mut row: Columns<'_> = SmallVec::new();
    let at = unix_secs(trace.anchor_unix_ns, root.start);
    let start = put(small, &|s: &mut String| push_f64(s, at));
    row.push(("inferenceTimestamp", scratch_val(start), KeyText::Ours));
    let quoted_id = match &st.inference_id {
        Some(id) => scratch_val(put(small, &|s: &mut String| push_str(s, id))),
        None => scratch_val(root_id),
    };
    row.push(("inferenceId", quoted_id, KeyText::Ours));
    row.push((
        "output",
        Val::Text(row_output.unwrap_or("null")),
        KeyText::Ours,
    ));
    let latency = latency_ms(root);
    let latency = put(small, &|s: &mut String| push_f64(s, latency));
    row.push(("latency", scratch_val(latency), KeyText::Ours));
    let cost = put(small, &|s: &mut String| {
        if has_cost {
            push_f64(s, cost)
        } else {
            s.push('0')
        }
    });
    row.push(("cost", scratch_val(cost), KeyText::Ours));
    let tokens = put(small, &|s: &mut String| push_number(s, tokens));
    row.push(("tokens", scratch_val(tokens), KeyText::Ours));
    row.push(("steps", Val::Steps, KeyText::Ours));
    debug_assert!(row.iter().map(|(k, _, _)| *k).eq(FIXED));
    // The root's metadata, in the order of `metadata_entries`.
    if root.traced_fn {
        set_val(&mut row, "has_guardrails", Val::Text("false"));
    }
    for (k, v) in root.metadata() {
        set_val(&mut row, k, Val::Text(v));
    }
    if let Some(err) = root.error() {
        let quoted = put(small, &|s: &mut String| push_str(s, err));
        set_val(&mut row, "Exceptions", scratch_val(quoted));
    }
    // Trace keys after the root's metadata (a trace-level `output` included): they win.
    for (k, v) in st.columns() {
        set_val(&mut row, k, Val::Text(v));
    }
    if let Some(gt) = root.ground_truth() {
        set_val(&mut row, "groundTruth", Val::Text(gt));
    }
    for (k, text, v) in &inputs {
        set_column(&mut row, k, *text, Val::Text(v));
    }
    if let Some(c) = st.context() {
        set_val(&mut row, "context", Val::Text(c));
    }
    if let Some(q) = st.question() {
        set_val(&mut row, "_question", Val::Text(q));
    }

    let small: &str = small;
    let root_parts = RootParts {
        output: root_output,
        inputs: root_inputs,
        id: &small[root_id.0 + 1..root_id.1 - 1],
        latency: &small[latency.0..latency.1],
        start: &small[start.0..start.1],
    };
    // About 400 bytes of keys, ids and numbers per step, plus its inputs and output.
    row_json.reserve(st.text.len() + 400 * st.steps.len() + small.len() + 64);
    row_json.push('{');
    for (i, (k, v, text)) in row.iter().enumerate() {
        if i > 0 {
            row_json.push(',');
        }
        match text {
            KeyText::Ours => {
                row_json.push('"');
                row_json.push_str(k);
                row_json.push('"');
            }
            KeyText::Escape => push_str(row_json, k),
            KeyText::Quoted(quoted) => row_json.push_str(quoted),
        }
        row_json.push(':');
        match *v {
            Val::Text(t) => row_json.push_str(t),
            Val::Scratch(a, b) => row_json.push_str(&small[a..b]),
            Val::Steps => {
                row_json.push('[');
                tree.write_tree(row_json, root_parts, open);
                row_json.push(']');
            }
        }
    }
    row_json.push('}');

    // The config, in wire order.
    push_config(
        config,
        |config| {
            // Each name once, though the inputs name it twice (the row's column holds
            // the last value).
            let mut seen: Option<std::collections::HashSet<&str>> =
                (inputs.len() > 32).then(std::collections::HashSet::new);
            let mut listed = 0;
            for (i, (k, text, _)) in inputs.iter().enumerate() {
                let repeated = match &mut seen {
                    Some(seen) => !seen.insert(&**k),
                    None => inputs[..i].iter().any(|(e, _, _)| e == k),
                };
                if repeated {
                    continue;
                }
                if listed > 0 {
                    config.push(',');
                }
                listed += 1;
                match text {
                    KeyText::Quoted(quoted) => config.push_str(quoted),
                    _ => push_str(config, k),
                }
            }
        },
        named_columns(&row),
        |_| true,
    );

    let inference_id = match &st.inference_id {
        Some(id) => &**id,
        None => root_parts.id,
    };
    Some(f(RowParts {
        pipeline_id: st.pipeline_id(),
        config,
        row: row_json,
        inference_id,
    }))
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
    let mut out = String::new();
    push_file_line(&mut out, pipeline_id, config, rows);
    out
}

/// Appends [`file_line`] to `out`, without newline.
pub(crate) fn push_file_line<'a>(
    out: &mut String,
    pipeline_id: Option<&str>,
    config: &str,
    rows: impl IntoIterator<Item = &'a str>,
) {
    let rows = rows.into_iter();
    out.reserve(config.len() + 96);
    out.push_str("{\"pipelineId\":");
    match pipeline_id {
        Some(id) => push_str(out, id),
        None => out.push_str("null"),
    }
    out.push_str(",\"config\":");
    out.push_str(config);
    out.push_str(",\"rows\":[");
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(row);
    }
    out.push_str("]}");
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
        use crate::util::heap::heap_bytes;
        size_of::<OutRow>()
            + heap_bytes(self.pipeline.capacity())
            + heap_bytes(self.config.capacity())
            + heap_bytes(self.row.capacity())
            + heap_bytes(self.inference_id.capacity())
    }
}

impl RowUpdate {
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

#[cfg(test)]
mod tests;
