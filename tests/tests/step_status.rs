//! Step status under unwinding: a traced function that returns normally while its thread
//! unwinds (called from a `Drop`) is recorded as returned; a panic message is never
//! reused for a later panic; opening the first step while unwinding never aborts.

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
