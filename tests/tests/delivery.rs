//! Delivery to the Openlayer API under faults, against the loopback server.
//!
//! For each fault, the `inferenceId`s the server acknowledged (2xx) are counted against
//! those produced. Zero loss means every one arrives, after recovery or from the spool on
//! replay; where data may be lost by design (no spool, a full queue), every loss is
//! counted exactly. Configuration is global, so each scenario runs in a child process of
//! this test binary; the parent checks the child's verdict and prints its numbers.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openlayer_trace::{
    Config, ConfigBuilder, DeliveryFailure, DropReason, SpoolMode, Stats, trace,
    update_current_trace,
};
use openlayer_trace_tests::child::{self, report, results, spool_files, temp_dir, wait_until};
use openlayer_trace_tests::logs::Capture;
use openlayer_trace_tests::{Action, Behavior, Outcome, TestServer};

const KEY: &str = "sk-test-delivery-5f4e3d2c1b0a9988";
const PIPE: &str = "pipe-1";

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

fn produce(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            work(id.clone());
            id
        })
        .collect()
}

/// Short timeouts and backoffs, so that faults play out in milliseconds.
fn base(url: &str) -> ConfigBuilder {
    Config::builder()
        .api_key(KEY)
        .base_url(url)
        .inference_pipeline_id(PIPE)
        .retry_base_backoff(Duration::from_millis(10))
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(300))
        .linger(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(3))
}

/// How many acknowledged rows repeat an `inferenceId`.
fn duplicates(server: &TestServer) -> usize {
    server
        .inference_id_counts()
        .values()
        .map(|n| n.saturating_sub(1))
        .sum()
}

fn received(server: &TestServer, ids: &[String]) -> usize {
    let got = server.inference_ids();
    ids.iter().filter(|id| got.contains(*id)).count()
}

fn all_received(server: &TestServer, ids: &[String]) -> bool {
    received(server, ids) == ids.len()
}

/// Prints the verdict line of a fault scenario.
fn outcome(fault: &str, ids: &[String], server: &TestServer, s: &Stats) {
    report(&[
        ("fault", fault.to_string()),
        ("produced", ids.len().to_string()),
        ("received", received(server, ids).to_string()),
        ("duplicates", duplicates(server).to_string()),
        ("sent", s.sent.to_string()),
        ("retried", s.retried.to_string()),
        ("spooled", s.spooled.to_string()),
        ("replayed", s.replayed.to_string()),
        ("dropped", s.dropped.total().to_string()),
        ("pending", s.pending.to_string()),
    ]);
}

fn assert_settled(s: &Stats) {
    assert_eq!(s.pending, 0, "{s:?}");
    assert_eq!(
        s.sent + s.spooled + s.written + s.sampled_out + s.dropped.total() - s.spool_dropped,
        s.enqueued,
        "every row is settled exactly once: {s:?}"
    );
}

/// What `on_failure` was told: rows, drop reason, status, message.
type Told = Arc<Mutex<Vec<(u64, Option<DropReason>, Option<u16>, String)>>>;

fn failures() -> (Told, impl Fn(&DeliveryFailure) + Send + Sync + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |f: &DeliveryFailure| {
        s.lock()
            .unwrap()
            .push((f.rows, f.dropped, f.status, f.message.clone()))
    })
}

/// The child side: one scenario, in a process started by one of the tests below.
#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "server_errors" => server_errors(),
        "rate_limited" => rate_limited(),
        "rate_limited_hold" => rate_limited_hold(),
        "rate_limited_long" => rate_limited_long(),
        "refused" => refused(),
        "refused_without_spool" => refused_without_spool(),
        "hang_deadline" => hang_deadline(),
        "hang_timeout" => hang_timeout(),
        "reset" => reset(),
        "unauthorized" => unauthorized(),
        "full_queue" => full_queue(false),
        "full_queue_spool" => full_queue(true),
        "tight_budget" => tight_budget(),
        "tight_updates" => tight_updates(),
        "hang_shutdown_spool" => hang_shutdown_spool(),
        "kill_produce" => kill_produce(),
        "kill_restart" => kill_restart(),
        "kill_updates_produce" => kill_updates_produce(),
        "kill_updates_restart" => kill_updates_restart(),
        "write_ahead_updates" => write_ahead_updates(),
        "write_ahead_update_404" => write_ahead_update_404(),
        "batching" => batching(),
        "no_pipeline" => no_pipeline(),
        "spool_write_fails" => spool_write_fails(),
        "replayed_update_404" => replayed_update_404(),
        "overflow_drops_told" => overflow_drops_told(),
        "reinit_spool" => reinit_spool(),
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Child scenarios

