//! Streams and iterators as steps: `#[trace]` on functions that return them, the `.traced`
//! extension methods, and the official SDK's generator cases.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use openlayer_trace::stream::{Accumulator, OkItems};
use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{StepHandle, StepKind, TraceIteratorExt, TraceStreamExt, step, trace};
use serde::Serialize;
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

fn only(traces: &[CapturedTrace]) -> &CapturedTrace {
    assert_eq!(traces.len(), 1, "one trace expected, got {}", traces.len());
    &traces[0]
}

fn ttft(step: &Value) -> f64 {
    step["metadata"]["timeToFirstToken"]
        .as_f64()
        .unwrap_or_else(|| panic!("no timeToFirstToken in {}", step["metadata"]))
}

#[trace]
fn piece(i: u32) -> String {
    format!("t{i}")
}

// ---------------------------------------------------------------------------------------
// The official SDK's generator cases

#[trace]
fn tokens(n: u32) -> impl Iterator<Item = String> {
    (0..n).map(piece)
}

#[test]
fn sync_iterator_fully_consumed() {
    let (out, traces) = testing::capture(|| tokens(3).collect::<Vec<_>>());
    assert_eq!(out, ["t0", "t1", "t2"]);
    let t = only(&traces);
    // Steps made while producing items nest under the iterator's step.
    assert_eq!(tree(t), "tokens(piece, piece, piece)");
    let root = t.root();
    assert_eq!(root["output"], "t0t1t2");
    assert_eq!(root["inputs"], json!({"n": 3}));
    assert!(root["metadata"].get("cancelled").is_none());
    assert!(ttft(root) >= 0.0);
    assert!(ttft(root) <= root["latency"].as_f64().unwrap());
    assert_eq!(t.row()["output"], "t0t1t2");
    assert_eq!(t.row()["n"], 3);
}

#[trace]
fn stream_tokens(n: u32) -> impl Stream<Item = String> + Send + Unpin {
    futures_util::stream::iter(0..n)
        .then(|i| async move {
            tokio::task::yield_now().await;
            piece(i)
        })
        .boxed()
}

#[tokio::test]
async fn async_stream_fully_consumed() {
    let (out, traces) =
        testing::capture_async(async { stream_tokens(3).collect::<Vec<_>>().await }).await;
    assert_eq!(out.concat(), "t0t1t2");
    let t = only(&traces);
    assert_eq!(tree(t), "stream_tokens(piece, piece, piece)");
    assert_eq!(t.root()["output"], "t0t1t2");
    assert!(t.root()["metadata"].get("cancelled").is_none());
    ttft(t.root());
}

/// A streaming client's shape: the request may fail before any item.
#[trace(kind = "chat_completion")]
async fn open_stream(n: u32, fail: bool) -> Result<impl Stream<Item = String> + Send, String> {
    tokio::task::yield_now().await;
    if fail {
        return Err("connection refused".into());
    }
    Ok(stream_tokens(n))
}

/// The same, boxed (a concrete return type).
#[trace(stream)]
fn open_boxed(n: u32) -> Result<BoxStream<'static, String>, String> {
    Ok(stream_tokens(n).boxed())
}

/// An error type that is not `Display`.
#[derive(Debug)]
pub enum Refused {
    Busy,
}

/// With `skip_output`, a `Result` of a stream is recorded as a call, as before: its
/// error need not be `Display`, and its items' type may come from the signature alone.
#[trace(skip_output)]
fn open_quietly(busy: bool) -> Result<impl Stream<Item = String>, Refused> {
    if busy {
        return Err(Refused::Busy);
    }
    Ok(futures_util::stream::empty())
}

/// Opens a "cursor" over `n` rows, or fails before any: a `Result` of an iterator.
#[trace]
fn open_rows(n: u32, fail: bool) -> Result<impl Iterator<Item = String>, String> {
    if fail {
        return Err("no such table".to_string());
    }
    Ok((0..n).map(piece))
}

/// The same, as a concrete (boxed) type.
#[trace(stream)]
fn open_rows_boxed(n: u32) -> Result<Box<dyn Iterator<Item = u32> + Send>, String> {
    Ok(Box::new(0..n))
}

