//! The layer's settings, in process: a `tower::service_fn` behind the layer, called with
//! `oneshot`, its traces captured with `openlayer_trace::testing`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{inference_id_for, trace, update_current_trace};
use openlayer_trace_tower::OpenlayerLayer;
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

#[trace]
fn work(n: u32) -> u32 {
    n * 2
}

async fn ok(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    work(21);
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

fn get(uri: &str) -> http::request::Builder {
    Request::builder().method("GET").uri(uri)
}

fn empty(b: http::request::Builder) -> Request<Full<Bytes>> {
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Runs one request through `layer` over `ok`, reads the whole body, and returns the
/// response head and the one trace.
async fn run(
    layer: OpenlayerLayer,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes, CapturedTrace) {
    let ((parts, body), traces) = testing::capture_async(async {
        let res = layer.layer(service_fn(ok)).oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    })
    .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    (parts, body, traces.into_iter().next().unwrap())
}

#[tokio::test]
async fn defaults_record_method_path_and_status() {
    let req = empty(
        get("/items/42?secret=1")
            .header("user-agent", "t/1")
            .header("x-other", "no"),
    );
    let (parts, body, t) = run(OpenlayerLayer::new(), req).await;
    assert_eq!(body, "hello");
    let root = t.root();
    assert_eq!(root["name"], "GET /items/42");
    assert_eq!(
        root["inputs"],
        json!({"method": "GET", "path": "/items/42", "headers": {"user-agent": "t/1"}})
    );
    assert_eq!(root["output"], 200);
    assert_eq!(root["steps"][0]["name"], "work");
    let id = parts.headers["x-openlayer-inference-id"].to_str().unwrap();
    assert_eq!(id, t.inference_id());
}

#[tokio::test]
async fn closures_name_route_and_columns() {
    let layer = OpenlayerLayer::new()
        .route(|req| Some(req.uri.path().replace(char::is_numeric, ":n")))
        .inference_id(|req| {
            let order = req.headers.get("x-order")?.to_str().ok()?;
            Some(inference_id_for(order))
        })
        .user_id(|req| req.extensions.get::<u64>().map(|u| format!("user-{u}")))
        .user_id_header("x-user")
        .session_id_header("x-session")
        .inference_id_header("x-request-id")
        .record_headers(Vec::<&str>::new());
    let mut req = empty(
        get("/items/7")
            .header("x-order", "order-9")
            .header("x-user", "from-header")
            .header("x-session", " s-1 "),
    );
    req.extensions_mut().insert(5u64);
    let (parts, _, t) = run(layer.clone(), req).await;
    assert_eq!(t.root()["name"], "GET /items/:n");
    assert!(t.root()["inputs"].get("headers").is_none());
    assert_eq!(t.inference_id(), inference_id_for("order-9"));
    assert_eq!(parts.headers["x-request-id"], inference_id_for("order-9"));
    assert!(parts.headers.get("x-openlayer-inference-id").is_none());
    assert_eq!(t.row()["user_id"], "user-5", "the closure first");
    assert_eq!(t.row()["session_id"], "s-1");

    // The header beats the closure; without the extension, the user comes from its header.
    let req = empty(
        get("/items/8")
            .header("x-order", "order-9")
            .header("x-request-id", "client-id")
            .header("x-user", "from-header"),
    );
    let (_, _, t) = run(layer.clone(), req).await;
    assert_eq!(t.inference_id(), "client-id");
    assert_eq!(t.row()["user_id"], "from-header");

    // Not trusted: the closure decides.
    let req = empty(
        get("/items/8")
            .header("x-order", "order-9")
            .header("x-request-id", "client-id"),
    );
    let (_, _, t) = run(layer.trust_request_inference_id(false), req).await;
    assert_eq!(t.inference_id(), inference_id_for("order-9"));
}

#[tokio::test]
async fn name_and_no_response_header() {
    let layer = OpenlayerLayer::new()
        .name(|req| format!("api:{}", req.method))
        .respond_with_inference_id(false);
    let (parts, _, t) = run(layer, empty(get("/x"))).await;
    assert_eq!(t.root()["name"], "api:GET");
    assert!(parts.headers.get("x-openlayer-inference-id").is_none());
}

#[tokio::test]
async fn the_handler_can_change_the_inference_id() {
    let svc = OpenlayerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        update_current_trace!(inference_id = "set-by-handler");
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let (res, traces) =
        testing::capture_async(async { svc.oneshot(empty(get("/h"))).await.unwrap() }).await;
    assert_eq!(res.headers()["x-openlayer-inference-id"], "set-by-handler");
    assert_eq!(traces[0].inference_id(), "set-by-handler");
}

#[tokio::test]
async fn bodiless_responses_end_at_once() {
    // HEAD, 204 and an empty body: servers may never poll such bodies; the step ends
    // with the response, not as cancelled when the body is dropped unpolled.
    for (method, status) in [
        ("HEAD", StatusCode::OK),
        ("GET", StatusCode::NO_CONTENT),
        ("GET", StatusCode::OK),
    ] {
        let svc = OpenlayerLayer::new().layer(service_fn(move |_req: Request<Full<Bytes>>| {
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = status;
            async move { Ok::<_, Infallible>(res) }
        }));
        let req = empty(Request::builder().method(method).uri("/b"));
        let (_, traces) = testing::capture_async(async {
            let res = svc.oneshot(req).await.unwrap();
            drop(res); // the body, never polled
        })
        .await;
        let root = traces[0].root();
        assert!(
            root["metadata"].get("cancelled").is_none(),
            "{method} {status}: {root:#}"
        );
        assert_eq!(root["output"], status.as_u16());
    }
}

#[tokio::test]
async fn a_body_dropped_unread_is_cancelled_and_service_errors_are_recorded() {
    let (_, traces) = testing::capture_async(async {
        let res = OpenlayerLayer::new()
            .layer(service_fn(ok))
            .oneshot(empty(get("/dropped")))
            .await
            .unwrap();
        drop(res);
    })
    .await;
    assert_eq!(traces[0].root()["metadata"]["cancelled"], true);
    assert_eq!(traces[0].root()["output"], 200);

    let mut svc = OpenlayerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("upstream refused"))
    }));
    let (res, traces) = testing::capture_async(async {
        svc.ready().await.unwrap();
        svc.call(empty(get("/err"))).await
    })
    .await;
    assert!(res.is_err());
    assert_eq!(
        traces[0].root()["metadata"]["Exceptions"],
        "upstream refused"
    );
}

