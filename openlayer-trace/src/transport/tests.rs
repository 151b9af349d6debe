use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Mutex;

use openlayer_testserver::{Action, Behavior, Outcome, Response, TestServer};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

use super::*;

const KEY: &str = "sk-test-9f8e7d6c5b4a3210";
const DATA_STREAM: &str = "/inference-pipelines/pipe-1/data-stream";

pub(super) fn config(base_url: &str) -> TransportConfig {
    TransportConfig {
        api_key: Some(ApiKey::new(KEY)),
        base_url: base_url.to_string(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_retries: 2,
        verify_ssl: true,
        base_backoff: Duration::from_millis(10),
        extra_headers: Vec::new(),
        protobuf: false,
    }
}

fn transport(server: &TestServer) -> Transport {
    Transport::new(config(&server.url())).unwrap()
}

fn data_stream(ids: &[&str]) -> ApiRequest {
    let rows: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "inferenceId": id, "output": "héllo ✓" }))
        .collect();
    let body = json!({ "config": { "outputColumnName": "output" }, "rows": rows });
    ApiRequest::post_json(DATA_STREAM, serde_json::to_vec(&body).unwrap())
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn config_comes_from_the_sdk_config() {
    let c = Config::builder()
        .api_key("sk-x")
        .base_url("http://127.0.0.1:9/v1/")
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(7))
        .max_retries(4)
        .verify_ssl(false)
        .build()
        .unwrap();
    let t = TransportConfig::from_config(&c);
    assert_eq!(t.api_key.as_ref().map(ApiKey::expose), Some("sk-x"));
    assert_eq!(t.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(t.connect_timeout, Duration::from_secs(2));
    assert_eq!(t.request_timeout, Duration::from_secs(7));
    assert_eq!(t.max_retries, 4);
    assert!(!t.verify_ssl);
    assert_eq!(t.base_backoff, Duration::from_millis(500));
    let fast = Config::builder()
        .retry_base_backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    assert_eq!(
        TransportConfig::from_config(&fast).base_backoff,
        Duration::from_millis(20)
    );
    let d = TransportConfig::from_config(&Config::default());
    assert_eq!(d.connect_timeout, Duration::from_secs(5));
    assert_eq!(d.request_timeout, Duration::from_secs(60));
    assert_eq!(d.max_retries, 2);
}

#[test]
fn bad_settings_are_config_errors() {
    let mut c = config("ftp://example.invalid/v1");
    assert!(matches!(Transport::new(c.clone()), Err(Error::Config(_))));
    c.base_url = "not a url".into();
    assert!(matches!(Transport::new(c.clone()), Err(Error::Config(_))));
    c.base_url = "http://127.0.0.1:9/v1".into();
    c.api_key = Some(ApiKey::new(format!("{KEY}\n")));
    let e = Transport::new(c).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains(KEY));
}

#[tokio::test]
async fn success_sends_auth_json_and_user_agent() {
    let server = TestServer::start();
    let t = transport(&server);
    assert_eq!(t.base_url(), server.url());
    let req = data_stream(&["a", "b"]);
    let out = t.send(&req, None).await;
    let response = out.result.unwrap();
    assert_eq!(out.retries, 0);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json::<Value>().unwrap(),
        json!({ "success": true })
    );

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/v1{DATA_STREAM}"));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("user-agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("openlayer-trace/") && USER_AGENT.ends_with(" (rust)"));
    // Exactly the bytes given: compact UTF-8 JSON, no `\u` escapes.
    assert_eq!(r.body, req.body.as_deref().unwrap());
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(text.contains("héllo ✓") && !text.contains("\\u") && !text.contains(": "));
    assert_eq!(server.inference_ids(), ids(&["a", "b"]));
}

