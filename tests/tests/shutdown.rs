//! Dropping the `Guard` flushes, under a current-thread runtime, a multi-thread runtime
//! and no runtime at all, and returns by its deadline even when the server hangs.
//! `OPENLAYER_DISABLE_PUBLISH` starts no thread and sends nothing. Each scenario runs in
//! a child process of this test binary (the configuration is global).

use std::time::{Duration, Instant};

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results, wait_until};
use openlayer_trace_tests::{Behavior, TestServer};

const KEY: &str = "sk-test-shutdown-0a1b2c3d4e5f";

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[trace]
async fn work_async(id: String) -> usize {
    tokio::task::yield_now().await;
    update_current_trace!(inference_id = id.clone());
    id.len()
}

fn config(server: &TestServer, shutdown: Duration) -> Config {
    Config::builder()
        .api_key(KEY)
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .retry_base_backoff(Duration::from_millis(10))
        .request_timeout(Duration::from_secs(30))
        .linger(Duration::from_millis(20))
        .shutdown_timeout(shutdown)
        .build()
        .unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn all_received(server: &TestServer, ids: &[String]) -> bool {
    let got = server.inference_ids();
    ids.iter().all(|id| got.contains(id))
}

/// Traces `ids` in the given flavour, then drops the guard in the same context; returns
/// how long the drop took.
fn trace_then_drop(flavor: &str, config: Config, ids: &[String]) -> Duration {
    let ids = ids.to_vec();
    match flavor {
        "none" => {
            let guard = openlayer_trace::init(config).unwrap();
            for id in ids {
                work(id);
            }
            let start = Instant::now();
            drop(guard);
            start.elapsed()
        }
        "current_thread" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let guard = openlayer_trace::init(config).unwrap();
                for id in ids {
                    work_async(id).await;
                }
                let start = Instant::now();
                drop(guard);
                start.elapsed()
            })
        }
        "multi_thread" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let guard = openlayer_trace::init(config).unwrap();
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| tokio::spawn(work_async(id)))
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let start = Instant::now();
                drop(guard);
                start.elapsed()
            })
        }
        other => panic!("unknown flavour {other}"),
    }
}

fn guard_drop(flavor: &str) {
    let server = TestServer::start();
    // The drop delivers everything before it returns.
    let delivered = ids(flavor, 30);
    trace_then_drop(flavor, config(&server, Duration::from_secs(5)), &delivered);
    assert!(all_received(&server, &delivered));
    // A hung server: the drop still returns by its deadline.
    server.set_behavior(Behavior::hang());
    let stuck = ids(&format!("{flavor}-hung"), 10);
    let took = trace_then_drop(flavor, config(&server, Duration::from_millis(300)), &stuck);
    report(&[
        ("flavor", flavor.to_string()),
        ("delivered_on_drop", delivered.len().to_string()),
        ("drop_with_hung_server_ms", took.as_millis().to_string()),
    ]);
    // 4x the 300 ms deadline (a loaded machine); the hung request alone would take 30 s.
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

/// Names of this process's threads.
#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn thread_names() -> Vec<String> {
    Vec::new()
}

fn ours(names: &[String]) -> Vec<&String> {
    // Thread names are cut to 15 bytes: `openlayer-trace-spool` shows as `openlayer-trace`.
    names
        .iter()
        .filter(|n| n.starts_with("openlayer-trace"))
        .collect()
}

/// Publishing off: with a key and a URL in the environment, nothing starts and nothing
/// is sent, lazily or through `init_from_env`.
fn disabled() {
    let threads_before = thread_names().len();
    for id in ids("lazy", 5) {
        work(id);
    }
    assert_eq!(openlayer_trace::stats().enqueued, 0);
    let guard = openlayer_trace::init_from_env().unwrap();
    for id in ids("init", 5) {
        work(id);
    }
    let r = guard.flush(Duration::from_secs(1)).unwrap();
    assert!(r.complete);
    assert_eq!(r.stats.enqueued, 0);
    // A new thread may not have named itself yet: count them too.
    let names = thread_names();
    assert!(ours(&names).is_empty(), "{names:?}");
    assert_eq!(names.len(), threads_before, "{names:?}");
    drop(guard);
    report(&[("threads", ours(&thread_names()).len().to_string())]);
}

/// The other side of `disabled`: with publishing on, the threads do exist (so that the
/// check above means something).
fn enabled_threads() {
    let guard = openlayer_trace::init_from_env().unwrap();
    work("on-0".into());
    if cfg!(target_os = "linux") {
        // A thread names itself once it runs.
        assert!(
            wait_until(Duration::from_secs(5), || !ours(&thread_names()).is_empty()),
            "{:?}",
            thread_names()
        );
    }
    assert!(guard.flush(Duration::from_secs(5)).unwrap().complete);
}

/// `shutdown_async` dropped after its first poll (a timeout or `select!` around it): the
/// shutdown it asked for goes on, and recording stops.
fn cancelled_shutdown() {
    let server = TestServer::start_with(Behavior::always(openlayer_trace_tests::Action::Hang));
    let guard = openlayer_trace::init(config(&server, Duration::from_secs(5))).unwrap();
    work("before".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            guard.shutdown_async(Duration::from_secs(5)),
        )
        .await;
        assert!(
            r.is_err(),
            "the server hangs: the shutdown is still waiting"
        );
    });
    assert!(!openlayer_trace::is_recording());
}

