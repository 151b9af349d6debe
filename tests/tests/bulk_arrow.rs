//! Bulk uploads as Arrow IPC streams, decoded here with the Arrow IPC reader: the object
//! name, the multipart form, the schema and values of the stream, the `/data` body, and
//! large inputs split into several uploads.

use std::io::Cursor;
use std::sync::Arc;

use arrow_ipc::reader::StreamReader;
use openlayer_trace::arrow_array::cast::AsArray;
use openlayer_trace::arrow_array::types::{Float64Type, Int64Type};
use openlayer_trace::arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use openlayer_trace::arrow_schema::DataType;
use openlayer_trace::{
    BulkSummary, Client, Config, Error, LlmConfig, RowUpdateConfig, TabularClassificationConfig,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-test-very-secret";
const PIPELINE: &str = "00000000-0000-0000-0000-000000000002";

fn client(server: &MockServer, max_bytes: Option<usize>) -> Client {
    let mut b = Client::builder()
        .config(Config::default())
        .api_key(KEY)
        .base_url(format!("{}/v1", server.uri()));
    if let Some(m) = max_bytes {
        b = b.bulk_max_bytes(m);
    }
    b.build().unwrap()
}

fn data_path() -> String {
    format!("/v1/inference-pipelines/{PIPELINE}/data")
}

/// The presigned-URL endpoint (pointing the upload at the same server), the storage and
/// the `/data` endpoint.
async fn mount_bulk(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            format!(
                r#"{{"url":"{}/storage/bucket?X-Amz-Signature=sig","storageUri":"s3://bucket/b.arrow","fields":{{"key":"uploads/b.arrow","Policy":"cG9saWN5","x-amz-signature":"abc"}}}}"#,
                server.uri()
            ),
            "application/json",
        ))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(204))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(data_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

/// The parts of a multipart body, as (headers, content bytes).
fn multipart_parts(r: &Request) -> Vec<(String, Vec<u8>)> {
    let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let delimiter = format!("\r\n--{boundary}");
    // Prefix CRLF so that every delimiter, the first included, has the same form.
    let mut body = b"\r\n".to_vec();
    body.extend_from_slice(&r.body);
    let d = delimiter.as_bytes();
    let mut cuts = Vec::new();
    let mut i = 0;
    while i + d.len() <= body.len() {
        if &body[i..i + d.len()] == d {
            cuts.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    assert_eq!(&body[cuts.last().unwrap() + d.len()..], b"--\r\n");
    cuts.windows(2)
        .map(|w| {
            let part = &body[w[0] + d.len() + 2..w[1]];
            let split = part.windows(4).position(|x| x == b"\r\n\r\n").unwrap();
            let head = String::from_utf8(part[..split].to_vec()).unwrap();
            (head, part[split + 4..].to_vec())
        })
        .collect()
}

fn part_name(head: &str) -> &str {
    head.split("name=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
}

/// The record batches of an uploaded Arrow IPC stream.
fn decode(file: &[u8]) -> Vec<RecordBatch> {
    StreamReader::try_new(Cursor::new(file.to_vec()), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every upload of the run: (object name, decoded batches), checking that each upload is
/// presigned first and registered right after.
fn uploads(reqs: &[Request]) -> Vec<(String, Vec<RecordBatch>)> {
    assert_eq!(
        reqs.len() % 3,
        0,
        "{:?}",
        reqs.iter().map(|r| r.url.path()).collect::<Vec<_>>()
    );
    reqs.chunks(3)
        .map(|three| {
            assert_eq!(three[0].url.path(), "/v1/storage/presigned-url");
            assert_eq!(three[1].url.path(), "/storage/bucket");
            assert_eq!(three[2].url.path(), data_path());
            let object = three[0]
                .url
                .query_pairs()
                .find(|(k, _)| k == "objectName")
                .unwrap()
                .1
                .into_owned();
            let parts = multipart_parts(&three[1]);
            let (head, file) = parts.last().unwrap();
            assert!(head.contains(&format!("filename=\"{object}\"")), "{head}");
            (object, decode(file))
        })
        .collect()
}

#[tokio::test]
async fn json_rows_are_uploaded_as_a_typed_arrow_stream() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let cfg = TabularClassificationConfig::new(["no", "yes"])
        .feature_names(["age", "tags"])
        .predictions_column_name("pred")
        .inference_id_column_name("id")
        .timestamp_column_name("ts");
    let rows = [
        json!({"age": 30, "id": "r1", "ok": true, "pred": 1, "score": 0.25, "tags": ["a", "b"], "ts": 1_700_000_000, "void": null}),
        json!({"age": null, "id": "r,2", "ok": false, "pred": 0, "score": 1, "tags": {"k": 1}, "ts": 1_700_000_001}),
    ];
    client(&server, None)
        .publish_batch(PIPELINE, &cfg, &rows)
        .await
        .unwrap();

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 3);
    // The object name of the official SDK: batch_data_<unix time>_<pipeline id>.arrow
    let object = reqs[0]
        .url
        .query_pairs()
        .find(|(k, _)| k == "objectName")
        .unwrap()
        .1
        .into_owned();
    let time = object
        .strip_prefix("batch_data_")
        .and_then(|r| r.strip_suffix(&format!("_{PIPELINE}.arrow")))
        .unwrap_or_else(|| panic!("{object}"));
    let secs: f64 = time.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - secs).abs() < 600.0, "{object}");
    assert!(reqs[0].body.is_empty());

    // The presigned fields first, in their order, then the file; no API key.
    let upload = &reqs[1];
    assert!(upload.headers.get("authorization").is_none());
    let parts = multipart_parts(upload);
    let names: Vec<&str> = parts.iter().map(|(h, _)| part_name(h)).collect();
    assert_eq!(names, ["key", "Policy", "x-amz-signature", "file"]);
    assert_eq!(parts[1].1, b"cG9saWN5");
    assert!(
        parts[3]
            .0
            .contains("Content-Type: application/vnd.apache.arrow.stream")
    );

    // The stream: typed columns.
    let batches = decode(&parts[3].1);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    let schema = b.schema();
    let types: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            ("age", &DataType::Int64),
            ("id", &DataType::Utf8),
            ("ok", &DataType::Boolean),
            ("pred", &DataType::Int64),
            ("score", &DataType::Float64),
            ("tags", &DataType::Utf8),
            ("ts", &DataType::Int64),
            ("void", &DataType::Null),
        ]
    );
    let age = b.column(0).as_primitive::<Int64Type>();
    assert_eq!((age.value(0), age.is_null(1)), (30, true));
    let id = b.column(1).as_string::<i32>();
    assert_eq!((id.value(0), id.value(1)), ("r1", "r,2"));
    assert_eq!(
        b.column(2).as_boolean(),
        &BooleanArray::from(vec![true, false])
    );
    let score = b.column(4).as_primitive::<Float64Type>();
    assert_eq!((score.value(0), score.value(1)), (0.25, 1.0));
    let tags = b.column(5).as_string::<i32>();
    assert_eq!(
        (tags.value(0), tags.value(1)),
        (r#"["a","b"]"#, r#"{"k":1}"#)
    );
    assert_eq!(
        b.column(6).as_primitive::<Int64Type>().value(1),
        1_700_000_001
    );

    // The registration.
    assert_eq!(
        reqs[2].body_json::<Value>().unwrap(),
        json!({
            "storageUri": "s3://bucket/b.arrow",
            "performDataMerge": false,
            "config": {
                "classNames": ["no", "yes"],
                "featureNames": ["age", "tags"],
                "predictionsColumnName": "pred",
                "inferenceIdColumnName": "id",
                "timestampColumnName": "ts",
            }
        })
    );
}

fn feedback_batch(first: usize, n: usize) -> RecordBatch {
    let ids: Vec<String> = (first..first + n).map(|i| format!("inf-{i}")).collect();
    RecordBatch::try_from_iter([
        ("inference_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        (
            "label",
            Arc::new(Int64Array::from_iter_values(
                (first..first + n).map(|i| (i % 2) as i64),
            )),
        ),
    ])
    .unwrap()
}

#[tokio::test]
async fn record_batches_are_merged_by_inference_id_with_unix_second_timestamps() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef),
        (
            "label",
            Arc::new(StringArray::from(vec![Some("yes"), None])),
        ),
        (
            "at",
            Arc::new(TimestampMillisecondArray::from(vec![
                1_700_000_000_000,
                1_700_000_000_500,
            ])),
        ),
    ])
    .unwrap();
    let config = RowUpdateConfig::new()
        .ground_truth_column_name("label")
        .timestamp_column_name("at");
    let sent = client(&server, None)
        .update_record_batches(PIPELINE, "id", Some(config), [&batch])
        .await
        .unwrap();
    assert_eq!((sent.rows, sent.uploads), (2, 1));
    let reqs = requests(&server).await;
    let all = uploads(&reqs);
    let b = &all[0].1[0];
    let schema = b.schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(b.column(0).as_string::<i32>().value(1), "8");
    assert!(b.column(1).is_null(1));
    assert_eq!(schema.field(2).data_type(), &DataType::Float64);
    let at = b.column(2).as_primitive::<Float64Type>();
    assert_eq!(
        (at.value(0), at.value(1)),
        (1_700_000_000.0, 1_700_000_000.5)
    );
    assert_eq!(
        reqs[2].body_json::<Value>().unwrap(),
        json!({
            "storageUri": "s3://bucket/b.arrow",
            "performDataMerge": true,
            "config": {
                "groundTruthColumnName": "label",
                "timestampColumnName": "at",
                "inferenceIdColumnName": "id",
            }
        })
    );
}

