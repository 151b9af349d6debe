//! Updates of the current trace and step: metadata, the inference id, ground truth,
//! output, RAG context and question.
//!
//! Outside a trace every update is a no-op with one rate-limited warning.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::{self, OpenStep};
use crate::record::{Json, TraceState, to_json, upsert};
use crate::util::diag;

/// The text of a JSON value used as an id: a string's contents, else the JSON itself.
fn id_text(json: &str) -> Box<str> {
    match serde_json::from_str::<String>(json) {
        Ok(s) => s.into_boxed_str(),
        Err(_) => json.into(),
    }
}

/// Sets a trace-level key. Returns whether an empty inference id was ignored, to be
/// told by [`warn_empty_id`] once the trace's lock is released (a warning runs the
/// application's `tracing` subscribers, which may call back into the SDK).
#[must_use = "an ignored empty inference id is to be warned about after the lock"]
pub(crate) fn apply_trace(st: &mut TraceState, key: String, value: Json) -> bool {
    match key.as_str() {
        "inference_id" | "inferenceId" => {
            let id = id_text(&value);
            if id.trim().is_empty() {
                // A row no update could reach, shared by every trace doing the same.
                return true;
            }
            st.inference_id = Some(id);
        }
        "ground_truth" | "groundTruth" => {
            if let Some(root) = st.steps.first_mut() {
                root.extra_mut().ground_truth = Some(value);
            }
        }
        _ => upsert(&mut st.extra_mut().columns, Cow::Owned(key), value),
    }
    false
}

/// Warns that an empty inference id was ignored (see [`apply_trace`]); never called with
/// a trace's lock held.
pub(crate) fn warn_empty_id(ignored: bool) {
    if ignored {
        diag::warn_limited!("an empty inference id was ignored; the trace keeps its generated one");
    }
}

fn apply_step_locked(st: &mut TraceState, idx: u32, key: String, value: Json) {
    let Some(rec) = st.steps.get_mut(idx as usize) else {
        return;
    };
    match key.as_str() {
        "ground_truth" | "groundTruth" => rec.extra_mut().ground_truth = Some(value),
        // As the official SDKs' `update_current_step(metadata={..})`: its entries merge
        // into the step's metadata (rather than replace a nested `metadata` object).
        "metadata" if value.starts_with('{') => {
            if let Ok(entries) = serde_json::from_str::<Map<String, Value>>(&value) {
                for (k, v) in entries {
                    if let Some(v) = to_json(&v) {
                        rec.set_metadata(Cow::Owned(k), v);
                    }
                }
            }
        }
        _ => match rec.kind.field_for(&key) {
            Some(field) => rec.set_field(field, value),
            None => rec.set_metadata(Cow::Owned(key), value),
        },
    }
}

/// Applies already-encoded step updates to an open step.
pub(crate) fn apply_step_json(open: &OpenStep, updates: Vec<(String, Json)>) {
    let mut st = open.trace.lock();
    for (k, v) in updates {
        apply_step_locked(&mut st, open.idx, k, v);
    }
}

/// Serializes and applies step updates to an open step; `None` values are ignored.
pub(crate) fn apply_step<T: Serialize + ?Sized>(open: &OpenStep, updates: Vec<(String, &T)>) {
    let encoded = updates
        .into_iter()
        .filter(|(_, v)| !crate::api::none_probe::is_none(*v))
        .filter_map(|(k, v)| Some((k, to_json(v)?)))
        .collect();
    apply_step_json(open, encoded);
}

/// Which part of the trace an [`Update`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Trace,
    Step,
}

/// An update being collected by `update_current_trace!` / `update_current_step!`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Update {
    target: Target,
    active: bool,
    values: Vec<(String, Json)>,
}

impl Update {
    /// An update of the current trace.
    pub fn trace() -> Self {
        Update {
            target: Target::Trace,
            active: context::in_trace(),
            values: Vec::new(),
        }
    }

    /// An update of the current step.
    pub fn step() -> Self {
        Update {
            target: Target::Step,
            active: context::in_trace(),
            values: Vec::new(),
        }
    }

