//! Unit tests of the parsing and arithmetic pieces: loopback hosts, backoff, Retry-After,
//! server messages.

use std::time::UNIX_EPOCH;

use std::collections::BTreeSet;

use super::retry::parse_http_date;
use super::tests::config;
use super::*;

#[test]
fn loopback_hosts_are_recognised() {
    for (url, local) in [
        ("http://127.0.0.1:8080/v1", true),
        ("http://127.3.4.5/v1", true),
        ("http://LOCALHOST:1/v1", true),
        ("http://[::1]:9/v1", true),
        ("https://api.openlayer.com/v1", false),
        ("http://10.0.0.1/v1", false),
        ("http://localhost.example.com/v1", false),
    ] {
        assert_eq!(is_loopback(&Url::parse(url).unwrap()), local, "{url}");
    }
}

#[test]
fn backoff_doubles_caps_and_jitters() {
    let mut c = config("http://127.0.0.1:9/v1");
    c.base_backoff = crate::config::DEFAULT_BASE_BACKOFF;
    let t = Transport::new(c).unwrap();
    for (retry, base_ms) in [
        (0, 500),
        (1, 1000),
        (2, 2000),
        (3, 4000),
        (4, 8000),
        (9, 8000),
    ] {
        let base = Duration::from_millis(base_ms);
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let d = t.backoff(retry, None);
            assert!(d >= base && d <= base.mul_f64(1.25), "{retry}: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 1, "jitter varies");
    }
    assert!(t.backoff(u32::MAX, None) <= Duration::from_secs(10));
    // A server's wait replaces the backoff, if it is in (0, 60 s].
    let s = Duration::from_secs;
    assert_eq!(t.backoff(3, Some(s(1))), s(1));
    assert_eq!(t.backoff(0, Some(s(60))), s(60));
    assert!(t.backoff(0, Some(s(61))) < s(1));
    assert!(t.backoff(0, Some(Duration::ZERO)) >= Duration::from_millis(500));
}

#[test]
fn retry_after_headers_are_parsed() {
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
    let parse = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        retry_after(&h, now)
    };
    assert_eq!(parse(&[]), None);
    assert_eq!(parse(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
    assert_eq!(
        parse(&[("retry-after", "1.5")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        parse(&[("retry-after-ms", "250")]),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        parse(&[("retry-after-ms", "250"), ("retry-after", "9")]),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        parse(&[("retry-after-ms", "nope"), ("retry-after", "9")]),
        Some(Duration::from_secs(9))
    );
    assert_eq!(
        parse(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse(&[("retry-after", "Sun, 06 Nov 1994 08:49:27 GMT")]),
        Some(Duration::ZERO)
    );
    assert_eq!(parse(&[("retry-after", "-3")]), None);
    assert_eq!(parse(&[("retry-after", "soon")]), None);
    assert_eq!(
        parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
        Some(UNIX_EPOCH)
    );
    assert_eq!(
        parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
        Some(UNIX_EPOCH + Duration::from_secs(1_835_481_599))
    );
    assert_eq!(parse_http_date("Tue, 29 Foo 2028 23:59:59 GMT"), None);
    // The obsolete formats that recipients must still accept (RFC 9110, 5.6.7).
    assert_eq!(
        parse(&[("retry-after", "Sunday, 06-Nov-94 08:49:47 GMT")]),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse(&[("retry-after", "Sun Nov  6 08:49:47 1994")]),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn server_messages_are_extracted_and_truncated() {
    assert_eq!(server_message(401, br#"{"error":"bad key"}"#), "bad key");
    assert_eq!(server_message(400, br#"{"message":"no rows"}"#), "no rows");
    assert_eq!(server_message(422, br#"{"error":null,"message":"m"}"#), "m");
    assert_eq!(
        server_message(422, br#"{"error":{"code":7,"detail":"x"}}"#),
        r#"{"code":7,"detail":"x"}"#
    );
    assert_eq!(
        server_message(502, b"  <html>bad gateway</html>\n"),
        "<html>bad gateway</html>"
    );
    assert_eq!(server_message(503, b""), "Service Unavailable");
    assert_eq!(server_message(599, b""), "no message");
    let long = "é".repeat(2000);
    let m = truncate(&server_message(500, long.as_bytes()));
    assert!(m.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8() && m.ends_with('…'));
}

#[test]
fn an_rpc_status_body_gives_its_message() {
    // code 3 (INVALID_ARGUMENT), message, and a detail (an `Any`) after them.
    let mut body = vec![0x08, 0x03, 0x12, 0x0b];
    body.extend_from_slice(b"bad span \xc3\xa9".as_slice());
    body.extend_from_slice(&[0x1a, 0x04, 0x0a, 0x02, b'x', b'y']);
    assert_eq!(
        rpc_status_message(&body).as_deref(),
        Some("bad span é (code 3)")
    );
    // Fields in another order, a negative code (ten bytes), no code.
    let mut body = vec![0x12, 0x01, b'm', 0x08];
    body.extend_from_slice(&[0xff; 9]);
    body.push(0x01);
    assert_eq!(rpc_status_message(&body).as_deref(), Some("m (code -1)"));
    assert_eq!(rpc_status_message(b"\x12\x02ok").as_deref(), Some("ok"));
    // Not a Status, or no text: the caller falls back to the body.
    for bad in [
        &b""[..],
        b"\x08\x03",
        b"\x12\x05ab",
        b"\x12\x02\xff\xfe",
        b"<html>",
        b"\x0b",
    ] {
        assert_eq!(rpc_status_message(bad), None, "{bad:?}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("Application/X-Protobuf; charset=binary"),
    );
    assert!(is_protobuf(&headers));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    assert!(!is_protobuf(&headers));
}
