//! `openlayer update` and `openlayer publish` in bulk, end to end: Parquet (written by the
//! `parquet` crate), Arrow IPC, CSV and JSONL input, uploads decoded here with the Arrow
//! IPC reader, bad rows, and a resume after a failed upload.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use arrow_schema::DataType;
use parquet::arrow::ArrowWriter;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-cli-bulk-secret";
const PIPELINE: &str = "00000000-0000-0000-0000-00000000000b";

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ol-cli-bulk-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn openlayer(args: &[&str], server: &MockServer) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openlayer"));
    cmd.args(args);
    for var in [
        "OPENLAYER_INFERENCE_PIPELINE_ID",
        "OPENLAYER_TRACE_FILE",
        "OPENLAYER_DISABLE_PUBLISH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("OPENLAYER_API_KEY", KEY)
        .env("OPENLAYER_BASE_URL", format!("{}/v1", server.uri()));
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data_path() -> String {
    format!("/v1/inference-pipelines/{PIPELINE}/data")
}

/// The presigned URL (pointing at this server), and `/data`; the storage is mounted by
/// each test.
async fn mount_platform(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/x.arrow",
            "fields": {"key": "uploads/x.arrow"},
        })))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(data_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(server)
        .await;
}

async fn mount_storage(server: &MockServer, status: u16, times: Option<u64>) {
    let mock = Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(status).set_body_string("storage answer"));
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