#[test]
fn a_result_of_an_iterator_is_traced_as_the_iterator_or_the_error() {
    let (out, traces) = testing::capture(|| open_rows(3, false).unwrap().collect::<Vec<_>>());
    assert_eq!(out.concat(), "t0t1t2");
    let t = only(&traces);
    // The items are produced under the step, which ends with the iterator.
    assert_eq!(tree(t), "open_rows(piece, piece, piece)");
    assert_eq!(t.root()["output"], "t0t1t2");
    assert_eq!(t.root()["inputs"], json!({"n": 3, "fail": false}));

    let (out, traces) = testing::capture(|| open_rows(3, true).map(|_| ()));
    assert_eq!(out, Err("no such table".to_string()));
    let t = only(&traces);
    assert!(t.root()["output"].is_null());
    assert_eq!(t.root()["metadata"]["Exceptions"], "no such table");

    // Abandoned after one item: cancelled, with what it produced.
    let (_, traces) = testing::capture(|| open_rows(3, false).unwrap().next());
    let root = only(&traces).root();
    assert_eq!(root["output"], "t0");
    assert_eq!(root["metadata"]["cancelled"], true);

    let (out, traces) = testing::capture(|| open_rows_boxed(4).unwrap().sum::<u32>());
    assert_eq!(out, 6);
    assert_eq!(only(&traces).root()["output"], json!([0, 1, 2, 3]));
}

#[tokio::test]
async fn a_result_of_a_stream_with_skip_output_is_a_call() {
    let (out, traces) =
        testing::capture_async(async { open_quietly(false).unwrap().collect::<Vec<_>>().await })
            .await;
    assert!(out.is_empty());
    assert_eq!(tree(only(&traces)), "open_quietly");
    let (out, _) = testing::capture(|| open_quietly(true).map(|_| ()));
    assert!(matches!(out, Err(Refused::Busy)));
}

#[tokio::test]
async fn a_result_of_a_stream_is_traced_as_the_stream_or_the_error() {
    let (out, traces) = testing::capture_async(async {
        open_stream(2, false)
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(out.concat(), "t0t1");
    let t = only(&traces);
    assert_eq!(tree(t), "open_stream(stream_tokens(piece, piece))");
    assert_eq!(t.root()["output"], "t0t1");
    ttft(t.root());

    let (out, traces) = testing::capture_async(open_stream(2, true)).await;
    assert!(out.is_err());
    let t = only(&traces);
    assert!(t.root()["output"].is_null());
    assert_eq!(t.root()["metadata"]["Exceptions"], "connection refused");

    let (out, traces) =
        testing::capture_async(async { open_boxed(3).unwrap().collect::<Vec<_>>().await }).await;
    assert_eq!(out.concat(), "t0t1t2");
    assert_eq!(only(&traces).root()["output"], "t0t1t2");
}

#[test]
fn iterator_abandoned_after_one_item() {
    let (first, traces) = testing::capture(|| {
        let mut it = tokens(5);
        let first = it.next();
        drop(it);
        first
    });
    assert_eq!(first.as_deref(), Some("t0"));
    // The official SDK publishes nothing here; the step closes with what it produced.
    let t = only(&traces);
    assert_eq!(tree(t), "tokens(piece)");
    let root = t.root();
    assert_eq!(root["metadata"]["cancelled"], true);
    assert_eq!(root["output"], "t0");
    assert_eq!(t.row()["output"], "t0");
    assert_eq!(t.row()["cancelled"], true);
}

#[trace]
async fn handler(n: u32) -> String {
    let mut out = String::new();
    let mut s = stream_tokens(n);
    while let Some(t) = s.next().await {
        out.push_str(&t);
    }
    out
}

#[tokio::test]
async fn traced_function_consumes_a_traced_stream() {
    let (out, traces) = testing::capture_async(handler(2)).await;
    assert_eq!(out, "t0t1");
    let t = only(&traces);
    assert_eq!(tree(t), "handler(stream_tokens(piece, piece))");
    assert_eq!(t.root()["output"], "t0t1");
    assert_eq!(t.step("stream_tokens").unwrap()["output"], "t0t1");
    assert_eq!(t.step("stream_tokens").unwrap()["inputs"], json!({"n": 2}));
}

// ---------------------------------------------------------------------------------------
// Errors, other tasks and threads, time to first item

#[derive(Debug)]
struct Reset(u32);

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection reset at chunk {}", self.0)
    }
}

