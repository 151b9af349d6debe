//! Custom inference ids: set one during the trace, store it, and use it later to attach
//! feedback to the row. `inference_id_for` derives a deterministic id from a business key,
//! so that a feedback service can compute it without a lookup.
//!
//! ```sh
//! cargo run --example custom_inference_id
//! ```

use std::time::Duration;

use openlayer_trace::{
    Config, current_inference_id, inference_id_for, trace, update_current_trace,
};

/// Handles a chat message; returns the response and the id to store for feedback.
#[trace]
fn process_chat_message(user_id: &str, conversation_id: &str, message: &str) -> (String, String) {
    // A meaningful id: the same business key always gives the same row id.
    let inference_id = inference_id_for(&format!("chat:{conversation_id}:{user_id}"));
    update_current_trace!(
        inference_id = &inference_id,
        user_id = user_id,
        session_id = conversation_id,
        message_type = "user_query",
    );
    let response = format!("You said: {message}");
    (response, current_inference_id().unwrap_or_default())
}

fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;

    let (response, stored_id) =
        process_chat_message("user-456", "conv-123", "Is my order shipped?");
    println!("response: {response}");
    println!("stored inference id: {stored_id}");

    // Later, e.g. in a feedback service that only knows the business key:
    let recomputed = inference_id_for("chat:conv-123:user-456");
    assert_eq!(recomputed, stored_id);
    println!("recomputed from the business key: {recomputed}");

    let report = guard.shutdown(Duration::from_secs(10))?;
    openlayer_trace_examples::show_outcome(&config, &stored_id, &report);
    Ok(())
}
