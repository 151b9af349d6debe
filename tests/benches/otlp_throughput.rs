//! OTLP export throughput, spans per second from creation to acknowledged delivery:
//! this crate's exporter (`otlp_only`) against `opentelemetry-otlp`'s batch exporter
//! (HTTP, protobuf, reqwest client), both sending to the same loopback receiver.
//!
//! One iteration makes 250 traces of 4 spans (a root and three children, with the same
//! attributes on both sides: inference id, step type, session, user, inputs and output
//! as JSON) and waits until the receiver has acknowledged them all (`flush` /
//! `force_flush`).
//!
//! The receiver is [`Sink`], a minimal HTTP/1.1 server on 127.0.0.1 that reads each
//! request whole and answers `200` with an empty body, keeping nothing: a recording mock
//! server grows with every request over a long run and slows both sides down with it.
//!
//! `cargo bench -p openlayer-trace-tests --bench otlp_throughput`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openlayer_trace::{Config, trace, update_current_trace};
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRACES: usize = 250;
const SPANS: u64 = (TRACES * 4) as u64;

#[trace]
fn child(step: &str, n: usize) -> String {
    format!("{step} result {n}")
}

#[trace]
fn root(question: &str, n: usize) -> String {
    update_current_trace!(user_id = "u-42", session_id = "s-7");
    let a = child("retrieve", n);
    let b = child("rerank", n);
    let c = child("generate", n);
    format!("{question}: {a} {b} {c}")
}

fn theirs(tracer: &opentelemetry_sdk::trace::SdkTracer, question: &str, n: usize) {
    let common = |step: &str| {
        vec![
            KeyValue::new("openlayer.inference_id", format!("{n:032x}")),
            KeyValue::new("openlayer.step.type", "user_call"),
            KeyValue::new("session.id", "s-7"),
            KeyValue::new("user.id", "u-42"),
            KeyValue::new(
                "openlayer.inputs",
                serde_json::json!({"step": step, "n": n}).to_string(),
            ),
        ]
    };
    tracer.in_span("root", |cx| {
        cx.span().set_attributes(common("root"));
        let mut outs = Vec::new();
        for step in ["retrieve", "rerank", "generate"] {
            tracer.in_span("child", |cx| {
                let out = format!("{step} result {n}");
                cx.span().set_attributes(common(step));
                cx.span().set_attribute(KeyValue::new(
                    "openlayer.output",
                    serde_json::Value::from(out.as_str()).to_string(),
                ));
                outs.push(out);
            });
        }
        let out = format!("{question}: {}", outs.join(" "));
        cx.span().set_attribute(KeyValue::new(
            "openlayer.output",
            serde_json::Value::from(out).to_string(),
        ));
    });
}

/// The loopback receiver: answers every request `200` with an empty body once it has
/// read it whole (`Content-Length` bodies, keep-alive connections), and keeps nothing.
struct Sink;

impl Sink {
    /// Listens on 127.0.0.1 (on `rt`); returns the base URL.
    fn start(rt: &tokio::runtime::Runtime) -> String {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Sink::serve(stream));
            }
        });
        format!("http://{addr}")
    }

    async fn serve(mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let head = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
            assert!(
                !text.contains("transfer-encoding:"),
                "the sink reads Content-Length bodies only"
            );
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() - head >= length {
                buf.drain(..head + length);
            } else {
                // Drained as it comes, not kept; what follows it starts the next request.
                let mut left = length - (buf.len() - head);
                buf.clear();
                while left > 0 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if n > left => {
                            buf.extend_from_slice(&chunk[left..n]);
                            left = 0;
                        }
                        Ok(n) => left -= n,
                    }
                }
            }
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if stream.write_all(ok).await.is_err() {
                return;
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Sink::start(&rt);

    let guard = openlayer_trace::init(
        Config::builder()
            .otlp_endpoint(format!("{server}/ours"))
            .otlp_only(true)
            .build()
            .unwrap(),
    )
    .unwrap();

    // The workspace's reqwest has no default TLS provider; theirs needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{server}/theirs/v1/traces"))
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("bench");

    let mut g = c.benchmark_group("otlp_throughput");
    g.throughput(Throughput::Elements(SPANS));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("openlayer_trace", |b| {
        b.iter(|| {
            for n in 0..TRACES {
                root("What is the capital of France?", n);
            }
            let r = guard.flush(Duration::from_secs(30)).unwrap();
            assert!(r.complete);
        })
    });
    g.bench_function("opentelemetry_otlp", |b| {
        b.iter(|| {
            for n in 0..TRACES {
                theirs(&tracer, "What is the capital of France?", n);
            }
            provider.force_flush().unwrap();
        })
    });
    g.finish();
    let stats = guard.shutdown(Duration::from_secs(10)).unwrap().stats;
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    assert_eq!(stats.otlp_spans_dropped, 0, "{stats:?}");
    let _ = provider.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