#[trace(kind = "chat_completion")]
fn flaky() -> impl Stream<Item = Result<String, Reset>> {
    futures_util::stream::iter(vec![
        Ok("Hel".to_string()),
        Err(Reset(1)),
        Ok("lo".to_string()),
        Err(Reset(3)),
    ])
}

#[tokio::test]
async fn an_error_in_the_middle_is_recorded_and_the_stream_goes_on() {
    let (items, traces) = testing::capture_async(async { flaky().collect::<Vec<_>>().await }).await;
    assert_eq!(items.len(), 4, "every item reaches the consumer");
    let root = only(&traces).root();
    assert_eq!(root["type"], "chat_completion");
    assert_eq!(root["output"], "Hello");
    assert_eq!(
        root["metadata"]["Exceptions"],
        "connection reset at chunk 1\nconnection reset at chunk 3"
    );
    assert!(root["metadata"].get("cancelled").is_none());
}

#[trace]
fn erring_at_every_item(n: u32) -> impl Stream<Item = Result<String, Reset>> {
    futures_util::stream::iter((0..n).map(Err)).map(|r: Result<String, u32>| r.map_err(Reset))
}

/// A stream erring at every item lists its first ten errors under `Exceptions` and counts
/// the rest (the text of each cut): it would otherwise grow without bound (a server's
/// unknown event at every token), and the trace with it, past what a request takes.
#[tokio::test]
async fn exceptions_are_bounded() {
    let (_, traces) =
        testing::capture_async(async { erring_at_every_item(1_000).collect::<Vec<_>>().await })
            .await;
    let root = only(&traces).root();
    let exceptions = root["metadata"]["Exceptions"].as_str().unwrap();
    let lines: Vec<&str> = exceptions.lines().collect();
    assert_eq!(lines.len(), 11, "{exceptions}");
    assert_eq!(lines[0], "connection reset at chunk 0");
    assert_eq!(lines[9], "connection reset at chunk 9");
    assert_eq!(lines[10], "…[990 more errors]");

    // Errors are counted, not lines: an error of several lines takes one place, and an
    // error whose text looks like the count is listed as it is.
    let step = || {
        let mut h = step("multi").start();
        h.exception(&"line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\nline 9\nline 10\nline 11");
        h.exception(&"…[7 more errors]");
        h.exception(&"last");
        h.finish();
    };
    let ((), traces) = testing::capture(step);
    let exceptions = only(&traces).root()["metadata"]["Exceptions"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        exceptions.ends_with("line 11\n…[7 more errors]\nlast"),
        "{exceptions}"
    );
}

/// A stream of `Result`s whose error is `Debug` but not `Display`.
#[trace]
fn refusing() -> impl Stream<Item = Result<String, Refused>> {
    futures_util::stream::iter(vec![
        Ok("Hel".to_string()),
        Err(Refused::Busy),
        Ok("lo".to_string()),
    ])
}

/// The same as an iterator, with `skip_output`: the errors are still recorded.
#[trace(skip_output)]
fn refusing_rows() -> impl Iterator<Item = Result<u32, Refused>> {
    vec![Ok(1), Err(Refused::Busy), Ok(2), Err(Refused::Busy)].into_iter()
}

/// A `Result` of a stream whose error is `Debug` but not `Display`.
#[trace]
async fn open_debug(busy: bool) -> Result<impl Stream<Item = String>, Refused> {
    if busy {
        return Err(Refused::Busy);
    }
    Ok(stream_tokens(2))
}

/// A `Result` of an iterator whose error is `Debug` but not `Display`.
#[trace]
fn open_rows_debug(busy: bool) -> Result<impl Iterator<Item = u32>, Refused> {
    if busy {
        return Err(Refused::Busy);
    }
    Ok(0..3)
}