/// Headers that carry credentials, in various cases.
const CREDENTIAL_HEADERS: [&str; 11] = [
    "authorization",
    "Cookie",
    "proxy-authorization",
    "set-cookie",
    "X-Api-Key",
    "api-key",
    "x-goog-api-key",
    "x-auth-token",
    "x-amz-security-token",
    "X-CSRF-Token",
    "x-xsrf-token",
];

#[tokio::test]
async fn record_headers_never_records_api_keys_or_tokens() {
    let mut listed = CREDENTIAL_HEADERS.to_vec();
    listed.push("x-a");
    let layer = OpenlayerLayer::new().record_headers(listed);
    let mut req = get("/c").header("x-a", "1");
    for name in CREDENTIAL_HEADERS {
        req = req.header(name, format!("secret-{name}"));
    }
    let (_, _, t) = run(layer, empty(req)).await;
    assert_eq!(t.root()["inputs"]["headers"], json!({"x-a": "1"}));
    assert!(!t.row_json().contains("secret"), "{}", t.row_json());
}

#[tokio::test]
async fn record_headers_drops_credentials_whatever_the_case() {
    let layer =
        OpenlayerLayer::new().record_headers(["AUTHORIZATION", "Cookie", "Set-Cookie", "x-a"]);
    let req = empty(
        get("/c")
            .header("authorization", "secret")
            .header("cookie", "secret")
            .header("x-a", "1"),
    );
    let (_, _, t) = run(layer, req).await;
    assert_eq!(t.root()["inputs"]["headers"], json!({"x-a": "1"}));
    assert!(!t.row_json().contains("secret"));
}

/// A recorded header's text, one long value or several joined, is cut to
/// `MAX_RECORDED_HEADER_LEN` bytes on a character boundary, with a marker of what was left
/// out.
#[tokio::test]
async fn recorded_headers_are_bounded() {
    use openlayer_trace_tower::MAX_RECORDED_HEADER_LEN as MAX;
    let layer = OpenlayerLayer::new().record_headers(["x-long", "x-many", "x-utf8", "x-short"]);
    // `x` then two-byte characters: byte `MAX` falls inside one.
    let utf8 = format!("x{}", "é".repeat(MAX));
    let req = empty(
        get("/h")
            .header("x-long", "a".repeat(5000))
            .header("x-many", "b".repeat(600))
            .header("x-many", "c".repeat(600))
            .header("x-many", "d".repeat(600))
            .header(
                "x-utf8",
                http::HeaderValue::from_bytes(utf8.as_bytes()).unwrap(),
            )
            .header("x-short", "s"),
    );
    let (_, _, t) = run(layer, req).await;
    let headers = &t.root()["inputs"]["headers"];
    assert_eq!(
        headers["x-long"],
        format!("{}…[truncated {} bytes]", "a".repeat(MAX), 5000 - MAX)
    );
    // 600 + 2 + 600 + 2 + 600 bytes joined.
    let joined = format!("{}, {}", "b".repeat(600), "c".repeat(MAX - 602));
    assert_eq!(
        headers["x-many"],
        format!("{joined}…[truncated {} bytes]", 1804 - MAX)
    );
    let cut = &utf8[..MAX - 1];
    assert_eq!(
        headers["x-utf8"],
        format!("{cut}…[truncated {} bytes]", utf8.len() - cut.len())
    );
    assert_eq!(headers["x-short"], "s");
}

