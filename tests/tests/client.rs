//! `openlayer_trace::Client` against a real loopback HTTP server.
//!
//! Row literals list their keys in alphabetical order, so that the expected CSV columns
//! and JSON lines hold whether or not serde_json keeps insertion order.

use std::path::PathBuf;

use openlayer_trace::{
    BulkFormat, Client, Config, Error, InferencePipeline, LlmConfig, LocalLine, RowUpdateConfig,
    TabularClassificationConfig, TaskType, read_local_file,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-test-very-secret";
const PIPELINE: &str = "00000000-0000-0000-0000-000000000001";

fn client(server: &MockServer) -> Client {
    Client::builder()
        .config(Config::default())
        .api_key(KEY)
        .base_url(format!("{}/v1", server.uri()))
        .build()
        .unwrap()
}

/// A client that uploads bulk rows as CSV (the explicit option).
fn csv_client(server: &MockServer) -> Client {
    csv_client_of(server, Client::BULK_MAX_BYTES)
}

/// [`csv_client`] with uploads of at most `bulk_max_bytes`.
fn csv_client_of(server: &MockServer, bulk_max_bytes: usize) -> Client {
    Client::builder()
        .config(Config::default())
        .api_key(KEY)
        .base_url(format!("{}/v1", server.uri()))
        .bulk_format(BulkFormat::Csv)
        .bulk_max_bytes(bulk_max_bytes)
        .build()
        .unwrap()
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"success": true}))
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

fn body_text(r: &Request) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

/// A query parameter of a recorded request.
fn query(r: &Request, name: &str) -> Option<String> {
    r.url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The status, message and request of an `Error::Api`; any other error fails the test.
fn api_error(err: &Error) -> (u16, &str, &str) {
    let Error::Api {
        status,
        message,
        request,
        ..
    } = err
    else {
        panic!("expected Error::Api, got {err:?}");
    };
    (*status, message, request)
}

/// An error that must be `Error::InvalidInput` with a message holding every one of `parts`.
fn assert_invalid_input(e: &Error, parts: &[&str]) {
    assert!(
        matches!(e, Error::InvalidInput(m) if parts.iter().all(|p| m.contains(p))),
        "expected invalid input mentioning {parts:?}, got {e:?}"
    );
}

/// The path of one of `PIPELINE`'s endpoints, below `/v1`.
fn pipeline_path(endpoint: &str) -> String {
    format!("/v1/inference-pipelines/{PIPELINE}/{endpoint}")
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ol-client-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- row updates --------------------------------------------------------------------

#[tokio::test]
async fn update_row_matches_the_official_wire_sample() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .and(query_param("inferenceId", "inference-gt-001"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;

    client(&server)
        .update_row(
            PIPELINE,
            "inference-gt-001",
            &json!({"groundTruth": "Paris"}),
            Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
        )
        .await
        .unwrap();

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    // compact JSON, `row` before `config`, as the official SDK sends it
    assert_eq!(
        body_text(&reqs[0]),
        r#"{"row":{"groundTruth":"Paris"},"config":{"groundTruthColumnName":"groundTruth"}}"#
    );
    assert_eq!(reqs[0].url.query(), Some("inferenceId=inference-gt-001"));
}

#[tokio::test]
async fn update_row_without_config_omits_it_and_encodes_the_id() {
    let server = MockServer::start().await;
    let id = "chat/conv 1&user=2é";
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .and(query_param("inferenceId", id))
        .respond_with(ok())
        .expect(2)
        .mount(&server)
        .await;
    let c = client(&server);
    let row = json!({"conversion_value": 99.99, "note": "déjà vu", "user_converted": true});
    c.update_row(PIPELINE, id, &row, None).await.unwrap();
    // an empty config is not sent either
    c.update_row(PIPELINE, id, &row, Some(RowUpdateConfig::new()))
        .await
        .unwrap();
    for r in requests(&server).await {
        // non-ASCII is sent as UTF-8, not \u escapes
        assert_eq!(
            body_text(&r),
            r#"{"row":{"conversion_value":99.99,"note":"déjà vu","user_converted":true}}"#
        );
    }
}

#[tokio::test]
async fn update_row_sends_every_config_key_in_camel_case() {
    let server = MockServer::start().await;
    let row = json!({"gt": 1, "hf": "thumbs_up", "lat": 12.5, "ts": 1700000000, "id": "x"});
    let config = json!({
        "groundTruthColumnName": "gt",
        "humanFeedbackColumnName": "hf",
        "inferenceIdColumnName": "id",
        "latencyColumnName": "lat",
        "timestampColumnName": "ts",
    });
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .and(query_param("inferenceId", "x"))
        .and(body_json(json!({"row": row, "config": config})))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let config = RowUpdateConfig::new()
        .ground_truth_column_name("gt")
        .human_feedback_column_name("hf")
        .inference_id_column_name("id")
        .latency_column_name("lat")
        .timestamp_column_name("ts");
    client(&server)
        .update_row(PIPELINE, "x", &row, Some(config))
        .await
        .unwrap();
}

#[tokio::test]
async fn update_row_raw_sends_its_config_as_given_and_checks_the_keys_it_knows() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(pipeline_path("rows")))
        .and(query_param("inferenceId", "x"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let c = client(&server);
    let row = json!({"gt": 1, "score": 0.5});
    let config = json!({"groundTruthColumnName": "gt", "scoreColumnName": "score"});
    let config = config.as_object().unwrap();
    c.update_row_raw(PIPELINE, "x", &row, Some(config))
        .await
        .unwrap();
    // An empty config is not sent, nor one whose keys are all null (unset).
    c.update_row_raw(PIPELINE, "x", &row, Some(&serde_json::Map::new()))
        .await
        .unwrap();
    let nulls = json!({"groundTruthColumnName": null, "scoreColumnName": null});
    c.update_row_raw(PIPELINE, "x", &row, nulls.as_object())
        .await
        .unwrap();
    let some_null = json!({"groundTruthColumnName": "gt", "humanFeedbackColumnName": null});
    c.update_row_raw(PIPELINE, "x", &row, some_null.as_object())
        .await
        .unwrap();
    let reqs = requests(&server).await;
    assert_eq!(
        body_text(&reqs[0]),
        r#"{"row":{"gt":1,"score":0.5},"config":{"groundTruthColumnName":"gt","scoreColumnName":"score"}}"#
    );
    assert_eq!(body_text(&reqs[1]), r#"{"row":{"gt":1,"score":0.5}}"#);
    assert_eq!(body_text(&reqs[2]), r#"{"row":{"gt":1,"score":0.5}}"#);
    assert_eq!(
        body_text(&reqs[3]),
        r#"{"row":{"gt":1,"score":0.5},"config":{"groundTruthColumnName":"gt"}}"#
    );

    // The keys `RowUpdateConfig` models are checked before anything is sent.
    for (config, error) in [
        (
            json!({"groundTruthColumnName": "label", "x": 1}),
            "the row has no column `label`",
        ),
        (json!({"groundTruthColumnName": 7}), "bad row-update config"),
    ] {
        let e = c
            .update_row_raw(PIPELINE, "x", &row, config.as_object())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains(error)),
            "{e}"
        );
    }
    assert_eq!(requests(&server).await.len(), 4);
}

#[tokio::test]
async fn get_and_delete_row_address_the_id_as_a_path_segment() {
    let server = MockServer::start().await;
    let stored = json!({"row": {"inferenceId": "a/b c", "output": "hi"}});
    Mock::given(method("GET"))
        .and(path(pipeline_path("rows/a%2Fb%20c")))
        .respond_with(ResponseTemplate::new(200).set_body_json(stored.clone()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(pipeline_path("rows/a%2Fb%20c")))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.get_row(PIPELINE, "a/b c").await.unwrap(), stored);
    c.delete_row(PIPELINE, "a/b c").await.unwrap();
    for r in requests(&server).await {
        assert!(r.body.is_empty());
        assert_eq!(r.url.query(), None);
    }
}

/// A delete whose answer was lost (a 502 after the row went) and whose retry finds
/// nothing has done what was asked; a 404 on the first attempt is still an error.
#[tokio::test]
async fn a_delete_retried_after_it_went_through_is_not_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(pipeline_path("rows/gone")))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let c = client(&server);
    c.delete_row(PIPELINE, "gone").await.unwrap();
    assert_eq!(requests(&server).await.len(), 2);
    let e = c.delete_row(PIPELINE, "never-there").await.unwrap_err();
    assert_eq!(api_error(&e).0, 404);
    // A 429 says the first attempt was not carried out: the retry's 404 is the answer.
    Mock::given(method("DELETE"))
        .and(path(pipeline_path("rows/limited")))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after-ms", "10"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let e = c.delete_row(PIPELINE, "limited").await.unwrap_err();
    assert_eq!(api_error(&e).0, 404);
}

/// An id of `.` or `..` would be a dot segment, which URL parsing resolves: `rows/..`
/// would address the pipeline itself. Refused before anything is sent, wherever it is
/// in the path (an inference id, a pipeline id); `%2e` stays an id of its own.
#[tokio::test]
async fn dot_ids_are_refused_not_resolved_into_another_resource() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(pipeline_path("rows/%252e%252e")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"row": {}})))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    for id in ["..", "."] {
        let e = c.delete_row(PIPELINE, id).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        let e = c.get_row(PIPELINE, id).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        let e = c.get_row(id, "row-1").await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        let e = c
            .stream_rows(id, &LlmConfig::new("output"), &[json!({"output": "x"})])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    }
    // Nothing reached the server but the one request for a percent sign.
    c.get_row(PIPELINE, "%2e%2e").await.unwrap();
    assert_eq!(requests(&server).await.len(), 1);
}