#[tokio::test]
async fn errors_that_are_only_debug_are_recorded_with_their_debug_text() {
    let (items, traces) =
        testing::capture_async(async { refusing().collect::<Vec<_>>().await }).await;
    assert_eq!(items.len(), 3);
    let root = only(&traces).root();
    assert_eq!(root["output"], "Hello");
    assert_eq!(root["metadata"]["Exceptions"], "Busy");

    let (items, traces) = testing::capture(|| refusing_rows().collect::<Vec<_>>());
    assert_eq!(items.len(), 4);
    let root = only(&traces).root();
    assert!(root["output"].is_null(), "{root}");
    assert_eq!(root["metadata"]["Exceptions"], "Busy\nBusy");

    let (out, traces) = testing::capture_async(async {
        open_debug(false).await.unwrap().collect::<Vec<_>>().await
    })
    .await;
    assert_eq!(out.concat(), "t0t1");
    let t = only(&traces);
    assert_eq!(tree(t), "open_debug(stream_tokens(piece, piece))");
    assert_eq!(t.root()["output"], "t0t1");
    let (out, traces) = testing::capture_async(open_debug(true)).await;
    assert!(matches!(out, Err(Refused::Busy)));
    let root = only(&traces).root();
    assert!(root["output"].is_null());
    assert_eq!(root["metadata"]["Exceptions"], "Busy");

    let (out, traces) = testing::capture(|| open_rows_debug(false).unwrap().sum::<u32>());
    assert_eq!(out, 3);
    assert_eq!(only(&traces).root()["output"], json!([0, 1, 2]));
    let (out, traces) = testing::capture(|| open_rows_debug(true).map(|_| ()));
    assert!(matches!(out, Err(Refused::Busy)));
    assert_eq!(only(&traces).root()["metadata"]["Exceptions"], "Busy");
}

/// An error that is only `Debug`, made by `?` from an I/O error.
#[derive(Debug)]
struct Unreadable(#[allow(dead_code)] std::io::ErrorKind);

impl From<std::io::Error> for Unreadable {
    fn from(e: std::io::Error) -> Self {
        Unreadable(e.kind())
    }
}

/// Items that only the signature types.
#[trace]
fn nothing_yet() -> impl Iterator<Item = u64> {
    std::iter::empty()
}

/// Items converted by `.into()`, into what the signature says.
#[trace]
fn owned<'a>(words: &'a [&'a str]) -> impl Iterator<Item = String> + 'a {
    words.iter().map(|w| (*w).into())
}

/// Items whose error type only the signature names.
#[trace]
fn numbers<'a>(lines: &'a [&'a str]) -> impl Iterator<Item = Result<u32, Unreadable>> + 'a {
    lines.iter().map(|l| {
        l.parse()
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData).into())
    })
}

/// A `Result` of an iterator whose `Debug`-only error comes from `?`.
#[trace]
fn lines_of(path: &str) -> Result<impl Iterator<Item = String>, Unreadable> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter())
}

/// The same, async, as a stream.
#[trace]
async fn lines_streamed(path: &str) -> Result<impl Stream<Item = String>, Unreadable> {
    let text = std::fs::read_to_string(path)?;
    Ok(futures_util::stream::iter(
        text.lines().map(str::to_string).collect::<Vec<_>>(),
    ))
}

