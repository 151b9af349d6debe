//! The layer in a real axum server on loopback, called by reqwest clients, with its traces
//! delivered to the loopback Openlayer server (`openlayer-testserver`).
//!
//! The SDK's configuration is global to a process: every test of this binary shares one
//! pipeline and one Openlayer server, and finds its own rows by inference id or by
//! values only it sends.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use openlayer_trace::{Config, current_inference_id, trace, update_row};
use openlayer_trace_tests::{RecordedRequest, TestServer};
use openlayer_trace_tower::OpenlayerLayer;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;

const PIPE: &str = "pipe-tower";
const HEADER: &str = "x-openlayer-inference-id";
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The service under test

#[trace(kind = "retriever")]
async fn retrieve(question: String) -> Vec<String> {
    tokio::task::yield_now().await;
    vec![format!("doc about {question}")]
}

#[trace]
fn token(i: u64) -> String {
    format!("t{i} ")
}

/// Echoes who it served, and the inference id the handler sees.
async fn chat(Path(user): Path<String>, Json(body): Json<Value>) -> Json<Value> {
    let question = body["question"].as_str().unwrap_or_default().to_string();
    let docs = retrieve(question.clone()).await;
    let spawned = openlayer_trace::spawn(retrieve(format!("{question} (spawned)")))
        .await
        .expect("the spawned retrieval");
    Json(json!({
        "user": user,
        "docs": docs.len() + spawned.len(),
        "inference_id": current_inference_id(),
    }))
}

/// An endless token stream; each token is a `#[trace]` step made while the body is
/// polled. The client decides when it has seen enough.
fn tokens() -> impl Stream<Item = u64> {
    stream::unfold(0u64, |i| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((i, i + 1))
    })
}

async fn sse(Path(n): Path<u64>) -> Response {
    let events = tokens()
        .take(n as usize)
        .map(|i| Ok::<_, Infallible>(Event::default().data(token(i))));
    Sse::new(events).into_response()
}

async fn chunks(Path(n): Path<u64>) -> Response {
    let chunks = tokens()
        .take(n as usize)
        .map(|i| Ok::<_, Infallible>(token(i)));
    Body::from_stream(chunks).into_response()
}

/// `chunks`, with its length declared: the server stops polling the body once it has
/// sent that many bytes, before the stream reports its end.
async fn sized_chunks(Path(n): Path<u64>) -> Response {
    let length: usize = (0..n).map(|i| format!("t{i} ").len()).sum();
    let mut res = chunks(Path(n)).await;
    res.headers_mut()
        .insert(axum::http::header::CONTENT_LENGTH, length.into());
    res
}

/// `chunks`, then trailers (always the last frame: the server polls no further).
async fn chunks_then_trailers(Path(n): Path<u64>) -> Response {
    let mut trailers = axum::http::HeaderMap::new();
    trailers.insert("x-checksum", axum::http::HeaderValue::from_static("abc"));
    let frames = tokens()
        .take(n as usize)
        .map(|i| Ok::<_, Infallible>(http_body::Frame::data(bytes::Bytes::from(token(i)))))
        .chain(stream::iter([Ok(http_body::Frame::trailers(trailers))]));
    Response::new(Body::new(http_body_util::StreamBody::new(frames)))
}

async fn panics() -> &'static str {
    retrieve("before the panic".into()).await;
    panic!("the handler blew up");
}

async fn fails() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "database down")
}

async fn feedback(Json(body): Json<Value>) -> StatusCode {
    let id = body["inference_id"].as_str().unwrap_or_default();
    update_row(id, json!({"thumbs": body["thumbs"]}), None);
    StatusCode::NO_CONTENT
}

async fn echo_len(body: String) -> String {
    body.len().to_string()
}

/// Calls of [`count`], which only the test of cut-short bodies requests.
static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn count(body: String) -> String {
    COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    body.len().to_string()
}

