//! Queued row updates (`update_row`) against the loopback server: each is a
//! `PUT /v1/inference-pipelines/{id}/rows?inferenceId=..`, sent after the data-stream
//! request holding its own trace's row when that trace is still pending, retried,
//! spooled and replayed like a row, and counted. Each scenario runs in a child process
//! (the configuration is global); the parent checks its verdict.

use std::path::Path;
use std::time::Duration;

use openlayer_trace::{
    Config, ConfigBuilder, RowUpdateConfig, Stats, current_inference_id, trace,
    update_current_trace, update_row, update_row_in,
};
use openlayer_trace_tests::child::{self, report, results, spool_files, temp_dir, wait_until};
use openlayer_trace_tests::{Action, Behavior, RecordedRequest, TestServer};
use serde_json::{Value, json};

const KEY: &str = "sk-test-updates-0a1b2c3d4e5f6a7b";
const PIPE: &str = "pipe-u";

/// A trace with a custom inference id that updates its own row before it returns.
#[trace]
fn answer_with_feedback(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    let own = current_inference_id().expect("inside a trace");
    update_row(
        &own,
        json!({"groundTruth": "yes"}),
        Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
    );
    id.len()
}

#[trace]
fn answer(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

fn base(url: &str) -> ConfigBuilder {
    Config::builder()
        .api_key(KEY)
        .base_url(url)
        .inference_pipeline_id(PIPE)
        .retry_base_backoff(Duration::from_millis(10))
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(300))
        .linger(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(3))
}

fn assert_settled(s: &Stats) {
    assert_eq!(s.pending, 0, "{s:?}");
    assert_eq!(
        s.sent + s.spooled + s.written + s.sampled_out + s.dropped.total() - s.spool_dropped,
        s.enqueued,
        "every row and update is settled exactly once: {s:?}"
    );
}

fn is_update(r: &RecordedRequest) -> bool {
    r.method == "PUT" && r.path.ends_with("/rows")
}

/// The position of the first acknowledged data-stream request holding `id`.
fn row_at(requests: &[RecordedRequest], id: &str) -> Option<usize> {
    requests.iter().position(|r| {
        r.is_data_stream() && r.outcome.is_success() && r.inference_ids().iter().any(|i| i == id)
    })
}

/// The positions of the row updates of `id`.
fn updates_at(requests: &[RecordedRequest], id: &str) -> Vec<usize> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, r)| is_update(r) && r.query_param("inferenceId") == Some(id))
        .map(|(i, _)| i)
        .collect()
}

/// The rows of the updates of `id` the server acknowledged, in the order it received them.
fn delivered_updates(server: &TestServer, id: &str) -> Vec<Value> {
    let requests = server.requests();
    updates_at(&requests, id)
        .into_iter()
        .map(|i| &requests[i])
        .filter(|r| r.outcome.is_success())
        .map(|r| r.json.as_ref().expect("a JSON body")["row"].clone())
        .collect()
}

