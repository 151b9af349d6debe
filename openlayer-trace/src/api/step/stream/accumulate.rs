//! What a traced stream records as its output: the [`Accumulator`] trait and the
//! accumulators this crate ships.

use std::fmt::{self, Display};

use serde::Serialize;
use serde::ser::{self, Impossible};

use crate::api::step::handle::StepHandle;

/// Turns the items of a traced stream or iterator into its step's output.
///
/// [`push`](Self::push) sees every item, by reference, as it passes (keep it cheap: it
/// runs on the consumer's path); [`finish`](Self::finish) runs once, when the stream ends
/// or is dropped, and records the output on the step (with
/// [`StepHandle::output`], and any other field or metadata it knows). Both get the step,
/// so an accumulator can also record metadata as items arrive.
///
/// The shipped ones: [`Collect`] (the default: strings joined, other items as a JSON list),
/// [`OkItems`] (the `Ok` items of a stream of `Result`s into another accumulator, each
/// `Err` under `Exceptions`) and [`Discard`] (no output).
///
/// An accumulator that merges chat-completion deltas, as a client integration would:
///
/// ```
/// use openlayer_trace::stream::Accumulator;
/// use openlayer_trace::{TraceIteratorExt, StepHandle, StepKind, step};
///
/// struct Delta { content: Option<&'static str>, model: &'static str }
///
/// #[derive(Default)]
/// struct MergeDeltas { text: String, model: Option<&'static str> }
///
/// impl Accumulator<Delta> for MergeDeltas {
///     fn push(&mut self, item: &Delta, _step: &mut StepHandle) {
///         self.text.push_str(item.content.unwrap_or_default());
///         self.model.get_or_insert(item.model);
///     }
///     fn finish(&mut self, step: &mut StepHandle) {
///         step.output(&self.text);
///         step.metadata("model", &self.model);
///     }
/// }
///
/// let deltas = vec![
///     Delta { content: Some("Hel"), model: "gpt-4o" },
///     Delta { content: Some("lo"), model: "gpt-4o" },
///     Delta { content: None, model: "gpt-4o" },
/// ];
/// let chat = step("OpenAI Chat Completion").kind(StepKind::ChatCompletion);
/// let n = deltas.into_iter().traced_with(chat, MergeDeltas::default()).count();
/// assert_eq!(n, 3); // the step's output is "Hello", its model "gpt-4o"
/// ```
pub trait Accumulator<Item: ?Sized> {
    /// Takes one item into account.
    fn push(&mut self, item: &Item, step: &mut StepHandle);

    /// Records the output on `step`. Called once, when the stream ends or is dropped
    /// (not when a panic unwinds through the stream's step: one made and dropped while
    /// the thread already unwinds, in a `Drop`, is finished as usual).
    fn finish(&mut self, step: &mut StepHandle);
}

/// The default accumulator: items that are strings (`String`, `&str`, `Cow<str>`, `char`,
/// ...) are joined into one string, as the official SDK joins the chunks of a generator;
/// any other items are collected as a JSON list. `None` items are skipped while joining.
///
/// The choice is made by the first item that is not `None`. Should a later item not be a
/// string (possible with `serde_json::Value` items), the step's output becomes a list
/// whose first element is the text joined so far.
///
/// The output is bounded: it holds at most an eighth of `batch_max_bytes` (512 KiB by
/// default, at most a sixteenth of `queue_max_bytes`). The item that reaches the bound is
/// cut (a string) or left out (a list element), later items are counted rather than kept,
/// and the output ends with the marker `…[truncated N items]` (appended to the text, or as
/// the list's last element), N counting the items cut or left out. A stream that never
/// ends holds bounded memory, and its row (where a root's output appears twice, and
/// escaped) fits in a request, unless the trace has several long streams or text that
/// JSON escaping inflates much.
#[derive(Debug, Default)]
pub struct Collect {
    text: String,
    mode: Mode,
    /// Items left out once the output reached its bound.
    cut: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No item yet: the output is the empty string, as the official SDK's join of nothing.
    #[default]
    Empty,
    /// `text` is the items, joined.
    Join,
    /// `text` is `[` and the items' JSON texts, separated by commas.
    List,
}