#[tokio::test]
async fn a_large_input_goes_in_several_bounded_uploads_each_registered() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    // 50 000 rows from an iterator, uploads closed at 256 KiB.
    let batches = (0..5).map(|i| feedback_batch(i * 10_000, 10_000));
    let sent: BulkSummary = client(&server, Some(256 << 10))
        .update_record_batches(PIPELINE, "inference_id", None, batches)
        .await
        .unwrap();
    let reqs = requests(&server).await;
    let all = uploads(&reqs);
    assert!(all.len() >= 3, "{} uploads", all.len());
    assert_eq!(sent.uploads as usize, all.len());
    assert_eq!(sent.rows, 50_000);
    let mut next = 0;
    for (object, batches) in &all {
        assert!(object.ends_with(".arrow"));
        for b in batches {
            assert!(b.num_rows() <= 16_384);
            let ids = b.column(0).as_string::<i32>();
            for i in 0..b.num_rows() {
                assert_eq!(ids.value(i), format!("inf-{next}"));
                next += 1;
            }
        }
    }
    assert_eq!(next, 50_000);
    // Each upload holds at most the bound plus one chunk of rows.
    for r in reqs.iter().filter(|r| r.url.path() == "/storage/bucket") {
        assert!(r.body.len() < (256 << 10) + 16_384 * 40, "{}", r.body.len());
    }
}

