//! A human-readable view of an encoded trace: its steps as a tree with kinds and latencies.

use std::fmt::Write as _;

use serde_json::Value;

/// Renders a data-stream row (a traced row, with its `steps`) as a tree of steps with
/// their kinds and latencies.
///
/// ```
/// use serde_json::json;
/// let row = json!({
///     "inferenceId": "req-1",
///     "steps": [{"name": "answer", "type": "user_call", "latency": 12.5, "steps": [
///         {"name": "retrieve", "type": "retriever", "latency": 2.0, "steps": []},
///         {"name": "Chat Completion", "type": "chat_completion", "latency": 9.25, "steps": []}
///     ]}]
/// });
/// assert_eq!(
///     openlayer_trace::format_trace_tree(&row),
///     "trace req-1\n\
///      └─ answer [user_call] 12.50 ms\n   \
///         ├─ retrieve [retriever] 2.00 ms\n   \
///         └─ Chat Completion [chat_completion] 9.25 ms\n"
/// );
/// ```
pub fn format_trace_tree(row: &Value) -> String {
    let mut out = String::new();
    let id = row["inferenceId"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| row["inferenceId"].to_string());
    let _ = writeln!(out, "trace {id}");
    if let Some(steps) = row["steps"].as_array() {
        write_children(&mut out, steps, "");
    }
    out
}

fn write_children(out: &mut String, steps: &[Value], prefix: &str) {
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let name = step["name"].as_str().unwrap_or("?");
        let kind = step["type"].as_str().unwrap_or("?");
        let _ = write!(
            out,
            "{prefix}{} {name} [{kind}]",
            if last { "└─" } else { "├─" }
        );
        match step["latency"].as_f64() {
            Some(ms) => {
                let _ = write!(out, " {ms:.2} ms");
            }
            None => out.push_str(" (no latency)"),
        }
        if step["metadata"]["Exceptions"].is_string() {
            let _ = write!(
                out,
                " ERROR: {}",
                step["metadata"]["Exceptions"].as_str().unwrap_or("")
            );
        }
        if step["metadata"]["cancelled"] == true {
            out.push_str(" (cancelled)");
        }
        out.push('\n');
        if let Some(children) = step["steps"].as_array() {
            let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
            write_children(out, children, &deeper);
        }
    }
}
