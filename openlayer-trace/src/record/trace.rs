//! A trace's state while it is recorded (its steps and their text), and the completed
//! trace handed to the sink.

use std::borrow::Cow;

use crate::record::step::{Json, StepRecord, TextRef};

/// Everything recorded for one trace.
#[derive(Debug, Default)]
pub(crate) struct TraceState {
    pub steps: Vec<StepRecord>,
    /// The JSON texts of the steps' inputs and outputs, back to back: one buffer per trace
    /// instead of two allocations per step (see [`TextRef`]).
    pub text: String,
    /// Open steps plus live handles (spawned work) that keep the trace from completing.
    pub open: u32,
    pub root_closed: bool,
    pub shipped: bool,
    pub inference_id: Option<Box<str>>,
    /// What few traces have, boxed so that a trace's state stays small (about 100 bytes)
    /// to reset, move and hand off. It may be there and empty (reused from the pool).
    pub extra: Option<Box<TraceExtra>>,
    /// Its key among the open traces (see `crate::util::open_traces`); 0 before its root
    /// is recorded.
    pub open_key: u64,
    /// Bytes counted as held by this open trace (see `crate::util::open_traces`).
    pub held: usize,
    /// Steps not recorded: beyond `max_steps_per_trace`, or no memory left for them.
    pub steps_dropped: u64,
}

/// The rarely set parts of a trace.
#[derive(Debug, Default)]
pub(crate) struct TraceExtra {
    /// Columns set with `update_current_trace` (other than the inference id), in order.
    pub columns: Vec<(Cow<'static, str>, Json)>,
    /// `context` and `_question`, set with `log_context` / `log_question`.
    pub context: Option<Json>,
    pub question: Option<Json>,
    pub pipeline_id: Option<Cow<'static, str>>,
    /// Row updates of this trace's own row, made before it completed: they are handed off
    /// right behind it (see `crate::update_row`).
    pub updates: Vec<crate::record::row_update::RowUpdate>,
}

impl TraceExtra {
    /// Empties it for another trace, keeping what it allocated.
    pub(crate) fn clear(&mut self) {
        self.columns.clear();
        self.context = None;
        self.question = None;
        self.pipeline_id = None;
        self.updates.clear();
    }

    #[cold]
    fn approx_bytes(&self) -> usize {
        use crate::util::heap::{cow_heap_bytes, heap_bytes};
        let json = |j: &Option<Json>| j.as_ref().map_or(0, |j| heap_bytes(j.len()));
        heap_bytes(size_of::<TraceExtra>())
            + heap_bytes(self.columns.capacity() * size_of::<(Cow<'static, str>, Json)>())
            + self
                .columns
                .iter()
                .map(|(k, v)| cow_heap_bytes(k) + heap_bytes(v.len()))
                .sum::<usize>()
            + json(&self.context)
            + json(&self.question)
            + self.pipeline_id.as_ref().map_or(0, cow_heap_bytes)
            + heap_bytes(
                self.updates.capacity() * size_of::<crate::record::row_update::RowUpdate>(),
            )
            + self
                .updates
                .iter()
                .map(crate::record::row_update::RowUpdate::size)
                .sum::<usize>()
    }
}

impl TraceState {
    /// The rarely set parts, created on first use.
    pub(crate) fn extra_mut(&mut self) -> &mut TraceExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Columns set with `update_current_trace` (other than the inference id), in order.
    pub(crate) fn columns(&self) -> &[(Cow<'static, str>, Json)] {
        self.extra.as_ref().map_or(&[], |e| &e.columns)
    }

    /// The `context` column (`log_context`).
    pub(crate) fn context(&self) -> Option<&Json> {
        self.extra.as_ref()?.context.as_ref()
    }

    /// The `_question` column (`log_question`).
    pub(crate) fn question(&self) -> Option<&Json> {
        self.extra.as_ref()?.question.as_ref()
    }

    /// The pipeline the trace goes to, when not the configured one.
    pub(crate) fn pipeline_id(&self) -> Option<&Cow<'static, str>> {
        self.extra.as_ref()?.pipeline_id.as_ref()
    }

    /// Takes the row updates that ride with the trace.
    pub(crate) fn take_updates(&mut self) -> Vec<crate::record::row_update::RowUpdate> {
        self.extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.updates))
            .unwrap_or_default()
    }

