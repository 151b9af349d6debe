//! `flush_async` needs no thread per call: a thousand calls in a loop leave no extra
//! threads behind (one shared timer thread wakes every wait at its deadline). Runs in a
//! child process, so that other tests' threads do not count.

use std::time::Duration;

use openlayer_trace::{Config, trace};
use openlayer_trace_tests::child::{self, report, results, temp_dir};

#[trace]
fn work(n: u32) -> u32 {
    n
}

/// This process's threads (Linux).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    child::scenario();
    let file = temp_dir("async-waits").join("traces.jsonl");
    let guard = openlayer_trace::init(Config::builder().trace_file(file).build().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warm up: the worker and the shared timer are running after this.
    work(0);
    assert!(
        rt.block_on(guard.flush_async(Duration::from_secs(60)))
            .unwrap()
            .complete
    );
    let before = threads();
    for i in 0..1000 {
        work(i);
        let r = rt
            .block_on(guard.flush_async(Duration::from_secs(60)))
            .unwrap();
        assert!(r.complete);
    }
    let after = threads();
    report(&[("before", before.to_string()), ("after", after.to_string())]);
    assert_eq!(after, before, "no thread per call");
    let r = rt
        .block_on(guard.shutdown_async(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(r.stats.written, 1001);
}

#[test]
fn a_thousand_flush_async_calls_leave_no_threads_behind() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("skipped: counting threads needs /proc");
        return;
    }
    let out = child::run("loop", &[]);
    eprintln!("{:?}", results(&out));
}
