//! The embedded default: with no API key, traces go to a local JSONL file of data-stream
//! request bodies. Configuration is global, so each scenario runs in a child process of
//! this test binary with its own environment.

use std::path::Path;
use std::time::{Duration, Instant};

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::child::{self, temp_dir};
use serde_json::Value;

#[trace]
fn leaf(i: u32) -> u32 {
    i
}

#[trace]
fn root(i: u32) -> u32 {
    update_current_trace!(inference_id = format!("id-{i}"));
    leaf(i) + leaf(i)
}

/// Counts its serializations.
struct Counted;

static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl serde::Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.serialize_str("documents")
    }
}

/// Its documents are left out of the inputs (large), but are the row's context.
#[trace(skip(docs), context = docs)]
fn answer_later(docs: Counted) -> impl std::future::Future<Output = u32> {
    let _ = &docs;
    async move { 1 }
}

#[trace]
fn later(n: u32) -> impl std::future::Future<Output = u32> {
    async move { n + 1 }
}

/// Runs one scenario of this binary in a child process, with `envs` (paths) set and no
/// other of the SDK's variables.
fn run_child(scenario: &str, envs: &[(&str, &Path)]) -> std::process::Output {
    let envs: Vec<(&str, &str)> = envs
        .iter()
        .map(|(k, v)| (*k, v.to_str().expect("a UTF-8 path")))
        .collect();
    child::run(scenario, &envs)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The child side: one scenario, in a process started by one of the tests below.
#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        // No init call at all: configured lazily from the environment.
        "lazy" => {
            for i in 0..3 {
                root(i);
            }
            let report = openlayer_trace::flush(Duration::from_secs(5)).unwrap();
            assert!(report.complete);
            assert_eq!(report.stats.written, 3);
        }
        // An explicit `init` that fails (here its spool directory is a file): the first
        // traced call does not configure the SDK from the environment instead, which
        // would send rows without the mask the caller asked for. Tracing stays off.
        "failed_init" => {
            let not_a_dir = std::env::temp_dir()
                .join(format!("openlayer-trace-not-a-dir-{}", std::process::id()));
            std::fs::write(&not_a_dir, "a file").unwrap();
            let config = Config::builder()
                .api_key("sk-test")
                .base_url("http://127.0.0.1:9/v1")
                .inference_pipeline_id("pipe-1")
                .spool_dir(&not_a_dir)
                .mask(|row| {
                    row.remove("secret");
                })
                .build()
                .unwrap();
            assert!(openlayer_trace::init(config).is_err());
            root(1);
            assert!(!openlayer_trace::is_recording());
            assert!(openlayer_trace::flush(Duration::from_secs(1)).is_err());
            assert_eq!(openlayer_trace::stats().enqueued, 0);
            std::fs::remove_file(&not_a_dir).unwrap();
        }
        // Values read from a CRLF env file: the `\r` is not part of them.
        "crlf_pipeline" => {
            let config = Config::from_env().unwrap();
            assert_eq!(config.inference_pipeline_id(), Some("pipe-1"));
            assert_eq!(config.api_key().map(|k| k.expose()), Some("sk-crlf"));
            assert_eq!(config.base_url(), "http://127.0.0.1:9/v1");
            let file = config.trace_file().to_str().unwrap();
            assert!(file.ends_with("crlf.jsonl"), "{file:?}");
            let spool = config.spool_dir().unwrap().to_str().unwrap();
            assert!(spool.ends_with("crlf-spool"), "{spool:?}");
        }
        // The guard flushes on drop, with no runtime anywhere.
        "guard" => {
            {
                let _guard = openlayer_trace::init_from_env().unwrap();
                for i in 0..50 {
                    root(i);
                }
            }
            // After the guard has shut the pipeline down, traces are not recorded.
            root(99);
            assert!(openlayer_trace::flush(Duration::from_secs(1)).is_err());
        }
        // A tiny queue: overflow is dropped and counted, never blocking.
        "overflow" => {
            let config = Config::builder().queue_capacity(1).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            let start = Instant::now();
            for i in 0..20_000 {
                root(i);
            }
            let elapsed = start.elapsed();
            let report = guard.shutdown(Duration::from_secs(10)).unwrap();
            let s = &report.stats;
            assert!(report.complete);
            assert_eq!(s.enqueued, 20_000);
            assert_eq!(s.written + s.dropped.queue_full, 20_000, "{s:?}");
            assert!(s.dropped.queue_full > 0, "{s:?}");
            assert_eq!(s.pending, 0);
            println!("WRITTEN={} ELAPSED_MS={}", s.written, elapsed.as_millis());
        }
        "disabled" => {
            for i in 0..3 {
                root(i);
            }
            assert!(openlayer_trace::current_inference_id().is_none());
            let stats = openlayer_trace::stats();
            assert_eq!(stats.enqueued, 0);
            // Tracing off: the row options of a function returning a future are not taken
            // (serialized) at the call either.
            drop(answer_later(Counted));
            assert_eq!(SERIALIZED.load(std::sync::atomic::Ordering::SeqCst), 0);
            // A future made here, while nothing is recorded, and polled under a test
            // capture (which records whatever the configuration): its step has the
            // arguments it was called with, as an `async fn`'s has.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let made = later(5);
            let (out, traces) = rt.block_on(openlayer_trace::testing::capture_async(made));
            assert_eq!(out, 6);
            assert_eq!(traces[0].root()["inputs"], serde_json::json!({"n": 5}));
            // Made and polled under the capture, which records whatever the
            // configuration: its row options are taken, as its inputs are.
            let (_, traces) = rt.block_on(openlayer_trace::testing::capture_async(async {
                answer_later(Counted).await
            }));
            assert_eq!(traces[0].row()["context"], "documents");
        }
        // A base URL in the environment without its scheme, and an OTLP endpoint the
        // client does not use: an explicit URL replaces the first, the second is no
        // error; with neither fixed, `build` names the bad URL.
        "client_env" => {
            let client = openlayer_trace::Client::builder()
                .base_url("http://127.0.0.1:9/v1")
                .build()
                .unwrap();
            assert!(!client.is_local(), "the key from the environment is kept");
            let e = openlayer_trace::Client::builder().build().unwrap_err();
            assert!(e.to_string().contains("api.openlayer.com/v1"), "{e}");
        }
        // A key, a spool directory and a trace file in the environment: a builder without
        // it reads none of them.
        "without_env" => {
            assert!(Config::builder().build().unwrap().api_key().is_some());
            let c = Config::builder_without_env().build().unwrap();
            assert!(c.api_key().is_none());
            assert!(c.spool_dir().is_none());
            assert!(c.inference_pipeline_id().is_none());
            assert_ne!(
                c.trace_file(),
                std::path::Path::new("/nowhere/traces.jsonl")
            );
        }
        // The trace file's directory is a regular file: `init` says so.
        "unwritable_file" => {
            let path = std::env::var("TRACES_UNDER_A_FILE").unwrap();
            let e = openlayer_trace::init(
                Config::builder_without_env()
                    .trace_file(&path)
                    .build()
                    .unwrap(),
            )
            .expect_err("init refuses a trace file it cannot create");
            assert!(matches!(e, openlayer_trace::Error::Io(_)), "{e}");
            assert!(e.to_string().contains(&path), "{e}");
        }
        // The trace file is a FIFO nobody reads: `init` returns at once.
        "fifo_file" => {
            let path = std::env::var("TRACES_TO_A_FIFO").unwrap();
            let guard = openlayer_trace::init(
                Config::builder_without_env()
                    .trace_file(&path)
                    .build()
                    .unwrap(),
            )
            .unwrap();
            child::report(&[("init", "returned".into())]);
            // The worker waits for a reader; the process ends without one.
            std::mem::forget(guard);
        }
        // A base URL that cannot be used: the first traced call says so on stderr.
        "bad_env" => {
            assert_eq!(root(1), 2);
            assert!(!openlayer_trace::is_recording());
        }
        // Stderr is a closed pipe: the notices of the first traced call must not panic.
        "broken_stderr" => {
            assert_eq!(root(1), 2);
            assert_eq!(root(2), 4);
            let report = openlayer_trace::flush(Duration::from_secs(5)).unwrap();
            child::report(&[("written", report.stats.written.to_string())]);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn a_builder_without_the_environment_reads_none_of_it() {
    child::run(
        "without_env",
        &[
            ("OPENLAYER_API_KEY", "sk-from-env"),
            ("OPENLAYER_INFERENCE_PIPELINE_ID", "pipe-from-env"),
            ("OPENLAYER_SPOOL_DIR", "/nowhere/spool"),
            ("OPENLAYER_TRACE_FILE", "/nowhere/traces.jsonl"),
        ],
    );
}

#[test]
fn init_refuses_a_local_trace_file_it_cannot_create() {
    let dir = temp_dir("unwritable-file");
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let traces = file.join("traces.jsonl");
    child::run(
        "unwritable_file",
        &[("TRACES_UNDER_A_FILE", traces.to_str().unwrap())],
    );
}

/// A FIFO named as the trace file is written through (never bounded nor rotated): `init`
/// does not open it to check it, as opening a FIFO to write waits for its reader.
#[test]
fn init_does_not_wait_for_the_reader_of_a_fifo_trace_file() {
    let dir = temp_dir("fifo-file");
    let fifo = dir.join("traces.fifo");
    child::fifo(&fifo);
    let mut child = child::command("fifo_file", &[("TRACES_TO_A_FIFO", fifo.to_str().unwrap())])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("init waited for a reader of the FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("RESULT init=returned"));
}

/// Configured lazily from an environment that cannot be used (a base URL without a
/// scheme): tracing is off, and stderr says why (no `tracing` subscriber may be there to).
#[test]
fn an_unusable_environment_is_told_on_stderr() {
    let out = child::run(
        "bad_env",
        &[
            ("OPENLAYER_API_KEY", "sk-secret-key"),
            ("OPENLAYER_BASE_URL", "api.example"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("openlayer-trace: tracing is off"),
        "{stderr}"
    );
    assert!(stderr.contains("base URL"), "{stderr}");
    assert!(!stderr.contains("sk-secret-key"), "{stderr}");

    // An OTLP endpoint without a scheme is named without its query (a token there), and a
    // credential written as a header name (`Authorization: Basic ..=`) is not shown.
    for (name, value) in [
        (
            "OPENLAYER_OTLP_ENDPOINT",
            "otlp.example/v1/traces?api_key=tok-secret",
        ),
        (
            "OPENLAYER_OTLP_HEADERS",
            "Authorization: Basic tok-secret==",
        ),
    ] {
        let mut envs = vec![("OPENLAYER_API_KEY", "sk-secret-key"), (name, value)];
        if name == "OPENLAYER_OTLP_HEADERS" {
            envs.push(("OPENLAYER_OTLP_ENDPOINT", "http://127.0.0.1:9/v1/traces"));
        }
        let out = child::run("bad_env", &envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("openlayer-trace: tracing is off"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("tok-secret"), "{name}: {stderr}");
    }
}

/// With stderr a pipe nobody reads any more, the notice of the first traced call (the
/// local file's, and the one saying traces go nowhere) is not written, and nothing panics.
#[test]
fn a_closed_stderr_never_makes_a_traced_call_panic() {
    let file = temp_dir("broken-stderr").join("traces.jsonl");
    let file = file.to_str().unwrap();
    for (envs, written) in [(vec![("OPENLAYER_TRACE_FILE", file)], "2"), (vec![], "0")] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = child::command("broken_stderr", &envs)
            .stderr(std::process::Stdio::from(writer))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed;"),
            "{envs:?}: {stdout}"
        );
        assert_eq!(child::results(&out)["written"], written, "{envs:?}");
    }
}

#[test]
fn without_a_key_traces_go_to_the_local_file_lazily_with_a_notice() {
    let dir = temp_dir("lazy");
    let file = dir.join("traces.jsonl");
    let out = run_child("lazy", &[("OPENLAYER_TRACE_FILE", &file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("OPENLAYER_API_KEY is not set"))
        .collect();
    assert_eq!(notices.len(), 1, "one notice: {stderr}");
    assert!(
        notices[0].contains(&file.display().to_string()),
        "{}",
        notices[0]
    );
    let lines = lines(&file);
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        // Each line is a data-stream request body with its pipeline id.
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(line["pipelineId"].is_null());
        assert_eq!(line["config"]["inferenceIdColumnName"], "inferenceId");
        assert_eq!(line["rows"][0]["inferenceId"], format!("id-{i}"));
        assert_eq!(
            line["rows"][0]["steps"][0]["steps"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    let raw = std::fs::read_to_string(&file).unwrap();
    assert!(
        raw.starts_with("{\"pipelineId\":null,\"config\":{"),
        "{raw}"
    );
}

#[test]
fn the_guard_flushes_when_dropped_with_no_runtime() {
    let dir = temp_dir("guard");
    let file = dir.join("nested").join("traces.jsonl");
    let out = run_child(
        "guard",
        &[
            ("OPENLAYER_TRACE_FILE", &file),
            ("OPENLAYER_INFERENCE_PIPELINE_ID", Path::new("pipe-1")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("OPENLAYER_API_KEY is not set").count(),
        1,
        "{stderr}"
    );
    let lines = lines(&file);
    assert_eq!(lines.len(), 50);
    assert!(lines.iter().all(|l| l["pipelineId"] == "pipe-1"));
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = temp_dir("overflow");
    let file = dir.join("traces.jsonl");
    let out = run_child("overflow", &[("OPENLAYER_TRACE_FILE", &file)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let written: usize = stdout
        .lines()
        .find_map(|l| l.split("WRITTEN=").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        lines(&file).len(),
        written,
        "every written trace is in the file"
    );
}

#[test]
fn a_failed_init_leaves_tracing_off_not_configured_from_the_environment() {
    let dir = temp_dir("failed-init");
    let file = dir.join("traces.jsonl");
    run_child("failed_init", &[("OPENLAYER_TRACE_FILE", &file)]);
    assert!(
        !file.exists(),
        "traces were written by a configuration from the environment"
    );
}

#[test]
fn values_from_the_environment_are_trimmed() {
    let dir = temp_dir("crlf");
    run_child(
        "crlf_pipeline",
        &[
            ("OPENLAYER_INFERENCE_PIPELINE_ID", Path::new("pipe-1\r")),
            ("OPENLAYER_API_KEY", Path::new("sk-crlf\r")),
            ("OPENLAYER_BASE_URL", Path::new("http://127.0.0.1:9/v1\r")),
            ("OPENLAYER_TRACE_FILE", &dir.join("crlf.jsonl\r")),
            ("OPENLAYER_SPOOL_DIR", &dir.join("crlf-spool\r")),
        ],
    );
}

#[test]
fn the_clients_explicit_settings_replace_bad_environment_values() {
    run_child(
        "client_env",
        &[
            ("OPENLAYER_API_KEY", Path::new("sk-env")),
            ("OPENLAYER_BASE_URL", Path::new("api.openlayer.com/v1")),
            ("OPENLAYER_OTLP_ENDPOINT", Path::new("collector:4318")),
        ],
    );
}

#[test]
fn disable_publish_turns_tracing_off() {
    let dir = temp_dir("disabled");
    let file = dir.join("traces.jsonl");
    run_child(
        "disabled",
        &[
            ("OPENLAYER_TRACE_FILE", &file),
            ("OPENLAYER_DISABLE_PUBLISH", Path::new("TRUE")),
        ],
    );
    assert!(!file.exists());
}