/// `n` chunks, then a failure of the body's stream.
async fn chunks_then_error(Path(n): Path<u64>) -> Response {
    let chunks = tokens().take(n as usize).map(|i| Ok(token(i)));
    let failure = stream::once(async { Err(std::io::Error::other("the upstream stream broke")) });
    Body::from_stream(chunks.chain(failure)).into_response()
}

/// `n` chunks, then a panic while the body is polled (after the handler returned, where
/// no `CatchPanicLayer` reaches).
async fn chunks_then_panic(Path(n): Path<u64>) -> Response {
    let chunks = tokens()
        .take(n as usize)
        .map(|i| Ok::<_, Infallible>(token(i)));
    let boom = stream::once(async { panic!("the body's stream blew up") });
    Body::from_stream(chunks.chain(boom)).into_response()
}

/// Answers, and rates its own row while the request's trace is still open.
async fn rate_myself() -> &'static str {
    let id = current_inference_id().expect("the request's trace");
    update_row(&id, json!({"selfRating": 5}), None);
    "rated"
}

/// What an authentication middleware would put in the extensions.
#[derive(Clone)]
struct Session(String);

async fn session_from_query(mut req: Request, next: Next) -> Response {
    let session = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("session="))
        .map(str::to_string);
    if let Some(s) = session {
        req.extensions_mut().insert(Session(s));
    }
    next.run(req).await
}

fn app() -> Router {
    Router::new()
        .route("/chat/{user}", post(chat))
        .route("/sse/{n}", get(sse))
        .route("/chunks/{n}", get(chunks))
        .route("/sized-chunks/{n}", get(sized_chunks))
        .route("/trailers/{n}", get(chunks_then_trailers))
        .route("/panic", get(panics))
        .route("/fail", get(fails))
        .route("/feedback", post(feedback))
        .route("/echo", post(echo_len))
        .route("/count", post(count))
        .route("/chunks-error/{n}", get(chunks_then_error))
        .route("/chunks-panic/{n}", get(chunks_then_panic))
        .route("/rate-myself", get(rate_myself))
        .layer(
            OpenlayerLayer::new()
                .record_headers([
                    "authorization",
                    "Cookie",
                    "x-client",
                    "user-agent",
                    "proxy-authorization",
                ])
                .user_id_header("x-user-id")
                .session_id(|req| req.extensions.get::<Session>().map(|s| s.0.clone()))
                .record_json_body(256),
        )
        // Outside ours: runs first, and catches the handler's panics after our layer saw
        // them.
        .layer(middleware::from_fn(session_from_query))
        .layer(CatchPanicLayer::new())
        // Routers nested under a prefix, with a layer of their own (the routes above are
        // not under it): one traces its routes, the other every request it answers, its
        // fallback (no `MatchedPath`) included.
        .nest(
            "/api/v1",
            Router::new()
                .route("/chat/{user}", post(chat))
                .route_layer(OpenlayerLayer::new()),
        )
        .nest(
            "/api/v2",
            Router::new()
                .route("/known", get(|| async { "known" }))
                .fallback(|| async { (StatusCode::NOT_FOUND, "nested fallback") })
                .layer(OpenlayerLayer::new()),
        )
}

// ---------------------------------------------------------------------------------------
// The harness: one Openlayer server and pipeline, one axum server, per process

struct Harness {
    openlayer: TestServer,
    base: String,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let openlayer = TestServer::start();
        let config = Config::builder()
            .api_key("sk-test-tower-0a1b2c3d4e5f")
            .base_url(openlayer.url())
            .inference_pipeline_id(PIPE)
            .linger(Duration::from_millis(5))
            .build()
            .expect("config");
        // Kept for the whole process: every test waits for its own rows.
        std::mem::forget(openlayer_trace::init(config).expect("init"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                axum::serve(listener, app()).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("the server's address");
        Harness {
            openlayer,
            base: format!("http://{addr}"),
        }
    })
}

