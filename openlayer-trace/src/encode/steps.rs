//! The step tree of a row: each step's JSON object, its children nested in start order,
//! and the numbers and metadata every step carries.

use std::borrow::Cow;

use crate::record::{CompletedTrace, NO_PARENT, Status, StepRecord};
use crate::util::json::push_str;

pub(super) fn push_f64(out: &mut String, v: f64) {
    // `f64`'s shortest round-trip form, with a `.0` for whole numbers (as Python prints).
    if !v.is_finite() || crate::record::write_json(out, &v).is_err() {
        out.push_str("null");
    }
}

/// Seconds since the epoch of an offset from the trace's anchor.
pub(super) fn unix_secs(anchor_unix_ns: i128, offset_ns: i64) -> f64 {
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

pub(super) fn latency_ms(rec: &StepRecord) -> f64 {
    rec.end.saturating_sub(rec.start).max(0) as f64 / 1e6
}

/// A number out of a JSON text (`null` and non-numbers give `None`).
pub(super) fn number(json: Option<&str>) -> Option<f64> {
    json.and_then(|j| j.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// The tokens of a step: its `tokens`, else prompt + completion tokens.
pub(super) fn step_tokens(rec: &StepRecord) -> Option<f64> {
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
pub(super) struct Tree<'a> {
    trace: &'a CompletedTrace,
    first_child: &'a [u32],
    next_sibling: &'a [u32],
}

/// No child, no next sibling.
const NONE: u32 = u32::MAX;

/// The root step's values as the encoder made them for the row (before any column of the
/// user's replaced one), formatted once and written again in the step tree.
#[derive(Clone, Copy)]
pub(super) struct RootParts<'r> {
    /// The root's output and inputs, as JSON.
    pub(super) output: Option<&'r str>,
    pub(super) inputs: Option<&'r str>,
    /// The root's id, as a UUID without quotes (also the inference id, unless the trace
    /// has its own).
    pub(super) id: &'r str,
    /// Its latency and start time, as made for the row's `latency` and
    /// `inferenceTimestamp`.
    pub(super) latency: &'r str,
    pub(super) start: &'r str,
}

impl<'a> Tree<'a> {
    /// Links the steps of `trace`, in `first_child` and `next_sibling` (reused buffers).
    pub(super) fn new(
        trace: &'a CompletedTrace,
        first_child: &'a mut Vec<u32>,
        next_sibling: &'a mut Vec<u32>,
    ) -> Self {
        let n = trace.state.steps.len();
        first_child.clear();
        first_child.resize(n, NONE);
        next_sibling.clear();
        next_sibling.resize(n, NONE);
        // Backwards, so that each list comes out in start order: steps are recorded as
        // they start, so each goes first in its list, save one recorded after it started
        // (a model call added with its start back-dated), which goes to its place.
        // Equal starts keep the order of recording.
        let steps = &trace.state.steps;
        let parent_of = |i: usize| {
            let rec = &steps[i];
            let p = if rec.parent == NO_PARENT {
                0
            } else {
                rec.parent as usize
            };
            (p < n && p != i).then_some(p)
        };
        // Steps passed over by those recorded out of order: past a few per step (many
        // back-dated steps in descending order), the lists are made by sorting instead,
        // so that the work stays O(n log n).
        let mut walked = 0usize;
        let mut sorted = false;
        for i in (1..n).rev() {
            let Some(p) = parent_of(i) else { continue };
            let rec = &steps[i];
            let head = first_child[p];
            if head == NONE || rec.start <= steps[head as usize].start {
                next_sibling[i] = head;
                first_child[p] = i as u32;
            } else {
                let mut prev = head as usize;
                while next_sibling[prev] != NONE
                    && steps[next_sibling[prev] as usize].start < rec.start
                {
                    prev = next_sibling[prev] as usize;
                    walked += 1;
                }
                next_sibling[i] = next_sibling[prev];
                next_sibling[prev] = i as u32;
                if walked > 8 * n {
                    sorted = true;
                    break;
                }
            }
        }
        if sorted {
            first_child.fill(NONE);
            next_sibling.fill(NONE);
            let mut order: Vec<(usize, i64, usize)> = (1..n)
                .filter_map(|i| parent_of(i).map(|p| (p, steps[i].start, i)))
                .collect();
            order.sort_unstable();
            for &(p, _, i) in order.iter().rev() {
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
    pub(super) fn write_tree(
        &self,
        out: &mut String,
        root: RootParts<'_>,
        open: &mut Vec<(usize, u32)>,
    ) {
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
            // A failed step's output is null (as the official SDK sends it), as the root's is, even when one
            // was logged before it failed.
            None if matches!(rec.status, Status::Ok | Status::Cancelled) => {
                self.trace.state.output(rec)
            }
            None => None,
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
pub(super) fn push_number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        push_int(out, v as i64);
    } else {
        push_f64(out, v);
    }
}

/// An integer in decimal, as `Display` writes it.
pub(super) fn push_int(out: &mut String, v: i64) {
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
pub(super) fn metadata_entries(rec: &StepRecord) -> Vec<(&str, Cow<'_, str>)> {
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

pub(super) fn write_object(out: &mut String, entries: &[(&str, Cow<'_, str>)]) {
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
pub(super) fn write_metadata(out: &mut String, rec: &StepRecord) {
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
