//! A value whose `Serialize` panics never panics into traced code: the argument, output,
//! stream item or metadata is recorded as `null` (or left out), and the traced call goes
//! on as if untraced.

use openlayer_trace::testing;
use openlayer_trace::{TraceIteratorExt, trace, update_current_trace};
use serde::{Serialize, Serializer};

/// Serializes as its number, or panics when it is 13.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Touchy(u32);

impl Serialize for Touchy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, 13, "unlucky value serialized");
        s.serialize_u32(self.0)
    }
}

#[trace]
fn echo(a: Touchy, b: u32) -> Touchy {
    Touchy(a.0 + b)
}

#[test]
fn a_panicking_argument_or_output_is_recorded_as_null() {
    let (out, traces) = testing::capture(|| (echo(Touchy(13), 0), echo(Touchy(1), 12)));
    assert_eq!(out, (Touchy(13), Touchy(13)), "the calls returned");
    assert_eq!(traces.len(), 2);
    let first = traces[0].root();
    assert_eq!(
        first["inputs"],
        serde_json::json!({"a": null, "b": 0}),
        "{first}"
    );
    assert_eq!(first["output"], serde_json::Value::Null, "{first}");
    assert!(first["metadata"].get("Exceptions").is_none(), "{first}");
    let second = traces[1].root();
    assert_eq!(
        second["inputs"],
        serde_json::json!({"a": 1, "b": 12}),
        "{second}"
    );
    assert_eq!(second["output"], serde_json::Value::Null, "{second}");
}

#[test]
fn a_panicking_stream_item_is_recorded_as_null() {
    let (got, traces) = testing::capture(|| {
        [Touchy(1), Touchy(13), Touchy(2)]
            .into_iter()
            .traced("items")
            .collect::<Vec<_>>()
    });
    assert_eq!(got, [Touchy(1), Touchy(13), Touchy(2)]);
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_eq!(root["output"], serde_json::json!([1, null, 2]), "{root}");
}

#[trace]
fn annotated() -> u32 {
    update_current_trace!(bad = Touchy(13), good = Touchy(3));
    7
}

#[test]
fn a_panicking_metadata_value_is_left_out() {
    let (got, traces) = testing::capture(annotated);
    assert_eq!(got, 7);
    let root = traces[0].root();
    assert_eq!(root["output"], 7, "{root}");
    assert_eq!(traces[0].row()["good"], 3, "{:?}", traces[0].row());
    assert!(
        traces[0].row().get("bad").is_none(),
        "{:?}",
        traces[0].row()
    );
}

/// Serializes as its text, or panics when it is "13".
#[derive(Debug, Clone, Copy, PartialEq)]
struct TouchyText(&'static str);

impl Serialize for TouchyText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, "13", "unlucky text serialized");
        s.serialize_str(self.0)
    }
}

/// Text items are joined into one string until one panics: the output becomes a list,
/// that item `null`.
#[test]
fn a_panicking_text_item_ends_the_joined_text() {
    let (got, traces) = testing::capture(|| {
        [TouchyText("a"), TouchyText("13"), TouchyText("b")]
            .into_iter()
            .traced("texts")
            .count()
    });
    assert_eq!(got, 3);
    let root = traces[0].root();
    assert_eq!(
        root["output"],
        serde_json::json!(["a", null, "b"]),
        "{root}"
    );
}

/// A struct that serializes as its fields, or panics when `n` is 13.
#[derive(Debug, Clone, Copy)]
struct Answer {
    n: u32,
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        assert_ne!(self.n, 13, "unlucky answer serialized");
        let mut st = s.serialize_struct("Answer", 1)?;
        st.serialize_field("n", &self.n)?;
        st.end()
    }
}

/// `n` is not an argument: the output's field is promoted.
#[trace(promote(n = "answer_n"))]
fn answer(k: u32) -> Answer {
    Answer { n: k }
}

#[test]
fn a_panicking_promoted_output_is_left_out() {
    let (got, traces) = testing::capture(|| (answer(13).n, answer(2).n));
    assert_eq!(got, (13, 2));
    assert!(
        traces[0].row().get("answer_n").is_none(),
        "{:?}",
        traces[0].row()
    );
    assert_eq!(traces[1].row()["answer_n"], 2, "{:?}", traces[1].row());
}

/// Serializes as a string, or panics with a message of its own (counted by the hook).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted;

impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("counted-unlucky");
    }
}

#[trace]
fn with_counted() -> usize {
    update_current_trace!(counted = Counted);
    [Counted].into_iter().traced("counted_items").count()
}

/// A panicking value is serialized once: not probed (for `None`) and then written, nor
/// joined as text and then written as a list element.
#[test]
fn a_panicking_value_is_serialized_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() == Some(&"counted-unlucky") {
            PANICS.fetch_add(1, Ordering::SeqCst);
        } else {
            previous(info);
        }
    }));
    let (got, traces) = testing::capture(with_counted);
    assert_eq!(got, 1);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        2,
        "once for the metadata, once for the item"
    );
    assert!(traces[0].row().get("counted").is_none());
    let items = traces[0].step("counted_items").unwrap();
    assert_eq!(items["output"], serde_json::json!([null]), "{items}");
}
