//! Errors, panics and cancellation close their steps, ship the trace, and leave the next
//! trace on the same task or thread clean.

use std::time::Duration;

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{current_inference_id, trace, update_current_trace};

#[derive(Debug)]
struct NotFound(String);
impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {} not found", self.0)
    }
}

#[trace]
fn lookup(id: &str) -> Result<String, NotFound> {
    if id == "missing" {
        Err(NotFound(id.to_string()))
    } else {
        Ok(format!("doc {id}"))
    }
}

#[trace]
fn answer(id: &str) -> Result<String, NotFound> {
    update_current_trace!(custom = "kept only on this trace");
    let doc = lookup(id)?;
    Ok(doc.to_uppercase())
}

#[trace]
fn healthy(x: u32) -> u32 {
    x
}

fn assert_clean(t: &CapturedTrace) {
    assert!(
        t.row().get("custom").is_none(),
        "a column leaked from the previous trace"
    );
    assert!(t.row().get("Exceptions").is_none());
    assert_eq!(t.root()["steps"].as_array().unwrap().len(), 0);
}

#[test]
fn an_err_records_null_output_and_exceptions_and_still_ships() {
    let (out, traces) = testing::capture(|| {
        let out = answer("missing");
        healthy(1);
        out
    });
    assert!(out.is_err());
    assert_eq!(traces.len(), 2);
    let t = &traces[0];
    assert_eq!(t.row()["output"], serde_json::Value::Null);
    assert_eq!(t.root()["output"], serde_json::Value::Null);
    assert_eq!(
        t.root()["metadata"]["Exceptions"],
        "document missing not found"
    );
    // The root's metadata is also a row column.
    assert_eq!(t.row()["Exceptions"], "document missing not found");
    let child = t.step("lookup").unwrap();
    assert_eq!(child["output"], serde_json::Value::Null);
    assert_eq!(
        child["metadata"]["Exceptions"],
        "document missing not found"
    );
    // Inputs are still recorded on failure.
    assert_eq!(child["inputs"]["id"], "missing");
    assert_clean(&traces[1]);
}

/// Errors that are `Debug` but not `Display` (a list of messages, axum's
/// `(StatusCode, String)` rejections): an `Err` still fails the step, with the error's
/// `Debug` text, whether the output is recorded or not.
#[trace]
fn validate(x: u32) -> Result<u32, Vec<String>> {
    if x > 10 {
        Err(vec!["too big".into()])
    } else {
        Ok(x)
    }
}

