//! The `openlayer` binary, end to end, against a loopback mock of the platform.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-cli-test-secret";
const PIPELINE: &str = "00000000-0000-0000-0000-00000000000a";

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ol-cli-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with a clean Openlayer environment plus `env`.
/// The file is readable and writable by its owner only (on Unix).
fn assert_private(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is not private", path.display());
    }
}

async fn openlayer(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = command(args, env);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The binary with `args`, a clean Openlayer environment plus `env`.
fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openlayer"));
    cmd.args(args);
    for var in [
        "OPENLAYER_API_KEY",
        "OPENLAYER_BASE_URL",
        "OPENLAYER_INFERENCE_PIPELINE_ID",
        "OPENLAYER_TRACE_FILE",
        "OPENLAYER_DISABLE_PUBLISH",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn platform(server: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("OPENLAYER_API_KEY", KEY.to_string()),
        ("OPENLAYER_BASE_URL", format!("{}/v1", server.uri())),
    ]
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing stderr when it differs.
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
}

fn assert_stdout_has(o: &Output, text: &str) {
    let out = stdout(o);
    assert!(out.contains(text), "stdout lacks {text:?}:\n{out}");
}

fn assert_stderr_has(o: &Output, text: &str) {
    let err = stderr(o);
    assert!(err.contains(text), "stderr lacks {text:?}:\n{err}");
}

/// The path of one of `PIPELINE`'s endpoints, below `/v1`.
fn pipeline_path(endpoint: &str) -> String {
    format!("/v1/inference-pipelines/{PIPELINE}/{endpoint}")
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"success": true}))
}

fn body(r: &Request) -> Value {
    r.body_json().unwrap()
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

fn trace_line(pipeline: Option<&str>, id: &str) -> String {
    json!({
        "pipelineId": pipeline,
        "config": {"outputColumnName": "output", "inferenceIdColumnName": "inferenceId", "latencyColumnName": "latency"},
        "rows": [{
            "inferenceId": id,
            "latency": 12.5,
            "output": "Paris",
            "steps": [{
                "name": "main", "type": "user_call", "latency": 12.5,
                "steps": [
                    {"name": "retrieve_context", "type": "retriever", "latency": 3.25, "steps": []},
                    {"name": "generate_answer", "type": "chat_completion", "latency": 8.0, "steps": []}
                ]
            }]
        }]
    })
    .to_string()
}

fn update_line(pipeline: Option<&str>, id: &str) -> String {
    json!({
        "pipelineId": pipeline,
        "inferenceId": id,
        "row": {"groundTruth": "Paris"},
        "config": {"groundTruthColumnName": "groundTruth"}
    })
    .to_string()
}

// ---- show ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_trace_trees_and_update_summaries() {
    let dir = TempDir::new("show");
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{}\n",
            trace_line(Some("pipe-1"), "trace-1"),
            update_line(None, "trace-1")
        ),
    );
    let out = openlayer(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "trace trace-1 pipeline pipe-1 12.50 ms  (line 1)\n\
         \x20 main [user_call] 12.50 ms\n\
         \x20   retrieve_context [retriever] 3.25 ms\n\
         \x20   generate_answer [chat_completion] 8.00 ms\n\
         update trace-1 pipeline -: groundTruth=\"Paris\"  (line 2)\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_reports_bad_lines_and_fails() {
    let dir = TempDir::new("show-bad");
    let file = dir.file(
        "traces.jsonl",
        &format!("{}\nnot json\n", trace_line(None, "t1")),
    );
    let out = openlayer(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).starts_with("trace t1 pipeline -"),
        "{}",
        stdout(&out)
    );
    assert_stderr_has(&out, "line 2");

    let out = openlayer(
        &["show", dir.0.join("missing.jsonl").to_str().unwrap()],
        &[],
    )
    .await;
    assert_exit(&out, 2);
}

/// The last line of a file still being written (no newline yet, cut mid-way) is not an
/// error for show: the lines before it are shown, and it is named.
#[tokio::test(flavor = "multi_thread")]
async fn show_leaves_a_last_line_still_being_written() {
    let dir = TempDir::new("show-live");
    let whole = trace_line(None, "t2");
    let file = dir.file(
        "traces.jsonl",
        &format!("{}\n{}", trace_line(None, "t1"), &whole[..whole.len() / 2]),
    );
    let out = openlayer(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("trace t1"), "{}", stdout(&out));
    assert_stderr_has(&out, "line 2 is not complete yet");
}