/// Every row update of `id` comes after the acknowledged data-stream request of its row.
fn assert_after_row(requests: &[RecordedRequest], id: &str, updates: usize) {
    let row = row_at(requests, id).unwrap_or_else(|| panic!("no row {id}: {requests:#?}"));
    let at = updates_at(requests, id);
    assert_eq!(at.len(), updates, "updates of {id}: {requests:#?}");
    assert!(
        at.iter().all(|u| *u > row),
        "{id}: row at {row}, updates at {at:?}"
    );
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "behind_own_trace" => behind_own_trace(),
        "no_pending_trace" => no_pending_trace(),
        "retried" => retried(),
        "spooled" => spooled(),
        "local" => local(),
        "invalid" => invalid(),
        "after_shutdown" => after_shutdown(),
        "no_such_row" => no_such_row(false),
        "no_such_row_spool" => no_such_row(true),
        "later_update_waits" => later_update_waits(),
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Child scenarios

/// The first update of a row finds no row yet (404) and is spooled: the next update of
/// that row follows it into the spool, so that the platform gets them in order and keeps
/// the last one.
fn later_update_waits() {
    let server = TestServer::start_with(Behavior::fail_first(1, 404));
    let dir = temp_dir("later-update-waits");
    let config = base(&server.url()).spool_dir(&dir).build().unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    update_row("r1", json!({"v": 1}), None);
    update_row("r1", json!({"v": 2}), None);
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
    // Replayed once the server answers (any 2xx starts a replay).
    answer("poke".into());
    assert!(
        wait_until(Duration::from_secs(10), || delivered_updates(&server, "r1")
            .len()
            == 2),
        "{:?}",
        guard.stats()
    );
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_settled(&r.stats);
    let delivered = delivered_updates(&server, "r1");
    assert_eq!(delivered, [json!({"v": 1}), json!({"v": 2})]);
    report(&[("delivered", delivered.len().to_string())]);
}

/// A server that answers 404 to an update of an id it has no row for (a typo, or a row
/// not there yet), 200 to everything else: the update is dropped (or spooled, and
/// dropped when its replay finds no row either), and told; rows keep flowing, as the
/// configuration is not broken.
fn no_such_row(spool: bool) {
    let server = TestServer::start_with(Behavior::always(Action::handler(|r| {
        let missing = r.method == "PUT"
            && r.query
                .iter()
                .any(|(k, v)| k == "inferenceId" && v == "typo");
        if missing {
            openlayer_trace_tests::Response::json(404, &json!({"error": "Row not found"}))
        } else {
            openlayer_trace_tests::Response::ok()
        }
    })));
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = told.clone();
    let mut config = base(&server.url()).on_failure(move |f| {
        sink.lock().unwrap().push((f.rows, f.dropped, f.status));
    });
    let dir = temp_dir("no-such-row");
    if spool {
        config = config.spool_dir(&dir);
    }
    let guard = openlayer_trace::init(config.build().unwrap()).unwrap();
    answer("before-1".into());
    update_row("typo", json!({"score": 1}), None);
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
    // Not a broken configuration: the next rows go straight out.
    answer("after-1".into());
    update_row("after-1", json!({"score": 2}), None);
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
    let ids = server.inference_ids();
    assert!(
        ids.contains("before-1") && ids.contains("after-1"),
        "{ids:?}"
    );
    assert_eq!(updates_at(&server.requests(), "after-1").len(), 1);
    if spool {
        // Kept, then replayed (after the next 2xx) and dropped when it finds no row.
        assert!(
            wait_until(Duration::from_secs(10), || {
                guard.stats().dropped.rejected == 1
            }),
            "{:?}",
            guard.stats()
        );
    }
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_settled(&r.stats);
    assert_eq!(r.stats.dropped.rejected, 1, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 1, "{:?}", r.stats);
    let told = told.lock().unwrap();
    assert_eq!(
        *told,
        [(1, Some(openlayer_trace::DropReason::Rejected), Some(404))],
        "{told:?}"
    );
    report(&[("rejected", r.stats.dropped.rejected.to_string())]);
}

/// The first data-stream request fails once: the updates of its rows, made inside the
/// trace and after it completed, wait for the retry's 2xx.
fn behind_own_trace() {
    let server = TestServer::start_with(Behavior::script([Action::status(500)]));
    let guard = openlayer_trace::init(base(&server.url()).build().unwrap()).unwrap();
    answer_with_feedback("inside-1".into());
    answer("after-1".into());
    update_row(
        "after-1",
        json!({"humanFeedback": "thumbs_up", "user_converted": true}),
        Some(RowUpdateConfig::new().human_feedback_column_name("humanFeedback")),
    );
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert!(r.complete);
    let requests = server.requests();
    assert!(!requests[0].outcome.is_success(), "{requests:#?}");
    assert!(requests[0].is_data_stream(), "{requests:#?}");
    assert_after_row(&requests, "inside-1", 1);
    assert_after_row(&requests, "after-1", 1);

    let put = &requests[updates_at(&requests, "after-1")[0]];
    assert_eq!(put.path, format!("/v1/inference-pipelines/{PIPE}/rows"));
    assert_eq!(put.raw_query, "inferenceId=after-1");
    assert_eq!(
        put.json,
        Some(json!({
            "row": {"humanFeedback": "thumbs_up", "user_converted": true},
            "config": {"humanFeedbackColumnName": "humanFeedback"}
        }))
    );
    let put = &requests[updates_at(&requests, "inside-1")[0]];
    assert_eq!(
        put.json,
        Some(
            json!({"row": {"groundTruth": "yes"}, "config": {"groundTruthColumnName": "groundTruth"}})
        )
    );
    let s = &r.stats;
    assert_eq!(s.enqueued, 4, "{s:?}");
    assert_eq!(s.sent, 4, "{s:?}");
    assert_eq!(s.retried, 1, "{s:?}");
    assert_settled(s);
    report(&[("requests", requests.len().to_string())]);
}

/// No trace with that id is pending: the update is sent at once, config omitted.
fn no_pending_trace() {
    let server = TestServer::start();
    let guard = openlayer_trace::init(base(&server.url()).build().unwrap()).unwrap();
    update_row_in("other-pipe", "order-7", json!({"revenue": 99.5}), None);
    assert!(server.wait_for_blocking(Duration::from_secs(5), |r| r.len() == 1));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let put = &requests[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path, "/v1/inference-pipelines/other-pipe/rows");
    assert_eq!(put.query_param("inferenceId"), Some("order-7"));
    assert_eq!(put.json, Some(json!({"row": {"revenue": 99.5}})));
    assert_eq!(r.stats.sent, 1, "{:?}", r.stats);
    assert_settled(&r.stats);
}

/// A 500, then OK: the update is retried by the transport and sent once.
fn retried() {
    let server = TestServer::start_with(Behavior::fail_first(1, 500));
    let guard = openlayer_trace::init(base(&server.url()).build().unwrap()).unwrap();
    update_row("late-1", json!({"groundTruth": "no"}), None);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests.iter().all(is_update), "{requests:#?}");
    assert_eq!(r.stats.sent, 1, "{:?}", r.stats);
    assert_eq!(r.stats.retried, 1, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 0, "{:?}", r.stats);
    assert_settled(&r.stats);
}