/// 500s, then OK: the first request exhausts its retries and is spooled; the next 2xx
/// brings the server back, and the spool is replayed.
fn server_errors() {
    let server = TestServer::start_with(Behavior::fail_first(3, 500));
    let dir = temp_dir("server-errors");
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_in_flight(1)
        .max_retries(2)
        .batch_max_rows(10)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("e500", 50);
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
    assert!(wait_until(Duration::from_secs(10), || all_received(
        &server, &ids
    )));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    outcome("server_errors", &ids, &server, s);
    assert!(r.complete);
    assert_settled(s);
    assert_eq!(s.sent + s.spooled, 50, "{s:?}");
    assert!(s.spooled > 0, "{s:?}");
    assert_eq!(s.replayed, s.spooled, "{s:?}");
    assert_eq!(s.retried, 2, "{s:?}");
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(duplicates(&server), 0);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// 429 with `Retry-After: 1`: the wait is honoured, then everything arrives.
fn rate_limited() {
    let server = TestServer::start_with(Behavior::rate_limited(1, 1));
    let config = base(&server.url()).max_in_flight(1).build().unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("r429", 20);
    let r = guard.flush(Duration::from_secs(5)).unwrap();
    assert!(r.complete);
    let requests = server.requests();
    assert_eq!(requests[0].outcome, Outcome::Answered(429));
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("rate_limited", &ids, &server, &r.stats);
    report(&[("retry_after_waited_ms", waited.as_millis().to_string())]);
    assert!(all_received(&server, &ids));
    assert_eq!(r.stats.retried, 1);
    assert_eq!(r.stats.sent, 20);
    assert_eq!(duplicates(&server), 0);
    assert_settled(&r.stats);
}

/// 429 with `Retry-After: 2` and no retries left: the rows are spooled, and no request
/// of any kind (later rows, the replay) starts before the two seconds have passed.
fn rate_limited_hold() {
    let server = TestServer::start_with(Behavior::rate_limited(1, 2));
    let dir = temp_dir("rate-limited-hold");
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_in_flight(1)
        .max_retries(0)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let mut ids = produce("hold-a", 5);
    assert!(wait_until(Duration::from_secs(5), || server
        .request_count()
        >= 1));
    std::thread::sleep(Duration::from_millis(200));
    ids.extend(produce("hold-b", 5));
    assert!(wait_until(Duration::from_secs(10), || all_received(
        &server, &ids
    )));
    let requests = server.requests();
    assert_eq!(requests[0].outcome, Outcome::Answered(429));
    for r in &requests[1..] {
        let after = r.received_at - requests[0].received_at;
        assert!(
            after >= Duration::from_millis(1900),
            "request {} came {after:?} after the 429",
            r.seq
        );
    }
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    outcome("rate_limited_hold", &ids, &server, s);
    assert_settled(s);
    assert_eq!(s.spooled, 5, "{s:?}");
    assert_eq!(s.replayed, 5, "{s:?}");
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(duplicates(&server), 0);
}

/// 429 with `Retry-After: 120`: longer than a request waits. Nothing more is sent until
/// then; a shutdown with an earlier deadline spools the rows at once, none is dropped.
fn rate_limited_long() {
    let server = TestServer::start_with(Behavior::rate_limited(100, 120));
    let dir = temp_dir("rate-limited-long");
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_in_flight(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let mut ids = produce("long-a", 5);
    assert!(wait_until(Duration::from_secs(5), || server
        .request_count()
        >= 1));
    ids.extend(produce("long-b", 5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.request_count(), 1, "{:?}", server.requests());
    // Nothing can be sent before the deadline: the shutdown does not wait for it.
    let started = std::time::Instant::now();
    let r = guard.shutdown(Duration::from_secs(20)).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    let s = &r.stats;
    outcome("rate_limited_long", &ids, &server, s);
    assert_eq!(server.request_count(), 1);
    assert_eq!(s.spooled, 10, "{s:?}");
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_settled(s);
}

/// Connection refused for a while: everything is spooled; once the server is up again,
/// the replay probe delivers it all.
fn refused() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("refused");
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_retries(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("down", 30);
    let r = guard.flush(Duration::from_secs(3)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.spooled, 30, "{:?}", r.stats);
    assert_eq!(r.stats.sent, 0);
    assert!(!spool_files(&dir).is_empty());
    std::thread::sleep(Duration::from_millis(200));
    server.come_up();
    let up = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || all_received(
        &server, &ids
    )));
    let recovery = up.elapsed();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("refused", &ids, &server, &r.stats);
    report(&[("recovered_after_ms", recovery.as_millis().to_string())]);
    assert_eq!(r.stats.replayed, 30);
    assert_eq!(duplicates(&server), 0);
    assert_settled(&r.stats);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// Connection refused and no spool: every row is dropped, and counted.
fn refused_without_spool() {
    let server = TestServer::start();
    server.go_down();
    let (seen, on_failure) = failures();
    let config = base(&server.url())
        .max_retries(1)
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("lost", 30);
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    outcome("refused_without_spool", &ids, &server, &r.stats);
    assert!(r.complete);
    assert_eq!(r.stats.dropped.retries_exhausted, 30, "{:?}", r.stats);
    assert_settled(&r.stats);
    let seen = seen.lock().unwrap();
    let told: u64 = seen
        .iter()
        .filter(|f| f.1 == Some(DropReason::RetriesExhausted))
        .map(|f| f.0)
        .sum();
    assert_eq!(told, 30, "{seen:?}");
}

/// `init` again on the same spool directory while traces and row updates keep coming
/// (rotating the key, say): the old pipeline must release the spool before the new one
/// takes it, and what completes meanwhile is handed to the new one, not dropped.
fn reinit_spool() {
    let server = TestServer::start_with(Behavior::always(Action::handler(|_| {
        // A slow server: the old pipeline's shutdown takes a while.
        std::thread::sleep(Duration::from_millis(10));
        openlayer_trace_tests::Response::ok()
    })));
    let dir = temp_dir("reinit-spool");
    let config = || base(&server.url()).spool_dir(&dir).build().unwrap();
    let g1 = openlayer_trace::init(config()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("handed-{i}");
                work(id.clone());
                openlayer_trace::update_row(&id, serde_json::json!({"label": i}), None);
                ids.push(id);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            ids
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let g2 = openlayer_trace::init(config()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ids = producer.join().unwrap();
    let old = g1.stats();
    let r = g2.shutdown(Duration::from_secs(20)).unwrap();
    report(&[("produced", ids.len().to_string())]);
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(old.dropped.total(), 0, "the old pipeline dropped: {old:?}");
    assert_eq!(r.stats.dropped.total(), 0, "{:?}", r.stats);
    assert!(
        all_received(&server, &ids),
        "{} of {}",
        received(&server, &ids),
        ids.len()
    );
    // The updates: sent, or spooled behind their rows at the deadline (a slow server),
    // none dropped (above).
}

/// Traces that overflow the queue into the spool writer and cannot be encoded there (the
/// mask panics, slowly, so that the writer counts them after the flusher's last report):
/// every drop is told to `on_failure` before `shutdown` returns.
fn overflow_drops_told() {
    let server = TestServer::start();
    let dir = temp_dir("overflow-drops-told");
    let (seen, on_failure) = failures();
    let config = base(&server.url())
        .spool_dir(&dir)
        .queue_capacity(1)
        .on_failure(on_failure)
        .mask(|_| {
            std::thread::sleep(Duration::from_millis(100));
            panic!("the mask fails");
        })
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("unmaskable", 6);
    let r = guard.shutdown(Duration::from_secs(10)).unwrap();
    outcome("overflow_drops_told", &ids, &server, &r.stats);
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.encoding, 6, "{:?}", r.stats);
    let seen = seen.lock().unwrap();
    let told: u64 = seen
        .iter()
        .filter(|f| f.1 == Some(DropReason::Encoding))
        .map(|f| f.0)
        .sum();
    assert_eq!(told, 6, "{seen:?}");
}

/// A row and its update spooled by one run (the server down), replayed by the next: the
/// update reaches the platform right behind its row, which is not visible there yet
/// (404). It is tried again a little later, and delivered. An update of a row that never
/// comes (not replayed lately) is dropped (counted) at its first 404, as before.
fn replayed_update_404() {
    let first_put = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let late_puts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = TestServer::start_with(Behavior::always(Action::handler(move |r| {
        // The row that never comes, the first look for the other one, and the first two
        // for a row sent live that the platform shows late.
        let late = r.raw_query.contains("live-late")
            && late_puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
        let missing = r.method == "PUT"
            && (late
                || r.raw_query.contains("never-there")
                || (!r.raw_query.contains("live-late")
                    && first_put.swap(false, std::sync::atomic::Ordering::SeqCst)));
        if missing {
            openlayer_trace_tests::Response::status(404)
        } else {
            openlayer_trace_tests::Response::ok()
        }
    })));
    server.go_down();
    let dir = temp_dir("replayed-update-404");
    let config = || {
        base(&server.url())
            .spool_dir(&dir)
            .max_retries(0)
            .build()
            .unwrap()
    };
    let guard = openlayer_trace::init(config()).unwrap();
    let id = produce("late-row", 1).remove(0);
    openlayer_trace::update_row(&id, serde_json::json!({"label": 1}), None);
    openlayer_trace::update_row("never-there", serde_json::json!({"label": 0}), None);
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    assert_eq!(r.stats.spooled, 3, "{:?}", r.stats);

    server.come_up();
    let guard = openlayer_trace::init(config()).unwrap();
    let done = wait_until(Duration::from_secs(20), || {
        let s = guard.stats();
        s.replayed >= 2 && s.dropped.rejected >= 1
    });
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    assert!(done, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 1, "{:?}", r.stats);
    let never = server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.raw_query.contains("never-there"))
        .count();
    // Its row was never replayed: nothing to wait for, and nothing held back behind it.
    assert_eq!(never, 1);
    let puts: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && !r.raw_query.contains("never-there"))
        .filter_map(|r| match r.outcome {
            Outcome::Answered(status) => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(puts, [404, 200], "{puts:?}");

    // A row sent live, whose update is answered 404 live and again when replayed from
    // the spool: its row was sent just before, so the replay waits and tries again.
    let guard = openlayer_trace::init(config()).unwrap();
    let id = produce("live-late", 1).remove(0);
    assert!(wait_until(Duration::from_secs(10), || guard.stats().sent >= 1));
    openlayer_trace::update_row(&id, serde_json::json!({"label": 2}), None);
    let delivered = wait_until(Duration::from_secs(20), || {
        server
            .requests()
            .iter()
            .any(|r| r.raw_query.contains("live-late") && r.outcome == Outcome::Answered(200))
    });
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    assert!(delivered, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 0, "{:?}", r.stats);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// Rows the platform did not take, handed to a spool that cannot be written (no file of
/// the process may grow): `on_failure` is told they were dropped, and never first that
/// they were spooled.
fn spool_write_fails() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("spool-write-fails");
    let (seen, on_failure) = failures();
    let config = base(&server.url())
        .spool_dir(&dir)
        .max_retries(0)
        .on_failure(on_failure)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    // A spool that can be written: the rows are told as spooled, with the failure,
    // once the writer has them on disk.
    let first = produce("spooled", 5);
    assert!(guard.flush(Duration::from_secs(3)).unwrap().complete);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].0, seen[0].1), (5, None), "{seen:?}");
        assert!(seen[0].3.contains("refused"), "{seen:?}");
        assert_eq!(guard.stats().spooled, 5);
    }
    seen.lock().unwrap().clear();
    // SAFETY: plain calls of the C library, with a valid pointer to a local struct.
    unsafe {
        // Writing past the limit fails with EFBIG instead of killing the process.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let mut ids = produce("unwritable", 10);
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    ids.extend(first);
    outcome("spool_write_fails", &ids, &server, &r.stats);
    assert_eq!(r.stats.spooled, 5, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 10, "{:?}", r.stats);
    assert_settled(&r.stats);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|f| f.1.is_some()),
        "told as spooled, then dropped: {seen:?}"
    );
    assert_eq!(seen.iter().map(|f| f.0).sum::<u64>(), 10, "{seen:?}");
}