#[tokio::test]
async fn json_bodies_with_body_types_from_bytes() {
    let svc = OpenlayerLayer::new().record_json_body(64).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        },
    ));
    let req = Request::post("/j")
        .header("content-type", "application/vnd.api+json")
        .body(Full::new(Bytes::from_static(br#"{"a":[1,2]}"#)))
        .unwrap();
    let (echo, traces) = testing::capture_async(async {
        let res = svc.oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap().to_bytes()
    })
    .await;
    assert_eq!(echo, r#"{"a":[1,2]}"#);
    assert_eq!(traces[0].root()["inputs"]["body"], json!({"a": [1, 2]}));
}

/// The row's bytes for a request's inputs, pinned: keys in this order (method, path,
/// headers in the order they are listed, a header sent twice joined by `", "`, a value
/// that is not visible ASCII with replacement characters), exactly as written.
#[tokio::test]
async fn inputs_are_written_in_a_fixed_shape() {
    let layer = OpenlayerLayer::new().record_headers(["user-agent", "x-b", "content-type", "x-a"]);
    let mut req = empty(
        get("/items/42?q=1")
            .header("x-a", "1")
            .header("content-type", "text/plain")
            .header("x-b", "two")
            .header("x-b", "parts")
            .header("user-agent", "t/\"1\""),
    );
    req.headers_mut().append(
        "x-a",
        http::HeaderValue::from_bytes(b"caf\xc3\xa9 \xff").unwrap(),
    );
    let (_, _, t) = run(layer, req).await;
    let expected = concat!(
        r#""inputs":{"method":"GET","path":"/items/42","headers":{"#,
        r#""user-agent":"t/\"1\"","x-b":"two, parts","content-type":"text/plain","#,
        r#""x-a":"1, café �"}}"#,
    );
    assert!(
        t.row_json().contains(expected),
        "expected {expected} in {}",
        t.row_json()
    );

    // No allow-listed header present: no `headers` key at all.
    let (_, _, t) = run(OpenlayerLayer::new(), empty(get("/n").header("x-c", "3"))).await;
    assert!(
        t.row_json()
            .contains(r#""inputs":{"method":"GET","path":"/n"}"#),
        "{}",
        t.row_json()
    );
}

/// A request with many header values (where headers are looked up by hash rather than by
/// comparing names) is recorded the same way as one with few.
#[tokio::test]
async fn many_headers_are_recorded_like_few() {
    let layer = OpenlayerLayer::new()
        .record_headers(["user-agent", "x-b", "x-a"])
        .user_id_header("x-user");
    let mut b = get("/m")
        .header("x-a", "1")
        .header("x-b", "two")
        .header("x-b", "parts")
        .header("user-agent", "t/1")
        .header("x-user", " u-7 ")
        .header("x-openlayer-inference-id", "row-1");
    for i in 0..10 {
        b = b.header(format!("x-filler-{i}"), "f");
    }
    let (parts, _, t) = run(layer, empty(b)).await;
    let expected = concat!(
        r#""inputs":{"method":"GET","path":"/m","headers":{"#,
        r#""user-agent":"t/1","x-b":"two, parts","x-a":"1"}}"#,
    );
    assert!(t.row_json().contains(expected), "{}", t.row_json());
    assert_eq!(t.inference_id(), "row-1");
    assert_eq!(parts.headers["x-openlayer-inference-id"], "row-1");
    assert_eq!(t.row()["user_id"], "u-7");
}

/// A response body read to its end in a `Drop` while the thread unwinds from another
/// panic: the request's step ends with the body, as returned, not as panicked.
#[tokio::test]
async fn a_body_read_during_an_unrelated_panic_is_not_panicked() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    struct ReadOnDrop(Option<openlayer_trace_tower::OpenlayerBody<Full<Bytes>>>);
    impl Drop for ReadOnDrop {
        fn drop(&mut self) {
            let Some(body) = self.0.take() else { return };
            let mut body = pin!(body);
            let mut cx = Context::from_waker(Waker::noop());
            let mut read = 0;
            loop {
                match http_body::Body::poll_frame(body.as_mut(), &mut cx) {
                    Poll::Ready(Some(Ok(frame))) => read += frame.into_data().unwrap().len(),
                    Poll::Ready(None) => break,
                    other => panic!("unexpected {:?}", other.map(|_| ())),
                }
            }
            assert_eq!(read, 5);
        }
    }

    let ((), traces) = testing::capture_async(async {
        let res = OpenlayerLayer::new()
            .layer(service_fn(ok))
            .oneshot(empty(get("/drop")))
            .await
            .unwrap();
        let reader = ReadOnDrop(Some(res.into_body()));
        let r = catch_unwind(AssertUnwindSafe(move || {
            let _reader = reader;
            panic!("an unrelated panic");
        }));
        assert!(r.is_err());
    })
    .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let root = traces[0].root();
    assert_eq!(root["output"], 200, "{root}");
    assert!(root["metadata"].get("Exceptions").is_none(), "{root}");
    assert!(root["metadata"].get("cancelled").is_none(), "{root}");
}

/// A request body of data frames, then trailers (when it was not rebuilt from bytes).
struct WithTrailers {
    frames: std::collections::VecDeque<http_body::Frame<Bytes>>,
    len: u64,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

impl From<Bytes> for WithTrailers {
    fn from(data: Bytes) -> Self {
        WithTrailers {
            len: data.len() as u64,
            frames: [http_body::Frame::data(data)].into(),
        }
    }
}

/// A small JSON body whose request declares trailers reaches the handler with them (not
/// read ahead and rebuilt without them); the same body without the declaration is
/// recorded.
#[tokio::test]
async fn a_json_body_that_declares_trailers_keeps_them() {
    let svc = OpenlayerLayer::new().record_json_body(64).layer(service_fn(
        |req: Request<WithTrailers>| async move {
            let collected = req.into_body().collect().await.unwrap();
            let checksum = collected
                .trailers()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| "none".into());
            let body = collected.to_bytes();
            let text = format!("{} {checksum}", String::from_utf8_lossy(&body));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        },
    ));
    let request = |declared: bool| {
        let data = Bytes::from_static(br#"{"a":1}"#);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let mut b = Request::post("/t").header("content-type", "application/json");
        if declared {
            b = b.header("trailer", "x-checksum");
        }
        b.body(WithTrailers {
            len: data.len() as u64,
            frames: [
                http_body::Frame::data(data),
                http_body::Frame::trailers(trailers),
            ]
            .into(),
        })
        .unwrap()
    };
    let (answers, traces) = testing::capture_async(async {
        let mut answers = Vec::new();
        for declared in [true, false] {
            let res = svc.clone().oneshot(request(declared)).await.unwrap();
            answers.push(res.into_body().collect().await.unwrap().to_bytes());
        }
        answers
    })
    .await;
    assert_eq!(
        answers[0], r#"{"a":1} abc"#,
        "declared trailers reach the handler"
    );
    assert!(
        traces[0].root()["inputs"].get("body").is_none(),
        "{}",
        traces[0].root()
    );
    assert_eq!(
        answers[1], r#"{"a":1} none"#,
        "undeclared: recorded, rebuilt"
    );
    assert_eq!(traces[1].root()["inputs"]["body"], json!({"a": 1}));
}

/// A body of `chunks`, then a last poll that calls a traced function and ends the body
/// (as a stream whose end is found only by polling once more).
fn chunks_then_traced_end(chunks: &'static [&'static str]) -> axum::body::Body {
    let data =
        futures_util::stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))));
    let end = futures_util::stream::poll_fn(|_| {
        work(1);
        std::task::Poll::<Option<Result<Bytes, Infallible>>>::Ready(None)
    });
    axum::body::Body::from_stream(futures_util::StreamExt::chain(data, end))
}

