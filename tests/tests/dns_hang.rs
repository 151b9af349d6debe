//! `shutdown` keeps its deadline even when a name lookup hangs: a lookup that never ends
//! holds a thread of the worker runtime's blocking pool (as a hung `getaddrinfo` does), and
//! the runtime is shut down in the background rather than waited for.

use std::time::{Duration, Instant};

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results, wait_until};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    assert_eq!(scenario, "hung_lookup");
    openlayer_trace::__test_hooks::hang_name_resolution(true);
    // A name (not an address literal), so that it is looked up; it is never reached.
    let config = Config::builder()
        .api_key("sk-test-dns")
        .base_url("http://localhost:9/v1")
        .inference_pipeline_id("p")
        .request_timeout(Duration::from_millis(200))
        .max_retries(0)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    work("dns-1".into());
    let started = Instant::now();
    let r = guard.shutdown(Duration::from_millis(500)).unwrap();
    let took = started.elapsed();
    report(&[("shutdown_ms", took.as_millis().to_string())]);
    assert_eq!(r.stats.pending, 0, "{:?}", r.stats);
    // 4x the deadline; without the fix the join never returns.
    assert!(took < Duration::from_millis(2000), "{took:?}");
}

#[test]
fn shutdown_keeps_its_deadline_when_a_name_lookup_hangs() {
    let mut c = child::spawn("hung_lookup", &[]);
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = c.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = c.kill();
        let _ = c.wait();
        panic!("shutdown did not return: the worker's join waited on the hung lookup");
    }
    let out = c.wait_with_output().unwrap();
    assert!(status.unwrap().success(), "the child failed");
    println!("{:?}", results(&out));
}