#[tokio::test]
async fn query_is_encoded_and_key_is_optional() {
    let server = TestServer::start_with(Behavior::always(Response::status(404)));
    let mut c = config(&format!("{}/", server.url()));
    c.api_key = None;
    let t = Transport::new(c).unwrap();
    let req = ApiRequest::new(Method::PUT, "inference-pipelines/pipe-1/rows")
        .with_query("inferenceId", "id with space&more/ü")
        .with_body(&b"{}"[..]);
    let out = t.send(&req, None).await;
    let r = &server.requests()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, "/v1/inference-pipelines/pipe-1/rows");
    assert_eq!(r.query_param("inferenceId"), Some("id with space&more/ü"));
    assert_eq!(r.header("authorization"), None);
    match out.result.unwrap_err() {
        Error::Api {
            status, request, ..
        } => {
            assert_eq!(status, 404);
            assert_eq!(
                request,
                format!("PUT /inference-pipelines/pipe-1/rows?{}", r.raw_query)
            );
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn unauthorized_is_surfaced_once_with_the_server_message() {
    let server = TestServer::start_with(Behavior::unauthorized("Invalid API key"));
    let t = transport(&server);
    let out = t.send(&data_stream(&["a"]), None).await;
    assert_eq!(out.retries, 0);
    assert_eq!(server.request_count(), 1);
    match out.result.unwrap_err() {
        Error::Api {
            status,
            message,
            request,
            ..
        } => {
            assert_eq!(status, 401);
            assert_eq!(message, "Invalid API key");
            assert_eq!(request, format!("POST {DATA_STREAM}"));
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        t.send_once(&data_stream(&["a"])).await,
        Attempt::Fatal(Error::Api { status: 401, .. })
    ));
}

#[tokio::test]
async fn only_408_409_429_and_5xx_are_retried() {
    let server = TestServer::start();
    let t = transport(&server);
    for (status, retried) in [
        (400, false),
        (403, false),
        (404, false),
        (413, false),
        (422, false),
        (408, true),
        (409, true),
        (429, true),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
    ] {
        server.clear_requests();
        server.set_behavior(Behavior::fail_first(1, status));
        let out = t.send(&data_stream(&["a"]), None).await;
        if retried {
            assert!(out.result.is_ok(), "{status}: {:?}", out.result);
            assert_eq!((out.retries, server.request_count()), (1, 2), "{status}");
        } else {
            assert!(
                matches!(out.result, Err(Error::Api { status: s, .. }) if s == status),
                "{status}: {:?}",
                out.result
            );
            assert_eq!((out.retries, server.request_count()), (0, 1), "{status}");
        }
    }
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed_or_give_up() {
    let server = TestServer::start_with(Behavior::fail_first(2, 500));
    let t = transport(&server);
    let out = t.send(&data_stream(&["a"]), None).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(out.retries, 2);
    assert_eq!(server.request_count(), 3);
    assert_eq!(server.inference_ids(), ids(&["a"]));

    // One more failure than retries: the last error comes back.
    server.clear_requests();
    server.set_behavior(Behavior::fail_first(3, 503));
    let out = t.send(&data_stream(&["a"]), None).await;
    assert_eq!(out.retries, 2);
    assert_eq!(server.request_count(), 3);
    match out.result.unwrap_err() {
        Error::Api {
            status, message, ..
        } => assert_eq!((status, message.as_str()), (503, "Service Unavailable")),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let server = TestServer::start_with(Behavior::rate_limited(1, 1));
    let t = transport(&server);
    let out = t.send(&data_stream(&["a"]), None).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(out.retries, 1);
    let r = server.requests();
    let gap = r[1].received_at - r[0].received_at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(4000),
        "{gap:?}"
    );
}

#[tokio::test]
async fn a_retry_after_above_the_cap_is_never_cut_short() {
    // The server asks for two minutes: no retry comes sooner; the caller spools.
    let server = TestServer::start_with(Behavior::rate_limited(1, 120));
    let t = transport(&server);
    let out = t.send(&data_stream(&["a"]), None).await;
    assert!(
        matches!(out.result, Err(Error::Api { status: 429, .. })),
        "{:?}",
        out.result
    );
    assert_eq!(out.retries, 0);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let server = TestServer::start_with(Behavior::rate_limited_ms(1, 300));
    let t = transport(&server);
    let out = t.send(&data_stream(&["a"]), None).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let r = server.requests();
    let gap = r[1].received_at - r[0].received_at;
    assert!(
        gap >= Duration::from_millis(280) && gap < Duration::from_millis(1200),
        "{gap:?}"
    );
    match t.send_once(&data_stream(&["a"])).await {
        Attempt::Success(_) => {}
        a => panic!("{a:?}"),
    }
    server.set_behavior(Behavior::rate_limited_ms(1, 1234));
    match t.send_once(&data_stream(&["a"])).await {
        Attempt::Retryable {
            retry_after,
            unsent,
            ..
        } => {
            assert_eq!(retry_after, Some(Duration::from_millis(1234)));
            assert!(unsent, "a 429 was not acted on");
        }
        a => panic!("{a:?}"),
    }
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_server_is_up() {
    let server = TestServer::start();
    server.go_down();
    let mut c = config(&server.url());
    c.max_retries = 0;
    let t = Transport::new(c).unwrap();
    match t.send_once(&data_stream(&["a"])).await {
        Attempt::Retryable {
            error:
                Error::Transport {
                    message,
                    request,
                    timeout,
                },
            retry_after: None,
            unsent,
        } => {
            assert!(!timeout);
            assert!(unsent, "a refused connection carried nothing");
            assert_eq!(request, format!("POST {DATA_STREAM}"));
            assert!(message.to_lowercase().contains("refused"), "{message}");
            assert!(!message.contains("127.0.0.1"), "no URL: {message}");
        }
        a => panic!("{a:?}"),
    }

    let mut c = config(&server.url());
    c.max_retries = 8;
    c.base_backoff = Duration::from_millis(40);
    let t = Transport::new(c).unwrap();
    let up = std::thread::spawn({
        let server = std::sync::Arc::new(server);
        let s = server.clone();
        move || {
            std::thread::sleep(Duration::from_millis(200));
            s.come_up();
            s
        }
    });
    let out = t.send(&data_stream(&["a"]), None).await;
    let server = up.join().unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert!(out.retries >= 2, "{}", out.retries);
    assert_eq!(server.request_count(), 1);
    assert_eq!(server.inference_ids(), ids(&["a"]));
}

#[tokio::test]
async fn a_hung_server_hits_the_request_timeout() {
    let server = TestServer::start_with(Behavior::hang());
    let mut c = config(&server.url());
    c.request_timeout = Duration::from_millis(300);
    c.max_retries = 1;
    let t = Transport::new(c).unwrap();
    let start = std::time::Instant::now();
    match t.send_once(&data_stream(&["a"])).await {
        Attempt::Retryable {
            error: Error::Transport { timeout, .. },
            unsent,
            ..
        } => {
            assert!(timeout);
            assert!(!unsent, "a request that timed out may have been acted on");
        }
        a => panic!("{a:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    // With one retry: two attempts, both timed out.
    server.clear_requests();
    let out = t.send(&data_stream(&["a"]), None).await;
    assert_eq!(out.retries, 1);
    assert!(
        matches!(out.result, Err(Error::Transport { timeout: true, .. })),
        "{:?}",
        out.result
    );
    assert_eq!(server.request_count(), 2);
    assert!(server.requests().iter().all(|r| r.outcome == Outcome::Hung));
}

#[tokio::test]
async fn a_reset_connection_is_retried() {
    let server = TestServer::start_with(Behavior::reset_first(2));
    let t = transport(&server);
    let ids_sent: Vec<String> = (0..500).map(|i| format!("id-{i}")).collect();
    let id_refs: Vec<&str> = ids_sent.iter().map(String::as_str).collect();
    let out = t.send(&data_stream(&id_refs), None).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(out.retries, 2);
    let outcomes: Vec<Outcome> = server.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Reset, Outcome::Reset, Outcome::Answered(200)]
    );
    assert_eq!(server.inference_ids().len(), 500);
}

#[tokio::test]
async fn send_returns_by_its_deadline_when_the_server_hangs() {
    let server = TestServer::start_with(Behavior::hang());
    let t = transport(&server);
    let mut c = config(&server.url());
    c.request_timeout = Duration::from_secs(60);
    let t_long = Transport::new(c).unwrap();
    for t in [&t, &t_long] {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(400);
        let out = t.send(&data_stream(&["a"]), Some(deadline)).await;
        let late = Instant::now().saturating_duration_since(deadline);
        assert!(late < Duration::from_millis(200), "{late:?} late");
        assert!(
            matches!(out.result, Err(Error::Timeout(d))
                if d <= Duration::from_millis(400) && d > Duration::from_millis(350)),
            "{:?}",
            out.result
        );
    }
    // A deadline already past: nothing is sent.
    server.clear_requests();
    let out = t.send(&data_stream(&["a"]), Some(Instant::now())).await;
    assert!(matches!(out.result, Err(Error::Timeout(_))));
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn send_does_not_start_a_retry_after_its_deadline() {
    let server = TestServer::start_with(Behavior::always(Action::status(500)));
    let mut c = config(&server.url());
    c.base_backoff = Duration::from_secs(60);
    let t = Transport::new(c).unwrap();
    let start = Instant::now();
    let out = t
        .send(&data_stream(&["a"]), Some(start + Duration::from_secs(5)))
        .await;
    // The backoff (capped at 8 s) would end after the deadline (5 s): no retry, and no
    // waiting for either.
    assert!(start.elapsed() < Duration::from_secs(4), "no sleeping");
    assert_eq!(out.retries, 0);
    assert!(
        matches!(out.result, Err(Error::Api { status: 500, .. })),
        "{:?}",
        out.result
    );
    assert_eq!(server.request_count(), 1);
}

/// A loopback HTTPS server with a self-signed certificate, answering `connections`
/// connections with `200 {"success":true}` (or failing their handshake).
fn tls_server(connections: usize) -> (String, std::thread::JoinHandle<()>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};

    let cert =
        CertificateDer::from_pem_slice(include_bytes!("testdata/localhost-cert.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/localhost-key.pem")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/v1", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if !head.ends_with(b"\r\n\r\n") {
                continue; // the client rejected the handshake
            }
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"success\":true}",
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, thread)
}

#[tokio::test]
async fn verify_ssl_false_accepts_a_self_signed_certificate() {
    let (url, server) = tls_server(2);
    let get = ApiRequest::new(Method::GET, "/projects");

    let mut c = config(&url);
    c.max_retries = 0;
    c.verify_ssl = false;
    let insecure = Transport::new(c.clone()).unwrap();
    let out = insecure.send(&get, None).await;
    assert_eq!(out.result.unwrap().status, 200);

    c.verify_ssl = true;
    let secure = Transport::new(c).unwrap();
    match secure.send(&get, None).await.result {
        Err(Error::Transport {
            message, timeout, ..
        }) => {
            assert!(!timeout);
            assert!(message.to_lowercase().contains("certificate"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    server.join().unwrap();
}

/// Collects every event and span field, as text.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut self.0.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "[{}] ", event.metadata().target());
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn the_api_key_never_shows_in_debug_output_or_logs() {
    let logs = Arc::new(Mutex::new(String::new()));
    let mut debug = String::new();
    // With a single dispatcher in the process, tracing caches each callsite's
    // interest from whichever thread reaches it first (tests without a subscriber
    // run in parallel). A second live dispatcher makes the cache consult both.
    let _second = tracing::Dispatch::new(Capture(Arc::default()));
    tracing::callsite::rebuild_interest_cache();
    tracing::subscriber::with_default(Capture(logs.clone()), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // The server echoes the key back in its error message.
            let server = TestServer::start_with(Behavior::script([
                Action::status(500),
                Action::Respond(Response::json(
                    401,
                    &json!({ "error": format!("Invalid API key {KEY}") }),
                )),
            ]));
            let mut c = config(&server.url());
            let _ = writeln!(debug, "{c:?}");
            let t = Transport::new(c.clone()).unwrap();
            let _ = writeln!(debug, "{t:?} {:?}", t.clone());
            let out = t.send(&data_stream(&["a"]), None).await;
            let e = out.result.as_ref().unwrap_err();
            assert!(matches!(e, Error::Api { status: 401, .. }), "{e:?}");
            let _ = writeln!(debug, "{out:?} {e}");

            server.set_behavior(Behavior::hang());
            let out = t
                .send(
                    &data_stream(&["a"]),
                    Some(Instant::now() + Duration::from_millis(100)),
                )
                .await;
            let _ = writeln!(debug, "{out:?}");
            server.go_down();
            let out = t.send(&data_stream(&["a"]), None).await;
            let e = out.result.as_ref().unwrap_err();
            let _ = writeln!(debug, "{out:?} {e}");
            let _ = writeln!(debug, "{:?}", t.send_once(&data_stream(&["a"])).await);

            c.verify_ssl = false;
            let _ = writeln!(debug, "{:?}", Transport::new(c).unwrap());
        });
    });
    let logs = logs.lock().unwrap();
    assert!(debug.contains("***"), "{debug}");
    assert!(debug.contains("Invalid API key ***"), "{debug}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(logs.contains("[openlayer_trace]"), "{logs}");
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains("verification is disabled"), "{logs}");
    assert!(!logs.contains(KEY), "{logs}");
}

/// An answer larger than a request may read is not read whole (rather than fill the
/// memory): a write it answers went through all the same (sending it again would repeat
/// it), a value read from it fails; an error answer is read only as far as its message
/// needs.
#[tokio::test]
async fn answers_are_read_up_to_a_bound() {
    let server = TestServer::start_with(Behavior::always(Response::ok().with_body(vec![
        b' ';
        MAX_RESPONSE_BYTES
            + 1
    ])));
    let t = transport(&server);
    let answer = t.send(&data_stream(&["a"]), None).await.result.unwrap();
    assert_eq!(
        answer.cut.as_deref(),
        Some("POST /inference-pipelines/pipe-1/data-stream")
    );
    assert!(answer.body.len() <= MAX_RESPONSE_BYTES);
    // As a lost answer (a creation it answers is looked for before it is tried again).
    match answer.json::<Value>() {
        Err(Error::Transport { message, .. }) => {
            assert!(message.contains("larger than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.request_count(), 1, "not tried again");

    let server = TestServer::start_with(Behavior::always(
        Response::status(400).with_body(vec![b'x'; 10 * MAX_ERROR_BYTES]),
    ));
    let t = transport(&server);
    match t.send(&data_stream(&["a"]), None).await.result {
        Err(Error::Api { message, .. }) => {
            assert!(message.len() <= MAX_MESSAGE_BYTES + 3, "{}", message.len())
        }
        other => panic!("{other:?}"),
    }
}

/// The API key is taken out of a server's message before the message is cut, so that no
/// start of it is left at the cut; a `success: false` answer's message too.
#[tokio::test]
async fn a_message_echoing_the_key_across_its_cut_shows_none_of_it() {
    let body = format!("{}{KEY}", "x".repeat(MAX_MESSAGE_BYTES - 10));
    let server = TestServer::start_with(Behavior::always(
        Response::status(400).with_body(body.clone()),
    ));
    let t = transport(&server);
    match t.send(&data_stream(&["a"]), None).await.result {
        Err(Error::Api { message, .. }) => {
            assert!(!message.contains(&KEY[..8]), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!t.server_text(&body).contains(&KEY[..8]));
    assert!(t.server_text(&"y".repeat(10 * MAX_MESSAGE_BYTES)).len() <= MAX_MESSAGE_BYTES + 3);
}

#[test]
fn a_base_url_with_a_query_fragment_or_user_is_refused() {
    for url in [
        "https://api.example.com/v1?tenant=a",
        "https://api.example.com/v1#f",
        "https://user:secret@api.example.com/v1",
        "https://user@api.example.com/v1",
    ] {
        match Transport::new(config(url)) {
            Err(Error::Config(m)) => {
                assert!(m.contains("no query"), "{m}");
                assert!(!m.contains("secret"), "{m}");
            }
            other => panic!("{url}: {:?}", other.map(|_| ())),
        }
    }
    assert!(Transport::new(config("https://api.example.com:8443/v1/")).is_ok());
    // An OTLP endpoint is the whole URL: its query is kept.
    let otlp = TransportConfig {
        protobuf: true,
        ..config("http://127.0.0.1:4318/v1/traces?token=a/")
    };
    let t = Transport::new(otlp).unwrap();
    assert_eq!(t.base_url(), "http://127.0.0.1:4318/v1/traces?token=a/");
    let otlp = TransportConfig {
        protobuf: true,
        ..config("http://user:pw@127.0.0.1:4318/v1/traces")
    };
    assert!(Transport::new(otlp).is_err());
}

/// An OTLP endpoint's query (a token, say) is sent but never shown in an error.
#[tokio::test]
async fn an_otlp_endpoints_query_is_not_shown_in_errors() {
    let server = TestServer::start_with(Behavior::always(Response::status(400)));
    let t = Transport::new(TransportConfig {
        protobuf: true,
        ..config(&format!("{}/v1/traces?token=secret-1", server.url()))
    })
    .unwrap();
    match t
        .send(&ApiRequest::post_json("", b"x".to_vec()), None)
        .await
        .result
    {
        Err(e @ Error::Api { .. }) => assert!(!e.to_string().contains("secret-1"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests()[0].raw_query, "token=secret-1");
}
