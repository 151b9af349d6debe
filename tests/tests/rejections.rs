//! What the server's refusals do to data: a credential or routing error (401, 403, 404,
//! 3xx) never destroys anything, and only 400, 413 and 422 reject rows for good, one bad
//! row at a time (a rejected batch is bisected). Each scenario runs in a child process
//! (the configuration is global); the three-restart test runs three of them on one spool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openlayer_trace::update_current_trace;
use openlayer_trace::{Config, ConfigBuilder, DeliveryFailure, DropReason, trace};
use openlayer_trace_tests::child::{self, report, results, spool_files, temp_dir, wait_until};
use openlayer_trace_tests::logs::Capture;
use openlayer_trace_tests::{Behavior, Response, TestServer};

const KEY: &str = "sk-test-rejections-0a1b2c3d4e5f";
const PIPE: &str = "pipe-1";

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[trace]
fn big(id: String, blob: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    blob.len()
}

#[trace]
fn leaf_step(i: u32) -> u32 {
    i
}

/// A trace of `n` steps: its step tree, which is never cut, is what makes it large.
#[trace]
fn wide(id: String, n: u32) -> u32 {
    update_current_trace!(inference_id = id.clone());
    (0..n).map(leaf_step).sum()
}

fn produce(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            work(id.clone());
            id
        })
        .collect()
}

fn base(url: &str) -> ConfigBuilder {
    Config::builder()
        .api_key(KEY)
        .base_url(url)
        .inference_pipeline_id(PIPE)
        .retry_base_backoff(Duration::from_millis(10))
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(300))
        .max_retries(1)
        .linger(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(3))
}

type Told = Arc<Mutex<Vec<(u64, Option<DropReason>, Option<u16>)>>>;

fn failures() -> (Told, impl Fn(&DeliveryFailure) + Send + Sync + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |f: &DeliveryFailure| {
        s.lock().unwrap().push((f.rows, f.dropped, f.status))
    })
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"))
}

/// The child side: one scenario, in a process started by one of the tests below.
#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "down" => run_down(),
        "refused_credentials" => run_refused_credentials(),
        "healthy" => run_healthy(),
        "bisect" => bisect(),
        "broken_updates" => broken_updates(),
        "one_pipeline_gone" => one_pipeline_gone(),
        "gone_then_unauthorized" => gone_then_unauthorized(),
        "flush_in_callback" => flush_in_callback(),
        "reinit_after_incomplete_shutdown" => reinit_after_incomplete_shutdown(),
        other => panic!("unknown scenario {other}"),
    }
}

/// Restart 1: the server is down; every row is spooled.
fn run_down() {
    let config = base(&env("TEST_SERVER_URL"))
        .spool_dir(env("TEST_SPOOL_DIR"))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("first", 30);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.spooled, ids.len() as u64, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 0, "{:?}", r.stats);
}

/// Restart 2: the server answers 401 to everything. Nothing is dropped: the spooled rows
/// stay, new rows join them, and the error is reported once, loudly.
fn run_refused_credentials() {
    let logs = Capture::install();
    let (seen, on_failure) = failures();
    let config = base(&env("TEST_SERVER_URL"))
        .spool_dir(env("TEST_SPOOL_DIR"))
        .batch_max_rows(5)
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("second", 20);
    // Wait until the refusal was seen (replay at start, or the new rows).
    assert!(wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|f| f.2 == Some(401))
    }));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    report(&[("spooled", s.spooled.to_string())]);
    assert_eq!(s.dropped.total(), 0, "nothing is destroyed: {s:?}");
    assert_eq!(s.sent + s.replayed, 0, "{s:?}");
    assert_eq!(s.spooled, ids.len() as u64, "{s:?}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|f| f.1.is_none()), "{seen:?}");
    let text = logs.text();
    let errors = text
        .lines()
        .filter(|l| l.starts_with("[openlayer_trace] ERROR"))
        .count();
    assert_eq!(errors, 1, "reported once: {text}");
    assert!(text.contains("status=401"), "{text}");
    assert!(!text.contains(KEY), "{text}");
}

/// The server answers 401 to everything: once it has, row updates go to the spool
/// without being sent, as rows do, and nothing is dropped.
fn broken_updates() {
    let (seen, on_failure) = failures();
    let config = base(&env("TEST_SERVER_URL"))
        .spool_dir(env("TEST_SPOOL_DIR"))
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    produce("refused", 1);
    assert!(wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|f| f.2 == Some(401))
    }));
    for i in 0..3 {
        openlayer_trace::update_row(
            &format!("elsewhere-{i}"),
            serde_json::json!({"score": i}),
            None,
        );
    }
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(s.spooled, 4, "the row and the three updates: {s:?}");
}

