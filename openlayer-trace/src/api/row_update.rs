//! Queued row updates: ground truths, human feedback and business signals attached to a
//! row after the fact, through the tracer's background queue.
//!
//! An update is handed off like a trace and settles like a row. The worker keeps it
//! behind its own trace when that trace is still on its way in this process:
//!
//! - made inside the trace that carries the inference id, it rides with the trace (kept
//!   in the trace's state) and is handed off right behind it;
//! - the flusher holds an update back while a row with its inference id is queued,
//!   batched or in flight, and sends it once that row is settled (acknowledged, spooled
//!   or dropped).

use serde_json::Value;

use crate::client::{RowUpdateConfig, check_row_update};
use crate::context;
use crate::record::row_update::RowUpdate;

/// Updates the row with `inference_id` in the configured inference pipeline: sets the
/// columns of `row` (a JSON object), with `config` naming which of them hold the ground
/// truth, the human feedback, ...
///
/// Fire-and-forget: it never blocks and never fails. The update goes through the
/// background queue and is retried, spooled and counted in [`Stats`](crate::Stats) like a
/// trace's row. When the trace with this inference id is still pending in this process
/// (called inside it, or completed but not yet delivered), the update is sent after that
/// trace's row is settled, so that the row exists before it is updated. An update made
/// while its trace is still open, from outside it (another task or thread), or inside it
/// before its inference id was set, is not held back: it may reach the platform first,
/// where it is answered 404, kept in the spool and tried again on replay (without a
/// spool, dropped as `rejected`). With no API key
/// (the embedded default), it is written to the local trace file as a row-update line,
/// after its trace's line.
///
/// Bad input (an empty inference id, a row that is not an object, a column named by
/// `config` missing from the row) is logged, rate-limited, under target `openlayer_trace`
/// and counted as dropped (`rejected`). Outside any configuration, the SDK is configured
/// from the environment, as for traces.
///
/// ```
/// use openlayer_trace::{RowUpdateConfig, current_inference_id, trace, update_row};
/// use serde_json::json;
///
/// #[trace]
/// fn answer(question: &str) -> String {
///     let id = current_inference_id().unwrap();
///     // Sent after this trace's row, once the trace completes and is delivered.
///     update_row(&id, json!({"confidence": 0.9}), None);
///     format!("42 ({question})")
/// }
///
/// answer("the answer?");
/// update_row(
///     "chat-1",
///     json!({"humanFeedback": "thumbs_up"}),
///     Some(RowUpdateConfig::new().human_feedback_column_name("humanFeedback")),
/// );
/// ```
pub fn update_row(inference_id: &str, row: Value, config: Option<RowUpdateConfig>) {
    queue(None, inference_id, row, config);
}

/// [`update_row`] for a row of another inference pipeline than the configured one.
///
/// ```
/// use openlayer_trace::update_row_in;
/// use serde_json::json;
///
/// update_row_in("pipeline-42", "order-7", json!({"user_converted": true}), None);
/// ```
pub fn update_row_in(
    pipeline_id: &str,
    inference_id: &str,
    row: Value,
    config: Option<RowUpdateConfig>,
) {
    queue(Some(pipeline_id), inference_id, row, config);
}

fn queue(
    pipeline_id: Option<&str>,
    inference_id: &str,
    row: Value,
    config: Option<RowUpdateConfig>,
) {
    if !crate::runtime::tracing_enabled() {
        crate::runtime::update_while_off();
        return;
    }
    let config = config.filter(|c| !c.is_empty());
    let checked = match pipeline_id {
        Some(p) if p.trim().is_empty() => Err(crate::error::Error::InvalidInput(
            "the pipeline id must not be empty".into(),
        )),
        _ => check_row_update(inference_id, &row, config.as_ref()).map(|_| ()),
    };
    if let Err(e) = checked {
        crate::util::diag::warn_limited!(error = %e, "a row update was invalid; dropped (counted as rejected)");
        crate::runtime::reject_update();
        return;
    }
    let config = config.and_then(|c| serde_json::to_string(&c).ok());
    let update = RowUpdate {
        pipeline: pipeline_id.map(str::to_string),
        inference_id: inference_id.to_string(),
        row: row.to_string(),
        config,
    };
    // Inside the trace that carries this inference id: ride with it.
    let mut update = Some(update);
    context::with_current(|t, _| {
        if t.capture.is_some() {
            return;
        }
        let mut st = t.lock();
        let own = match &st.inference_id {
            Some(id) => **id == *inference_id,
            None => st
                .steps
                .first()
                .is_some_and(|root| crate::util::id::uuid_v4(root.id) == inference_id),
        };
        // A trace whose root was not recorded (the memory bound) never ships: the update
        // goes on its own.
        if own
            && !st.shipped
            && !st.steps.is_empty()
            && let Some(u) = update.take()
        {
            // Held by the open trace until it completes, as its steps are.
            st.hold(u.size());
            st.extra_mut().updates.push(u);
        }
    });
    if let Some(update) = update {
        crate::runtime::submit_update(update);
    }
}
