//! Whether a value is `None` (or `()`): the update APIs ignore those, while other values
//! that encode as JSON `null` (NaN, ±inf) are kept as `null`.

use serde::ser::{self, Impossible, Serialize, Serializer};

/// Stops probing as soon as the value is known not to be `None`.
#[derive(Debug)]
struct NotNone;

impl std::fmt::Display for NotNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not none")
    }
}

impl std::error::Error for NotNone {}

impl ser::Error for NotNone {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotNone
    }
}

struct Probe;

macro_rules! not_none {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<(), NotNone> { Err(NotNone) })*
    };
}

impl Serializer for Probe {
    type Ok = ();
    type Error = NotNone;
    type SerializeSeq = Impossible<(), NotNone>;
    type SerializeTuple = Impossible<(), NotNone>;
    type SerializeTupleStruct = Impossible<(), NotNone>;
    type SerializeTupleVariant = Impossible<(), NotNone>;
    type SerializeMap = Impossible<(), NotNone>;
    type SerializeStruct = Impossible<(), NotNone>;
    type SerializeStructVariant = Impossible<(), NotNone>;

    fn serialize_none(self) -> Result<(), NotNone> {
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), NotNone> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), NotNone> {
        Err(NotNone)
    }
    crate::util::json::with_numbers!(
        not_none,
        serialize_bool(bool),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str)
    );
    not_none!(serialize_unit_variant(&'static str, u32, &'static str));
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NotNone> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotNone> {
        Err(NotNone)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotNone> {
        Err(NotNone)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotNone> {
        Err(NotNone)
    }
}

/// Whether `value` is `None`, `()`, or a JSON `null` value.
///
/// A value whose `Serialize` panics counts as `None`: every caller then leaves it out,
/// as it would after a failed serialization, without serializing it again (which would
/// panic again).
pub(crate) fn is_none<T: Serialize + ?Sized>(value: &T) -> bool {
    let mut panicked = false;
    let probed = crate::util::json::unpanicked(
        || value.serialize(Probe),
        || {
            panicked = true;
            NotNone
        },
    );
    probed.is_ok() || panicked
}

#[cfg(test)]
mod tests {
    use super::is_none;

    #[test]
    fn only_absent_values_are_none() {
        assert!(is_none(&None::<u8>));
        assert!(is_none(&()));
        assert!(is_none(&serde_json::Value::Null));
        assert!(!is_none(&Some(1)));
        assert!(!is_none(&Some(None::<u8>)));
        assert!(!is_none(&f64::NAN));
        assert!(!is_none(&"null"));
        assert!(!is_none(&serde_json::json!({"a": null})));
        assert!(!is_none(&vec![None::<u8>]));
    }
}