#[tokio::test]
async fn items_and_errors_that_only_the_signature_types_are_traced() {
    let (n, traces) = testing::capture(|| nothing_yet().count());
    assert_eq!(n, 0);
    assert_eq!(only(&traces).root()["output"], "");

    let (out, traces) = testing::capture(|| owned(&["a", "b"]).collect::<Vec<_>>());
    assert_eq!(out, ["a", "b"]);
    assert_eq!(only(&traces).root()["output"], "ab");

    let (out, traces) = testing::capture(|| numbers(&["1", "x", "2"]).count());
    assert_eq!(out, 3);
    let root = only(&traces).root();
    assert_eq!(root["output"], json!([1, 2]));
    assert_eq!(root["metadata"]["Exceptions"], "Unreadable(InvalidData)");

    let dir = openlayer_trace_tests::child::temp_dir("streams-signature-types");
    let path = dir.join("lines.txt");
    std::fs::write(&path, "one\ntwo\n").unwrap();
    let path = path.to_str().unwrap();
    let missing = dir.join("missing.txt");
    let missing = missing.to_str().unwrap();

    let (out, traces) = testing::capture(|| lines_of(path).unwrap().collect::<Vec<_>>());
    assert_eq!(out, ["one", "two"]);
    assert_eq!(only(&traces).root()["output"], "onetwo");
    let (out, traces) = testing::capture(|| lines_of(missing).map(|_| ()));
    assert!(matches!(out, Err(Unreadable(std::io::ErrorKind::NotFound))));
    let root = only(&traces).root();
    assert!(root["output"].is_null(), "{root}");
    assert_eq!(root["metadata"]["Exceptions"], "Unreadable(NotFound)");

    let (out, traces) = testing::capture_async(async {
        lines_streamed(path)
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
    })
    .await;
    assert_eq!(out, ["one", "two"]);
    assert_eq!(only(&traces).root()["output"], "onetwo");
    let (out, traces) =
        testing::capture_async(async { lines_streamed(missing).await.map(|_| ()) }).await;
    assert!(matches!(out, Err(Unreadable(std::io::ErrorKind::NotFound))));
    assert_eq!(
        only(&traces).root()["metadata"]["Exceptions"],
        "Unreadable(NotFound)"
    );
}

#[tokio::test]
async fn an_error_then_drop_keeps_partial_output_and_is_cancelled() {
    let (_, traces) = testing::capture_async(async {
        let mut s = flaky();
        s.next().await;
        s.next().await;
    })
    .await;
    let root = only(&traces).root();
    assert_eq!(root["output"], "Hel");
    assert_eq!(
        root["metadata"]["Exceptions"],
        "connection reset at chunk 1"
    );
    assert_eq!(root["metadata"]["cancelled"], true);
}

#[trace]
async fn producer_in_a_task() -> usize {
    let s = stream_tokens(3);
    // Not carried with `in_current_trace`: the stream enters its own position when polled.
    tokio::spawn(async move { s.collect::<Vec<_>>().await.len() })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_in_a_spawned_task() {
    let (n, traces) = testing::capture_async(producer_in_a_task()).await;
    assert_eq!(n, 3);
    let t = only(&traces);
    assert_eq!(
        tree(t),
        "producer_in_a_task(stream_tokens(piece, piece, piece))"
    );
    assert_eq!(t.step("stream_tokens").unwrap()["output"], "t0t1t2");
}

#[trace]
fn producer_on_a_thread() -> Vec<String> {
    let it = tokens(2);
    std::thread::spawn(move || it.collect::<Vec<_>>())
        .join()
        .unwrap()
}

#[test]
fn consumed_on_another_thread() {
    let (out, traces) = testing::capture(producer_on_a_thread);
    assert_eq!(out, ["t0", "t1"]);
    let t = only(&traces);
    assert_eq!(tree(t), "producer_on_a_thread(tokens(piece, piece))");
}

#[test]
fn the_trace_waits_for_a_stream_that_outlives_its_parent() {
    let (rest, traces) = testing::capture(|| {
        let mut it = {
            let _root = step("root").enter();
            tokens(2)
        };
        // The root step has closed; the trace stays open until the iterator ends.
        let first = it.next();
        (first, it.collect::<Vec<_>>())
    });
    assert_eq!(rest.1, ["t1"]);
    assert_eq!(tree(only(&traces)), "root(tokens(piece, piece))");
}

#[trace]
fn slow_first(delay_ms: u64) -> impl Iterator<Item = &'static str> {
    let mut first = true;
    ["a", "b"].into_iter().inspect(move |_| {
        if std::mem::take(&mut first) {
            // The time to the first item is what is measured here.
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
    })
}

#[test]
fn time_to_first_item_is_in_milliseconds() {
    let (_, traces) = testing::capture(|| slow_first(40).count());
    let root = only(&traces).root();
    let ttft = ttft(root);
    assert!(ttft >= 40.0, "timeToFirstToken {ttft} ms");
    assert!(ttft <= root["latency"].as_f64().unwrap());
    assert!(
        ttft < 40.0 * 50.0,
        "timeToFirstToken {ttft} ms is not in ms"
    );
}

#[trace]
async fn slow_async_first() -> impl Stream<Item = String> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    futures_util::stream::iter(["x".to_string()])
}

