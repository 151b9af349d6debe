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
    /// Columns set with `update_current_trace` (other than the inference id), in order.
    pub columns: Vec<(Cow<'static, str>, Json)>,
    /// `context` and `_question`, set with `log_context` / `log_question`.
    pub context: Option<Json>,
    pub question: Option<Json>,
    pub pipeline_id: Option<Cow<'static, str>>,
    /// Row updates of this trace's own row, made before it completed: they are handed off
    /// right behind it (see `crate::update_row`).
    pub updates: Vec<crate::record::row_update::RowUpdate>,
    /// Its key among the open traces (see `crate::util::open_traces`); 0 before its root
    /// is recorded.
    pub open_key: u64,
    /// Bytes counted as held by this open trace (see `crate::util::open_traces`).
    pub held: usize,
    /// Steps not recorded: beyond `max_steps_per_trace`, or no memory left for them.
    pub steps_dropped: u64,
}

impl TraceState {
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

    /// The inputs of a step of this trace.
    pub(crate) fn inputs(&self, rec: &StepRecord) -> Option<&str> {
        self.text(rec.inputs)
    }

    /// The output of a step of this trace.
    pub(crate) fn output(&self, rec: &StepRecord) -> Option<&str> {
        self.text(rec.output)
    }

    /// Heap bytes this trace's records hold, not counting the state itself: the step
    /// list and the text buffer by capacity, every string and list the steps and the trace
    /// own, each allocation as the allocator hands it out (`pipeline::heap_bytes`).
    pub(crate) fn approx_bytes(&self) -> usize {
        use crate::util::heap::{cow_heap_bytes, heap_bytes};
        let json = |j: &Option<Json>| j.as_ref().map_or(0, |j| heap_bytes(j.len()));
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
