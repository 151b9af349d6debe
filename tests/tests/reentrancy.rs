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
        other => panic!("unknown scenario {other}"),
    };
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