#[tokio::test]
async fn async_fn_returning_a_stream_counts_from_the_call() {
    let (out, traces) =
        testing::capture_async(async { slow_async_first().await.collect::<Vec<_>>().await }).await;
    assert_eq!(out, ["x"]);
    let root = only(&traces).root();
    assert_eq!(root["output"], "x");
    assert!(ttft(root) >= 30.0, "{}", ttft(root));
}

// ---------------------------------------------------------------------------------------
// Item types, boxed returns, properties

#[derive(Serialize)]
struct Chunk {
    index: u32,
}

#[trace]
fn chunks() -> impl ExactSizeIterator<Item = Chunk> + DoubleEndedIterator {
    (0..2)
        .map(|index| Chunk { index })
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn other_items_are_a_json_list_and_exact_size_is_kept() {
    let (_, traces) = testing::capture(|| {
        let it = chunks();
        assert_eq!(it.len(), 2);
        assert_eq!(it.size_hint(), (2, Some(2)));
        it.count()
    });
    assert_eq!(
        only(&traces).root()["output"],
        json!([{"index": 0}, {"index": 1}])
    );
}

#[trace(stream)]
fn boxed_stream(words: Vec<&'static str>) -> BoxStream<'static, &'static str> {
    futures_util::stream::iter(words).boxed()
}

#[trace(stream, name = "boxed iterator")]
fn boxed_iter(n: u32) -> Box<dyn Iterator<Item = u32> + Send> {
    Box::new(0..n)
}

#[tokio::test]
async fn boxed_returns_with_the_stream_option() {
    let (_, traces) = testing::capture_async(async {
        boxed_stream(vec!["a", "b"]).collect::<Vec<_>>().await;
        boxed_iter(3).count();
    })
    .await;
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0].root()["output"], "ab");
    assert_eq!(traces[1].root()["name"], "boxed iterator");
    assert_eq!(traces[1].root()["output"], json!([0, 1, 2]));
}

#[trace(skip_output)]
fn quiet() -> impl Iterator<Item = Result<&'static str, Reset>> {
    vec![Ok("secret"), Err(Reset(2))].into_iter()
}

#[test]
fn skip_output_still_records_errors() {
    let (_, traces) = testing::capture(|| quiet().count());
    let root = only(&traces).root();
    assert_eq!(root["output"], Value::Null);
    assert_eq!(
        root["metadata"]["Exceptions"],
        "connection reset at chunk 2"
    );
}

fn assert_send<T: Send>(_: &T) {}
fn assert_unpin<T: Unpin>(_: &T) {}

#[test]
fn send_unpin_and_fused_are_kept() {
    let s = stream_tokens(1);
    assert_send(&s);
    assert_unpin(&s);
    let fused = futures_util::stream::iter(["a"]).fuse().traced("fused");
    assert!(!futures_core::stream::FusedStream::is_terminated(&fused));
}

#[trace]
fn panicking_stream() -> impl Iterator<Item = u32> {
    (0..3).map(|i| if i == 1 { panic!("bad item {i}") } else { i })
}

#[test]
fn a_panic_while_producing_closes_the_step_with_the_message() {
    let (r, traces) = testing::capture(|| std::panic::catch_unwind(|| panicking_stream().count()));
    assert!(r.is_err());
    let root = only(&traces).root();
    let exc = root["metadata"]["Exceptions"].as_str().unwrap();
    assert!(exc.contains("bad item 1"), "{exc}");
}

#[trace]
fn panicking_items() -> impl futures_core::Stream<Item = u32> {
    futures_util::stream::iter(0..3).map(|i| if i == 1 { panic!("bad item {i}") } else { i })
}

/// A panic caught before the stream or iterator is dropped (a `catch_unwind` around a
/// `by_ref()` loop, around one poll): the step still closes with the panic's message, not
/// as cancelled when the stream is dropped later.
#[test]
fn a_panic_caught_before_the_drop_closes_the_step_with_the_message() {
    let (_, traces) = testing::capture(|| {
        let mut it = panicking_stream();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.by_ref().count()));
        assert!(r.is_err());
        drop(it);
        let mut s = Box::pin(panicking_items());
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(s.as_mut().poll_next(&mut cx).is_ready());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = s.as_mut().poll_next(&mut cx);
        }));
        assert!(r.is_err());
        drop(s);
    });
    assert_eq!(traces.len(), 2, "{traces:#?}");
    for t in &traces {
        let root = t.root();
        let exc = root["metadata"]["Exceptions"].as_str().unwrap_or_default();
        assert!(exc.contains("bad item 1"), "{root:#}");
        assert!(root["metadata"].get("cancelled").is_none(), "{root:#}");
    }
}

