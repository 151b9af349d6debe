//! What one step writes: its record, its status, and its JSON values (in the trace's text).

use std::borrow::Cow;

use serde::Serialize;

use crate::record::kind::StepKind;
use crate::record::scratch::with_scratch;
use crate::util::diag::warn_limited;

/// A JSON text we produced ourselves (so it is known to be valid), embedded verbatim.
pub(crate) type Json = Box<str>;

/// No parent: the root step.
pub(crate) const NO_PARENT: u32 = u32::MAX;

/// The position of a step that was not recorded (the trace's step limit or the memory
/// bound was reached, or an ancestor was not recorded): what is logged in it is dropped,
/// and steps under it are not recorded either (counted as dropped), rather than landing on
/// its parent.
pub(crate) const REFUSED: u32 = u32::MAX - 1;

/// Serializes `value` into `out` (appending). On failure `out` is left as it was.
pub(crate) fn write_json<T: Serialize + ?Sized>(
    out: &mut String,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mark = out.len();
    // SAFETY: serde_json writes valid UTF-8 only, and on error the partial write is cut
    // off at `mark`, a char boundary, before the string is used again.
    let bytes = unsafe { out.as_mut_vec() };
    let r = crate::util::json::to_vec(bytes, value);
    if r.is_err() {
        bytes.truncate(mark);
    }
    r
}

/// Serializes a value to JSON text. A value that fails to serialize is logged and skipped.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Option<Json> {
    with_scratch(|buf| match write_json(buf, value) {
        Ok(()) => Some(Box::from(buf.as_str())),
        Err(e) => {
            warn_limited!(error = %e, "a traced value could not be serialized; recorded as null");
            None
        }
    })
}

/// A JSON text kept in its trace's [`TraceState::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TextRef {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Open,
    Ok,
    Error,
    Panicked,
    Cancelled,
}

/// One step, flat: its parent is an index into the trace's step list.
#[derive(Debug)]
pub(crate) struct StepRecord {
    pub id: u128,
    pub parent: u32,
    pub name: Cow<'static, str>,
    pub kind: StepKind,
    /// Whether the step came from `#[trace]` (which adds `has_guardrails: false`).
    pub traced_fn: bool,
    pub status: Status,
    /// Start and end, in nanoseconds from the trace's anchor.
    pub start: i64,
    pub end: i64,
    /// A JSON object of the captured inputs, in parameter order (in the trace's text).
    pub inputs: Option<TextRef>,
    /// The output (in the trace's text).
    pub output: Option<TextRef>,
    /// What few steps have, boxed so that a step record stays small (96 bytes) to write,
    /// move and keep.
    pub extra: Option<Box<StepExtra>>,
}