// ---- errors -----------------------------------------------------------------------

#[tokio::test]
async fn a_401_is_an_api_error_with_the_servers_message_and_the_request() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid API key"})))
        .expect(1) // never retried
        .mount(&server)
        .await;
    let err = client(&server)
        .update_row(PIPELINE, "i-1", &json!({"groundTruth": "x"}), None)
        .await
        .unwrap_err();
    let (status, message, request) = api_error(&err);
    assert_eq!(status, 401);
    assert!(message.contains("Invalid API key"), "{message}");
    assert!(
        request.starts_with(&format!("PUT /inference-pipelines/{PIPELINE}/rows"))
            || request.starts_with(&format!("PUT /v1/inference-pipelines/{PIPELINE}/rows")),
        "{request}"
    );
    assert!(request.contains("inferenceId=i-1"), "{request}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(KEY), "{shown}");
}

#[tokio::test]
async fn a_422_on_stream_is_an_api_error_naming_the_endpoint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data-stream")))
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(json!({"message": "outputColumnName `answer` not found in rows"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .stream_rows(
            PIPELINE,
            &LlmConfig::new("answer"),
            &[json!({"answer": "4"})],
        )
        .await
        .unwrap_err();
    let (status, message, request) = api_error(&err);
    assert_eq!(status, 422);
    assert!(message.contains("not found in rows"), "{message}");
    assert!(
        request.starts_with("POST ") && request.ends_with("/data-stream"),
        "{request}"
    );
}

#[tokio::test]
async fn a_500_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .update_row(PIPELINE, "i-1", &json!({"rating": 5}), None)
        .await
        .unwrap();
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body);
}

#[tokio::test]
async fn a_2xx_with_success_false_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"success": false, "error": "row not found"})),
        )
        .mount(&server)
        .await;
    let err = client(&server)
        .update_row(PIPELINE, "nope", &json!({"x": 1}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: 200, message, .. } if message == "row not found"),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_input_is_refused_before_anything_is_sent() {
    let server = MockServer::start().await;
    let c = client(&server);
    let cfg = LlmConfig::new("output").input_variable_names(["question"]);

    let e = c
        .stream_rows(
            PIPELINE,
            &cfg,
            &[
                json!({"output": "a", "question": "q"}),
                json!({"output": "b"}),
            ],
        )
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["row 1", "`question`"]);

    let e = c
        .stream_rows(PIPELINE, &cfg, &[json!("not an object")])
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["row 0 must be a JSON object"]);

    let e = c
        .stream_rows(PIPELINE, &LlmConfig::new(""), &[json!({"": 1})])
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["outputColumnName"]);

    let e = c
        .publish_batch(
            PIPELINE,
            &TabularClassificationConfig::new(Vec::<String>::new()),
            &[json!({})],
        )
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["classNames"]);

    let e = c
        .update_row(
            PIPELINE,
            "i",
            &json!({"label": 1}),
            Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
        )
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["`groundTruth`"]);

    let e = c
        .update_row(PIPELINE, "", &json!({}), None)
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["inference id"]);

    let e = c
        .update_row(PIPELINE, "i", &json!([1]), None)
        .await
        .unwrap_err();
    assert_invalid_input(&e, &[]);

    let e = c
        .update_batch(
            PIPELINE,
            "id",
            None,
            &[json!({"id": "a"}), json!({"gt": 1})],
        )
        .await
        .unwrap_err();
    assert_invalid_input(&e, &["row 1", "`id`"]);

    assert!(requests(&server).await.is_empty());
}

