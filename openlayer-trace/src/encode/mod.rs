//! Wire encoding: a completed trace becomes one data-stream row and its config, exactly as
//! the official SDKs send them (see the crate docs for the format). Runs off the
//! application's threads, in the background worker.
//!
//! It owns the row and step-tree writers, JSON scanning (`scan`), the row policy
//! (`row_policy`: sampling, mask and field budget) and the request and file-line framing.
//! It may import from `util/`, `record/`, `config.rs` and `report.rs`.

pub(crate) mod row_policy;
pub(crate) mod scan;
pub(crate) mod tree_view;

use std::borrow::Cow;
use std::cell::Cell;

use crate::record::row_update::RowUpdate;
use crate::record::{CompletedTrace, NO_PARENT, Status, StepRecord};
use crate::util::json::push_str;
use crate::util::text_inputs::{Fields, is_text_inputs, write_json_fields};
use smallvec::SmallVec;

use scan::borrowed_entries;

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

fn push_f64(out: &mut String, v: f64) {
    // `f64`'s shortest round-trip form, with a `.0` for whole numbers (as Python prints).
    if !v.is_finite() || crate::record::write_json(out, &v).is_err() {
        out.push_str("null");
    }
}

/// Seconds since the epoch of an offset from the trace's anchor.
fn unix_secs(anchor_unix_ns: i128, offset_ns: i64) -> f64 {
    // The same `f64` either way (the exact integer, rounded once); from 64 bits the
    // conversion is one instruction, from 128 a library call.
    match i64::try_from(anchor_unix_ns)
        .ok()
        .and_then(|a| a.checked_add(offset_ns))
    {
        Some(ns) => ns as f64 / 1e9,
        None => (anchor_unix_ns + offset_ns as i128) as f64 / 1e9,
    }
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

/// The step tree of a trace: children of each step in start order, as linked lists over
/// the step indices (no list per step).
struct Tree<'a> {
    trace: &'a CompletedTrace,
    first_child: &'a [u32],
    next_sibling: &'a [u32],
}

/// No child, no next sibling.
const NONE: u32 = u32::MAX;

/// The root step's values as the encoder made them for the row (before any column of the
/// user's replaced one), formatted once and written again in the step tree.
#[derive(Clone, Copy)]
struct RootParts<'r> {
    /// The root's output and inputs, as JSON.
    output: Option<&'r str>,
    inputs: Option<&'r str>,
    /// The root's id, as a UUID without quotes (also the inference id, unless the trace
    /// has its own).
    id: &'r str,
    /// Its latency and start time, as made for the row's `latency` and
    /// `inferenceTimestamp`.
    latency: &'r str,
    start: &'r str,
}

impl<'a> Tree<'a> {
    /// Links the steps of `trace`, in `first_child` and `next_sibling` (reused buffers).
    fn new(
        trace: &'a CompletedTrace,
        first_child: &'a mut Vec<u32>,
        next_sibling: &'a mut Vec<u32>,
    ) -> Self {
        let n = trace.state.steps.len();
        first_child.clear();
        first_child.resize(n, NONE);
        next_sibling.clear();
        next_sibling.resize(n, NONE);
        // Backwards, so that each list comes out in start order.
        for (i, rec) in trace.state.steps.iter().enumerate().skip(1).rev() {
            let p = if rec.parent == NO_PARENT {
                0
            } else {
                rec.parent as usize
            };
            if p < n && p != i {
                next_sibling[i] = first_child[p];
                first_child[p] = i as u32;
            }
        }
        Tree {
            trace,
            first_child,
            next_sibling,
        }
    }

    /// Writes the root step and its subtree. Iterative (an explicit stack of open steps,
    /// `open`, a reused buffer), so that a tree of any depth cannot overflow the thread's
    /// stack. What the row wrote of the root is given, and copied.
    fn write_tree(&self, out: &mut String, root: RootParts<'_>, open: &mut Vec<(usize, u32)>) {
        let idx = 0;
        self.write_head(out, idx, Some(root));
        // Each open step, and the next child of it to write.
        open.clear();
        open.push((idx, self.first_child[idx]));
        while let Some(top) = open.last_mut() {
            let (i, next) = *top;
            if next == NONE {
                // Only the root has index 0 (children are linked from index 1 on).
                self.write_tail(out, i, (i == 0).then_some(&root));
                open.pop();
                continue;
            }
            top.1 = self.next_sibling[next as usize];
            if next != self.first_child[i] {
                out.push(',');
            }
            let child = next as usize;
            self.write_head(out, child, None);
            open.push((child, self.first_child[child]));
        }
    }

