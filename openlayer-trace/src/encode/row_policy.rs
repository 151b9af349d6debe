//! What happens to a row between encoding and leaving the process: sampling (decided on
//! the inference id), the masking hook, and the per-field size budget.
//!
//! Runs in the background worker (or, in write-ahead mode, on the thread that completed
//! the trace), never in a traced call. Masking and the budget re-serialize the row only
//! when configured; keys keep their order, and values the mask did not change keep their
//! exact text.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::config::{Config, MaskFn};
use crate::encode::{self, EncodedRow};
use crate::record::CompletedTrace;
use crate::report::{Counters, DropReason};

/// Sampling, masking and the field budget of one configuration.
#[derive(Clone)]
pub(crate) struct Shaper {
    sample_rate: f64,
    mask: Option<MaskFn>,
    budget: Option<usize>,
    /// The most bytes of a request (`batch_max_bytes`): a row that a request could not
    /// carry has its longest values cut until it fits.
    max_request: usize,
}

impl fmt::Debug for Shaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shaper")
            .field("sample_rate", &self.sample_rate)
            .field("mask", &self.mask.as_ref().map(|_| "Fn"))
            .field("budget", &self.budget)
            .field("max_request", &self.max_request)
            .finish()
    }
}

/// The outcome of preparing one trace.
#[derive(Debug)]
pub(crate) enum Prepared<T = EncodedRow> {
    /// Encoded, masked and within budget: ready to leave the process.
    Row(T),
    /// Not kept by the sample rate (counted as `sampled_out`).
    SampledOut,
    /// Encoding or the mask failed (counted as dropped, `encoding`).
    Failed,
    /// Nests too deep to be masked or cut on this thread's stack (see
    /// [`shape_on_big_stack`]), or is too large for a request and is to be cut on a
    /// worker (see [`Shaper::cut_to_fit`]): to be prepared on a worker thread, where it is
    /// dropped (counted) only when it nests deeper than [`WORKER_SHAPE_DEPTH`].
    TooDeep,
}

/// The bytes of a request body besides its config and rows (`{"config":,"rows":[]}` and
/// some to spare), as the exporter counts them.
pub(crate) const BODY_OVERHEAD: usize = 24;

/// What one row adds to a request body besides its config: its comma, and the body's own
/// bytes. A row that fits with it fits in a request of its own.
const ROW_OVERHEAD: usize = BODY_OVERHEAD + 1;

/// The smallest byte budget a row too large for a request is cut to (see
/// [`Shaper::cut_to_fit`]): below it, the row is rejected.
const MIN_CUT_BUDGET: usize = 64;

/// How deep a row may nest to be masked or cut on a thread of the application (in
/// write-ahead mode, the thread that completed the trace), whose stack may be small: about
/// 0.35 MiB of recursion in a debug build.
const CALLER_SHAPE_DEPTH: usize = 256;

/// How deep a row may nest to be masked or cut on our worker threads
/// ([`WORKER_STACK`](crate::util::limits::WORKER_STACK), 64 MiB): parsing recurses once per level, and a debug build's frames take about 1.4 KiB a
/// level (45,000 levels fit, 50,000 overflow). A trace of the default 10,000 steps nested
/// is about 20,000 levels; a client's JSON body can nest far deeper in a few bytes.
pub(crate) const WORKER_SHAPE_DEPTH: usize = 30_000;

thread_local! {
    static SHAPE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(CALLER_SHAPE_DEPTH) };
}

/// Marks this thread as one of ours, with a stack made for deep rows.
pub(crate) fn shape_on_big_stack() {
    let _ = SHAPE_DEPTH.try_with(|d| d.set(WORKER_SHAPE_DEPTH));
}