#[trace(inference_pipeline_id = "gone")]
fn to_a_gone_pipeline(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

/// Starts the pipeline with a spool and `on_failure`, and sends a row to the pipeline
/// `gone` first: returns once its 404 was told.
fn refused_pipeline_first() -> (openlayer_trace::Guard, Told) {
    let (seen, on_failure) = failures();
    let config = base(&env("TEST_SERVER_URL"))
        .spool_dir(env("TEST_SPOOL_DIR"))
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    to_a_gone_pipeline("gone-0".into());
    assert!(wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|f| f.2 == Some(404))
    }));
    (guard, seen)
}

/// One pipeline answers 404 (deleted, or mistyped in one function's
/// `inference_pipeline_id`): its rows wait in the spool, and the other pipeline's rows and
/// updates go on being sent.
fn one_pipeline_gone() {
    let (guard, _) = refused_pipeline_first();
    let ids = produce("kept", 10);
    openlayer_trace::update_row(&ids[0], serde_json::json!({"score": 1}), None);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    report(&[
        ("sent", s.sent.to_string()),
        ("spooled", s.spooled.to_string()),
    ]);
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(s.sent, 11, "the other pipeline's rows and update: {s:?}");
    assert_eq!(s.spooled, 1, "the gone pipeline's row: {s:?}");
}

/// A refused pipeline's row first in the spool, then one 401 (a key's rotation) for the
/// other pipeline: the probe that reads the refused row back is answered 404, which says
/// the key got through, and the other pipeline's rows are sent again (they stayed in the
/// spool for good, as the probe could never be answered 2xx).
fn gone_then_unauthorized() {
    let (guard, seen) = refused_pipeline_first();
    produce("refused-once", 1);
    assert!(wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|f| f.2 == Some(401))
    }));
    // The probe after the 401 reads the gone pipeline's row back, and is answered 404:
    // from then on, the other pipeline's new rows are sent.
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        produce(&format!("kept-{n}"), 1);
        n += 1;
        openlayer_trace::stats().sent > 0
    }));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    report(&[
        ("sent", s.sent.to_string()),
        ("spooled", s.spooled.to_string()),
    ]);
    assert_eq!(s.dropped.total(), 0, "{s:?}");
}

/// `on_failure` runs on the worker: a flush called there is asked for, not waited for
/// (the worker it would wait for is the thread running it), and the shutdown after it
/// completes in time.
fn flush_in_callback() {
    let waited = Arc::new(Mutex::new(Vec::new()));
    let w = waited.clone();
    let config = base(&env("TEST_SERVER_URL"))
        .max_retries(0)
        .on_failure(move |_| {
            let started = std::time::Instant::now();
            // (During the shutdown, the queue is closed: `Err(Shutdown)` at once.)
            let complete = openlayer_trace::flush(Duration::from_secs(3)).is_ok_and(|r| r.complete);
            w.lock().unwrap().push((started.elapsed(), complete));
        })
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    produce("failing", 2);
    // The failures are told (and the callback flushes) before the shutdown.
    assert!(wait_until(Duration::from_secs(10), || !waited
        .lock()
        .unwrap()
        .is_empty()));
    let started = std::time::Instant::now();
    let r = guard.shutdown(Duration::from_secs(10)).unwrap();
    assert!(r.complete, "{:?}", r.stats);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let waited = waited.lock().unwrap();
    assert!(!waited.is_empty(), "on_failure ran");
    for (took, complete) in waited.iter() {
        assert!(*took < Duration::from_millis(500), "{took:?}");
        assert!(!complete);
    }
}

/// A shutdown that comes back incomplete (the server hangs; `on_failure`, which runs on
/// the worker, is slow): an `init` right after it on the same spool waits for the old
/// threads to let the spool go, instead of finding it locked by its own process.
fn reinit_after_incomplete_shutdown() {
    let config = || {
        base(&env("TEST_SERVER_URL"))
            .spool_dir(env("TEST_SPOOL_DIR"))
            .on_failure(|_| std::thread::sleep(Duration::from_millis(500)))
            .build()
            .unwrap()
    };
    let guard = openlayer_trace::init(config()).unwrap();
    produce("pending", 3);
    let r = guard.shutdown(Duration::from_millis(100)).unwrap();
    assert!(!r.complete, "{:?}", r.stats);
    let again = openlayer_trace::init(config());
    assert!(again.is_ok(), "{:?}", again.err());
    drop(again);
}