/// A plain-HTTP client for loopback (reqwest is built without a process-wide TLS
/// provider: it gets an explicit one that trusts nothing).
fn client() -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("client")
}

/// Every row in these requests to the Openlayer server.
fn rows_in(requests: &[RecordedRequest]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.is_data_stream() && r.outcome.is_success())
        .filter_map(|r| r.json.as_ref()?.get("rows")?.as_array().cloned())
        .flatten()
        .collect()
}

/// Every row received so far by the Openlayer server.
fn rows(h: &Harness) -> Vec<Value> {
    rows_in(&h.openlayer.requests())
}

/// Waits for the first row matching `pred`.
async fn row_where(h: &Harness, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let found = h
        .openlayer
        .wait_for(WAIT, |reqs| rows_in(reqs).iter().any(&pred))
        .await;
    assert!(found, "no row {what} within {WAIT:?}; rows: {:#?}", rows(h));
    rows(h).into_iter().find(|r| pred(r)).unwrap()
}

async fn row_of(h: &Harness, inference_id: &str) -> Value {
    row_where(h, inference_id, |r| r["inferenceId"] == inference_id).await
}

fn route_name(method: &str, template: &str, path: &str) -> String {
    if cfg!(feature = "axum") {
        format!("{method} {template}")
    } else {
        format!("{method} {path}")
    }
}

