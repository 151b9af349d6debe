//! A feedback loop: trace a chat under a custom inference id, then attach a thumbs-up, a
//! ground truth and a conversion signal to that row, through the background queue.
//!
//! ```sh
//! cargo run --example feedback_loop
//! ```
//!
//! Each update waits for its own trace when that trace is still pending, so the row exists
//! on the platform before it is updated. With no `OPENLAYER_API_KEY`, the trace and the
//! updates go to the local file, in order, ready for `openlayer push`.

use std::time::Duration;

use openlayer_trace::{
    Config, RowUpdateConfig, current_inference_id, inference_id_for, trace, update_current_trace,
};
use serde_json::json;

#[trace]
async fn chat(conversation_id: &str, user_id: &str, message: &str) -> (String, String) {
    update_current_trace!(
        inference_id = inference_id_for(&format!("{conversation_id}:{user_id}:1")),
        user_id = user_id,
        session_id = conversation_id,
    );
    tokio::time::sleep(Duration::from_millis(20)).await; // the model
    let reply = format!("Our Pro plan fits '{message}' best.");
    (reply, current_inference_id().unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;

    let (reply, id) = chat("conv-7", "user-3", "a plan for my team").await;
    println!("assistant: {reply}\ninference id: {id}");

    // The user clicks thumbs-up: human feedback.
    openlayer_trace::update_row(
        &id,
        json!({"humanFeedback": "thumbs_up"}),
        Some(RowUpdateConfig::new().human_feedback_column_name("humanFeedback")),
    );
    // A reviewer labels the ideal answer: ground truth.
    openlayer_trace::update_row(
        &id,
        json!({"groundTruth": "Recommend the Pro plan."}),
        Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
    );
    // Later, the billing system reports a conversion: a business signal. It only knows
    // the business key, and derives the same id.
    let same_id = inference_id_for("conv-7:user-3:1");
    openlayer_trace::update_row(
        &same_id,
        json!({"user_converted": true, "conversion_value": 99.99}),
        None,
    );

    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    openlayer_trace_examples::show_outcome(&config, &id, &report);
    Ok(())
}