/// Restart 3: a healthy server; everything spooled by the two earlier runs is replayed.
fn run_healthy() {
    let expect: u64 = env("TEST_EXPECT").parse().unwrap();
    let config = base(&env("TEST_SERVER_URL"))
        .spool_dir(env("TEST_SPOOL_DIR"))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    assert!(wait_until(Duration::from_secs(20), || guard
        .stats()
        .replayed
        >= expect));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.replayed, expect, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 0, "{:?}", r.stats);
}

/// 422 for any request carrying a bad row: batches are bisected until only the bad
/// rows are rejected, live and on replay; a row too large for any request has its longest
/// values cut to fit, and one that cannot be made to fit is rejected before it is sent.
fn bisect() {
    let server = TestServer::start();
    let rejecting = || {
        Behavior::always(openlayer_trace_tests::Action::handler(|r| {
            if r.inference_ids().iter().any(|id| id.contains("bad")) {
                Response::status(422)
            } else {
                Response::ok()
            }
        }))
    };
    server.set_behavior(rejecting());
    let dir = temp_dir("bisect");
    let (seen, on_failure) = failures();
    let config = base(&server.url())
        .spool_dir(&dir)
        .batch_max_rows(16)
        .batch_max_bytes(4096)
        .linger(Duration::from_millis(200))
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();

    // Live: 16 rows in one request, two of them bad.
    let mut good = Vec::new();
    for i in 0..16 {
        let id = if i == 3 || i == 11 {
            format!("live-bad-{i}")
        } else {
            format!("live-{i}")
        };
        work(id.clone());
        if !id.contains("bad") {
            good.push(id);
        }
    }
    // Too large for any request: its input and output are cut until it fits.
    big("huge".into(), "x".repeat(8192));
    // Too large for any request however its values are cut: never sent.
    wide("wide".into(), 200);
    let r = guard.flush(Duration::from_secs(10)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.dropped.rejected, 3, "{:?}", r.stats);
    assert_eq!(r.stats.sent, 15, "{:?}", r.stats);
    let got = server.inference_ids();
    assert!(good.iter().all(|id| got.contains(id)), "{got:?}");
    assert!(got.contains("huge"), "{got:?}");
    assert!(!server.inference_ids_received().contains("wide"));
    let huge = server
        .requests()
        .iter()
        .filter_map(|r| r.json.clone())
        .flat_map(|j| j["rows"].as_array().cloned().unwrap_or_default())
        .find(|row| row["inferenceId"] == "huge")
        .unwrap();
    assert!(huge.to_string().len() < 4096, "{huge}");
    let blob = huge["blob"].as_str().unwrap();
    assert!(blob.starts_with("xxxx"), "{blob}");
    assert!(blob.ends_with(" bytes]"), "the cut is marked: {blob}");
    assert_eq!(huge["output"], 8192, "what was not cut is kept: {huge}");

    // Replay: rows spooled while the server was down, one of them bad.
    server.go_down();
    let mut spooled_good = Vec::new();
    for i in 0..12 {
        let id = if i == 7 {
            "spool-bad-7".to_string()
        } else {
            format!("spool-{i}")
        };
        work(id.clone());
        if !id.contains("bad") {
            spooled_good.push(id);
        }
    }
    let r = guard.flush(Duration::from_secs(10)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.spooled, 12, "{:?}", r.stats);
    server.come_up();
    assert!(wait_until(Duration::from_secs(20), || {
        let s = guard.stats();
        s.replayed + s.spool_dropped >= 12
    }));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    report(&[
        ("sent", s.sent.to_string()),
        ("replayed", s.replayed.to_string()),
        ("rejected", s.dropped.rejected.to_string()),
    ]);
    assert_eq!(s.replayed, 11, "{s:?}");
    assert_eq!(s.spool_dropped, 1, "{s:?}");
    assert_eq!(s.dropped.rejected, 4, "{s:?}");
    let got = server.inference_id_counts();
    assert!(
        spooled_good.iter().all(|id| got.get(id) == Some(&1)),
        "{got:?}"
    );
    let rejected: u64 = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.1 == Some(DropReason::Rejected))
        .map(|f| f.0)
        .sum();
    assert_eq!(rejected, 4);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// Runs one child on the shared spool.