    /// Whether there is a trace to update (the values are only evaluated then).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Adds one key. `None` is ignored; NaN and ±inf are kept, as `null`.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if crate::api::none_probe::is_none(value) {
            return;
        }
        if let Some(v) = to_json(value) {
            self.values.push((key.to_string(), v));
        }
    }

    /// Applies the collected keys, in order (the last write of a key wins).
    pub fn apply(self) {
        let api = match self.target {
            Target::Trace => "update_current_trace",
            Target::Step => "update_current_step",
        };
        if !self.active {
            diag::outside_trace(api);
            return;
        }
        let applied = context::with_current(|trace, step| {
            let mut st = trace.lock();
            let mut empty_id = false;
            for (k, v) in self.values {
                match self.target {
                    Target::Trace => empty_id |= apply_trace(&mut st, k, v),
                    Target::Step => apply_step_locked(&mut st, step, k, v),
                }
            }
            empty_id
        });
        match applied {
            Some(empty_id) => warn_empty_id(empty_id),
            None => diag::outside_trace(api),
        }
    }
}

fn from_map(target: Target, map: Map<String, Value>) {
    let mut u = Update {
        target,
        active: context::in_trace(),
        values: Vec::new(),
    };
    if u.active {
        for (k, v) in &map {
            u.set(k, v);
        }
    }
    u.apply();
}

/// Merges a JSON map into the current trace.
///
/// `inference_id` (or `inferenceId`) sets the row's `inferenceId`; `ground_truth` the
/// root step's ground truth (the row's `groundTruth`); every other key, `user_id` and
/// `session_id` included, becomes a row column. The last write of a key wins and `null`
/// values are ignored. Outside a trace this does nothing but log one rate-limited warning.
/// The macro form [`update_current_trace!`](crate::update_current_trace!) takes any
/// `Serialize` values.
///
/// ```
/// use openlayer_trace::{trace, update_current_trace};
///
/// #[trace]
/// fn handle(message: &str) -> String {
///     let mut map = serde_json::Map::new();
///     map.insert("inference_id".into(), "req-42".into());
///     map.insert("user_id".into(), "u-7".into());
///     update_current_trace(map);
///     message.to_uppercase()
/// }
/// handle("hi");
/// ```
pub fn update_current_trace(map: Map<String, Value>) {
    from_map(Target::Trace, map);
}

/// Merges a JSON map into the current step.
///
/// Keys that name a field of the step's kind (`model`, `prompt_tokens`, ... for a chat
/// completion; snake_case or camelCase) set that field, `ground_truth` sets the step's
/// ground truth, and every other key goes into the step's metadata. The root step's
/// metadata also becomes row columns.
pub fn update_current_step(map: Map<String, Value>) {
    from_map(Target::Step, map);
}

fn with_trace_state(api: &'static str, f: impl FnOnce(&mut TraceState)) {
    if context::with_current(|t, _| f(&mut t.lock())).is_none() {
        diag::outside_trace(api);
    }
}

/// Replaces the **current step's** recorded output, as the official SDK's `log_output`:
/// the function still returns its own value, but the step records this one (and, on the
/// root step, so does the row's `output`).
///
/// ```
/// use openlayer_trace::{log_output, trace};
///
/// #[trace]
/// fn answer(question: &str) -> (String, usize) {
///     let text = "Paris".to_string();
///     log_output(&text); // recorded instead of the tuple
///     (text, 12)
/// }
/// answer("capital of France?");
/// ```
pub fn log_output<T: Serialize + ?Sized>(output: &T) {
    let Some(json) = to_json(output) else { return };
    with_step_state("log_output", |st, step| set_step_output(st, step, &json));
}

/// Sets a step's output as logged, so that its return value does not replace it: kept
/// with the step (replacing one logged before) until it ends, or, for a step that has
/// ended already (work carried into the trace logging after the step returned), until
/// the trace completes. The bytes it grows by are held by the open trace; when open
/// traces have no room for them, a marker saying so is kept instead.
pub(crate) fn set_step_output(st: &mut TraceState, step: u32, json: &str) {
    let Some(rec) = st.steps.get_mut(step as usize) else {
        return;
    };
    let extra = rec.extra_mut();
    let charged = extra.logged_charged;
    let logged = extra.logged_output.get_or_insert_with(String::new);
    logged.clear();
    let grows = json.len().saturating_sub(charged);
    if grows == 0 || crate::util::open_traces::admit_bytes(grows) {
        logged.push_str(json);
        extra.logged_charged = charged.max(json.len());
        st.held += grows;
    } else {
        logged.push_str(&crate::util::open_traces::left_out_marker(json.len()));
        let grows = logged.len().saturating_sub(charged);
        extra.logged_charged = charged.max(logged.len());
        st.hold(grows);
    }
}