/// A response with a `content-length` polled to its end (as an HTTP/2 server does): the
/// poll after the declared length still runs in the request's step, and the step ends
/// then, not cancelled. Dropped at its length instead (as an HTTP/1 server does), the step
/// ends with the drop, not cancelled either.
#[tokio::test]
async fn a_body_polled_past_its_declared_length_stays_in_its_step() {
    for poll_to_end in [true, false] {
        let svc = OpenlayerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut res = Response::new(chunks_then_traced_end(&["ab", "cd"]));
            res.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("4"),
            );
            Ok::<_, Infallible>(res)
        }));
        let (_, traces) = testing::capture_async(async {
            let res = svc.oneshot(empty(get("/len"))).await.unwrap();
            let mut body = res.into_body();
            let mut sent = 0;
            while sent < 4 {
                let frame = body.frame().await.unwrap().unwrap();
                sent += frame.into_data().unwrap().len();
            }
            if poll_to_end {
                assert!(body.frame().await.is_none());
            }
        })
        .await;
        assert_eq!(traces.len(), 1, "{poll_to_end}: {traces:#?}");
        let root = traces[0].root();
        assert!(root["metadata"].get("cancelled").is_none(), "{root:#}");
        assert_eq!(root["output"], 200);
        let children: Vec<_> = root["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        if poll_to_end {
            assert_eq!(children, [json!("work")], "{root:#}");
        } else {
            assert!(children.is_empty(), "{root:#}");
        }
    }
}

/// A successful `CONNECT` has no body (the connection becomes the tunnel), which servers
/// never poll: its step ends with the response, not as cancelled.
#[tokio::test]
async fn a_successful_connect_ends_at_once() {
    for (status, cancelled) in [(StatusCode::OK, false), (StatusCode::BAD_GATEWAY, true)] {
        let svc = OpenlayerLayer::new().layer(service_fn(move |_req: Request<Full<Bytes>>| {
            let mut res = Response::new(Full::new(Bytes::from_static(b"tunnel")));
            *res.status_mut() = status;
            async move { Ok::<_, Infallible>(res) }
        }));
        let req = empty(Request::builder().method("CONNECT").uri("example.com:443"));
        let (_, traces) = testing::capture_async(async {
            drop(svc.oneshot(req).await.unwrap()); // the body, never polled
        })
        .await;
        let root = traces[0].root();
        assert_eq!(
            root["metadata"].get("cancelled").is_some(),
            cancelled,
            "{status}: {root:#}"
        );
        assert_eq!(root["output"], status.as_u16());
    }
}

