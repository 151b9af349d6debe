//! Golden tests of the wire encoding: representative traces, encoded exactly as they would
//! be sent, compared with the data-stream request bodies checked in under `golden/`.
//!
//! Each expected file is `{"config": ..., "rows": [row]}`, pretty-printed, with object keys
//! in wire order (the comparison is on text, so key order counts). Before the comparison,
//! what changes from run to run is normalised: UUIDs (step ids, and the inference id when
//! it is the root's) become `"<id>"` (a custom inference id is kept), and the numbers under
//! `inferenceTimestamp`, `startTime`, `endTime` and `latency` become `0`. The units of those
//! numbers are checked on the raw encoding, before normalising.
//!
//! After a deliberate change of the encoding, regenerate the files with
//! `GOLDEN_OVERWRITE=1 cargo test -p openlayer-trace-tests --test golden`, then review the
//! diff against the official SDK's requests.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{
    ChatCompletion, add_chat_completion_step, enter_user_session, log_context, log_ground_truth,
    log_output, log_question, trace, update_current_step, update_current_trace,
};
use openlayer_trace_tests::ordered_json::Json;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Normalising and comparing

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// A UUID of version 4 and the RFC 4122 variant, as `uuid_v4` strings must be.
fn is_uuid_v4(s: &str) -> bool {
    is_uuid(s) && s.as_bytes()[14] == b'4' && matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b')
}

const TIME_KEYS: [&str; 5] = [
    "inferenceTimestamp",
    "startTime",
    "endTime",
    "latency",
    "timeToFirstToken",
];

