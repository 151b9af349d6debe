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

/// Writes the tree under `steps`, with an explicit stack rather than a call per level (a
/// trace may nest thousands of steps deep). The prefix of each level is one string, grown
/// and shrunk as the walk goes down and up: linear in the output, not quadratic in the
/// depth. A step's name and error are written on one line (line breaks as `⏎`).
fn write_children(out: &mut String, steps: &[Value], prefix: &str) {
    let mut prefix = prefix.to_string();
    // Each level: its steps, the next one to write, and the prefix's length before it.
    let mut stack: Vec<(&[Value], usize, usize)> = vec![(steps, 0, prefix.len())];
    while let Some((steps, i, cut)) = stack.last_mut() {
        let Some(step) = steps.get(*i) else {
            stack.pop();
            continue;
        };
        let last = *i + 1 == steps.len();
        *i += 1;
        // This level's prefix (a child level may have grown it).
        prefix.truncate(*cut);
        let one_line = |s: &str| s.replace(['\r', '\n'], "⏎");
        let name = one_line(step["name"].as_str().unwrap_or("?"));
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
        if let Some(e) = step["metadata"]["Exceptions"].as_str() {
            let _ = write!(out, " ERROR: {}", one_line(e));
        }
        if step["metadata"]["cancelled"] == true {
            out.push_str(" (cancelled)");
        }
        out.push('\n');
        if let Some(children) = step["steps"].as_array()
            && !children.is_empty()
        {
            prefix.push_str(if last { "   " } else { "│  " });
            stack.push((children, 0, prefix.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    #[test]
    fn a_deep_tree_is_written_without_a_call_per_level() {
        // Run with a small stack: one frame per level would overflow it.
        let out = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                // Built by moving each level into the next (`json!` would copy it, a
                // call per level).
                let level = |name: String, steps: Option<Value>| {
                    let mut m = serde_json::Map::new();
                    m.insert("name".into(), Value::String(name));
                    m.insert("type".into(), json!("user_call"));
                    m.insert("latency".into(), json!(1.0));
                    if let Some(s) = steps {
                        m.insert("steps".into(), Value::Array(vec![s]));
                    }
                    Value::Object(m)
                };
                let mut step = level("leaf".into(), None);
                for i in 0..5_000 {
                    step = level(format!("s{i}"), Some(step));
                }
                let mut row = serde_json::Map::new();
                row.insert("inferenceId".into(), json!("deep"));
                row.insert("steps".into(), Value::Array(vec![step]));
                let row = Value::Object(row);
                let text = super::format_trace_tree(&row);
                // A deep Value is dropped a level at a time by serde_json; not here.
                std::mem::forget(row);
                text
            })
            .unwrap()
            .join()
            .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5_002);
        assert!(lines[1].starts_with("└─ s4999 [user_call]"), "{}", lines[1]);
        assert!(lines[5_001].ends_with("└─ leaf [user_call] 1.00 ms"));
        assert_eq!(
            lines[5_001].len(),
            3 * 5_000 + "└─ leaf [user_call] 1.00 ms".len()
        );
    }

    #[test]
    fn siblings_prefixes_and_multi_line_errors() {
        let row: Value = json!({"inferenceId": "x", "steps": [{"name": "root", "type": "user_call",
            "latency": 3.0, "steps": [
                {"name": "a", "type": "tool", "latency": 1.0, "steps": [
                    {"name": "a1", "type": "tool", "latency": 0.5}]},
                {"name": "b", "type": "tool", "latency": 1.0,
                    "metadata": {"Exceptions": "first\nsecond"}}]}]});
        assert_eq!(
            super::format_trace_tree(&row),
            "trace x\n\
             └─ root [user_call] 3.00 ms\n   \
             ├─ a [tool] 1.00 ms\n   \
             │  └─ a1 [tool] 0.50 ms\n   \
             └─ b [tool] 1.00 ms ERROR: first⏎second\n"
        );
    }
}
