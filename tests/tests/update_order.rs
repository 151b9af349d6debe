//! A row update never overtakes its row: when the row was spooled, its update waits
//! behind it in the spool. Updates of rows that sampling left out are skipped and counted
//! as `sampled_out`.

use std::time::Duration;

use openlayer_trace::{Config, trace, update_current_trace, update_row};
use openlayer_trace_tests::child::{self, temp_dir, wait_until};
use openlayer_trace_tests::{Behavior, TestServer};
use serde_json::json;

#[trace]
fn answer(id: &str) -> u32 {
    update_current_trace!(inference_id = id.to_string());
    1
}

fn base(url: &str) -> openlayer_trace::ConfigBuilder {
    Config::builder()
        .api_key("sk-test-order")
        .base_url(url)
        .inference_pipeline_id("pipe-1")
        .retry_base_backoff(Duration::from_millis(10))
        .max_retries(0)
        .linger(Duration::from_millis(1))
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        // Row updates keep a slot while live batches would take them all (a slow server
        // and a steady stream of traces).
        "busy" => {
            let url = std::env::var("TEST_SERVER_URL").unwrap();
            let config = base(&url)
                .max_in_flight(2)
                .batch_max_rows(1)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            answer("first");
            assert!(
                openlayer_trace::flush(Duration::from_secs(10))
                    .unwrap()
                    .complete
            );
            for i in 0..20 {
                answer(&format!("busy-{i}"));
            }
            update_row("first", json!({"thumbs": "up"}), None);
            let r = guard.shutdown(Duration::from_secs(30)).unwrap();
            assert!(r.complete, "{:?}", r.stats);
            assert_eq!(r.stats.sent, 22, "{:?}", r.stats);
        }
        "spooled" => {
            // The row's request fails (and is spooled); everything after succeeds.
            let server = TestServer::start_with(Behavior::fail_first(1, 500));
            let config = base(&server.url())
                .spool_dir(temp_dir("update-order"))
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            answer("chat-1");
            update_row("chat-1", json!({"thumbs": "up"}), None);
            assert!(wait_until(Duration::from_secs(20), || {
                let r = server.requests();
                r.iter()
                    .any(|r| r.method == "PUT" && r.outcome.is_success())
                    && server.inference_ids().contains("chat-1")
            }));
            guard.shutdown(Duration::from_secs(5)).unwrap();
            let requests = server.requests();
            let row = requests
                .iter()
                .position(|r| r.is_data_stream() && r.outcome.is_success())
                .unwrap();
            let update = requests
                .iter()
                .position(|r| r.method == "PUT" && r.outcome.is_success())
                .unwrap();
            assert!(row < update, "the row arrives before its update");
        }
        "sampled_out" => {
            let server = TestServer::start();
            let guard =
                openlayer_trace::init(base(&server.url()).sample_rate(0.0).build().unwrap())
                    .unwrap();
            answer("chat-2");
            update_row("chat-2", json!({"thumbs": "down"}), None);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.sampled_out, 2, "{s:?}");
            assert_eq!(s.sent, 0, "{s:?}");
            assert_eq!(server.request_count(), 0);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn an_update_waits_behind_its_spooled_row() {
    child::run("spooled", &[]);
}

#[test]
fn updates_of_sampled_out_rows_are_skipped_and_counted() {
    child::run("sampled_out", &[]);
}

/// With two requests in flight at most, a server slow to take rows, and twenty traces
/// queued, an update made after them is sent as soon as a slot frees, not after every
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_update_is_not_held_behind_a_steady_stream_of_batches() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let ok = || ResponseTemplate::new(200).set_body_json(json!({"success": true}));
    Mock::given(method("POST"))
        .respond_with(ok().set_delay(Duration::from_millis(150)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let url = format!("{}/v1", server.uri());
    tokio::task::spawn_blocking(move || child::run("busy", &[("TEST_SERVER_URL", &url)]))
        .await
        .unwrap();
    let reqs = server.received_requests().await.unwrap();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    let put = methods
        .iter()
        .position(|m| *m == "PUT")
        .expect("the update was sent");
    assert_eq!(methods.len(), 22, "{methods:?}");
    assert!(
        put < 8,
        "the update waited behind {put} requests: {methods:?}"
    );
}
