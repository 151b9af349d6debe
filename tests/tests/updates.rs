//! `update_current_trace!` / `update_current_step!`, their map forms, the `log_*`
//! functions, `current_inference_id()`, and manual steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use openlayer_trace::testing;
use openlayer_trace::{
    ChatCompletion, StepKind, add_chat_completion_step, current_inference_id, log_context,
    log_ground_truth, log_output, log_question, step, trace, update_current_step,
    update_current_trace,
};
use serde_json::{Value, json};

#[trace]
fn chat(user: &str, message: &str) -> Option<String> {
    update_current_trace!(
        inference_id = format!("chat-{user}"),
        user_id = user,
        tier = "free"
    );
    update_current_trace!(
        tier = "pro",
        session_id = Some("s-9"),
        ignored = None::<String>
    );
    update_current_step!(model = "gpt-4o", temperature = 0.2);
    update_current_step!(temperature = 0.7);
    let _ = message;
    current_inference_id()
}

#[test]
fn trace_updates_become_the_inference_id_and_row_columns() {
    let (id, traces) = testing::capture(|| chat("u1", "hello"));
    assert_eq!(
        id.as_deref(),
        Some("chat-u1"),
        "current_inference_id returns the custom id"
    );
    let t = &traces[0];
    let row = t.row();
    assert_eq!(row["inferenceId"], "chat-u1");
    assert_eq!(row["user_id"], "u1");
    assert_eq!(row["session_id"], "s-9");
    assert_eq!(row["tier"], "pro", "the last write wins");
    assert!(row.get("ignored").is_none(), "None is ignored");
    assert!(row.get("inference_id").is_none(), "the id is not a column");
    assert_eq!(t.config()["userIdColumnName"], "user_id");
    assert_eq!(t.config()["sessionIdColumnName"], "session_id");
    // Step metadata merges into the step, and the root's becomes row columns.
    assert_eq!(t.root()["metadata"]["model"], "gpt-4o");
    assert_eq!(t.root()["metadata"]["temperature"], 0.7);
    assert_eq!(row["temperature"], 0.7);
    assert_eq!(t.root()["metadata"]["has_guardrails"], false);
    // Config keys in the wire order.
    let c = t.config_json();
    assert!(c.find("numOfTokenColumnName").unwrap() < c.find("userIdColumnName").unwrap());
    assert!(c.find("userIdColumnName").unwrap() < c.find("sessionIdColumnName").unwrap());
}

#[trace]
fn default_id() -> Option<String> {
    current_inference_id()
}

#[test]
fn without_a_custom_id_the_row_id_is_the_root_step_id() {
    let (id, traces) = testing::capture(default_id);
    let t = &traces[0];
    assert_eq!(id.as_deref(), Some(t.inference_id()));
    assert_eq!(t.root()["id"], t.inference_id());
    assert!(uuid_like(t.inference_id()));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4 && s.as_bytes()[14] == b'4'
}

#[trace]
fn rag(question: &str) -> String {
    let mut map = serde_json::Map::new();
    map.insert("inferenceId".into(), json!("rag-1"));
    map.insert("experiment".into(), json!({"arm": "b"}));
    map.insert("skip_me".into(), Value::Null);
    openlayer_trace::update_current_trace(map);
    log_context(&["Paris is the capital of France.", "France is in Europe."]);
    log_question(question);
    log_ground_truth("Paris");
    let draft = retrieve(question);
    log_output("Paris");
    draft
}

#[trace(kind = "retriever")]
fn retrieve(q: &str) -> String {
    let mut map = serde_json::Map::new();
    map.insert("documents".into(), json!(["d1", "d2"]));
    map.insert("index".into(), json!("wiki"));
    map.insert("ground_truth".into(), json!(["d1"]));
    openlayer_trace::update_current_step(map);
    format!("draft for {q}")
}

#[test]
fn context_question_ground_truth_output_and_map_forms() {
    let (_, traces) = testing::capture(|| rag("What is the capital of France?"));
    let t = &traces[0];
    let row = t.row();
    assert_eq!(row["inferenceId"], "rag-1");
    assert_eq!(row["experiment"], json!({"arm": "b"}));
    assert!(row.get("skip_me").is_none());
    assert_eq!(
        row["context"],
        json!(["Paris is the capital of France.", "France is in Europe."])
    );
    assert_eq!(row["_question"], "What is the capital of France?");
    assert_eq!(row["groundTruth"], "Paris");
    assert_eq!(t.root()["groundTruth"], "Paris");
    assert_eq!(
        row["output"], "Paris",
        "log_output replaces the returned value"
    );
    assert_eq!(t.root()["output"], "Paris");
    let c = t.config();
    assert_eq!(c["contextColumnName"], "context");
    assert_eq!(c["questionColumnName"], "_question");
    assert_eq!(c["groundTruthColumnName"], "groundTruth");
    // Step updates: a kind field, ground truth, metadata.
    let r = t.step("retrieve").unwrap();
    assert_eq!(r["type"], "retriever");
    assert_eq!(r["documents"], json!(["d1", "d2"]));
    assert_eq!(r["groundTruth"], json!(["d1"]));
    assert_eq!(r["metadata"]["index"], "wiki");
    assert!(r["metadata"].get("documents").is_none());
}

