//! `StepBuilder::start` and `StepHandle`: a step owned by a value, entered for each piece
//! of work, moved between threads, and closed by `finish` or, as cancelled, by drop.

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{StepHandle, StepKind, step, trace, update_current_trace};
use serde_json::{Value, json};

fn shape(step: &Value) -> String {
    let children: Vec<String> = step["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(shape)
        .collect();
    let name = step["name"].as_str().unwrap();
    if children.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", children.join(", "))
    }
}

fn tree(t: &CapturedTrace) -> String {
    shape(t.root())
}

#[trace]
fn piece(i: u32) -> String {
    format!("p{i}")
}

#[test]
fn finished_handle_records_output_and_children() {
    let (_, traces) = testing::capture(|| {
        let mut h = step("stream")
            .kind(StepKind::ChatCompletion)
            .inputs(&json!({"prompt": "hi"}))
            .start();
        assert!(h.is_recording());
        let mut out = String::new();
        for i in 0..3 {
            out.push_str(&h.in_scope(|| piece(i)));
        }
        // Outside `in_scope`, nothing is current: a traced call here is a trace of its own.
        piece(9);
        h.output(&out);
        h.metadata("model", "gpt-4o-mini");
        h.metadata("timeToFirstToken", &12.5);
        h.finish();
    });
    assert_eq!(
        traces.len(),
        2,
        "the handle's trace and the call outside it"
    );
    let t = traces
        .iter()
        .find(|t| t.root()["name"] == "stream")
        .unwrap();
    assert_eq!(tree(t), "stream(piece, piece, piece)");
    let root = t.root();
    assert_eq!(root["output"], "p0p1p2");
    assert_eq!(root["inputs"], json!({"prompt": "hi"}));
    assert_eq!(root["type"], "chat_completion");
    assert_eq!(root["model"], "gpt-4o-mini");
    assert_eq!(root["metadata"]["timeToFirstToken"], 12.5);
    assert!(root["metadata"].get("cancelled").is_none());
    assert_eq!(t.row()["output"], "p0p1p2");
}

#[test]
fn dropped_handle_closes_as_cancelled_with_partial_output() {
    let (_, traces) = testing::capture(|| {
        let mut h = step("stream").start();
        h.output(&"partial");
        drop(h);
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_eq!(root["metadata"]["cancelled"], true);
    assert_eq!(root["output"], "partial");
}

#[test]
fn error_then_drop_is_failed_and_cancelled() {
    let (_, traces) = testing::capture(|| {
        let mut h = step("stream").start();
        h.error(&"connection reset");
        drop(h);
    });
    let root = traces[0].root();
    assert_eq!(root["metadata"]["Exceptions"], "connection reset");
    assert_eq!(root["metadata"]["cancelled"], true);
    assert_eq!(root["output"], Value::Null);
}

#[test]
fn error_then_finish_is_failed_not_cancelled() {
    let (_, traces) = testing::capture(|| {
        let mut h = step("stream").start();
        h.output(&"ignored");
        h.error(&"bad item");
        h.finish();
    });
    let root = traces[0].root();
    assert_eq!(root["metadata"]["Exceptions"], "bad item");
    assert!(root["metadata"].get("cancelled").is_none());
    assert_eq!(root["output"], Value::Null);
}

#[test]
fn a_handle_nests_under_the_current_step_and_moves_to_another_thread() {
    let (_, traces) = testing::capture(|| {
        let _root = step("root").enter();
        let h = step("producer").start();
        // The handle's step is not current: the caller's position is unchanged.
        piece(0);
        let worker = std::thread::spawn(move || {
            let mut h = h;
            let out = h.in_scope(|| piece(1));
            update_inside(&h);
            h.output(&out);
            h.finish();
        });
        worker.join().unwrap();
    });
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(tree(t), "root(producer(piece), piece)");
    assert_eq!(t.inference_id(), "from-the-worker");
}

fn update_inside(h: &StepHandle) {
    h.in_scope(|| update_current_trace!(inference_id = "from-the-worker"));
}

#[test]
fn the_trace_waits_for_an_open_handle() {
    let (_, traces) = testing::capture(|| {
        let h = {
            let _root = step("root").enter();
            step("late").start()
        };
        // The root has returned, but the handle still holds the trace open.
        assert!(h.is_recording());
        h.finish();
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "root(late)");
}

#[test]
fn context_carries_the_handles_position_into_spawned_work() {
    let (_, traces) = testing::capture(|| {
        let h = step("parent").start();
        let ctx = h.context().expect("recorded");
        h.finish();
        std::thread::spawn(move || ctx.in_scope(|| piece(4)))
            .join()
            .unwrap();
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "parent(piece)");
}

#[test]
fn a_panic_while_entered_restores_the_position_and_records_the_message() {
    let (_, traces) = testing::capture(|| {
        let h = step("panicky").start();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _e = h.enter();
            let _keep = &h;
            panic!("boom in a chunk");
        }));
        assert!(r.is_err());
        // The position was restored: this is a new trace, not a child of the dead step.
        piece(1);
    });
    assert_eq!(traces.len(), 2);
    let t = traces
        .iter()
        .find(|t| t.root()["name"] == "panicky")
        .unwrap();
    let exc = t.root()["metadata"]["Exceptions"].as_str().unwrap();
    assert!(exc.contains("boom in a chunk"), "{exc}");
    assert!(traces.iter().any(|t| tree(t) == "piece"));
}

#[test]
fn disabled_handle_records_nothing() {
    let mut h = StepHandle::disabled();
    assert!(!h.is_recording());
    h.output(&"x");
    h.metadata("k", &1);
    assert!(h.context().is_none());
    h.in_scope(|| ());
    h.finish();
}

#[test]
fn handle_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<StepHandle>();
}