impl<T> Prepared<T> {
    /// The row, if there is one; a trace sampled out or that failed is counted (and
    /// settled) here.
    pub(crate) fn into_row(self, counters: &Counters) -> Option<T> {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Prepared::Row(row) => return Some(row),
            Prepared::SampledOut => {
                counters.sampled_out.fetch_add(1, Relaxed);
            }
            Prepared::Failed => counters.drop_rows(DropReason::Encoding, 1),
            Prepared::TooDeep => {
                // Only a worker counts it, where it is too deep for any thread.
                crate::util::diag::warn_limited!(
                    max_depth = WORKER_SHAPE_DEPTH,
                    "a row nests too deep to be masked or cut; dropped (counted)"
                );
                counters.drop_rows(DropReason::Encoding, 1)
            }
        }
        counters.settled.fetch_add(1, Relaxed);
        None
    }
}

impl Shaper {
    pub(crate) fn new(config: &Config) -> Self {
        Shaper {
            sample_rate: config.sample_rate,
            mask: config.mask.clone(),
            budget: config.field_budget,
            max_request: config.batch_max_bytes,
        }
    }

    /// Whether a request can carry the row (with its config): the exporter's bound, the
    /// body's own bytes included.
    fn fits(&self, row: &str, config: &str) -> bool {
        row.len() + config.len() + ROW_OVERHEAD <= self.max_request
    }

    /// A row too large for any request with its longest values cut (strings to a byte
    /// budget, lists to as many items, each with a marker; the step tree itself is never
    /// cut): `Ok(Some(row))`, with the largest budget (of an eighth of a request, halved
    /// again and again down to [`MIN_CUT_BUDGET`]) that makes it fit, found by bisection
    /// (at most five cuts of a copy of the row). `Ok(None)` when even the smallest budget
    /// does not make it fit (it is then rejected, and counted, as it was), tried first;
    /// `Err(())` when it is not a JSON object.
    fn cut_to_fit(&self, row: &str, config: &str) -> Result<Option<String>, ()> {
        let fixed = crate::util::json::replace_lone_surrogates(row);
        let node: Node = from_str_deep(fixed.as_deref().unwrap_or(row)).map_err(|_| ())?;
        // Budgets from the largest: an eighth of a request, halved down to the smallest.
        let budgets: Vec<usize> =
            std::iter::successors(Some(self.max_request / 8), |b| Some(b / 2))
                .take_while(|&b| b >= MIN_CUT_BUDGET)
                .collect();
        let cut_with = |budget: usize| -> Result<Option<String>, ()> {
            let mut cut = node.clone();
            cut.apply_budget(budget, Place::Row);
            let text = serde_json::to_string(&cut).map_err(|_| ())?;
            Ok(self.fits(&text, config).then_some(text))
        };
        let Some(&smallest) = budgets.last() else {
            return Ok(None);
        };
        let Some(mut best) = cut_with(smallest)? else {
            return Ok(None);
        };
        // `budgets[hi]` fits; find the first (largest) that does.
        let (mut lo, mut hi) = (0, budgets.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match cut_with(budgets[mid])? {
                Some(text) => {
                    best = text;
                    hi = mid;
                }
                None => lo = mid + 1,
            }
        }
        Ok(Some(best))
    }

    /// [`cut_to_fit`](Self::cut_to_fit) on a prepared row that a request could not carry.
    /// Never on a thread of the application (in write-ahead mode, the thread that
    /// completed the trace): the row goes to a worker, as a row too deep does, for the
    /// cuts copy and serialize the whole row.
    fn fit(&self, mut row: EncodedRow) -> Prepared {
        if self.fits(&row.row, &row.config) {
            return Prepared::Row(row);
        }
        let depth = SHAPE_DEPTH
            .try_with(|d| d.get())
            .unwrap_or(CALLER_SHAPE_DEPTH);
        if depth < WORKER_SHAPE_DEPTH
            || crate::util::json::nests_deeper_than(row.row.as_bytes(), depth)
        {
            return Prepared::TooDeep;
        }
        match self.cut_to_fit(&row.row, &row.config) {
            Ok(Some(cut)) => {
                crate::util::diag::warn_limited!(
                    bytes = row.row.len(),
                    batch_max_bytes = self.max_request,
                    "a row too large for a request had its longest values cut to fit (each cut marked)"
                );
                row.row = cut;
            }
            // Rejected and counted by the exporter, with the row's size.
            Ok(None) => {}
            Err(()) => return Prepared::Failed,
        }
        Prepared::Row(row)
    }

