//! The monitoring flow without tracing: load or create a pipeline, stream rows as they
//! happen, bulk-publish a backlog (uploaded as an Arrow IPC stream, or CSV with
//! `bulk_format(BulkFormat::Csv)`), then add the ground truths in bulk.
//!
//! ```sh
//! cargo run --example publish_rows
//! ```
//!
//! With `OPENLAYER_API_KEY` set, everything goes to the platform. Without it, this
//! example asks for local mode explicitly and writes to the local trace file
//! (`OPENLAYER_TRACE_FILE`, default `openlayer-traces.jsonl`), which
//! `openlayer show` displays and `openlayer push` sends later.

use openlayer_trace::{Client, Config, DEFAULT_TRACE_FILE, LlmConfig, RowUpdateConfig, TaskType};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let client = if config.api_key().is_some() || std::env::var_os("OPENLAYER_TRACE_FILE").is_some()
    {
        Client::new(&config)?
    } else {
        // Without a key, local mode is a choice: name the file.
        Client::builder().trace_file(DEFAULT_TRACE_FILE).build()?
    };
    match client.local_file() {
        Some(file) => println!("no OPENLAYER_API_KEY: writing to {}", file.display()),
        None => println!("publishing to Openlayer"),
    }

    // 1. The pipeline, created on first use.
    let pipeline = client
        .load_or_create_inference_pipeline("Support bot", "production", TaskType::LlmBase)
        .await?;
    println!(
        "pipeline {} ({}{})",
        pipeline.name,
        pipeline.id,
        if pipeline.local { ", local id" } else { "" }
    );

    // How the platform should read the rows.
    let config = LlmConfig::new("answer")
        .input_variable_names(["question"])
        .inference_id_column_name("inference_id")
        .latency_column_name("latency_ms")
        .timestamp_column_name("timestamp")
        .ground_truth_column_name("expected");

    // 2. Rows streamed one request at a time, as they are produced.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let live = [
        json!({"inference_id": "live-1", "question": "How do I reset my password?",
               "answer": "Use the 'Forgot password' link.", "latency_ms": 812.0, "timestamp": now}),
        json!({"inference_id": "live-2", "question": "Can I change my plan?",
               "answer": "Yes, under Settings > Billing.", "latency_ms": 640.5, "timestamp": now}),
    ];
    client.stream_rows(&pipeline.id, &config, &live).await?;
    println!("streamed {} rows", live.len());

    // 3. A backlog published in bulk: the client writes it as one file (Arrow IPC by
    // default) and uploads it.
    let questions = [
        "Where is my invoice?",
        "Do you ship abroad?",
        "How do I cancel?",
    ];
    let backlog: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "inference_id": format!("hist-{i:03}"),
                "question": questions[i % questions.len()],
                "answer": format!("Answer #{i}"),
                "latency_ms": 500.0 + (i as f64) * 7.5,
                "timestamp": now - 86_400 + i as u64 * 60,
            })
        })
        .collect();
    client
        .publish_batch(&pipeline.id, &config, &backlog)
        .await?;
    println!("bulk-published {} rows", backlog.len());

    // 4. Later, the ground truths arrive: merged into the rows by inference id.
    let truths: Vec<Value> = (0..30)
        .step_by(3)
        .map(
            |i| json!({"inference_id": format!("hist-{i:03}"), "expected": format!("Answer #{i}")}),
        )
        .collect();
    client
        .update_batch(
            &pipeline.id,
            "inference_id",
            Some(RowUpdateConfig::new().ground_truth_column_name("expected")),
            &truths,
        )
        .await?;
    println!("bulk-updated {} ground truths", truths.len());

    if let Some(file) = client.local_file() {
        println!(
            "done: `openlayer show {0}` to read it, `openlayer push {0}` to send it",
            file.display()
        );
    } else {
        println!("done");
    }
    Ok(())
}