/// A body with trailers, as gRPC answers.
fn with_trailers(data: &'static str, trailers: http::HeaderMap) -> axum::body::Body {
    let frames = [
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(data.as_bytes()))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    axum::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

/// A gRPC status (and message) as headers or trailers.
fn grpc_status(status: &'static str, message: Option<&'static str>) -> http::HeaderMap {
    let mut grpc = http::HeaderMap::new();
    grpc.insert("grpc-status", http::HeaderValue::from_static(status));
    if let Some(m) = message {
        grpc.insert("grpc-message", http::HeaderValue::from_static(m));
    }
    grpc
}

/// An HTTP/2 gRPC call through the layer to a service answering `make()` (with the
/// `application/grpc` content-type), its body read to its end; the request's root step.
async fn grpc_call(
    make: impl Fn() -> Response<axum::body::Body> + Clone + Send + 'static,
) -> serde_json::Value {
    let svc = OpenlayerLayer::new().layer(service_fn(move |_req: Request<Full<Bytes>>| {
        let mut res = make();
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        async move { Ok::<_, Infallible>(res) }
    }));
    let (_, traces) = testing::capture_async(async {
        let res = svc
            .oneshot(empty(get("/grpc").version(http::Version::HTTP_2)))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    })
    .await;
    traces[0].root().clone()
}

/// gRPC answers its errors with HTTP 200 and a `grpc-status` in the trailers, or in the
/// headers of a response without a body: recorded under `Exceptions` with the code's name
/// and the decoded `grpc-message`; the status `0` and other responses record none.
#[tokio::test]
async fn grpc_errors_are_recorded() {
    // (case, the status and message in the headers of a bodiless response rather than in
    // trailers, grpc-status, grpc-message, expected Exceptions)
    let cases = [
        (
            "in trailers",
            false,
            "13",
            Some("db%20down%3A 100%"),
            Some("gRPC status 13 (INTERNAL): db down: 100%"),
        ),
        (
            "trailers-only",
            true,
            "5",
            None,
            Some("gRPC status 5 (NOT_FOUND)"),
        ),
        (
            "an unknown code",
            false,
            "99",
            Some("odd"),
            Some("gRPC status 99: odd"),
        ),
        ("ok", false, "0", None, None),
    ];
    for (what, headers_only, status, message, expected) in cases {
        let root = grpc_call(move || {
            let grpc = grpc_status(status, message);
            if headers_only {
                let mut res = Response::new(axum::body::Body::empty());
                *res.headers_mut() = grpc;
                res
            } else {
                Response::new(with_trailers("x", grpc))
            }
        })
        .await;
        assert_eq!(root["output"], 200, "{what}: {root:#}");
        assert_eq!(
            root["metadata"].get("Exceptions").and_then(|e| e.as_str()),
            expected,
            "{what}: {root:#}"
        );
    }
}

/// A `grpc-status` both in the headers of a response with a body and in its trailers
/// (some proxies and grpc-web set both): recorded once, from the trailers.
#[tokio::test]
async fn a_grpc_status_in_headers_and_trailers_is_recorded_once() {
    let root = grpc_call(|| {
        let mut res = Response::new(with_trailers("x", grpc_status("14", None)));
        *res.headers_mut() = grpc_status("14", None);
        res
    })
    .await;
    assert_eq!(
        root["metadata"]["Exceptions"],
        "gRPC status 14 (UNAVAILABLE)"
    );
}

/// A trailers-only gRPC error (the status in the headers, no body) whose body does not
/// report its end up front (as behind tower-http's body timeout): recorded when the body
/// ends without trailers.
#[tokio::test]
async fn a_grpc_status_in_headers_is_recorded_when_the_body_ends_without_trailers() {
    let root = grpc_call(|| {
        let empty = futures_util::stream::empty::<Result<http_body::Frame<Bytes>, Infallible>>();
        let mut res = Response::new(axum::body::Body::new(http_body_util::StreamBody::new(
            empty,
        )));
        *res.headers_mut() = grpc_status("14", None);
        res
    })
    .await;
    assert_eq!(
        root["metadata"]["Exceptions"],
        "gRPC status 14 (UNAVAILABLE)"
    );
}

/// Behind tower-http's body limit, a JSON body without a length is read ahead up to the
/// limit's bound; over it, the client gets 413, as without the layer (axum's extractors
/// answer 413 there), and the handler does not run.
#[tokio::test]
async fn a_body_over_a_body_limit_is_answered_413() {
    use axum::routing::post;
    static CALLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let app = axum::Router::new()
        .route(
            "/chat",
            post(|body: String| async move {
                CALLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                body
            }),
        )
        .layer(OpenlayerLayer::new().record_json_body(1024))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64));
    for (len, status) in [(20, StatusCode::OK), (200, StatusCode::PAYLOAD_TOO_LARGE)] {
        let json = format!("\"{}\"", "a".repeat(len - 2));
        // Streamed: no length, so the limit is checked as the body is read.
        let chunks = json
            .into_bytes()
            .chunks(10)
            .map(|c| Ok::<_, Infallible>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let req = Request::post("/chat")
            .header("content-type", "application/json")
            .body(axum::body::Body::from_stream(futures_util::stream::iter(
                chunks,
            )))
            .unwrap();
        let (res_status, traces) = testing::capture_async(async {
            let res = app.clone().oneshot(req).await.unwrap();
            let status = res.status();
            res.into_body().collect().await.unwrap();
            status
        })
        .await;
        assert_eq!(res_status, status);
        let root = traces[0].root();
        assert_eq!(root["output"], status.as_u16(), "{root:#}");
        if status == StatusCode::OK {
            assert_eq!(root["inputs"]["body"].as_str().unwrap().len(), len - 2);
        } else {
            let exceptions = root["metadata"]["Exceptions"].as_str().unwrap();
            assert!(exceptions.contains("length limit exceeded"), "{root:#}");
        }
    }
    assert_eq!(CALLED.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A compressed JSON body (`content-encoding: gzip`) is not JSON as read here, and an
/// empty one has nothing to record: neither is recorded, and the handler gets each as sent.
#[tokio::test]
async fn compressed_and_empty_json_bodies_are_not_recorded() {
    for (encoding, body) in [
        (Some("gzip"), &b"\x1f\x8b\x08\x00binary"[..]),
        (None, &b""[..]),
        (Some("identity"), &b"{\"a\":1}"[..]),
    ] {
        let svc = OpenlayerLayer::new().record_json_body(64).layer(service_fn(
            |req: Request<Full<Bytes>>| async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            },
        ));
        let mut req = Request::post("/j").header("content-type", "application/json");
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
        let (echo, traces) = testing::capture_async(async {
            let res = svc.oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await;
        assert_eq!(echo, body);
        let inputs = &traces[0].root()["inputs"];
        if encoding == Some("identity") {
            assert_eq!(inputs["body"], json!({"a": 1}));
        } else {
            assert!(inputs.get("body").is_none(), "{encoding:?}: {inputs:#}");
        }
    }
}

/// A 5xx whose body then fails keeps both under `Exceptions`: the status's text first
/// (the row still says the request failed with a 5xx), then the body's error.
#[tokio::test]
async fn a_5xx_whose_body_fails_keeps_both_errors() {
    use futures_util::stream;
    let svc = OpenlayerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        let frames = stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::other("upstream reset")),
        ]);
        let mut res = Response::new(http_body_util::StreamBody::new(frames));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Ok::<_, Infallible>(res)
    }));
    let (read, traces) = testing::capture_async(async {
        let res = svc.oneshot(empty(get("/stream"))).await.unwrap();
        res.into_body().collect().await.map(|_| ())
    })
    .await;
    assert!(read.is_err());
    let root = traces[0].root();
    assert_eq!(
        root["metadata"]["Exceptions"], "HTTP 503 Service Unavailable\nupstream reset",
        "{root}"
    );
    assert_eq!(
        traces[0].row()["Exceptions"],
        root["metadata"]["Exceptions"]
    );
}

