//! `openlayer_trace::tracing_layer()`: `tracing` spans (from `#[instrument]` and from spans
//! with GenAI / OpenInference attributes) become steps, nested both ways with `#[trace]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{trace, tracing_layer};
use serde_json::{Value, json};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::Registry;

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

/// The trace whose root is named `name`.
fn named<'a>(traces: &'a [CapturedTrace], name: &str) -> &'a CapturedTrace {
    traces
        .iter()
        .find(|t| t.root()["name"] == name)
        .unwrap_or_else(|| panic!("no trace {name}"))
}

/// Counts the spans another layer of the same subscriber sees.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for Counter {
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `f` under a subscriber with the layer (selecting this test's target) and returns
/// the traces it completed.
fn run<R>(f: impl FnOnce() -> R) -> (R, Vec<CapturedTrace>) {
    let subscriber =
        Registry::default().with(tracing_layer().with_targets([module_path!().to_string()]));
    tracing::subscriber::with_default(subscriber, || testing::capture(f))
}

#[tracing::instrument]
fn lookup(city: &str, limit: u32) -> usize {
    city.len() + limit as usize
}

#[trace]
fn answer(question: &str) -> usize {
    lookup("Paris", 3) + question.len()
}

#[test]
fn instrument_span_inside_a_traced_function_is_its_child_with_its_arguments_as_inputs() {
    let (_, traces) = run(|| answer("capital?"));
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(tree(t), "answer(lookup)");
    let lookup = t.step("lookup").unwrap();
    assert_eq!(lookup["type"], "user_call");
    assert_eq!(lookup["inputs"], json!({"city": "Paris", "limit": 3}));
    assert!(lookup["endTime"].as_f64().unwrap() >= lookup["startTime"].as_f64().unwrap());
}

#[trace]
fn inner_traced(n: u32) -> u32 {
    n + 1
}

#[test]
fn traced_function_inside_an_entered_span_nests_under_its_step() {
    let (_, traces) = run(|| {
        let span = tracing::info_span!("pipeline", request = "r-1");
        let _e = span.enter();
        inner_traced(1);
        inner_traced(2);
    });
    assert_eq!(traces.len(), 1, "the span is the root of its own trace");
    assert_eq!(tree(&traces[0]), "pipeline(inner_traced, inner_traced)");
    assert_eq!(traces[0].root()["inputs"], json!({"request": "r-1"}));
}

#[test]
fn nesting_holds_across_await_and_worker_threads_through_instrument() {
    let subscriber =
        Registry::default().with(tracing_layer().with_targets([module_path!().to_string()]));
    let dispatch = tracing::Dispatch::new(subscriber);
    let for_workers = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        // The workers use the same subscriber (the test cannot set a global one).
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&for_workers)))
        .build()
        .unwrap();
    let traces = tracing::dispatcher::with_default(&dispatch, || {
        rt.block_on(async {
            let ((), traces) = testing::capture_async(async {
                let root = tracing::info_span!("parent");
                let work = async {
                    for i in 0..3 {
                        tokio::task::yield_now().await;
                        inner_traced(i);
                    }
                    let child = tracing::info_span!("child");
                    tokio::spawn(
                        async {
                            tokio::task::yield_now().await;
                            inner_traced(9);
                        }
                        .instrument(child),
                    )
                    .await
                    .unwrap();
                };
                // Runs on a worker thread, moving between polls.
                tokio::spawn(work.instrument(root)).await.unwrap();
            })
            .await;
            traces
        })
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(
        tree(&traces[0]),
        "parent(inner_traced, inner_traced, inner_traced, child(inner_traced))"
    );
}

#[test]
fn async_span_tree_across_await() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let subscriber =
        Registry::default().with(tracing_layer().with_targets([module_path!().to_string()]));
    let traces = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let ((), traces) = testing::capture_async(async {
                async {
                    tokio::task::yield_now().await;
                    inner_traced(1);
                    async {
                        tokio::task::yield_now().await;
                        inner_traced(2);
                    }
                    .instrument(tracing::info_span!("child"))
                    .await;
                    tokio::task::yield_now().await;
                    inner_traced(3);
                }
                .instrument(tracing::info_span!("parent"))
                .await
            })
            .await;
            traces
        })
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(
        tree(&traces[0]),
        "parent(inner_traced, child(inner_traced), inner_traced)"
    );
}

#[derive(Debug)]
struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such city")
    }
}

#[tracing::instrument(err)]
fn failing(city: &str) -> Result<u32, NotFound> {
    Err(NotFound)
}

#[tracing::instrument(ret)]
fn doubled(n: u32) -> u32 {
    n * 2
}

#[trace]
fn calls_failing() -> u32 {
    let _ = failing("Atlantis");
    doubled(21)
}