    /// Encodes, samples and shapes a trace. A panic in encoding or in the mask costs that
    /// trace (it is never sent unmasked), not the caller.
    pub(crate) fn prepare(&self, trace: &CompletedTrace) -> Prepared {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Some(mut row) = encode::encode(trace) else {
                return Prepared::Failed;
            };
            if !self.keeps(&row.inference_id) {
                return Prepared::SampledOut;
            }
            // Parsing recurses once per level: never past what this thread's stack holds
            // (a stack overflow aborts the process; it is not a panic to catch).
            if (self.mask.is_some() || self.budget.is_some())
                && crate::util::json::nests_deeper_than(
                    row.row.as_bytes(),
                    SHAPE_DEPTH
                        .try_with(|d| d.get())
                        .unwrap_or(CALLER_SHAPE_DEPTH),
                )
            {
                return Prepared::TooDeep;
            }
            match self.shape(&row.row) {
                Some(Some(shaped)) => {
                    row.row = shaped;
                    // A mask may remove or add columns: the config names those the row
                    // has (a budget only cuts values).
                    if self.mask.is_some() {
                        let Some(config) = encode::reconcile_config(&row.config, &row.row) else {
                            return Prepared::Failed;
                        };
                        row.config = config;
                    }
                }
                Some(None) => {}
                None => return Prepared::Failed,
            }
            self.fit(row)
        }));
        match result {
            Ok(Prepared::Failed) | Err(_) => {
                crate::util::diag::warn_limited!(
                    "a trace could not be encoded or masked; dropped (counted)"
                );
                Prepared::Failed
            }
            Ok(p) => p,
        }
    }

    /// Prepares a trace as a line of the local trace file, with its newline, appended to
    /// `out` (the row's pipeline is its own, else `default_pipeline`): [`Shaper::prepare`]
    /// without the copies, when there is no mask or budget to apply. On failure `out` is
    /// left as it was.
    pub(crate) fn prepare_line(
        &self,
        trace: &CompletedTrace,
        default_pipeline: Option<&str>,
        out: &mut String,
    ) -> Prepared<()> {
        fn line(out: &mut String, pipeline: Option<&str>, config: &str, row: &str) -> Prepared<()> {
            encode::push_file_line(out, pipeline, config, [row]);
            out.push('\n');
            Prepared::Row(())
        }
        // Through the copies: [`Shaper::prepare`], its row then written as a line.
        let prepared_line = |out: &mut String| match self.prepare(trace) {
            Prepared::Row(row) => {
                let pipeline = row.pipeline_id.as_deref().or(default_pipeline);
                line(out, pipeline, &row.config, &row.row)
            }
            Prepared::SampledOut => Prepared::SampledOut,
            Prepared::Failed => Prepared::Failed,
            Prepared::TooDeep => Prepared::TooDeep,
        };
        if self.mask.is_some() || self.budget.is_some() {
            return prepared_line(out);
        }
        let mark = out.len();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let result = encode::encode_with(trace, |parts| {
                if !self.keeps(parts.inference_id) {
                    return Some(Prepared::SampledOut);
                }
                if !self.fits(parts.row, parts.config) {
                    // Cut to fit, through the copies.
                    return None;
                }
                let pipeline = parts.pipeline_id.map(|p| &**p).or(default_pipeline);
                Some(line(out, pipeline, parts.config, parts.row))
            })
            .unwrap_or(Some(Prepared::Failed));
            match result {
                Some(prepared) => prepared,
                None => prepared_line(out),
            }
        }));
        match result {
            Ok(Prepared::Failed) | Err(_) => {
                out.truncate(mark);
                crate::util::diag::warn_limited!(
                    "a trace could not be encoded or masked; dropped (counted)"
                );
                Prepared::Failed
            }
            Ok(p) => p,
        }
    }

    /// Whether the sample rate keeps the row with this inference id.
    pub(crate) fn keeps(&self, inference_id: &str) -> bool {
        self.sample_rate >= 1.0 || sample_point(inference_id) < self.sample_rate
    }

    /// Applies the mask and the budget to a row's JSON: `Some(None)` when nothing is
    /// configured or nothing changed, `Some(Some(new))` otherwise, `None` when the row
    /// is not a JSON object.
    pub(crate) fn shape(&self, row: &str) -> Option<Option<String>> {
        if self.mask.is_none() && self.budget.is_none() {
            return Some(None);
        }
        // Parsed below: a lone surrogate (in raw JSON recorded as it came) would fail the
        // whole row.
        let fixed = crate::util::json::replace_lone_surrogates(row);
        let row = fixed.as_deref().unwrap_or(row);
        let masked = match &self.mask {
            Some(mask) => Some(apply_mask(row, mask)?),
            None => None,
        };
        let current = masked.as_deref().unwrap_or(row);
        if let Some(budget) = self.budget {
            let mut node: Node = from_str_deep(current).ok()?;
            if node.apply_budget(budget, Place::Row) {
                return serde_json::to_string(&node).ok().map(Some);
            }
        }
        Some(masked.or(fixed))
    }
}

