//! Smaller reliability items: the data-stream path percent-encodes the pipeline id; a
//! failure to write the local file has a drop reason of its own; TLS roots that cannot be
//! loaded are an `init` error; a trace completed after shutdown is counted; a forked child
//! draws ids of its own.

use std::sync::mpsc;
use std::time::Duration;

use openlayer_trace::{Config, SpoolMode, trace, update_current_trace};
use openlayer_trace_tests::TestServer;
use openlayer_trace_tests::child::{self, temp_dir};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

/// A root that tells `started` it is open, then stays open until `go` says so.
#[trace(skip(started, go))]
fn held(started: mpsc::Sender<()>, go: mpsc::Receiver<()>) -> u8 {
    started.send(()).unwrap();
    go.recv().unwrap();
    1
}

/// Starts a trace before `shutdown` and completes it after: it is counted as dropped
/// (`shutdown`), and settled.
fn late_trace(config: Config) {
    let guard = openlayer_trace::init(config).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let t = std::thread::spawn(move || held(started_tx, go_rx));
    started.recv().unwrap();
    let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
    assert_eq!(s.enqueued, 0, "{s:?}");
    go.send(()).unwrap();
    t.join().unwrap();
    let s = openlayer_trace::stats();
    assert_eq!(s.enqueued, 1, "{s:?}");
    assert_eq!(s.dropped.shutdown, 1, "{s:?}");
    assert_eq!((s.sent, s.spooled, s.pending), (0, 0, 0), "{s:?}");
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        "path" => {
            let server = TestServer::start();
            let config = Config::builder()
                .api_key("sk-test-small")
                .base_url(server.url())
                .inference_pipeline_id("team a/pipe?1")
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            work("p-1".into());
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.sent, 1, "{s:?}");
            let r = &server.requests()[0];
            assert!(
                r.path
                    .ends_with("/inference-pipelines/team%20a%2Fpipe%3F1/data-stream"),
                "{}",
                r.path
            );
        }
        "torn" => {
            // The file may grow to 2,000 bytes (RLIMIT_FSIZE): the write that crosses it
            // fails partway, as on a full disk.
            // SAFETY: ignoring SIGXFSZ and lowering a limit of this process only.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 2000,
                    rlim_max: libc::RLIM_INFINITY,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            let dir = temp_dir("torn");
            let file = dir.join("traces.jsonl");
            let config = Config::builder().trace_file(&file).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            // One write per trace: those before the limit succeed, one fails partway.
            for i in 0..100 {
                work(format!("torn-{i:03}"));
                let _ = guard.flush(Duration::from_secs(5));
            }
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            let text = std::fs::read_to_string(&file).unwrap();
            // Whole lines only, and exactly those counted as written.
            assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
            assert!(!lines.is_empty() && lines.len() < 100, "{}", lines.len());
            assert_eq!(s.written, lines.len() as u64, "{s:?}");
            assert_eq!(s.written + s.dropped.local_file, 100, "{s:?}");
        }
        "unwritable" => {
            // The "file" is a directory: every write fails.
            let dir = temp_dir("unwritable");
            let config = Config::builder().trace_file(&dir).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            work("u-1".into());
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.dropped.local_file, 1, "{s:?}");
            assert_eq!(s.dropped.encoding, 0, "{s:?}");
        }
        "roots" => {
            // SSL_CERT_FILE and SSL_CERT_DIR name nothing: no root certificate loads.
            let https = Config::builder()
                .api_key("sk-test-roots")
                .base_url("https://127.0.0.1:9")
                .inference_pipeline_id("p")
                .build()
                .unwrap();
            let e = openlayer_trace::init(https).unwrap_err().to_string();
            assert!(e.contains("root certificates cannot be loaded"), "{e}");
            // Unverified HTTPS needs no roots.
            let unverified = Config::builder()
                .api_key("sk-test-roots")
                .base_url("https://127.0.0.1:9")
                .inference_pipeline_id("p")
                .verify_ssl(false)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(unverified).unwrap();
            guard.shutdown(Duration::from_secs(5)).unwrap();
        }
        "roots_lazy" => {
            // Configured lazily from the environment (no `init`): the roots are not checked
            // on the traced call, and the worker, which builds the HTTPS client, cannot
            // start. Every trace handed off is still settled, counted as dropped.
            const N: u64 = 2000;
            for i in 0..N {
                work(format!("lazy-{i}"));
            }
            let settled = child::wait_until(Duration::from_secs(20), || {
                let s = openlayer_trace::stats();
                s.enqueued == N && s.pending == 0
            });
            let s = openlayer_trace::stats();
            assert!(settled, "{s:?}");
            assert_eq!(s.dropped.shutdown, N, "{s:?}");
            assert_eq!(s.pending, 0, "{s:?}");
        }
        "roots_http" => {
            // A plain-HTTP endpoint needs no roots either.
            let server = TestServer::start();
            let config = Config::builder()
                .api_key("sk-test-roots")
                .base_url(server.url())
                .inference_pipeline_id("p")
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            work("r-1".into());
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.sent, 1, "{s:?}");
        }
        "late" => {
            let server = TestServer::start();
            late_trace(
                Config::builder()
                    .api_key("sk-test-late")
                    .base_url(server.url())
                    .inference_pipeline_id("p")
                    .build()
                    .unwrap(),
            );
            assert!(server.requests().is_empty());
        }
        "late_ahead" => {
            let server = TestServer::start();
            let dir = temp_dir("late-ahead");
            late_trace(
                Config::builder()
                    .api_key("sk-test-late")
                    .base_url(server.url())
                    .inference_pipeline_id("p")
                    .spool_dir(&dir)
                    .spool_mode(SpoolMode::WriteAhead)
                    .build()
                    .unwrap(),
            );
            let lines: usize = child::spool_files(&dir)
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
                .sum();
            assert_eq!(lines, 0, "nothing written ahead after shutdown");
        }
        #[cfg(unix)]
        "fork" => {
            use openlayer_trace::__bench::step_id;
            let draw =
                || -> Vec<String> { (0..4).map(|_| format!("{:032x}", step_id())).collect() };
            // This thread's generator is seeded before the fork, so the child inherits it.
            draw();
            let path = temp_dir("fork").join("child-ids");
            // SAFETY: the child only draws ids, writes a file and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let ok = std::fs::write(&path, draw().join("\n")).is_ok();
                // SAFETY: leaves the forked child without running the test harness's exit.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            assert!(pid > 0, "fork failed");
            let parent = draw();
            let mut status = 0;
            // SAFETY: waits for the child forked above.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            let child = std::fs::read_to_string(&path).unwrap();
            let child: Vec<&str> = child.lines().collect();
            assert_eq!(child.len(), 4);
            assert!(
                child.iter().all(|c| !parent.iter().any(|p| p == c)),
                "parent {parent:?}, child {child:?}"
            );
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn the_data_stream_path_percent_encodes_the_pipeline_id() {
    child::run("path", &[]);
}

#[test]
fn a_local_file_that_cannot_be_written_has_its_own_drop_reason() {
    child::run("unwritable", &[]);
}

const NO_ROOTS: [(&str, &str); 2] = [
    ("SSL_CERT_FILE", "/nonexistent/openlayer-trace-roots.pem"),
    ("SSL_CERT_DIR", "/nonexistent/openlayer-trace-roots"),
];

#[test]
fn tls_roots_that_cannot_be_loaded_are_an_init_error() {
    child::run("roots", &NO_ROOTS);
}

#[test]
fn a_worker_that_cannot_start_still_settles_every_trace() {
    let mut envs = NO_ROOTS.to_vec();
    envs.extend([
        ("OPENLAYER_API_KEY", "sk-test-roots"),
        ("OPENLAYER_BASE_URL", "https://127.0.0.1:9"),
        ("OPENLAYER_INFERENCE_PIPELINE_ID", "p"),
    ]);
    child::run("roots_lazy", &envs);
}

#[cfg(target_os = "linux")]
#[test]
fn a_write_that_fails_partway_leaves_whole_lines_and_true_counts() {
    child::run("torn", &[]);
}

#[test]
fn a_plain_http_endpoint_needs_no_tls_roots() {
    child::run("roots_http", &NO_ROOTS);
}

#[test]
fn a_trace_completed_after_shutdown_is_counted() {
    child::run("late", &[]);
}

#[test]
fn a_trace_completed_after_shutdown_is_not_written_ahead() {
    child::run("late_ahead", &[]);
}

#[cfg(unix)]
#[test]
fn a_forked_child_draws_ids_of_its_own() {
    child::run("fork", &[]);
}