/// A server that hangs past every deadline: `flush` and `shutdown` return on time; the
/// shutdown spools what it could not deliver, and the next start replays it.
fn hang_deadline() {
    let server = TestServer::start_with(Behavior::hang());
    let dir = temp_dir("hang-deadline");
    let config = || {
        base(&server.url())
            .spool_dir(&dir)
            .request_timeout(Duration::from_secs(30))
            .max_retries(0)
            .build()
            .unwrap()
    };
    let guard = openlayer_trace::init(config()).unwrap();
    let ids = produce("hang", 20);
    assert!(server.wait_for_blocking(Duration::from_secs(5), |r| !r.is_empty()));

    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let r = guard.flush(deadline).unwrap();
    let flush_sync = start.elapsed();
    assert!(!r.complete);
    assert_eq!(r.stats.pending, 20);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let r = rt.block_on(guard.flush_async(deadline)).unwrap();
    let flush_async = start.elapsed();
    assert!(!r.complete);

    let start = Instant::now();
    let r = guard.shutdown(Duration::from_millis(500)).unwrap();
    let shutdown = start.elapsed();
    report(&[
        ("flush_deadline_ms", "300".into()),
        ("flush_sync_ms", flush_sync.as_millis().to_string()),
        ("flush_async_ms", flush_async.as_millis().to_string()),
        ("shutdown_deadline_ms", "500".into()),
        ("shutdown_ms", shutdown.as_millis().to_string()),
    ]);
    // An incomplete flush waits for its whole deadline, and no longer.
    assert!(flush_sync >= Duration::from_millis(295), "{flush_sync:?}");
    assert!(flush_async >= Duration::from_millis(295), "{flush_async:?}");
    // Upper bounds generous (4x) for a loaded machine: an overrun past them is a wait on
    // the hung server (its request timeout is 30 s), not scheduling noise.
    for (took, limit) in [(flush_sync, 300), (flush_async, 300), (shutdown, 500)] {
        assert!(
            took < Duration::from_millis(4 * limit),
            "{took:?} for a deadline of {limit} ms"
        );
    }
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(r.stats.spooled, 20, "{:?}", r.stats);
    assert_eq!(r.stats.dropped.total(), 0);
    assert_settled(&r.stats);

    // The next start replays the spool to a healthy server.
    server.set_behavior(Behavior::ok());
    let guard = openlayer_trace::init(config()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || all_received(
        &server, &ids
    )));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("hang_deadline", &ids, &server, &r.stats);
    assert_eq!(r.stats.replayed, 20);
    assert_eq!(duplicates(&server), 0);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// A server that hangs past the request timeout: attempts time out, the rows are