/// Parses JSON without serde_json's nesting limit (128): a trace may be thousands of steps
/// deep (at most `max_steps_per_trace`). Recursion stays on the thread's stack, so deep
/// rows are parsed on our worker threads, which have a large one (see `pipeline`).
pub(crate) fn from_str_deep<'a, T: serde::Deserialize<'a>>(s: &'a str) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_str(s);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A point in `[0, 1)` that depends only on the inference id (FNV-1a, then the
/// splitmix64 finalizer): the same id is always kept or always dropped, in every
/// process and version.
pub(crate) fn sample_point(inference_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in inference_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the mask on the row's columns. Columns keep their order; a column the mask left
/// alone keeps its exact text; new columns come last.
fn apply_mask(row: &str, mask: &MaskFn) -> Option<String> {
    let entries = crate::encode::scan::object_entries(row);
    if entries.is_empty() && row.trim() != "{}" {
        return None;
    }
    let mut originals = Vec::with_capacity(entries.len());
    let mut map = serde_json::Map::new();
    for (k, raw) in &entries {
        let v: Value = from_str_deep(raw.get()).ok()?;
        map.insert(k.clone(), v.clone());
        originals.push(v);
    }
    // Traced code the mask calls records nothing (and cannot recurse into us).
    crate::util::reentry::untraced(|| mask(&mut map));
    let mut out = String::with_capacity(row.len());
    out.push('{');
    let mut first = true;
    let mut push_key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()));
        out.push(':');
    };
    for ((k, raw), original) in entries.iter().zip(&originals) {
        if k == "output" && !map.contains_key(k) {
            // The config's `outputColumnName` is required: a mask that removes the
            // output leaves it null, rather than a row the platform refuses.
            push_key(&mut out, k);
            out.push_str("null");
            continue;
        }
        if let Some(v) = map.remove(k) {
            push_key(&mut out, k);
            if v == *original {
                out.push_str(raw.get());
            } else {
                // The keys of the objects it had keep their order (a `Value`'s map sorts
                // them, unless serde_json's `preserve_order` is on somewhere in the build).
                let template: Option<Node> = from_str_deep(raw.get()).ok();
                write_in_order(&mut out, &v, template.as_ref()).ok()?;
            }
        }
    }
    for (k, v) in map {
        push_key(&mut out, &k);
        out.push_str(&serde_json::to_string(&v).ok()?);
    }
    out.push('}');
    Some(out)
}