/// A body that panics while a 5xx is sent: both are kept under `Exceptions`.
#[tokio::test]
async fn a_5xx_whose_body_panics_keeps_both_errors() {
    use futures_util::{FutureExt as _, StreamExt as _, stream};
    let svc = OpenlayerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        let frames = stream::iter([0]).map(|_| -> Result<http_body::Frame<Bytes>, Infallible> {
            panic!("the renderer blew up")
        });
        let mut res = Response::new(http_body_util::StreamBody::new(frames));
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, Infallible>(res)
    }));
    let (read, traces) = testing::capture_async(async {
        let res = svc.oneshot(empty(get("/render"))).await.unwrap();
        std::panic::AssertUnwindSafe(res.into_body().collect())
            .catch_unwind()
            .await
            .map(|_| ())
    })
    .await;
    assert!(read.is_err());
    let root = traces[0].root();
    let exceptions = root["metadata"]["Exceptions"].as_str().unwrap();
    assert!(
        exceptions.starts_with("HTTP 500 Internal Server Error\n")
            && exceptions.contains("the renderer blew up"),
        "{exceptions}"
    );
}

/// An id from the closure is trimmed (a client reads the header's value trimmed, and its
/// feedback must find the row); a blank one falls back to a new id; one too long for a
/// response header is still the row's id, without the header.
#[tokio::test]
async fn ids_from_the_closure_are_trimmed_and_bounded() {
    let padded = OpenlayerLayer::new().inference_id(|_| Some(" ord-1 ".into()));
    let (parts, _, t) = run(padded, empty(get("/orders/1"))).await;
    assert_eq!(t.row()["inferenceId"], "ord-1");
    assert_eq!(parts.headers["x-openlayer-inference-id"], "ord-1");

    let blank = OpenlayerLayer::new().inference_id(|_| Some("  ".into()));
    let (parts, _, t) = run(blank, empty(get("/orders/2"))).await;
    let id = t.row()["inferenceId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a generated id: {id}");
    assert_eq!(parts.headers["x-openlayer-inference-id"], id.as_str());

    let long = "x".repeat(openlayer_trace_tower::MAX_INFERENCE_ID_LEN + 1);
    let expected = long.clone();
    let too_long = OpenlayerLayer::new().inference_id(move |_| Some(long.clone()));
    let (parts, _, t) = run(too_long, empty(get("/orders/3"))).await;
    assert_eq!(t.row()["inferenceId"], expected.as_str());
    assert!(parts.headers.get("x-openlayer-inference-id").is_none());
}

/// A request body of 10 declared bytes that never arrive (a slow upload).
#[derive(Default)]
struct SlowUpload(Option<Bytes>);

