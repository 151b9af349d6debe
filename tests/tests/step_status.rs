//! Step status under unwinding: a traced function, future, iterator or handle that ends
//! normally while its thread unwinds from an unrelated panic (run from a `Drop`) is
//! recorded as returned (or cancelled), not panicked; a panic message is never reused for
//! a later panic; opening the first step while unwinding never aborts.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use openlayer_trace::{Config, step, testing, trace};
use openlayer_trace_tests::child::{self, report, results, temp_dir};

#[trace]
fn cleanup(n: u32) -> u32 {
    n * 2
}

struct CleanupOnDrop;

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        cleanup(5);
    }
}

#[trace]
fn fails_and_cleans_up() -> u32 {
    let _cleanup = CleanupOnDrop;
    panic!("boom with cleanup");
}

#[trace]
fn fails(msg: &str) -> u32 {
    panic!("{msg}");
}

#[test]
fn a_function_returning_during_unwinding_is_recorded_as_returned() {
    let (_, traces) = testing::capture(|| {
        assert!(catch_unwind(fails_and_cleans_up).is_err());
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert!(
        root["metadata"]["Exceptions"]
            .as_str()
            .unwrap()
            .contains("boom with cleanup")
    );
    let child = traces[0].step("cleanup").unwrap();
    assert_eq!(child["output"], 10, "{child}");
    assert!(child["metadata"].get("Exceptions").is_none(), "{child}");
}

/// A value whose `Serialize` panics.
struct PanicsWhenRecorded;

impl serde::Serialize for PanicsWhenRecorded {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("the value's own panic")
    }
}

#[trace]
fn record(_value: PanicsWhenRecorded) -> u32 {
    1
}

struct RecordOnDrop;

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        record(PanicsWhenRecorded);
    }
}

#[trace]
fn fails_and_records() -> u32 {
    let _record = RecordOnDrop;
    panic!("db down");
}

/// A value whose `Serialize` panics while the thread unwinds (recorded from a `Drop`):
/// its panic stops in the library, and the steps the first panic unwinds through still
/// record that panic's message.
#[test]
fn a_value_panicking_during_an_unwind_leaves_that_unwinds_message() {
    let (_, traces) = testing::capture(|| {
        assert!(catch_unwind(fails_and_records).is_err());
    });
    assert_eq!(traces.len(), 1);
    let msg = traces[0].root()["metadata"]["Exceptions"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("db down"), "{msg}");
    let record = traces[0].step("record").unwrap();
    assert_eq!(record["output"], 1, "{record}");
    assert_eq!(
        record["inputs"]["_value"],
        serde_json::Value::Null,
        "{record}"
    );
}

#[test]
fn a_panic_message_is_not_reused_for_a_later_panic() {
    let (_, traces) = testing::capture(|| {
        assert!(catch_unwind(|| fails("the first panic")).is_err());
        // A later panic, raised outside any entered step, unwinds through a handle.
        let handle = step("handle").start();
        let r = catch_unwind(AssertUnwindSafe(move || {
            let _handle = handle;
            panic!("the second panic");
        }));
        assert!(r.is_err());
    });
    assert_eq!(traces.len(), 2);
    let msg = traces[1].root()["metadata"]["Exceptions"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!msg.contains("the first panic"), "{msg}");
}

/// The first step of the process opens while its thread unwinds.
#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    if scenario == "hook" {
        let guard = openlayer_trace::init(Config::from_env().unwrap()).unwrap();
        std::panic::set_hook(Box::new(|_| {}));
        assert!(catch_unwind(|| fails("a panic after init")).is_err());
        let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
        assert_eq!(s.written, 1, "{s:?}");
        return;
    }
    let r = catch_unwind(|| {
        let _cleanup = CleanupOnDrop;
        panic!("a panic outside any trace");
    });
    assert!(r.is_err());
    let s = openlayer_trace::flush(Duration::from_secs(5))
        .unwrap()
        .stats;
    report(&[("written", s.written.to_string())]);
    assert_eq!(s.written, 1, "{s:?}");
}