// ---- streaming ----------------------------------------------------------------------

#[tokio::test]
async fn stream_rows_posts_config_then_rows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data-stream")))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let cfg = LlmConfig::new("answer")
        .input_variable_names(["question"])
        .inference_id_column_name("id")
        .timestamp_column_name("ts");
    let rows = [
        json!({"question": "2+2?", "answer": "4", "id": "q-1", "ts": 1700000000}),
        json!({"question": "3+3?", "answer": "6", "id": "q-2", "ts": 1700000001, "tags": ["math"]}),
    ];
    client(&server)
        .stream_rows(PIPELINE, &cfg, &rows)
        .await
        .unwrap();
    let reqs = requests(&server).await;
    let body = body_text(&reqs[0]);
    assert!(body.starts_with(r#"{"config":{"#), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({
            "config": {
                "outputColumnName": "answer",
                "inputVariableNames": ["question"],
                "inferenceIdColumnName": "id",
                "timestampColumnName": "ts",
            },
            "rows": rows,
        })
    );
}

#[tokio::test]
async fn no_rows_send_nothing() {
    let server = MockServer::start().await;
    let c = client(&server);
    c.stream_rows(PIPELINE, &LlmConfig::new("o"), &[])
        .await
        .unwrap();
    c.publish_batch(PIPELINE, &LlmConfig::new("o"), &[])
        .await
        .unwrap();
    c.update_batch(PIPELINE, "id", None, &[]).await.unwrap();
    assert!(requests(&server).await.is_empty());
}

// ---- projects and pipelines ------------------------------------------------------------

/// Mounts `GET {path}` (with `name={name}` when given) answering `answer`, expected once.
async fn mount_list(server: &MockServer, list_path: &str, name: Option<&str>, answer: Value) {
    let mut mock = Mock::given(method("GET")).and(path(list_path));
    if let Some(name) = name {
        mock = mock.and(query_param("name", name));
    }
    mock.respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .expect(1)
        .mount(server)
        .await;
}

/// Mounts `POST {path}` with exactly `body`, answering `201` with `created`, expected once.
async fn mount_create(server: &MockServer, create_path: &str, body: Value, created: Value) {
    Mock::given(method("POST"))
        .and(path(create_path))
        .and(body_json(body))
        .respond_with(ResponseTemplate::new(201).set_body_json(created))
        .expect(1)
        .mount(server)
        .await;
}

/// Mounts `POST {path}` answering `answer` to its first request only (later ones go to
/// the mocks mounted after it).
async fn mount_post_once(server: &MockServer, post_path: &str, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(post_path))
        .respond_with(answer)
        .up_to_n_times(1)
        .mount(server)
        .await;
}

/// The pipeline "production" of the project "Chatbot", loaded or created.
async fn chatbot_production(c: &Client) -> InferencePipeline {
    c.load_or_create_inference_pipeline("Chatbot", "production", TaskType::LlmBase)
        .await
        .unwrap()
}

#[tokio::test]
async fn projects_and_pipelines_are_listed_and_created() {
    let server = MockServer::start().await;
    mount_list(
        &server,
        "/v1/projects",
        Some("Fraud"),
        json!({
            "items": [{"id": "p1", "name": "Fraud", "taskType": "tabular-classification",
                       "description": null, "dateCreated": "2025-01-01"}],
            "_meta": {"page": 1}
        }),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects",
        json!({"name": "Chat", "taskType": "llm-base", "description": "bot"}),
        json!({"id": "p2", "name": "Chat", "taskType": "llm-base", "description": "bot"}),
    )
    .await;
    mount_list(
        &server,
        "/v1/projects/p1/inference-pipelines",
        Some("production"),
        json!({"items": [{"id": "i1", "name": "production", "status": "healthy"}]}),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects/p1/inference-pipelines",
        json!({"name": "staging", "description": null}),
        json!({"id": "i2", "name": "staging", "projectId": "p1"}),
    )
    .await;

    let c = client(&server);
    let projects = c.list_projects(Some("Fraud")).await.unwrap();
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].id, "p1");
    assert_eq!(projects[0].task_type, Some(TaskType::TabularClassification));
    assert_eq!(projects[0].extra["dateCreated"], "2025-01-01");

    let p = c
        .create_project("Chat", TaskType::LlmBase, Some("bot"))
        .await
        .unwrap();
    assert_eq!(
        (p.id.as_str(), p.description.as_deref()),
        ("p2", Some("bot"))
    );

    let pipelines = c
        .list_inference_pipelines("p1", Some("production"))
        .await
        .unwrap();
    assert_eq!(pipelines[0].id, "i1");
    assert_eq!(pipelines[0].project_id.as_deref(), Some("p1"));
    assert_eq!(pipelines[0].extra["status"], "healthy");
    assert!(!pipelines[0].local);

    let created = c
        .create_inference_pipeline("p1", "staging", None)
        .await
        .unwrap();
    assert_eq!(created.id, "i2");
}

#[tokio::test]
async fn load_or_create_finds_exact_names_and_creates_what_is_missing() {
    let server = MockServer::start().await;
    // The name filter may match loosely: only the exact name counts.
    mount_list(
        &server,
        "/v1/projects",
        Some("Chatbot"),
        json!({"items": [{"id": "p9", "name": "Chatbot v2", "taskType": "llm-base"}]}),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects",
        json!({"name": "Chatbot", "taskType": "llm-base", "description": null}),
        json!({"id": "p1", "name": "Chatbot", "taskType": "llm-base"}),
    )
    .await;
    mount_list(
        &server,
        "/v1/projects/p1/inference-pipelines",
        Some("production"),
        json!({"items": []}),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects/p1/inference-pipelines",
        json!({"name": "production", "description": null}),
        json!({"id": "i1", "name": "production"}),
    )
    .await;
    let p = chatbot_production(&client(&server)).await;
    assert_eq!(p.id, "i1");
    assert_eq!(p.project_id.as_deref(), Some("p1"));
}