/// A trace file saved with a byte order mark reads as without one.
#[tokio::test(flavor = "multi_thread")]
async fn show_and_push_skip_a_byte_order_mark() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("show-bom");
    let file = dir.file(
        "traces.jsonl",
        &format!("\u{feff}{}\n", trace_line(Some("pipe-a"), "t1")),
    );
    let out = openlayer(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("trace t1"), "{}", stdout(&out));
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 0);
    assert_eq!(row_ids(&requests(&server).await), ["t1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn show_reads_every_file_of_a_spool_directory() {
    let dir = TempDir::new("show-dir");
    dir.file("b.jsonl", &format!("{}\n", update_line(Some("p"), "t2")));
    dir.file("a.jsonl", &format!("{}\n", trace_line(Some("p"), "t1")));
    let out = openlayer(&["show", dir.0.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    let a = text.find("a.jsonl\ntrace t1 pipeline p").expect(&text);
    let b = text.find("b.jsonl\nupdate t2 pipeline p").expect(&text);
    assert!(a < b, "{text}");
}

/// In a directory, only trace files are read: `*.jsonl` and their rotations
/// (`*.jsonl.1`), not the progress, lock and failed-rows files the commands leave
/// beside them.
#[tokio::test(flavor = "multi_thread")]
async fn show_reads_only_the_trace_files_of_a_directory() {
    let dir = TempDir::new("show-dir-others");
    dir.file(
        "traces.jsonl",
        &format!("{}\n", trace_line(Some("p"), "t2")),
    );
    dir.file(
        "traces.jsonl.1",
        &format!("{}\n", trace_line(Some("p"), "t1")),
    );
    dir.file(
        "traces.jsonl.pushed",
        r#"{"version":1,"prefixLen":0,"prefixHash":"cbf29ce484222325","done":[]}"#,
    );
    dir.file("traces.jsonl.pushed.lock", "");
    dir.file("traces.jsonl.pushed.tmp", "{");
    dir.file("rows.failed.csv", "id,gt\na,1\n");
    dir.file("rows.failed.jsonl", "{\"id\": \"a\", \"gt\": 1}\n");
    dir.file("notes.txt", "not a trace\n");
    let out = openlayer(&["show", dir.0.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let text = stdout(&out);
    let shown: Vec<&str> = text.lines().filter(|l| l.starts_with("== ")).collect();
    assert_eq!(shown.len(), 2, "{text}");
    assert!(shown[0].ends_with("traces.jsonl"), "{text}");
    assert!(shown[1].ends_with("traces.jsonl.1"), "{text}");
    assert_eq!(text.matches("trace t").count(), 2, "{text}");
}

// ---- push ---------------------------------------------------------------------------

fn stream_ids(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.url.path().ends_with("/data-stream"))
        .map(|r| {
            body(r)["rows"][0]["inferenceId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_resumes_after_a_failure_without_duplicates() {
    let server = MockServer::start().await;
    // The third line is refused once.
    Mock::given(method("POST"))
        .and(body_string_contains("trace-3"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "temporarily refused"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/rows$"))
        .respond_with(ok())
        .mount(&server)
        .await;

    let dir = TempDir::new("push");
    let file = dir.file(
        "traces.jsonl",
        &[
            trace_line(Some("pipe-a"), "trace-1"),
            update_line(Some("pipe-a"), "trace-1"),
            trace_line(None, "trace-3"),
            update_line(None, "trace-3"),
            trace_line(Some("pipe-b"), "trace-5"),
        ]
        .join("\n"),
    );
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap() + "\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    // Lines without a pipeline need one: refused before anything is sent.
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--pipeline-id");
    assert!(requests(&server).await.is_empty());

    // First run: lines 1 and 2 go, line 3 is refused, push stops there.
    let out = openlayer(&["push", file_arg, "--pipeline-id", PIPELINE], &env).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "line 3 failed");
    assert_stderr_has(&out, "temporarily refused");
    let first = requests(&server).await;
    assert_eq!(first.len(), 3);
    assert_eq!(stream_ids(&first), ["trace-1", "trace-3"]);
    assert!(dir.0.join("traces.jsonl.pushed").exists());
    assert_private(&dir.0.join("traces.jsonl.pushed"));

    // Second run: only lines 3, 4 and 5.
    let out = openlayer(&["push", file_arg, "--pipeline-id", PIPELINE], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 3 line(s)");
    assert_stdout_has(&out, "2 line(s) already pushed");
    let all = requests(&server).await;
    let second = &all[first.len()..];
    assert_eq!(second.len(), 3);
    assert_eq!(stream_ids(second), ["trace-3", "trace-5"]);

    // Each line's pipeline: its own, or the flag's for pipeline-less lines.
    let paths: Vec<String> = all.iter().map(|r| r.url.path().to_string()).collect();
    assert_eq!(
        paths,
        [
            "/v1/inference-pipelines/pipe-a/data-stream".to_string(),
            "/v1/inference-pipelines/pipe-a/rows".to_string(),
            pipeline_path("data-stream"),
            pipeline_path("data-stream"),
            pipeline_path("rows"),
            "/v1/inference-pipelines/pipe-b/data-stream".to_string(),
        ]
    );
    // The update line went out as the wire format wants it.
    let update = &all[4];
    assert_eq!(update.url.query(), Some("inferenceId=trace-3"));
    assert_eq!(
        body(update),
        json!({"row": {"groundTruth": "Paris"}, "config": {"groundTruthColumnName": "groundTruth"}})
    );
    // The data-stream line went out with its config, minus the pipelineId.
    assert_eq!(
        body(&all[0])["config"],
        json!({"outputColumnName": "output", "inferenceIdColumnName": "inferenceId", "latencyColumnName": "latency"})
    );
    assert!(body(&all[0]).get("pipelineId").is_none());

    // Third run: nothing left; appended lines are picked up.
    let out = openlayer(&["push", file_arg, "--pipeline-id", PIPELINE], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 0 line(s)");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(
        &mut f,
        format!("{}\n", trace_line(Some("pipe-a"), "trace-6")).as_bytes(),
    )
    .unwrap();
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    let all = requests(&server).await;
    assert_eq!(all.len(), 7);
    assert_eq!(stream_ids(&all[6..]), ["trace-6"]);

    // A file rewritten under the progress file is refused rather than half-skipped.
    std::fs::write(&file, format!("{}\n", trace_line(Some("pipe-a"), "other"))).unwrap();
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "has changed");
    assert_eq!(requests(&server).await.len(), 7);
}

/// Every row's inference id, request by request: `(path, ids)`.
fn stream_batches(reqs: &[Request]) -> Vec<(String, Vec<String>)> {
    reqs.iter()
        .map(|r| {
            let ids = if r.url.path().ends_with("/data-stream") {
                body(r)["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|row| row["inferenceId"].as_str().unwrap().to_string())
                    .collect()
            } else {
                vec![r.url.query().unwrap_or_default().to_string()]
            };
            (r.url.path().to_string(), ids)
        })
        .collect()
}

fn ids(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("trace-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_batches_consecutive_lines_and_keeps_updates_behind_their_rows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ok())
        .mount(&server)
        .await;

    // 1,200 traces of pipe-a, an update of trace-10 after the 700th, and two traces of
    // pipe-b at the end.
    let mut lines: Vec<String> = (1..=700)
        .map(|i| trace_line(Some("pipe-a"), &format!("trace-{i}")))
        .collect();
    lines.push(update_line(Some("pipe-a"), "trace-10"));
    lines.extend((701..=1200).map(|i| trace_line(Some("pipe-a"), &format!("trace-{i}"))));
    lines.extend((1201..=1202).map(|i| trace_line(Some("pipe-b"), &format!("trace-{i}"))));
    let dir = TempDir::new("push-batches");
    let file = dir.file("traces.jsonl", &(lines.join("\n") + "\n"));
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 1203 line(s) (1202 row(s), 1 update(s))");

    // At most 500 rows a request; the update goes after the rows before it, and a new
    // pipeline starts a new request.
    let a = "/v1/inference-pipelines/pipe-a/data-stream".to_string();
    let b = "/v1/inference-pipelines/pipe-b/data-stream".to_string();
    assert_eq!(
        stream_batches(&requests(&server).await),
        [
            (a.clone(), ids(1..=500)),
            (a.clone(), ids(501..=700)),
            (
                "/v1/inference-pipelines/pipe-a/rows".to_string(),
                vec!["inferenceId=trace-10".to_string()]
            ),
            (a.clone(), ids(701..=1200)),
            (b, ids(1201..=1202)),
        ]
    );
    // Each request carries its lines' config once.
    let first = &requests(&server).await[0];
    assert_eq!(
        body(first)["config"],
        json!({"outputColumnName": "output", "inferenceIdColumnName": "inferenceId", "latencyColumnName": "latency"})
    );

    // Everything was recorded as sent: a rerun sends nothing.
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 0 line(s)");
    assert_stdout_has(&out, "1203 line(s) already pushed");
    assert_eq!(requests(&server).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_sends_a_refused_batch_again_line_by_line() {
    let server = MockServer::start().await;
    // Any request carrying trace-3 is refused twice: the batch, then the line alone.
    Mock::given(method("POST"))
        .and(body_string_contains("\"trace-3\""))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"error": "bad row"})))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;

    let lines: Vec<String> = (1..=5)
        .map(|i| trace_line(Some("pipe-a"), &format!("trace-{i}")))
        .collect();
    let dir = TempDir::new("push-refused");
    let file = dir.file("traces.jsonl", &(lines.join("\n") + "\n"));
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    // The batch is refused; its lines go one by one until the refused one.
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 1);
    assert_stdout_has(&out, "pushed 2 line(s) (2 row(s), 0 update(s))");
    assert_stderr_has(&out, "line 3 failed");
    assert_stderr_has(&out, "bad row");
    assert_stderr_has(&out, "2 line(s) after it not sent");
    let a = "/v1/inference-pipelines/pipe-a/data-stream".to_string();
    assert_eq!(
        stream_batches(&requests(&server).await),
        [
            (a.clone(), ids(1..=5)),
            (a.clone(), ids(1..=1)),
            (a.clone(), ids(2..=2)),
            (a.clone(), ids(3..=3)),
        ]
    );

    // A rerun sends the rest, together, and nothing twice.
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 3 line(s)");
    assert_stdout_has(&out, "2 line(s) already pushed");
    let all = requests(&server).await;
    assert_eq!(stream_batches(&all[4..]), [(a, ids(3..=5))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_stops_at_a_batch_the_server_fails_without_splitting_it() {
    let server = MockServer::start().await;
    // A server error (after the client's retries): no point sending the lines apart.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": "down"})))
        .mount(&server)
        .await;
    let lines: Vec<String> = (1..=4)
        .map(|i| trace_line(Some("pipe-a"), &format!("trace-{i}")))
        .collect();
    let dir = TempDir::new("push-down");
    let file = dir.file("traces.jsonl", &(lines.join("\n") + "\n"));
    let env = platform(&server);

    let out = openlayer(&["push", file.to_str().unwrap()], &env).await;
    assert_exit(&out, 1);
    assert_stdout_has(&out, "pushed 0 line(s)");
    assert_stderr_has(&out, "line 1 failed");
    assert_stderr_has(&out, "3 line(s) after it not sent");
    let reqs = requests(&server).await;
    assert!(
        reqs.iter()
            .all(|r| body(r)["rows"].as_array().unwrap().len() == 4),
        "only the whole batch was sent: {:?}",
        stream_batches(&reqs)
    );
    assert!(!dir.0.join("traces.jsonl.pushed").exists());
}

/// The line numbers a progress file records as sent.
fn pushed_lines(progress: &Path) -> Value {
    let state: Value = serde_json::from_slice(&std::fs::read(progress).unwrap()).unwrap();
    state["done"].clone()
}

/// A row update answered 404 right after this push sent its row (not visible on the
/// platform yet) is tried again; a 404 for a row this push did not send stops it.
#[tokio::test(flavor = "multi_thread")]
async fn push_tries_an_update_again_when_the_row_it_just_sent_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(query_param("inferenceId", "trace-1"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "no such row"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(query_param("inferenceId", "trace-1"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(query_param("inferenceId", "elsewhere"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "no such row"})))
        .mount(&server)
        .await;

    let dir = TempDir::new("push-not-visible");
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{}\n",
            trace_line(Some("pipe-a"), "trace-1"),
            update_line(Some("pipe-a"), "trace-1")
        ),
    );
    let env = platform(&server);
    let out = openlayer(&["push", file.to_str().unwrap()], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 2 line(s) (1 row(s), 1 update(s))");
    let puts: Vec<String> = requests(&server)
        .await
        .iter()
        .filter(|r| r.method.as_str() == "PUT")
        .map(|r| r.url.query().unwrap_or_default().to_string())
        .collect();
    assert_eq!(puts, ["inferenceId=trace-1", "inferenceId=trace-1"]);
    assert_eq!(
        pushed_lines(&dir.0.join("traces.jsonl.pushed")),
        json!([[1, 2]])
    );

    // An update of a row this push did not send: its 404 stops the push at once.
    let other = dir.file(
        "other.jsonl",
        &format!(
            "{}\n{}\n",
            trace_line(Some("pipe-a"), "trace-2"),
            update_line(Some("pipe-a"), "elsewhere")
        ),
    );
    let out = openlayer(&["push", other.to_str().unwrap()], &env).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "line 2 failed");
    let elsewhere = requests(&server)
        .await
        .iter()
        .filter(|r| r.url.query() == Some("inferenceId=elsewhere"))
        .count();
    assert_eq!(elsewhere, 1);
    assert_eq!(
        pushed_lines(&dir.0.join("other.jsonl.pushed")),
        json!([[1, 1]])
    );
}

/// A line that cannot be read (torn by a killed writer) is named, and the push fails,
/// once: it is recorded as skipped, and a rerun neither names it again nor fails.
#[tokio::test(flavor = "multi_thread")]
async fn push_reports_an_unreadable_line_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-torn");
    let torn = trace_line(Some("pipe-a"), "torn");
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{}\n{}\n",
            trace_line(Some("pipe-a"), "trace-1"),
            &torn[..torn.len() / 2],
            trace_line(Some("pipe-a"), "trace-3")
        ),
    );
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "line 2");
    assert_stderr_has(&out, "1 line(s) could not be read and were skipped");
    assert_stdout_has(&out, "pushed 2 line(s) (2 row(s), 0 update(s))");
    // The line before the unreadable one is sent before it is recorded as skipped.
    assert_eq!(row_ids(&requests(&server).await), ["trace-1", "trace-3"]);
    assert_eq!(requests(&server).await.len(), 2);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 0 line(s)");
    assert_stdout_has(
        &out,
        "; 2 line(s) already pushed; 1 unreadable line(s) skipped before",
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(requests(&server).await.len(), 2);
}

/// A line refused just before an unreadable one: the unreadable one is not recorded as
/// skipped (that would move the pushed part of the file past the refused line), so the
/// refused line can be fixed in place and pushed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_line_refused_before_an_unreadable_one_can_be_fixed_in_place() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("\"trace-2\""))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"error": "bad row"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-refused-then-torn");
    let torn = trace_line(Some("pipe-a"), "torn");
    let text = |second: &str| {
        format!(
            "{}\n{}\n{}\n{}\n",
            trace_line(Some("pipe-a"), "trace-1"),
            trace_line(Some("pipe-a"), second),
            &torn[..torn.len() / 2],
            trace_line(Some("pipe-a"), "trace-4")
        )
    };
    let file = dir.file("traces.jsonl", &text("trace-2"));
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "line 2 failed");

    // Fixed in place (the same length: a new id of as many characters).
    std::fs::write(&file, text("fixed-2")).unwrap();
    let out = openlayer(&["push", file_arg], &env).await;
    assert!(
        !stderr(&out).contains("has changed"),
        "the fixed line was taken for a change of the pushed part: {}",
        stderr(&out)
    );
    assert_exit(&out, 1);
    assert_stderr_has(&out, "line 3");
    let sent = row_ids(&requests(&server).await);
    assert!(sent.contains(&"fixed-2".to_string()), "{sent:?}");
    assert!(sent.contains(&"trace-4".to_string()), "{sent:?}");
}

/// A row update's config goes out as written, keys the client does not model included
/// (as a data-stream line's config does).
#[tokio::test(flavor = "multi_thread")]
async fn push_sends_a_row_update_config_as_written() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/rows$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let config = json!({
        "groundTruthColumnName": "groundTruth",
        "humanFeedbackColumnName": "rating",
        "scoreColumnName": "score",
        "extra": {"nested": [1, 2]}
    });
    let line = json!({
        "pipelineId": "pipe-a",
        "inferenceId": "trace-1",
        "row": {"groundTruth": "Paris", "rating": 5, "score": 0.5},
        "config": config
    });
    let dir = TempDir::new("push-raw-update-config");
    let file = dir.file("traces.jsonl", &format!("{line}\n"));
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 0);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        body(&reqs[0]),
        json!({"row": {"groundTruth": "Paris", "rating": 5, "score": 0.5}, "config": config})
    );

    // The keys the client knows are still checked: a column they name must be in the row.
    let bad = json!({
        "pipelineId": "pipe-a",
        "inferenceId": "trace-2",
        "row": {"other": 1},
        "config": {"groundTruthColumnName": "groundTruth", "scoreColumnName": "score"}
    });
    let file = dir.file("bad.jsonl", &format!("{bad}\n"));
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "the row has no column `groundTruth`");
    assert_eq!(requests(&server).await.len(), 1);
}

