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

/// The spool for `dir`, delivering to `server`.
fn config(server: &TestServer, dir: &std::path::Path) -> Config {
    Config::builder()
        .api_key("sk-test-distinct")
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .retry_base_backoff(Duration::from_millis(10))
        .max_retries(0)
        .linger(Duration::from_millis(1))
        .batch_max_rows(1)
        .spool_dir(dir)
        .build()
        .unwrap()
}

/// Two turns of one conversation, both with the conversation's id, and another one.
fn produce() {
    answer("chat-1", 1);
    answer("chat-1", 2);
    answer("chat-2", 1);
}

/// Both turns of `chat-1` and the one of `chat-2` reached `server`, once each.
fn assert_all_delivered(server: &TestServer) {
    let counts = server.inference_id_counts();
    assert_eq!(counts.get("chat-1"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("chat-2"), Some(&1), "{counts:?}");
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "distinct" => in_one_run(),
        "spool" => spool_and_stop(),
        "restart" => restart(),
        other => panic!("unknown scenario {other}"),
    }
}

/// Spooled while the server is down, replayed when it comes back, in one process.
fn in_one_run() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("replay-distinct");
    let guard = openlayer_trace::init(config(&server, &dir)).unwrap();
    produce();
    let r = guard.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.spooled, 3, "{:?}", r.stats);
    server.come_up();
    assert!(wait_until(Duration::from_secs(20), || guard
        .stats()
        .replayed
        >= 3));
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    assert_eq!(s.replayed, 3, "{s:?}");
    assert_all_delivered(&server);
}

/// Spooled while the server is down, and the process stops with them still spooled.
fn spool_and_stop() {
    let server = TestServer::start();
    server.go_down();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let guard = openlayer_trace::init(config(&server, dir.as_ref())).unwrap();
    produce();
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    assert_eq!((s.spooled, s.sent, s.replayed), (3, 0, 0), "{s:?}");
}

/// A new process on the same spool replays all three rows.
fn restart() {
    let server = TestServer::start();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let guard = openlayer_trace::init(config(&server, dir.as_ref())).unwrap();
    assert!(wait_until(Duration::from_secs(20), || guard
        .stats()
        .replayed
        >= 3));
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    assert_eq!((s.replayed, s.enqueued), (3, 0), "{s:?}");
    assert_all_delivered(&server);
}

#[test]
fn distinct_rows_sharing_an_inference_id_are_all_replayed() {
    child::run("distinct", &[]);
}

#[test]
fn distinct_rows_sharing_an_inference_id_are_all_replayed_after_a_restart() {
    let dir = temp_dir("replay-distinct-restart");
    let dir = dir.to_str().unwrap();
    child::run("spool", &[("TEST_SPOOL_DIR", dir)]);
    child::run("restart", &[("TEST_SPOOL_DIR", dir)]);
}