/// The per-row update endpoint (`PUT .../rows`), accepting every update.
async fn mount_row_updates(server: &MockServer) {
    Mock::given(method("PUT"))
        .and(path(format!("/v1/inference-pipelines/{PIPELINE}/rows")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

/// The Arrow IPC file inside a multipart upload.
fn uploaded_file(r: &Request) -> Vec<u8> {
    let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let body = &r.body;
    let head_end = body
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n\r\n")
        .map(|(i, _)| i + 4)
        .nth(1)
        .expect("a field part, then the file part");
    let tail = format!("\r\n--{boundary}--\r\n");
    assert!(body.ends_with(tail.as_bytes()));
    body[head_end..body.len() - tail.len()].to_vec()
}

/// Every batch uploaded, in order, and the `/data` bodies.
async fn uploaded(server: &MockServer) -> (Vec<RecordBatch>, Vec<Value>) {
    let reqs = requests(server).await;
    let mut batches = Vec::new();
    let mut registered = Vec::new();
    for r in &reqs {
        if r.url.path() == "/storage/bucket" {
            let file = uploaded_file(r);
            let reader = StreamReader::try_new(std::io::Cursor::new(file), None).unwrap();
            batches.extend(reader.map(Result::unwrap));
        } else if r.url.path() == data_path() {
            registered.push(r.body_json::<Value>().unwrap());
        }
    }
    (batches, registered)
}

fn feedback(first: usize, n: usize) -> RecordBatch {
    let ids: Vec<String> = (first..first + n).map(|i| format!("inf-{i:06}")).collect();
    let scores: Vec<Option<f64>> = (first..first + n)
        .map(|i| (i % 7 != 0).then_some(i as f64 / 4.0))
        .collect();
    RecordBatch::try_from_iter_with_nullable([
        (
            "inference_id",
            Arc::new(StringArray::from(ids)) as ArrayRef,
            true,
        ),
        (
            "label",
            Arc::new(Int64Array::from_iter_values(
                (first..first + n).map(|i| (i % 3) as i64),
            )),
            true,
        ),
        ("score", Arc::new(Float64Array::from(scores)), true),
    ])
    .unwrap()
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1_000))
        .build();
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// The values of the string column `column` over all `batches`.
fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let ids = b.column_by_name(column).unwrap().as_string::<i32>();
            (0..b.num_rows())
                .map(|i| ids.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parquet_file_is_merged_in_bulk_as_arrow() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("parquet");
    let file = dir.path("feedback.parquet");
    write_parquet(&file, &[feedback(0, 1_500), feedback(1_500, 1_000)]);
    let out = openlayer(
        &[
            "update",
            "--file",
            file.to_str().unwrap(),
            "--inference-id-column",
            "inference_id",
            "--ground-truth-column",
            "label",
            "--pipeline-id",
            PIPELINE,
        ],
        &server,
    )
    .await;
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged 2500 row(s)"));
    let (batches, registered) = uploaded(&server).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(
        registered[0],
        json!({
            "storageUri": "s3://bucket/x.arrow",
            "performDataMerge": true,
            "config": {"groundTruthColumnName": "label", "inferenceIdColumnName": "inference_id"},
        })
    );
    let schema = batches[0].schema();
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(
        types,
        [&DataType::Utf8, &DataType::Int64, &DataType::Float64]
    );
    let expected: Vec<String> = (0..2_500).map(|i| format!("inf-{i:06}")).collect();
    assert_eq!(strings(&batches, "inference_id"), expected);
    let all_labels: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(all_labels[2_499], 2_499 % 3);
    let nulls: usize = batches.iter().map(|b| b.column(2).null_count()).sum();
    assert_eq!(nulls, (0..2_500).filter(|i| i % 7 == 0).count());
    assert!(!dir.path("feedback.parquet.sent").exists());
    // No row update was sent one by one.
    assert!(
        requests(&server)
            .await
            .iter()
            .all(|r| r.method.as_str() != "PUT")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_file_goes_row_by_row_unless_bulk_is_asked_for() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    mount_row_updates(&server).await;
    let dir = TempDir::new("small");
    let file = dir.path("few.parquet");
    write_parquet(&file, &[feedback(0, 5)]);
    let args = [
        "update",
        "--file",
        file.to_str().unwrap(),
        "--inference-id-column",
        "inference_id",
        "--pipeline-id",
        PIPELINE,
    ];
    let out = openlayer(&args, &server).await;
    assert_exit(&out, 0);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 5);
    let first = reqs
        .iter()
        .find(|r| r.url.query() == Some("inferenceId=inf-000000"))
        .unwrap();
    // The score of row 0 is null: sent as null, as the bulk merge sends it.
    assert_eq!(
        first.body_json::<Value>().unwrap(),
        json!({"row": {"label": 0, "score": null}})
    );
    // So a null in a column the config names is that column's value, not a missing
    // column (it was refused as "the row has no column `score`").
    let mut named = args.to_vec();
    named.extend(["--ground-truth-column", "score"]);
    server.reset().await;
    mount_row_updates(&server).await;
    let out = openlayer(&named, &server).await;
    assert_exit(&out, 0);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 5);
    let first = reqs
        .iter()
        .find(|r| r.url.query() == Some("inferenceId=inf-000000"))
        .unwrap();
    let body = first.body_json::<Value>().unwrap();
    assert_eq!(body["row"]["score"], Value::Null, "{body}");
    assert_eq!(body["config"]["groundTruthColumnName"], "score", "{body}");
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;

    let mut bulk = args.to_vec();
    bulk.push("--bulk");
    let out = openlayer(&bulk, &server).await;
    assert_exit(&out, 0);
    let (batches, registered) = uploaded(&server).await;
    assert_eq!(
        (strings(&batches, "inference_id").len(), registered.len()),
        (5, 1)
    );

    // --per-row and --bulk together are a usage error.
    let mut both = bulk.clone();
    both.push("--per-row");
    assert_exit(&openlayer(&both, &server).await, 2);
}

/// JSONL rows with different keys: a bulk merge would set the keys a row lacks to null,
/// erasing them on the platform. From 1,000 rows on they go one by one instead (with a
/// notice), each setting only its own keys; with --bulk they are refused.
#[tokio::test(flavor = "multi_thread")]
async fn jsonl_rows_with_different_keys_are_not_merged_in_bulk() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    mount_row_updates(&server).await;
    let dir = TempDir::new("uneven");
    let file = dir.path("feedback.jsonl");
    let text: String = (0..1_200)
        .map(|i| {
            if i == 600 {
                format!("{{\"id\":\"r{i}\",\"note\":\"late\"}}\n")
            } else {
                format!("{{\"id\":\"r{i}\",\"thumbs\":\"up\"}}\n")
            }
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let args = [
        "update",
        "--file",
        file.to_str().unwrap(),
        "--inference-id-column",
        "id",
        "--pipeline-id",
        PIPELINE,
    ];
    let mut bulk = args.to_vec();
    bulk.push("--bulk");
    let out = openlayer(&bulk, &server).await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("do not all have the same keys"),
        "{}",
        stderr(&out)
    );
    assert!(requests(&server).await.is_empty());

    let out = openlayer(&args, &server).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("sent one by one"), "{}", stderr(&out));
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1_200);
    assert!(reqs.iter().all(|r| r.method.as_str() == "PUT"));
    let late = reqs
        .iter()
        .find(|r| r.url.query() == Some("inferenceId=r600"))
        .unwrap();
    assert_eq!(
        late.body_json::<Value>().unwrap(),
        json!({"row": {"note": "late"}})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_row_is_named_and_nothing_is_sent() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("bad");
    // A CSV file of 2,000 rows, line 1502 without an id.
    let csv = dir.path("feedback.csv");
    let mut text = String::from("inference_id,label\n");
    for i in 0..2_000 {
        if i == 1_500 {
            text.push_str(",1\n");
        } else {
            text.push_str(&format!("id-{i},{}\n", i % 2));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let out = openlayer(
        &[
            "update",
            "--file",
            csv.to_str().unwrap(),
            "--inference-id-column",
            "inference_id",
            "--pipeline-id",
            PIPELINE,
        ],
        &server,
    )
    .await;
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("feedback.csv:1502: no inference id in `inference_id`"),
        "{err}"
    );
    assert!(
        err.contains("1 bad row(s)") && err.contains("nothing was sent"),
        "{err}"
    );

    // A Parquet file with a null id in its second row group.
    let pq = dir.path("feedback.parquet");
    let mut bad = feedback(1_000, 1_000);
    let mut ids: Vec<Option<String>> = (1_000..2_000).map(|i| Some(format!("inf-{i}"))).collect();
    ids[234] = None;
    bad = RecordBatch::try_new(
        bad.schema(),
        vec![
            Arc::new(StringArray::from(ids)),
            bad.column(1).clone(),
            bad.column(2).clone(),
        ],
    )
    .unwrap();
    write_parquet(&pq, &[feedback(0, 1_000), bad]);
    let out = openlayer(
        &[
            "update",
            "--file",
            pq.to_str().unwrap(),
            "--inference-id-column",
            "inference_id",
            "--pipeline-id",
            PIPELINE,
        ],
        &server,
    )
    .await;
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("feedback.parquet:row 1235: no inference id (null)"),
        "{err}"
    );
    assert!(requests(&server).await.is_empty());
}