/// The rarely set parts of a step.
#[derive(Debug, Default)]
pub(crate) struct StepExtra {
    pub ground_truth: Option<Json>,
    pub metadata: Vec<(Cow<'static, str>, Json)>,
    /// The kind's extra fields, by wire name.
    pub fields: Vec<(&'static str, Json)>,
    /// The error text (metadata `Exceptions`).
    pub error: Option<Box<str>>,
    /// The output set with `log_output` (JSON), kept here until the step ends (one logged
    /// after it ended, until the trace completes), then moved to the trace's text: what the step returns does not replace it, and logging it
    /// again and again replaces it in place whatever was written meanwhile. Its bytes are
    /// held by the open trace.
    pub logged_output: Option<String>,
    /// The bytes of logged outputs counted as held (the most it held: a shorter one
    /// logged after a longer one gives nothing back, and a longer one again counts only
    /// what it adds).
    pub logged_charged: usize,
    /// The first `model` set, when a later one replaced it: the model asked for, where the
    /// wire's `model` ends as the one that answered (OTLP's `gen_ai.request.model`).
    pub first_model: Option<Json>,
    /// How many errors were added to `error` (see [`StepExtra::add_error`]).
    pub errors: u32,
    /// The length of `error`'s listed errors (before the line counting the others).
    pub listed_len: usize,
}

/// The most errors one step's `Exceptions` lists (a stream erring at every item would
/// otherwise grow it without bound); later ones are counted on a last line.
const EXCEPTIONS_MAX: u32 = 10;
/// The most bytes of one error's text kept in `Exceptions`.
const EXCEPTION_MAX_BYTES: usize = 1024;

impl StepExtra {
    /// Adds an error to `error` (metadata `Exceptions`), one per line: the first
    /// [`EXCEPTIONS_MAX`], each cut to [`EXCEPTION_MAX_BYTES`], then a line counting the
    /// others (kept as counts here, never read back from the text).
    pub(crate) fn add_error(&mut self, text: &str) {
        self.errors = self.errors.saturating_add(1);
        let mut all = self.error.take().map(String::from).unwrap_or_default();
        if self.errors <= EXCEPTIONS_MAX {
            all.truncate(self.listed_len.min(all.len()));
            if !all.is_empty() {
                all.push('\n');
            }
            push_cut(&mut all, text, EXCEPTION_MAX_BYTES);
            self.listed_len = all.len();
        } else {
            all.truncate(self.listed_len.min(all.len()));
            all.push_str(&format!(
                "\n…[{} more errors]",
                self.errors - EXCEPTIONS_MAX
            ));
        }
        self.error = Some(all.into_boxed_str());
    }
}

/// Appends `text` to `out`, cut to at most `max` bytes at a char boundary, marked when cut.
fn push_cut(out: &mut String, text: &str, max: usize) {
    let end = crate::util::text::floor_boundary(text, max);
    out.push_str(&text[..end]);
    if end < text.len() {
        out.push_str(&crate::util::text::cut_marker(text.len() - end));
    }
}

impl StepRecord {
    pub(crate) fn new(name: Cow<'static, str>, kind: StepKind, parent: u32, start: i64) -> Self {
        StepRecord {
            id: crate::util::id::next_id(),
            parent,
            name,
            kind,
            traced_fn: false,
            status: Status::Open,
            start,
            end: start,
            inputs: None,
            output: None,
            extra: None,
        }
    }

    /// The rarely set parts, created on first use.
    pub(crate) fn extra_mut(&mut self) -> &mut StepExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The step's metadata, in the order first set.
    pub(crate) fn metadata(&self) -> &[(Cow<'static, str>, Json)] {
        self.extra.as_ref().map_or(&[], |e| &e.metadata)
    }

    /// The error text (metadata `Exceptions`).
    pub(crate) fn error(&self) -> Option<&str> {
        self.extra.as_ref()?.error.as_deref()
    }

    /// The step's ground truth (JSON).
    pub(crate) fn ground_truth(&self) -> Option<&str> {
        self.extra.as_ref()?.ground_truth.as_deref()
    }

    /// Sets a metadata key; the last write wins.
    pub(crate) fn set_metadata(&mut self, key: Cow<'static, str>, value: Json) {
        upsert(&mut self.extra_mut().metadata, key, value);
    }

    /// Makes the step of `kind`, moving the metadata set so far that names one of the
    /// kind's fields into that field (as it would have gone, set under this kind).
    #[cfg(feature = "tracing-layer")]
    pub(crate) fn set_kind(&mut self, kind: StepKind) {
        self.kind = kind;
        let Some(extra) = self.extra.as_mut() else {
            return;
        };
        let mut moved = Vec::new();
        extra.metadata.retain_mut(|(k, v)| match kind.field_for(k) {
            Some(field) => {
                moved.push((field, std::mem::take(v)));
                false
            }
            None => true,
        });
        for (field, value) in moved {
            self.set_field(field, value);
        }
    }

    /// Sets a kind field; the last write wins.
    pub(crate) fn set_field(&mut self, key: &'static str, value: Json) {
        let extra = self.extra_mut();
        match extra.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => {
                if key == "model" && extra.first_model.is_none() && slot.1 != value {
                    extra.first_model = Some(std::mem::replace(&mut slot.1, value));
                } else {
                    slot.1 = value;
                }
            }
            None => extra.fields.push((key, value)),
        }
    }

    /// The model asked for: the first `model` set (see [`StepExtra::first_model`]).
    #[cfg(feature = "otlp")]
    pub(crate) fn requested_model(&self) -> Option<&str> {
        let extra = self.extra.as_ref()?;
        extra.first_model.as_deref().or_else(|| self.field("model"))
    }

    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.extra
            .as_ref()?
            .fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| &**v)
    }

    /// Heap bytes this step holds beyond its own size (which its trace's step list
    /// counts), each allocation as the allocator hands it out (`pipeline::heap_bytes`).
    #[inline]
    pub(crate) fn approx_bytes(&self) -> usize {
        use crate::util::heap::cow_heap_bytes;
        // Most steps hold nothing of their own but their name.
        cow_heap_bytes(&self.name) + self.extra.as_ref().map_or(0, |e| e.approx_bytes())
    }
}

impl StepExtra {
    #[cold]
    fn approx_bytes(&self) -> usize {
        use crate::util::heap::{cow_heap_bytes, heap_bytes};
        heap_bytes(size_of::<StepExtra>())
            + self
                .ground_truth
                .as_ref()
                .map_or(0, |j| heap_bytes(j.len()))
            + heap_bytes(self.metadata.capacity() * size_of::<(Cow<'static, str>, Json)>())
            + self
                .metadata
                .iter()
                .map(|(k, v)| cow_heap_bytes(k) + heap_bytes(v.len()))
                .sum::<usize>()
            + heap_bytes(self.fields.capacity() * size_of::<(&'static str, Json)>())
            + self
                .fields
                .iter()
                .map(|(_, v)| heap_bytes(v.len()))
                .sum::<usize>()
            + self.error.as_ref().map_or(0, |e| heap_bytes(e.len()))
            + self.first_model.as_ref().map_or(0, |m| heap_bytes(m.len()))
    }
}

/// Inserts or replaces `key`, keeping the first insertion's position.
pub(crate) fn upsert<K: PartialEq>(list: &mut Vec<(K, Json)>, key: K, value: Json) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key, value)),
    }
}