/// spooled, and replayed once the server answers again.
fn hang_timeout() {
    let server = TestServer::start_with(Behavior::hang());
    let dir = temp_dir("hang-timeout");
    let config = base(&server.url())
        .spool_dir(&dir)
        .request_timeout(Duration::from_millis(150))
        .max_retries(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("slow", 20);
    let r = guard.flush(Duration::from_secs(3)).unwrap();
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(r.stats.spooled, 20);
    assert!(r.stats.retried >= 1);
    server.set_behavior(Behavior::ok());
    assert!(wait_until(Duration::from_secs(10), || all_received(
        &server, &ids
    )));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("hang_timeout", &ids, &server, &r.stats);
    assert_eq!(r.stats.replayed, 20);
    assert_eq!(duplicates(&server), 0);
    assert_settled(&r.stats);
}

/// Connections reset mid-request are retried.
fn reset() {
    let server = TestServer::start_with(Behavior::reset_first(2));
    let config = base(&server.url())
        .max_in_flight(1)
        .max_retries(2)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("reset", 30);
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("reset", &ids, &server, &r.stats);
    let outcomes: Vec<Outcome> = server.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes[..2], [Outcome::Reset, Outcome::Reset]);
    assert!(all_received(&server, &ids));
    assert_eq!(r.stats.retried, 2);
    assert_eq!(r.stats.sent, 30);
    assert_eq!(duplicates(&server), 0);
    assert_settled(&r.stats);
}

/// 401: not retried, reported once (with the status and the server's message, never the
/// key), counted, and told to `on_failure`.
fn unauthorized() {
    let logs = Capture::install();
    let server = TestServer::start_with(Behavior::unauthorized(&format!("Invalid API key {KEY}")));
    let (seen, on_failure) = failures();
    let config = base(&server.url())
        .max_in_flight(1)
        .batch_max_rows(10)
        .on_failure(on_failure)
        .build()
        .unwrap();
    let mut debug = format!("{config:?}");
    let guard = openlayer_trace::init(config).unwrap();
    debug.push_str(&format!("{guard:?}"));
    let ids = produce("auth", 25);
    let r = guard.flush(Duration::from_secs(5)).unwrap();
    assert!(r.complete);
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    debug.push_str(&format!("{r:?}"));
    outcome("unauthorized", &ids, &server, &r.stats);
    let s = &r.stats;
    assert_eq!(s.dropped.rejected, 25, "{s:?}");
    assert_eq!((s.sent, s.retried, s.spooled), (0, 0, 0), "{s:?}");
    assert_settled(s);
    // Each row went out once: no retries.
    let requests = server.requests();
    let rows: usize = requests.iter().map(|r| r.inference_ids().len()).sum();
    assert_eq!(rows, 25);
    assert!(requests.iter().all(|r| r.outcome == Outcome::Answered(401)));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(|f| f.0).sum::<u64>(), 25, "{seen:?}");
    assert!(
        seen.iter()
            .all(|f| f.1 == Some(DropReason::Rejected) && f.2 == Some(401)),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|f| f.3 == "Invalid API key ***"),
        "{seen:?}"
    );
    let text = logs.text();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[openlayer_trace] ERROR"))
        .collect();
    assert_eq!(errors.len(), 1, "reported once: {text}");
    assert!(errors[0].contains("status=401"), "{}", errors[0]);
    assert!(errors[0].contains("Invalid API key ***"), "{}", errors[0]);
    assert!(!text.contains(KEY), "{text}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(!format!("{seen:?}").contains(KEY));
}