#[tokio::test]
async fn load_or_create_loads_without_creating() {
    let server = MockServer::start().await;
    mount_list(
        &server,
        "/v1/projects",
        None,
        json!({"items": [{"id": "p1", "name": "Chatbot", "taskType": "llm-base"}]}),
    )
    .await;
    mount_list(
        &server,
        "/v1/projects/p1/inference-pipelines",
        None,
        json!({"items": [{"id": "i0", "name": "production-old"}, {"id": "i1", "name": "production"}]}),
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let p = chatbot_production(&client(&server)).await;
    assert_eq!(p.id, "i1");
}

#[tokio::test]
async fn a_creation_is_repeated_only_when_it_cannot_have_been_acted_on() {
    // A 502 may come after the project was made: not tried again.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/projects"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c
        .create_project("Chatbot", TaskType::LlmBase, None)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 502);
    assert_eq!(requests(&server).await.len(), 1, "one attempt only");

    // A 429 says nothing was done: tried again, like any request.
    let server = MockServer::start().await;
    mount_post_once(
        &server,
        "/v1/projects/p1/inference-pipelines",
        ResponseTemplate::new(429).insert_header("retry-after-ms", "10"),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects/p1/inference-pipelines",
        json!({"name": "production", "description": null}),
        json!({"id": "i1", "name": "production"}),
    )
    .await;
    let p = client(&server)
        .create_inference_pipeline("p1", "production", None)
        .await
        .unwrap();
    assert_eq!(p.id, "i1");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn load_or_create_looks_again_after_a_creation_it_did_not_hear_back_from() {
    // A gateway timeout after the project was made, or a 409 because another process
    // made it at the same moment: the next look finds it, and nothing is made twice.
    for status in [504, 409] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": []})))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/projects"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"items": [{"id": "p1", "name": "Chatbot", "taskType": "llm-base"}]}),
            ))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/projects"))
            .respond_with(ResponseTemplate::new(status))
            .expect(1)
            .mount(&server)
            .await;
        mount_list(
            &server,
            "/v1/projects/p1/inference-pipelines",
            Some("production"),
            json!({"items": [{"id": "i1", "name": "production"}]}),
        )
        .await;
        let p = chatbot_production(&client(&server)).await;
        assert_eq!(p.id, "i1", "after a {status}");
        let posts = requests(&server)
            .await
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .count();
        assert_eq!(posts, 1, "after a {status}");
    }
}

#[tokio::test]
async fn a_wait_longer_than_a_call_waits_is_returned_not_hammered() {
    // A 429 asking for two minutes: the creation is not sent again within the call, and
    // the error says when to try again.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/projects"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/projects"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let err = client(&server)
        .load_or_create_inference_pipeline("Chatbot", "production", TaskType::LlmBase)
        .await
        .unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let Error::Api {
        status,
        retry_after,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 429);
    assert_eq!(*retry_after, Some(std::time::Duration::from_secs(120)));
    let posts = requests(&server)
        .await
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 1, "the server asked for two minutes");
}