#[test]
fn instrument_err_becomes_exceptions_and_ret_the_output() {
    let (_, traces) = run(calls_failing);
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "calls_failing(failing, doubled)");
    let failing = traces[0].step("failing").unwrap();
    assert_eq!(failing["output"], Value::Null);
    assert_eq!(failing["metadata"]["Exceptions"], "no such city");
    assert_eq!(failing["inputs"], json!({"city": "Atlantis"}));
    let doubled = traces[0].step("doubled").unwrap();
    assert_eq!(doubled["output"], 42);
}

#[tracing::instrument(target = "elsewhere", ret)]
fn unselected_doubled(n: u32) -> u32 {
    n * 2
}

#[tracing::instrument(target = "elsewhere", err)]
fn unselected_failing() -> Result<u32, NotFound> {
    Err(NotFound)
}

/// A selected span (no `ret`) whose callees are unselected spans that return a value and
/// fail, and which logs an error it handles.
#[tracing::instrument]
fn recovers() -> u32 {
    let _ = unselected_failing();
    let n = unselected_doubled(21);
    tracing::warn!(error = "transient", "retrying");
    n + 1
}

#[tracing::instrument(err(level = "warn"))]
fn failing_quietly() -> Result<u32, NotFound> {
    Err(NotFound)
}

#[test]
fn instrument_err_at_another_level_still_fails_the_step() {
    let (_, traces) = run(failing_quietly);
    assert_eq!(traces.len(), 1);
    let step = traces[0].root();
    assert_eq!(step["metadata"]["Exceptions"], "no such city", "{step}");
}

#[test]
fn events_of_unselected_spans_and_handled_errors_leave_the_step_alone() {
    let (out, traces) = run(recovers);
    assert_eq!(out, 43);
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "recovers");
    let step = traces[0].root();
    // Not the unselected callee's return value, nor its error, nor the handled warning.
    assert!(step["output"].is_null(), "{step}");
    assert!(step["metadata"].get("Exceptions").is_none(), "{step}");
}

/// The conventions' error attributes on an event follow the rule of `error`: with a
/// message below ERROR they were handled; at ERROR they fail the step.
#[test]
fn error_attributes_logged_with_a_message_below_error_were_handled() {
    let (_, traces) = run(|| {
        {
            let _s = tracing::info_span!("handled").entered();
            tracing::warn!(error.type = "timeout", "retrying");
            tracing::info!(exception.message = "gone", exception.type = "E", "ignored");
            tracing::warn!(error.message = "slow", "retrying");
        }
        let _s = tracing::info_span!("failed").entered();
        tracing::error!(error.type = "timeout", error.message = "gave up", "failed");
    });
    let handled = named(&traces, "handled").root();
    assert!(handled["metadata"].get("Exceptions").is_none(), "{handled}");
    let failed = named(&traces, "failed").root();
    assert_eq!(
        failed["metadata"]["Exceptions"], "timeout: gave up",
        "{failed}"
    );
}

#[test]
fn error_attributes_recorded_on_a_span_become_exceptions() {
    let (_, traces) = run(|| {
        let span = tracing::info_span!("op", "error.type" = Empty, "error.message" = Empty);
        span.record("error.type", "timeout");
        span.record("error.message", "upstream took too long");
    });
    assert_eq!(
        traces[0].root()["metadata"]["Exceptions"],
        "timeout: upstream took too long"
    );
}

/// tracing-opentelemetry's `otel.status_description` is the text of an error status.
#[test]
fn an_error_status_description_is_the_error_text() {
    let (_, traces) = run(|| {
        drop(tracing::info_span!(
            "given",
            "otel.status_code" = "ERROR",
            "otel.status_description" = "rate limited"
        ));
        let span = tracing::info_span!(
            "recorded",
            "otel.status_code" = Empty,
            "otel.status_description" = Empty
        );
        span.record("otel.status_description", "upstream closed");
        span.record("otel.status_code", "ERROR");
    });
    for (name, text) in [("given", "rate limited"), ("recorded", "upstream closed")] {
        let root = named(&traces, name).root();
        assert_eq!(root["metadata"]["Exceptions"], text, "{root}");
        assert!(
            root["metadata"].get("otel.status_description").is_none(),
            "{root}"
        );
    }
}

#[tracing::instrument(ret)]
fn huge_list() -> Vec<u8> {
    vec![0; openlayer_trace::stream::output_max_bytes()]
}