#[tokio::test]
async fn a_bad_batch_stops_the_call_and_says_what_was_already_sent() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let c = client(&server, Some(1));
    // A bad first batch: nothing at all is sent.
    let bad = RecordBatch::try_from_iter([(
        "inference_id",
        Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
    )])
    .unwrap();
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, [bad.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("row 1: no inference id")),
        "{e:?}"
    );
    assert!(requests(&server).await.is_empty());

    // A bad third batch: the first two went in, and the error says so.
    let batches = [feedback_batch(0, 10), feedback_batch(10, 10), bad];
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, batches)
        .await
        .unwrap_err();
    let Error::BulkPartial {
        rows_sent,
        uploads,
        source,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!((*rows_sent, *uploads), (20, 2));
    assert!(
        source
            .to_string()
            .contains("row 21: no inference id (null)"),
        "{source}"
    );
    assert!(
        e.to_string().contains("after 20 row(s) in 2 upload(s)"),
        "{e}"
    );
    assert_eq!(uploads_registered(&server).await, 2);

    // A reader's error is passed on.
    let e = c
        .publish_record_batches(
            PIPELINE,
            &LlmConfig::new("o"),
            [Err::<RecordBatch, _>(Error::InvalidInput(
                "line 3: bad".into(),
            ))],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("line 3: bad"), "{e}");
}