/// Replaces ids and times, in place, everywhere in `v`.
fn normalise(v: &mut Json) {
    match v {
        Json::Object(entries) => {
            for (k, value) in entries.iter_mut() {
                match value {
                    Json::String(s) if (k == "id" || k == "inferenceId") && is_uuid(s) => {
                        *s = "<id>".to_string();
                    }
                    Json::String(s) if k == "Exceptions" && s.starts_with("panicked at ") => {
                        // `panicked at FILE:LINE: message`: the line moves with every edit.
                        if let Some(message) = s.splitn(3, ':').nth(2) {
                            *s = format!("panicked at <location>:{message}");
                        }
                    }
                    Json::Number(_) if TIME_KEYS.contains(&k.as_str()) => {
                        *value = Json::Number(0.into());
                    }
                    _ => normalise(value),
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// The data-stream body of one trace, `{"config": ..., "rows": [row]}`, keys in wire order.
fn body(t: &CapturedTrace) -> Json {
    Json::Object(vec![
        ("config".into(), Json::parse(t.config_json())),
        ("rows".into(), Json::Array(vec![Json::parse(t.row_json())])),
    ])
}

fn normalised_body(t: &CapturedTrace) -> Json {
    let mut b = body(t);
    normalise(&mut b);
    b
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// Compares the normalised body of `t` with `golden/<name>`; with `GOLDEN_OVERWRITE=1`,
/// writes it instead.
fn assert_golden(name: &str, t: &CapturedTrace) {
    let actual = normalised_body(t).pretty();
    let path = golden_path(name);
    if std::env::var_os("GOLDEN_OVERWRITE").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with GOLDEN_OVERWRITE=1 to create it",
            path.display()
        )
    });
    // Compared as JSON values, so that the order of an object's keys does not matter: a
    // user's map is written in its own order, which depends on whether some crate in the
    // build turns on serde_json's `preserve_order`.
    let same = match (
        serde_json::from_str::<serde_json::Value>(&expected),
        serde_json::from_str::<serde_json::Value>(&actual),
    ) {
        (Ok(e), Ok(a)) => e == a,
        _ => expected == actual,
    };
    if !same {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the encoding, first at line {}:\n  expected: {}\n  actual:   {}\n\
             full encoding:\n{actual}\n(run with GOLDEN_OVERWRITE=1 to accept it)",
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

fn one<R>(f: impl FnOnce() -> R) -> (R, CapturedTrace) {
    let (out, mut traces) = testing::capture(f);
    assert_eq!(traces.len(), 1, "expected exactly one trace");
    (out, traces.remove(0))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn as_f64(v: Option<&Json>) -> f64 {
    match v {
        Some(Json::Number(n)) => n.as_f64().unwrap(),
        other => panic!("not a number: {other:?}"),
    }
}

/// Every step of a row, depth first.
fn all_steps(row: &Json) -> Vec<&Json> {
    fn walk<'a>(steps: &'a Json, out: &mut Vec<&'a Json>) {
        if let Json::Array(items) = steps {
            for s in items {
                out.push(s);
                walk(s.get("steps").unwrap(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(row.get("steps").unwrap(), &mut out);
    out
}

/// What holds for every encoded trace, checked on the raw encoding: ids are UUID v4 and
/// unique, times are Unix seconds inside the test's run, latencies are milliseconds that
/// match the step's start and end, and the row's time and latency are the root's.
fn check_ids_and_units(t: &CapturedTrace, started: f64, ended: f64) {
    let row = Json::parse(t.row_json());
    let steps = all_steps(&row);
    let mut ids: Vec<&str> = Vec::new();
    for s in &steps {
        let Some(Json::String(id)) = s.get("id") else {
            panic!("step without id: {s}")
        };
        assert!(is_uuid_v4(id), "not a UUID v4: {id}");
        assert!(!ids.contains(&id.as_str()), "duplicate step id {id}");
        ids.push(id);
        let start = as_f64(s.get("startTime"));
        let end = as_f64(s.get("endTime"));
        let latency = as_f64(s.get("latency"));
        // Manual steps may be dated earlier than the trace (a chat completion that took
        // `latency` before being recorded); allow some seconds of slack.
        assert!(
            start > started - 5.0 && end < ended + 0.5,
            "times are not Unix seconds of this run: {start}..{end} vs {started}..{ended}"
        );
        assert!(end >= start, "{s}");
        let span_ms = (end - start) * 1000.0;
        assert!(
            (latency - span_ms).abs() < 0.05,
            "latency {latency} is not (endTime - startTime) in ms ({span_ms})"
        );
    }
    let root = steps[0];
    assert_eq!(
        as_f64(row.get("inferenceTimestamp")),
        as_f64(root.get("startTime"))
    );
    if let Some(Json::Number(_)) = row.get("latency") {
        assert_eq!(as_f64(row.get("latency")), as_f64(root.get("latency")));
    }
}

/// Runs `f` and checks the units of the one trace it produced.
fn traced<R>(f: impl FnOnce() -> R) -> (R, CapturedTrace) {
    let started = unix_now();
    let (out, t) = one(f);
    check_ids_and_units(&t, started, unix_now());
    (out, t)
}

// ---------------------------------------------------------------------------------------
// (a) The three-level trace of the official SDK's sample

mod nested {
    use super::*;

    #[trace]
    pub fn embed_query(user_query: &str) -> Vec<f64> {
        let _ = user_query;
        vec![0.1, 0.2, 0.3]
    }

    #[trace]
    pub fn retrieve_context(user_query: &str) -> Vec<String> {
        let _ = embed_query(user_query);
        vec![
            "Paris is the capital of France.".to_string(),
            "France is in Europe.".to_string(),
        ]
    }

    #[trace]
    pub fn build_prompt(user_query: &str, context: &[String]) -> String {
        format!("Context: {}\nQuestion: {user_query}", context.join(" "))
    }

    #[trace]
    pub fn generate_answer(user_query: &str, context: &[String]) -> String {
        let prompt = build_prompt(user_query, context);
        format!("Paris (prompt had {} chars)", prompt.len())
    }

    #[trace]
    pub fn main(user_query: &str) -> String {
        let context = retrieve_context(user_query);
        generate_answer(user_query, &context)
    }
}

/// The official SDK's request for the same trace (as observed).
const OFFICIAL_NESTED: &str = include_str!("../golden/official/nested_trace.json");

#[test]
fn nested_trace_matches_the_official_sample() {
    let (out, t) = traced(|| nested::main("What is the capital of France?"));
    assert_eq!(out, "Paris (prompt had 102 chars)");
    assert_eq!(t.inference_id(), t.root()["id"].as_str().unwrap());
    assert_golden("nested_trace.json", &t);

    let mut official = Json::parse(OFFICIAL_NESTED)
        .get("body")
        .expect("the sample's body")
        .clone();
    normalise(&mut official);
    assert_eq!(
        normalised_body(&t).pretty(),
        official.pretty(),
        "the encoding differs from the official SDK's request"
    );
}

// ---------------------------------------------------------------------------------------
// (b) A RAG trace: context, question, custom id, user and session, ground truth, a manual
//     chat completion and a traced embedding, with cost and tokens summed over the tree

mod rag {
    use super::*;

    pub const DOCS: [&str; 2] = ["Paris is the capital of France.", "France is in Europe."];

    #[trace(kind = "embedding")]
    pub fn embed(text: &str) -> Vec<f64> {
        let _ = text;
        update_current_step!(
            provider = "OpenAI",
            model = "text-embedding-3-small",
            prompt_tokens = 8,
            cost = 0.000_01,
            embedding_dimensions = 3,
            embedding_count = 1,
        );
        vec![0.25, -0.5, 1.0]
    }

    #[trace(kind = "retriever")]
    pub fn retrieve(question: &str, top_k: usize) -> Vec<String> {
        let _ = embed(question);
        let docs: Vec<String> = DOCS.iter().take(top_k).map(|d| d.to_string()).collect();
        update_current_step!(documents = docs);
        log_context(&docs);
        docs
    }

    #[trace]
    pub fn answer(question: &str, session: &str) -> String {
        update_current_trace!(
            inference_id = "rag-req-42",
            user_id = "user-7",
            session_id = session,
            channel = "web",
            experiment = json!({"name": "prompt-v3", "arm": "b"}),
        );
        update_current_step!(prompt_version = "v3");
        log_question(question);
        let docs = retrieve(question, 2);
        let prompt = format!("Context: {}\nQuestion: {question}", docs.join(" "));
        // The model is called after the retrieval: its step starts there, and lasted
        // 420 ms (children are listed in start order).
        add_chat_completion_step(ChatCompletion {
            provider: Some("OpenAI".into()),
            model: Some("gpt-4o-mini".into()),
            prompt_tokens: Some(50),
            completion_tokens: Some(2),
            cost: Some(0.000_2),
            model_parameters: Some(json!({"temperature": 0.0, "max_tokens": 64})),
            inputs: Some(json!({"prompt": [{"role": "user", "content": prompt}]})),
            output: Some(json!("Paris")),
            latency: Some(Duration::from_millis(420)),
            // (A little ahead: a wall-clock start is placed through an estimate of the
            // wall clock's offset, which may be a few µs off the retrieval's.)
            start_time: Some(SystemTime::now() + Duration::from_millis(10)),
            ..Default::default()
        });
        log_ground_truth("Paris");
        "Paris".to_string()
    }
}

#[test]
fn rag_trace() {
    let (out, t) = traced(|| rag::answer("What is the capital of France?", "session-1"));
    assert_eq!(out, "Paris");
    assert_golden("rag_trace.json", &t);

    // The custom id is the row's, and is kept by the normaliser.
    assert_eq!(t.inference_id(), "rag-req-42");
    assert_eq!(t.row()["inferenceId"], "rag-req-42");

    // Cost and tokens are summed over the tree: embedding + chat completion.
    let row = Json::parse(t.row_json());
    let cost = as_f64(row.get("cost"));
    assert!((cost - (0.000_01 + 0.000_2)).abs() < 1e-12, "cost {cost}");
    assert_eq!(t.row()["tokens"], 8 + 50 + 2);
    let chat = t.step("Chat Completion").expect("the chat completion step");
    assert_eq!(chat["tokens"], 52);
    assert_eq!(chat["type"], "chat_completion");
    // Its latency is the one given, in milliseconds.
    assert!((chat["latency"].as_f64().unwrap() - 420.0).abs() < 1e-6);
    let embedding = t.step("embed").expect("the embedding step");
    assert_eq!(embedding["tokens"], 8);

    // The config keys, in the official SDK's order.
    assert_eq!(
        Json::parse(t.config_json()).keys(),
        [
            "outputColumnName",
            "inputVariableNames",
            "latencyColumnName",
            "costColumnName",
            "timestampColumnName",
            "inferenceIdColumnName",
            "numOfTokenColumnName",
            "userIdColumnName",
            "sessionIdColumnName",
            "groundTruthColumnName",
            "contextColumnName",
            "questionColumnName",
        ]
    );
    assert_eq!(
        row.keys(),
        [
            "inferenceTimestamp",
            "inferenceId",
            "output",
            "latency",
            "cost",
            "tokens",
            "steps",
            "has_guardrails",
            "prompt_version",
            // `log_question` also set the root step's metadata `_question` (as the
            // official SDK does), which puts the column here: a later key replaces an
            // earlier one in place.
            "_question",
            "user_id",
            "session_id",
            "channel",
            "experiment",
            "groundTruth",
            "question",
            "session",
            "context",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// (c) Errors: a root that returns `Err`, and a child that panics

mod errors {
    use super::*;

    #[derive(Debug)]
    pub struct QuotaExceeded {
        pub used: u32,
    }

    impl std::fmt::Display for QuotaExceeded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "quota exceeded after {} requests", self.used)
        }
    }

    #[trace]
    pub fn count_requests(user: &str) -> u32 {
        user.len() as u32 * 10
    }

    #[trace]
    pub fn handle(user: &str) -> Result<String, QuotaExceeded> {
        let used = count_requests(user);
        if used > 20 {
            return Err(QuotaExceeded { used });
        }
        Ok(format!("hello {user}"))
    }

    #[trace]
    pub fn flaky(attempt: u32) -> u32 {
        if attempt == 0 {
            panic!("model returned an empty choice list");
        }
        attempt
    }

    #[trace]
    pub fn with_fallback(attempt: u32) -> String {
        match std::panic::catch_unwind(|| flaky(attempt)) {
            Ok(n) => format!("answer {n}"),
            Err(_) => "fallback answer".to_string(),
        }
    }
}

#[test]
fn root_returning_err() {
    let (out, t) = traced(|| errors::handle("alice"));
    assert_eq!(out.unwrap_err().used, 50);
    assert_golden("error_root.json", &t);
    assert_eq!(t.row()["output"], serde_json::Value::Null);
    assert_eq!(t.row()["Exceptions"], "quota exceeded after 50 requests");
}

#[test]
fn panicking_child() {
    let (out, t) = traced(|| errors::with_fallback(0));
    assert_eq!(out, "fallback answer");
    assert_golden("panicking_child.json", &t);
    let child = t.step("flaky").unwrap();
    assert_eq!(child["output"], serde_json::Value::Null);
    let message = child["metadata"]["Exceptions"].as_str().unwrap();
    assert!(
        message.starts_with("panicked at tests/tests/golden.rs:")
            && message.ends_with(": model returned an empty choice list"),
        "{message}"
    );
    // The root itself did not fail.
    assert!(t.row().get("Exceptions").is_none());
}

// ---------------------------------------------------------------------------------------
// (d) NaN and infinities become `null`

mod non_finite {
    use super::*;

    #[derive(serde::Serialize)]
    pub struct Scores {
        pub relevance: f64,
        pub history: Vec<f64>,
    }

    #[trace]
    pub fn score(threshold: f64, weights: Vec<f64>) -> Scores {
        update_current_step!(
            calibration = [0.5, f64::NAN],
            bounds = json!({"low": f64::NEG_INFINITY, "high": 1.0}),
        );
        update_current_trace!(ratios = vec![f64::INFINITY, 2.0]);
        let _ = (threshold, weights);
        Scores {
            relevance: f64::NAN,
            history: vec![f64::INFINITY, 0.75, f64::NEG_INFINITY],
        }
    }
}

#[test]
fn non_finite_numbers_are_null() {
    let (_, t) =
        traced(|| non_finite::score(f64::NAN, vec![1.0, f64::INFINITY, f64::NEG_INFINITY]));
    assert_golden("non_finite_numbers.json", &t);
    assert!(!t.row_json().contains("NaN") && !t.row_json().contains("Infinity"));
    assert_eq!(t.row()["threshold"], serde_json::Value::Null);
    assert_eq!(t.row()["weights"], json!([1.0, null, null]));
    assert_eq!(
        t.row()["output"],
        json!({"relevance": null, "history": [null, 0.75, null]})
    );
    assert_eq!(t.row()["calibration"], json!([0.5, null]));
    assert_eq!(t.row()["bounds"], json!({"low": null, "high": 1.0}));
    assert_eq!(t.row()["ratios"], json!([null, 2.0]));
}

// ---------------------------------------------------------------------------------------
// (e) A root input named like a row column replaces that column, in place

mod collision {
    use super::*;

    #[trace]
    pub fn review(output: &str, latency: &str, draft_count: u32) -> String {
        format!("{output} ({latency}, {draft_count} drafts)")
    }
}

#[test]
fn input_named_like_a_row_column() {
    let (out, t) = traced(|| collision::review("first draft", "slow", 2));
    assert_eq!(out, "first draft (slow, 2 drafts)");
    assert_golden("input_named_like_column.json", &t);
    let row = Json::parse(t.row_json());
    // Each key once, the replaced ones where the columns were.
    assert_eq!(
        row.keys(),
        [
            "inferenceTimestamp",
            "inferenceId",
            "output",
            "latency",
            "cost",
            "tokens",
            "steps",
            "has_guardrails",
            "draft_count",
        ]
    );
    assert_eq!(t.row()["output"], "first draft");
    assert_eq!(t.row()["latency"], "slow");
    // The root step keeps its own output and latency.
    assert_eq!(t.root()["output"], "first draft (slow, 2 drafts)");
    assert!(t.root()["latency"].is_f64());
    assert_eq!(
        t.config()["inputVariableNames"],
        json!(["output", "latency", "draft_count"])
    );
}

// ---------------------------------------------------------------------------------------
// (f) The official SDK's log helpers: on the current step

mod helpers {
    use super::*;

    #[trace(kind = "retriever")]
    pub fn retrieve(question: &str) -> Vec<String> {
        let docs = vec![format!("Doc about: {question}")];
        log_context(&docs);
        docs
    }

    #[trace]
    pub fn generate(prompt: &str) -> (String, usize) {
        // The step records this instead of the tuple; the caller still gets the tuple.
        log_output(&"Paris");
        ("Paris".to_string(), prompt.len())
    }

    #[trace]
    pub fn answer(question: &str) -> String {
        log_question(question);
        let docs = retrieve(question);
        let (text, _) = generate(&format!("{}\n{question}", docs.join(" ")));
        log_output(&format!("{text}."));
        text
    }
}

#[test]
fn log_helpers_on_the_current_step() {
    let (out, t) = traced(|| helpers::answer("Capital of France?"));
    // The functions still return their own values.
    assert_eq!(out, "Paris");
    assert_golden("log_helpers.json", &t);
    assert_eq!(t.row()["output"], "Paris.");
    assert_eq!(t.step("generate").unwrap()["output"], "Paris");
    assert_eq!(
        t.step("retrieve").unwrap()["metadata"]["context"],
        json!(["Doc about: Capital of France?"])
    );
    assert_eq!(t.root()["metadata"]["_question"], "Capital of France?");
    assert_eq!(t.row()["_question"], "Capital of France?");
    assert_eq!(t.row()["context"], json!(["Doc about: Capital of France?"]));
}

// ---------------------------------------------------------------------------------------
// (g) `#[trace(context = .., question = .., promote(..))]` and the user and session scope

mod options {
    use super::*;

    #[derive(serde::Serialize)]
    pub struct Answer {
        pub text: String,
        pub score: f64,
        pub model: Option<String>,
    }

    #[trace(kind = "retriever", context = docs, promote(top_k = "retriever_top_k"))]
    pub fn rerank(docs: Vec<String>, top_k: usize) -> Vec<String> {
        docs.into_iter().take(top_k).collect()
    }

    #[trace(question = question, promote(question = "user_query", score, model))]
    pub fn answer(question: &str, top_k: usize) -> Answer {
        let docs = rerank(
            vec!["Paris is in France.".into(), "Lyon too.".into()],
            top_k,
        );
        Answer {
            text: format!("Paris ({} documents)", docs.len()),
            score: 0.92,
            model: None,
        }
    }
}

#[test]
fn row_options_and_user_session() {
    let (out, t) = traced(|| {
        let _scope = enter_user_session("user-7", "session-3");
        options::answer("Capital of France?", 1)
    });
    assert_eq!(out.text, "Paris (1 documents)");
    assert_golden("row_options.json", &t);
    let row = t.row();
    assert_eq!(row["user_query"], "Capital of France?");
    assert_eq!(row["score"], 0.92);
    // A `None` field is not promoted.
    assert!(row.get("model").is_none());
    assert_eq!(row["retriever_top_k"], 1);
    assert_eq!(row["_question"], "Capital of France?");
    assert_eq!(row["context"], json!(["Paris is in France.", "Lyon too."]));
    assert_eq!(row["user_id"], "user-7");
    assert_eq!(row["session_id"], "session-3");
    assert_eq!(t.config()["userIdColumnName"], "user_id");
    assert_eq!(t.config()["sessionIdColumnName"], "session_id");
}

// ---------------------------------------------------------------------------------------
// (h) Streams: one consumed with an error item, one abandoned

mod streams {
    use super::*;

    #[derive(Debug)]
    pub struct Cut;

    impl std::fmt::Display for Cut {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream cut the connection")
        }
    }

    #[trace(kind = "chat_completion")]
    pub fn tokens(prompt: &str) -> impl Iterator<Item = Result<String, Cut>> {
        let _ = prompt;
        vec![Ok("Par".to_string()), Err(Cut), Ok("is".to_string())].into_iter()
    }

    #[trace]
    pub fn handler(question: &str) -> String {
        tokens(question).filter_map(Result::ok).collect()
    }

    #[trace]
    pub fn words(n: usize) -> impl Iterator<Item = &'static str> {
        ["one", "two", "three"].into_iter().take(n)
    }
}

#[test]
fn streams_consumed_and_abandoned() {
    let (out, t) = traced(|| streams::handler("Capital of France?"));
    assert_eq!(out, "Paris");
    assert_golden("stream_with_error.json", &t);
    // Abandoned after one item: the step closes with what it produced, marked cancelled.
    let (first, abandoned) = traced(|| streams::words(3).next());
    assert_eq!(first, Some("one"));
    assert_golden("stream_abandoned.json", &abandoned);
}

// ---------------------------------------------------------------------------------------
// The normaliser itself

#[test]
fn normaliser_replaces_only_ids_and_times() {
    let mut v = Json::parse(
        r#"{"inferenceId":"8dbd1533-e7c9-48f3-96a5-c5344a780122","latency":1.5,
            "steps":[{"id":"54b9af0b-564b-415e-9693-5fadc240d5b7","startTime":1.0,
            "endTime":2.0,"latency":1000.0,"inputs":{"id":"user-1","latency":"slow"}}],
            "other":"8dbd1533-e7c9-48f3-96a5-c5344a780122","cost":0.5}"#,
    );
    normalise(&mut v);
    assert_eq!(
        v.to_string(),
        r#"{"inferenceId":"<id>","latency":0,"steps":[{"id":"<id>","startTime":0,"endTime":0,"latency":0,"inputs":{"id":"user-1","latency":"slow"}}],"other":"8dbd1533-e7c9-48f3-96a5-c5344a780122","cost":0.5}"#
    );
    let mut custom = Json::parse(r#"{"inferenceId":"rag-req-42"}"#);
    normalise(&mut custom);
    assert_eq!(custom.to_string(), r#"{"inferenceId":"rag-req-42"}"#);
}