/// Field values a step keeps beyond its inputs (an attribute, a field recorded later, a
/// returned value) are cut to the bound of a step's output, with a marker.
#[test]
fn huge_field_values_are_cut_with_a_marker() {
    let max = openlayer_trace::stream::output_max_bytes();
    let huge = "x".repeat(max + 100);
    let (_, traces) = run(|| {
        let span = tracing::info_span!("op", "server.address" = huge.as_str(), blob = Empty);
        span.record("blob", huge.as_str());
        drop(span);
        huge_list();
    });
    let cut = format!("{}…[truncated 100 bytes]", "x".repeat(max));
    let root = named(&traces, "op").root();
    assert_eq!(root["metadata"]["blob"].as_str(), Some(cut.as_str()));
    assert_eq!(
        root["metadata"]["server.address"].as_str(),
        Some(cut.as_str())
    );
    // A returned value is JSON read as a value: never cut (a cut would leave it text that
    // is no longer JSON); the step's output is bounded where it is kept.
    let output = named(&traces, "huge_list").root()["output"].clone();
    assert_eq!(
        output.as_array().map(Vec::len),
        Some(max),
        "{}",
        &output.to_string()[..40]
    );
}

/// JSON texts read as values (OpenInference's `input.value`, `output.value`) are not cut:
/// a value past the bound stays JSON.
#[test]
fn json_values_past_the_bound_stay_json() {
    let max = openlayer_trace::stream::output_max_bytes();
    let messages = serde_json::to_string(&json!({"question": "q".repeat(max)})).unwrap();
    let answer = serde_json::to_string(&json!({"answer": "a".repeat(max)})).unwrap();
    let (_, traces) = run(|| {
        drop(tracing::info_span!(
            "op",
            "input.value" = messages.as_str(),
            "output.value" = answer.as_str()
        ));
    });
    let root = named(&traces, "op").root();
    assert_eq!(
        root["inputs"]["question"].as_str().map(str::len),
        Some(max),
        "inputs"
    );
    assert_eq!(
        root["output"]["answer"].as_str().map(str::len),
        Some(max),
        "output"
    );
}

#[test]
fn fields_recorded_later_are_metadata() {
    let (_, traces) = run(|| {
        let span = tracing::info_span!("op", user = "u-1", cache_hit = Empty);
        span.record("cache_hit", true);
    });
    let root = traces[0].root();
    assert_eq!(root["inputs"], json!({"user": "u-1"}));
    assert_eq!(root["metadata"]["cache_hit"], true);
}

#[test]
fn unselected_and_excluded_spans_are_not_steps_and_stay_visible_to_other_layers() {
    let counter = Counter::default();
    let subscriber = Registry::default()
        .with(tracing_layer().with_targets(["selected_only"]))
        .with(counter.clone());
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            // Not selected: another target, no GenAI attributes.
            let _a = tracing::info_span!("plain").entered();
            // The HTTP stack and our own target, even with GenAI attributes.
            let _b = tracing::info_span!(target: "reqwest::connect", "connect", "gen_ai.operation.name" = "chat").entered();
            let _c = tracing::info_span!(target: "hyper::client", "conn", "gen_ai.operation.name" = "chat").entered();
            let _d = tracing::info_span!(target: "openlayer_trace::flusher", "flush", "gen_ai.operation.name" = "chat").entered();
            // Selected by target.
            let _e = tracing::info_span!(target: "selected_only::db", "query").entered();
        })
    });
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        5,
        "every span reached the other layer"
    );
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "query");
}

#[test]
fn span_names_select_spans() {
    let subscriber = Registry::default().with(tracing_layer().with_span_names(["rerank"]));
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            let _a = tracing::info_span!(target: "other", "rerank").entered();
            let _b = tracing::info_span!(target: "other", "skipped").entered();
        })
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "rerank");
}

#[tracing::instrument(err)]
fn same_module_failing() -> Result<u32, NotFound> {
    Err(NotFound)
}

#[tracing::instrument(ret)]
fn same_module_doubled(n: u32) -> u32 {
    n * 2
}

/// Selected by name; its callees (same module, so same target) are not selected.
#[tracing::instrument]
fn selected_by_name() -> u32 {
    let _ = same_module_failing();
    same_module_doubled(21) + 1
}

#[tracing::instrument(err)]
fn selected_and_failing() -> Result<u32, NotFound> {
    same_module_doubled(1);
    Err(NotFound)
}

/// With spans picked by name, an unselected callee of the same module has no span at all:
/// its `#[instrument(ret, err)]` events are still not its caller's.
#[test]
fn unselected_callees_of_the_same_target_leave_the_step_alone() {
    let subscriber = Registry::default()
        .with(tracing_layer().with_span_names(["selected_by_name", "selected_and_failing"]));
    let (out, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| (selected_by_name(), selected_and_failing().is_err()))
    });
    assert_eq!(out, (43, true));
    assert_eq!(traces.len(), 2);
    let ok = traces[0].root();
    assert_eq!(ok["name"], "selected_by_name");
    assert!(ok["output"].is_null(), "{ok}");
    assert!(ok["metadata"].get("Exceptions").is_none(), "{ok}");
    // The selected span's own error still fails it; the callee's value is not its output.
    let failed = traces[1].root();
    assert_eq!(failed["metadata"]["Exceptions"], "no such city", "{failed}");
    assert!(failed["output"].is_null(), "{failed}");
}