/// A progress file of a version this push does not know (written by a newer one) is
/// refused before anything is sent, not read as if it were its own.
#[tokio::test(flavor = "multi_thread")]
async fn push_refuses_a_progress_file_of_a_newer_version() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-newer-progress");
    let file = dir.file(
        "traces.jsonl",
        &format!("{}\n", trace_line(Some("pipe-a"), "trace-1")),
    );
    let progress = dir.file(
        "traces.jsonl.pushed",
        r#"{"version":2,"prefixLen":0,"prefixHash":"cbf29ce484222325","done":[]}"#,
    );
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "traces.jsonl.pushed");
    assert_stderr_has(&out, "version 2");
    assert_stderr_has(&out, "newer");
    assert!(requests(&server).await.is_empty());
    // Left as it was.
    assert!(
        std::fs::read_to_string(&progress)
            .unwrap()
            .starts_with(r#"{"version":2,"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn push_without_a_key_is_a_usage_error() {
    let dir = TempDir::new("push-nokey");
    let file = dir.file("t.jsonl", &format!("{}\n", trace_line(Some("p"), "x")));
    let out = openlayer(&["push", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "OPENLAYER_API_KEY");
}

// ---- update -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn update_writes_failed_rows_to_a_file_that_can_be_fed_back() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(query_param("inferenceId", "missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "row not found"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .respond_with(ok())
        .mount(&server)
        .await;

    let dir = TempDir::new("update");
    let csv = dir.file(
        "feedback.csv",
        "inference_id,label,feedback,note\n\
         007,1,thumbs_up,\"fine, really\"\n\
         missing,0,thumbs_down,x\n\
         ,1,thumbs_up,no id\n\
         abc,0,,\n",
    );
    let mut env = platform(&server);
    env.push(("OPENLAYER_INFERENCE_PIPELINE_ID", PIPELINE.to_string()));
    let args = [
        "update",
        "--file",
        csv.to_str().unwrap(),
        "--inference-id-column",
        "inference_id",
        "--ground-truth-column",
        "label",
        "--human-feedback-column",
        "feedback",
        "--concurrency",
        "2",
    ];
    let out = openlayer(&args, &env).await;
    assert_exit(&out, 1);
    assert_stdout_has(&out, "updated 2 row(s)");
    assert_stderr_has(&out, "row not found");
    assert_stderr_has(&out, "no inference id");

    let failed = dir.0.join("feedback.failed.csv");
    assert_private(&failed);
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        "inference_id,label,feedback,note\nmissing,0,thumbs_down,x\n,1,thumbs_up,no id\n"
    );

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 3);
    let by_id = |id: &str| {
        reqs.iter()
            .find(|r| r.url.query() == Some(&format!("inferenceId={id}")))
            .map(body)
            .unwrap()
    };
    // ids stay text ("007"), other cells are typed; the id column is not in the row
    assert_eq!(
        by_id("007"),
        json!({
            "row": {"label": 1, "feedback": "thumbs_up", "note": "fine, really"},
            "config": {"groundTruthColumnName": "label", "humanFeedbackColumnName": "feedback"}
        })
    );
    assert_eq!(
        by_id("abc")["row"],
        json!({"label": 0, "feedback": null, "note": null})
    );

    // Fed back in, the row the server refused goes through; the one with no id cannot.
    let mut again = args.to_vec();
    again[2] = failed.to_str().unwrap();
    let out = openlayer(&again, &env).await;
    assert_exit(&out, 1);
    assert_stdout_has(&out, "updated 1 row(s)");
    assert_eq!(
        std::fs::read_to_string(dir.0.join("feedback.failed.failed.csv")).unwrap(),
        "inference_id,label,feedback,note\n,1,thumbs_up,no id\n"
    );
    assert_eq!(requests(&server).await.len(), 4);
}