impl From<Bytes> for SlowUpload {
    fn from(b: Bytes) -> Self {
        SlowUpload(Some(b))
    }
}

impl http_body::Body for SlowUpload {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut().0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(10)
    }
}

/// With `record_json_body`, a request dropped while its body is still being read (a
/// client that resets a slow upload, a timeout outside the layer) is still a row, marked
/// cancelled, as a request dropped later is.
#[tokio::test]
async fn a_request_dropped_while_its_body_is_read_is_a_cancelled_row() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let mut svc = OpenlayerLayer::new()
        .record_json_body(1024)
        .layer(service_fn(|_req: Request<SlowUpload>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let req = Request::post("/upload")
        .header("content-type", "application/json")
        .body(SlowUpload(None))
        .unwrap();
    let (_, traces) = testing::capture_async(async {
        svc.ready().await.unwrap();
        let mut fut = Box::pin(svc.call(req));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
    })
    .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let root = traces[0].root();
    assert_eq!(root["name"], "POST /upload");
    assert_eq!(root["metadata"]["cancelled"], true, "{root}");
    assert_eq!(root["inputs"]["method"], "POST");
}

/// The application's closures that panic (an extension a route lacks, say) do not fail
/// the request: its step gets the default name and no user, as if they gave nothing.
#[tokio::test]
async fn a_panicking_closure_does_not_fail_the_request() {
    let layer = OpenlayerLayer::new()
        .name(|_| panic!("no route name"))
        .user_id(|req| Some(req.extensions.get::<String>().unwrap().clone()))
        .inference_id(|_| panic!("no id"));
    let (parts, body, t) = run(layer, empty(get("/items/1"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello");
    assert_eq!(t.root()["name"], "GET /items/1");
    assert!(t.row().get("user_id").is_none(), "{}", t.row());
}

/// The id, user and session headers never read a header that carries credentials.
#[test]
fn credential_headers_are_refused_as_id_user_or_session() {
    for name in CREDENTIAL_HEADERS {
        let session = std::panic::catch_unwind(|| OpenlayerLayer::new().session_id_header(name));
        assert!(session.is_err(), "{name}");
        let user = std::panic::catch_unwind(|| OpenlayerLayer::new().user_id_header(name));
        assert!(user.is_err(), "{name}");
        let id = std::panic::catch_unwind(|| OpenlayerLayer::new().inference_id_header(name));
        assert!(id.is_err(), "{name}");
    }
    let _ = OpenlayerLayer::new().session_id_header("x-session");
}

/// Sends a JSON string of `len` bytes whose body says it has at most 10, through a layer
/// reading bodies of up to 1 KiB; the status and the one trace.
async fn declared_10_sending(len: usize) -> (StatusCode, CapturedTrace) {
    let mut body = WithTrailers::from(Bytes::from(format!("\"{}\"", "a".repeat(len - 2))));
    body.len = 10;
    let req = Request::post("/chat")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let svc = OpenlayerLayer::new()
        .record_json_body(1024)
        .layer(service_fn(|_req: Request<WithTrailers>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"handled"))))
        }));
    let (status, traces) =
        testing::capture_async(async { svc.oneshot(req).await.unwrap().status() }).await;
    (status, traces.into_iter().next().unwrap())
}

/// A request body that gives more bytes than its size hint allowed (one that misreports
/// its size) is answered 413, not buffered without a bound: past the configured bound, or
/// within it.
#[tokio::test]
async fn a_body_longer_than_it_declared_is_not_buffered_on() {
    for len in [100_000, 500] {
        let (status, t) = declared_10_sending(len).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{len}");
        let root = t.root();
        let exceptions = root["metadata"]["Exceptions"].as_str().unwrap();
        assert!(
            exceptions.contains("longer than its declared size"),
            "{root:#}"
        );
    }
}

/// User and session ids from headers: UTF-8 as sent (not two Latin-1 names made one),
/// and bounded; a non-ASCII id from the closure is the row's id but is not written to
/// the response header (a client would read other characters back).
#[tokio::test]
async fn header_columns_are_utf8_and_bounded_and_ids_ascii() {
    let layer = OpenlayerLayer::new()
        .user_id_header("x-user")
        .session_id_header("x-session")
        .inference_id(|_| Some("café-1".to_string()));
    let mut req = empty(get("/"));
    req.headers_mut().insert(
        "x-user",
        http::HeaderValue::from_bytes(b"J\xfcrgen").unwrap(),
    );
    req.headers_mut().insert(
        "x-session",
        http::HeaderValue::from_str(&"s".repeat(10_000)).unwrap(),
    );
    let (parts, _, t) = run(layer.clone(), req).await;
    assert!(t.row().get("user_id").is_none(), "{}", t.row());
    assert!(t.row().get("session_id").is_none(), "{}", t.row());
    assert_eq!(t.inference_id(), "café-1");
    assert!(parts.headers.get("x-openlayer-inference-id").is_none());

    let mut req = empty(get("/"));
    req.headers_mut().insert(
        "x-user",
        http::HeaderValue::from_bytes("Jürgen".as_bytes()).unwrap(),
    );
    let (_, _, t) = run(layer, req).await;
    assert_eq!(t.row()["user_id"], "Jürgen");
}