/// Not `Serialize`: the reason for `skip_output`.
struct Page(#[allow(dead_code)] String);

#[trace(skip_output)]
fn render(x: u32) -> Result<Page, (u16, String)> {
    if x > 10 {
        Err((400, "bad page".into()))
    } else {
        Ok(Page(x.to_string()))
    }
}

/// `impl Trait` in the `Ok` (the return type is not written on the body), the error only
/// from `?`.
#[trace]
fn validate_all(xs: &[u32]) -> Result<impl serde::Serialize + use<>, Vec<String>> {
    let mut out = Vec::new();
    for x in xs {
        out.push(validate(*x)?);
    }
    Ok(out)
}

#[trace]
async fn validate_all_later(xs: Vec<u32>) -> Result<impl serde::Serialize, Vec<String>> {
    tokio::task::yield_now().await;
    let mut out = Vec::new();
    for x in xs {
        out.push(validate(x)?);
    }
    Ok(out)
}

#[trace]
async fn validate_later(x: u32) -> Result<u32, Vec<String>> {
    tokio::task::yield_now().await;
    validate(x)
}

#[tokio::test]
async fn an_err_that_is_only_debug_still_fails_the_step() {
    let (_, traces) = testing::capture(|| {
        let _ = validate(11);
        let _ = validate(3);
        let _ = render(11);
        let _ = render(3);
    });
    let [bad, good, bad_page, good_page] = &traces[..] else {
        panic!("{traces:#?}")
    };
    assert_eq!(bad.root()["output"], serde_json::Value::Null);
    assert_eq!(bad.root()["metadata"]["Exceptions"], r#"["too big"]"#);
    assert_eq!(good.root()["output"], 3);
    assert!(good.root()["metadata"].get("Exceptions").is_none());
    assert_eq!(
        bad_page.root()["metadata"]["Exceptions"],
        r#"(400, "bad page")"#
    );
    assert!(good_page.root()["metadata"].get("Exceptions").is_none());
    let (_, traces) = testing::capture_async(validate_later(12)).await;
    let root = traces[0].root();
    assert_eq!(root["output"], serde_json::Value::Null);
    assert_eq!(root["metadata"]["Exceptions"], r#"["too big"]"#);

    let (_, traces) = testing::capture(|| {
        let _ = validate_all(&[1, 20]);
        let _ = validate_all(&[1, 2]);
    });
    assert_eq!(traces[0].root()["metadata"]["Exceptions"], r#"["too big"]"#);
    assert_eq!(traces[1].root()["output"], serde_json::json!([1, 2]));
    let (_, traces) = testing::capture_async(validate_all_later(vec![30])).await;
    assert_eq!(traces[0].root()["metadata"]["Exceptions"], r#"["too big"]"#);
}

#[trace]
fn logs_then_fails() -> Result<u32, NotFound> {
    openlayer_trace::log_output(&"partial");
    Err(NotFound("x".into()))
}

#[trace]
fn calls_logs_then_fails() -> u32 {
    let _ = logs_then_fails();
    1
}

/// A failed step's output is null, child or root, even when one was logged before it
/// failed (as the official SDK sends it); its error is under `Exceptions`.
#[test]
fn a_failed_step_has_no_output_even_one_logged_before() {
    let (_, traces) = testing::capture(|| {
        calls_logs_then_fails();
        let _ = logs_then_fails();
    });
    let [parent, root] = &traces[..] else {
        panic!("{traces:#?}")
    };
    let child = parent.step("logs_then_fails").unwrap();
    assert_eq!(child["output"], serde_json::Value::Null, "{child:#}");
    assert_eq!(child["metadata"]["Exceptions"], "document x not found");
    assert_eq!(root.root()["output"], serde_json::Value::Null);
}

#[trace]
async fn async_root_panics() -> u8 {
    panic!("the first panic")
}

#[trace]
fn resumes_a_panic() {
    // Runs no panic hook: nothing tells the library of this panic's message.
    std::panic::resume_unwind(Box::new(0u8));
}

/// An async root that panicked forgets the panic's message once it recorded it, as every
/// other root does: a later panic resumed on the thread (no hook runs for it) records
/// "panicked", not that old message.
#[test]
fn a_panicked_async_root_leaves_no_stale_message() {
    let (_, traces) = testing::capture(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async_root_panics())
        }));
        assert!(first.is_err());
        assert!(std::panic::catch_unwind(resumes_a_panic).is_err());
    });
    let [first, resumed] = &traces[..] else {
        panic!("{traces:#?}")
    };
    let first = first.root()["metadata"]["Exceptions"].as_str().unwrap();
    assert!(first.contains("the first panic"), "{first}");
    assert_eq!(resumed.root()["metadata"]["Exceptions"], "panicked");
}

#[trace]
fn leaks_a_secret() {
    panic!("bad email alice@example.com");
}

/// A request whose child step panicked, the panic caught (by a runtime, say), and that
/// returned normally.
#[trace]
fn handles_a_child_panic() -> bool {
    std::panic::catch_unwind(leaks_a_secret).is_err()
}

/// A child step's panic, caught inside its trace, leaves its message on the thread (only
/// a root clears it). Another trace that a later `resume_unwind` unwinds through (no hook
/// runs for it) records "panicked", never that message, which holds the other request's
/// data.
#[test]
fn a_panic_message_never_reaches_another_trace() {
    let (_, traces) = testing::capture(|| {
        assert!(handles_a_child_panic());
        assert!(std::panic::catch_unwind(resumes_a_panic).is_err());
    });
    let [handled, resumed] = &traces[..] else {
        panic!("{traces:#?}")
    };
    let child = handled.root()["steps"][0]["metadata"]["Exceptions"]
        .as_str()
        .unwrap();
    assert!(child.contains("alice@example.com"), "{child}");
    assert_eq!(resumed.root()["metadata"]["Exceptions"], "panicked");
}