    /// A step's fields up to its children: `{"name":..,...,"steps":[`. `root`: what the
    /// row wrote of the root, when `idx` is the root.
    fn write_head(&self, out: &mut String, idx: usize, root: Option<RootParts<'_>>) {
        let rec = &self.trace.state.steps[idx];
        out.push_str("{\"name\":");
        push_str(out, &rec.name);
        out.push_str(",\"id\":\"");
        match root {
            Some(root) => out.push_str(root.id),
            None => crate::util::id::push_uuid_v4(out, rec.id),
        }
        out.push_str("\",\"type\":\"");
        out.push_str(rec.kind.as_str());
        out.push_str("\",\"inputs\":");
        match root {
            Some(root) => out.push_str(root.inputs.unwrap_or("null")),
            None => {
                if !self.trace.state.write_inputs(rec, out) {
                    out.push_str("null");
                }
            }
        }
        out.push_str(",\"output\":");
        let output = match root {
            Some(root) => root.output,
            None => self.trace.state.output(rec),
        };
        out.push_str(output.unwrap_or("null"));
        out.push_str(",\"groundTruth\":");
        out.push_str(rec.ground_truth().unwrap_or("null"));
        out.push_str(",\"metadata\":");
        write_metadata(out, rec);
        out.push_str(",\"steps\":[");
    }

    /// A step's fields after its children: `],"latency":..}`. `root`: what the row wrote
    /// of the root, when `idx` is the root.
    fn write_tail(&self, out: &mut String, idx: usize, root: Option<&RootParts<'_>>) {
        let rec = &self.trace.state.steps[idx];
        out.push_str("],\"latency\":");
        match root {
            Some(root) => out.push_str(root.latency),
            None => push_f64(out, latency_ms(rec)),
        }
        out.push_str(",\"startTime\":");
        match root {
            Some(root) => out.push_str(root.start),
            None => push_f64(out, unix_secs(self.trace.anchor_unix_ns, rec.start)),
        }
        out.push_str(",\"endTime\":");
        push_f64(out, unix_secs(self.trace.anchor_unix_ns, rec.end));
        let fields = rec.kind.fields();
        let tokens = if fields.contains(&"tokens") {
            step_tokens(rec)
        } else {
            None
        };
        for field in fields {
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
        push_int(out, v as i64);
    } else {
        push_f64(out, v);
    }
}

/// An integer in decimal, as `Display` writes it.
fn push_int(out: &mut String, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// The metadata of a step, in order: `has_guardrails` (traced functions), the user's keys,
/// then `Exceptions` for a failed step; a later key replaces an earlier one in place.
fn metadata_entries(rec: &StepRecord) -> Vec<(&str, Cow<'_, str>)> {
    let mut entries: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(rec.metadata().len() + 2);
    if rec.traced_fn {
        entries.push(("has_guardrails", Cow::Borrowed("false")));
    }
    for (k, v) in rec.metadata() {
        set_entry(&mut entries, k, Cow::Borrowed(&**v));
    }
    if let Some(err) = rec.error() {
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

/// Writes a step's metadata object (see [`metadata_entries`] for the order).
fn write_metadata(out: &mut String, rec: &StepRecord) {
    let md = rec.metadata();
    // The user's keys are set with "last write wins", so they are distinct; if they were
    // not, the general path merges them.
    let distinct = md.len() < 2
        || md
            .iter()
            .enumerate()
            .all(|(i, (k, _))| md[..i].iter().all(|(e, _)| e != k));
    if !distinct {
        return write_object(out, &metadata_entries(rec));
    }
    // The same entries, written directly: `has_guardrails` first (the user's value when
    // set), the user's keys in order, `Exceptions` in the user's place or last.
    let user = |name: &str| md.iter().find(|(k, _)| k == name).map(|(_, v)| &**v);
    out.push('{');
    if rec.traced_fn {
        out.push_str("\"has_guardrails\":");
        out.push_str(user("has_guardrails").unwrap_or("false"));
    }
    let mut first = !rec.traced_fn;
    let mut key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_str(out, k);
        out.push(':');
    };
    for (k, v) in md {
        if rec.traced_fn && k == "has_guardrails" {
            continue;
        }
        key(out, k);
        match rec.error() {
            Some(err) if k == "Exceptions" => push_str(out, err),
            _ => out.push_str(v),
        }
    }
    if let Some(err) = rec.error()
        && user("Exceptions").is_none()
    {
        key(out, "Exceptions");
        push_str(out, err);
    }
    out.push('}');
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
    // A trace-level `output` (`update_current_trace!(output = ..)`) replaces the root's output
    // everywhere.
    let trace_output = st
        .columns()
        .iter()
        .find(|(k, _)| k == "output")
        .map(|(_, v)| &**v);
    // A cancelled root keeps what it produced before it stopped (a stream dropped early).
    let root_output =
        if matches!(root.status, Status::Ok | Status::Cancelled) || trace_output.is_some() {
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
        Val::Text(root_output.unwrap_or("null")),
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
    for (k, v) in st.columns() {
        if k != "output" {
            set_val(&mut row, k, Val::Text(v));
        }
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
    config.push_str("{\"outputColumnName\":\"output\",\"inputVariableNames\":[");
    for (i, (k, text, _)) in inputs.iter().enumerate() {
        if i > 0 {
            config.push(',');
        }
        match text {
            KeyText::Quoted(quoted) => config.push_str(quoted),
            _ => push_str(config, k),
        }
    }
    config.push_str(
        "],\"latencyColumnName\":\"latency\",\"costColumnName\":\"cost\",\
         \"timestampColumnName\":\"inferenceTimestamp\",\"inferenceIdColumnName\":\"inferenceId\",\
         \"numOfTokenColumnName\":\"tokens\"",
    );
    let named = named_columns(&row);
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