#[test]
fn genai_chat_span_becomes_a_chat_completion_step() {
    let subscriber = Registry::default().with(tracing_layer());
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            let span = tracing::info_span!(
                target: "some_llm_crate",
                "chat",
                "otel.name" = "chat gpt-4o",
                "gen_ai.operation.name" = "chat",
                "gen_ai.provider.name" = "openai",
                "gen_ai.request.model" = "gpt-4o",
                "gen_ai.request.temperature" = 0.2,
                "gen_ai.request.max_tokens" = 64,
                "gen_ai.response.model" = Empty,
                "gen_ai.usage.prompt_tokens" = Empty,
                "gen_ai.usage.output_tokens" = Empty,
                "gen_ai.response.time_to_first_chunk" = Empty,
                "gen_ai.input.messages" = r#"[{"role":"user","parts":[{"type":"text","content":"Capital of France?"}]}]"#,
                "gen_ai.output.messages" = Empty,
                "server.address" = "127.0.0.1",
            );
            span.record("gen_ai.response.model", "gpt-4o-2024-08-06");
            span.record("gen_ai.usage.prompt_tokens", 12);
            span.record("gen_ai.usage.output_tokens", 3);
            span.record("gen_ai.response.time_to_first_chunk", 0.25);
            span.record(
                "gen_ai.output.messages",
                r#"[{"role":"assistant","parts":[{"type":"text","content":"Paris."}],"finish_reason":"stop"}]"#,
            );
        })
    });
    assert_eq!(traces.len(), 1);
    let s = traces[0].root();
    assert_eq!(s["name"], "chat gpt-4o");
    assert_eq!(s["type"], "chat_completion");
    assert_eq!(s["provider"], "OpenAI");
    assert_eq!(s["model"], "gpt-4o-2024-08-06");
    assert_eq!(s["promptTokens"], 12);
    assert_eq!(s["completionTokens"], 3);
    assert_eq!(s["tokens"], 15);
    assert_eq!(
        s["modelParameters"],
        json!({"temperature": 0.2, "max_tokens": 64})
    );
    assert_eq!(
        s["inputs"],
        json!({"prompt": [{"role": "user", "content": "Capital of France?"}]})
    );
    assert_eq!(s["output"], "Paris.");
    assert_eq!(s["metadata"]["timeToFirstToken"], 250.0);
    assert_eq!(s["metadata"]["server.address"], "127.0.0.1");
}

#[test]
fn genai_embedding_with_deprecated_system_and_openinference_kinds() {
    let subscriber = Registry::default().with(tracing_layer());
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            let root = tracing::info_span!(target: "agent_fw", "agent", "openinference.span.kind" = "AGENT", "input.value" = "plan a trip");
            let _r = root.enter();
            let _e = tracing::info_span!(
                target: "x",
                "embed",
                "gen_ai.operation.name" = "embeddings",
                "gen_ai.system" = "openai",
                "gen_ai.request.model" = "text-embedding-3-small",
                "gen_ai.usage.input_tokens" = 5,
            )
            .entered();
            drop(_e);
            for kind in [
                "RETRIEVER",
                "TOOL",
                "GUARDRAIL",
                "CHAIN",
                "LLM",
                "EMBEDDING",
            ] {
                let _s = tracing::info_span!(target: "agent_fw", "oi", "openinference.span.kind" = kind, "output.value" = Empty).entered();
            }
        })
    });
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_eq!(root["type"], "agent");
    assert_eq!(root["inputs"], json!({"input": "plan a trip"}));
    let kinds: Vec<&str> = root["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "embedding",
            "retriever",
            "tool",
            "guardrail",
            "user_call",
            "chat_completion",
            "embedding"
        ]
    );
    let embed = traces[0].step("embed").unwrap();
    assert_eq!(embed["provider"], "OpenAI");
    assert_eq!(embed["model"], "text-embedding-3-small");
    assert_eq!(embed["promptTokens"], 5);
}

/// A `Debug` that panics.
struct Boom;

impl std::fmt::Debug for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bo")?;
        panic!("boom")
    }
}

/// A `Debug` that writes a little, then fails.
struct Partial;

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("partial")?;
        Err(std::fmt::Error)
    }
}