#[trace]
fn explode(depth: u32) -> u32 {
    if depth == 0 {
        panic!("boom at the bottom");
    }
    explode(depth - 1) + 1
}

#[test]
fn a_panic_closes_every_step_ships_and_keeps_unwinding() {
    let (_, traces) = testing::capture(|| {
        let r = std::panic::catch_unwind(|| explode(2));
        assert!(r.is_err(), "the panic keeps unwinding to the caller");
        healthy(2);
    });
    assert_eq!(traces.len(), 2);
    let t = &traces[0];
    let steps = t.steps();
    assert_eq!(steps.len(), 3);
    for s in &steps {
        assert_eq!(s["output"], serde_json::Value::Null);
        let msg = s["metadata"]["Exceptions"].as_str().unwrap();
        assert!(msg.contains("boom at the bottom"), "{msg}");
    }
    assert_clean(&traces[1]);
}

#[trace]
async fn slow_child(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[trace]
async fn slow_parent() -> u64 {
    update_current_trace!(custom = "only here");
    slow_child(10).await + slow_child(10_000).await
}

#[trace]
async fn quick() -> u8 {
    7
}

#[tokio::test]
async fn a_dropped_future_closes_its_steps_as_cancelled_and_ships_the_root() {
    let (_, traces) = testing::capture_async(async {
        let r = tokio::time::timeout(Duration::from_millis(50), slow_parent()).await;
        assert!(r.is_err(), "timed out");
        assert!(current_inference_id().is_none(), "no trace is left current");
        quick().await
    })
    .await;
    assert_eq!(traces.len(), 2);
    let t = &traces[0];
    let root = t.root();
    assert_eq!(root["metadata"]["cancelled"], true);
    let children = root["steps"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0]["output"], 10);
    assert!(children[0]["metadata"].get("cancelled").is_none());
    assert_eq!(children[1]["metadata"]["cancelled"], true);
    assert_eq!(children[1]["output"], serde_json::Value::Null);
    // The cancelled child closed when it was dropped, within its parent.
    assert!(children[1]["endTime"].as_f64().unwrap() <= root["endTime"].as_f64().unwrap());
    assert_clean(&traces[1]);
}

#[trace]
async fn async_panics(flag: bool) -> u8 {
    tokio::task::yield_now().await;
    if flag {
        panic!("async boom");
    }
    1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_ships_the_trace_and_the_next_trace_is_clean() {
    let (_, traces) = testing::capture_async(async {
        let joined = tokio::spawn(testing::capture_async(async_panics(true))).await;
        assert!(joined.unwrap_err().is_panic());
        quick().await
    })
    .await;
    // The panicking task's capture never returned, so only `quick` is seen here; the
    // panicking trace is checked through a capture that outlives the task instead.
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].root()["name"], "quick");

    let (_, traces) = testing::capture_async(async {
        let fut = std::panic::AssertUnwindSafe(async_panics(true));
        let r = futures_catch_unwind(fut).await;
        assert!(r.is_err());
        quick().await
    })
    .await;
    assert_eq!(traces.len(), 2);
    let msg = traces[0].root()["metadata"]["Exceptions"].as_str().unwrap();
    assert!(msg.contains("async boom"), "{msg}");
    assert_eq!(traces[1].root()["name"], "quick");
    assert!(traces[1].root()["metadata"].get("Exceptions").is_none());
}

/// A minimal `catch_unwind` for futures (the test avoids a dependency on `futures`).
async fn futures_catch_unwind<F: std::future::Future>(
    fut: std::panic::AssertUnwindSafe<F>,
) -> std::thread::Result<F::Output> {
    let mut fut = Box::pin(fut.0);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    })
    .await
}

#[test]
fn the_thread_is_clean_after_a_panic_outside_any_capture_too() {
    let r = std::panic::catch_unwind(|| testing::capture(|| explode(1)));
    assert!(r.is_err());
    assert!(current_inference_id().is_none());
    let (_, traces) = testing::capture(|| healthy(3));
    assert_eq!(traces.len(), 1);
    assert_clean(&traces[0]);
}