/// A batch longer than an upload's chunk of rows, with a bad id far into it: the call
/// fails before any of that batch is sent, even where a chunk before the bad row would
/// have filled an upload (`bulk_max_bytes` of 1).
#[tokio::test]
async fn a_bad_id_late_in_a_long_batch_fails_before_any_of_the_batch_is_sent() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let n = 40_000;
    let ids: Vec<Option<String>> = (0..n)
        .map(|i| (i != 35_000).then(|| format!("inf-{i}")))
        .collect();
    let batch = RecordBatch::try_from_iter([
        ("inference_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("label", Arc::new(Int64Array::from_iter_values(0..n as i64))),
    ])
    .unwrap();
    let e = client(&server, Some(1))
        .update_record_batches(PIPELINE, "inference_id", None, [batch])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("row 35000: no inference id")),
        "{e:?}"
    );
    assert_eq!(uploads_registered(&server).await, 0);
}

async fn uploads_registered(server: &MockServer) -> usize {
    requests(server)
        .await
        .iter()
        .filter(|r| r.url.path() == data_path())
        .count()
}

/// A `bulk_max_bytes` meant as "never split" (`usize::MAX`, or a terabyte) is a bound,
/// not an allocation made up front: the upload is made (it panicked with "capacity
/// overflow", or aborted on a failed allocation).
#[tokio::test]
async fn a_huge_bulk_max_bytes_is_a_bound_not_an_allocation() {
    for max in [usize::MAX, 1 << 40] {
        let server = MockServer::start().await;
        mount_bulk(&server).await;
        let summary = client(&server, Some(max))
            .update_record_batches(PIPELINE, "inference_id", None, [feedback_batch(0, 3)])
            .await
            .unwrap();
        assert_eq!(summary.rows, 3, "{summary:?}");
        assert_eq!(uploads_registered(&server).await, 1);
    }
}

/// Rows with different keys (feedback on some, ground truth on others): a merge sets every
/// column of its upload, a missing one as null, so each set of keys is merged on its own
/// and no row erases a column it does not carry.
#[tokio::test]
async fn json_rows_with_different_keys_are_merged_in_separate_uploads() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let rows = [
        json!({"id": "a", "thumbs": "up"}),
        json!({"id": "b", "groundTruth": "x"}),
        json!({"thumbs": "down", "id": "c"}),
    ];
    client(&server, None)
        .update_batch(PIPELINE, "id", None, &rows)
        .await
        .unwrap();
    let ups = uploads(&requests(&server).await);
    assert_eq!(ups.len(), 2);
    let columns = |batches: &[RecordBatch]| {
        let mut names: Vec<String> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        names.sort();
        names
    };
    assert_eq!(columns(&ups[0].1), ["id", "thumbs"]);
    assert_eq!(ups[0].1[0].num_rows(), 2);
    assert_eq!(columns(&ups[1].1), ["groundTruth", "id"]);
    assert_eq!(ups[1].1[0].num_rows(), 1);
}

#[tokio::test]
async fn a_batch_without_a_required_column_is_refused() {
    let server = MockServer::start().await;
    mount_bulk(&server).await;
    let e = client(&server, None)
        .publish_record_batches(PIPELINE, &LlmConfig::new("output"), [feedback_batch(0, 3)])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no column `output` (named by `outputColumnName`)"),
        "{e}"
    );
    assert!(requests(&server).await.is_empty());
}