#[test]
fn opening_the_first_step_while_unwinding_does_not_abort() {
    let file = temp_dir("first-step-unwinding").join("traces.jsonl");
    let file = file.to_str().unwrap();
    let out = child::run("unwinding", &[("OPENLAYER_TRACE_FILE", file)]);
    eprintln!("{:?}", results(&out));
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("\"cleanup\""), "{text}");
}

/// `init` installs the panic hook (before any step): a hook the application sets after
/// `init` without chaining replaces it, so a step records no message.
#[test]
fn init_installs_the_panic_hook() {
    let file = temp_dir("hook-by-init").join("traces.jsonl");
    let file = file.to_str().unwrap();
    let out = child::run("hook", &[("OPENLAYER_TRACE_FILE", file)]);
    eprintln!("{:?}", results(&out));
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(r#""Exceptions":"panicked""#), "{text}");
    assert!(!text.contains(r#""Exceptions":"panicked at"#), "{text}");
}

/// Runs `f` in a `Drop` while the thread unwinds from a panic unrelated to it.
fn during_an_unrelated_panic(f: impl FnOnce()) {
    struct RunOnDrop<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for RunOnDrop<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    let r = catch_unwind(AssertUnwindSafe(move || {
        let _run = RunOnDrop(Some(f));
        panic!("an unrelated panic");
    }));
    assert!(r.is_err());
}

fn assert_not_panicked(step: &serde_json::Value) {
    let exceptions = step["metadata"].get("Exceptions");
    assert!(exceptions.is_none(), "recorded as panicked: {step}");
}

/// A handle finished explicitly has returned, even while the thread unwinds: the code
/// that finished it ran to that point.
#[test]
fn a_handle_finished_during_an_unrelated_panic_is_not_panicked() {
    let (_, traces) = testing::capture(|| {
        let handle = step("finished_in_drop").start();
        during_an_unrelated_panic(move || {
            let mut handle = handle;
            handle.output(&7);
            handle.finish();
        });
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_not_panicked(root);
    assert_eq!(root["output"], 7, "{root}");
    assert!(root["metadata"].get("cancelled").is_none(), "{root}");
}

/// A handle opened while the thread unwinds and dropped in the same unwinding is
/// cancelled (dropped without `finish`), not panicked: no panic unwound through it.
#[test]
fn a_handle_opened_and_dropped_during_an_unrelated_panic_is_cancelled() {
    let (_, traces) = testing::capture(|| {
        during_an_unrelated_panic(|| {
            let handle = step("opened_in_drop").start();
            drop(handle);
        });
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_not_panicked(root);
    assert_eq!(root["metadata"]["cancelled"], true, "{root}");
}

#[trace]
async fn ready_in_drop(n: u32) -> u32 {
    n + 1
}

/// A traced future polled to its end while the thread unwinds returned.
#[test]
fn a_future_polled_during_an_unrelated_panic_is_not_panicked() {
    let (_, traces) = testing::capture(|| {
        during_an_unrelated_panic(|| {
            let mut fut = std::pin::pin!(ready_in_drop(1));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert_eq!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(2));
        });
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_not_panicked(root);
    assert_eq!(root["output"], 2, "{root}");
}

#[trace]
fn numbers(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

/// A traced iterator made and dropped part-way while the thread unwinds from another
/// panic: cancelled, with the output so far, not panicked.
#[test]
fn an_iterator_dropped_during_an_unrelated_panic_keeps_its_output() {
    let (_, traces) = testing::capture(|| {
        during_an_unrelated_panic(|| {
            let mut it = numbers(5);
            assert_eq!(it.next(), Some(0));
            assert_eq!(it.next(), Some(1));
            drop(it);
        });
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_not_panicked(root);
    assert_eq!(root["output"], serde_json::json!([0, 1]), "{root}");
    assert_eq!(root["metadata"]["cancelled"], true, "{root}");
}
