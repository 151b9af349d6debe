use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::json;

use super::*;

/// Our output against `serde_json::to_string`, for the value and its error.
fn same<T: Serialize + ?Sized>(value: &T) {
    let mut ours = Vec::new();
    let r = to_vec(&mut ours, value);
    match serde_json::to_string(value) {
        Ok(theirs) => {
            assert!(r.is_ok(), "we failed where serde_json gave {theirs}: {r:?}");
            assert_eq!(String::from_utf8(ours).unwrap(), theirs);
        }
        Err(e) => {
            let ours = r.expect_err("serde_json failed, we did not");
            assert_eq!(ours.to_string(), e.to_string());
        }
    }
}

#[test]
fn strings_match_serde_json_byte_for_byte() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "a".into(),
        "What is the capital of France?".into(),
        "exactly8".into(),
        "sixteen bytes!!!".into(),
        "quote \" in the middle of a long string".into(),
        "back\\slash".into(),
        "tab\tnew\nline\rcr".into(),
        "\u{0}\u{1}\u{1f}\u{7f}".into(),
        "é, ü, 日本語, emoji 🦀, and \u{2028}".into(),
        "\u{80}\u{ff}\u{100}".into(),
        "/ is not escaped".into(),
    ];
    // Every length up to 40 (the short copies and the long one), with distinct bytes.
    for len in 0..=40 {
        cases.push(
            (0..len)
                .map(|i| char::from(b'0' + (i % 43) as u8))
                .collect(),
        );
    }
    // Every byte value below 0x80 at every position of a 17-byte string.
    for c in 0u8..0x80 {
        for pos in 0..17 {
            let mut s = vec![b'x'; 17];
            s[pos] = c;
            cases.push(String::from_utf8(s).unwrap());
        }
    }
    for s in &cases {
        same(s.as_str());
        same(&s.chars().next());
    }
}

#[test]
fn values_of_every_shape_match_serde_json() {
    #[derive(Serialize)]
    struct Unit;
    #[derive(Serialize)]
    struct Newtype(String);
    #[derive(Serialize)]
    struct Tuple(u8, &'static str);
    #[derive(Serialize)]
    struct Fields {
        name: &'static str,
        tags: Vec<&'static str>,
        score: f64,
        none: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        nested: BTreeMap<String, Vec<i64>>,
    }
    #[derive(Serialize)]
    enum E {
        Unit,
        Newtype(u32),
        Tuple(i8, String),
        Struct { a: bool, b: &'static str },
    }
    same(&Unit);
    same(&Newtype("n\"t".into()));
    same(&Tuple(7, "t"));
    same(&Fields {
        name: "f",
        tags: vec!["a", "b\n"],
        score: 0.1 + 0.2,
        none: None,
        skipped: None,
        nested: BTreeMap::from([("k\u{1}".into(), vec![-1, 0, i64::MAX])]),
    });
    same(&[
        E::Unit,
        E::Newtype(1),
        E::Tuple(-3, "x".into()),
        E::Struct { a: true, b: "y" },
    ]);
    same(&Vec::<u8>::new());
    same(&(
        1u8,
        -2i16,
        3u32,
        -4i64,
        5u128,
        -6i128,
        1.5f32,
        f64::NAN,
        f64::INFINITY,
    ));
    same(&((), Some(()), None::<u8>, 'c', '"', true, false));
    same(&serde_bytes_like());
    same(&json!({"z": 1, "a": [null, true, 2.5, "s"], "o": {"k": {}}, "e": []}));
}

/// `&[u8]` through `serialize_bytes`.
fn serde_bytes_like() -> impl Serialize {
    struct Bytes;
    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b"\x00\x01ab")
        }
    }
    Bytes
}

#[test]
fn map_keys_match_serde_json_including_errors() {
    #[derive(Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
    enum K {
        Alpha,
    }
    #[derive(Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
    struct Wrapped(u16);
    same(&BTreeMap::from([(1i32, "a"), (-2, "b")]));
    same(&BTreeMap::from([(u128::MAX, 1)]));
    same(&BTreeMap::from([(true, 1), (false, 2)]));
    same(&BTreeMap::from([('k', 1)]));
    same(&BTreeMap::from([(K::Alpha, 1)]));
    same(&BTreeMap::from([(Wrapped(9), 1)]));
    same(&BTreeMap::from([(Some("s"), 1)]));
    same(&HashMap::from([("quote\"d", 1)]));
    // Errors, with serde_json's messages.
    same(&BTreeMap::from([(vec![1], 1)]));
    same(&BTreeMap::from([((), 1)]));
    same(&BTreeMap::from([(None::<u8>, 1)]));
    let mut floats = Vec::new();
    floats.push((1.5f64, 1));
    same(&floats.iter().cloned().collect::<FloatMap>());
    floats.push((f64::NAN, 2));
    same(&floats.iter().cloned().collect::<FloatMap>());
}

/// A map with `f64` keys (not `Ord`), in insertion order.
struct FloatMap(Vec<(f64, i32)>);
impl FromIterator<(f64, i32)> for FloatMap {
    fn from_iter<I: IntoIterator<Item = (f64, i32)>>(iter: I) -> Self {
        FloatMap(iter.into_iter().collect())
    }
}
impl Serialize for FloatMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[test]
fn collect_str_and_errors_from_serialize_impls() {
    struct Displayed;
    impl Serialize for Displayed {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("a{}\"b", 1))
        }
    }
    same(&Displayed);
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }
    same(&Fails);
    same(&vec![Some(Fails)]);
}