/// The server is down: the trace's row and its update are spooled, then replayed in
/// order once it is up, the update as a PUT.
fn spooled() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("row-updates-spooled");
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_retries(1)
        .max_in_flight(4)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    answer_with_feedback("down-1".into());
    update_row("down-1", json!({"score": 3}), None);
    let r = guard.flush(Duration::from_secs(3)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.spooled, 3, "{:?}", r.stats);
    assert_eq!(r.stats.sent, 0, "{:?}", r.stats);
    let spooled: Vec<Value> = spool_files(&dir)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    assert_eq!(spooled.len(), 3, "{spooled:#?}");
    assert!(spooled[0]["rows"].is_array(), "{spooled:#?}");
    assert_eq!(spooled[1]["inferenceId"], "down-1", "{spooled:#?}");
    assert_eq!(spooled[2]["row"], json!({"score": 3}), "{spooled:#?}");
    server.come_up();
    assert!(wait_until(Duration::from_secs(10), || {
        updates_at(&server.requests(), "down-1").len() == 2
    }));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let requests = server.requests();
    assert_after_row(&requests, "down-1", 2);
    let puts: Vec<&Value> = requests
        .iter()
        .filter(|r| is_update(r))
        .map(|r| r.json.as_ref().unwrap())
        .collect();
    assert_eq!(
        puts,
        [
            &json!({"row": {"groundTruth": "yes"}, "config": {"groundTruthColumnName": "groundTruth"}}),
            &json!({"row": {"score": 3}}),
        ]
    );
    assert_eq!(r.stats.replayed, 3, "{:?}", r.stats);
    assert_settled(&r.stats);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// No API key, configured lazily from the environment: the updates are row-update lines