fn restart(scenario: &str, url: &str, dir: &Path, expect: Option<usize>) {
    let dir = dir.to_string_lossy().to_string();
    let expect = expect.map(|n| n.to_string()).unwrap_or_default();
    let envs = [
        ("TEST_SERVER_URL", url),
        ("TEST_SPOOL_DIR", dir.as_str()),
        ("TEST_EXPECT", expect.as_str()),
    ];
    let out = child::run(scenario, &envs);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn a_credential_error_never_destroys_data_across_restarts() {
    let server = TestServer::start();
    let dir = temp_dir("three-restarts");
    // 1. The server is down: every row is spooled.
    server.go_down();
    restart("down", &server.url(), &dir, None);
    assert!(!spool_files(&dir).is_empty());
    // 2. It answers 401 to everything: nothing leaves the spool.
    server.come_up();
    server.set_behavior(Behavior::unauthorized("Invalid API key"));
    restart("refused_credentials", &server.url(), &dir, None);
    assert!(server.request_count() > 0, "the refusal was met");
    assert!(server.inference_ids().is_empty());
    // 3. A healthy server: every row arrives exactly once.
    server.set_behavior(Behavior::ok());
    restart("healthy", &server.url(), &dir, Some(50));
    let counts = server.inference_id_counts();
    let expected: BTreeMap<String, usize> = (0..30)
        .map(|i| format!("first-{i}"))
        .chain((0..20).map(|i| format!("second-{i}")))
        .map(|id| (id, 1))
        .collect();
    assert_eq!(counts, expected);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

#[test]
fn rejected_batches_are_bisected_and_oversize_rows_never_sent() {
    let out = child::run("bisect", &[]);
    eprintln!("bisect: {:?}", results(&out));
}

/// A platform where the pipeline `gone` answers 404 and `PIPE` takes rows and updates.
async fn with_a_gone_pipeline() -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let ok = || ResponseTemplate::new(200).set_body_json(serde_json::json!({"success": true}));
    Mock::given(method("POST"))
        .and(path("/v1/inference-pipelines/gone/data-stream"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(serde_json::json!({"error": "not found"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/inference-pipelines/{PIPE}/data-stream")))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("/v1/inference-pipelines/{PIPE}/rows")))
        .respond_with(ok())
        .mount(&server)
        .await;
    server
}

/// Runs `scenario` in its child process against `server`, off the runtime serving it.
async fn restart_against(server: &wiremock::MockServer, scenario: &'static str) {
    let dir = temp_dir(scenario);
    let url = format!("{}/v1", server.uri());
    tokio::task::spawn_blocking(move || restart(scenario, &url, &dir, None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_answered_404_holds_back_only_its_own_rows() {
    let server = with_a_gone_pipeline().await;
    restart_against(&server, "one_pipeline_gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_read_back_after_a_401_ends_the_broken_configuration() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let server = with_a_gone_pipeline().await;
    // One 401 first (a key's rotation), before the rows are taken.
    Mock::given(method("POST"))
        .and(path(format!("/v1/inference-pipelines/{PIPE}/data-stream")))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(serde_json::json!({"error": "key rotated"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    restart_against(&server, "gone_then_unauthorized").await;
}

#[test]
fn row_updates_wait_in_the_spool_while_the_configuration_is_broken() {
    let server = TestServer::start_with(Behavior::unauthorized("Invalid API key"));
    let dir = temp_dir("broken-updates");
    restart("broken_updates", &server.url(), &dir, None);
    let puts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.raw_query)
        .collect();
    assert!(puts.is_empty(), "updates were sent to be refused: {puts:?}");
    assert!(server.request_count() > 0, "the refusal was met");
}

#[test]
fn a_flush_called_from_on_failure_does_not_wait_for_the_worker() {
    let server = TestServer::start_with(Behavior::always(Response::status(500)));
    let dir = temp_dir("flush-in-callback");
    restart("flush_in_callback", &server.url(), &dir, None);
}

#[test]
fn an_init_right_after_an_incomplete_shutdown_finds_the_spool_free() {
    let server = TestServer::start_with(Behavior::hang());
    let dir = temp_dir("reinit-spool");
    restart(
        "reinit_after_incomplete_shutdown",
        &server.url(),
        &dir,
        None,
    );
}