/// A field whose `Debug` panics never panics into the code that makes the span, records
/// or emits it: the value is what it wrote before it panicked, on every path.
#[test]
fn a_panicking_field_is_recorded_as_written_and_never_panics_into_traced_code() {
    let (_, traces) = run(|| {
        let parent = tracing::info_span!("parent");
        // Under a parent that is not current: its position is entered to open the
        // child's step, and left again.
        let child = tracing::info_span!(parent: &parent, "child", x = ?Boom);
        assert!(openlayer_trace::current_context().is_none());
        drop(child);
        drop(parent);
        // A repeated name, a dotted attribute, recorded later, and in an event.
        drop(tracing::info_span!("repeated", x = ?Boom, x = 2));
        drop(tracing::info_span!("dotted", x = ?Boom, "server.address" = "h"));
        let s = tracing::info_span!("later", y = Empty);
        s.record("y", tracing::field::debug(Boom));
        s.in_scope(|| tracing::info!(e = ?Boom, "an event"));
    });
    let find = |name: &str| named(&traces, name).clone();
    let parent = find("parent");
    assert_eq!(tree(&parent), "parent(child)");
    assert_eq!(parent.step("child").unwrap()["inputs"]["x"], "bo");
    assert_eq!(find("repeated").root()["inputs"]["x"], 2);
    assert_eq!(find("dotted").root()["inputs"]["x"], "bo");
    assert_eq!(find("later").root()["metadata"]["y"], "bo");
}

#[test]
fn a_debug_value_that_fails_is_recorded_as_written_on_every_path() {
    let (_, traces) = run(|| {
        // Plain fields, written straight into the inputs.
        drop(tracing::info_span!("plain", x = ?Partial));
        // A repeated name: from the list of fields.
        drop(tracing::info_span!("repeated", x = ?Partial, x = 2));
        // A dotted attribute: the fields are gathered first.
        drop(tracing::info_span!("dotted", x = ?Partial, "server.address" = "h"));
        // Recorded later, and in an event.
        let s = tracing::info_span!("later", y = Empty);
        s.record("y", tracing::field::debug(Partial));
        s.in_scope(|| tracing::info!(e = ?Partial, "an event"));
    });
    let find = |name: &str| named(&traces, name).root().clone();
    assert_eq!(find("plain")["inputs"]["x"], "partial");
    assert_eq!(find("repeated")["inputs"]["x"], 2);
    assert_eq!(find("dotted")["inputs"]["x"], "partial");
    assert_eq!(find("later")["metadata"]["y"], "partial");
}

#[tracing::instrument]
fn explodes(city: &str) -> usize {
    panic!("no such city: {city}");
}

#[trace]
fn asks_and_recovers() -> usize {
    let r = std::panic::catch_unwind(|| explodes("Atlantis"));
    assert!(r.is_err());
    7
}

/// A panic unwinding through an `#[instrument]` span closes its step as panicked, with
/// the message under `Exceptions`; the traced caller that catches it returns as usual.
#[test]
fn a_panic_through_a_span_is_recorded_on_its_step() {
    let (got, traces) = run(asks_and_recovers);
    assert_eq!(got, 7);
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(tree(t), "asks_and_recovers(explodes)");
    let step = t.step("explodes").unwrap();
    let exceptions = step["metadata"]["Exceptions"].as_str().unwrap_or_default();
    assert!(exceptions.contains("no such city: Atlantis"), "{step}");
    let root = t.root();
    assert!(root["metadata"].get("Exceptions").is_none(), "{root}");
    assert_eq!(root["output"], 7);
}

/// A panic in an instrumented future's poll, caught further out, with the future (and
/// its span) dropped only after the catch: the step is still recorded as panicked.
#[test]
fn a_future_whose_poll_panicked_is_panicked_when_dropped_after_the_catch() {
    let (_, traces) = run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let work = async {
            tokio::task::yield_now().await;
            panic!("no such city: Atlantis");
        };
        let mut fut = Box::pin(work.instrument(tracing::info_span!("work")));
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(fut.as_mut())));
        assert!(r.is_err());
        drop(fut);
    });
    assert_eq!(traces.len(), 1);
    let step = traces[0].root();
    assert_eq!(step["name"], "work");
    let exceptions = step["metadata"]["Exceptions"].as_str().unwrap_or_default();
    assert!(exceptions.contains("no such city: Atlantis"), "{step}");
}

/// A parent span that closes while a panic unwinds through its last child (the registry
/// closes it with the child) was not entered for that panic: it returned; the child
/// panicked.
#[test]
fn a_parent_closed_by_its_childs_panic_is_not_panicked() {
    let (_, traces) = run(|| {
        let parent = tracing::info_span!("parent");
        let child = tracing::info_span!(parent: &parent, "child");
        // Only the child keeps the parent open now.
        drop(parent);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _entered = child.entered();
            panic!("the child failed");
        }));
        assert!(r.is_err());
    });
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(tree(t), "parent(child)");
    let child = t.step("child").unwrap();
    let exceptions = child["metadata"]["Exceptions"].as_str().unwrap_or_default();
    assert!(exceptions.contains("the child failed"), "{child}");
    let root = t.root();
    assert!(root["metadata"].get("Exceptions").is_none(), "{root}");
}