/// 2,500 JSONL rows (`id`, `question`, `answer`, `ok`) and an LLM config naming them, in
/// `dir`; with the `publish` arguments that send them in uploads of 1,000. The file starts
/// with a byte order mark (as some Windows editors save it), which is not part of row 1.
fn qa_rows(dir: &TempDir) -> (PathBuf, PathBuf) {
    let file = dir.path("rows.jsonl");
    let text: String = std::iter::once("\u{feff}".to_string())
        .chain((0..2_500).map(|i| {
            format!(
                "{{\"id\":{i},\"question\":\"q{i}\",\"answer\":\"a{i}\",\"ok\":{}}}\n",
                i % 2 == 0
            )
        }))
        .collect();
    std::fs::write(&file, text).unwrap();
    let config = dir.path("config.json");
    std::fs::write(
        &config,
        r#"{"outputColumnName": "answer", "inputVariableNames": ["question"], "inferenceIdColumnName": "id"}"#,
    )
    .unwrap();
    (file, config)
}

fn publish_args<'a>(file: &'a Path, config: &'a Path) -> Vec<&'a str> {
    vec![
        "publish",
        "--file",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--pipeline-id",
        PIPELINE,
        "--rows-per-upload",
        "1000",
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_is_resumed_by_a_rerun() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    // The first upload goes in, the second is refused, then the storage is back.
    mount_storage(&server, 204, Some(1)).await;
    mount_storage(&server, 400, Some(1)).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("resume");
    let (file, config) = qa_rows(&dir);
    let args = publish_args(&file, &config);
    let out = openlayer(&args, &server).await;
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("storage answer"), "{err}");
    assert!(err.contains("1000 of 2500 row(s) are in"), "{err}");
    assert!(dir.path("rows.jsonl.sent").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path("rows.jsonl.sent"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the progress file is private");
    }
    let (first_run, registered) = uploaded(&server).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0]["performDataMerge"], json!(false));
    assert_eq!(
        registered[0]["config"],
        json!({"outputColumnName": "answer", "inputVariableNames": ["question"], "inferenceIdColumnName": "id"})
    );
    // ids stay text; booleans are booleans
    let schema = first_run[0].schema();
    assert_eq!(
        schema.field_with_name("id").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("ok").unwrap().data_type(),
        &DataType::Boolean
    );
    server.reset().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;

    let out = openlayer(&args, &server).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("resuming after 1000 row(s)"),
        "{}",
        stderr(&out)
    );
    let (second_run, registered) = uploaded(&server).await;
    assert_eq!(registered.len(), 2);
    let sent = strings(&first_run, "id")
        .into_iter()
        .chain(strings(&second_run, "id"))
        .collect::<Vec<_>>();
    // The registered uploads (the first run's first, then the rerun's) hold every row once;
    // the refused upload sits between them.
    let expected: Vec<String> = (0..1_000)
        .chain(1_000..2_500)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(sent.len(), 1_000 + 1_000 + 1_500);
    let first_upload: Vec<String> = sent[..1_000].to_vec();
    let rerun: Vec<String> = sent[sent.len() - 1_500..].to_vec();
    assert!([first_upload, rerun].concat() == expected);
    // A record that the file is in: a third run appends nothing again.
    assert!(!dir.path("rows.jsonl.sent").exists());
    assert!(dir.path("rows.jsonl.published").exists());
    server.reset().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let out = openlayer(&args, &server).await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("already (2500 row(s)"), "{err}");
    assert!(requests(&server).await.is_empty());

    // To another pipeline: published, and recorded beside the first.
    let other = "00000000-0000-0000-0000-00000000000c";
    Mock::given(method("POST"))
        .and(path(format!("/v1/inference-pipelines/{other}/data")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(&server)
        .await;
    let to_other: Vec<&str> = args
        .iter()
        .map(|a| if *a == PIPELINE { other } else { a })
        .collect();
    assert_exit(&openlayer(&to_other, &server).await, 0);
    assert_exit(&openlayer(&to_other, &server).await, 2);
    // The first pipeline is still refused.
    let out = openlayer(&args, &server).await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(PIPELINE), "{}", stderr(&out));
}