#[tokio::test]
async fn load_or_create_creates_again_when_a_failed_creation_left_nothing() {
    let server = MockServer::start().await;
    mount_list(
        &server,
        "/v1/projects",
        Some("Chatbot"),
        json!({"items": [{"id": "p1", "name": "Chatbot", "taskType": "llm-base"}]}),
    )
    .await;
    // The pipeline is missing before and after the failed creation.
    Mock::given(method("GET"))
        .and(path("/v1/projects/p1/inference-pipelines"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": []})))
        .expect(2)
        .mount(&server)
        .await;
    mount_post_once(
        &server,
        "/v1/projects/p1/inference-pipelines",
        ResponseTemplate::new(503),
    )
    .await;
    mount_create(
        &server,
        "/v1/projects/p1/inference-pipelines",
        json!({"name": "production", "description": null}),
        json!({"id": "i1", "name": "production"}),
    )
    .await;
    let p = chatbot_production(&client(&server)).await;
    assert_eq!(p.id, "i1");

    // A creation that keeps failing ends with its error, after a last look.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": "broken"})))
        .mount(&server)
        .await;
    let c = Client::builder()
        .config(Config::default())
        .api_key(KEY)
        .base_url(format!("{}/v1", server.uri()))
        .max_retries(1)
        .build()
        .unwrap();
    let err = c
        .load_or_create_inference_pipeline("Chatbot", "production", TaskType::LlmBase)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 500);
    let reqs = requests(&server).await;
    let kinds: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    // Look, make, look, make, a last look: two creations with max_retries(1).
    assert_eq!(kinds, ["GET", "POST", "GET", "POST", "GET"]);
}

// ---- paging ---------------------------------------------------------------------------

/// Items `{"id": "<prefix><n>", "name": "item <n>"}` for each `n`.
fn items(prefix: &str, ns: impl IntoIterator<Item = usize>) -> Value {
    ns.into_iter()
        .map(|n| json!({"id": format!("{prefix}{n}"), "name": format!("item {n}")}))
        .collect()
}

/// A list endpoint holding `total` [`items`], answering `page` (from 1) and `perPage` as
/// the platform does; `None` is no end.
fn paged(prefix: &'static str, total: Option<usize>) -> impl Fn(&Request) -> ResponseTemplate {
    move |r: &Request| {
        let page: usize = query(r, "page").unwrap().parse().unwrap();
        let per_page: usize = query(r, "perPage").unwrap().parse().unwrap();
        let start = (page - 1) * per_page;
        let end = total.map_or(start + per_page, |t| t.min(start + per_page));
        ResponseTemplate::new(200).set_body_json(json!({"items": items(prefix, start..end)}))
    }
}

/// A list endpoint holding `total` [`items`] as the platform answers it: at most `cap`
/// items per page whatever `perPage` asks, and the paging in `_meta`.
fn paged_with_meta(
    prefix: &'static str,
    total: usize,
    cap: usize,
) -> impl Fn(&Request) -> ResponseTemplate {
    move |r: &Request| {
        let page: usize = query(r, "page").unwrap().parse().unwrap();
        let asked: usize = query(r, "perPage").unwrap().parse().unwrap();
        let per_page = asked.min(cap);
        let start = ((page - 1) * per_page).min(total);
        let end = total.min(start + per_page);
        let meta = json!({
            "page": page,
            "perPage": per_page,
            "totalItems": total,
            "totalPages": total.div_ceil(per_page),
        });
        ResponseTemplate::new(200)
            .set_body_json(json!({"_meta": meta, "items": items(prefix, start..end)}))
    }
}

#[tokio::test]
async fn a_server_holding_fewer_per_page_than_asked_is_read_to_the_end() {
    let server = MockServer::start().await;
    mount_get(&server, "/v1/projects", paged_with_meta("p", 250, 40)).await;
    let projects = client(&server).list_projects(None).await.unwrap();
    let ids: Vec<String> = projects.into_iter().map(|p| p.id).collect();
    let expected: Vec<String> = (0..250).map(|n| format!("p{n}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(pages_asked(&server).await, [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn the_total_pages_of_meta_end_a_list_of_full_pages_without_an_empty_page() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/v1/projects/p1/inference-pipelines",
        paged_with_meta("i", 200, 1000),
    )
    .await;
    let pipelines = client(&server)
        .list_inference_pipelines("p1", None)
        .await
        .unwrap();
    assert_eq!(pipelines.len(), 200);
    assert_eq!(pipelines[199].id, "i199");
    assert_eq!(pages_asked(&server).await, [1, 2]);
}

#[tokio::test]
async fn the_total_items_of_meta_end_a_list_of_capped_pages() {
    let server = MockServer::start().await;
    // Pages of at most 30, whatever is asked, with only `totalItems` in `_meta`.
    mount_get(&server, "/v1/projects", move |r: &Request| {
        let page: usize = query(r, "page").unwrap().parse().unwrap();
        let start = ((page - 1) * 30).min(70);
        let end = (start + 30).min(70);
        ResponseTemplate::new(200)
            .set_body_json(json!({"_meta": {"totalItems": 70}, "items": items("p", start..end)}))
    })
    .await;
    let projects = client(&server).list_projects(None).await.unwrap();
    assert_eq!(projects.len(), 70);
    assert_eq!(projects[69].id, "p69");
    assert_eq!(pages_asked(&server).await, [1, 2, 3]);
}

#[tokio::test]
async fn an_empty_list_with_meta_is_one_request() {
    let server = MockServer::start().await;
    mount_get(&server, "/v1/projects", paged_with_meta("p", 0, 1000)).await;
    assert!(
        client(&server)
            .list_projects(None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(pages_asked(&server).await, [1]);
}

/// Mounts `GET {path}` answered by `respond`, however often it is asked.
async fn mount_get(server: &MockServer, get_path: &str, respond: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(get_path))
        .respond_with(respond)
        .mount(server)
        .await;
}

/// The `page` parameter of every request, in order.
async fn pages_asked(server: &MockServer) -> Vec<u32> {
    requests(server)
        .await
        .iter()
        .map(|r| query(r, "page").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn list_projects_reads_every_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/projects"))
        .and(query_param("name", "Chat"))
        .and(query_param(
            "perPage",
            Client::LIST_PER_PAGE.to_string().as_str(),
        ))
        .respond_with(paged("p", Some(250)))
        .mount(&server)
        .await;
    let projects = client(&server).list_projects(Some("Chat")).await.unwrap();
    let ids: Vec<String> = projects.into_iter().map(|p| p.id).collect();
    let expected: Vec<String> = (0..250).map(|n| format!("p{n}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(pages_asked(&server).await, [1, 2, 3]);
}

#[tokio::test]
async fn an_empty_page_ends_a_list_of_full_pages() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/v1/projects/p1/inference-pipelines",
        paged("i", Some(200)),
    )
    .await;
    let pipelines = client(&server)
        .list_inference_pipelines("p1", None)
        .await
        .unwrap();
    assert_eq!(pipelines.len(), 200);
    assert_eq!(pipelines[199].id, "i199");
    assert!(
        pipelines
            .iter()
            .all(|p| p.project_id.as_deref() == Some("p1"))
    );
    assert_eq!(pages_asked(&server).await, [1, 2, 3]);
    for r in requests(&server).await {
        assert_eq!(query(&r, "name"), None);
    }
}

#[tokio::test]
async fn a_list_that_never_ends_fails_at_the_bound() {
    let server = MockServer::start().await;
    mount_get(&server, "/v1/projects", paged("p", None)).await;
    let err = client(&server).list_projects(None).await.unwrap_err();
    let (status, message, request) = api_error(&err);
    assert_eq!(status, 200);
    assert!(message.contains("did not end"), "{message}");
    let last = Client::LIST_MAX_PAGES;
    assert!(request.contains(&format!("page={last}&")), "{request}");
    let expected: Vec<u32> = (1..=last).collect();
    assert_eq!(pages_asked(&server).await, expected);
}

#[tokio::test]
async fn a_server_that_ignores_the_page_is_caught_at_once() {
    let server = MockServer::start().await;
    let full = items("p", 0..Client::LIST_PER_PAGE as usize);
    let answer = ResponseTemplate::new(200).set_body_json(json!({"items": full}));
    mount_get(&server, "/v1/projects", answer).await;
    let err = client(&server).list_projects(None).await.unwrap_err();
    let (status, message, _) = api_error(&err);
    assert_eq!(status, 200);
    assert!(message.contains("page 2 repeats page 1"), "{message}");
    assert_eq!(pages_asked(&server).await, [1, 2]);
}

#[tokio::test]
async fn a_server_that_does_not_page_is_read_once() {
    let server = MockServer::start().await;
    let more = items("p", 0..=Client::LIST_PER_PAGE as usize);
    mount_list(&server, "/v1/projects", None, json!({"items": more})).await;
    let projects = client(&server).list_projects(None).await.unwrap();
    assert_eq!(projects.len(), Client::LIST_PER_PAGE as usize + 1);
}

#[tokio::test]
async fn one_page_at_a_time() {
    let server = MockServer::start().await;
    mount_get(&server, "/v1/projects", paged("p", Some(25))).await;
    mount_get(
        &server,
        "/v1/projects/p%2F1/inference-pipelines",
        paged("i", Some(3)),
    )
    .await;
    let c = client(&server);
    let page = c.list_projects_page(Some("Chat"), 2, 10).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, (10..20).map(|n| format!("p{n}")).collect::<Vec<_>>());
    let last = c.list_projects_page(None, 3, 10).await.unwrap();
    assert_eq!(last.len(), 5);
    let past = c.list_projects_page(None, 4, 10).await.unwrap();
    assert!(past.is_empty());
    let pipelines = c
        .list_inference_pipelines_page("p/1", None, 1, 2)
        .await
        .unwrap();
    assert_eq!(pipelines.len(), 2);
    assert_eq!(pipelines[1].project_id.as_deref(), Some("p/1"));

    let reqs = requests(&server).await;
    assert_eq!(
        reqs[0].url.query(),
        Some("name=Chat&page=2&perPage=10"),
        "the name filter, then the page"
    );
    assert_eq!(reqs.len(), 4);

    for e in [
        c.list_projects_page(None, 0, 10).await.unwrap_err(),
        c.list_projects_page(None, 1, 0).await.unwrap_err(),
        c.list_inference_pipelines_page("", None, 1, 10)
            .await
            .unwrap_err(),
    ] {
        assert_invalid_input(&e, &[]);
    }
    assert_eq!(requests(&server).await.len(), 4);
}

// ---- bulk -----------------------------------------------------------------------------

/// Mounts the presigned-URL endpoint (pointing the upload at the same server), the
/// storage and the `/data` endpoint.
async fn mount_bulk(server: &MockServer, storage_status: u16) {
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        // Written out by hand: the fields are deliberately not in sorted order.
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            format!(
                r#"{{"url":"{}/storage/bucket?X-Amz-Signature=sig-secret","storageUri":"s3://bucket/batch.csv","fields":{{"key":"uploads/batch.csv","Policy":"cG9saWN5","x-amz-signature":"abc"}}}}"#,
                server.uri()
            ),
            "application/json",
        ))
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(storage_status).set_body_string("storage says no"))
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data")))
        .respond_with(ok())
        .mount(server)
        .await;
}