/// A layer that panics while it holds a span's extensions when the field `poison` is
/// recorded: the span's extensions lock is poisoned for every layer after that.
struct Poisoner;

impl<S> Layer<S> for Poisoner
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).unwrap();
        if values.contains(&span.metadata().fields().field("poison").unwrap()) {
            let _held = span.extensions_mut();
            panic!("another layer's bug");
        }
    }
}

/// Once another layer poisoned a span's extensions, the layer's work on that span (a field
/// recorded, an event, a child span, entering and closing it) never panics into the code
/// that makes the spans; the spans that are not poisoned are traced as usual.
#[test]
fn a_span_another_layer_poisoned_never_panics_into_traced_code() {
    let subscriber = Registry::default()
        .with(tracing_layer().with_targets([module_path!().to_string()]))
        .with(Poisoner);
    let mut reached = false;
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            let s = tracing::info_span!("poisoned", poison = Empty, y = Empty);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.record("poison", 1);
            }));
            assert!(r.is_err(), "the other layer panicked");
            s.record("y", 2);
            s.in_scope(|| {
                tracing::info!("an event");
                tracing::error!(error = "failed", "an error");
            });
            drop(tracing::info_span!(parent: &s, "child"));
            drop(s);
            drop(tracing::info_span!("healthy", x = 1));
            reached = true;
        })
    });
    assert!(reached);
    assert_eq!(named(&traces, "healthy").root()["inputs"]["x"], 1);
}

