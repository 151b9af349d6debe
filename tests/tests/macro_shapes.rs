//! `#[trace]` on every function shape it supports, and each of its options, checked on
//! the captured wire JSON.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::trace;
use openlayer_trace_tests::ordered_json::Json;
use serde::Serialize;
use serde_json::{Value, json};

/// Runs `f` and returns its result with the one trace it produced.
fn one<R>(f: impl FnOnce() -> R) -> (R, CapturedTrace) {
    let (out, mut traces) = testing::capture(f);
    assert_eq!(traces.len(), 1, "expected exactly one trace");
    (out, traces.remove(0))
}

/// Awaits `fut` and returns its output with the one trace it produced.
async fn one_async<F: Future>(fut: F) -> (F::Output, CapturedTrace) {
    let (out, mut traces) = testing::capture_async(fut).await;
    assert_eq!(traces.len(), 1, "expected exactly one trace");
    (out, traces.remove(0))
}

/// The root step, keys in wire order.
fn root(t: &CapturedTrace) -> Json {
    let row = Json::parse(t.row_json());
    match row.get("steps") {
        Some(Json::Array(steps)) => steps[0].clone(),
        other => panic!("no steps: {other:?}"),
    }
}

/// The root step's inputs as compact JSON text, keys in wire order.
fn inputs_text(t: &CapturedTrace) -> String {
    root(t).get("inputs").expect("inputs key").to_string()
}

fn input_names(t: &CapturedTrace) -> Value {
    t.config()["inputVariableNames"].clone()
}

/// Checks what every traced function's root step has: its name, type, output, and the
/// `has_guardrails` metadata of a traced function.
fn assert_root(t: &CapturedTrace, name: &str, kind: &str, output: Value) {
    let r = t.root();
    assert_eq!(r["name"], name, "{}", t.row_json());
    assert_eq!(r["type"], kind, "{}", t.row_json());
    assert_eq!(r["output"], output, "{}", t.row_json());
    assert_eq!(t.row()["output"], output, "{}", t.row_json());
    assert_eq!(r["metadata"]["has_guardrails"], false, "{}", t.row_json());
}

// ---------------------------------------------------------------------------------------
// Free functions

#[trace]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

#[trace]
fn no_arguments() -> &'static str {
    "done"
}

#[trace]
fn returns_unit(message: &str) {
    let _ = message;
}

