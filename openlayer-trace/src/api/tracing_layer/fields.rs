//! Span and event fields as the layer keeps them: a flat list of names and plain values,
//! turned into JSON only when a step records them; and [`InputWriter`], which writes a
//! span's plain fields straight into its step's inputs.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde::ser::{Serialize, SerializeMap, Serializer};
use tracing::field::{Field, Visit};

use crate::record::write_json;
use crate::util::json::push_str;
use crate::util::panic::caught;

/// The text of a user's `Debug` or `Display` value: what it wrote before an error, if it
/// returns one (`format!` and `to_string` would panic into the traced code then), or
/// before it panicked (the panic stops here).
pub(super) fn text_of(args: fmt::Arguments<'_>) -> String {
    let mut s = String::new();
    let _ = caught(|| s.write_fmt(args));
    s
}

/// Whether a field name is an attribute of some convention (dotted, as `server.address`)
/// rather than a plain argument: those go to the metadata, never to the inputs.
pub(crate) fn is_attribute(key: &str) -> bool {
    key.as_bytes().contains(&b'.')
}

/// One field's value, as `tracing` hands it over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldValue {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
}

impl FieldValue {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer (also from a string holding one).
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            FieldValue::I64(n) => Some(*n),
            FieldValue::U64(n) => i64::try_from(*n).ok(),
            FieldValue::F64(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
            FieldValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as a float (also from a string holding one).
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::I64(n) => Some(*n as f64),
            FieldValue::U64(n) => Some(*n as f64),
            FieldValue::F64(f) => Some(*f),
            FieldValue::Str(s) => s.trim().parse().ok(),
            FieldValue::Bool(_) => None,
        }
    }

    /// The value, a string cut to [`output_max_bytes`](crate::stream::output_max_bytes)
    /// (see [`cut_to`]): what a span's field or event holds in a step beyond its inputs
    /// (its metadata, output, error) stays bounded while the trace is open.
    pub(crate) fn bounded(self) -> Self {
        match self {
            FieldValue::Str(mut s) => {
                cut_to(&mut s, crate::util::open_traces::stream_output_max());
                FieldValue::Str(s)
            }
            other => other,
        }
    }

    /// The text of the value (a string as is, anything else as written).
    pub(crate) fn text(&self) -> String {
        match self {
            FieldValue::Str(s) => s.clone(),
            FieldValue::Bool(b) => b.to_string(),
            FieldValue::I64(n) => n.to_string(),
            FieldValue::U64(n) => n.to_string(),
            FieldValue::F64(f) => f.to_string(),
        }
    }
}

/// Cuts `s` to at most `max` bytes (at a character boundary) when it is longer, ending it
/// with a marker of the bytes cut (`…[truncated N bytes]`).
pub(crate) fn cut_to(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let end = crate::util::text::floor_boundary(s, max);
    let removed = s.len() - end;
    s.truncate(end);
    s.push_str(&crate::util::text::cut_marker(removed));
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Bool(b) => s.serialize_bool(*b),
            FieldValue::I64(n) => s.serialize_i64(*n),
            FieldValue::U64(n) => s.serialize_u64(*n),
            FieldValue::F64(f) => s.serialize_f64(*f),
            FieldValue::Str(v) => s.serialize_str(v),
        }
    }
}

/// Fields in the order they were recorded.
#[derive(Debug, Default)]
pub(crate) struct Fields(pub(crate) Vec<(&'static str, FieldValue)>);

/// Serializes as a JSON object (a later field of the same name wins, as in a span).
impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if self.0[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.push((field.name(), FieldValue::F64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name(), FieldValue::I64(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name(), FieldValue::U64(value)));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value)
            .map(FieldValue::I64)
            .unwrap_or_else(|_| FieldValue::Str(value.to_string()));
        self.0.push((field.name(), v));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value)
            .map(FieldValue::U64)
            .unwrap_or_else(|_| FieldValue::Str(value.to_string()));
        self.0.push((field.name(), v));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), FieldValue::Bool(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .push((field.name(), FieldValue::Str(value.to_owned())));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.push((
            field.name(),
            FieldValue::Str(text_of(format_args!("{value}"))),
        ));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((
            field.name(),
            FieldValue::Str(text_of(format_args!("{value:?}"))),
        ));
    }
}