impl Collect {
    /// A new, empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn push_item<T: Serialize + ?Sized>(&mut self, item: &T) {
        let max = crate::util::open_traces::stream_output_max();
        if self.cut > 0 || self.text.len() >= max {
            return self.count_cut(item);
        }
        if self.mode != Mode::List {
            let text = &mut self.text;
            let mark = text.len();
            let mut panicked = false;
            let joined = crate::util::json::unpanicked(
                || item.serialize(JoinStr(Some(&mut *text))),
                || {
                    panicked = true;
                    NotAString
                },
            );
            if joined.is_err() {
                // A panic part-way may have joined part of the item.
                self.text.truncate(mark);
            }
            if panicked {
                // Recorded as `null` in a list, without serializing it again (which would
                // panic again).
                self.switch_to_list();
                return self.push_json(&());
            }
            match joined {
                Ok(true) => {
                    self.mode = Mode::Join;
                    if self.text.len() > max {
                        // Cut within the item, at a character boundary.
                        let end = crate::util::text::floor_boundary(&self.text, max);
                        self.text.truncate(end);
                        // What a huge item grew it by is given back, not kept for the
                        // rest of the stream.
                        self.text.shrink_to(max);
                        self.cut += 1;
                    }
                    return;
                }
                Ok(false) => return,
                Err(NotAString) => self.switch_to_list(),
            }
        }
        let mark = self.text.len();
        self.push_json(item);
        if self.text.len() > max {
            // A list element is kept whole or not at all.
            self.text.truncate(mark);
            self.text.shrink_to(max);
            self.cut += 1;
        }
    }

    /// Counts an item past the bound; a `None` skipped while joining is not one (told
    /// apart without copying the item anywhere).
    #[cold]
    fn count_cut<T: Serialize + ?Sized>(&mut self, item: &T) {
        let none = self.mode != Mode::List
            && matches!(
                crate::util::json::unpanicked(|| item.serialize(JoinStr(None)), || NotAString),
                Ok(false)
            );
        if !none {
            self.cut += 1;
        }
    }

    /// Switches to a JSON list, keeping what was joined as its first element.
    #[cold]
    fn switch_to_list(&mut self) {
        let joined = std::mem::take(&mut self.text);
        self.text.push('[');
        if self.mode == Mode::Join {
            crate::util::json::push_str(&mut self.text, &joined);
        }
        self.mode = Mode::List;
    }

    fn push_json<T: Serialize + ?Sized>(&mut self, item: &T) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        if crate::record::write_json(&mut self.text, item).is_err() {
            self.text.push_str("null");
            crate::util::diag::warn_limited!(
                "a stream item could not be serialized; recorded as null"
            );
        }
    }
}

impl<T: Serialize + ?Sized> Accumulator<T> for Collect {
    #[inline]
    fn push(&mut self, item: &T, _step: &mut StepHandle) {
        self.push_item(item);
    }

    fn finish(&mut self, step: &mut StepHandle) {
        let marker = (self.cut > 0).then(|| format!("…[truncated {} items]", self.cut));
        match self.mode {
            Mode::Empty | Mode::Join => {
                if let Some(marker) = marker {
                    self.text.push_str(&marker);
                }
                step.output(self.text.as_str())
            }
            Mode::List => {
                let mut list = std::mem::take(&mut self.text);
                if let Some(marker) = marker {
                    if list.len() > 1 {
                        list.push(',');
                    }
                    crate::util::json::push_str(&mut list, &marker);
                }
                list.push(']');
                match serde_json::value::RawValue::from_string(list) {
                    Ok(raw) => step.output(&raw),
                    Err(_) => step.output(&()),
                }
            }
        }
    }
}

/// For a stream of `Result`s: each `Ok` value goes to the inner accumulator (by default
/// [`Collect`]), each `Err` records its `Display` under the step's `Exceptions` (one line
/// per error; see [`StepHandle::exception`]). The stream goes on: its step ends only when
/// the stream does, with the output of the `Ok` items.
#[derive(Debug, Default)]
pub struct OkItems<A = Collect>(pub A);

impl<T, E: Display, A: Accumulator<T>> Accumulator<Result<T, E>> for OkItems<A> {
    #[inline]
    fn push(&mut self, item: &Result<T, E>, step: &mut StepHandle) {
        match item {
            Ok(v) => self.0.push(v, step),
            Err(e) => step.exception(e),
        }
    }

    fn finish(&mut self, step: &mut StepHandle) {
        self.0.finish(step);
    }
}