/// `openlayer update --file FILE --inference-id-column inference_id` to the test pipeline.
async fn update_by_inference_id(file: &Path, server: &MockServer) -> Output {
    openlayer(
        &[
            "update",
            "--file",
            file.to_str().unwrap(),
            "--inference-id-column",
            "inference_id",
            "--pipeline-id",
            PIPELINE,
        ],
        &platform(server),
    )
    .await
}

/// A row that is not UTF-8 (a CSV saved as Windows-1252, say) fails on its own and goes
/// to the failures file byte for byte; the other rows are updated (the whole run stopped
/// at it before).
#[tokio::test(flavor = "multi_thread")]
async fn update_sends_the_other_rows_when_one_is_not_utf8() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("update-not-utf8");
    let csv = dir.0.join("labels.csv");
    std::fs::write(&csv, b"inference_id,note\na,fine\nb,caf\xe9\nc,ok\n").unwrap();
    let jsonl = dir.0.join("labels.jsonl");
    std::fs::write(
        &jsonl,
        b"{\"inference_id\":\"d\",\"note\":\"x\"}\n{\"inference_id\":\"e\",\"note\":\"caf\xe9\"}\r\n{\"inference_id\":\"f\",\"note\":\"y\"}\n",
    )
    .unwrap();
    for (file, failed, expected) in [
        (
            &csv,
            "labels.failed.csv",
            &b"inference_id,note\nb,caf\xe9\n"[..],
        ),
        (
            &jsonl,
            "labels.failed.jsonl",
            &b"{\"inference_id\":\"e\",\"note\":\"caf\xe9\"}\n"[..],
        ),
    ] {
        let out = update_by_inference_id(file, &server).await;
        assert_exit(&out, 1);
        assert_stdout_has(&out, "updated 2 row(s)");
        assert_stderr_has(&out, "not valid UTF-8");
        assert_eq!(std::fs::read(dir.0.join(failed)).unwrap(), expected);
    }
    let mut ids: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|r| r.url.query().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "inferenceId=a",
            "inferenceId=c",
            "inferenceId=d",
            "inferenceId=f"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_from_jsonl_succeeds_with_exit_zero() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .respond_with(ok())
        .expect(3)
        .mount(&server)
        .await;
    let dir = TempDir::new("update-jsonl");
    // Saved with a byte order mark, which is not part of the first row.
    let file = dir.file(
        "signals.jsonl",
        "\u{feff}{\"inference_id\":\"chat_1\",\"user_converted\":true,\"conversion_value\":99.99}\n\
         {\"inference_id\":\"chat_2\",\"user_converted\":false,\"pages_viewed\":3}\n\
         \n\
         {\"inference_id\":42,\"rating\":5}\n",
    );
    let out = update_by_inference_id(&file, &server).await;
    assert_exit(&out, 0);
    assert!(!dir.0.join("signals.failed.jsonl").exists());
    let mut seen: Vec<(String, Value)> = requests(&server)
        .await
        .iter()
        .map(|r| (r.url.query().unwrap().to_string(), body(r)))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("inferenceId=42".to_string(), json!({"row": {"rating": 5}})),
            (
                "inferenceId=chat_1".to_string(),
                json!({"row": {"user_converted": true, "conversion_value": 99.99}})
            ),
            (
                "inferenceId=chat_2".to_string(),
                json!({"row": {"user_converted": false, "pages_viewed": 3}})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_usage_errors_exit_2() {
    let server = MockServer::start().await;
    let dir = TempDir::new("update-usage");
    let csv = dir.file("f.csv", "id,gt\na,1\n");
    let csv_arg = csv.to_str().unwrap();
    // no pipeline
    let out = openlayer(
        &["update", "--file", csv_arg, "--inference-id-column", "id"],
        &platform(&server),
    )
    .await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--pipeline-id");
    // a column the file does not have
    let out = openlayer(
        &[
            "update",
            "--file",
            csv_arg,
            "--inference-id-column",
            "inference_id",
            "--pipeline-id",
            "p",
        ],
        &platform(&server),
    )
    .await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "`inference_id`");
    // a missing required flag (clap)
    let out = openlayer(&["update", "--file", csv_arg], &platform(&server)).await;
    assert_exit(&out, 2);
    assert!(requests(&server).await.is_empty());
}