#[trace]
fn answers_with_a_row_output() -> String {
    update_current_trace!(output = "the row's answer");
    "the step's answer".into()
}

#[trace]
fn output_in_metadata_and_trace() -> String {
    // Root metadata is applied before trace keys: the trace's output wins.
    update_current_step!(metadata = serde_json::json!({"output": "from metadata"}));
    update_current_trace!(output = "from the trace");
    "the step's answer".into()
}

#[trace]
fn fails_with_a_row_output() -> Result<String, String> {
    update_current_trace!(output = "partial");
    Err("the model timed out".into())
}

/// A trace-level `output` is the row's `output` column (as any trace key is a column); the
/// root step in `steps` keeps its own output, null when it failed (as the official SDK sends it).
#[test]
fn a_trace_level_output_is_the_row_column_not_the_root_steps() {
    let (_, traces) = testing::capture(|| {
        answers_with_a_row_output();
        let _ = fails_with_a_row_output();
    });
    let [ok, failed] = &traces[..] else {
        panic!("{traces:#?}")
    };
    assert_eq!(ok.row()["output"], "the row's answer");
    assert_eq!(ok.root()["output"], "the step's answer");
    assert_eq!(failed.row()["output"], "partial");
    assert_eq!(failed.root()["output"], Value::Null);
    assert_eq!(
        failed.root()["metadata"]["Exceptions"],
        "the model timed out"
    );
    let (_, traces) = testing::capture(output_in_metadata_and_trace);
    assert_eq!(traces[0].row()["output"], "from the trace");
}

#[test]
fn nothing_leaks_into_the_next_trace() {
    let (_, traces) = testing::capture(|| {
        rag("q");
        default_id();
    });
    let row = traces[1].row();
    for key in [
        "context",
        "_question",
        "groundTruth",
        "experiment",
        "Exceptions",
    ] {
        assert!(row.get(key).is_none(), "{key} leaked");
    }
    assert!(traces[1].config().get("questionColumnName").is_none());
}

/// Counts `openlayer_trace` warnings.
struct Counter(Arc<AtomicUsize>);
impl tracing::Subscriber for Counter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if e.metadata().target() == "openlayer_trace"
            && *e.metadata().level() == tracing::Level::WARN
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn outside_a_trace_updates_are_no_ops_with_one_rate_limited_warning() {
    let warnings = Arc::new(AtomicUsize::new(0));
    let evaluated = AtomicUsize::new(0);
    tracing::subscriber::with_default(Counter(warnings.clone()), || {
        for _ in 0..100 {
            update_current_trace!(
                inference_id = {
                    evaluated.fetch_add(1, Ordering::SeqCst);
                    "x"
                }
            );
            update_current_step!(a = 1);
            openlayer_trace::update_current_trace(serde_json::Map::new());
            log_output(&1);
            log_context(&["a"]);
            log_question("q");
            log_ground_truth("g");
        }
        assert!(current_inference_id().is_none());
    });
    assert_eq!(
        evaluated.load(Ordering::SeqCst),
        0,
        "values are not evaluated outside a trace"
    );
    let n = warnings.load(Ordering::SeqCst);
    // One warning per API at most, however many calls (rate-limited per minute).
    assert!((1..=7).contains(&n), "{n} warnings");
}