/// A tiny queue and a burst: what does not fit is spooled (or, without a spool,
/// dropped), and every drop is counted exactly.
fn full_queue(spool: bool) {
    let server = TestServer::start();
    let dir = temp_dir(if spool { "full-spool" } else { "full" });
    let (seen, on_failure) = failures();
    let mut b = base(&server.url())
        .queue_capacity(1)
        .max_in_flight(1)
        .batch_max_rows(50)
        .on_failure(on_failure);
    if spool {
        b = b.spool_dir(&dir);
    }
    let guard = openlayer_trace::init(b.build().unwrap()).unwrap();
    let start = Instant::now();
    let ids = produce("burst", 5000);
    let producing = start.elapsed();
    assert!(guard.flush(Duration::from_secs(10)).unwrap().complete);
    let s = guard.stats();
    let expected = (s.sent + s.spooled) as usize;
    assert!(
        wait_until(Duration::from_secs(20), || {
            received(&server, &ids) == expected
        }),
        "received {} of {expected}: {:?}",
        received(&server, &ids),
        guard.stats()
    );
    let r = guard.shutdown(Duration::from_secs(10)).unwrap();
    let s = &r.stats;
    let name = if spool {
        "full_queue_spool"
    } else {
        "full_queue"
    };
    outcome(name, &ids, &server, s);
    report(&[("producing_ms", producing.as_millis().to_string())]);
    assert!(r.complete);
    assert_settled(s);
    assert_eq!(s.enqueued, 5000);
    let got = received(&server, &ids) as u64;
    assert_eq!(got + s.dropped.queue_full, 5000, "{s:?}");
    assert_eq!(s.dropped.total(), s.dropped.queue_full, "{s:?}");
    assert_eq!(duplicates(&server), 0);
    if spool {
        assert!(s.spooled > 0, "{s:?}");
        assert_eq!(s.replayed, s.spooled, "{s:?}");
    } else {
        assert!(s.dropped.queue_full > 0, "{s:?}");
    }
    let told: u64 = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.1 == Some(DropReason::QueueFull))
        .map(|f| f.0)
        .sum();
    assert_eq!(told, s.dropped.queue_full);
}

/// The server is down and the memory budget is tiny (64 KiB, a few dozen traces as they are
/// counted now) while the queue's capacity is not the limit: the queue, the worker's rows
/// and the spool writer's backlog share the budget, and whatever does not fit is spooled
/// or dropped and counted; once the server is back, nothing is missing.
fn tight_budget() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("tight-budget");
    let config = base(&server.url())
        .spool_dir(&dir)
        .queue_capacity(100_000)
        .queue_max_bytes(64 * 1024)
        .max_retries(1)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let ids = produce("tight", 3000);
    assert!(guard.flush(Duration::from_secs(10)).unwrap().complete);
    let during = guard.stats();
    server.come_up();
    assert!(
        wait_until(Duration::from_secs(20), || {
            received(&server, &ids) as u64 + guard.stats().dropped.total() == 3000
        }),
        "received {} of 3000: {:?}",
        received(&server, &ids),
        guard.stats()
    );
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    let s = &r.stats;
    outcome("tight_budget", &ids, &server, s);
    assert_settled(s);
    assert_eq!(s.enqueued, 3000);
    // The bound held: not everything fitted.
    assert!(during.dropped.total() > 0, "{during:?}");
    assert!(s.spooled > 0, "{s:?}");
    assert_eq!(s.replayed, s.spooled, "{s:?}");
    assert_eq!(
        received(&server, &ids) as u64 + s.dropped.total(),
        3000,
        "{s:?}"
    );
    assert_eq!(duplicates(&server), 0);
}

/// Row updates while the server hangs, with no spool: the worker takes them off the queue
/// at once, but holds only what fits its share of the memory budget; the rest is dropped
/// and counted (they piled up in memory without bound).
fn tight_updates() {
    let server = TestServer::start_with(Behavior::hang());
    let config = base(&server.url())
        .queue_capacity(100_000)
        .queue_max_bytes(256 * 1024)
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let note = "x".repeat(1000);
    for i in 0..20_000 {
        openlayer_trace::update_row(&format!("row-{i}"), serde_json::json!({"note": note}), None);
    }
    // The queue drains into the worker, which keeps what fits.
    let bounded = wait_until(Duration::from_secs(20), || guard.stats().pending < 1000);
    let during = guard.stats();
    assert!(bounded, "updates held past the budget: {during:?}");
    assert!(during.dropped.queue_full > 18_000, "{during:?}");
    server.set_behavior(Behavior::ok());
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    let s = &r.stats;
    report(&[
        ("pending_during", during.pending.to_string()),
        ("queue_full", s.dropped.queue_full.to_string()),
        ("sent", s.sent.to_string()),
    ]);
    assert_eq!(s.enqueued, 20_000, "{s:?}");
    assert_settled(s);
}

#[trace]
fn bulky(id: String, document: &str) -> usize {
    update_current_trace!(inference_id = id);
    document.len()
}

/// A server that hangs, a spool, and more rows waiting in memory at the shutdown deadline
/// than the spool writer's share of the budget: they are all spooled, none dropped (the
/// writer's share used to turn the rest away as `deadline`).
fn hang_shutdown_spool() {
    let server = TestServer::start_with(Behavior::hang());
    let dir = temp_dir("hang-shutdown-spool");
    let config = base(&server.url())
        .spool_dir(&dir)
        .queue_max_bytes(16 * 1024 * 1024)
        .request_timeout(Duration::from_secs(30))
        .max_retries(0)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let document = "d".repeat(4000);
    let n = 2000;
    for i in 0..n {
        bulky(format!("bulky-{i}"), &document);
    }
    let r = guard.shutdown(Duration::from_secs(3)).unwrap();
    let s = &r.stats;
    report(&[
        ("spooled", s.spooled.to_string()),
        ("deadline", s.dropped.deadline.to_string()),
    ]);
    assert!(r.complete, "{s:?}");
    assert_eq!(s.enqueued, n, "{s:?}");
    // Only what overflowed the queue as it was produced (faster than the worker took it
    // in) may be dropped, never what the worker held at the deadline.
    assert_eq!(s.dropped.deadline, 0, "{s:?}");
    assert_eq!(s.spooled + s.dropped.queue_full, n, "{s:?}");
    // Far more than the writer's share of the budget (2 MiB, about 450 of these rows).
    assert!(s.spooled > 1000, "{s:?}");
    assert_settled(s);
}