#[test]
fn free_function() {
    let (out, t) = one(|| add(2, 3));
    assert_eq!(out, 5);
    assert_root(&t, "add", "user_call", json!(5));
    assert_eq!(inputs_text(&t), r#"{"a":2,"b":3}"#);
    assert_eq!(input_names(&t), json!(["a", "b"]));
    // Each input is also a row column.
    assert_eq!(t.row()["a"], 2);
    assert_eq!(t.row()["b"], 3);
    assert_eq!(t.root()["metadata"], json!({"has_guardrails": false}));
    assert_eq!(t.root()["steps"], json!([]));
    // Row and config keys in wire order: the root's metadata, then its inputs, as columns.
    assert_eq!(
        Json::parse(t.row_json()).keys(),
        [
            "inferenceTimestamp",
            "inferenceId",
            "output",
            "latency",
            "cost",
            "tokens",
            "steps",
            "has_guardrails",
            "a",
            "b"
        ]
    );
    assert_eq!(
        t.config_json(),
        r#"{"outputColumnName":"output","inputVariableNames":["a","b"],"latencyColumnName":"latency","costColumnName":"cost","timestampColumnName":"inferenceTimestamp","inferenceIdColumnName":"inferenceId","numOfTokenColumnName":"tokens"}"#
    );
    // Without a custom id, the row's id is the root step's.
    assert_eq!(t.inference_id(), t.root()["id"].as_str().unwrap());
    assert_eq!(t.row()["inferenceId"], t.root()["id"]);
}

#[test]
fn function_without_arguments_has_null_inputs() {
    let (out, t) = one(no_arguments);
    assert_eq!(out, "done");
    assert_root(&t, "no_arguments", "user_call", json!("done"));
    assert_eq!(t.root()["inputs"], Value::Null);
    assert_eq!(input_names(&t), json!([]));
}

#[test]
fn unit_return_is_recorded_as_null() {
    let ((), t) = one(|| returns_unit("hi"));
    assert_root(&t, "returns_unit", "user_call", Value::Null);
    assert_eq!(inputs_text(&t), r#"{"message":"hi"}"#);
}

// ---------------------------------------------------------------------------------------
// Methods: the receiver is never an input

/// Deliberately not `Serialize`: the receiver must not be recorded.
struct Counter {
    n: i32,
}

impl Counter {
    #[trace]
    fn get(&self) -> i32 {
        self.n
    }

    #[trace]
    fn bump(&mut self, by: i32) -> i32 {
        self.n += by;
        self.n
    }

    #[trace]
    fn into_inner(self, extra: i32) -> i32 {
        self.n + extra
    }

    #[trace]
    fn boxed(self: Box<Self>, extra: i32) -> i32 {
        self.n + extra
    }

    #[trace]
    fn shared(self: Arc<Self>, extra: i32) -> i32 {
        self.n + extra
    }

    #[trace]
    fn label(&self) -> &str {
        if self.n > 0 { "positive" } else { "other" }
    }

    #[trace]
    fn value_mut(&mut self) -> &mut i32 {
        &mut self.n
    }

    #[trace]
    async fn value_mut_async(&mut self) -> &mut i32 {
        tokio::task::yield_now().await;
        &mut self.n
    }

    #[trace]
    async fn get_async(&self, extra: i32) -> i32 {
        tokio::task::yield_now().await;
        self.n + extra
    }
}

#[test]
fn method_with_ref_self() {
    let c = Counter { n: 7 };
    let (out, t) = one(|| c.get());
    assert_eq!(out, 7);
    assert_root(&t, "get", "user_call", json!(7));
    assert_eq!(t.root()["inputs"], Value::Null);
    assert_eq!(input_names(&t), json!([]));
}

#[test]
fn method_with_mut_self() {
    let mut c = Counter { n: 1 };
    let (out, t) = one(|| c.bump(4));
    assert_eq!(out, 5);
    assert_eq!(c.n, 5);
    assert_root(&t, "bump", "user_call", json!(5));
    assert_eq!(inputs_text(&t), r#"{"by":4}"#);
    assert_eq!(input_names(&t), json!(["by"]));
}

#[test]
fn method_with_self_by_value_box_and_arc() {
    let (out, t) = one(|| Counter { n: 1 }.into_inner(2));
    assert_eq!(out, 3);
    assert_root(&t, "into_inner", "user_call", json!(3));
    assert_eq!(inputs_text(&t), r#"{"extra":2}"#);

    let (out, t) = one(|| Box::new(Counter { n: 1 }).boxed(3));
    assert_eq!(out, 4);
    assert_root(&t, "boxed", "user_call", json!(4));
    assert_eq!(inputs_text(&t), r#"{"extra":3}"#);

    let (out, t) = one(|| Arc::new(Counter { n: 1 }).shared(4));
    assert_eq!(out, 5);
    assert_root(&t, "shared", "user_call", json!(5));
    assert_eq!(inputs_text(&t), r#"{"extra":4}"#);
}

#[test]
fn method_returning_a_borrow_of_self() {
    let c = Counter { n: 2 };
    let (out, t) = one(|| c.label());
    assert_eq!(out, "positive");
    assert_root(&t, "label", "user_call", json!("positive"));
}

#[test]
fn method_returning_a_mutable_borrow_of_self() {
    let mut c = Counter { n: 2 };
    let ((), t) = one(|| *c.value_mut() += 1);
    assert_eq!(c.n, 3);
    // The output is recorded when the function returns, before the caller's write.
    assert_root(&t, "value_mut", "user_call", json!(2));
    assert_eq!(t.root()["inputs"], Value::Null);
}

#[tokio::test]
async fn async_method_returning_a_mutable_borrow_of_self() {
    let mut c = Counter { n: 2 };
    let ((), t) = one_async(async { *c.value_mut_async().await += 1 }).await;
    assert_eq!(c.n, 3);
    assert_root(&t, "value_mut_async", "user_call", json!(2));
}

#[tokio::test]
async fn async_method() {
    let c = Counter { n: 10 };
    let (out, t) = one_async(c.get_async(5)).await;
    assert_eq!(out, 15);
    assert_root(&t, "get_async", "user_call", json!(15));
    assert_eq!(inputs_text(&t), r#"{"extra":5}"#);
}

// ---------------------------------------------------------------------------------------
// Generic functions and `impl Trait`

#[derive(Serialize, Clone, Debug, PartialEq)]
struct Doc {
    id: u32,
    text: String,
}

#[trace]
fn identity<T: Serialize>(x: T) -> T {
    x
}

#[trace]
fn first_of<T, U>(items: Vec<T>, fallback: U) -> Option<T>
where
    T: Serialize + Clone,
    U: Serialize,
{
    let _ = fallback;
    items.first().cloned()
}

#[trace(skip(label))]
fn describe(value: impl Serialize, label: impl fmt::Display) -> String {
    let _ = value;
    format!("<{label}>")
}

#[trace]
fn evens(limit: u32) -> impl Serialize {
    (0..limit).filter(|n| n % 2 == 0).collect::<Vec<_>>()
}

#[trace(skip_output)]
fn countdown(from: u32) -> impl Iterator<Item = u32> {
    (0..=from).rev()
}

#[test]
fn generic_function() {
    let doc = Doc {
        id: 1,
        text: "Paris".into(),
    };
    let (out, t) = one(|| identity(doc.clone()));
    assert_eq!(out, doc);
    assert_root(
        &t,
        "identity",
        "user_call",
        json!({"id": 1, "text": "Paris"}),
    );
    assert_eq!(inputs_text(&t), r#"{"x":{"id":1,"text":"Paris"}}"#);

    let (out, t) = one(|| identity("plain"));
    assert_eq!(out, "plain");
    assert_root(&t, "identity", "user_call", json!("plain"));

    let (out, t) = one(|| first_of(vec![3u8, 4], "none"));
    assert_eq!(out, Some(3));
    assert_root(&t, "first_of", "user_call", json!(3));
    assert_eq!(inputs_text(&t), r#"{"items":[3,4],"fallback":"none"}"#);
}

#[test]
fn impl_trait_arguments() {
    let (out, t) = one(|| describe(vec![1, 2], 42));
    assert_eq!(out, "<42>");
    assert_root(&t, "describe", "user_call", json!("<42>"));
    // The `impl Display` argument is skipped; the `impl Serialize` one recorded.
    assert_eq!(inputs_text(&t), r#"{"value":[1,2]}"#);
    assert_eq!(input_names(&t), json!(["value"]));
}

#[test]
fn impl_trait_returns() {
    let (out, t) = one(|| evens(7));
    assert_eq!(serde_json::to_value(&out).unwrap(), json!([0, 2, 4, 6]));
    assert_root(&t, "evens", "user_call", json!([0, 2, 4, 6]));

    let (out, t) = one(|| countdown(3).collect::<Vec<_>>());
    assert_eq!(out, [3, 2, 1, 0]);
    assert_root(&t, "countdown", "user_call", Value::Null);
    assert_eq!(inputs_text(&t), r#"{"from":3}"#);
}

#[trace]
fn with_cfg_parameters(
    a: u32,
    #[cfg(not(test))] b: u32,
    #[cfg(test)] c: u32,
    #[cfg(not(test))] (d, e): (u32, u32),
    #[cfg_attr(test, cfg(any()))] f: u32,
    #[cfg_attr(test, cfg_attr(test, cfg(any())))] g: u32,
) -> u32 {
    a + c
}

/// Row options on gated parameters: compiled only with them (the one that is compiled out
/// here would not be found otherwise).
#[trace(promote(b, c = "tenant"), context = b, question = c)]
fn with_cfg_row_options(a: u32, #[cfg(not(test))] b: u32, #[cfg(test)] c: u32) -> u32 {
    a + c
}

#[trace(promote(b, c = "tenant"))]
fn with_cfg_row_options_later(
    a: u32,
    #[cfg(not(test))] b: u32,
    #[cfg(test)] c: u32,
) -> impl Future<Output = u32> {
    async move { a + c }
}

#[test]
fn cfg_gated_parameters_are_recorded_when_present() {
    let (out, t) = one(|| with_cfg_parameters(1, 2));
    assert_eq!(out, 3);
    assert_eq!(inputs_text(&t), r#"{"a":1,"c":2}"#);

    let (out, t) = one(|| with_cfg_row_options(1, 2));
    assert_eq!(out, 3);
    assert_eq!(t.row()["tenant"], 2);
    assert_eq!(t.row()["_question"], 2);
    assert!(t.row().get("b").is_none(), "{}", t.row_json());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (out, t) = rt.block_on(one_async(with_cfg_row_options_later(1, 2)));
    assert_eq!(out, 3);
    assert_eq!(t.row()["tenant"], 2);
}

#[trace]
fn diverges(code: i32) -> ! {
    panic!("exit {code}")
}

/// The one trace of `diverges(7)` (or its async twin), which panicked: its input, and the
/// panic's message under `Exceptions`.
fn assert_diverged_with_7<R>(out: std::thread::Result<R>, traces: &[CapturedTrace]) {
    assert!(out.is_err());
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(inputs_text(t), r#"{"code":7}"#);
    let exceptions = t.root()["metadata"]["Exceptions"].to_string();
    assert!(exceptions.contains("exit 7"), "{exceptions}");
}

#[test]
fn a_function_that_never_returns_records_its_panic() {
    let (out, traces) = testing::capture(|| std::panic::catch_unwind(|| diverges(7)));
    assert_diverged_with_7(out, &traces);
}

#[trace]
async fn diverges_async(code: i32) -> ! {
    tokio::task::yield_now().await;
    panic!("exit {code}")
}

/// An `async fn` that never returns compiles (`!` is not named), and records its panic.
#[tokio::test]
async fn an_async_function_that_never_returns_records_its_panic() {
    use futures_util::FutureExt as _;
    let (out, traces) =
        testing::capture_async(std::panic::AssertUnwindSafe(diverges_async(7)).catch_unwind())
            .await;
    assert_diverged_with_7(out, &traces);
}

/// Errors whose `Display` fails (which makes `to_string` panic) or panics.
#[derive(Debug)]
enum BadDisplay {
    Fails,
    Panics,
}

impl fmt::Display for BadDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadDisplay::Fails => {
                f.write_str("partial")?;
                Err(fmt::Error)
            }
            BadDisplay::Panics => panic!("no text for this error"),
        }
    }
}

#[trace]
fn fails_oddly(how: u8) -> Result<u8, BadDisplay> {
    Err(if how == 0 {
        BadDisplay::Fails
    } else {
        BadDisplay::Panics
    })
}

#[test]
fn an_error_whose_display_fails_or_panics_never_panics_in_the_caller() {
    let (out, t) = one(|| fails_oddly(0));
    assert!(matches!(out, Err(BadDisplay::Fails)));
    assert_eq!(t.root()["metadata"]["Exceptions"], "partial");
    let (out, t) = one(|| fails_oddly(1));
    assert!(matches!(out, Err(BadDisplay::Panics)));
    assert_eq!(
        t.root()["metadata"]["Exceptions"],
        "<the error's Display panicked>"
    );
}

// ---------------------------------------------------------------------------------------
// Functions returning the future they build: `-> impl Future`, `BoxFuture`, and the
// methods `#[async_trait]` rewrites into `Pin<Box<dyn Future>>`

#[trace]
async fn embed(text: String) -> usize {
    tokio::task::yield_now().await;
    text.len()
}

#[async_trait::async_trait]
trait Retriever {
    async fn retrieve(&self, query: String) -> Vec<String>;
}

struct Index;

#[async_trait::async_trait]
impl Retriever for Index {
    #[trace]
    async fn retrieve(&self, query: String) -> Vec<String> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        vec![embed(query).await.to_string()]
    }
}

#[trace]
fn later(n: u32) -> impl Future<Output = Result<u32, String>> + Send {
    // Work done when the future is made, before the step's run.
    let even = n.is_multiple_of(2);
    async move {
        tokio::task::yield_now().await;
        let half = if even {
            n / 2
        } else {
            Err(format!("{n} is odd"))?
        };
        Ok(embed("abc".into()).await as u32 + half)
    }
}

#[trace(name = "boxed")]
fn boxed_later(n: u32) -> futures_util::future::BoxFuture<'static, u32> {
    Box::pin(async move { embed("ab".into()).await as u32 * n })
}

/// Shapes that must keep compiling, and record the arguments as called: a body that
/// shadows, moves or only borrows its arguments before returning its block.
#[trace]
fn shadowed(n: u32) -> impl Future<Output = u32> {
    let n = n * 10;
    async move { n + 1 }
}

#[trace(skip_output)]
fn borrowed_before(x: &str) -> impl Future<Output = usize> + 'static {
    let n = x.len();
    async move { n }
}

#[trace(skip_output)]
fn moved_before(s: String) -> impl Future<Output = usize> {
    let n = s.len();
    drop(s);
    async move { n }
}

#[trace(skip_output)]
#[allow(clippy::let_underscore_untyped)]
fn unused_in_block(x: u32) -> impl Future<Output = u32> {
    let _ = x;
    async { 5 }
}

#[tokio::test]
async fn returned_futures_record_the_arguments_as_called() {
    let (out, traces) = testing::capture_async(shadowed(3)).await;
    assert_eq!(out, 31);
    assert_eq!(inputs_text(&traces[0]), r#"{"n":3}"#);
    let (out, traces) = testing::capture_async(borrowed_before("abcd")).await;
    assert_eq!(out, 4);
    assert_eq!(inputs_text(&traces[0]), r#"{"x":"abcd"}"#);
    let (out, traces) = testing::capture_async(moved_before("abc".into())).await;
    assert_eq!(out, 3);
    assert_eq!(inputs_text(&traces[0]), r#"{"s":"abc"}"#);
    let (out, traces) = testing::capture_async(unused_in_block(9)).await;
    assert_eq!(out, 5);
    assert_eq!(inputs_text(&traces[0]), r#"{"x":9}"#);
    // Made where nothing would be recorded (outside the capture, tracing configured off),
    // polled where the step is: the inputs are still the arguments.
    let made = shadowed(4);
    let (out, traces) = testing::capture_async(made).await;
    assert_eq!(out, 41);
    assert_eq!(inputs_text(&traces[0]), r#"{"n":4}"#);
}

/// The same shapes with row options naming the arguments: the options take the values
/// the function was called with, as the inputs do (they once ran in the returned block,
/// where the names were moved, borrowed past `'static` or shadowed).
#[trace(promote(n))]
fn shadowed_promoted(n: u32) -> impl Future<Output = u32> {
    let n = n * 10;
    async move { n + 1 }
}

#[trace(skip_output, question = x)]
fn borrowed_before_question(x: &str) -> impl Future<Output = usize> + 'static {
    let n = x.len();
    async move { n }
}

#[trace(skip_output, context = s)]
fn moved_before_context(s: Vec<String>) -> impl Future<Output = usize> {
    let n = s.len();
    drop(s);
    async move { n }
}

#[tokio::test]
async fn row_options_of_returned_futures_take_the_arguments_as_called() {
    let (out, traces) = testing::capture_async(shadowed_promoted(3)).await;
    assert_eq!(out, 31);
    assert_eq!(traces[0].row()["n"], 3);
    let (out, traces) = testing::capture_async(borrowed_before_question("abcd")).await;
    assert_eq!(out, 4);
    assert_eq!(traces[0].row()["_question"], "abcd");
    let docs = vec!["a".to_string(), "b".to_string()];
    let (out, traces) = testing::capture_async(moved_before_context(docs)).await;
    assert_eq!(out, 2);
    assert_eq!(traces[0].row()["context"], json!(["a", "b"]));
    // Made outside the capture, polled in it: applied in the step all the same.
    let made = shadowed_promoted(4);
    let (_, traces) = testing::capture_async(made).await;
    assert_eq!(traces[0].row()["n"], 4);
}

/// `-> impl Future` without `Output = ..`: the output is the block's, recorded as usual.
#[trace]
#[allow(clippy::manual_async_fn)]
fn unnamed_output(n: u32) -> impl Future {
    async move { n * 2 }
}

/// A function returning nothing whose body only diverges.
#[trace]
fn only_diverges(message: &'static str) {
    std::panic::panic_any(message);
}

#[tokio::test]
async fn unnamed_outputs_and_diverging_bodies_compile_and_record() {
    let (_, traces) = testing::capture_async(async {
        unnamed_output(21).await;
    })
    .await;
    assert_eq!(traces[0].root()["output"], 42);
    let (_, traces) = testing::capture(|| {
        assert!(std::panic::catch_unwind(|| only_diverges("gone")).is_err());
    });
    assert_eq!(traces[0].root()["name"], "only_diverges");
}

#[tokio::test]
async fn async_trait_methods_are_steps_around_their_future() {
    let (out, traces) =
        testing::capture_async(async { Index.retrieve("hello".into()).await }).await;
    assert_eq!(out, ["5"]);
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_root(t, "retrieve", "user_call", json!(["5"]));
    assert_eq!(inputs_text(t), r#"{"query":"hello"}"#);
    // The step lasts as long as the future, and what it awaits nests under it.
    let root = t.root();
    assert!(root["latency"].as_f64().unwrap() >= 20.0, "{root}");
    assert_eq!(root["steps"][0]["name"], "embed");
}

#[tokio::test]
async fn functions_returning_an_async_block_are_steps_around_it() {
    let (out, traces) = testing::capture_async(later(4)).await;
    assert_eq!(out, Ok(5));
    assert_root(&traces[0], "later", "user_call", json!(5));
    assert_eq!(inputs_text(&traces[0]), r#"{"n":4}"#);
    assert_eq!(traces[0].root()["steps"][0]["name"], "embed");

    let (out, traces) = testing::capture_async(later(3)).await;
    assert_eq!(out, Err("3 is odd".into()));
    assert_eq!(traces[0].root()["metadata"]["Exceptions"], "3 is odd");

    let (out, traces) = testing::capture_async(boxed_later(3)).await;
    assert_eq!(out, 6);
    assert_root(&traces[0], "boxed", "user_call", json!(6));
    assert_eq!(traces[0].root()["steps"][0]["name"], "embed");
}

// ---------------------------------------------------------------------------------------
// async fn, trait impls, native async fn in traits

#[trace]
async fn fetch(url: String) -> usize {
    tokio::task::yield_now().await;
    url.len()
}

#[trace]
async fn fetch_all(urls: Vec<String>) -> usize {
    let mut total = 0;
    for url in urls {
        total += fetch(url).await;
    }
    total
}

trait Greeter {
    fn greet(&self, name: &str) -> String;
    async fn greet_later(&self, name: &str) -> String;

    /// A traced default method.
    #[trace]
    fn farewell(&self, name: &str) -> String {
        format!("Bye, {name}.")
    }

    /// A traced default `async fn`.
    #[trace]
    async fn farewell_later(&self, name: &str) -> String {
        tokio::task::yield_now().await;
        self.farewell(name)
    }
}

struct English;

impl Greeter for English {
    #[trace]
    fn greet(&self, name: &str) -> String {
        format!("Hello, {name}!")
    }

    #[trace(name = "greet_later_en")]
    async fn greet_later(&self, name: &str) -> String {
        tokio::task::yield_now().await;
        self.greet(name)
    }
}

#[tokio::test]
async fn async_free_function_with_children() {
    let (out, t) = one_async(fetch_all(vec!["ab".into(), "cde".into()])).await;
    assert_eq!(out, 5);
    assert_root(&t, "fetch_all", "user_call", json!(5));
    assert_eq!(inputs_text(&t), r#"{"urls":["ab","cde"]}"#);
    let children = t.root()["steps"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0]["name"], "fetch");
    assert_eq!(children[0]["inputs"], json!({"url": "ab"}));
    assert_eq!(children[0]["output"], 2);
    assert_eq!(children[1]["inputs"], json!({"url": "cde"}));
    assert_eq!(children[1]["output"], 3);
}

#[test]
fn function_in_trait_impl() {
    let (out, t) = one(|| English.greet("Ada"));
    assert_eq!(out, "Hello, Ada!");
    assert_root(&t, "greet", "user_call", json!("Hello, Ada!"));
    assert_eq!(inputs_text(&t), r#"{"name":"Ada"}"#);
}

#[tokio::test]
async fn default_methods_of_a_trait() {
    let (out, t) = one(|| English.farewell("Ada"));
    assert_eq!(out, "Bye, Ada.");
    assert_root(&t, "farewell", "user_call", json!("Bye, Ada."));
    assert_eq!(inputs_text(&t), r#"{"name":"Ada"}"#);

    let (out, t) = one_async(English.farewell_later("Bo")).await;
    assert_eq!(out, "Bye, Bo.");
    assert_root(&t, "farewell_later", "user_call", json!("Bye, Bo."));
    assert_eq!(t.root()["steps"][0]["name"], "farewell");
}

#[tokio::test]
async fn native_async_fn_in_trait_impl() {
    let (out, t) = one_async(English.greet_later("Ada")).await;
    assert_eq!(out, "Hello, Ada!");
    assert_root(&t, "greet_later_en", "user_call", json!("Hello, Ada!"));
    assert_eq!(inputs_text(&t), r#"{"name":"Ada"}"#);
    // The sync call inside is a child step.
    assert_eq!(t.root()["steps"][0]["name"], "greet");
    assert_eq!(t.root()["steps"][0]["output"], "Hello, Ada!");
}

#[tokio::test]
async fn async_trait_method_called_through_a_generic() {
    async fn call<G: Greeter>(g: &G) -> String {
        g.greet_later("Bo").await
    }
    let (out, t) = one_async(call(&English)).await;
    assert_eq!(out, "Hello, Bo!");
    assert_eq!(t.root()["name"], "greet_later_en");
}

// ---------------------------------------------------------------------------------------
// Result, `?`, early return

#[derive(Debug)]
enum AppError {
    Parse(std::num::ParseIntError),
    Negative(i64),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Parse(e) => write!(f, "not a number: {e}"),
            AppError::Negative(n) => write!(f, "{n} is negative"),
        }
    }
}

impl Error for AppError {}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

#[trace]
fn parse_positive(text: &str) -> Result<i64, AppError> {
    let n: i64 = text.trim().parse()?;
    if n < 0 {
        return Err(AppError::Negative(n));
    }
    Ok(n)
}

#[trace]
fn read_config(path: &str) -> Result<String, Box<dyn Error>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text)
}

#[trace]
async fn read_config_async(path: String) -> Result<usize, Box<dyn Error + Send + Sync>> {
    tokio::task::yield_now().await;
    let text = std::fs::read_to_string(&path)?;
    Ok(text.len())
}

#[trace]
fn classify(n: i32) -> &'static str {
    if n < 0 {
        return "negative";
    }
    for _ in 0..n {
        if n > 10 {
            return "large";
        }
    }
    "small"
}

#[trace]
async fn classify_async(n: i32) -> &'static str {
    tokio::task::yield_now().await;
    if n < 0 {
        return "negative";
    }
    "non-negative"
}

#[trace]
fn parse_all(items: &[&str]) -> Result<impl Serialize + use<>, std::num::ParseIntError> {
    let mut out = Vec::new();
    for item in items {
        out.push(item.parse::<i32>()?);
    }
    Ok(out)
}

#[trace]
async fn parse_all_async(items: Vec<String>) -> Result<impl Serialize, std::num::ParseIntError> {
    let mut out = Vec::new();
    for item in items {
        out.push(item.parse::<i32>()?);
    }
    Ok(out)
}

#[trace]
fn factorial(n: u64) -> u64 {
    if n == 0 { 1 } else { n * factorial(n - 1) }
}

const MISSING: &str = "/nonexistent/openlayer-trace-tests/config.toml";

fn io_error_text() -> String {
    std::fs::read_to_string(MISSING).unwrap_err().to_string()
}

#[test]
fn result_ok_is_the_output() {
    let (out, t) = one(|| parse_positive(" 42 "));
    assert_eq!(out.unwrap(), 42);
    assert_root(&t, "parse_positive", "user_call", json!(42));
    assert_eq!(t.root()["metadata"], json!({"has_guardrails": false}));
    assert!(t.row().get("Exceptions").is_none());
}

#[test]
fn result_err_is_null_output_and_exceptions() {
    let (out, t) = one(|| parse_positive("-3"));
    assert!(matches!(out, Err(AppError::Negative(-3))));
    assert_root(&t, "parse_positive", "user_call", Value::Null);
    assert_eq!(
        t.root()["metadata"],
        json!({"has_guardrails": false, "Exceptions": "-3 is negative"})
    );
    // On the root step, the metadata is also a row column.
    assert_eq!(t.row()["Exceptions"], "-3 is negative");
    // The inputs are still recorded.
    assert_eq!(inputs_text(&t), r#"{"text":"-3"}"#);
}

#[test]
fn question_mark_with_from_conversion() {
    let (out, t) = one(|| parse_positive("forty"));
    assert!(matches!(out, Err(AppError::Parse(_))));
    assert_root(&t, "parse_positive", "user_call", Value::Null);
    assert_eq!(
        t.root()["metadata"]["Exceptions"],
        "not a number: invalid digit found in string"
    );
}

#[test]
fn question_mark_into_box_dyn_error() {
    let (out, t) = one(|| read_config(MISSING));
    assert!(out.is_err());
    assert_root(&t, "read_config", "user_call", Value::Null);
    assert_eq!(t.root()["metadata"]["Exceptions"], io_error_text());
}

#[tokio::test]
async fn question_mark_in_async_fn() {
    let (out, t) = one_async(read_config_async(MISSING.into())).await;
    assert!(out.is_err());
    assert_root(&t, "read_config_async", "user_call", Value::Null);
    assert_eq!(t.root()["metadata"]["Exceptions"], io_error_text());
    assert_eq!(t.row()["Exceptions"], io_error_text());
}

#[test]
fn result_of_impl_trait_with_question_mark() {
    let (out, t) = one(|| parse_all(&["1", "2"]));
    assert!(out.is_ok());
    assert_root(&t, "parse_all", "user_call", json!([1, 2]));

    let (out, t) = one(|| parse_all(&["1", "x"]));
    assert!(out.is_err());
    assert_root(&t, "parse_all", "user_call", Value::Null);
    assert_eq!(
        t.root()["metadata"]["Exceptions"],
        "invalid digit found in string"
    );
}

#[tokio::test]
async fn async_result_of_impl_trait_with_question_mark() {
    let (out, t) = one_async(parse_all_async(vec!["1".into(), "y".into()])).await;
    assert!(out.is_err());
    assert_root(&t, "parse_all_async", "user_call", Value::Null);
    assert_eq!(
        t.root()["metadata"]["Exceptions"],
        "invalid digit found in string"
    );
    assert_eq!(inputs_text(&t), r#"{"items":["1","y"]}"#);
}

#[test]
fn recursion_nests_steps() {
    let (out, t) = one(|| factorial(3));
    assert_eq!(out, 6);
    let chain: Vec<(Value, Value)> = t
        .steps()
        .iter()
        .map(|s| (s["inputs"]["n"].clone(), s["output"].clone()))
        .collect();
    assert_eq!(
        chain,
        [
            (json!(3), json!(6)),
            (json!(2), json!(2)),
            (json!(1), json!(1)),
            (json!(0), json!(1))
        ]
    );
    // A straight chain: each step has exactly one child, but the last.
    assert_eq!(
        t.root()["steps"][0]["steps"][0]["steps"][0]["steps"],
        json!([])
    );
}

#[test]
fn early_return() {
    for (n, expected) in [(-1, "negative"), (20, "large"), (3, "small")] {
        let (out, t) = one(|| classify(n));
        assert_eq!(out, expected);
        assert_root(&t, "classify", "user_call", json!(expected));
        assert_eq!(inputs_text(&t), format!(r#"{{"n":{n}}}"#));
    }
}

#[tokio::test]
async fn early_return_in_async_fn() {
    let (out, t) = one_async(classify_async(-5)).await;
    assert_eq!(out, "negative");
    assert_root(&t, "classify_async", "user_call", json!("negative"));
}

// ---------------------------------------------------------------------------------------
// Lifetimes, patterns, raw identifiers, `mut`

#[trace]
fn last_mut(items: &mut [i32]) -> Option<&mut i32> {
    items.last_mut()
}

#[trace]
fn first_word<'a>(text: &'a str) -> &'a str {
    text.split_whitespace().next().unwrap_or("")
}

#[trace]
fn longest<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.len() >= b.len() { a } else { b }
}

#[derive(Serialize)]
struct Point {
    x: f64,
    y: f64,
}

#[trace]
fn manhattan((a, b): (i32, i32), [c, d]: [i32; 2]) -> i32 {
    (a - c).abs() + (b - d).abs()
}

#[trace]
fn norm(Point { x, y }: Point) -> f64 {
    (x * x + y * y).sqrt()
}

#[trace]
fn r#match(r#type: &str, r#in: u8) -> String {
    format!("{type}:{in}", type = r#type, in = r#in)
}

#[trace(skip(r#type))]
fn skip_raw(r#type: &str, kept: u8) -> u8 {
    let _ = r#type;
    kept
}

#[trace]
fn append(mut items: Vec<i32>, mut extra: i32) -> Vec<i32> {
    extra += 1;
    items.push(extra);
    items
}

#[test]
fn returns_borrowing_from_arguments() {
    let text = String::from("Paris is the capital");
    let (out, t) = one(|| first_word(&text));
    assert_eq!(out, "Paris");
    assert_root(&t, "first_word", "user_call", json!("Paris"));
    assert_eq!(inputs_text(&t), r#"{"text":"Paris is the capital"}"#);

    let (out, t) = one(|| longest("ab", "abc"));
    assert_eq!(out, "abc");
    assert_root(&t, "longest", "user_call", json!("abc"));
    assert_eq!(inputs_text(&t), r#"{"a":"ab","b":"abc"}"#);
}

#[test]
fn returns_a_mutable_borrow_of_an_argument() {
    let mut items = [1, 2];
    let ((), t) = one(|| *last_mut(&mut items).unwrap() = 9);
    assert_eq!(items, [1, 9]);
    assert_root(&t, "last_mut", "user_call", json!(2));
    assert_eq!(inputs_text(&t), r#"{"items":[1,2]}"#);
}

#[test]
fn destructured_parameters_record_each_binding() {
    let (out, t) = one(|| manhattan((1, 2), [4, 6]));
    assert_eq!(out, 7);
    assert_root(&t, "manhattan", "user_call", json!(7));
    assert_eq!(inputs_text(&t), r#"{"a":1,"b":2,"c":4,"d":6}"#);
    assert_eq!(input_names(&t), json!(["a", "b", "c", "d"]));

    let (out, t) = one(|| norm(Point { x: 3.0, y: 4.0 }));
    assert_eq!(out, 5.0);
    assert_root(&t, "norm", "user_call", json!(5.0));
    assert_eq!(inputs_text(&t), r#"{"x":3.0,"y":4.0}"#);
    assert_eq!(input_names(&t), json!(["x", "y"]));
}

#[test]
fn raw_identifiers_are_recorded_without_prefix() {
    let (out, t) = one(|| r#match("doc", 2));
    assert_eq!(out, "doc:2");
    assert_root(&t, "match", "user_call", json!("doc:2"));
    assert_eq!(inputs_text(&t), r#"{"type":"doc","in":2}"#);
    assert_eq!(input_names(&t), json!(["type", "in"]));

    let (out, t) = one(|| skip_raw("secret", 9));
    assert_eq!(out, 9);
    assert_eq!(inputs_text(&t), r#"{"kept":9}"#);
}

#[test]
fn mut_parameters_are_recorded_as_passed() {
    let (out, t) = one(|| append(vec![1], 1));
    assert_eq!(out, [1, 2]);
    assert_root(&t, "append", "user_call", json!([1, 2]));
    assert_eq!(inputs_text(&t), r#"{"items":[1],"extra":1}"#);
}

// ---------------------------------------------------------------------------------------
// Options

#[trace(name = "Retrieve documents")]
fn renamed(query: &str) -> usize {
    query.len()
}

#[trace(kind = "user_call")]
fn k_user_call() {}
#[trace(kind = "chat_completion")]
fn k_chat_completion() {}
#[trace(kind = "embedding")]
fn k_embedding() {}
#[trace(kind = "retriever")]
fn k_retriever() {}
#[trace(kind = "tool")]
fn k_tool() {}
#[trace(kind = "agent")]
fn k_agent() {}
#[trace(kind = "handoff")]
fn k_handoff() {}
#[trace(kind = "guardrail")]
fn k_guardrail() {}

/// Not `Serialize`: only ever passed as a skipped argument.
struct Client;

#[trace(skip(client, api_key))]
fn skip_some(client: &Client, api_key: &str, prompt: &str, temperature: f64) -> String {
    let _ = (client, api_key, temperature);
    prompt.to_uppercase()
}

#[trace(skip_all)]
fn skip_everything(client: Client, prompt: &str) -> usize {
    let _ = client;
    prompt.len()
}

/// Not `Serialize`: only ever returned with `skip_output`.
struct Connection(u16);

#[trace(skip_output)]
fn connect(port: u16) -> Connection {
    Connection(port)
}

#[trace(skip_output)]
fn connect_checked(port: u16) -> Result<Connection, String> {
    if port == 0 {
        Err("port 0 is reserved".to_string())
    } else {
        Ok(Connection(port))
    }
}

#[trace(inference_pipeline_id = "3a1f0c2e-0000-4000-8000-00000000c0de")]
fn routed(question: &str) -> String {
    plain_child(question)
}

#[trace]
fn plain_child(question: &str) -> String {
    question.to_string()
}

#[trace(inference_pipeline_id = "11111111-0000-4000-8000-000000000000")]
fn routed_child(x: u8) -> u8 {
    x
}

#[trace]
fn unrouted_parent(x: u8) -> u8 {
    routed_child(x)
}

#[trace(name = "call tool", kind = "tool", skip(client), skip_output)]
async fn all_options(client: Client, query: String) -> Connection {
    let _ = (client, query);
    Connection(1)
}

#[test]
fn option_name() {
    let (out, t) = one(|| renamed("abc"));
    assert_eq!(out, 3);
    assert_root(&t, "Retrieve documents", "user_call", json!(3));
    assert_eq!(inputs_text(&t), r#"{"query":"abc"}"#);
}

#[test]
fn option_kind_sets_type_and_null_kind_fields() {
    let common = [
        "name",
        "id",
        "type",
        "inputs",
        "output",
        "groundTruth",
        "metadata",
        "steps",
        "latency",
        "startTime",
        "endTime",
    ];
    type Case = (fn(), &'static str, &'static [&'static str]);
    let cases: [Case; 8] = [
        (k_user_call, "user_call", &[]),
        (
            k_chat_completion,
            "chat_completion",
            &[
                "provider",
                "promptTokens",
                "completionTokens",
                "tokens",
                "cost",
                "model",
                "modelParameters",
                "rawOutput",
            ],
        ),
        (
            k_embedding,
            "embedding",
            &[
                "provider",
                "promptTokens",
                "tokens",
                "cost",
                "model",
                "modelParameters",
                "rawOutput",
                "embeddingDimensions",
                "embeddingCount",
            ],
        ),
        (k_retriever, "retriever", &["documents"]),
        (k_tool, "tool", &["functionName", "arguments"]),
        (k_agent, "agent", &["tool", "action", "agentType"]),
        (
            k_handoff,
            "handoff",
            &["fromComponent", "toComponent", "handoffData"],
        ),
        (
            k_guardrail,
            "guardrail",
            &[
                "action",
                "blockedEntities",
                "confidenceThreshold",
                "reason",
                "detectedEntities",
                "blockStrategy",
                "redactedEntities",
                "dataType",
            ],
        ),
    ];
    for (f, kind, extra) in cases {
        let ((), t) = one(f);
        let name = format!("k_{kind}");
        assert_root(&t, &name, kind, Value::Null);
        let step = root(&t);
        let expected: Vec<&str> = common.iter().chain(extra).copied().collect();
        assert_eq!(step.keys(), expected, "key order of a {kind} step");
        for field in extra {
            assert_eq!(step.get(field), Some(&Json::Null), "{kind}.{field}");
        }
        // Nothing was set: the row's cost and tokens stay 0.
        assert_eq!(t.row()["cost"], 0, "{kind}");
        assert_eq!(t.row()["tokens"], 0, "{kind}");
    }
}

#[test]
fn option_skip() {
    let (out, t) = one(|| skip_some(&Client, "sk-123", "hi", 0.5));
    assert_eq!(out, "HI");
    assert_root(&t, "skip_some", "user_call", json!("HI"));
    assert_eq!(inputs_text(&t), r#"{"prompt":"hi","temperature":0.5}"#);
    assert_eq!(input_names(&t), json!(["prompt", "temperature"]));
    assert!(t.row().get("api_key").is_none());
    assert!(!t.row_json().contains("sk-123"));
}

#[test]
fn option_skip_all() {
    let (out, t) = one(|| skip_everything(Client, "hello"));
    assert_eq!(out, 5);
    assert_root(&t, "skip_everything", "user_call", json!(5));
    assert_eq!(t.root()["inputs"], Value::Null);
    assert_eq!(input_names(&t), json!([]));
    assert!(t.row().get("prompt").is_none());
}

#[test]
fn option_skip_output() {
    let (out, t) = one(|| connect(8080));
    assert_eq!(out.0, 8080);
    assert_root(&t, "connect", "user_call", Value::Null);
    assert_eq!(inputs_text(&t), r#"{"port":8080}"#);

    // An `Ok` is not recorded either...
    let (out, t) = one(|| connect_checked(1));
    assert_eq!(out.unwrap().0, 1);
    assert_root(&t, "connect_checked", "user_call", Value::Null);
    assert!(t.root()["metadata"].get("Exceptions").is_none());

    // ...but an `Err` still is.
    let (out, t) = one(|| connect_checked(0));
    assert!(out.is_err());
    assert_root(&t, "connect_checked", "user_call", Value::Null);
    assert_eq!(t.root()["metadata"]["Exceptions"], "port 0 is reserved");
}

#[test]
fn option_inference_pipeline_id() {
    let (out, t) = one(|| routed("q"));
    assert_eq!(out, "q");
    assert_eq!(
        t.pipeline_id(),
        Some("3a1f0c2e-0000-4000-8000-00000000c0de")
    );
    assert_root(&t, "routed", "user_call", json!("q"));
    assert_eq!(t.root()["steps"][0]["name"], "plain_child");

    // Only a root's pipeline routes the trace.
    let (_, t) = one(|| unrouted_parent(1));
    assert_eq!(t.pipeline_id(), None);
    assert_eq!(t.root()["steps"][0]["name"], "routed_child");

    let (_, t) = one(|| routed_child(2));
    assert_eq!(
        t.pipeline_id(),
        Some("11111111-0000-4000-8000-000000000000")
    );
}

#[tokio::test]
async fn options_together_on_async_fn() {
    let (out, t) = one_async(all_options(Client, "weather".into())).await;
    assert_eq!(out.0, 1);
    assert_root(&t, "call tool", "tool", Value::Null);
    assert_eq!(inputs_text(&t), r#"{"query":"weather"}"#);
    assert_eq!(t.root()["functionName"], Value::Null);
    assert_eq!(t.root()["arguments"], Value::Null);
}

// ---------------------------------------------------------------------------------------
// `#[trace]` written inside a `macro_rules!` macro, its parameters, return type and row
// options from the macro's arguments: the expansion's own variables must not take the
// hygiene of the caller's tokens.

macro_rules! traced_tool {
    ($name:ident($arg:ident: $t:ty) -> $ret:ty $body:block) => {
        #[trace(kind = "tool", context = $arg)]
        fn $name($arg: $t) -> $ret $body
    };
    (stream $name:ident($arg:ident: $t:ty) -> $ret:ty $body:block) => {
        #[trace(question = $arg)]
        fn $name($arg: $t) -> $ret $body
    };
    (future $name:ident($arg:ident: $t:ty) -> $ret:ty $body:block) => {
        #[trace(promote($arg))]
        fn $name($arg: $t) -> $ret $body
    };
}

traced_tool!(lookup(query: String) -> Result<String, String> { Ok(format!("found {query}")) });
traced_tool!(stream words(text: String) -> impl Iterator<Item = String> {
    text.split(' ').map(str::to_string).collect::<Vec<_>>().into_iter()
});
traced_tool!(future later_from_macro(n: u32) -> impl Future<Output = u32> { async move { n + 1 } });

#[test]
fn trace_inside_macro_rules_with_the_callers_tokens() {
    let (out, t) = one(|| lookup("paris".into()));
    assert_eq!(out.unwrap(), "found paris");
    assert_root(&t, "lookup", "tool", json!("found paris"));
    assert_eq!(t.root()["inputs"], json!({"query": "paris"}));
    assert_eq!(t.row()["context"], "paris");

    let (out, t) = one(|| words("a b".into()).collect::<Vec<_>>());
    assert_eq!(out, ["a", "b"]);
    assert_eq!(t.root()["output"], "ab");
    assert_eq!(t.row()["_question"], "a b");

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (out, t) = rt.block_on(one_async(later_from_macro(41)));
    assert_eq!(out, 42);
    assert_eq!(t.root()["output"], 42);
    assert_eq!(t.row()["n"], 41);
}

// ---------------------------------------------------------------------------------------
// Parameter patterns and types passed through `macro_rules!`

/// An or-pattern binds the same names in every case: they are recorded.
#[trace]
fn either((Ok(x) | Err(x)): Result<u32, u32>) -> u32 {
    x + 1
}

#[test]
fn a_parameter_bound_by_an_or_pattern_is_recorded() {
    let (out, t) = one(|| either(Err(4)));
    assert_eq!(out, 5);
    assert_eq!(inputs_text(&t), r#"{"x":4}"#);
}

/// A return type given to `#[trace]` by a `macro_rules!` macro's `$t:ty` (an invisible
/// group around the type) is read as written: `!` never returns, and a `BoxFuture`'s
/// output types the future's body, where `?` needs to know what it converts into.
macro_rules! traced_with_return_type {
    ($never:ty, $boxed:ty) => {
        #[trace]
        fn stops(code: i32) -> $never {
            panic!("exit {code}")
        }

        #[trace]
        fn parsed_later(text: &'static str) -> $boxed {
            Box::pin(async move {
                let n: u32 = text.parse()?;
                Ok(n * 2)
            })
        }
    };
}

traced_with_return_type!(
    !,
    futures_util::future::BoxFuture<'static, Result<u32, std::num::ParseIntError>>
);

#[tokio::test]
async fn return_types_from_a_macro_rules_type_fragment_are_read_as_written() {
    let (out, traces) = testing::capture(|| std::panic::catch_unwind(|| stops(3)));
    assert!(out.is_err());
    let exceptions = traces[0].root()["metadata"]["Exceptions"].to_string();
    assert!(exceptions.contains("exit 3"), "{exceptions}");

    let (out, t) = one_async(parsed_later("21")).await;
    assert_eq!(out.unwrap(), 42);
    assert_eq!(t.root()["output"], 42);
    let (out, t) = one_async(parsed_later("x")).await;
    assert!(out.is_err());
    assert!(t.root()["output"].is_null());
}

// ---------------------------------------------------------------------------------------
// `#[track_caller]`

/// A body that cannot leave early runs in place: the caller's location reaches it.
#[track_caller]
#[trace]
fn called_from() -> u32 {
    std::panic::Location::caller().line()
}

/// A body that may leave early (`?`) runs in a closure: it still compiles and is recorded.
#[track_caller]
#[trace]
fn parsed_here(text: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = text.parse()?;
    Ok(n)
}

/// A `?` in a macro's arguments leaves the function too: the body runs in a closure, and
/// the error is recorded.
#[track_caller]
#[trace]
fn formatted_len(text: &str) -> Result<usize, std::num::ParseIntError> {
    Ok(format!("{}", text.parse::<u32>()?).len())
}

/// A body that always panics, with a return type other than `!`: no unreachable code is
/// reported in the expansion (the tests build with `-D warnings`).
#[track_caller]
#[trace]
fn always_fails(message: &str) {
    panic!("{message}")
}

#[test]
fn track_caller_reports_the_callers_line_when_the_body_runs_in_place() {
    let ((got, want), t) = one(|| (called_from(), line!()));
    assert_eq!(got, want);
    assert_eq!(t.root()["output"], json!(want));

    let (out, t) = one(|| parsed_here("12"));
    assert_eq!(out.unwrap(), 12);
    assert_eq!(t.root()["output"], 12);

    let (out, t) = one(|| formatted_len("x"));
    assert!(out.is_err());
    assert!(t.root()["output"].is_null());
    let exceptions = t.root()["metadata"]["Exceptions"].to_string();
    assert!(exceptions.contains("invalid digit"), "{exceptions}");

    let (out, t) = one(|| std::panic::catch_unwind(|| always_fails("stop")));
    assert!(out.is_err());
    let exceptions = t.root()["metadata"]["Exceptions"].to_string();
    assert!(exceptions.contains("stop"), "{exceptions}");
}

// ---------------------------------------------------------------------------------------
// `#[async_trait]` methods with `_` and pattern parameters (which it renames `__argN`)

/// Not `Serialize`: a `_` parameter of this type must not be recorded.
struct Socket;

#[async_trait::async_trait]
trait Handler {
    async fn handle(&self, conn: Socket, pair: (u32, u32), place: Place) -> u32;
    async fn handle_skipping(&self, pair: (u32, u32)) -> u32;
    async fn handle_between(&self, first: (u8, u8), question: String, last: (u8, u8)) -> u8;
}

#[derive(Serialize)]
struct Place {
    x: i32,
    y: i32,
}

struct Adder;

#[async_trait::async_trait]
impl Handler for Adder {
    #[trace]
    async fn handle(&self, _: Socket, (a, mut b): (u32, u32), Place { x, .. }: Place) -> u32 {
        b += 1;
        a + b + x as u32
    }

    #[trace(skip(a))]
    async fn handle_skipping(&self, (a, b): (u32, u32)) -> u32 {
        a * b
    }

    #[trace(question = question)]
    async fn handle_between(&self, (a, b): (u8, u8), question: String, (c, d): (u8, u8)) -> u8 {
        a + b + c + d + question.len() as u8
    }
}

#[tokio::test]
async fn async_trait_parameters_record_as_written_not_as_renamed() {
    let (out, t) = one_async(Adder.handle(Socket, (1, 2), Place { x: 10, y: 20 })).await;
    assert_eq!(out, 14);
    assert_eq!(inputs_text(&t), r#"{"a":1,"b":2,"x":10}"#);
    assert_eq!(t.root()["output"], 14);

    let (out, t) = one_async(Adder.handle_skipping((3, 4))).await;
    assert_eq!(out, 12);
    assert_eq!(inputs_text(&t), r#"{"b":4}"#);

    let (out, t) = one_async(Adder.handle_between((1, 2), "why".into(), (3, 4))).await;
    assert_eq!(out, 13);
    assert_eq!(
        inputs_text(&t),
        r#"{"a":1,"b":2,"question":"why","c":3,"d":4}"#
    );
    assert_eq!(t.row()["_question"], "why");
}