/// The parts of a multipart body, as (headers, content).
fn multipart_parts(r: &Request) -> Vec<(String, String)> {
    let ct = r
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let body = body_text(r);
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let pieces: Vec<&str> = body.split(delimiter.as_str()).collect();
    assert_eq!(pieces[0], "");
    assert_eq!(pieces.last().copied(), Some("--\r\n"));
    for piece in &pieces[1..pieces.len() - 1] {
        let piece = piece.strip_prefix("\r\n").unwrap();
        let piece = piece.strip_suffix("\r\n").unwrap();
        let (head, content) = piece.split_once("\r\n\r\n").unwrap();
        parts.push((head.to_string(), content.to_string()));
    }
    parts
}

#[tokio::test]
async fn publish_batch_uploads_a_csv_when_asked_then_registers_it() {
    let server = MockServer::start().await;
    mount_bulk(&server, 204).await;
    let cfg = TabularClassificationConfig::new(["no", "yes"])
        .feature_names(["age", "tags"])
        .predictions_column_name("pred")
        .inference_id_column_name("id");
    let rows = [
        json!({"age": 30, "id": "r1", "pred": 1, "tags": ["a", "b"]}),
        json!({"age": null, "id": "r,2", "pred": 0, "tags": []}),
    ];
    csv_client(&server)
        .publish_batch(PIPELINE, &cfg, &rows)
        .await
        .unwrap();

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 3);
    // 1. the presigned URL, for a fresh .csv object name, empty body
    assert_eq!(reqs[0].url.path(), "/v1/storage/presigned-url");
    let object = query(&reqs[0], "objectName").unwrap();
    assert!(object.ends_with(".csv"), "{object}");
    assert!(reqs[0].body.is_empty());

    // 2. the upload: the fields in the given order, then the file; no API key
    let upload = &reqs[1];
    assert_eq!(upload.url.path(), "/storage/bucket");
    assert!(upload.headers.get("authorization").is_none());
    let parts = multipart_parts(upload);
    let names: Vec<&str> = parts
        .iter()
        .map(|(h, _)| {
            h.split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["key", "Policy", "x-amz-signature", "file"]);
    assert_eq!(parts[0].1, "uploads/batch.csv");
    assert!(
        parts[3].0.contains(&format!("filename=\"{object}\"")),
        "{}",
        parts[3].0
    );
    assert!(parts[3].0.contains("Content-Type: text/csv"));
    assert_eq!(
        parts[3].1,
        "age,id,pred,tags\n30,r1,1,\"[\"\"a\"\",\"\"b\"\"]\"\n,\"r,2\",0,[]\n"
    );

    // 3. the registration, appending
    assert_eq!(reqs[2].url.path(), pipeline_path("data"));
    assert_eq!(
        reqs[2].body_json::<Value>().unwrap(),
        json!({
            "storageUri": "s3://bucket/batch.csv",
            "performDataMerge": false,
            "config": {
                "classNames": ["no", "yes"],
                "featureNames": ["age", "tags"],
                "predictionsColumnName": "pred",
                "inferenceIdColumnName": "id",
            }
        })
    );
    assert!(body_text(&reqs[2]).starts_with(r#"{"storageUri":"#));
}

/// Mounts the presign (any number of times) and the registration of bulk uploads; the
/// storage answers `first` for the first `n` uploads, then `rest`.
async fn mount_bulk_files(server: &MockServer, n: u64, first: u16, rest: u16) {
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/batch.csv",
            "fields": {"key": "uploads/batch.csv"}
        })))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(first))
        .up_to_n_times(n)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(rest).set_body_string("storage says no"))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data")))
        .respond_with(ok())
        .mount(server)
        .await;
}

/// The files uploaded to the storage, in order.
fn uploaded_files(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.url.path() == "/storage/bucket")
        .map(|r| multipart_parts(r).last().unwrap().1.clone())
        .collect()
}

/// 30 rows; row 25 alone has a `note`.
fn bulk_rows() -> Vec<Value> {
    (0..30)
        .map(|i| {
            // Keys in sorted order, so that the columns come out the same whether
            // serde_json's maps sort their keys or keep their order (`preserve_order`,
            // which the workspace's build turns on).
            let mut row = json!({"age": 20 + i, "id": format!("r{i}"), "pred": i % 2});
            if i == 25 {
                row["note"] = json!("late column");
            }
            row
        })
        .collect()
}

/// A platform whose storage answers an upload with `status`, redirecting it to
/// `/storage/elsewhere` (which answers a POST 204, a GET 200), and which registers uploads.
async fn storage_redirecting(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/batch.csv",
            "fields": {"key": "uploads/batch.csv"}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(
            ResponseTemplate::new(status)
                .insert_header("location", format!("{}/storage/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/elsewhere"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/storage/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data")))
        .respond_with(ok())
        .mount(&server)
        .await;
    server
}

fn redirect_test_config() -> TabularClassificationConfig {
    TabularClassificationConfig::new(["no", "yes"])
        .feature_names(["age"])
        .predictions_column_name("pred")
        .inference_id_column_name("id")
}

/// A storage answering an upload with a 307 (S3, for a bucket of another region): the
/// upload follows it, with its body, and carries no credential there.
#[tokio::test]
async fn an_upload_follows_the_storages_redirect() {
    let server = storage_redirecting(307).await;
    csv_client_of(&server, 1 << 20)
        .publish_batch(PIPELINE, &redirect_test_config(), &bulk_rows())
        .await
        .unwrap();
    let reqs = requests(&server).await;
    let moved: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.url.path() == "/storage/elsewhere")
        .collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].method.as_str(), "POST");
    assert!(
        multipart_parts(moved[0])
            .last()
            .unwrap()
            .1
            .starts_with("age,id,pred")
    );
    assert!(moved[0].headers.get("authorization").is_none());
}

