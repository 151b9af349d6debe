//! Tests of what an output logged again and again holds in its open trace.

use std::sync::{Arc, Mutex};

use crate::api::annotate::log_output;
use crate::api::step::step;
use crate::context;
use crate::record::CompletedTrace;
use crate::record::sink::TraceSink;

/// A completed trace's outputs: its root's and its first child's.
type TraceOutputs = (Option<String>, Option<String>);

/// Keeps the completed traces' outputs.
#[derive(Debug, Default)]
struct Outputs(Mutex<Vec<TraceOutputs>>);

impl TraceSink for Outputs {
    fn submit(&self, trace: CompletedTrace) {
        let st = &trace.state;
        let text = |i: usize| {
            st.steps
                .get(i)
                .and_then(|r| st.text(r.output))
                .map(str::to_string)
        };
        self.0.lock().unwrap().push((text(0), text(1)));
    }
}

/// Runs `f` as a capture, returning what it returns and the traces' outputs (root and
/// first child).
fn outputs<R>(f: impl FnOnce() -> R) -> (R, Vec<TraceOutputs>) {
    let sink = Arc::new(Outputs::default());
    let out = context::with_capture(Some(sink.clone() as Arc<dyn TraceSink>), f);
    let taken = std::mem::take(&mut *sink.0.lock().unwrap());
    (out, taken)
}

/// The trace's text length and held bytes, from inside it.
fn sizes() -> (usize, usize) {
    context::with_current(|t, _| {
        let st = t.lock();
        (st.text.len(), st.held)
    })
    .unwrap()
}

/// A step that logs its output again and again (a stream's answer so far) keeps the
/// last one in its trace's text, not every one of them, and the open trace counts it
/// as held.
#[test]
fn a_step_logging_its_output_again_and_again_holds_the_last_one() {
    let ((text, held), traces) = outputs(|| {
        step("stream").in_scope(|| {
            let mut answer = String::new();
            for _ in 0..200 {
                answer.push_str(&"x".repeat(100));
                log_output(&answer);
            }
            sizes()
        })
    });
    // The last output (20,002 bytes of JSON) kept with the step until it ends, not in
    // the trace's text yet; every one of them would be about 2 MB.
    assert!(text < 1_000, "{text}");
    assert!((20_002..21_000).contains(&held), "{held}");
    assert_eq!(traces.len(), 1);
    let expected = format!("\"{}\"", "x".repeat(20_000));
    assert_eq!(traces[0].0.as_deref(), Some(expected.as_str()));
}

/// A step logging its output again and again while steps under it write text: the last
/// output is held, not every one of them (they were appended one after the other, about
/// 2 MB here, when the output was not the last text written).
#[test]
fn logged_outputs_between_child_steps_hold_the_last_one() {
    let ((_, held), traces) = outputs(|| {
        step("agent").in_scope(|| {
            let mut answer = String::new();
            for i in 0..200 {
                step("tool").in_scope(|| log_output(&i));
                answer.push_str(&"x".repeat(100));
                log_output(&answer);
            }
            sizes()
        })
    });
    assert!(held < 60_000, "{held}");
    let expected = format!("\"{}\"", "x".repeat(20_000));
    assert_eq!(traces[0].0.as_deref(), Some(expected.as_str()));
}

/// An output logged when it is not the last text written is appended, and the growth
/// is held too.
#[test]
fn a_logged_output_that_is_not_the_last_text_is_appended() {
    let ((_, held), traces) = outputs(|| {
        step("outer").in_scope(|| {
            log_output("first");
            step("inner").in_scope(|| log_output("inner output"));
            log_output(&"y".repeat(1_000));
            sizes()
        })
    });
    assert!(held >= 1_002, "{held}");
    let expected = format!("\"{}\"", "y".repeat(1_000));
    assert_eq!(traces[0].0.as_deref(), Some(expected.as_str()));
    assert_eq!(traces[0].1.as_deref(), Some("\"inner output\""));
}

/// A shorter output logged after a longer one, then a longer one again: held as the
/// longest, not as the sum of the growths.
#[test]
fn outputs_logged_shorter_then_longer_are_held_once() {
    let ((_, held), _) = outputs(|| {
        step("stream").in_scope(|| {
            for _ in 0..20 {
                log_output(&"x".repeat(10_000));
                log_output("");
            }
            sizes()
        })
    });
    assert!((10_002..12_000).contains(&held), "{held}");
}

/// Work carried into the trace logging the output of a step that has returned already:
/// recorded as that step's output (the trace is still open, held by the work).
#[test]
fn an_output_logged_after_its_step_returned_is_recorded() {
    let ((), traces) = outputs(|| {
        step("root").in_scope(|| {
            let child = step("child").start();
            let ctx = child.in_scope(|| context::current_context().unwrap());
            child.finish();
            // Again and again (an answer so far): the last one held, not each of them.
            let mut answer = String::new();
            for _ in 0..200 {
                answer.push_str(&"x".repeat(100));
                ctx.in_scope(|| log_output(&answer));
            }
            let (_, held) = ctx.in_scope(sizes);
            assert!(held < 30_000, "{held}");
            ctx.in_scope(|| log_output("late"));
        })
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].1.as_deref(), Some("\"late\""));
}