#[test]
fn elements_after_an_announced_empty_length_stay_valid_json() {
    struct Lies;
    impl Serialize for Lies {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(0))?;
            seq.serialize_element(&1)?;
            seq.end()
        }
    }
    let mut out = Vec::new();
    to_vec(&mut out, &Lies).unwrap();
    assert_eq!(out, b"[1]");
    // serde_json's own output is not JSON.
    assert_eq!(serde_json::to_string(&Lies).unwrap(), "[],1]");
}

/// A map whose `Serialize` breaks serde's key-value order is an error, never text that
/// is not JSON (`{"k":}`, `{"k":12}`), which would go into a row as it is.
#[test]
fn map_entries_out_of_order_are_errors_not_broken_json() {
    use serde::ser::SerializeMap;
    #[derive(Clone, Copy)]
    enum Misuse {
        KeyWithoutValue,
        TwoValues,
        TwoKeys,
        ValueFirst,
        InOrder,
    }
    impl Serialize for Misuse {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            match self {
                Misuse::KeyWithoutValue => map.serialize_key("k")?,
                Misuse::TwoValues => {
                    map.serialize_key("k")?;
                    map.serialize_value(&1)?;
                    map.serialize_value(&2)?;
                }
                Misuse::TwoKeys => {
                    map.serialize_key("a")?;
                    map.serialize_key("b")?;
                    map.serialize_value(&1)?;
                }
                Misuse::ValueFirst => map.serialize_value(&1)?,
                Misuse::InOrder => {
                    map.serialize_key("k")?;
                    map.serialize_value(&1)?;
                    map.serialize_entry("l", &2)?;
                }
            }
            map.end()
        }
    }
    for m in [
        Misuse::KeyWithoutValue,
        Misuse::TwoValues,
        Misuse::TwoKeys,
        Misuse::ValueFirst,
    ] {
        let mut out = Vec::new();
        assert!(
            to_vec(&mut out, &m).is_err(),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // Nested too: the error reaches the top.
        let mut out = Vec::new();
        assert!(
            to_vec(&mut out, &vec![m]).is_err(),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    let mut out = Vec::new();
    to_vec(&mut out, &Misuse::InOrder).unwrap();
    assert_eq!(out, br#"{"k":1,"l":2}"#);
}

#[test]
fn serde_json_raw_values_are_written_as_they_are() {
    // What `serde_json::value::RawValue` (feature `raw_value`) serializes as.
    struct Raw(&'static str);
    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut st = s.serialize_struct("$serde_json::private::RawValue", 1)?;
            st.serialize_field("$serde_json::private::RawValue", self.0)?;
            st.end()
        }
    }
    let mut out = Vec::new();
    to_vec(&mut out, &vec![Raw("{\"a\": [1, 2]}"), Raw("3.0e10")]).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[{\"a\": [1, 2]},3.0e10]");
}

#[test]
fn the_escape_check_has_no_false_negatives() {
    for len in 0..40 {
        for pos in 0..len {
            for c in 0u8..=0xff {
                let mut b = vec![b'a'; len];
                b[pos] = c;
                let expect = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(needs_escape(&b), expect, "byte {c:#x} at {pos} of {len}");
            }
        }
    }
}

#[test]
fn nesting_depth_counts_brackets_outside_strings_only() {
    assert!(!nests_deeper_than(br#"{"a":[1,{"b":2}]}"#, 3));
    assert!(nests_deeper_than(br#"{"a":[1,{"b":2}]}"#, 2));
    // Brackets in strings, escaped quotes included, do not count.
    assert!(!nests_deeper_than(br#"{"a":"[[[{{{\"[[["}"#, 1));
    assert!(nests_deeper_than(br#"{"a\"":[[]]}"#, 2));
    // Depth, not count: siblings do not add up.
    assert!(!nests_deeper_than(b"[[],[],[],[]]", 2));
}

#[test]
fn lone_surrogates_are_replaced_and_pairs_kept() {
    assert_eq!(replace_lone_surrogates(r#"{"a":"x"}"#), None);
    // A pair (😀) stays; an escaped backslash before `u` is no escape.
    assert_eq!(
        replace_lone_surrogates(r#"["\ud83d\ude00","\\udc00"]"#),
        None
    );
    assert_eq!(
        replace_lone_surrogates(r#"{"a":"x\udc00y","b":"\uD800","c":"\ud800\u0041"}"#).as_deref(),
        Some(r#"{"a":"x\ufffdy","b":"\ufffd","c":"\ufffd\u0041"}"#)
    );
    // Outside strings nothing is read as an escape.
    assert_eq!(replace_lone_surrogates(r#"{"k":1}"#), None);
    let fixed = replace_lone_surrogates(r#"["\udc00"]"#).unwrap();
    let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
    assert_eq!(v[0], "\u{fffd}");
}

#[test]
fn numbers_beyond_f64_are_written_null_and_others_kept() {
    assert_eq!(
        replace_huge_numbers(r#"{"a":1e308,"b":-2.5E-400,"c":"1e400"}"#),
        None
    );
    let long = "9".repeat(400);
    let text = format!(r#"{{"a":1e400,"b":[-1E999,3],"c":{long},"d":"x\"1e400"}}"#);
    assert_eq!(
        replace_huge_numbers(&text).as_deref(),
        Some(r#"{"a":null,"b":[null,3],"c":null,"d":"x\"1e400"}"#)
    );
    let fixed = sanitized_raw(r#"{"a":1e400,"b":"\ud800"}"#);
    assert_eq!(fixed, r#"{"a":null,"b":"\ufffd"}"#);
    assert!(serde_json::from_str::<serde_json::Value>(&fixed).is_ok());
    assert!(matches!(
        sanitized_raw(r#"{"a":1}"#),
        std::borrow::Cow::Borrowed(_)
    ));
}