#[test]
fn start_with_inputs_writes_the_fields_and_escapes_names() {
    #[derive(serde::Serialize)]
    struct Page {
        n: u32,
    }
    let (ids, traces) = testing::capture(|| {
        let h = step("request").start_with_inputs(|w| {
            w.field("method", "GET");
            w.field("a \"quoted\" name", &Page { n: 2 });
            w.field("none", &None::<u8>);
        });
        let outside = h.in_scope(openlayer_trace::current_inference_id);
        let id = h.inference_id();
        h.finish();
        (outside, id)
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_eq!(
        root["inputs"],
        json!({"method": "GET", "a \"quoted\" name": {"n": 2}, "none": null})
    );
    // The handle's inference id is the row's, as `current_inference_id` sees it inside.
    assert_eq!(ids.0.as_deref(), Some(traces[0].inference_id()));
    assert_eq!(ids.1.as_deref(), Some(traces[0].inference_id()));
}

#[test]
fn input_objects_nest_and_an_empty_one_is_left_out() {
    let (_, traces) = testing::capture(|| {
        let h = step("request").start_with_inputs(|w| {
            w.object("empty first", |_| {});
            w.field("method", "GET");
            w.object("headers", |w| {
                w.field("user-agent", "t/1");
                w.object("nested \"deeper\"", |w| w.field("n", &1));
                w.object("empty", |w| w.object("also empty", |_| {}));
                w.field("x-a", "2");
            });
            w.object("empty last", |_| {});
        });
        h.finish();
        let h = step("only-empty").start_with_inputs(|w| w.object("none", |_| {}));
        h.finish();
    });
    assert_eq!(traces.len(), 2);
    let expected = concat!(
        r#""inputs":{"method":"GET","headers":{"user-agent":"t/1","#,
        r#""nested \"deeper\"":{"n":1},"x-a":"2"}}"#,
    );
    assert!(
        traces[0].row_json().contains(expected),
        "{}",
        traces[0].row_json()
    );
    assert_eq!(traces[1].root()["inputs"], serde_json::Value::Null);
}

/// Text inputs, copied as they are and encoded by the worker, come out as the same JSON
/// as inputs written as JSON on the spot: in the row's bytes, in its columns, and for a
/// step below the root.
#[test]
fn text_inputs_encode_to_the_same_json_as_inputs_written_on_the_spot() {
    let body: Box<serde_json::value::RawValue> =
        serde_json::from_str(r#"{"q": "capital of France?", "n": [1, 2]}"#).unwrap();
    let tricky = "quote \" backslash \\ newline \n tab \t \u{1} é 🦀";
    let (_, traces) = testing::capture(|| {
        for text in [false, true] {
            let name = if text { "text" } else { "json" };
            // The same fields through either writer; only the body's call differs.
            macro_rules! fields {
                ($w:ident, $body:expr) => {{
                    $w.object("empty first", |_| {});
                    $w.field("method", "GET");
                    $w.field("a \"quoted\" name", tricky);
                    $w.object("headers", |w| {
                        w.field("user-agent", "t/1");
                        w.object("empty", |w| w.object("also empty", |_| {}));
                        w.field("x-long", &"x".repeat(300));
                    });
                    $body;
                }};
            }
            let h = if text {
                step(name).start_with_text_inputs(|w| fields!(w, w.json("body", &body)))
            } else {
                step(name).start_with_inputs(|w| fields!(w, w.field("body", &body)))
            };
            h.in_scope(|| {
                let child = if text {
                    step("child").start_with_text_inputs(|w| w.field("k", "v\""))
                } else {
                    step("child").start_with_inputs(|w| w.field("k", "v\""))
                };
                child.finish();
                // No field at all: no inputs.
                let none = if text {
                    step("none").start_with_text_inputs(|w| w.object("o", |_| {}))
                } else {
                    step("none").start_with_inputs(|w| w.object("o", |_| {}))
                };
                none.finish();
            });
            h.finish();
        }
    });
    assert_eq!(traces.len(), 2);
    let (json, text) = (&traces[0], &traces[1]);
    assert_eq!(
        text.root()["inputs"],
        json!({
            "method": "GET",
            "a \"quoted\" name": tricky,
            "headers": {"user-agent": "t/1", "x-long": "x".repeat(300)},
            "body": {"q": "capital of France?", "n": [1, 2]},
        })
    );
    // Byte for byte: the inputs' text in the row, from `"inputs":` to the output.
    let inputs_text = |t: &CapturedTrace| {
        let row = t.row_json();
        let start = row.find(r#""inputs":"#).expect("inputs in the row");
        let end = start
            + row[start..]
                .find(r#","output":"#)
                .expect("output after inputs");
        row[start..end].to_string()
    };
    assert_eq!(inputs_text(text), inputs_text(json));
    // The root's inputs are also the row's columns.
    for key in ["method", "a \"quoted\" name", "headers", "body"] {
        assert_eq!(text.row()[key], json.row()[key], "column {key}");
    }
    assert_eq!(text.row()["method"], "GET");
    // The same columns, declared as the same input variables, in the same order.
    assert_eq!(
        text.config()["inputVariableNames"],
        json!(["method", "a \"quoted\" name", "headers", "body"])
    );
    assert_eq!(text.config(), json.config());
    let keys = |t: &CapturedTrace| {
        let mut k: Vec<String> = t.row().as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(text), keys(json));
    assert_eq!(text.step("child").unwrap()["inputs"], json!({"k": "v\""}));
    assert_eq!(text.step("none").unwrap()["inputs"], Value::Null);
    assert_eq!(json.step("none").unwrap()["inputs"], Value::Null);
}

#[test]
fn a_handles_inference_id_follows_an_update_and_is_none_when_off() {
    let (id, traces) = testing::capture(|| {
        let h = step("request").start();
        update_inside(&h);
        let id = h.inference_id();
        h.finish();
        id
    });
    assert_eq!(id.as_deref(), Some("from-the-worker"));
    assert_eq!(traces[0].inference_id(), "from-the-worker");
    assert_eq!(StepHandle::disabled().inference_id(), None);
}

#[test]
fn with_inference_id_lends_the_rows_id() {
    let (ids, traces) = testing::capture(|| {
        let h = step("generated").start();
        let generated = (h.with_inference_id(str::to_owned), h.inference_id());
        h.finish();
        let h = step("custom").start();
        h.in_scope(|| update_current_trace!(inference_id = "chat-1-u-2"));
        let custom = (h.with_inference_id(str::to_owned), h.inference_id());
        h.finish();
        (generated, custom)
    });
    let ((lent, owned), (custom_lent, custom_owned)) = ids;
    assert_eq!(traces.len(), 2);
    // The generated id is the row's: its root step's id, formatted as a UUID.
    let lent = lent.expect("recorded");
    assert_eq!(lent, traces[0].inference_id());
    assert_eq!(Some(&lent), owned.as_ref());
    assert_eq!(traces[0].root()["id"], lent.as_str());
    // A custom id wins over the generated one.
    assert_eq!(custom_lent.as_deref(), Some("chat-1-u-2"));
    assert_eq!(custom_owned.as_deref(), Some("chat-1-u-2"));
    assert_eq!(traces[1].inference_id(), "chat-1-u-2");
    // Not recorded: `None`, and the closure is not called.
    let mut called = false;
    assert_eq!(
        StepHandle::disabled().with_inference_id(|_| called = true),
        None
    );
    assert!(!called);
}

#[trace]
fn parse_answer(answer: &str) -> usize {
    answer.len()
}

/// A model call recorded after the fact, with its start back-dated (its latency), after
/// a step that started later: the children are listed in start order, as the official SDK has
/// them, not in the order they were recorded.
#[test]
fn children_recorded_late_are_listed_in_start_order() {
    let (_, traces) = testing::capture(|| {
        let _root = step("answer").enter();
        let t0 = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5)); // the model call
        parse_answer("Paris");
        openlayer_trace::add_chat_completion_step(openlayer_trace::ChatCompletion {
            latency: Some(t0.elapsed()),
            output: Some(json!("Paris")),
            ..openlayer_trace::ChatCompletion::new("OpenAI", "gpt-4o")
        });
    });
    let root = traces[0].root();
    let names: Vec<&str> = root["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Chat Completion", "parse_answer"], "{root:#}");
    let starts: Vec<f64> = root["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["startTime"].as_f64().unwrap())
        .collect();
    assert!(starts[0] <= starts[1], "{starts:?}");
}