/// A request that says `content-encoding` twice, `identity` then `gzip`, is compressed:
/// its body is not recorded.
#[tokio::test]
async fn every_content_encoding_is_looked_at() {
    let req = Request::post("/chat")
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from_static(b"\"not really gzip\"")))
        .unwrap();
    let svc = OpenlayerLayer::new()
        .record_json_body(1024)
        .layer(service_fn(ok));
    let (_, traces) =
        testing::capture_async(async { svc.oneshot(req).await.unwrap().status() }).await;
    let root = traces[0].root();
    assert!(root["inputs"].get("body").is_none(), "{root}");
}

/// A request body sent in 1 KiB frames, whose size hint is its exact length or only a
/// bound of it; rebuilt by the layer from the bytes it read ahead.
enum Framed {
    Frames {
        frames: std::collections::VecDeque<Bytes>,
        exact: bool,
        bound: u64,
    },
    Rebuilt(Option<Bytes>),
}

impl Framed {
    fn json(len: usize, exact: bool) -> Self {
        let text = format!("\"{}\"", "a".repeat(len - 2));
        let frames = Bytes::from(text)
            .chunks(1024)
            .map(Bytes::copy_from_slice)
            .collect();
        Framed::Frames {
            frames,
            exact,
            bound: len as u64,
        }
    }
}

impl From<Bytes> for Framed {
    fn from(data: Bytes) -> Self {
        Framed::Rebuilt(Some(data))
    }
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = match &mut *self {
            Framed::Frames { frames, bound, .. } => {
                let next = frames.pop_front();
                *bound -= next.as_ref().map_or(0, |f| f.len() as u64);
                next
            }
            Framed::Rebuilt(data) => data.take(),
        };
        std::task::Poll::Ready(next.map(|d| Ok(http_body::Frame::data(d))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Framed::Frames {
                exact: true, bound, ..
            } => http_body::SizeHint::with_exact(*bound),
            Framed::Frames { bound, .. } => {
                let mut hint = http_body::SizeHint::new();
                hint.set_upper(*bound);
                hint
            }
            Framed::Rebuilt(data) => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The buffer a JSON body is read into holds at most its declared length: exactly that
/// when the length is known, at most that when only a bound of it is (growing a buffer by
/// doubling would reach about twice the length).
#[tokio::test]
async fn a_json_body_is_read_into_no_more_than_its_declared_length() {
    const LEN: usize = 40_000;
    for exact in [true, false] {
        let svc = OpenlayerLayer::new()
            .record_json_body(64 * 1024)
            .layer(service_fn(|req: Request<Framed>| async move {
                // The bytes handed over are the buffer the body was read into.
                let Framed::Rebuilt(Some(data)) = req.into_body() else {
                    panic!("not rebuilt")
                };
                let len = data.len();
                let capacity = data.try_into_mut().map(|b| b.capacity()).ok();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "{len} {capacity:?}"
                )))))
            }));
        let req = Request::post("/j")
            .header("content-type", "application/json")
            .body(Framed::json(LEN, exact))
            .unwrap();
        let (body, traces) = testing::capture_async(async {
            let res = svc.oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await;
        assert_eq!(traces.len(), 1);
        assert_eq!(
            traces[0].root()["inputs"]["body"].as_str().unwrap().len(),
            LEN - 2
        );
        assert_eq!(body, format!("{LEN} Some({LEN})"), "exact: {exact}");
    }
}

/// A request handled while a step is current (a service called in process by traced code,
/// or layers stacked) is a row of its own, with its own inference id; the enclosing
/// trace keeps its id and does not get the request's step.
#[tokio::test]
async fn a_request_handled_inside_a_trace_is_a_row_of_its_own() {
    let svc = OpenlayerLayer::new().layer(service_fn(ok));
    let ((header, outer_keeps), traces) =
        testing::capture_async(openlayer_trace::step("outer").instrument(async move {
            update_current_trace!(inference_id = "outer-id");
            let req = empty(get("/inner").header("x-openlayer-inference-id", "inner-id"));
            let res = svc.oneshot(req).await.unwrap();
            let header = res.headers()["x-openlayer-inference-id"].clone();
            res.into_body().collect().await.unwrap();
            (header, openlayer_trace::current_inference_id())
        }))
        .await;
    assert_eq!(header, "inner-id");
    assert_eq!(outer_keeps.as_deref(), Some("outer-id"));
    assert_eq!(traces.len(), 2, "{traces:#?}");
    let outer = traces.iter().find(|t| t.root()["name"] == "outer").unwrap();
    let inner = traces
        .iter()
        .find(|t| t.root()["name"] == "GET /inner")
        .unwrap();
    assert_eq!(outer.inference_id(), "outer-id");
    assert!(
        outer.root()["steps"]
            .as_array()
            .is_none_or(|s| s.is_empty()),
        "{:#}",
        outer.root()
    );
    assert_eq!(inner.inference_id(), "inner-id");
    assert_eq!(inner.root()["steps"][0]["name"], "work");
}