/// Records no output (`#[trace(skip_output)]` on a stream).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl<T: ?Sized> Accumulator<T> for Discard {
    #[inline]
    fn push(&mut self, _item: &T, _step: &mut StepHandle) {}

    fn finish(&mut self, _step: &mut StepHandle) {}
}

// ---------------------------------------------------------------------------------------
// Joining strings without serializing them: a serializer that takes strings (appending
// them) and nothing else.

/// The item is not a string.
#[derive(Debug)]
struct NotAString;

impl Display for NotAString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a string")
    }
}

impl std::error::Error for NotAString {}

impl ser::Error for NotAString {
    fn custom<T: Display>(_msg: T) -> Self {
        NotAString
    }
}

/// Appends a string item to the joined text (with `None`, only tells): `Ok(true)`;
/// `None`/unit: `Ok(false)`.
struct JoinStr<'a>(Option<&'a mut String>);

macro_rules! not_a_string {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(
            #[inline]
            fn $method(self, $(_: $arg),*) -> Result<bool, NotAString> {
                Err(NotAString)
            }
        )*
    };
}

impl ser::Serializer for JoinStr<'_> {
    type Ok = bool;
    type Error = NotAString;
    type SerializeSeq = Impossible<bool, NotAString>;
    type SerializeTuple = Impossible<bool, NotAString>;
    type SerializeTupleStruct = Impossible<bool, NotAString>;
    type SerializeTupleVariant = Impossible<bool, NotAString>;
    type SerializeMap = Impossible<bool, NotAString>;
    type SerializeStruct = Impossible<bool, NotAString>;
    type SerializeStructVariant = Impossible<bool, NotAString>;

    #[inline]
    fn serialize_str(self, v: &str) -> Result<bool, NotAString> {
        if let Some(out) = self.0 {
            out.push_str(v);
        }
        Ok(true)
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<bool, NotAString> {
        if let Some(out) = self.0 {
            out.push(v);
        }
        Ok(true)
    }

    fn serialize_none(self) -> Result<bool, NotAString> {
        Ok(false)
    }

    fn serialize_unit(self) -> Result<bool, NotAString> {
        Ok(false)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<bool, NotAString> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<bool, NotAString> {
        value.serialize(self)
    }

    not_a_string!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<bool, NotAString> {
        Err(NotAString)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, NotAString> {
        Err(NotAString)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, NotAString> {
        Err(NotAString)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, NotAString> {
        Err(NotAString)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, NotAString> {
        Err(NotAString)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, NotAString> {
        Err(NotAString)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, NotAString> {
        Err(NotAString)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, NotAString> {
        Err(NotAString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected<T: Serialize>(items: &[T]) -> (Mode, String) {
        let mut c = Collect::new();
        for i in items {
            c.push_item(i);
        }
        (c.mode, c.text)
    }

    #[test]
    fn strings_are_joined_and_none_skipped() {
        assert_eq!(collected(&["a", "b"]).1, "ab");
        assert_eq!(collected(&[Some("a"), None, Some("c")]).1, "ac");
        assert_eq!(collected(&['x', 'y']).1, "xy");
        assert_eq!(collected::<&str>(&[]).0, Mode::Empty);
    }

    #[test]
    fn other_items_are_a_json_list() {
        let (mode, text) = collected(&[1, 2, 3]);
        assert_eq!(mode, Mode::List);
        assert_eq!(text, "[1,2,3");
        let v = [
            serde_json::json!("a"),
            serde_json::json!({"k": 1}),
            serde_json::json!("b"),
        ];
        assert_eq!(collected(&v).1, r#"["a",{"k":1},"b""#);
    }

    /// An item far past the bound leaves no more than the bound allocated (the stream
    /// may go on for long).
    #[test]
    fn a_huge_item_leaves_the_bound_allocated() {
        let max = crate::util::open_traces::stream_output_max();
        let huge = "x".repeat(20 * max);
        let mut c = Collect::new();
        c.push_item(huge.as_str());
        assert_eq!(c.text.len(), max);
        assert!(c.text.capacity() < 2 * max, "{}", c.text.capacity());
        let mut c = Collect::new();
        c.push_item(&1);
        c.push_item(&vec![7u8; 20 * max]);
        assert_eq!(c.text, "[1");
        assert!(c.text.capacity() < 2 * max, "{}", c.text.capacity());
    }
}