// ---- stream -------------------------------------------------------------------------

/// `openlayer stream --file ROWS --config CONFIG --pipeline-id PIPELINE`, then `extra`.
fn stream_args<'a>(rows: &'a Path, config: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "stream",
        "--file",
        rows.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--pipeline-id",
        PIPELINE,
    ];
    args.extend(extra);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_sends_rows_in_batches() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data-stream")))
        .respond_with(ok())
        .expect(3)
        .mount(&server)
        .await;
    let dir = TempDir::new("stream");
    let config = dir.file(
        "config.json",
        r#"{"outputColumnName": "answer", "inputVariableNames": ["question"], "inferenceIdColumnName": "id"}"#,
    );
    let rows = dir.file(
        "rows.csv",
        "id,question,answer,latency\n\
         001,2+2?,4,12.5\n\
         002,3+3?,6,10\n\
         003,capital of France?,Paris,\n\
         004,\"a, b?\",c,1\n\
         005,x,y,2\n",
    );
    let args = stream_args(&rows, &config, &["--batch-size", "2"]);
    let out = openlayer(&args, &platform(&server)).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "streamed 5 row(s)");
    let reqs = requests(&server).await;
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| body(r)["rows"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(
        body(&reqs[0]),
        json!({
            "config": {"outputColumnName": "answer", "inputVariableNames": ["question"], "inferenceIdColumnName": "id"},
            "rows": [
                {"id": "001", "question": "2+2?", "answer": 4, "latency": 12.5},
                {"id": "002", "question": "3+3?", "answer": 6, "latency": 10},
            ]
        })
    );
    assert_eq!(body(&reqs[1])["rows"][0]["latency"], Value::Null);
    assert_eq!(body(&reqs[1])["rows"][1]["question"], "a, b?");
}