/// of the local trace file, after their trace's line.
fn local() {
    answer_with_feedback("local-1".into());
    update_row("local-1", json!({"user_converted": true}), None);
    let r = openlayer_trace::flush(Duration::from_secs(5)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.written, 3, "{:?}", r.stats);
    assert_settled(&r.stats);
    let path = std::env::var("OPENLAYER_TRACE_FILE").unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0]["rows"][0]["inferenceId"], "local-1");
    assert_eq!(
        lines[1],
        json!({"pipelineId": null, "inferenceId": "local-1", "row": {"groundTruth": "yes"},
               "config": {"groundTruthColumnName": "groundTruth"}})
    );
    assert_eq!(
        lines[2],
        json!({"pipelineId": null, "inferenceId": "local-1", "row": {"user_converted": true}})
    );
}

/// Bad input is dropped, counted as rejected and logged; nothing is sent.
fn invalid() {
    let logs = openlayer_trace_tests::logs::Capture::install();
    let server = TestServer::start();
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = told.clone();
    let config = base(&server.url())
        .on_failure(move |f| sink.lock().unwrap().push((f.rows, f.dropped)))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    update_row("", json!({"a": 1}), None);
    update_row("id-1", json!([1, 2]), None);
    update_row(
        "id-2",
        json!({"a": 1}),
        Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
    );
    update_row_in(" ", "id-3", json!({"a": 1}), None);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(server.request_count(), 0);
    assert_eq!(r.stats.enqueued, 4, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.rejected, 4, "{:?}", r.stats);
    assert_settled(&r.stats);
    // Told to on_failure too, by the worker (never on the caller's thread).
    let told: u64 = told
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, d)| *d == Some(openlayer_trace::DropReason::Rejected))
        .map(|(n, _)| n)
        .sum();
    assert_eq!(told, 4);
    assert!(
        logs.text().contains("a row update was invalid"),
        "{}",
        logs.text()
    );
}

/// An update made after the shutdown is not sent, and counted as dropped (`shutdown`).
fn after_shutdown() {
    let logs = openlayer_trace_tests::logs::Capture::install();
    let server = TestServer::start();
    let guard = openlayer_trace::init(base(&server.url()).build().unwrap()).unwrap();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.enqueued, 0, "{:?}", r.stats);
    update_row("late-1", json!({"humanFeedback": "thumbs_up"}), None);
    let s = openlayer_trace::stats();
    assert_eq!((s.enqueued, s.dropped.shutdown), (1, 1), "{s:?}");
    assert_settled(&s);
    assert_eq!(server.request_count(), 0);
    assert!(
        logs.text().contains("a row update was made after shutdown"),
        "{}",
        logs.text()
    );
}

// ---------------------------------------------------------------------------------------
// The tests

fn run(scenario: &str, envs: &[(&str, &str)]) {
    let out = child::run(scenario, envs);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn an_update_waits_for_its_own_pending_trace_even_when_the_server_is_slow() {
    run("behind_own_trace", &[]);
}

#[test]
fn an_update_with_no_pending_trace_is_sent_at_once() {
    run("no_pending_trace", &[]);
}

#[test]
fn a_failed_update_is_retried() {
    run("retried", &[]);
}

#[test]
fn with_the_server_down_updates_are_spooled_and_replayed_as_puts() {
    run("spooled", &[]);
}

#[test]
fn without_a_key_updates_are_written_after_their_trace() {
    let dir = temp_dir("row-updates-local");
    let file = dir.join("traces.jsonl");
    run("local", &[("OPENLAYER_TRACE_FILE", path_str(&file))]);
}

#[test]
fn invalid_updates_are_counted_and_logged() {
    run("invalid", &[]);
}

#[test]
fn an_update_after_shutdown_is_counted_as_dropped() {
    run("after_shutdown", &[]);
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

#[test]
fn an_update_of_no_row_is_dropped_without_breaking_delivery() {
    for scenario in ["no_such_row", "no_such_row_spool"] {
        let r = results(&child::run(scenario, &[]));
        assert_eq!(r["rejected"], "1", "{scenario}: {r:?}");
    }
}

#[test]
fn a_later_update_follows_a_spooled_one() {
    let r = results(&child::run("later_update_waits", &[]));
    assert_eq!(r["delivered"], "2", "{r:?}");
}