/// A storage answering an upload with a 302 (or 301, 303): not followed, as a client would
/// follow it with a GET and no body, whose 2xx would count the upload as stored. The
/// upload fails, and nothing is registered.
#[tokio::test]
async fn an_upload_answered_with_a_redirect_that_drops_its_body_fails() {
    let server = storage_redirecting(302).await;
    let e = csv_client_of(&server, 1 << 20)
        .publish_batch(PIPELINE, &redirect_test_config(), &bulk_rows())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("302"), "{e}");
    let reqs = requests(&server).await;
    assert!(
        reqs.iter().all(|r| r.url.path() != "/storage/elsewhere"),
        "followed"
    );
    assert!(
        reqs.iter().all(|r| r.url.path() != pipeline_path("data")),
        "registered"
    );
}

#[tokio::test]
async fn a_large_csv_publish_is_split_into_uploads_of_bulk_max_bytes() {
    let server = MockServer::start().await;
    mount_bulk_files(&server, 100, 204, 204).await;
    let client = csv_client_of(&server, 100);
    let cfg = TabularClassificationConfig::new(["no", "yes"])
        .feature_names(["age"])
        .predictions_column_name("pred")
        .inference_id_column_name("id");
    client
        .publish_batch(PIPELINE, &cfg, &bulk_rows())
        .await
        .unwrap();

    let reqs = requests(&server).await;
    let kinds: Vec<&str> = reqs.iter().map(|r| r.url.path()).collect();
    let files = uploaded_files(&reqs);
    assert!(files.len() >= 3, "{} file(s)", files.len());
    // Each file is uploaded and registered before the next is presigned.
    let expected: Vec<&str> = std::iter::repeat_n(
        [
            "/v1/storage/presigned-url",
            "/storage/bucket",
            "/v1/inference-pipelines/00000000-0000-0000-0000-000000000001/data",
        ],
        files.len(),
    )
    .flatten()
    .collect();
    assert_eq!(kinds, expected);
    // Every file has the header of all the rows (`note` too), and at most 100 bytes
    // plus one row.
    let mut ids = Vec::new();
    for f in &files {
        let mut lines = f.lines();
        // `note`, first seen last, comes last.
        assert_eq!(lines.next(), Some("age,id,pred,note"), "{f}");
        let rows: Vec<&str> = lines.collect();
        assert!(f.len() - rows.last().unwrap().len() - 1 < 100, "{f}");
        ids.extend(
            rows.iter()
                .map(|l| l.split(',').nth(1).unwrap().to_string()),
        );
    }
    assert_eq!(ids, (0..30).map(|i| format!("r{i}")).collect::<Vec<_>>());
    assert!(files.iter().any(|f| f.contains("45,r25,1,late column")));
}

#[tokio::test]
async fn a_failed_csv_file_after_registered_ones_is_a_partial_error() {
    let server = MockServer::start().await;
    // The third upload is refused (403 is final for the storage).
    mount_bulk_files(&server, 2, 204, 403).await;
    let client = csv_client_of(&server, 100);
    let rows = bulk_rows();
    let err = client
        .update_batch(PIPELINE, "id", None, &rows)
        .await
        .unwrap_err();
    let Error::BulkPartial {
        rows_sent,
        uploads,
        source,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*uploads, 2);
    let files = uploaded_files(&requests(&server).await);
    let in_first_two: usize = files[..2].iter().map(|f| f.lines().count() - 1).sum();
    assert_eq!(*rows_sent, in_first_two as u64);
    assert!(source.to_string().contains("storage says no"), "{source}");
    let registered = requests(&server)
        .await
        .iter()
        .filter(|r| r.url.path().ends_with("/data"))
        .count();
    assert_eq!(registered, 2);
}

#[tokio::test]
async fn update_batch_as_csv_merges_by_inference_id() {
    let server = MockServer::start().await;
    mount_bulk(&server, 200).await;
    let rows = [
        json!({"inference_id": "d56d2b2c", "label": 0}),
        json!({"inference_id": "3b0b2521", "label": 1}),
    ];
    csv_client(&server)
        .update_batch(
            PIPELINE,
            "inference_id",
            Some(RowUpdateConfig::new().ground_truth_column_name("label")),
            &rows,
        )
        .await
        .unwrap();
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 3);
    let parts = multipart_parts(&reqs[1]);
    assert_eq!(
        parts.last().unwrap().1,
        "inference_id,label\nd56d2b2c,0\n3b0b2521,1\n"
    );
    assert_eq!(
        reqs[2].body_json::<Value>().unwrap(),
        json!({
            "storageUri": "s3://bucket/batch.csv",
            "performDataMerge": true,
            "config": {"groundTruthColumnName": "label", "inferenceIdColumnName": "inference_id"}
        })
    );
}

#[tokio::test]
async fn a_refused_upload_names_the_storage_without_its_signature() {
    let server = MockServer::start().await;
    mount_bulk(&server, 403).await;
    let err = client(&server)
        .update_batch(PIPELINE, "id", None, &[json!({"id": "a", "x": 1})])
        .await
        .unwrap_err();
    let (status, message, request) = api_error(&err);
    assert_eq!(status, 403);
    assert_eq!(message, "storage says no");
    assert_eq!(request, format!("POST {}/storage/bucket", server.uri()));
    assert!(!err.to_string().contains("sig-secret"));
    // nothing was registered
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
}

#[tokio::test]
async fn a_failed_upload_is_retried_like_api_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_string("slow down")
                .insert_header("retry-after", "1"),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    // then the usual storage (answering 204), presigned URL and /data
    mount_bulk(&server, 204).await;
    let started = std::time::Instant::now();
    client(&server)
        .publish_batch(PIPELINE, &LlmConfig::new("o"), &[json!({"o": "x"})])
        .await
        .unwrap();
    // The storage's Retry-After is honoured, as an API request's is.
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let paths: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/storage/presigned-url".to_string(),
            "/storage/bucket".to_string(),
            "/storage/bucket".to_string(),
            pipeline_path("data"),
        ]
    );
}

#[tokio::test]
async fn a_storage_wait_longer_than_a_call_waits_is_returned() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "300"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/batch.csv",
            "fields": {}
        })))
        .mount(&server)
        .await;
    let e = client(&server)
        .publish_batch(PIPELINE, &LlmConfig::new("o"), &[json!({"o": "x"})])
        .await
        .unwrap_err();
    let text = format!("{e:?}");
    assert!(text.contains("429"), "{text}");
    assert!(text.contains("300s"), "the wait is in the error: {text}");
}

// ---- local mode -------------------------------------------------------------------------