#[trace]
fn answer_with_llm(question: &str) -> String {
    add_chat_completion_step(ChatCompletion {
        provider: Some("OpenAI".into()),
        model: Some("gpt-4o-mini".into()),
        prompt_tokens: Some(20),
        completion_tokens: Some(5),
        cost: Some(0.0015),
        model_parameters: Some(json!({"temperature": 0})),
        inputs: Some(json!({"prompt": [{"role": "user", "content": question}]})),
        output: Some(json!("Paris")),
        latency: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    add_chat_completion_step(ChatCompletion {
        cost: Some(0.0005),
        tokens: Some(7),
        ..ChatCompletion::new("OpenAI", "gpt-4o")
    });
    "Paris".into()
}

#[test]
fn chat_completion_steps_nest_and_sum_cost_and_tokens() {
    let (_, traces) = testing::capture(|| answer_with_llm("capital?"));
    let t = &traces[0];
    let chats = t.root()["steps"].as_array().unwrap();
    assert_eq!(chats.len(), 2);
    let c = &chats[0];
    assert_eq!(c["name"], "Chat Completion");
    assert_eq!(c["type"], "chat_completion");
    assert_eq!(c["provider"], "OpenAI");
    assert_eq!(c["model"], "gpt-4o-mini");
    assert_eq!(c["promptTokens"], 20);
    assert_eq!(c["completionTokens"], 5);
    assert_eq!(c["tokens"], 25);
    assert_eq!(c["cost"], 0.0015);
    assert_eq!(c["modelParameters"], json!({"temperature": 0}));
    assert_eq!(c["rawOutput"], Value::Null);
    assert_eq!(c["output"], "Paris");
    assert_eq!(c["inputs"]["prompt"][0]["content"], "capital?");
    let latency = c["latency"].as_f64().unwrap();
    assert!((299.0..400.0).contains(&latency), "{latency}");
    assert!(c["metadata"].get("has_guardrails").is_none());
    // Sums over the tree.
    assert_eq!(t.row()["tokens"], 32);
    assert!((t.row()["cost"].as_f64().unwrap() - 0.002).abs() < 1e-12);
}

#[test]
fn a_chat_completion_step_outside_a_trace_is_its_own_trace() {
    let (_, traces) = testing::capture(|| {
        add_chat_completion_step(ChatCompletion {
            inputs: Some(json!({"prompt": [{"role": "user", "content": "hi"}]})),
            output: Some(json!("hello")),
            ..ChatCompletion::new("Anthropic", "claude")
        });
    });
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(t.root()["type"], "chat_completion");
    assert_eq!(t.row()["output"], "hello");
    assert_eq!(t.config()["inputVariableNames"], json!(["prompt"]));
}

/// Absurd times and counts (a start centuries away, the longest latency, token counts
/// that overflow their sum) never panic in the caller, and the trace around still ships.
#[test]
fn a_chat_completion_step_with_absurd_values_never_panics() {
    let far = std::time::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100);
    let (_, traces) = testing::capture(|| {
        step("outer").in_scope(|| {
            add_chat_completion_step(ChatCompletion {
                start_time: Some(far),
                latency: Some(Duration::MAX),
                prompt_tokens: Some(u64::MAX),
                completion_tokens: Some(u64::MAX),
                ..ChatCompletion::new("OpenAI", "gpt-4o")
            });
            add_chat_completion_step(ChatCompletion {
                start_time: Some(std::time::UNIX_EPOCH - Duration::from_secs(1 << 40)),
                latency: Some(Duration::from_millis(1)),
                ..ChatCompletion::new("OpenAI", "gpt-4o")
            });
            // Centuries ago, and no latency: it ends now (the longest latency there is).
            add_chat_completion_step(ChatCompletion {
                start_time: Some(std::time::UNIX_EPOCH - Duration::from_secs(1 << 40)),
                ..ChatCompletion::new("OpenAI", "gpt-4o")
            });
        })
    });
    assert_eq!(traces.len(), 1);
    let chats = traces[0].root()["steps"].as_array().unwrap().clone();
    assert_eq!(chats.len(), 3);
    let long = chats
        .iter()
        .map(|c| c["latency"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(long > 1e12, "{chats:?}");
    // In start order: the one that started in the far past first.
    assert_eq!(chats[2]["tokens"], json!(u64::MAX));
    assert!(chats[1]["startTime"].as_f64() <= chats[2]["startTime"].as_f64());
    for c in &chats {
        let (start, end) = (
            c["startTime"].as_f64().unwrap(),
            c["endTime"].as_f64().unwrap(),
        );
        assert!(end >= start, "{c}");
    }
}

/// An empty (or blank) custom id would make a row no update can reach, shared by every
/// trace that sets it: it is ignored, and the row keeps its generated id.
#[test]
fn an_empty_inference_id_is_ignored() {
    let (ids, traces) = testing::capture(|| {
        let blank = step("blank").in_scope(|| {
            update_current_trace!(inference_id = "  ");
            current_inference_id()
        });
        let kept = step("kept").in_scope(|| {
            update_current_trace!(inference_id = "chat-1");
            update_current_trace!(inference_id = "");
            current_inference_id()
        });
        (blank, kept)
    });
    let (blank, kept) = ids;
    let blank = blank.unwrap();
    assert_eq!(blank.len(), 36, "{blank}");
    assert_eq!(traces[0].row()["inferenceId"], blank.as_str());
    assert_eq!(kept.as_deref(), Some("chat-1"));
    assert_eq!(traces[1].row()["inferenceId"], "chat-1");
}

/// As in the official SDKs, `metadata = {..}` merges its entries into the step's metadata.
#[test]
fn a_metadata_object_merges_into_the_step_metadata() {
    let (_, traces) = testing::capture(|| {
        step("merged").in_scope(|| {
            update_current_step!(metadata = json!({"a": 1, "b": "x"}));
            update_current_step!(metadata = json!({"b": "y"}), c = 3);
        })
    });
    let metadata = &traces[0].root()["metadata"];
    assert_eq!(metadata["a"], 1, "{metadata}");
    assert_eq!(metadata["b"], "y", "{metadata}");
    assert_eq!(metadata["c"], 3, "{metadata}");
    assert!(metadata.get("metadata").is_none(), "{metadata}");
}

#[test]
fn step_guards_and_builders_trace_blocks() {
    let (_, traces) = testing::capture(|| {
        let mut outer = step("batch")
            .inputs(&json!({"size": 2}))
            .metadata("source", "cron")
            .enter();
        for i in 0..2 {
            let r = step("item")
                .kind(StepKind::Tool)
                .inputs(&i)
                .in_scope(|| i * 10);
            assert_eq!(r, i * 10);
        }
        outer.output(&"done");
    });
    let t = &traces[0];
    assert_eq!(t.root()["name"], "batch");
    assert_eq!(t.root()["inputs"], json!({"size": 2}));
    assert_eq!(t.root()["metadata"]["source"], "cron");
    assert_eq!(t.row()["output"], "done");
    let items = t.root()["steps"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["type"], "tool");
    assert_eq!(items[1]["inputs"], json!({"input": 1}));
    assert_eq!(items[1]["output"], 10);
    assert_eq!(items[1]["functionName"], Value::Null);
}

#[tokio::test]
async fn async_step_builders() {
    let (_, traces) = testing::capture_async(async {
        step("request")
            .run(async {
                let docs = step("search")
                    .kind(StepKind::Retriever)
                    .run(async { vec!["a", "b"] })
                    .await;
                step("untracked-output")
                    .instrument(async { tokio::task::yield_now().await })
                    .await;
                docs.len()
            })
            .await
    })
    .await;
    let t = &traces[0];
    assert_eq!(t.row()["output"], 2);
    let children = t.root()["steps"].as_array().unwrap();
    assert_eq!(children[0]["name"], "search");
    assert_eq!(children[0]["output"], json!(["a", "b"]));
    assert_eq!(children[1]["name"], "untracked-output");
    assert_eq!(children[1]["output"], Value::Null);
}

#[test]
fn a_chat_completion_with_an_explicit_start_time_and_latency() {
    let started = std::time::SystemTime::now() - Duration::from_secs(2);
    let (_, traces) = testing::capture(|| {
        add_chat_completion_step(ChatCompletion {
            start_time: Some(started),
            latency: Some(Duration::from_millis(1500)),
            ..ChatCompletion::new("OpenAI", "gpt-4o")
        })
    });
    let root = traces[0].root();
    let expected = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = root["startTime"].as_f64().unwrap();
    let end = root["endTime"].as_f64().unwrap();
    assert!((start - expected).abs() < 1e-3, "{start} vs {expected}");
    assert!((end - start - 1.5).abs() < 1e-3, "{}", end - start);
    assert!((root["latency"].as_f64().unwrap() - 1500.0).abs() < 1.0);
}

#[trace]
fn non_finite(x: u8) -> u8 {
    update_current_step!(score = f64::NAN, other = 1, absent = None::<f64>);
    update_current_trace!(ratio = f64::INFINITY, kept = 2, absent_too = None::<u8>);
    x
}

#[test]
fn non_finite_update_values_are_null_and_none_is_ignored() {
    let (_, traces) = testing::capture(|| non_finite(1));
    let t = &traces[0];
    assert_eq!(
        t.root()["metadata"],
        json!({"has_guardrails": false, "score": null, "other": 1})
    );
    let row = t.row().as_object().unwrap();
    assert_eq!(row["score"], Value::Null);
    assert_eq!(row["ratio"], Value::Null);
    assert!(row.contains_key("ratio") && row.contains_key("score"));
    assert!(!row.contains_key("absent") && !row.contains_key("absent_too"));
    assert_eq!(row["kept"], 2);
}