/// `tracing` lets spans exit in any order: a span exited before one entered after it
/// leaves that one current, and once both have exited the thread is back where it was.
#[test]
fn spans_exited_out_of_order_leave_the_position_where_it_was() {
    // Within one trace: a step made after both exited goes under the root, not under a
    // closed span's step.
    let (_, traces) = run(|| {
        let root = tracing::info_span!("root");
        let _root = root.enter();
        let a = tracing::info_span!("a").entered();
        let b = tracing::info_span!("b").entered();
        drop(a);
        inner_traced(1); // still inside `b`
        drop(b);
        inner_traced(2);
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(tree(&traces[0]), "root(a(b(inner_traced)), inner_traced)");

    // Across two traces: the thread does not stay in the first trace once it completed
    // (every later step on it would be refused).
    let (_, traces) = run(|| {
        let second = tracing::info_span!("second");
        let first = tracing::info_span!("first").entered();
        let second = second.entered();
        drop(first);
        drop(second);
        inner_traced(3);
    });
    let mut roots: Vec<String> = traces.iter().map(tree).collect();
    roots.sort();
    assert_eq!(roots, ["first", "inner_traced", "second"], "{traces:?}");
}

/// Two layers in one subscriber (a library's and the application's) that both select a
/// span: one step, and no panic in the code making the span.
#[test]
fn two_layers_selecting_one_span_make_one_step() {
    let subscriber = Registry::default()
        .with(tracing_layer())
        .with(tracing_layer().with_targets([module_path!().to_string()]));
    let (_, traces) = tracing::subscriber::with_default(subscriber, || {
        testing::capture(|| {
            let span = tracing::info_span!("chat", "gen_ai.operation.name" = "chat");
            let _e = span.enter();
            inner_traced(1);
        })
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(tree(&traces[0]), "chat(inner_traced)");
}

#[tracing::instrument(ret)]
fn joined_emoji() -> String {
    "👩\u{200d}💻 \"quoted\"\tand\u{1b}[0m".into()
}

#[tracing::instrument(ret(Display))]
fn displayed_null() -> String {
    "null".into()
}

#[tracing::instrument(ret)]
fn listed() -> Vec<u32> {
    vec![1, 2]
}

#[tracing::instrument(ret)]
fn wide() -> u128 {
    1 << 100
}

/// A returned integer beyond 64 bits keeps its digits, as an input does.
#[test]
fn a_returned_u128_keeps_its_digits() {
    let (_, traces) = run(wide);
    assert_eq!(
        traces[0].root()["output"],
        "1267650600228229401496703205376"
    );
}

/// `#[instrument(ret)]` records the value's `Debug` text: a string comes back as that
/// string whatever Rust escaped in it, and a `Display` text is never taken for `null`.
#[test]
fn returned_strings_keep_their_text() {
    let (_, traces) = run(|| {
        let span = tracing::info_span!("outer");
        let _e = span.enter();
        joined_emoji();
        displayed_null();
        listed();
    });
    let t = &traces[0];
    assert_eq!(
        t.step("joined_emoji").unwrap()["output"],
        "👩\u{200d}💻 \"quoted\"\tand\u{1b}[0m"
    );
    assert_eq!(t.step("displayed_null").unwrap()["output"], "null");
    assert_eq!(t.step("listed").unwrap()["output"], json!([1, 2]));
}

/// Token counts near the integer's end add up without overflowing in the span's close.
#[test]
fn huge_token_counts_do_not_overflow() {
    let (_, traces) = run(|| {
        let _span = tracing::info_span!(
            "chat",
            "gen_ai.operation.name" = "chat",
            "gen_ai.usage.input_tokens" = i64::MAX,
            "gen_ai.usage.output_tokens" = 1
        );
    });
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].root()["tokens"], i64::MAX);
}

/// A span given an explicit parent nests under that parent's step, even while a child of
/// that parent is entered.
#[test]
fn an_explicit_parent_is_the_steps_parent() {
    let (_, traces) = run(|| {
        let p = tracing::info_span!("p");
        let _p = p.enter();
        let c = tracing::info_span!("c");
        let _c = c.enter();
        drop(tracing::info_span!(parent: &p, "explicit"));
        drop(tracing::info_span!("contextual"));
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(tree(&traces[0]), "p(c(contextual), explicit)");
}

#[trace]
fn makes_a_root() {
    drop(tracing::info_span!(parent: None, "root_in_traced"));
    inner_traced(1);
}

/// The traces of `f`, under a subscriber with the default layer.
fn run_default<R>(f: impl FnOnce() -> R) -> Vec<CapturedTrace> {
    let subscriber = Registry::default().with(tracing_layer());
    tracing::subscriber::with_default(subscriber, || testing::capture(f)).1
}

/// Provider names of OpenInference (`llm.provider`, `llm.system`) are the platform's.
#[test]
fn openinference_provider_names_are_the_platforms() {
    let cases = [
        ("azure", "Azure"),
        ("aws", "Bedrock"),
        ("amazon", "Bedrock"),
        ("vertexai", "VertexAI"),
    ];
    let traces = run_default(|| {
        for (given, _) in cases {
            drop(tracing::info_span!(
                target: "oi_fw",
                "llm",
                "otel.name" = given,
                "openinference.span.kind" = "LLM",
                "llm.provider" = given
            ));
        }
    });
    for (given, provider) in cases {
        let root = named(&traces, given).root();
        assert_eq!(root["provider"], provider, "{root}");
    }
}

/// A GenAI `retrieval` operation is a retriever step.
#[test]
fn a_genai_retrieval_is_a_retriever_step() {
    let traces = run_default(|| {
        drop(tracing::info_span!(target: "x", "search", "gen_ai.operation.name" = "retrieval"));
    });
    assert_eq!(traces[0].root()["type"], "retriever");
}

/// An OpenInference tool's `tool.name` and `tool.parameters` are its function name and
/// arguments.
#[test]
fn an_openinference_tools_name_and_parameters_are_its_function_and_arguments() {
    let traces = run_default(|| {
        drop(tracing::info_span!(
            target: "oi_fw",
            "tool",
            "openinference.span.kind" = "TOOL",
            "tool.name" = "get_weather",
            "tool.parameters" = r#"{"city":"Paris"}"#
        ));
    });
    let tool = traces[0].root();
    assert_eq!(tool["type"], "tool", "{tool}");
    assert_eq!(tool["functionName"], "get_weather", "{tool}");
    assert_eq!(tool["arguments"], json!({"city": "Paris"}), "{tool}");
}

/// A span made with `parent: None` goes under the step current on its thread, as `tracing`
/// makes a span whose explicit parent is disabled (not selected) a root alike: that one
/// must stay under the `#[trace]` function it is made in.
#[test]
fn an_explicit_root_or_a_disabled_parent_stays_under_the_current_step() {
    let (_, traces) = run(|| {
        let p = tracing::info_span!("p");
        let _p = p.enter();
        drop(tracing::info_span!(parent: None, "root_in_span"));
        drop(tracing::info_span!("contextual"));
        makes_a_root();
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(
        tree(&traces[0]),
        "p(root_in_span, contextual, makes_a_root(root_in_traced, inner_traced))"
    );

    // A parent no layer selects is disabled, and its child made with `parent:` is a root.
    let subscriber = Registry::default().with(tracing_layer().with_span_names(["chat"]));
    let (_, traces) =
        tracing::subscriber::with_default(subscriber, || testing::capture(under_a_disabled_parent));
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(tree(&traces[0]), "under_a_disabled_parent(chat)");
}

#[trace]
fn under_a_disabled_parent() {
    let request = tracing::info_span!("http");
    assert!(request.is_disabled());
    drop(tracing::info_span!(parent: &request, "chat"));
}

/// `otel.name` and the GenAI operation recorded after the span was created (declared
/// `Empty`, as tracing-opentelemetry allows) rename the step and give it its kind.
#[test]
fn a_name_and_operation_recorded_later_apply() {
    let (_, traces) = run(|| {
        // The provider given at creation, the model after the operation.
        let span = tracing::info_span!(
            "request",
            "otel.name" = Empty,
            "gen_ai.operation.name" = Empty,
            "gen_ai.provider.name" = "openai",
            "gen_ai.request.model" = Empty
        );
        span.record("otel.name", "chat gpt-4o");
        span.record("gen_ai.operation.name", "chat");
        span.record("gen_ai.request.model", "gpt-4o");
    });
    assert_eq!(traces.len(), 1, "{traces:?}");
    let root = traces[0].root();
    assert_eq!(root["name"], "chat gpt-4o", "{root}");
    assert_eq!(root["type"], "chat_completion", "{root}");
    assert_eq!(root["model"], "gpt-4o", "{root}");
    // Set while the step was a plain one: moved to the field when it became a model call.
    assert_eq!(root["provider"], "OpenAI", "{root}");
    assert!(root["metadata"].get("provider").is_none(), "{root}");
}

#[trace]
fn refused_by_memory(blob: String) -> usize {
    // A span made in a step that was not recorded, under the selected span around it:
    // not recorded either (it would fit), rather than put on that span's step.
    drop(tracing::info_span!("inside_refused", small = 1));
    blob.len()
}

/// Run in its own process by `a_span_in_a_refused_step_is_not_recorded` (the limits are
/// global).
#[test]
#[ignore = "run in its own process by a_span_in_a_refused_step_is_not_recorded"]
fn refused_child() {
    let Ok(file) = std::env::var("REFUSED_CHILD_FILE") else {
        return;
    };
    // Open traces may hold 16 KiB: a step with 20 KiB of inputs is refused.
    let config = openlayer_trace::Config::builder()
        .trace_file(&file)
        .queue_max_bytes(64 * 1024)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let subscriber =
        Registry::default().with(tracing_layer().with_targets([module_path!().to_string()]));
    tracing::subscriber::with_default(subscriber, || {
        let outer = tracing::info_span!("outer");
        let _e = outer.enter();
        refused_by_memory("x".repeat(20 * 1024));
    });
    let stats = guard
        .shutdown(std::time::Duration::from_secs(5))
        .unwrap()
        .stats;
    assert_eq!(stats.steps_dropped, 2, "{stats:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(shape(&line["rows"][0]["steps"][0]), "outer", "{line}");
}

/// Runs the ignored test `name` of this binary in its own process, with `env` set, and
/// asserts that it passed.
fn in_own_process(name: &str, env: (&str, &std::ffi::OsStr)) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env(env.0, env.1)
        .env_remove("OPENLAYER_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_span_in_a_refused_step_is_not_recorded() {
    let file = std::env::temp_dir().join(format!(
        "openlayer-interop-refused-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&file);
    in_own_process("refused_child", ("REFUSED_CHILD_FILE", file.as_os_str()));
    let _ = std::fs::remove_file(&file);
}

/// A value whose `Debug` makes a span, under the span current then.
struct Nests;

impl std::fmt::Debug for Nests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _s = tracing::info_span!("nested").entered();
        f.write_str("nests")
    }
}

#[tracing::instrument(ret)]
fn returns_nests() -> Nests {
    Nests
}

/// Run in its own process by `a_value_that_makes_a_span_under_its_own_does_not_deadlock`:
/// the subscriber is the global default, as in an application (while a scoped one
/// dispatches an event, the spans made meanwhile go nowhere).
#[test]
#[ignore = "run in its own process by a_value_that_makes_a_span_under_its_own_does_not_deadlock"]
fn nesting_child() {
    if std::env::var_os("NESTING_CHILD").is_none() {
        return;
    }
    let subscriber =
        Registry::default().with(tracing_layer().with_targets([module_path!().to_string()]));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // On a thread of its own: a deadlock fails the test rather than hang it.
    std::thread::spawn(move || {
        let ((), traces) = testing::capture(|| {
            {
                let span = tracing::info_span!("recorded", value = Empty);
                let _e = span.enter();
                span.record("value", tracing::field::debug(&Nests));
            }
            returns_nests();
            {
                let _s = tracing::info_span!("logged").entered();
                tracing::error!(error = ?Nests, "failed");
            }
        });
        let _ = tx.send(traces);
    });
    let traces = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the thread deadlocked");
    let trees: Vec<String> = traces.iter().map(tree).collect();
    assert_eq!(
        trees,
        [
            "recorded(nested)",
            "returns_nests(nested)",
            "logged(nested)"
        ]
    );
    assert_eq!(traces[0].root()["metadata"]["value"], "nests");
    assert_eq!(traces[1].root()["output"], "nests");
    assert_eq!(traces[2].root()["metadata"]["Exceptions"], "nests");
}

/// A field, return value or error whose `Debug` makes a span under the span it is
/// recorded in is formatted before that span's extensions are locked.
#[test]
fn a_value_that_makes_a_span_under_its_own_does_not_deadlock() {
    in_own_process("nesting_child", ("NESTING_CHILD", "1".as_ref()));
}