/// Sets the retrieved documents of a RAG trace, as the official SDK's `log_context`: the
/// row's `context` column and the **current step's** metadata `context`.
///
/// ```
/// use openlayer_trace::{log_context, trace};
///
/// #[trace]
/// fn answer(question: &str) -> &'static str {
///     log_context(&["Paris is the capital of France."]);
///     "Paris"
/// }
/// answer("capital of France?");
/// ```
pub fn log_context<T: Serialize + ?Sized>(documents: &T) {
    let Some(json) = to_json(documents) else {
        return;
    };
    with_step_state("log_context", |st, step| set_context(st, step, json));
}

/// Sets the row's `context` column and the step's metadata `context`.
pub(crate) fn set_context(st: &mut TraceState, step: u32, json: Json) {
    if let Some(rec) = st.steps.get_mut(step as usize) {
        rec.set_metadata(Cow::Borrowed("context"), json.clone());
    }
    st.extra_mut().context = Some(json);
}

/// Sets the trace's question, as the official SDK's `log_question`: the row's `_question`
/// column and the **current step's** metadata `_question`.
pub fn log_question<T: Serialize + ?Sized>(question: &T) {
    let Some(json) = to_json(question) else {
        return;
    };
    with_step_state("log_question", |st, step| set_question(st, step, json));
}

/// Sets the row's `_question` column and the step's metadata `_question`.
pub(crate) fn set_question(st: &mut TraceState, step: u32, json: Json) {
    if let Some(rec) = st.steps.get_mut(step as usize) {
        rec.set_metadata(Cow::Borrowed("_question"), json.clone());
    }
    st.extra_mut().question = Some(json);
}

fn with_step_state(api: &'static str, f: impl FnOnce(&mut TraceState, u32)) {
    if context::with_current(|t, step| f(&mut t.lock(), step)).is_none() {
        diag::outside_trace(api);
    }
}

/// Sets the trace's ground truth: the root step's `groundTruth` and the row's
/// `groundTruth` column.
pub fn log_ground_truth<T: Serialize + ?Sized>(ground_truth: &T) {
    if crate::api::none_probe::is_none(ground_truth) {
        return;
    }
    let Some(json) = to_json(ground_truth) else {
        return;
    };
    with_trace_state("log_ground_truth", |st| {
        if let Some(root) = st.steps.first_mut() {
            root.extra_mut().ground_truth = Some(json);
        }
    });
}

/// The inference id of the current trace: the custom one set with
/// `update_current_trace!(inference_id = ...)`, else the root step's id. `None` outside a
/// trace. Store it to attach feedback, ground truth or business signals to the row later.
///
/// ```
/// use openlayer_trace::{current_inference_id, trace, update_current_trace};
///
/// #[trace]
/// fn handle() -> Option<String> {
///     update_current_trace!(inference_id = "chat-1-u-2");
///     current_inference_id()
/// }
/// # // Tracing may be disabled in the doc-test environment; then there is no trace.
/// # let id = handle();
/// # assert!(id.is_none() || id.as_deref() == Some("chat-1-u-2"));
/// ```
pub fn current_inference_id() -> Option<String> {
    context::with_current(|t, _| inference_id_of(t)).flatten()
}

/// The inference id of `trace`: the one set by an update, else its root step's id.
pub(crate) fn inference_id_of(trace: &crate::record::TraceShared) -> Option<String> {
    // Copied under the lock: a custom id is copied once (through `with_inference_id_of`,
    // which lets the lock go first, it would be copied twice).
    let st = trace.lock();
    // No recorded root (refused by the memory bound): no row will have any id.
    let root = st.steps.first()?;
    match &st.inference_id {
        Some(id) => Some(id.to_string()),
        None => Some(crate::util::id::uuid_v4(root.id)),
    }
}

/// Calls `f` with the inference id of `trace` (see [`inference_id_of`]), after the
/// trace's lock is let go (so that `f` may trace). The root step's id is formatted on the
/// stack: no allocation unless the id is a custom one.
pub(crate) fn with_inference_id_of<R>(
    trace: &crate::record::TraceShared,
    f: impl FnOnce(&str) -> R,
) -> Option<R> {
    enum Id {
        /// Set by an update.
        Custom(Box<str>),
        /// The root step's id.
        Generated(u128),
    }
    let id = {
        let st = trace.lock();
        // No recorded root (refused by the memory bound): no row will have any id.
        let root = st.steps.first()?;
        match &st.inference_id {
            Some(id) => Id::Custom(id.clone()),
            None => Id::Generated(root.id),
        }
    };
    Some(match id {
        Id::Generated(bits) => f(crate::util::id::UuidText::new(bits).as_str()),
        Id::Custom(custom) => f(&custom),
    })
}
