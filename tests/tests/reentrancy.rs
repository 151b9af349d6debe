//! Re-entrancy: traced code called from our callbacks (`mask`, `on_failure`) or running on
//! our own threads never starts a trace. Without that, a mask calling a `#[trace]`
//! function recurses until the stack overflows (write-ahead mode) or feeds itself forever
//! (default mode). Each scenario runs in a child process (the configuration is global).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use openlayer_trace::{Config, ConfigBuilder, SpoolMode, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results, temp_dir};
use openlayer_trace_tests::{Behavior, TestServer};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

/// What a user's mask might call: a traced helper (a PII detector, say).
#[trace]
fn redact(text: String) -> String {
    text.replace('@', "[at]")
}

static CALLS: AtomicU64 = AtomicU64::new(0);

fn base(url: &str) -> ConfigBuilder {
    Config::builder()
        .api_key("sk-test-reentrancy")
        .base_url(url)
        .inference_pipeline_id("pipe-1")
        .retry_base_backoff(Duration::from_millis(10))
        .max_retries(1)
        .linger(Duration::from_millis(5))
        .mask(|row| {
            CALLS.fetch_add(1, SeqCst);
            let id = row
                .get("inferenceId")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let masked = redact(id.to_string());
            row.insert("user".into(), masked.into());
        })
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    let server = TestServer::start();
    let builder = match scenario.as_str() {
        "default" => base(&server.url()),
        "write_ahead" => base(&server.url())
            .spool_dir(temp_dir("reentrancy-wa"))
            .spool_mode(SpoolMode::WriteAhead),
        "on_failure" => {
            server.set_behavior(Behavior::always(openlayer_trace_tests::Action::status(500)));
            let told = Arc::new(AtomicU64::new(0));
            base(&server.url()).on_failure(move |f| {
                told.fetch_add(f.rows, SeqCst);
                redact(f.message.clone());
            })
        }
        "mask_flush_during_shutdown" => base(&server.url()),
        other => panic!("unknown scenario {other}"),
    };
    if scenario == "mask_flush_during_shutdown" {
        return mask_flush_during_shutdown(&server);
    }
    let guard = openlayer_trace::init(builder.build().unwrap()).unwrap();
    for i in 0..3 {
        work(format!("user{i}@example.com"));
    }
    let r = guard.flush(Duration::from_secs(10)).unwrap();
    assert!(r.complete);
    // A second flush: anything the first one's callbacks traced would be settled by now.
    let r = guard.flush(Duration::from_secs(10)).unwrap();
    assert!(r.complete);
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    report(&[
        ("enqueued", s.enqueued.to_string()),
        ("mask_calls", CALLS.load(SeqCst).to_string()),
    ]);
    assert_eq!(s.enqueued, 3, "only the application's traces: {s:?}");
    assert_eq!(CALLS.load(SeqCst), 3);
    if scenario == "on_failure" {
        assert_eq!(s.dropped.retries_exhausted, 3, "{s:?}");
    } else {
        assert_eq!(s.sent, 3, "{s:?}");
        assert_eq!(server.inference_ids().len(), 3);
    }
}

/// In write-ahead mode the mask runs on the thread that completed the trace, while that
/// trace is being handed off. A mask that calls the SDK (`flush`, `stats`) while another
/// thread shuts the pipeline down must not deadlock with it.
fn mask_flush_during_shutdown(server: &TestServer) {
    use std::sync::mpsc;
    let config = Config::builder()
        .api_key("sk-test-reentrancy")
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .spool_dir(temp_dir("reentrancy-mask-flush"))
        .spool_mode(SpoolMode::WriteAhead)
        .mask(|row| {
            std::thread::sleep(Duration::from_millis(300));
            let _ = openlayer_trace::flush(Duration::ZERO);
            let _ = openlayer_trace::stats();
            row.insert("masked".into(), true.into());
        })
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let (done, finished) = mpsc::channel();
    let tracer = {
        let done = done.clone();
        std::thread::spawn(move || {
            work("a@example.com".into());
            done.send("traced").unwrap();
        })
    };
    // The traced thread is in the mask now.
    std::thread::sleep(Duration::from_millis(100));
    let closer = std::thread::spawn(move || {
        let _ = guard.shutdown(Duration::from_secs(2));
        done.send("shut down").unwrap();
    });
    for _ in 0..2 {
        if finished.recv_timeout(Duration::from_secs(20)).is_err() {
            eprintln!("deadlock: the mask's flush and the shutdown wait for each other");
            std::process::exit(3);
        }
    }
    tracer.join().unwrap();
    closer.join().unwrap();
    report(&[("finished", "2".into())]);
}

fn run(scenario: &str) {
    let out = child::run(scenario, &[]);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn a_mask_calling_traced_code_starts_no_trace() {
    run("default");
}

#[test]
fn a_mask_calling_traced_code_in_write_ahead_mode_does_not_recurse() {
    run("write_ahead");
}

#[test]
fn on_failure_calling_traced_code_starts_no_trace() {
    run("on_failure");
}

#[test]
fn a_mask_calling_the_sdk_during_a_shutdown_does_not_deadlock() {
    run("mask_flush_during_shutdown");
}