// ---------------------------------------------------------------------------------------
// The extension methods and accumulators

#[test]
fn iter_traced_nests_under_the_current_step() {
    let (_, traces) = testing::capture(|| {
        let _root = step("root").enter();
        ["a", "b"].into_iter().traced("words").for_each(drop);
        vec![Ok::<_, Reset>(1), Err(Reset(9))]
            .into_iter()
            .try_traced("numbers")
            .for_each(drop);
    });
    let t = only(&traces);
    assert_eq!(tree(t), "root(words, numbers)");
    assert_eq!(t.step("words").unwrap()["output"], "ab");
    let numbers = t.step("numbers").unwrap();
    assert_eq!(numbers["output"], json!([1]));
    assert_eq!(
        numbers["metadata"]["Exceptions"],
        "connection reset at chunk 9"
    );
    // Not a traced function: no `has_guardrails`.
    assert!(numbers["metadata"].get("has_guardrails").is_none());
}

struct Delta {
    content: Option<&'static str>,
    model: &'static str,
}

#[derive(Default)]
struct MergeDeltas {
    text: String,
    model: Option<&'static str>,
    chunks: u32,
}

impl Accumulator<Delta> for MergeDeltas {
    fn push(&mut self, item: &Delta, _step: &mut StepHandle) {
        self.text.push_str(item.content.unwrap_or_default());
        self.model.get_or_insert(item.model);
        self.chunks += 1;
    }
    fn finish(&mut self, step: &mut StepHandle) {
        step.output(&self.text);
        step.metadata("model", &self.model);
        step.metadata("chunks", &self.chunks);
    }
}

#[tokio::test]
async fn a_custom_accumulator_through_the_step_builder() {
    let deltas = [
        Delta {
            content: Some("Hi"),
            model: "gpt-4o-mini",
        },
        Delta {
            content: Some(" there"),
            model: "gpt-4o-mini",
        },
        Delta {
            content: None,
            model: "gpt-4o-mini",
        },
    ];
    let (_, traces) = testing::capture_async(async {
        let chat = step("OpenAI Chat Completion")
            .kind(StepKind::ChatCompletion)
            .inputs(&json!({"prompt": [{"role": "user", "content": "hi"}]}));
        futures_util::stream::iter(deltas)
            .traced_with(chat, MergeDeltas::default())
            .for_each(|_| async {})
            .await;
    })
    .await;
    let root = only(&traces).root();
    assert_eq!(root["type"], "chat_completion");
    assert_eq!(root["output"], "Hi there");
    assert_eq!(root["model"], "gpt-4o-mini");
    assert_eq!(root["metadata"]["chunks"], 3);
    ttft(root);
}

#[tokio::test]
async fn ok_items_wraps_a_custom_accumulator() {
    let items = vec![
        Ok(Delta {
            content: Some("a"),
            model: "m",
        }),
        Err(Reset(4)),
    ];
    let (_, traces) = testing::capture_async(async {
        let s: Pin<Box<dyn Stream<Item = Result<Delta, Reset>> + Send>> =
            Box::pin(futures_util::stream::iter(items));
        s.traced_with(step("chat"), OkItems(MergeDeltas::default()))
            .for_each(|_| async {})
            .await;
    })
    .await;
    let root = only(&traces).root();
    assert_eq!(root["output"], "a");
    assert_eq!(
        root["metadata"]["Exceptions"],
        "connection reset at chunk 4"
    );
}

#[test]
fn an_empty_stream_records_an_empty_string() {
    let (_, traces) = testing::capture(|| tokens(0).count());
    let root = only(&traces).root();
    assert_eq!(root["output"], "");
    assert!(root["metadata"].get("timeToFirstToken").is_none());
}