/// Large rows: a request holds at most 4 MiB of them (whatever --batch-size allows), as a
/// request the platform takes; all rows arrive, in order.
#[tokio::test(flavor = "multi_thread")]
async fn stream_bounds_each_request_in_bytes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data-stream")))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("stream-bytes");
    let config = dir.file(
        "config.json",
        r#"{"outputColumnName": "answer", "inputVariableNames": ["question"], "inferenceIdColumnName": "id"}"#,
    );
    let answer = "a".repeat(1 << 20);
    let text: String = (0..10)
        .map(|i| format!("{{\"id\":\"{i}\",\"question\":\"q\",\"answer\":\"{answer}\"}}\n"))
        .collect();
    let rows = dir.file("rows.jsonl", &text);
    let args = stream_args(&rows, &config, &["--batch-size", "100"]);
    let out = openlayer(&args, &platform(&server)).await;
    assert_exit(&out, 0);
    let reqs = requests(&server).await;
    assert!(reqs.len() >= 3, "{}", reqs.len());
    let mut ids = Vec::new();
    for r in &reqs {
        assert!(r.body.len() <= (4 << 20) + 1024, "{}", r.body.len());
        for row in body(r)["rows"].as_array().unwrap() {
            ids.push(row["id"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_checks_every_row_before_sending() {
    let server = MockServer::start().await;
    let dir = TempDir::new("stream-bad");
    let config = dir.file(
        "config.json",
        r#"{"classNames": ["neg", "pos"], "textColumnName": "text", "predictionsColumnName": "pred"}"#,
    );
    let rows = dir.file(
        "rows.jsonl",
        "{\"text\": \"great\", \"pred\": 1}\n{\"text\": \"awful\"}\n",
    );
    let env = platform(&server);
    let out = openlayer(&stream_args(&rows, &config, &[]), &env).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "rows.jsonl:2: no column `pred`");
    assert_stderr_has(&out, "nothing was sent");

    // A misspelt config key is a usage error.
    let bad_config = dir.file("bad.json", r#"{"outputColumName": "answer"}"#);
    let args = stream_args(&rows, &bad_config, &["--task-type", "llm-base"]);
    let out = openlayer(&args, &env).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "outputColumName");
    assert!(requests(&server).await.is_empty());
}

/// A line whose trace is `depth` steps deep, built without recursion.
fn deep_trace_line(id: &str, depth: usize) -> String {
    let mut steps = String::new();
    for _ in 0..depth {
        steps.push_str(r#"[{"name":"s","type":"user_call","latency":1.0,"steps":"#);
    }
    steps.push_str("[]");
    for _ in 0..depth {
        steps.push_str("}]");
    }
    format!(
        r#"{{"pipelineId":"pipe-a","config":{{"outputColumnName":"output"}},"rows":[{{"inferenceId":"{id}","latency":1.0,"output":"x","steps":{steps}}}]}}"#
    )
}

#[tokio::test]
async fn push_sends_a_trace_ten_thousand_steps_deep() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-deep");
    let file = dir.file("traces.jsonl", &(deep_trace_line("deep-1", 10_000) + "\n"));
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 0);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert!(String::from_utf8_lossy(&reqs[0].body).contains("deep-1"));
}

/// Two pushes of one file at once: the second is refused before it sends anything (both
/// would send every line not recorded yet); nothing is sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_push_of_the_same_file_at_once_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok().set_delay(std::time::Duration::from_millis(1500)))
        .mount(&server)
        .await;
    let dir = TempDir::new("push-twice");
    let file = dir.file(
        "traces.jsonl",
        &format!("{}\n", trace_line(Some("pipe-a"), "t1")),
    );
    let env = platform(&server);
    let file_arg = file.to_str().unwrap().to_string();
    let first = {
        let (file_arg, env) = (file_arg.clone(), env.clone());
        tokio::spawn(async move { openlayer(&["push", &file_arg], &env).await })
    };
    // The first one is waiting for its answer.
    while requests(&server).await.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = openlayer(&["push", &file_arg], &env).await;
    assert_exit(&second, 1);
    assert_stderr_has(&second, "another openlayer push of this file is running");
    let first = first.await.unwrap();
    assert_exit(&first, 0);
    assert_eq!(row_ids(&requests(&server).await), ["t1"]);
    assert_private(&dir.0.join("traces.jsonl.pushed.lock"));
    // Once it is done, a push runs (and has nothing left to send).
    let third = openlayer(&["push", &file_arg], &env).await;
    assert_exit(&third, 0);
    assert_stdout_has(&third, "1 line(s) already pushed");
    assert_eq!(requests(&server).await.len(), 1);
}

/// When the progress file cannot be written after a batch was accepted, the push stops
/// there and says which lines were sent without being recorded (a rerun sends them
/// again), with its summary; it does not go on sending.
#[tokio::test(flavor = "multi_thread")]
async fn a_progress_file_that_cannot_be_written_stops_the_push_and_names_the_lines() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/rows$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-unsaved");
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{}\n{}\n",
            trace_line(Some("pipe-a"), "t1"),
            update_line(Some("pipe-a"), "t1"),
            trace_line(Some("pipe-a"), "t3")
        ),
    );
    // The temporary progress file cannot be created (a directory is in its place).
    std::fs::create_dir(dir.0.join("traces.jsonl.pushed.tmp")).unwrap();
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 1);
    assert_stdout_has(&out, "pushed 1 line(s)");
    assert_stderr_has(&out, "line(s) 1 were sent, but cannot write");
    assert_stderr_has(&out, "2 line(s) after them not sent");
    // Only the first line went out.
    assert_eq!(requests(&server).await.len(), 1);
}