fn write_ahead_config(url: &str, dir: &Path) -> Config {
    base(url)
        .spool_dir(dir)
        .spool_mode(SpoolMode::WriteAhead)
        .batch_max_rows(10)
        .max_in_flight(2)
        .linger(Duration::from_millis(1))
        .request_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Produces in write-ahead mode, says so, and waits to be killed.
fn kill_produce() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let guard = openlayer_trace::init(write_ahead_config(&url, Path::new(&dir))).unwrap();
    let ids = produce("k9", 100);
    println!("PRODUCED {}", ids.len());
    std::thread::sleep(Duration::from_secs(60));
    drop(guard);
    panic!("should have been killed");
}

/// Starts again on the same spool: the rows the killed process had not delivered are
/// replayed.
fn kill_restart() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let expect: u64 = std::env::var("TEST_EXPECT").unwrap().parse().unwrap();
    let guard = openlayer_trace::init(write_ahead_config(&url, Path::new(&dir))).unwrap();
    assert!(wait_until(Duration::from_secs(10), || guard
        .stats()
        .replayed
        >= expect));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    report(&[
        ("replayed", r.stats.replayed.to_string()),
        ("retried", r.stats.retried.to_string()),
    ]);
    assert_eq!(r.stats.replayed, expect);
    assert_eq!(r.stats.enqueued, 0);
}

/// Produces rows, then an update of each, in write-ahead mode; says so, and waits to be
/// killed.
fn kill_updates_produce() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let guard = openlayer_trace::init(write_ahead_config(&url, Path::new(&dir))).unwrap();
    let ids = produce("ku", 30);
    for id in &ids {
        openlayer_trace::update_row(id, serde_json::json!({"label": 1}), None);
    }
    println!("PRODUCED {}", ids.len());
    std::thread::sleep(Duration::from_secs(60));
    drop(guard);
    panic!("should have been killed");
}

/// Rows and their updates in write-ahead mode, delivered, then shut down.
fn write_ahead_updates() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let guard = openlayer_trace::init(write_ahead_config(&url, Path::new(&dir))).unwrap();
    for id in produce("wu", 5) {
        openlayer_trace::update_row(&id, serde_json::json!({"label": 1}), None);
    }
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert!(r.complete, "{:?}", r.stats);
    assert_eq!(r.stats.sent, 10, "{:?}", r.stats);
}

/// A row, then two updates of it at once, in write-ahead mode; the first update is
/// answered 404 (the row not visible yet) and left in the spool; waits for both to be
/// delivered.
fn write_ahead_update_404() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let config = base(&url)
        .spool_dir(Path::new(&dir))
        .spool_mode(SpoolMode::WriteAhead)
        .linger(Duration::from_millis(1))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let id = produce("wo", 1).remove(0);
    assert!(wait_until(Duration::from_secs(10), || guard.stats().sent >= 1));
    openlayer_trace::update_row(&id, serde_json::json!({"label": 1}), None);
    openlayer_trace::update_row(&id, serde_json::json!({"label": 2}), None);
    let done = wait_until(Duration::from_secs(20), || {
        let s = guard.stats();
        s.sent + s.replayed >= 3
    });
    assert!(done, "{:?}", guard.stats());
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert!(r.complete, "{:?}", r.stats);
}

/// Starts again on the same spool and waits for every update to reach the server.
fn kill_updates_restart() {
    let url = std::env::var("TEST_SERVER_URL").unwrap();
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    let expect: u64 = std::env::var("TEST_EXPECT").unwrap().parse().unwrap();
    let guard = openlayer_trace::init(write_ahead_config(&url, Path::new(&dir))).unwrap();
    let done = wait_until(Duration::from_secs(10), || guard.stats().replayed >= expect);
    assert!(done, "{:?}", guard.stats());
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    report(&[
        ("replayed", r.stats.replayed.to_string()),
        ("sent", r.stats.sent.to_string()),
    ]);
    assert!(r.complete, "{:?}", r.stats);
}

#[trace(inference_pipeline_id = "pipe-2")]
fn routed(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[trace]
fn two_inputs(id: String, extra: u32) -> u32 {
    update_current_trace!(inference_id = id);
    extra
}

/// Rows of one pipeline and config share requests, within the row limit; other configs
/// and pipelines get their own.
fn batching() {
    let server = TestServer::start();
    let config = base(&server.url())
        .linger(Duration::from_millis(200))
        .batch_max_rows(16)
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let mut ids = produce("batch", 40);
    for i in 0..5 {
        let id = format!("two-{i}");
        two_inputs(id.clone(), i);
        ids.push(id);
        let id = format!("routed-{i}");
        routed(id.clone());
        ids.push(id);
    }
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("batching", &ids, &server, &r.stats);
    assert!(all_received(&server, &ids));
    assert_eq!(duplicates(&server), 0);
    let requests = server.requests();
    let sizes: Vec<usize> = requests.iter().map(|r| r.inference_ids().len()).collect();
    report(&[
        ("requests", requests.len().to_string()),
        ("rows_per_request", format!("{sizes:?}").replace(' ', "")),
    ]);
    assert!(sizes.iter().all(|n| *n <= 16), "{sizes:?}");
    // At least 5 (40 + 5 + 5 rows, 16 at most per request, three groups); the linger may
    // split a group on a slow machine, but 50 rows in few requests is batching.
    assert!(requests.len() <= 10, "{sizes:?}");
    for r in &requests {
        let body = r.json.as_ref().unwrap();
        let ids = r.inference_ids();
        let inputs = &body["config"]["inputVariableNames"];
        if ids[0].starts_with("routed-") {
            assert_eq!(r.path, "/v1/inference-pipelines/pipe-2/data-stream");
        } else {
            assert_eq!(r.path, "/v1/inference-pipelines/pipe-1/data-stream");
        }
        let prefix = ids[0].split('-').next().unwrap();
        assert!(ids.iter().all(|id| id.starts_with(prefix)), "{ids:?}");
        match prefix {
            "two" => assert_eq!(inputs, &serde_json::json!(["id", "extra"])),
            _ => assert_eq!(inputs, &serde_json::json!(["id"])),
        }
    }
}

/// No pipeline id: rows are dropped and counted, with one warning; a routed function
/// still delivers.
fn no_pipeline() {
    let logs = Capture::install();
    let server = TestServer::start();
    let config = Config::builder()
        .api_key(KEY)
        .base_url(server.url())
        .retry_base_backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    let lost = produce("nopipe", 10);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let id = format!("routed-{i}");
            routed(id.clone());
            id
        })
        .collect();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    outcome("no_pipeline", &ids, &server, &r.stats);
    assert!(all_received(&server, &ids));
    assert_eq!(received(&server, &lost), 0);
    assert_eq!(r.stats.dropped.no_pipeline, 10);
    assert_settled(&r.stats);
    let warnings = logs
        .text()
        .lines()
        .filter(|l| l.contains("no inference pipeline id"))
        .count();
    assert_eq!(warnings, 1);
}