/// The plain fields of `fields` (not [attributes](is_attribute)) as a JSON object, for a
/// step's inputs; a later field of the same name wins. Nothing when there is none.
pub(crate) fn write_inputs(buf: &mut String, fields: &[(&'static str, FieldValue)]) {
    if fields.iter().any(|(k, _)| !is_attribute(k)) {
        // Only plain values: this cannot fail.
        let _ = write_json(buf, &Inputs(fields));
    }
}

/// The plain fields of a list, serialized as a JSON object.
struct Inputs<'a>(&'a [(&'static str, FieldValue)]);

impl Serialize for Inputs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if is_attribute(k) || self.0[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// How many distinct field names [`InputWriter`] tracks; a span with more takes the
/// general path.
const TRACKED: usize = 16;

/// The most a thread keeps of its formatting buffer between values.
const TEXT_MAX: usize = 64 * 1024;

thread_local! {
    /// The text of a `Debug` or `Display` value, before it is written as a JSON string.
    static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes the plain fields of a span (not [attributes](is_attribute)) into `buf` as a JSON
/// object as they are visited, the same text [`write_inputs`] writes, without
/// collecting them first. It gives up on a name seen twice (a later field of the same name
/// wins, which needs the whole list) or on more than [`TRACKED`] fields: then
/// [`finish`](Self::finish) says so and the caller writes the inputs from [`Fields`].
pub(crate) struct InputWriter<'a> {
    buf: &'a mut String,
    seen: [&'static str; TRACKED],
    n: usize,
    gave_up: bool,
}

impl<'a> InputWriter<'a> {
    /// A writer appending to `buf`, which must be empty.
    pub(crate) fn new(buf: &'a mut String) -> Self {
        InputWriter {
            buf,
            seen: [""; TRACKED],
            n: 0,
            gave_up: false,
        }
    }

    /// Closes the object. `false` when the writer gave up (the buffer then holds a part).
    pub(crate) fn finish(self) -> bool {
        if self.gave_up {
            return false;
        }
        if self.n > 0 {
            self.buf.push('}');
        }
        true
    }

    /// Writes the key of `field` when it is an input; `false` when its value is not
    /// written.
    #[inline]
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.gave_up || is_attribute(name) {
            return false;
        }
        if self.n == TRACKED || self.seen[..self.n].contains(&name) {
            self.gave_up = true;
            return false;
        }
        self.buf.push(if self.n == 0 { '{' } else { ',' });
        self.seen[self.n] = name;
        self.n += 1;
        push_str(self.buf, name);
        self.buf.push(':');
        true
    }

    fn number<T: Serialize>(&mut self, field: &Field, v: T) {
        if self.key(field) {
            // Numbers: this cannot fail (a float that is not finite is `null`).
            let _ = write_json(self.buf, &v);
        }
    }

    /// Writes a formatted value as a JSON string.
    fn text(&mut self, field: &Field, v: fmt::Arguments<'_>) {
        if !self.key(field) {
            return;
        }
        let written = TEXT.try_with(|t| {
            let Ok(mut t) = t.try_borrow_mut() else {
                return false;
            };
            t.clear();
            let _ = caught(|| t.write_fmt(v));
            push_str(self.buf, &t);
            // One huge value does not pin its memory on this thread.
            if t.capacity() > TEXT_MAX {
                *t = String::new();
            }
            true
        });
        if written != Ok(true) {
            push_str(self.buf, &text_of(v));
        }
    }
}

impl Visit for InputWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        match i64::try_from(value) {
            Ok(v) => self.number(field, v),
            Err(_) => self.text(field, format_args!("{value}")),
        }
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        match u64::try_from(value) {
            Ok(v) => self.number(field, v),
            Err(_) => self.text(field, format_args!("{value}")),
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.buf.push_str(if value { "true" } else { "false" });
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            push_str(self.buf, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_fields_win_and_values_keep_their_type() {
        let f = Fields(vec![
            ("a", FieldValue::I64(1)),
            ("b", FieldValue::Str("x".into())),
            ("a", FieldValue::F64(2.5)),
            ("c", FieldValue::Bool(true)),
        ]);
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"b":"x","a":2.5,"c":true}"#
        );
        assert_eq!(FieldValue::Str(" 12 ".into()).as_i64(), Some(12));
        assert_eq!(FieldValue::U64(7).as_f64(), Some(7.0));
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let mut s = "ab€cd".to_string();
        cut_to(&mut s, 4);
        assert_eq!(s, "ab…[truncated 5 bytes]");
        let mut short = "abc".to_string();
        cut_to(&mut short, 3);
        assert_eq!(short, "abc");
    }

    /// The inputs of a span written straight (`None`: the writer gave up) and from the list.
    type Written = (Option<String>, String);

    /// Writes the inputs of each new span both ways: straight ([`InputWriter`]) and from the
    /// collected list.
    struct BothWays(std::sync::Arc<std::sync::Mutex<Vec<Written>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BothWays {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut straight = String::new();
            let mut w = InputWriter::new(&mut straight);
            attrs.record(&mut w);
            let straight = w.finish().then_some(straight);
            let mut all = Fields::default();
            attrs.record(&mut all);
            let mut listed = String::new();
            write_inputs(&mut listed, &all.0);
            self.0.lock().unwrap().push((straight, listed));
        }
    }

    #[test]
    fn inputs_written_straight_are_those_written_from_the_list() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(BothWays(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let _a = tracing::info_span!(
                "all",
                s = "say \"hi\"\n",
                u = 7u64,
                i = -3i64,
                f = 1.5f64,
                nan = f64::NAN,
                b = true,
                dbg = ?vec!["a", "b"],
                disp = %"shown",
                big = 1u128 << 100,
                neg = -(1i128 << 100),
                gen_ai.system = "openai",
                empty = tracing::field::Empty,
            );
            let _b = tracing::info_span!("none", server.address = "localhost");
            let _c = tracing::info_span!("nothing");
            let _d = tracing::info_span!("twice", a = 1, b = 2, a = 3);
        });
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].1,
            r#"{"s":"say \"hi\"\n","u":7,"i":-3,"f":1.5,"nan":null,"b":true,"dbg":"[\"a\", \"b\"]","disp":"shown","big":"1267650600228229401496703205376","neg":"-1267650600228229401496703205376"}"#
        );
        assert_eq!(seen[0].0.as_deref(), Some(seen[0].1.as_str()));
        assert_eq!(seen[1], (Some(String::new()), String::new()));
        assert_eq!(seen[2], (Some(String::new()), String::new()));
        // A repeated name: the writer gives up, and the later field wins in the list.
        assert_eq!(seen[3], (None, r#"{"b":2,"a":3}"#.to_string()));
    }
}