    /// Replaces the text `old` refers to by `json`: in place when `old` is the last text
    /// written (a step that logs its output again and again, as a stream's answer so far),
    /// else appended. The bytes the trace's text grows by are counted as held (see
    /// `crate::util::open_traces`); when open traces have no room left for them, a marker
    /// saying so is written instead.
    #[cfg(feature = "tracing-layer")]
    pub(crate) fn replace_text(&mut self, old: Option<TextRef>, json: &str) -> Option<TextRef> {
        let before = self.text.len();
        let start = old
            .filter(|o| o.start as usize + o.len as usize == before)
            .map_or(before, |o| o.start as usize);
        // Beyond a text reference's reach (4 GiB of text): refused, the old text kept.
        if start
            .checked_add(json.len())
            .is_none_or(|end| u32::try_from(end).is_err())
        {
            return old;
        }
        let grows = (start + json.len()).saturating_sub(before);
        if grows > 0 && !crate::util::open_traces::admit_bytes(grows) {
            // Open traces hold all they may: the text is not kept (a marker is).
            self.text.truncate(start);
            let r = self.push_text(&crate::util::open_traces::left_out_marker(json.len()));
            self.hold(self.text.len().saturating_sub(before));
            return r;
        }
        self.text.truncate(start);
        let r = self.push_text(json);
        self.held += grows;
        r
    }

    /// Appends an output's JSON text, counted as held by this open trace; when open
    /// traces have no room left for it, a marker saying so is appended instead. Returns
    /// the text's reference and whether the output was left out.
    pub(crate) fn push_output(&mut self, json: &str) -> (Option<TextRef>, bool) {
        if crate::util::open_traces::admit_bytes(json.len()) {
            self.held += json.len();
            return (self.push_text(json), false);
        }
        let marker = crate::util::open_traces::left_out_marker(json.len());
        self.hold(marker.len());
        (self.push_text(&marker), true)
    }

    /// Counts `bytes` more as held by this open trace.
    pub(crate) fn hold(&mut self, bytes: usize) {
        crate::util::open_traces::hold(bytes);
        self.held += bytes;
    }

    /// Appends a JSON text to the trace's text.
    pub(crate) fn push_text(&mut self, json: &str) -> Option<TextRef> {
        let start = u32::try_from(self.text.len()).ok()?;
        let len = u32::try_from(json.len()).ok()?;
        start.checked_add(len)?;
        self.text.push_str(json);
        Some(TextRef { start, len })
    }

    /// A JSON text of the trace's text.
    pub(crate) fn text(&self, r: Option<TextRef>) -> Option<&str> {
        let r = r?;
        self.text
            .get(r.start as usize..r.start as usize + r.len as usize)
    }

    /// The inputs of a step of this trace, as JSON: inputs kept as text (see
    /// `util::text_inputs`) are encoded now, on the thread that asks (the worker's). (The
    /// row encoder writes them straight into the row instead.)
    #[cfg(feature = "otlp")]
    pub(crate) fn inputs(&self, rec: &StepRecord) -> Option<std::borrow::Cow<'_, str>> {
        let text = self.text(rec.inputs)?;
        if !crate::util::text_inputs::is_text_inputs(text) {
            return Some(std::borrow::Cow::Borrowed(text));
        }
        match crate::util::text_inputs::to_json(text) {
            Some(json) => Some(std::borrow::Cow::Owned(json)),
            None => {
                debug_assert!(false, "malformed text inputs: {text:?}");
                None
            }
        }
    }

    /// Appends the inputs of a step of this trace, as JSON, to `out`; false (and nothing
    /// appended) when it has none.
    pub(crate) fn write_inputs(&self, rec: &StepRecord, out: &mut String) -> bool {
        let Some(text) = self.text(rec.inputs) else {
            return false;
        };
        if !crate::util::text_inputs::is_text_inputs(text) {
            out.push_str(text);
            return true;
        }
        let written = crate::util::text_inputs::write_json(text, out);
        debug_assert!(written, "malformed text inputs: {text:?}");
        written
    }

    /// The output of a step of this trace.
    pub(crate) fn output(&self, rec: &StepRecord) -> Option<&str> {
        self.text(rec.output)
    }

    /// Heap bytes this trace's records hold, not counting the state itself: the step
    /// list and the text buffer by capacity, every string and list the steps and the trace
    /// own, each allocation as the allocator hands it out (`pipeline::heap_bytes`).
    pub(crate) fn approx_bytes(&self) -> usize {
        use crate::util::heap::heap_bytes;
        heap_bytes(self.steps.capacity() * size_of::<StepRecord>())
            + self
                .steps
                .iter()
                .map(StepRecord::approx_bytes)
                .sum::<usize>()
            + heap_bytes(self.text.capacity())
            + self
                .inference_id
                .as_ref()
                .map_or(0, |s| heap_bytes(s.len()))
            + self.extra.as_ref().map_or(0, |e| e.approx_bytes())
    }
}

/// A finished trace on its way to the exporter.
#[derive(Debug)]
pub(crate) struct CompletedTrace {
    pub state: TraceState,
    pub anchor_unix_ns: i128,
}

impl CompletedTrace {
    pub(crate) fn root(&self) -> Option<&StepRecord> {
        self.state.steps.first()
    }
}
