//! With tracing disabled, requests pass through untouched: no step, no response header,
//! and no request body read ahead to be recorded. (A process of its own: the
//! configuration is global.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use openlayer_trace::{Config, testing};
use openlayer_trace_tower::OpenlayerLayer;
use serde_json::json;
use tower::{Layer, ServiceExt, service_fn};

/// A request body that knows whether the layer rebuilt it from bytes it read ahead.
struct Tagged {
    data: Option<Bytes>,
    rebuilt: bool,
}

impl Body for Tagged {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl From<Bytes> for Tagged {
    fn from(data: Bytes) -> Self {
        Tagged {
            data: Some(data),
            rebuilt: true,
        }
    }
}

fn json_request() -> Request<Tagged> {
    Request::post("/j")
        .header("content-type", "application/json")
        .body(Tagged {
            data: Some(Bytes::from_static(br#"{"q":1}"#)),
            rebuilt: false,
        })
        .unwrap()
}

/// Answers whether its request body was rebuilt, and the body itself.
async fn which(req: Request<Tagged>) -> Result<Response<Full<Bytes>>, Infallible> {
    let rebuilt = req.body().rebuilt;
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let text = format!("rebuilt={rebuilt} {}", String::from_utf8_lossy(&body));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::test]
async fn disabled_tracing_leaves_requests_untouched() {
    let config = Config::builder().disabled(true).build().unwrap();
    let _guard = openlayer_trace::init(config).unwrap();
    assert!(!openlayer_trace::is_recording());

    let layer = OpenlayerLayer::new().record_json_body(1024);
    let res = layer
        .layer(service_fn(which))
        .oneshot(json_request())
        .await
        .unwrap();
    assert!(res.headers().get("x-openlayer-inference-id").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, r#"rebuilt=false {"q":1}"#,
        "read ahead while not traced"
    );

    // The same layer under a test capture records: the body is read ahead, recorded and
    // handed over rebuilt, with the same bytes.
    let ((recording, body), traces) = testing::capture_async(async {
        let recording = openlayer_trace::is_recording();
        let res = layer
            .layer(service_fn(which))
            .oneshot(json_request())
            .await
            .unwrap();
        assert!(res.headers().get("x-openlayer-inference-id").is_some());
        (
            recording,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    })
    .await;
    assert!(recording);
    assert_eq!(body, r#"rebuilt=true {"q":1}"#);
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].root()["inputs"]["body"], json!({"q": 1}));

    // The closures that name the step are not called for a step that is not recorded.
    static NAMED: AtomicUsize = AtomicUsize::new(0);
    static ROUTED: AtomicUsize = AtomicUsize::new(0);
    let named = OpenlayerLayer::new().name(|req| {
        NAMED.fetch_add(1, SeqCst);
        format!("named {}", req.uri.path())
    });
    let routed = OpenlayerLayer::new().route(|req| {
        ROUTED.fetch_add(1, SeqCst);
        Some(req.uri.path().to_string())
    });
    for layer in [named.clone(), routed.clone()] {
        let res = layer
            .layer(service_fn(which))
            .oneshot(json_request())
            .await
            .unwrap();
        assert!(res.headers().get("x-openlayer-inference-id").is_none());
    }
    assert_eq!(NAMED.load(SeqCst), 0, "name called while not traced");
    assert_eq!(ROUTED.load(SeqCst), 0, "route called while not traced");
    // Under a test capture, each is called once per request.
    let ((), traces) = testing::capture_async(async {
        for layer in [named, routed] {
            let res = layer
                .layer(service_fn(which))
                .oneshot(json_request())
                .await
                .unwrap();
            res.into_body().collect().await.unwrap();
        }
    })
    .await;
    assert_eq!((NAMED.load(SeqCst), ROUTED.load(SeqCst)), (1, 1));
    assert_eq!(traces[0].root()["name"], "named /j");
    assert_eq!(traces[1].root()["name"], "POST /j");
}
