//! Sends traces as OTLP/HTTP protobuf spans to a local endpoint.
//!
//! With `OPENLAYER_OTLP_ENDPOINT` set (e.g. `http://localhost:4318`, an OpenTelemetry
//! Collector), spans go there; otherwise the example starts its own loopback receiver on
//! 127.0.0.1 that acknowledges every request, so it runs anywhere:
//!
//! `cargo run -p openlayer-trace --example otlp_collector --features otlp`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use openlayer_trace::{ChatCompletion, Config, add_chat_completion_step, trace};

#[trace]
fn retrieve(question: &str) -> Vec<String> {
    vec![format!("Notes about {question}")]
}

#[trace]
fn answer(question: &str) -> String {
    openlayer_trace::update_current_trace!(user_id = "u-1", session_id = "s-1");
    let docs = retrieve(question);
    add_chat_completion_step(ChatCompletion {
        prompt_tokens: Some(20),
        completion_tokens: Some(4),
        inputs: Some(serde_json::json!({"prompt": [{"role": "user", "content": question}]})),
        output: Some(serde_json::json!("Paris")),
        ..ChatCompletion::new("OpenAI", "gpt-4o")
    });
    format!("Paris ({} documents)", docs.len())
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1: answers 200 to every request and counts
/// the protobuf bytes it got.
fn loopback_receiver(bytes: Arc<AtomicUsize>) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    // The request line and headers.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    bytes.fetch_add(length, Ordering::Relaxed);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let received = Arc::new(AtomicUsize::new(0));
    let endpoint = match std::env::var("OPENLAYER_OTLP_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e,
        _ => loopback_receiver(received.clone())?,
    };
    // As the exporter makes the URL: `/v1/traces` after the path, before a query.
    let e = endpoint.trim();
    let (path, query) = e.split_at(e.find(['?', '#']).unwrap_or(e.len()));
    let path = path.trim_end_matches('/');
    let suffix = if path.ends_with("/v1/traces") {
        ""
    } else {
        "/v1/traces"
    };
    println!("sending spans to {path}{suffix}{query}");
    let guard = openlayer_trace::init(
        Config::builder()
            .otlp_endpoint(endpoint)
            .otlp_only(true)
            .build()?,
    )?;
    for question in ["What is the capital of France?", "And of Italy?"] {
        println!("{}", answer(question));
    }
    let report = guard.shutdown(Duration::from_secs(5))?;
    println!(
        "complete: {}, traces sent: {}, spans sent: {}, spans dropped: {}, protobuf bytes received locally: {}",
        report.complete,
        report.stats.sent,
        report.stats.otlp_spans_sent,
        report.stats.otlp_spans_dropped,
        received.load(Ordering::Relaxed)
    );
    Ok(())
}
