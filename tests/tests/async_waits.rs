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
    if child::scenario() == "full" {
        return full_queue();
    }
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

/// The queue full and the worker stalled (blocked opening a FIFO that nobody reads):
/// flushes still return by their deadline, and still start no thread per call.
fn full_queue() {
    let dir = temp_dir("async-waits-full");
    let fifo = dir.join("traces.fifo");
    child::fifo(&fifo);
    let config = Config::builder()
        .trace_file(&fifo)
        .queue_capacity(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The worker takes the first trace and blocks opening the FIFO; the next fill the
    // queue (and the rest are dropped as `queue_full`).
    for i in 0..4 {
        work(i);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shared timer thread starts with the first wait.
    let first = rt.block_on(guard.flush_async(Duration::from_millis(10)));
    assert!(!first.unwrap().complete);
    let before = threads();
    for _ in 0..100 {
        let r = rt
            .block_on(guard.flush_async(Duration::from_millis(10)))
            .unwrap();
        assert!(!r.complete, "the worker is stalled");
        assert!(!guard.flush(Duration::from_millis(1)).unwrap().complete);
    }
    let after = threads();
    report(&[("before", before.to_string()), ("after", after.to_string())]);
    assert_eq!(after, before, "no thread per call");
    // Flushes that timed out leave their messages queued; while the worker is stalled
    // they are bounded (1,024 of them): past that, a flush is not queued, and says so.
    let logs = openlayer_trace_tests::logs::Capture::install();
    for _ in 0..1_000 {
        assert!(!guard.flush(Duration::ZERO).unwrap().complete);
    }
    let text = logs.text();
    assert!(
        text.contains("has not taken the last 1024 flushes that timed out"),
        "{text}"
    );
    // A reader unblocks the worker: everything is settled, the flushes queued meanwhile
    // included.
    let reader = std::thread::spawn(move || std::fs::read(&fifo).unwrap());
    let r = rt
        .block_on(guard.shutdown_async(Duration::from_secs(30)))
        .unwrap();
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(
        r.stats.written + r.stats.dropped.queue_full,
        4,
        "{:?}",
        r.stats
    );
    let read = reader.join().unwrap();
    assert_eq!(
        read.iter().filter(|b| **b == b'\n').count() as u64,
        r.stats.written
    );
}

#[cfg(unix)]
#[test]
fn flushes_on_a_full_queue_and_a_stalled_worker_leave_no_threads_behind() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("skipped: counting threads needs /proc");
        return;
    }
    let out = child::run("full", &[]);
    eprintln!("{:?}", results(&out));
}
