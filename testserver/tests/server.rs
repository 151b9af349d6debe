//! The fault server, driven with raw sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use openlayer_testserver::{Action, Behavior, Outcome, Response, TestServer};
use serde_json::json;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Whether a read says the peer closed the connection: its end (`Ok(0)`), or a reset. A
/// read timeout (the connection still open, unanswered) is not.
fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

/// Reads one response; returns (status, headers text, body).
fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head[9..12].parse().unwrap();
            let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
            return (status, head, body);
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn keep_alive_requests_are_parsed_and_recorded() {
    let server = TestServer::start();
    let mut s = connect(server.addr());
    let body = r#"{"config":{},"rows":[{"inferenceId":"a"},{"inferenceId":"b"}]}"#;
    s.write_all(post("/v1/inference-pipelines/p/data-stream", body).as_bytes())
        .unwrap();
    let (status, _, answer) = read_response(&mut s);
    assert_eq!(status, 200);
    assert_eq!(answer, r#"{"success":true}"#);
    s.write_all(b"PUT /v1/inference-pipelines/p/rows?inferenceId=a%20b+c&x= HTTP/1.1\r\nX-Custom: Yes\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    assert_eq!(read_response(&mut s).0, 200);

    let r = server.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0].connection, r[1].connection,
        "one keep-alive connection"
    );
    assert_eq!((r[0].seq, r[1].seq), (0, 1));
    assert_eq!(r[0].method, "POST");
    assert_eq!(r[0].path, "/v1/inference-pipelines/p/data-stream");
    assert_eq!(r[0].header("CONTENT-TYPE"), Some("application/json"));
    assert_eq!(r[0].body, body.as_bytes());
    assert_eq!(r[0].json.as_ref().unwrap()["rows"][1]["inferenceId"], "b");
    assert_eq!(r[0].outcome, Outcome::Answered(200));
    assert_eq!(r[1].raw_query, "inferenceId=a%20b+c&x=");
    assert_eq!(r[1].query_param("inferenceId"), Some("a b c"));
    assert_eq!(r[1].query_param("x"), Some(""));
    assert_eq!(r[1].header("x-custom"), Some("Yes"));
    assert_eq!(
        server.inference_ids().into_iter().collect::<Vec<_>>(),
        ["a", "b"]
    );
    server.clear_requests();
    assert_eq!(server.request_count(), 0);
}