/// A line nested millions of levels deep (damaged, or made to crash the reader) is a
/// bad line, named and skipped, not a stack overflow; the other lines go on. A trace
/// nested as deep as the reader takes is still shown.
#[tokio::test]
async fn a_line_nested_millions_of_levels_deep_is_a_bad_line() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-hostile-depth");
    let hostile = format!(
        r#"{{"pipelineId":"pipe-a","config":{{}},"rows":[{{"x":{}{}}}]}}"#,
        "[".repeat(3_000_000),
        "]".repeat(3_000_000)
    );
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{hostile}\n{}\n",
            trace_line(None, "t1"),
            trace_line(None, "t3")
        ),
    );
    let out = openlayer(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "levels deep");
    assert!(stdout(&out).contains("trace t3"), "{}", stdout(&out));

    let out = openlayer(
        &["push", file.to_str().unwrap(), "--pipeline-id", "pipe-a"],
        &platform(&server),
    )
    .await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "levels deep");
    let sent = row_ids(&requests(&server).await);
    assert_eq!(sent, ["t1", "t3"]);

    let deep = dir.file("deep.jsonl", &(deep_trace_line("deep-1", 40_000) + "\n"));
    let out = openlayer(&["show", deep.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).lines().count(), 40_001);
}

/// A last line still being written (no newline yet) is left for the next push, which
/// sends it once complete; a change inside the part already pushed, even one that keeps
/// its length, is refused.
#[tokio::test]
async fn push_leaves_an_incomplete_last_line_and_notices_a_same_length_change() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("push-partial");
    let third = trace_line(Some("pipe-a"), "trace-3");
    let (head, tail) = third.split_at(third.len() / 2);
    let file = dir.file(
        "traces.jsonl",
        &format!(
            "{}\n{}\n{head}",
            trace_line(Some("pipe-a"), "trace-1"),
            trace_line(Some("pipe-a"), "trace-2")
        ),
    );
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 2 line(s)");
    assert_stderr_has(&out, "the last line is incomplete");
    assert_eq!(row_ids(&requests(&server).await), ["trace-1", "trace-2"]);

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{tail}\n").as_bytes()).unwrap();
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "pushed 1 line(s)");
    assert_eq!(
        row_ids(&requests(&server).await),
        ["trace-1", "trace-2", "trace-3"]
    );

    // The same length, one byte changed in a line already pushed.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("trace-2", "trace-9", 1)).unwrap();
    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "has changed");
    assert_eq!(row_ids(&requests(&server).await).len(), 3);
}

/// Every data-stream row's inference id, in the order sent.
fn row_ids(reqs: &[Request]) -> Vec<String> {
    stream_batches(reqs)
        .into_iter()
        .flat_map(|(_, ids)| ids)
        .collect()
}

/// Rewrites a file in place (same inode) at the first request: with one line changed,
/// or, when `to` is empty, cut short before the line holding `from`.
struct RewriteOnFirst {
    file: PathBuf,
    from: String,
    to: String,
    done: std::sync::atomic::AtomicBool,
}

impl wiremock::Respond for RewriteOnFirst {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let text = std::fs::read_to_string(&self.file).unwrap();
            let at = text.find(&self.from).unwrap();
            let new = if self.to.is_empty() {
                text[..text[..at].rfind('\n').unwrap() + 1].to_string()
            } else {
                text.replacen(&self.from, &self.to, 1)
            };
            std::fs::write(&self.file, new).unwrap();
        }
        ok()
    }
}

