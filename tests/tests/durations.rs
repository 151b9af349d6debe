//! Any `Duration` is valid: `Duration::MAX` for `flush`, `shutdown`, `shutdown_timeout`,
//! `linger` and the request timeouts means "as long as it takes", never a panic or a dead
//! worker. Each scenario runs in a child process (the configuration is global).

use std::time::Duration;

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::TestServer;
use openlayer_trace_tests::child::{self, report, results};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    let server = TestServer::start();
    let mut builder = Config::builder()
        .api_key("sk-test-durations")
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .shutdown_timeout(Duration::MAX)
        .request_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX);
    if scenario == "linger" {
        builder = builder.linger(Duration::MAX);
    }
    let guard = openlayer_trace::init(builder.build().unwrap()).unwrap();
    for i in 0..3 {
        work(format!("d-{i}"));
    }
    let r = guard.flush(Duration::MAX).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.sent, 3, "{:?}", r.stats);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    work("d-3".into());
    let r = rt.block_on(guard.flush_async(Duration::MAX)).unwrap();
    assert!(r.complete);
    work("d-4".into());
    let r = match scenario.as_str() {
        // Dropping the guard is a shutdown with `shutdown_timeout` (here `MAX`).
        "drop" => {
            drop(guard);
            openlayer_trace::stats()
        }
        _ => guard.shutdown(Duration::MAX).unwrap().stats,
    };
    report(&[("sent", r.sent.to_string())]);
    assert_eq!(server.inference_ids().len(), 5);
}

fn run(scenario: &str) {
    let out = child::run(scenario, &[]);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn duration_max_everywhere_means_as_long_as_it_takes() {
    run("shutdown");
}

#[test]
fn a_guard_with_an_endless_shutdown_timeout_drops_cleanly() {
    run("drop");
}

#[test]
fn an_endless_linger_still_flushes() {
    run("linger");
}
