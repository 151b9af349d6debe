//! Replay never drops a distinct row silently: two different spooled rows that share an
//! `inferenceId` are both delivered, in this run and after a restart.

use std::time::Duration;

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::TestServer;
use openlayer_trace_tests::child::{self, temp_dir, wait_until};

#[trace]
fn answer(id: &str, turn: u32) -> u32 {
    update_current_trace!(inference_id = id.to_string());
    turn
}

#[test]
fn child() {
    let Some(_) = child::scenario() else {
        return;
    };
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("replay-distinct");
    let config = Config::builder()
        .api_key("sk-test-distinct")
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .retry_base_backoff(Duration::from_millis(10))
        .max_retries(0)
        .linger(Duration::from_millis(1))
        .batch_max_rows(1)
        .spool_dir(&dir)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    // Two turns of one conversation, both with the conversation's id.
    answer("chat-1", 1);
    answer("chat-1", 2);
    answer("chat-2", 1);
    let r = guard.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.spooled, 3, "{:?}", r.stats);
    server.come_up();
    assert!(wait_until(Duration::from_secs(20), || guard
        .stats()
        .replayed
        >= 3));
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    assert_eq!(s.replayed, 3, "{s:?}");
    let counts = server.inference_id_counts();
    assert_eq!(counts.get("chat-1"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("chat-2"), Some(&1), "{counts:?}");
}

#[test]
fn distinct_rows_sharing_an_inference_id_are_all_replayed() {
    child::run("distinct", &[]);
}