#[tokio::test]
async fn local_mode_writes_the_file_and_refuses_reads() {
    let dir = TempDir::new("local");
    let file = dir.0.join("traces.jsonl");
    let c = Client::builder()
        .config(Config::default())
        .trace_file(&file)
        .batch_max_rows(2)
        .build()
        .unwrap();
    assert!(c.is_local());
    assert_eq!(c.local_file(), Some(file.as_path()));

    let p = chatbot_production(&c).await;
    assert!(p.local);
    assert_eq!(p.name, "production");
    assert_eq!(uuid_version(&p.id), Some(5));
    assert_eq!(p.id, chatbot_production(&c).await.id);

    let cfg = LlmConfig::new("output");
    c.stream_rows(&p.id, &cfg, &[json!({"inferenceId": "a", "output": "hi"})])
        .await
        .unwrap();
    c.update_row(
        &p.id,
        "a",
        &json!({"groundTruth": "hello"}),
        Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
    )
    .await
    .unwrap();
    // a pipeline-less update is kept for `openlayer push --pipeline-id`
    c.update_row("", "b", &json!({"rating": 4}), None)
        .await
        .unwrap();
    let rows: Vec<Value> = (0..3).map(|i| json!({"output": i})).collect();
    c.publish_batch(&p.id, &cfg, &rows).await.unwrap();
    c.update_batch(
        &p.id,
        "id",
        Some(RowUpdateConfig::new().ground_truth_column_name("gt")),
        &[json!({"id": "a", "gt": 1}), json!({"id": 7, "gt": 0})],
    )
    .await
    .unwrap();

    let lines: Vec<LocalLine> = read_local_file(&file)
        .unwrap()
        .map(|e| e.line.unwrap())
        .collect();
    let text = std::fs::read_to_string(&file).unwrap();
    let raw: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert_eq!(
        raw[0],
        format!(
            r#"{{"pipelineId":"{}","config":{{"outputColumnName":"output"}},"rows":[{{"inferenceId":"a","output":"hi"}}]}}"#,
            p.id
        )
    );
    assert_eq!(
        raw[1],
        format!(
            r#"{{"pipelineId":"{}","inferenceId":"a","row":{{"groundTruth":"hello"}},"config":{{"groundTruthColumnName":"groundTruth"}}}}"#,
            p.id
        )
    );
    assert_eq!(
        raw[2],
        r#"{"pipelineId":null,"inferenceId":"b","row":{"rating":4}}"#
    );
    // bulk publish: stream lines of at most batch_max_rows rows
    assert!(matches!(&lines[3], LocalLine::Stream { rows, .. } if rows.len() == 2));
    assert!(matches!(&lines[4], LocalLine::Stream { rows, .. } if rows.len() == 1));
    // bulk update: one update line per row, the id column moved out of the row
    assert_eq!(
        raw[6],
        format!(
            r#"{{"pipelineId":"{}","inferenceId":"7","row":{{"gt":0}},"config":{{"groundTruthColumnName":"gt"}}}}"#,
            p.id
        )
    );

    for e in [
        c.get_row(&p.id, "a").await.unwrap_err(),
        c.delete_row(&p.id, "a").await.unwrap_err(),
        c.list_projects(None).await.unwrap_err(),
        c.list_inference_pipelines("p", None).await.unwrap_err(),
        c.list_projects_page(None, 1, 10).await.unwrap_err(),
        c.list_inference_pipelines_page("p", None, 1, 10)
            .await
            .unwrap_err(),
        c.create_project("x", TaskType::LlmBase, None)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::Config(m) if m.contains("requires OPENLAYER_API_KEY")),
            "{e:?}"
        );
    }
}

fn uuid_version(s: &str) -> Option<u32> {
    // xxxxxxxx-xxxx-Vxxx-...
    let parts: Vec<&str> = s.split('-').collect();
    (parts.len() == 5 && parts[2].len() == 4).then(|| parts[2][..1].parse().ok())?
}

/// Mounts a presigned URL and a storage that accept every upload, and a `/data` endpoint
/// that answers `status` `n` times, then 200.
async fn mount_registration_failing(server: &MockServer, status: u16, n: u64) {
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/batch.csv",
            "fields": {"key": "uploads/batch.csv"}
        })))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(ResponseTemplate::new(204))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data")))
        .respond_with(ResponseTemplate::new(status).set_body_string("registration failed"))
        .up_to_n_times(n)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(pipeline_path("data")))
        .respond_with(ok())
        .mount(server)
        .await;
}

fn registrations(reqs: &[Request]) -> usize {
    reqs.iter()
        .filter(|r| r.url.path() == pipeline_path("data"))
        .count()
}

/// An append (`publish_batch`) whose registration failed after the platform may have
/// acted on it is not registered again: a second registration would add every row twice.
/// The server's error is returned.
#[tokio::test]
async fn a_failed_append_registration_is_not_repeated() {
    let server = MockServer::start().await;
    mount_registration_failing(&server, 500, 1).await;
    let cfg = TabularClassificationConfig::new(["no", "yes"])
        .feature_names(["age"])
        .predictions_column_name("pred")
        .inference_id_column_name("id");
    let rows = [json!({"age": 30, "id": "r1", "pred": 1})];
    let err = csv_client(&server)
        .publish_batch(PIPELINE, &cfg, &rows)
        .await
        .unwrap_err();
    assert_eq!(
        registrations(&requests(&server).await),
        1,
        "registered once"
    );
    let text = err.to_string();
    assert!(text.contains("500"), "{text}");
    // Said so: the caller can tell that the upload's row may be in (its rerun would
    // append it twice).
    match &err {
        Error::AppendUncertain { rows, source } => {
            assert_eq!(*rows, 1);
            assert!(
                matches!(**source, Error::Api { status: 500, .. }),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(text.contains("may have been appended"), "{text}");
    // A refusal (4xx) is certain: nothing was appended, nothing to be unsure of.
    let server = MockServer::start().await;
    mount_registration_failing(&server, 422, 1).await;
    let err = csv_client(&server)
        .publish_batch(PIPELINE, &cfg, &rows)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Api { status: 422, .. }), "{err:?}");
}

/// A merge (`update_batch`) is the same whether registered once or twice: retried.
#[tokio::test]
async fn a_failed_merge_registration_is_retried() {
    let server = MockServer::start().await;
    mount_registration_failing(&server, 500, 1).await;
    let rows = [json!({"id": "r1", "label": 1})];
    csv_client(&server)
        .update_batch(PIPELINE, "id", None, &rows)
        .await
        .unwrap();
    assert_eq!(registrations(&requests(&server).await), 2, "retried once");
}