#[tokio::test]
async fn local_mode_writes_record_batches_to_the_local_file() {
    let file = std::env::temp_dir().join(format!("ol-arrow-local-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let c = Client::builder()
        .config(Config::default())
        .trace_file(&file)
        .build()
        .unwrap();
    assert!(c.is_local());
    let sent = c
        .update_record_batches(PIPELINE, "inference_id", None, [feedback_batch(0, 3)])
        .await
        .unwrap();
    assert_eq!((sent.rows, sent.uploads), (3, 0));
    let lines = openlayer_trace::read_local_file(&file).unwrap();
    assert_eq!(lines.count(), 3);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"inferenceId\":\"inf-2\""), "{text}");
    std::fs::remove_file(&file).unwrap();
    // A null in a column the config names is that column's value (null), as the upload
    // sends it: the row is written, not refused for lacking the column.
    let batch = RecordBatch::try_from_iter([
        (
            "inference_id",
            Arc::new(StringArray::from(vec!["inf-a", "inf-b"])) as ArrayRef,
        ),
        (
            "label",
            Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
        ),
    ])
    .unwrap();
    let config = RowUpdateConfig::new().ground_truth_column_name("label");
    let sent = c
        .update_record_batches(PIPELINE, "inference_id", Some(config), [batch])
        .await
        .unwrap();
    assert_eq!(sent.rows, 2);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"label\":null"), "{text}");
    std::fs::remove_file(&file).unwrap();

    // A bad second batch: the first one's rows are in the file, and the error says how
    // many, so that a rerun does not write them twice.
    let bad = RecordBatch::try_from_iter([(
        "inference_id",
        Arc::new(StringArray::from(vec![Some("inf-x"), None])) as ArrayRef,
    )])
    .unwrap();
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, [feedback_batch(0, 3), bad])
        .await
        .unwrap_err();
    match &e {
        Error::BulkPartial {
            rows_sent, source, ..
        } => {
            assert_eq!(*rows_sent, 3, "{e}");
            assert!(matches!(**source, Error::InvalidInput(_)), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(local_update_ids(&file).len(), 3);
    std::fs::remove_file(&file).unwrap();
    // Failing at the first batch: nothing was written, the error is itself.
    let bad = RecordBatch::try_from_iter([(
        "inference_id",
        Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
    )])
    .unwrap();
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, [bad])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
}

/// The inference ids of the row-update lines of a local file (none if it is absent).
fn local_update_ids(path: &std::path::Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    openlayer_trace::read_local_file(path)
        .unwrap()
        .filter_map(|e| match e.line.unwrap() {
            openlayer_trace::LocalLine::RowUpdate { inference_id, .. } => Some(inference_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn local_mode_never_rotates_away_the_rows_of_the_same_call() {
    let dir = std::env::temp_dir().join(format!("ol-arrow-bound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.jsonl");
    let older = dir.join("t.jsonl.1");
    let config = Config::builder()
        .trace_file_max_bytes(2000)
        .build()
        .unwrap();
    let c = Client::builder()
        .config(config)
        .trace_file(&file)
        .build()
        .unwrap();

    // More than the bound at once: refused, nothing written.
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, [feedback_batch(0, 100)])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("more than the local file's bound"),
        "{e}"
    );
    assert!(local_update_ids(&file).is_empty());

    // Batches of 10 rows (about 800 bytes each): the file rotates once, keeping the call's
    // first rows in `.1`; another rotation, which would replace them, is refused.
    let batches = (0..10).map(|i| feedback_batch(i * 10, 10));
    let e = c
        .update_record_batches(PIPELINE, "inference_id", None, batches)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("another rotation would replace"),
        "{e}"
    );
    let mut written = local_update_ids(&older);
    written.extend(local_update_ids(&file));
    let n = written.len();
    assert!((20..100).contains(&n), "{written:?}");
    let expected: Vec<String> = (0..n).map(|i| format!("inf-{i}")).collect();
    assert_eq!(
        written, expected,
        "every row written is still there, in order"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