/// The line a push stopped at and how many lines after it it says it did not send, from
/// its "line K failed: ...; stopped there, N line(s) after it not sent".
fn stop_of(o: &Output) -> (usize, usize) {
    let err = stderr(o);
    let number_after = |text: &str, marker: &str| -> usize {
        let at = text
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"));
        text[at + marker.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {marker:?} in:\n{text}"))
    };
    let line = number_after(&err, "line ");
    let after = number_after(&err, "stopped there, ");
    (line, after)
}

/// A file of a trace, its update, then traces 3 to `n` (about 450 bytes a line).
fn long_file(n: usize) -> String {
    let lines: Vec<String> = std::iter::once(trace_line(Some("pipe-a"), "trace-1"))
        .chain(std::iter::once(update_line(Some("pipe-a"), "trace-1")))
        .chain((3..=n).map(|i| trace_line(Some("pipe-a"), &format!("trace-{i:04}"))))
        .collect();
    lines.join("\n") + "\n"
}

/// The push reads the lines to send in blocks (of 256 KiB), each checked against the
/// first pass before any of its lines is sent: after a stop at line `k`, lines 1 to
/// `k - 1` were sent (line 2 is the update, in its place), the rest counted as not sent.
async fn assert_stopped_at_a_block_before(
    server: &MockServer,
    out: &Output,
    changed: usize,
    lines: usize,
) {
    let (k, after) = stop_of(out);
    // Stopped at the start of the block holding the change (a block has at most about
    // 600 of these lines), never past it.
    assert!(k <= changed && k + 600 > changed, "stopped at line {k}");
    assert_eq!(after, lines - k, "{}", stderr(out));
    let sent = row_ids(&requests(server).await);
    let expected: Vec<String> = ["trace-1".to_string(), "inferenceId=trace-1".to_string()]
        .into_iter()
        .chain((3..k).map(|i| format!("trace-{i:04}")))
        .collect();
    assert_eq!(sent, expected);
}

/// A file changed in place while it is pushed (truncated and written again, as
/// `copytruncate` would): the push stops before the block that differs from what its
/// first pass checked, rather than send lines by numbers that mean other lines.
#[tokio::test]
async fn push_stops_where_the_file_changed_in_place_during_the_push() {
    let server = MockServer::start().await;
    let dir = TempDir::new("push-in-place");
    // 2,000 lines, about 900 KB: four blocks; the change is in the third, read after it.
    let file = dir.file("traces.jsonl", &long_file(2000));
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(RewriteOnFirst {
            file: file.clone(),
            from: "\"trace-1500\"".into(),
            to: "\"trace-X500\"".into(),
            done: false.into(),
        })
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/rows$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "failed: the file changed while it was pushed;");
    assert_stopped_at_a_block_before(&server, &out, 1500, 2000).await;
    let sent = row_ids(&requests(&server).await);
    assert!(
        !sent
            .iter()
            .any(|id| id == "trace-X500" || id == "trace-1500")
    );
}

/// A file cut short in place while it is pushed (its earlier part unchanged): the push
/// does not report success for lines it never read.
#[tokio::test]
async fn push_reports_a_file_cut_short_during_the_push() {
    let server = MockServer::start().await;
    let dir = TempDir::new("push-cut-short");
    let file = dir.file("traces.jsonl", &long_file(2000));
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(RewriteOnFirst {
            file: file.clone(),
            from: "\"trace-1500\"".into(),
            to: String::new(),
            done: false.into(),
        })
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/rows$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let out = openlayer(&["push", file.to_str().unwrap()], &platform(&server)).await;
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "failed: the file changed while it was pushed (it is shorter);",
    );
    assert_stopped_at_a_block_before(&server, &out, 1500, 2000).await;
}

// ---- output -------------------------------------------------------------------------

/// Runs the binary as [`openlayer`] does, its stdout a pipe whose reading end is closed
/// before it starts (as `openlayer push FILE | true` may leave it).
async fn openlayer_into_a_closed_pipe(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = command(args, env);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// A command that did its work succeeds when the reader of its output has gone away:
/// its summary (or what it shows) is not written, and that is no failure.
#[tokio::test(flavor = "multi_thread")]
async fn commands_that_succeed_exit_zero_when_their_output_pipe_is_closed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/inference-pipelines/[^/]+/data-stream$"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("closed-pipe");
    let file = dir.file(
        "traces.jsonl",
        &format!("{}\n", trace_line(Some("pipe-a"), "trace-1")),
    );
    let env = platform(&server);

    let out = openlayer_into_a_closed_pipe(&["push", file.to_str().unwrap()], &env).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(row_ids(&requests(&server).await), ["trace-1"]);

    let config = dir.file("config.json", r#"{"outputColumnName": "answer"}"#);
    let rows = dir.file("rows.jsonl", "{\"answer\": \"4\"}\n");
    let out = openlayer_into_a_closed_pipe(&stream_args(&rows, &config, &[]), &env).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(requests(&server).await.len(), 2);

    let out = openlayer_into_a_closed_pipe(&["show", file.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

/// Rows written without an API key to a pipeline `load_or_create_inference_pipeline` named
/// locally (an id the platform does not know) are pushed to the pipeline push is given,
/// and refused up front without one.
#[tokio::test]
async fn push_sends_the_lines_of_a_local_pipeline_to_the_one_it_is_given() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let dir = TempDir::new("local-pipeline");
    let file = dir.0.join("traces.jsonl");
    let client = openlayer_trace::Client::builder()
        .config(
            openlayer_trace::Config::builder_without_env()
                .trace_file(&file)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let pipeline = client
        .load_or_create_inference_pipeline(
            "Support bot",
            "production",
            openlayer_trace::TaskType::LlmBase,
        )
        .await
        .unwrap();
    assert!(pipeline.local);
    let config = openlayer_trace::LlmConfig::new("answer").input_variable_names(["question"]);
    let row = json!({"inferenceId": "chat-42", "question": "Hi?", "answer": "Hello!"});
    client
        .stream_rows(&pipeline.id, &config, &[row])
        .await
        .unwrap();
    client
        .update_row(&pipeline.id, "chat-42", &json!({"thumbs": "up"}), None)
        .await
        .unwrap();
    let file_arg = file.to_str().unwrap();
    let env = platform(&server);

    let out = openlayer(&["push", file_arg], &env).await;
    assert_exit(&out, 2);
    assert_stderr_has(&out, "made without an API key");
    assert!(requests(&server).await.is_empty());

    let out = openlayer(&["push", file_arg, "--pipeline-id", PIPELINE], &env).await;
    assert_exit(&out, 0);
    assert_stderr_has(
        &out,
        &format!("pipeline {} was named without an API key", pipeline.id),
    );
    assert_eq!(stderr(&out).matches("named without an API key").count(), 1);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].url.path(), pipeline_path("data-stream"));
    assert_eq!(body(&reqs[0])["rows"][0]["inferenceId"], "chat-42");
    assert_eq!(reqs[1].url.path(), pipeline_path("rows"));
}
