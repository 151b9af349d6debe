//! Helpers shared by the examples.

use openlayer_trace::{Config, DeliveryReport, format_trace_tree};

/// Says where the traces went, and prints the trace with this inference id as a tree,
/// followed by the row updates of that id, when they went to the local file of the
/// embedded default.
pub fn show_outcome(config: &Config, inference_id: &str, report: &DeliveryReport) {
    let s = &report.stats;
    if config.is_disabled() {
        println!("publishing is disabled (OPENLAYER_DISABLE_PUBLISH): nothing was recorded");
        return;
    }
    if config.api_key().is_some() {
        println!(
            "delivered to Openlayer: {} sent, {} retried, {} dropped, {} spooled, {} pending",
            s.sent,
            s.retried,
            s.dropped.total(),
            s.spooled,
            s.pending
        );
        return;
    }
    let path = trace_file_path(config);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    match find_row(&text, inference_id) {
        Some(row) => print!("{}", format_trace_tree(&row)),
        None => println!("trace {inference_id} was not found in {}", path.display()),
    }
    for line in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|line| line.get("row").is_some() && line["inferenceId"] == inference_id)
    {
        match line.get("config") {
            Some(config) => println!("row update: {} (config {config})", line["row"]),
            None => println!("row update: {}", line["row"]),
        }
    }
    println!(
        "traces written to {} ({} this run)",
        path.display(),
        s.written
    );
    println!("push them later with: openlayer push {}", path.display());
}

/// The local trace file of `config`, as an absolute path when it can be made one.
pub fn trace_file_path(config: &Config) -> std::path::PathBuf {
    std::path::absolute(config.trace_file()).unwrap_or_else(|_| config.trace_file().to_path_buf())
}

/// The last traced row with this inference id in the text of a local trace file.
pub fn find_row(text: &str, inference_id: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|line| {
            line["rows"]
                .as_array()?
                .iter()
                .find(|r| r["inferenceId"] == inference_id)
                .cloned()
        })
}

/// The row with this inference id in the local trace file of `config` (the embedded
/// default), if the trace went there.
pub fn local_row(config: &Config, inference_id: &str) -> Option<serde_json::Value> {
    if config.is_disabled() || config.api_key().is_some() {
        return None;
    }
    let text = std::fs::read_to_string(trace_file_path(config)).ok()?;
    find_row(&text, inference_id)
}