/// The answer to an append's registration is lost (a 500: the platform may have appended
/// the rows all the same). The run says which rows may be in; a rerun does not send them
/// again unasked (they would be in twice), and sends them again, or goes on after them,
/// as told.
#[tokio::test(flavor = "multi_thread")]
async fn rows_whose_registration_is_uncertain_are_not_sent_again_unasked() {
    for (choice, expected_rerun) in [
        ("--skip-uncertain", (2_000..2_500).collect::<Vec<u32>>()),
        ("--resend-uncertain", (1_000..2_500).collect::<Vec<u32>>()),
    ] {
        let server = MockServer::start().await;
        // The first registration goes in; the second answers 500 (its rows may be in).
        Mock::given(method("POST"))
            .and(path(data_path()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(data_path()))
            .respond_with(ResponseTemplate::new(500).set_body_string("lost"))
            .up_to_n_times(1)
            .with_priority(2)
            .mount(&server)
            .await;
        mount_platform(&server).await;
        mount_storage(&server, 204, None).await;
        let dir = TempDir::new("uncertain");
        let (file, config) = qa_rows(&dir);
        let args = publish_args(&file, &config);
        let out = openlayer(&args, &server).await;
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("1000 of 2500 row(s) are in"), "{err}");
        assert!(err.contains("rows 1001 to 2000 may be too"), "{err}");
        let (_, registered) = uploaded(&server).await;
        assert_eq!(registered.len(), 2, "not registered again");
        // Recorded in a progress file of version 2, which an older `openlayer` (that
        // knows version 1 only) refuses rather than send those rows again.
        let progress: Value =
            serde_json::from_slice(&std::fs::read(dir.path("rows.jsonl.sent")).unwrap()).unwrap();
        assert_eq!(progress["version"], 2, "{progress}");
        assert_eq!(progress["uncertain"], 1000, "{progress}");
        assert_eq!(progress["rowsDone"], 1000, "{progress}");

        // A rerun without a choice sends nothing, and says how to choose.
        server.reset().await;
        mount_platform(&server).await;
        mount_storage(&server, 204, None).await;
        let out = openlayer(&args, &server).await;
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("rows 1001 to 2000"), "{err}");
        assert!(err.contains("--skip-uncertain"), "{err}");
        assert!(requests(&server).await.is_empty());

        // As told.
        let mut told = args.clone();
        told.push(choice);
        let out = openlayer(&told, &server).await;
        assert_exit(&out, 0);
        let (rerun, _) = uploaded(&server).await;
        let ids: Vec<u32> = strings(&rerun, "id")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ids, expected_rerun, "{choice}");
        // Every row is in: recorded, so that a rerun does not append them again.
        assert!(!dir.path("rows.jsonl.sent").exists());
        assert!(dir.path("rows.jsonl.published").exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arrow_ipc_csv_and_parquet_files_are_published() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("ipc");
    let file = dir.path("rows.arrow");
    {
        let f = std::fs::File::create(&file).unwrap();
        let batch = feedback(0, 10);
        let mut w = arrow_ipc::writer::FileWriter::try_new(f, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let config = dir.path("config.json");
    std::fs::write(
        &config,
        r#"{"classNames": ["a", "b", "c"], "featureNames": ["score"], "predictionsColumnName": "label", "inferenceIdColumnName": "inference_id"}"#,
    )
    .unwrap();
    let csv = dir.path("rows.csv");
    std::fs::write(&csv, "inference_id,label,score\n007,1,0.5\n008,2,\n").unwrap();
    let pq = dir.path("rows.parquet");
    write_parquet(&pq, &[feedback(100, 3)]);
    for f in [&file, &csv, &pq] {
        let out = openlayer(
            &[
                "publish",
                "--file",
                f.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--pipeline-id",
                PIPELINE,
            ],
            &server,
        )
        .await;
        assert_exit(&out, 0);
    }
    let (batches, registered) = uploaded(&server).await;
    assert_eq!(registered.len(), 3);
    assert_eq!(
        registered[1]["config"]["classNames"],
        json!(["a", "b", "c"])
    );
    let all = strings(&batches, "inference_id");
    assert_eq!(all.len(), 15);
    assert_eq!(
        &all[10..],
        ["007", "008", "inf-000100", "inf-000101", "inf-000102"]
    );
    let last = &batches[batches.len() - 2];
    assert_eq!(last.schema().fields().len(), 3);
    assert_eq!(last.schema().field(1).data_type(), &DataType::Int64);
    assert_eq!(last.schema().field(2).data_type(), &DataType::Float64);
    assert!(last.column(2).is_null(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_column_that_changes_type_late_is_uploaded_as_the_whole_file_types_it() {
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("late-type");
    // 12,000 rows: `label` holds integers, then text from row 11,000 on (after the rows
    // the file is first typed from while it is scanned).
    let csv = dir.path("feedback.csv");
    let mut text = String::from("inference_id,label\n");
    for i in 0..12_000 {
        let label = if i < 11_000 {
            i.to_string()
        } else {
            format!("x{i}")
        };
        text.push_str(&format!("id-{i},{label}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let out = openlayer(
        &[
            "update",
            "--file",
            csv.to_str().unwrap(),
            "--inference-id-column",
            "inference_id",
            "--ground-truth-column",
            "label",
            "--pipeline-id",
            PIPELINE,
        ],
        &server,
    )
    .await;
    assert_exit(&out, 0);
    let (batches, registered) = uploaded(&server).await;
    assert_eq!(registered.len(), 1);
    let labels: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("label").unwrap();
            assert_eq!(c.data_type(), &DataType::Utf8);
            c.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(labels.len(), 12_000);
    assert_eq!(labels[10_999], "10999");
    assert_eq!(labels[11_000], "x11000");
}

/// A categorical (dictionary) id column is checked row by row first, as a string column
/// is: an empty id at any row is named and nothing is sent (it was found only while the
/// later upload was converted, after the first had been registered). A dictionary of
/// integers, which the uploads refuse, is refused before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_dictionary_id_column_is_checked_before_anything_is_sent() {
    use arrow_array::DictionaryArray;
    use arrow_array::types::Int32Type;
    let server = MockServer::start().await;
    mount_platform(&server).await;
    mount_storage(&server, 204, None).await;
    let dir = TempDir::new("dictionary-ids");
    let write = |name: &str, ids: ArrayRef| {
        let n = ids.len();
        let batch = RecordBatch::try_from_iter_with_nullable([
            ("inference_id", ids, true),
            (
                "label",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i % 3) as i64))) as ArrayRef,
                true,
            ),
            (
                "score",
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))) as ArrayRef,
                true,
            ),
        ])
        .unwrap();
        let file = dir.path(name);
        let f = std::fs::File::create(&file).unwrap();
        let mut w = arrow_ipc::writer::FileWriter::try_new(f, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        file
    };
    let publish = |file: PathBuf| {
        let server = &server;
        async move {
            openlayer(
                &[
                    "update",
                    "--bulk",
                    "--file",
                    file.to_str().unwrap(),
                    "--inference-id-column",
                    "inference_id",
                    "--pipeline-id",
                    PIPELINE,
                ],
                server,
            )
            .await
        }
    };
    // Row 4 of 5 has an empty id: found before anything is sent.
    let ids: DictionaryArray<Int32Type> = vec!["a", "b", "c", "", "a"].into_iter().collect();
    let out = publish(write("empty.arrow", Arc::new(ids))).await;
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("row 4") && err.contains("empty inference id"),
        "{err}"
    );
    assert!(requests(&server).await.is_empty());
    // A dictionary of integers is refused up front.
    let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
    let values: ArrayRef = Arc::new(Int64Array::from(vec![7, 8]));
    let ids = DictionaryArray::<Int32Type>::try_new(keys, values).unwrap();
    let out = publish(write("ints.arrow", Arc::new(ids))).await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("must hold strings or integers"),
        "{}",
        stderr(&out)
    );
    assert!(requests(&server).await.is_empty());
    // Good dictionary ids go.
    let ids: DictionaryArray<Int32Type> = vec!["a", "b", "c"].into_iter().collect();
    let out = publish(write("good.arrow", Arc::new(ids))).await;
    assert_exit(&out, 0);
}