fn child_names(step: &Value) -> Vec<String> {
    step["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn header(res: &reqwest::Response) -> String {
    res.headers()
        .get(HEADER)
        .unwrap_or_else(|| panic!("no {HEADER} in {:?}", res.headers()))
        .to_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_make_separate_traces() {
    let h = harness();
    let client = client();
    let users: Vec<String> = (0..12).map(|i| format!("conc-{i}")).collect();
    let calls = users.iter().map(|u| {
        let client = client.clone();
        let url = format!("{}/chat/{u}?session=s-{u}", h.base);
        async move {
            let res = client
                .post(url)
                .header("x-user-id", u.as_str())
                .json(&json!({"question": format!("q-{u}")}))
                .send()
                .await
                .expect("request");
            assert_eq!(res.status(), 200);
            let id = header(&res);
            let body: Value = res.json().await.unwrap();
            (id, body)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut ids: Vec<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), users.len(), "one inference id per request");
    for (u, (id, body)) in users.iter().zip(&answers) {
        assert_eq!(body["user"], u.as_str());
        assert_eq!(
            body["inference_id"],
            id.as_str(),
            "the handler sees the row's id"
        );
        let row = row_of(h, id).await;
        let root = &row["steps"][0];
        assert_eq!(
            root["name"],
            route_name("POST", "/chat/{user}", &format!("/chat/{u}"))
        );
        assert_eq!(root["inputs"]["method"], "POST");
        assert_eq!(root["inputs"]["path"], format!("/chat/{u}"));
        assert_eq!(
            root["inputs"]["body"],
            json!({"question": format!("q-{u}")})
        );
        assert_eq!(root["output"], 200);
        assert_eq!(row["output"], 200);
        assert_eq!(row["user_id"], u.as_str());
        assert_eq!(row["session_id"], format!("s-{u}"));
        // Only this request's steps, in order, the spawned one included.
        assert_eq!(child_names(root), ["retrieve", "retrieve"], "{row:#}");
        assert_eq!(root["steps"][0]["inputs"]["question"], format!("q-{u}"));
        assert_eq!(
            root["steps"][1]["inputs"]["question"],
            format!("q-{u} (spawned)")
        );
        assert!(root["metadata"].get("cancelled").is_none(), "{row:#}");
    }
}

/// In a router nested under a prefix, the recorded path, and the name when no route
/// template is known, are the path the client called (with the `axum` feature, which
/// reads axum's `OriginalUri`), not the one axum hands the nested router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_routers_record_the_path_the_client_called() {
    let h = harness();
    let client = client();
    // Without the feature, the layer only sees the path with the prefix stripped.
    let full = |path: &str, prefix: &str| {
        if cfg!(feature = "axum") {
            format!("{prefix}{path}")
        } else {
            path.to_string()
        }
    };

    let res = client
        .post(format!("{}/api/v1/chat/nested-u", h.base))
        .json(&json!({"question": "nested"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = header(&res);
    let row = row_of(h, &id).await;
    let root = &row["steps"][0];
    assert_eq!(root["inputs"]["path"], full("/chat/nested-u", "/api/v1"));
    assert_eq!(
        root["name"],
        route_name("POST", "/api/v1/chat/{user}", "/chat/nested-u")
    );

    let res = client
        .get(format!("{}/api/v2/no-such-route", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let id = header(&res);
    let row = row_of(h, &id).await;
    let root = &row["steps"][0];
    let path = full("/no-such-route", "/api/v2");
    assert_eq!(root["inputs"]["path"], path);
    assert_eq!(root["name"], format!("GET {path}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_id_round_trips_through_the_header() {
    let h = harness();
    let client = client();
    // The client's id is kept: a retry sends a second row with the same id.
    for attempt in 0..2 {
        let res = client
            .post(format!("{}/chat/rt", h.base))
            .header(HEADER, "order-7-attempt")
            .json(&json!({"question": format!("attempt {attempt}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&res), "order-7-attempt");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["inference_id"], "order-7-attempt");
    }
    let found = h
        .openlayer
        .wait_for(WAIT, |reqs| {
            rows_in(reqs)
                .iter()
                .filter(|r| r["inferenceId"] == "order-7-attempt")
                .count()
                == 2
        })
        .await;
    assert!(found, "both attempts under the client's id: {:#?}", rows(h));

    // No header: a new id, the same in the response, the handler and the row.
    let res = client
        .post(format!("{}/chat/rt2", h.base))
        .json(&json!({"question": "fresh"}))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["inference_id"], id.as_str());
    let row = row_of(h, &id).await;
    assert_eq!(row["steps"][0]["inputs"]["body"]["question"], "fresh");

    // An unusable id (too long) is not taken.
    let long = "x".repeat(300);
    let res = client
        .post(format!("{}/chat/rt3", h.base))
        .header(HEADER, &long)
        .json(&json!({"question": "long"}))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_ne!(id, long);
    row_of(h, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborting_a_stream_ships_a_cancelled_trace() {
    let h = harness();
    let client = client();
    for (route, template) in [("sse", "/sse/{n}"), ("chunks", "/chunks/{n}")] {
        let mut res = client
            .get(format!("{}/{route}/100000", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let id = header(&res);
        // Read a few chunks, then go away.
        let mut seen = 0;
        while seen < 3 {
            res.chunk().await.unwrap().expect("a chunk");
            seen += 1;
        }
        drop(res);
        let row = row_of(h, &id).await;
        let root = &row["steps"][0];
        assert_eq!(
            root["name"],
            route_name("GET", template, &format!("/{route}/100000"))
        );
        assert_eq!(root["metadata"]["cancelled"], true, "{route}: {row:#}");
        assert_eq!(root["output"], 200, "the status sent so far");
        // The tokens made while the body was polled nest under the request's step.
        let tokens = child_names(root);
        assert!(tokens.len() >= 3, "{route}: {tokens:?}");
        assert!(tokens.iter().all(|t| t == "token"), "{route}: {tokens:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sent_in_full_end_the_step_with_the_last_byte() {
    let h = harness();
    let client = client();
    for (route, n) in [
        ("sse", 4u64),
        ("chunks", 5),
        ("sized-chunks", 5),
        ("trailers", 3),
    ] {
        let res = client
            .get(format!("{}/{route}/{n}", h.base))
            .send()
            .await
            .unwrap();
        let id = header(&res);
        let text = res.text().await.unwrap();
        assert!(text.contains(&format!("t{} ", n - 1)), "{text}");
        let row = row_of(h, &id).await;
        let root = &row["steps"][0];
        assert!(root["metadata"].get("cancelled").is_none(), "{row:#}");
        assert_eq!(root["output"], 200);
        assert_eq!(child_names(root).len(), n as usize, "{row:#}");
        // The step lasted as long as the stream (n tokens, 5 ms apart).
        let latency = root["latency"].as_f64().unwrap();
        assert!(latency >= (5 * n) as f64, "{route}: latency {latency} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_and_server_error_are_recorded() {
    let h = harness();
    let client = client();
    let res = client
        .get(format!("{}/panic", h.base))
        .header(HEADER, "panic-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500, "CatchPanicLayer answered");
    let row = row_of(h, "panic-1").await;
    let root = &row["steps"][0];
    assert_eq!(root["name"], "GET /panic");
    let exceptions = root["metadata"]["Exceptions"].as_str().unwrap_or_default();
    assert!(exceptions.contains("the handler blew up"), "{row:#}");
    assert_eq!(child_names(root), ["retrieve"]);

    let res = client.get(format!("{}/fail", h.base)).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let id = header(&res);
    assert_eq!(res.text().await.unwrap(), "database down");
    let row = row_of(h, &id).await;
    let root = &row["steps"][0];
    assert_eq!(root["output"], 500);
    assert_eq!(
        root["metadata"]["Exceptions"],
        "HTTP 500 Internal Server Error"
    );
    assert_eq!(row["Exceptions"], "HTTP 500 Internal Server Error");

    // The server is still serving, and the next trace is clean.
    let res = client
        .post(format!("{}/chat/after-panic", h.base))
        .json(&json!({"question": "still there?"}))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    let row = row_of(h, &id).await;
    assert!(row["steps"][0]["metadata"].get("Exceptions").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_updates_the_row_after_it_was_sent() {
    let h = harness();
    let client = client();
    let res = client
        .post(format!("{}/chat/fb", h.base))
        .json(&json!({"question": "rate me"}))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    res.bytes().await.unwrap();
    let res = client
        .post(format!("{}/feedback", h.base))
        .json(&json!({"inference_id": id, "thumbs": "up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_update_follows_row(h, &id, json!({"thumbs": "up"})).await;
}

/// Waits for the row update of `id`; checks that it was sent after the trace's row, and
/// what it sets.
async fn assert_update_follows_row(h: &Harness, id: &str, row: Value) {
    let is_update =
        |r: &RecordedRequest| r.method == "PUT" && r.query_param("inferenceId") == Some(id);
    let found = h
        .openlayer
        .wait_for(WAIT, |reqs| reqs.iter().any(is_update))
        .await;
    assert!(found, "no row update for {id}");
    let reqs = h.openlayer.requests();
    let trace_row = reqs
        .iter()
        .find(|r| {
            r.is_data_stream()
                && r.outcome.is_success()
                && r.inference_ids().iter().any(|i| i == id)
        })
        .expect("the trace's row, sent before its update");
    let update = reqs.iter().find(|r| is_update(r)).unwrap();
    assert!(update.seq > trace_row.seq, "update after the row");
    assert_eq!(update.json.as_ref().unwrap()["row"], row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_never_records_credentials() {
    let h = harness();
    let client = client();
    let res = client
        .post(format!("{}/chat/creds", h.base))
        .header("authorization", "Bearer sk-secret-in-authorization")
        .header("proxy-authorization", "Basic secret-in-proxy")
        .header("cookie", "session=secret-in-cookie")
        .header("x-client", "ios/1.2")
        .header("x-client", "build 7")
        .header("user-agent", "tests/1.0")
        .json(&json!({"question": "creds"}))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    let row = row_of(h, &id).await;
    let headers = &row["steps"][0]["inputs"]["headers"];
    assert_eq!(
        headers,
        &json!({"x-client": "ios/1.2, build 7", "user-agent": "tests/1.0"})
    );
    let text = row.to_string();
    for secret in [
        "secret-in-authorization",
        "secret-in-proxy",
        "secret-in-cookie",
    ] {
        assert!(!text.contains(secret), "{secret} recorded: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_small_json_bodies_are_recorded_and_handlers_get_them_whole() {
    let h = harness();
    let client = client();
    // Over the limit: not recorded, passed through.
    let big = json!({"text": "y".repeat(1000)}).to_string();
    let res = client
        .post(format!("{}/echo", h.base))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_eq!(res.text().await.unwrap(), big.len().to_string());
    let row = row_of(h, &id).await;
    assert!(row["steps"][0]["inputs"].get("body").is_none(), "{row:#}");

    // Not JSON: not recorded.
    let res = client
        .post(format!("{}/echo", h.base))
        .header("content-type", "text/plain")
        .body("plain text")
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_eq!(res.text().await.unwrap(), "10");
    let row = row_of(h, &id).await;
    assert!(row["steps"][0]["inputs"].get("body").is_none(), "{row:#}");

    // Says JSON but is not: recorded as text, handed over unchanged.
    let res = client
        .post(format!("{}/echo", h.base))
        .header("content-type", "application/json; charset=utf-8")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_eq!(res.text().await.unwrap(), "9");
    let row = row_of(h, &id).await;
    assert_eq!(row["steps"][0]["inputs"]["body"], "{not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_cut_short_is_not_handed_to_the_handler() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    // A client that promises 64 bytes of JSON, sends 3 of them (`123`, which would parse
    // as JSON) and stops sending.
    let addr = h.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /count HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 64\r\n{HEADER}: cut-short-1\r\n\r\n123"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    // Our 400, with the row's id (the client read it after it stopped sending).
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 400 bad request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("\r\n{HEADER}: cut-short-1\r\n")),
        "{answer}"
    );

    let row = row_of(h, "cut-short-1").await;
    let root = &row["steps"][0];
    assert_eq!(root["output"], 400, "{row:#}");
    let exceptions = root["metadata"]["Exceptions"].as_str().unwrap_or_default();
    assert!(
        exceptions.starts_with("reading the request body failed: "),
        "{row:#}"
    );
    assert!(root["inputs"].get("body").is_none(), "{row:#}");
    assert_eq!(root["inputs"]["method"], "POST");
    assert!(child_names(root).is_empty(), "{row:#}");
    assert_eq!(
        COUNTED.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the handler ran with a body cut short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_or_panics_mid_stream_is_recorded() {
    let h = harness();
    let client = client();
    for (route, expected) in [
        ("chunks-error", "the upstream stream broke"),
        ("chunks-panic", "the body's stream blew up"),
    ] {
        let mut res = client
            .get(format!("{}/{route}/3", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let id = header(&res);
        // The chunks sent, then the connection fails.
        let mut outcome = Ok(());
        loop {
            match res.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        assert!(outcome.is_err(), "{route}: the body ended cleanly");
        let row = row_of(h, &id).await;
        let root = &row["steps"][0];
        let exceptions = root["metadata"]["Exceptions"].as_str().unwrap_or_default();
        assert!(exceptions.contains(expected), "{route}: {row:#}");
        if route == "chunks-error" {
            // The status was sent: it stays the output, beside the error.
            assert_eq!(root["output"], 200, "{row:#}");
        }
        // The tokens made before the failure nest under the request's step.
        assert_eq!(child_names(root), ["token"; 3], "{route}: {row:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_update_made_in_the_handler_follows_the_row() {
    let h = harness();
    let res = client()
        .get(format!("{}/rate-myself", h.base))
        .send()
        .await
        .unwrap();
    let id = header(&res);
    assert_eq!(res.text().await.unwrap(), "rated");
    assert_update_follows_row(h, &id, json!({"selfRating": 5})).await;
}
