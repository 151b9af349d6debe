//! Span and event fields as the layer keeps them: a flat list of names and plain values,
//! turned into JSON only when a step records them.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use tracing::field::{Field, Visit};

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

impl Fields {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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
        self.0
            .push((field.name(), FieldValue::Str(value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .push((field.name(), FieldValue::Str(format!("{value:?}"))));
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
}