/// A child forked after `init`: its pipeline's threads are the parent's. It records
/// nothing and never waits for them (a flush or the guard's drop returns at once), until
/// it calls `init` itself. The parent goes on as before.
fn forked() {
    let dir = child::temp_dir("forked");
    let parent_file = dir.join("parent.jsonl");
    let child_file = dir.join("child.jsonl");
    let guard = openlayer_trace::init(
        Config::builder()
            .trace_file(&parent_file)
            .shutdown_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    )
    .unwrap();
    work("parent-before".into());
    // The parent's async waits started its timer thread, which the child does not have.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(
        rt.block_on(openlayer_trace::flush_async(Duration::from_secs(5)))
            .unwrap()
            .complete
    );
    drop(rt);
    // Open when the process forks: completed on both sides.
    let open = openlayer_trace::step("open across the fork").start();
    // SAFETY: the child only runs the checks below, then leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: a hang here ends the child (SIGALRM) instead of the test.
        unsafe { libc::alarm(20) };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(!openlayer_trace::is_recording());
            // Not queued where nothing drains it: dropped, counted.
            open.finish();
            assert_eq!(guard.stats().dropped.shutdown, 1);
            work("child-untraced".into());
            let started = Instant::now();
            assert!(openlayer_trace::flush(Duration::from_secs(5)).is_err());
            assert!(started.elapsed() < Duration::from_secs(1));
            let guard2 =
                openlayer_trace::init(Config::builder().trace_file(&child_file).build().unwrap())
                    .unwrap();
            assert!(started.elapsed() < Duration::from_secs(1), "init waited");
            work("child-traced".into());
            let r = guard2.shutdown(Duration::from_secs(5)).unwrap();
            assert_eq!(r.stats.written, 1, "{:?}", r.stats);
            // The parent's guard, copied into the child, drops at once.
            let started = Instant::now();
            drop(guard);
            assert!(started.elapsed() < Duration::from_secs(1));
            // The async waits have a timer here too: a flush a hung server keeps from
            // completing returns at its deadline.
            let server = TestServer::start_with(Behavior::hang());
            let guard3 = openlayer_trace::init(config(&server, Duration::from_secs(1))).unwrap();
            work("child-hung".into());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let r = rt.block_on(openlayer_trace::flush_async(Duration::from_millis(300)));
            assert!(!r.unwrap().complete);
            assert!(started.elapsed() < Duration::from_secs(5));
            drop(guard3);
        }))
        .is_ok();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status}"
    );
    work("parent-after".into());
    open.finish();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.written, 3, "{:?}", r.stats);
    let child_text = std::fs::read_to_string(&child_file).unwrap();
    assert!(child_text.contains("child-traced"), "{child_text}");
    assert!(!child_text.contains("child-untraced"), "{child_text}");
    let parent_text = std::fs::read_to_string(&parent_file).unwrap();
    assert!(!parent_text.contains("child-"), "{parent_text}");
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "drop_none" => guard_drop("none"),
        "drop_current_thread" => guard_drop("current_thread"),
        "drop_multi_thread" => guard_drop("multi_thread"),
        "disabled" => disabled(),
        "enabled_threads" => enabled_threads(),
        "cancelled_shutdown" => cancelled_shutdown(),
        "forked" => forked(),
        other => panic!("unknown scenario {other}"),
    }
}

fn run(scenario: &str) {
    let out = child::run(scenario, &[]);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn a_cancelled_shutdown_async_still_stops_recording() {
    run("cancelled_shutdown");
}

#[test]
fn a_forked_child_records_nothing_until_it_calls_init() {
    run("forked");
}

#[test]
fn dropping_the_guard_flushes_without_a_runtime() {
    run("drop_none");
}

#[test]
fn dropping_the_guard_flushes_under_a_current_thread_runtime() {
    run("drop_current_thread");
}

#[test]
fn dropping_the_guard_flushes_under_a_multi_thread_runtime() {
    run("drop_multi_thread");
}

#[test]
fn disable_publish_starts_no_thread_and_sends_nothing() {
    let server = TestServer::start();
    let url = server.url();
    let envs = [
        ("OPENLAYER_API_KEY", KEY),
        ("OPENLAYER_BASE_URL", url.as_str()),
        ("OPENLAYER_INFERENCE_PIPELINE_ID", "pipe-1"),
    ];
    let mut disabled = envs.to_vec();
    disabled.push(("OPENLAYER_DISABLE_PUBLISH", "true"));
    let out = child::run("disabled", &disabled);
    assert_eq!(results(&out)["threads"], "0");
    // The same environment without the switch does start threads and send.
    child::run("enabled_threads", &envs);
    assert!(wait_until(Duration::from_secs(20), || server
        .inference_ids()
        .contains("on-0")));
    // Anything the first child had sent would have come before: only the second's rows.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.inference_ids().iter().all(|id| id.starts_with("on-"))),
        "{requests:?}"
    );
}