// ---------------------------------------------------------------------------------------
// The tests

fn run(scenario: &str) -> std::collections::HashMap<String, String> {
    let out = child::run(scenario, &[]);
    let r = results(&out);
    eprintln!("{scenario}: {r:?}");
    r
}

fn assert_zero_loss(r: &std::collections::HashMap<String, String>) {
    assert_eq!(r["received"], r["produced"], "{r:?}");
    assert_eq!(r["duplicates"], "0", "{r:?}");
}

#[test]
fn init_again_on_the_same_spool_hands_over_what_completes_meanwhile() {
    run("reinit_spool");
}

#[test]
fn drops_counted_by_the_spool_writer_at_the_end_are_told() {
    run("overflow_drops_told");
}

#[test]
fn a_replayed_update_whose_row_is_not_visible_yet_is_tried_again() {
    run("replayed_update_404");
}

#[test]
fn rows_a_spool_cannot_write_are_told_as_dropped_only() {
    run("spool_write_fails");
}

#[test]
fn server_errors_then_ok_lose_nothing() {
    assert_zero_loss(&run("server_errors"));
}

#[test]
fn rate_limiting_with_retry_after_is_honoured() {
    assert_zero_loss(&run("rate_limited"));
}

#[test]
fn a_retry_after_beyond_the_retries_holds_every_request_back() {
    assert_zero_loss(&run("rate_limited_hold"));
}

#[test]
fn a_long_retry_after_holds_requests_back_until_shutdown_spools_them() {
    let r = run("rate_limited_long");
    assert_eq!(r["spooled"], "10", "{r:?}");
}

#[test]
fn connection_refused_then_up_loses_nothing() {
    assert_zero_loss(&run("refused"));
}

#[test]
fn connection_refused_without_a_spool_counts_every_drop() {
    let r = run("refused_without_spool");
    assert_eq!(r["received"], "0");
    assert_eq!(r["dropped"], r["produced"]);
}

#[test]
fn a_hung_server_cannot_hold_flush_or_shutdown_past_the_deadline() {
    assert_zero_loss(&run("hang_deadline"));
}

#[test]
fn a_hung_server_past_the_request_timeout_loses_nothing() {
    assert_zero_loss(&run("hang_timeout"));
}

#[test]
fn connection_resets_are_retried() {
    assert_zero_loss(&run("reset"));
}

#[test]
fn unauthorized_is_not_retried_reported_once_and_counted() {
    let r = run("unauthorized");
    assert_eq!(r["received"], "0");
    assert_eq!(r["dropped"], r["produced"]);
}

#[test]
fn a_full_queue_counts_its_drops_exactly() {
    let r = run("full_queue");
    let produced: u64 = r["produced"].parse().unwrap();
    let received: u64 = r["received"].parse().unwrap();
    let dropped: u64 = r["dropped"].parse().unwrap();
    assert_eq!(received + dropped, produced);
}

#[test]
fn a_full_queue_overflows_to_the_spool() {
    let r = run("full_queue_spool");
    let produced: u64 = r["produced"].parse().unwrap();
    let received: u64 = r["received"].parse().unwrap();
    let dropped: u64 = r["dropped"].parse().unwrap();
    assert_eq!(received + dropped, produced);
    assert_eq!(r["duplicates"], "0");
}

#[test]
fn a_tight_memory_budget_spools_or_counts_what_does_not_fit() {
    let r = run("tight_budget");
    let produced: u64 = r["produced"].parse().unwrap();
    let received: u64 = r["received"].parse().unwrap();
    let dropped: u64 = r["dropped"].parse().unwrap();
    assert_eq!(received + dropped, produced, "{r:?}");
    assert_eq!(r["duplicates"], "0");
}

#[test]
fn row_updates_held_while_the_server_hangs_stay_within_the_budget() {
    let r = run("tight_updates");
    let pending: u64 = r["pending_during"].parse().unwrap();
    assert!(pending < 1000, "{r:?}");
}

#[test]
fn rows_held_at_the_shutdown_deadline_are_all_spooled() {
    let r = run("hang_shutdown_spool");
    assert_eq!(r["deadline"], "0", "{r:?}");
}

#[test]
fn rows_of_one_config_share_requests() {
    assert_zero_loss(&run("batching"));
}

#[test]
fn rows_without_a_pipeline_are_dropped_and_counted() {
    assert_zero_loss(&run("no_pipeline"));
}