#[test]
fn chunked_bodies_are_decoded() {
    let server = TestServer::start();
    let mut s = connect(server.addr());
    s.write_all(
        b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(server.requests()[0].json, Some(json!({"a": 1})));
}

#[test]
fn scripts_run_in_order_then_fall_back() {
    let server = TestServer::start_with(
        Behavior::script([
            Action::status(500),
            Action::Respond(Response::status(429).with_header("Retry-After", "3")),
            Action::handler(|r| Response::json(201, &json!({ "path": r.path }))),
        ])
        .then(Action::status(503)),
    );
    let mut s = connect(server.addr());
    let mut next = || {
        s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
        read_response(&mut s)
    };
    let (status, _, body) = next();
    assert_eq!(
        (status, body.as_str()),
        (500, r#"{"error":"Internal Server Error"}"#)
    );
    let (status, head, _) = next();
    assert_eq!(status, 429);
    assert!(head.contains("Retry-After: 3"), "{head}");
    let (status, _, body) = next();
    assert_eq!((status, body.as_str()), (201, r#"{"path":"/v1/a"}"#));
    assert_eq!(next().0, 503);
    assert_eq!(next().0, 503);
    let outcomes: Vec<_> = server.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [500, 429, 201, 503, 503].map(Outcome::Answered).to_vec()
    );
    server.set_behavior(Behavior::ok());
    assert_eq!(next().0, 200);
}

#[test]
fn only_acknowledged_rows_count_as_delivered() {
    let server = TestServer::start_with(Behavior::fail_first(1, 500));
    let mut s = connect(server.addr());
    for id in ["x", "y"] {
        let body = format!(r#"{{"rows":[{{"inferenceId":"{id}"}}]}}"#);
        s.write_all(post("/v1/inference-pipelines/p/data-stream", &body).as_bytes())
            .unwrap();
        read_response(&mut s);
    }
    assert_eq!(
        server.inference_ids().into_iter().collect::<Vec<_>>(),
        ["y"]
    );
    assert_eq!(
        server
            .inference_ids_received()
            .into_iter()
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(server.inference_id_counts()["y"], 1);
}

#[test]
fn hang_never_answers() {
    let server = TestServer::start_with(Behavior::hang());
    let mut s = connect(server.addr());
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
    let err = s.read(&mut [0u8; 16]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert_eq!(server.requests()[0].outcome, Outcome::Hung);
}

#[test]
fn reset_drops_the_connection_mid_request() {
    let server = TestServer::start_with(Behavior::reset_first(1));
    let mut s = connect(server.addr());
    let body = "x".repeat(1000);
    // Send the head and part of the body; the server resets before the rest.
    let request = post("/v1/a", &body);
    s.write_all(&request.as_bytes()[..request.len() - 400])
        .unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}"),
        Ok(n) => assert_eq!(n, 0, "no response expected"),
    }
    let r = &server.requests()[0];
    assert_eq!(r.outcome, Outcome::Reset);
    assert!(r.body.len() < 1000, "{}", r.body.len());
    // The script is done: the next connection is answered.
    let mut s = connect(server.addr());
    s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).0, 200);
}

#[test]
fn down_refuses_connections_and_up_serves_the_same_port() {
    let server = TestServer::start();
    let addr = server.addr();
    let mut kept = connect(addr);
    kept.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
    assert_eq!(read_response(&mut kept).0, 200);

    server.go_down();
    assert!(!server.is_up());
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // The open keep-alive connection was closed too.
    let _ = kept.write_all(post("/v1/a", "{}").as_bytes());
    let read = kept.read(&mut [0u8; 16]);
    assert!(closed(read), "the kept connection is still open");

    server.come_up();
    assert!(server.is_up());
    assert_eq!(server.addr(), addr);
    let mut s = connect(addr);
    s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    // Idempotent.
    server.come_up();
    server.go_down();
    server.go_down();
    server.come_up();
}

#[test]
fn dropping_the_server_closes_everything() {
    let server = TestServer::start_with(Behavior::hang());
    let addr = server.addr();
    let mut s = connect(addr);
    s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
    assert!(
        server.wait_for_blocking(Duration::from_secs(5), |r| r.len() == 1),
        "request recorded"
    );
    drop(server);
    let read = s.read(&mut [0u8; 16]);
    assert!(closed(read), "the connection is still open");
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn works_inside_a_current_thread_runtime() {
    let server = TestServer::start_with(Behavior::rate_limited_ms(1, 250));
    let addr = server.addr();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        s.write_all(post("/v1/a", "{}").as_bytes()).unwrap();
        read_response(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(got.0, 429);
    assert!(got.1.contains("retry-after-ms: 250"), "{}", got.1);
    assert!(server.wait_for_requests(1, Duration::from_secs(1)).await);
    assert!(!server.wait_for_requests(2, Duration::from_millis(20)).await);
}

#[test]
fn summary_mode_counts_acknowledged_ids_without_keeping_bodies() {
    let server = TestServer::start_with(Behavior::fail_first(1, 500));
    server.summarize_only();
    let mut s = connect(server.addr());
    for ids in [["a", "b"], ["a", "b"], ["b", "c"]] {
        let body = format!(
            r#"{{"config":{{}},"rows":[{{"inferenceId":"{}"}},{{"inferenceId":"{}"}}]}}"#,
            ids[0], ids[1]
        );
        s.write_all(post("/v1/inference-pipelines/p/data-stream", &body).as_bytes())
            .unwrap();
        read_response(&mut s);
    }
    // The first request got a 500: only the next two count.
    let counts = server.inference_id_counts();
    assert_eq!(counts.get("a"), Some(&1));
    assert_eq!(counts.get("b"), Some(&2));
    assert_eq!(counts.get("c"), Some(&1));
    assert_eq!(server.acknowledged_rows(), 4);
    assert_eq!(server.request_count(), 3);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.body.is_empty() && r.json.is_none())
    );
}