/// Writes `v` as JSON, the keys of each object in the order they have in `template` (the
/// value before the mask changed it), then the keys it added, in the map's order.
fn write_in_order(out: &mut String, v: &Value, template: Option<&Node>) -> serde_json::Result<()> {
    match (v, template) {
        (Value::Object(m), Some(Node::Object(t))) => {
            out.push('{');
            let mut first = true;
            let mut key = |out: &mut String, k: &str| -> serde_json::Result<()> {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                Ok(())
            };
            let mut known = std::collections::HashSet::with_capacity(t.len());
            for (k, tv) in t {
                // A key the text had twice is written once (the map holds one value).
                if known.insert(k.as_str())
                    && let Some(x) = m.get(k)
                {
                    key(out, k)?;
                    write_in_order(out, x, Some(tv))?;
                }
            }
            for (k, x) in m {
                if !known.contains(k.as_str()) {
                    key(out, k)?;
                    write_in_order(out, x, None)?;
                }
            }
            out.push('}');
        }
        (Value::Array(a), t) => {
            let t = match t {
                Some(Node::Array(t)) => Some(t),
                _ => None,
            };
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_in_order(out, x, t.and_then(|t| t.get(i)))?;
            }
            out.push(']');
        }
        (other, _) => out.push_str(&serde_json::to_string(other)?),
    }
    Ok(())
}

/// Where a value sits, for the budget's exemptions: the row's `inferenceId`, a step's
/// `id` and `type`, and the `steps` lists themselves are structure, not data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Row,
    Steps,
    Step,
    Data,
}

/// A JSON value that keeps the order of object keys (`serde_json::Value` sorts them).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// The key under which serde_json's `arbitrary_precision` passes a number as a map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The element that replaces the end of a truncated list.
fn array_marker(removed: usize) -> String {
    format!("…[truncated {removed} items]")
}

