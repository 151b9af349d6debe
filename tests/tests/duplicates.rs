//! Duplicates caused by retrying a request the server had already processed: the server
//! stores the rows, then its answer is lost (the connection hangs or is reset), and the
//! client sends the rows again. Delivery is at-least-once: these duplicates are measured
//! here, rows the server stored against rows the client sent.

use std::time::Duration;

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results};
use openlayer_trace_tests::{Behavior, Outcome, TestServer};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    let (behavior, first) = match scenario.as_str() {
        "hang" => (
            Behavior::process_then_hang_first(1),
            Outcome::ProcessedThenHung,
        ),
        "reset" => (
            Behavior::process_then_reset_first(1),
            Outcome::ProcessedThenReset,
        ),
        other => panic!("unknown scenario {other}"),
    };
    let server = TestServer::start_with(behavior);
    let config = Config::builder()
        .api_key("sk-test-duplicates")
        .base_url(server.url())
        .inference_pipeline_id("p")
        .retry_base_backoff(Duration::from_millis(10))
        .request_timeout(Duration::from_millis(300))
        .max_in_flight(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("{scenario}-{i}")).collect();
    for id in &ids {
        work(id.clone());
    }
    let s = guard.shutdown(Duration::from_secs(10)).unwrap().stats;
    let requests = server.requests();
    assert_eq!(requests[0].outcome, first);
    // The rows of the request whose answer was lost are stored twice; every other once.
    let repeated = requests[0].inference_ids().len();
    let stored = server.acknowledged_rows();
    report(&[
        ("sent", s.sent.to_string()),
        ("stored", stored.to_string()),
        ("duplicates", (stored - s.sent as usize).to_string()),
    ]);
    assert_eq!(s.sent, 20, "{s:?}");
    assert!(s.retried >= 1, "{s:?}");
    assert_eq!(
        server.inference_ids(),
        ids.iter().cloned().collect(),
        "every row stored"
    );
    assert!(repeated >= 1);
    assert_eq!(stored, 20 + repeated, "{:?}", server.inference_id_counts());
}

fn run(scenario: &str) {
    let out = child::run(scenario, &[]);
    let r = results(&out);
    println!("{scenario}: {r:?}");
    assert_ne!(r.get("duplicates").map(String::as_str), Some("0"));
}

#[test]
fn a_request_processed_then_hung_is_retried_and_its_rows_are_stored_twice() {
    run("hang");
}

#[test]
fn a_request_processed_then_reset_is_retried_and_its_rows_are_stored_twice() {
    run("reset");
}