/// Row updates are written ahead too: killed with updates queued, held behind their
/// rows and in flight, the next process sends every one, each after its row.
#[test]
fn write_ahead_keeps_row_updates_through_kill_9() {
    // One request is acknowledged, then the server hangs.
    let server = TestServer::start_with(Behavior::script([Action::ok()]).then(Action::Hang));
    let dir = temp_dir("kill9-updates");
    let url = server.url();
    let dir_s = dir.to_string_lossy().to_string();
    let envs = [
        ("TEST_SERVER_URL", url.as_str()),
        ("TEST_SPOOL_DIR", dir_s.as_str()),
    ];
    let mut victim = child::spawn("kill_updates_produce", &envs);
    let mut lines = BufReader::new(victim.stdout.take().unwrap()).lines();
    let produced = loop {
        let line = lines.next().expect("the child's output").unwrap();
        if let Some((_, n)) = line.split_once("PRODUCED ") {
            break n.parse::<usize>().unwrap();
        }
    };
    assert!(server.wait_for_blocking(Duration::from_secs(10), |r| r.len() >= 3));
    victim.kill().unwrap();
    victim.wait().unwrap();
    let rows_before = server.inference_ids().len();
    assert!(rows_before > 0 && rows_before < produced, "{rows_before}");

    server.set_behavior(Behavior::ok());
    // Every row not acknowledged, and every update.
    let expect = (produced - rows_before + produced).to_string();
    let mut envs = envs.to_vec();
    envs.push(("TEST_EXPECT", expect.as_str()));
    let out = child::run("kill_updates_restart", &envs);
    eprintln!("kill_9 updates: {:?}", results(&out));

    let ids: BTreeSet<String> = (0..produced).map(|i| format!("ku-{i}")).collect();
    assert_eq!(server.inference_ids(), ids, "every row");
    let requests = server.requests();
    let processed = |r: &&openlayer_trace_tests::RecordedRequest| r.outcome.is_processed();
    let updates: Vec<(usize, String)> = requests
        .iter()
        .filter(processed)
        .filter(|r| r.method == "PUT" && r.path.ends_with("/rows"))
        .map(|r| (r.seq, r.query_param("inferenceId").unwrap().to_string()))
        .collect();
    let updated: BTreeSet<String> = updates.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(updated, ids, "every update");
    for (seq, id) in &updates {
        let row_seq = requests
            .iter()
            .filter(processed)
            .filter(|r| r.is_data_stream() && r.inference_ids().contains(id))
            .map(|r| r.seq)
            .min()
            .unwrap();
        assert!(row_seq < *seq, "the update of {id} came before its row");
    }
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// Row updates written ahead and delivered are acknowledged: nothing is left in the
/// spool to be replayed (and sent twice) by the next process.
#[test]
fn write_ahead_row_updates_delivered_leave_the_spool_empty() {
    let server = TestServer::start();
    let dir = temp_dir("write-ahead-updates");
    let url = server.url();
    let dir_s = dir.to_string_lossy().to_string();
    child::run(
        "write_ahead_updates",
        &[
            ("TEST_SERVER_URL", url.as_str()),
            ("TEST_SPOOL_DIR", dir_s.as_str()),
        ],
    );
    let puts = server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.outcome.is_processed())
        .count();
    assert_eq!(puts, 5);
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

/// An update written ahead and left in the spool (a 404: its row was not visible yet)
/// keeps the next update of its row behind it: the platform ends with the last value.
#[test]
fn write_ahead_update_left_in_the_spool_keeps_the_next_one_behind_it() {
    let first_put = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = TestServer::start_with(Behavior::always(Action::handler(move |r| {
        if r.method == "PUT" && first_put.swap(false, std::sync::atomic::Ordering::SeqCst) {
            openlayer_trace_tests::Response::status(404)
        } else {
            openlayer_trace_tests::Response::ok()
        }
    })));
    let dir = temp_dir("write-ahead-update-404");
    let url = server.url();
    let dir_s = dir.to_string_lossy().to_string();
    child::run(
        "write_ahead_update_404",
        &[
            ("TEST_SERVER_URL", url.as_str()),
            ("TEST_SPOOL_DIR", dir_s.as_str()),
        ],
    );
    let labels: Vec<i64> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.outcome.is_processed())
        .map(|r| r.json.as_ref().unwrap()["row"]["label"].as_i64().unwrap())
        .collect();
    assert_eq!(labels, [1, 2], "the updates in the order they were made");
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}

#[test]
fn write_ahead_loses_nothing_to_kill_9() {
    // Two requests are acknowledged, then the server hangs: the process is killed with
    // rows in flight, in the queue and in batches.
    let server =
        TestServer::start_with(Behavior::script([Action::ok(), Action::ok()]).then(Action::Hang));
    let dir = temp_dir("kill9");
    let url = server.url();
    let dir_s = dir.to_string_lossy().to_string();
    let envs = [
        ("TEST_SERVER_URL", url.as_str()),
        ("TEST_SPOOL_DIR", dir_s.as_str()),
    ];
    let mut victim = child::spawn("kill_produce", &envs);
    let mut lines = BufReader::new(victim.stdout.take().unwrap()).lines();
    let produced = loop {
        let line = lines.next().expect("the child's output").unwrap();
        if let Some((_, n)) = line.split_once("PRODUCED ") {
            break n.parse::<usize>().unwrap();
        }
    };
    assert!(server.wait_for_blocking(Duration::from_secs(10), |r| r.len() >= 4));
    victim.kill().unwrap();
    victim.wait().unwrap();
    let acked = server.inference_ids().len();
    assert!(acked > 0 && acked < produced, "{acked}");
    assert!(!spool_files(&dir).is_empty());

    server.set_behavior(Behavior::ok());
    let expect = (produced - acked).to_string();
    let mut envs = envs.to_vec();
    envs.push(("TEST_EXPECT", expect.as_str()));
    let out = child::run("kill_restart", &envs);
    let r = results(&out);
    let ids: BTreeSet<String> = (0..produced).map(|i| format!("k9-{i}")).collect();
    let got = server.inference_ids();
    eprintln!(
        "kill_9: produced={produced} acked_before_kill={acked} replayed_after_restart={} \
         received={} duplicates={}",
        r["replayed"],
        got.intersection(&ids).count(),
        duplicates(&server)
    );
    assert_eq!(got, ids, "nothing lost");
    assert_eq!(duplicates(&server), 0, "nothing twice");
    assert!(spool_files(&dir).is_empty(), "{:?}", spool_files(&dir));
}