impl Node {
    /// Truncates strings longer than `budget` bytes (at a char boundary) and lists with
    /// more than `budget` elements, each with a marker. Returns whether anything changed.
    fn apply_budget(&mut self, budget: usize, place: Place) -> bool {
        match self {
            Node::String(s) if s.len() > budget => {
                let end = crate::util::text::floor_boundary(s, budget);
                let removed = s.len() - end;
                let marker = crate::util::text::cut_marker(removed);
                if marker.len() >= removed {
                    // The marker would be longer than what it replaces.
                    return false;
                }
                s.truncate(end);
                s.push_str(&marker);
                true
            }
            Node::Array(items) => {
                let mut removed = 0;
                if place != Place::Steps && items.len() > budget {
                    removed = items.len() - budget;
                    items.truncate(budget);
                }
                let inner = if place == Place::Steps {
                    Place::Step
                } else {
                    Place::Data
                };
                let mut changed = removed > 0;
                for item in items.iter_mut() {
                    changed |= item.apply_budget(budget, inner);
                }
                if removed > 0 {
                    items.push(Node::String(array_marker(removed)));
                }
                changed
            }
            Node::Object(entries) => {
                let mut changed = false;
                for (k, v) in entries.iter_mut() {
                    let exempt = match place {
                        Place::Row => k == "inferenceId",
                        Place::Step => k == "id" || k == "type",
                        _ => false,
                    };
                    if exempt && matches!(v, Node::String(_)) {
                        continue;
                    }
                    let inner = if k == "steps" && matches!(place, Place::Row | Place::Step) {
                        Place::Steps
                    } else {
                        Place::Data
                    };
                    changed |= v.apply_budget(budget, inner);
                }
                changed
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Node::Null, Node::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.is_empty() && key == NUMBER_TOKEN {
                        // serde_json's `arbitrary_precision` (on when any crate of the
                        // build asks for it) hands a number over as this one-key map.
                        let text: String = map.next_value()?;
                        return text
                            .parse::<serde_json::Number>()
                            .map(Node::Number)
                            .map_err(serde::de::Error::custom);
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn shaper(mask: Option<MaskFn>, budget: Option<usize>) -> Shaper {
        Shaper {
            sample_rate: 1.0,
            mask,
            budget,
            max_request: usize::MAX,
        }
    }

    #[test]
    fn a_row_too_large_for_a_request_is_cut_until_it_fits() {
        let s = Shaper {
            max_request: 2048,
            ..shaper(None, None)
        };
        let config = r#"{"outputColumnName":"output"}"#;
        let row = json!({
            "inferenceId": "x".repeat(100),
            "output": "a".repeat(10_000),
            "embedding": (0..1000).collect::<Vec<u32>>(),
            "small": "kept",
            "steps": [{"id": "1", "type": "user_call", "output": "b".repeat(5000)}],
        })
        .to_string();
        assert!(!s.fits(&row, config));
        let cut = s.cut_to_fit(&row, config).unwrap().unwrap();
        assert!(s.fits(&cut, config), "{} bytes", cut.len());
        let v: serde_json::Value = serde_json::from_str(&cut).unwrap();
        // The id is never cut; what is small is kept; every cut is marked.
        assert_eq!(v["inferenceId"], "x".repeat(100));
        assert_eq!(v["small"], "kept");
        let output = v["output"].as_str().unwrap();
        assert!(
            output.starts_with("aaa") && output.ends_with(" bytes]"),
            "{output}"
        );
        let embedding = v["embedding"].as_array().unwrap();
        assert!(embedding.len() < 1000);
        assert!(
            embedding
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .ends_with(" items]")
        );
        let step = &v["steps"][0];
        assert_eq!(step["type"], "user_call");
        assert!(step["output"].as_str().unwrap().ends_with(" bytes]"));

        // Steps are never dropped from the tree: a tree too large stays too large.
        let steps: Vec<serde_json::Value> = (0..200)
            .map(|i| json!({"id": format!("{i:036}"), "type": "user_call"}))
            .collect();
        let wide = json!({"inferenceId": "w", "steps": steps}).to_string();
        assert_eq!(s.cut_to_fit(&wide, config), Ok(None));
        // Not an object: an error.
        assert_eq!(s.cut_to_fit("[1", config), Err(()));
    }

    #[test]
    fn a_number_passed_as_arbitrary_precision_stays_a_number() {
        // How serde_json hands a number over with `arbitrary_precision` on.
        let n: Node = serde_json::from_value(json!({NUMBER_TOKEN: "12.5"})).unwrap();
        assert_eq!(n, Node::Number(serde_json::Number::from_f64(12.5).unwrap()));
        assert_eq!(serde_json::to_string(&n).unwrap(), "12.5");
        let n: Node = serde_json::from_value(json!({"a": {NUMBER_TOKEN: "1"}})).unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn a_lone_surrogate_does_not_fail_the_row() {
        let row = r#"{"output":"a\udc00b","body":{"q":"\ud800"}}"#;
        let out = shaper(None, Some(1000)).shape(row).unwrap().unwrap();
        assert_eq!(out, r#"{"output":"a\ufffdb","body":{"q":"\ufffd"}}"#);
        let mask: MaskFn = Arc::new(|_: &mut serde_json::Map<String, Value>| {});
        let out = shaper(Some(mask), None).shape(row).unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["output"], "a\u{fffd}b");
    }

    #[test]
    fn a_cut_never_makes_a_string_longer() {
        // 17 bytes with a budget of 16: the marker would be longer than the one byte cut.
        let row = json!({"o": "x".repeat(17)}).to_string();
        assert_eq!(shaper(None, Some(16)).shape(&row), Some(None));
        let row = json!({"o": "x".repeat(100)}).to_string();
        let out = shaper(None, Some(16)).shape(&row).unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let o = v["o"].as_str().unwrap();
        assert!(o.len() < 100 && o.starts_with(&"x".repeat(16)), "{o}");
    }

    #[test]
    fn a_mask_that_removes_the_output_leaves_it_null() {
        let mask: MaskFn = Arc::new(|row: &mut serde_json::Map<String, Value>| {
            row.remove("output");
        });
        let row = r#"{"inferenceId":"a","output":"secret","latency":1}"#;
        let out = shaper(Some(mask), None).shape(row).unwrap().unwrap();
        assert_eq!(out, r#"{"inferenceId":"a","output":null,"latency":1}"#);
    }

    #[test]
    fn sampling_is_deterministic_and_close_to_the_rate() {
        let s = Shaper {
            sample_rate: 0.25,
            ..shaper(None, None)
        };
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let kept: Vec<bool> = ids.iter().map(|id| s.keeps(id)).collect();
        let again: Vec<bool> = ids.iter().map(|id| s.keeps(id)).collect();
        assert_eq!(kept, again);
        let n = kept.iter().filter(|k| **k).count();
        assert!((4_500..5_500).contains(&n), "{n}");
        assert!((0.0..1.0).contains(&sample_point("")));
        let all = Shaper {
            sample_rate: 1.0,
            ..s.clone()
        };
        let none = Shaper {
            sample_rate: 0.0,
            ..s
        };
        assert!(ids.iter().all(|id| all.keeps(id) && !none.keeps(id)));
    }

    #[test]
    fn nothing_configured_leaves_the_row_alone() {
        assert_eq!(shaper(None, None).shape(r#"{"b":1,"a":2}"#), Some(None));
    }

    #[test]
    fn the_mask_keeps_order_and_untouched_text() {
        let mask: MaskFn = Arc::new(|row| {
            row.remove("email");
            row.insert("name".into(), json!("***"));
            row.insert("added".into(), json!(true));
        });
        let s = shaper(Some(mask), None);
        let row = r#"{"z":1.0,"email":"a@b.c","name":"Ada","steps":[{"name":"f","id":"x"}]}"#;
        let out = s.shape(row).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"z":1.0,"name":"***","steps":[{"name":"f","id":"x"}],"added":true}"#
        );
        assert_eq!(s.shape("not json"), None);
    }

    /// A column the mask changed keeps the key order of its objects (a step's `name`,
    /// `id`, `type`, ...), new keys after them.
    #[test]
    fn a_masked_column_keeps_the_order_of_its_keys() {
        let mask: MaskFn = Arc::new(|row| {
            let step = &mut row["steps"][0];
            step["inputs"]["email"] = json!("***");
            step["inputs"]["masked"] = json!(true);
        });
        let s = shaper(Some(mask), None);
        let row = r#"{"steps":[{"name":"f","id":"x","type":"user_call","inputs":{"q":"hi","email":"a@b.c"},"output":null,"steps":[{"name":"g","id":"y"}]}]}"#;
        let out = s.shape(row).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"steps":[{"name":"f","id":"x","type":"user_call","inputs":{"q":"hi","email":"***","masked":true},"output":null,"steps":[{"name":"g","id":"y"}]}]}"#
        );
    }

    /// A key an object of the changed column had twice is written once, with the value
    /// the mask saw (the last).
    #[test]
    fn a_masked_column_writes_a_duplicated_key_once() {
        let mask: MaskFn = Arc::new(|row| {
            row["steps"][0]["b"] = json!("x");
        });
        let s = shaper(Some(mask), None);
        let out = s
            .shape(r#"{"steps":[{"a":1,"a":2,"b":3}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(out, r#"{"steps":[{"a":2,"b":"x"}]}"#);
    }

    #[test]
    fn the_budget_truncates_strings_and_lists_with_markers() {
        let s = shaper(None, Some(4));
        let row = json!({
            "inferenceId": "a-long-inference-id",
            "output": format!("ab€{}", "d".repeat(60)),
            "context": ["a", "b", "c", "d", "e", "f"],
            "steps": [{"name": "fn", "id": "0000-1111", "type": "user_call",
                        "inputs": {"q": "0123456789".repeat(5)}, "steps": []}],
        });
        let out = s.shape(&row.to_string()).unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["inferenceId"], "a-long-inference-id");
        // "€" takes bytes 2..5: the cut falls back to the char boundary before it.
        assert_eq!(
            v["output"],
            format!("ab{}", crate::util::text::cut_marker(63))
        );
        let context = v["context"].as_array().unwrap();
        assert_eq!(context.len(), 5);
        assert_eq!(context[4], array_marker(2));
        let step = &v["steps"][0];
        assert_eq!(step["id"], "0000-1111");
        assert_eq!(step["type"], "user_call");
        assert_eq!(
            step["inputs"]["q"],
            format!("0123{}", crate::util::text::cut_marker(46))
        );
        // Keys keep their order (`json!` sorts them; this text does not).
        let text = format!(
            r#"{{"z":"{}","inferenceId":"x","a":[1,2,3,4,5]}}"#,
            "0123456789".repeat(5)
        );
        let out = s.shape(&text).unwrap().unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"z":"0123{}","inferenceId":"x","a":[1,2,3,4,"{}"]}}"#,
                crate::util::text::cut_marker(46),
                array_marker(1)
            )
        );
        // Within budget: untouched.
        assert_eq!(shaper(None, Some(1000)).shape(&row.to_string()), Some(None));
    }

    #[test]
    fn the_budget_never_cuts_the_step_tree() {
        let s = shaper(None, Some(1));
        let steps: Vec<Value> = (0..3)
            .map(|i| json!({"name": "s", "id": format!("id-{i}"), "steps": []}))
            .collect();
        let row = json!({"steps": [{"name": "root", "id": "r", "steps": steps}]});
        // Its strings are too short to be worth a marker: nothing may change at all.
        let out = s
            .shape(&row.to_string())
            .unwrap()
            .unwrap_or_else(|| row.to_string());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["steps"][0]["steps"].as_array().unwrap().len(), 3);
        assert_eq!(v["steps"][0]["steps"][2]["id"], "id-2");
    }

    fn one_step_trace() -> CompletedTrace {
        use std::borrow::Cow;

        use crate::record::{NO_PARENT, StepRecord, TraceState};
        let mut state = TraceState::default();
        let mut root = StepRecord::new(
            Cow::Borrowed("greet"),
            crate::record::kind::StepKind::UserCall,
            NO_PARENT,
            0,
        );
        root.traced_fn = true;
        root.inputs = state.push_text(r#"{"name":"Ada","email":"ada@example.com"}"#);
        root.output = state.push_text(r#""Hello, Ada!""#);
        root.end = 1_500_000;
        state.steps.push(root);
        CompletedTrace {
            state,
            anchor_unix_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn a_file_line_is_the_prepared_row_in_its_line() {
        let trace = one_step_trace();
        let mask: MaskFn = Arc::new(|row| {
            row.insert("email".into(), json!("***"));
        });
        for s in [
            shaper(None, None),
            shaper(Some(mask), None),
            shaper(None, Some(3)),
        ] {
            let Prepared::Row(row) = s.prepare(&trace) else {
                panic!("not prepared");
            };
            let expected = encode::file_line(Some("dflt"), &row.config, [row.row.as_str()]) + "\n";
            let mut out = String::from("earlier line\n");
            assert!(matches!(
                s.prepare_line(&trace, Some("dflt"), &mut out),
                Prepared::Row(())
            ));
            assert_eq!(out, format!("earlier line\n{expected}"));
        }
        // Too large for a request: cut to fit, on the local file's path too (on a
        // worker's thread; on another, it goes to a worker).
        let mut long = one_step_trace();
        let inputs = format!(
            r#"{{"name":"{}","email":"ada@example.com"}}"#,
            "o".repeat(3000)
        );
        long.state.steps[0].inputs = long.state.push_text(&inputs);
        let small = Shaper {
            max_request: 1500,
            ..shaper(None, None)
        };
        let mut out = String::new();
        assert!(matches!(
            small.prepare_line(&long, Some("dflt"), &mut out),
            Prepared::TooDeep
        ));
        assert!(out.is_empty());
        shape_on_big_stack();
        assert!(matches!(
            small.prepare_line(&long, Some("dflt"), &mut out),
            Prepared::Row(())
        ));
        assert!(out.len() < 1500 && out.ends_with('\n'), "{out}");
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        let name = line["rows"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            name.starts_with("ooo") && name.ends_with(" bytes]"),
            "{name}"
        );
        assert_eq!(line["rows"][0]["email"], "ada@example.com");
        // Sampled out: counted as such, nothing written.
        let none = Shaper {
            sample_rate: 0.0,
            ..shaper(None, None)
        };
        let mut out = String::new();
        assert!(matches!(
            none.prepare_line(&trace, None, &mut out),
            Prepared::SampledOut
        ));
        assert!(out.is_empty());
    }
}
