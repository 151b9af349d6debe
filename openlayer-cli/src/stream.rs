//! `openlayer stream`: rows from a CSV or JSONL file streamed to a pipeline in batches,
//! after checking every row against the config. Rows of batches the platform refused
//! are written to a file of the input's format, as for `update`.

use std::path::{Path, PathBuf};

use openlayer_trace::{StreamConfig, TaskType, stream_config_from_json};
use serde_json::Value;

use crate::input::{self, Record};
use crate::progress::Progress;
use crate::{CliError, pipeline_id, remote_client};

/// The arguments of `openlayer stream`.
#[derive(Debug)]
pub struct Args {
    /// The CSV or JSONL input.
    pub file: PathBuf,
    /// The JSON file of the stream config.
    pub config: PathBuf,
    /// The task type, when the config's keys do not tell it.
    pub task_type: Option<String>,
    /// The pipeline (else `OPENLAYER_INFERENCE_PIPELINE_ID`).
    pub pipeline_id: Option<String>,
    /// Rows per request.
    pub batch_size: usize,
}

/// The stream config in the JSON file `path`, of `task_type` or of the task its keys
/// point to.
pub fn load_config(
    path: &Path,
    task_type: Option<&str>,
) -> Result<Box<dyn StreamConfig>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))?;
    let task_type = task_type
        .map(str::parse::<TaskType>)
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    stream_config_from_json(json, task_type)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// The most bytes of rows in one request: the default `batch_max_bytes` of traces (a
/// request the platform takes); a single larger row goes alone.
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// `records` in batches of at most `max_rows` rows and `max_bytes` of JSON (a row larger
/// than that alone).
fn batches(records: &[Record], max_rows: usize, max_bytes: usize) -> Vec<&[Record]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = serde_json::to_string(&r.row).map_or(0, |t| t.len() + 1);
        if i > start && (i - start >= max_rows.max(1) || bytes + size > max_bytes) {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Runs `openlayer stream` with its parsed arguments.
pub async fn run(args: Args) -> Result<(), CliError> {
    let (client, _) = remote_client()?;
    let pipeline = pipeline_id(args.pipeline_id.clone(), &client)?;
    let config = load_config(&args.config, args.task_type.as_deref())?;

    // Ids stay text even when they look like numbers.
    let json_config = config.to_json();
    let keep_text: Vec<&str> = json_config
        .get("inferenceIdColumnName")
        .and_then(Value::as_str)
        .into_iter()
        .collect();
    let input = input::read(&args.file, &keep_text)?;

    // Check everything before sending anything.
    let mut problems: Vec<String> = input
        .bad
        .iter()
        .map(|(r, why)| format!("{}:{}: {why}", args.file.display(), r.line))
        .collect();
    let required = config.required_columns();
    for record in &input.records {
        for (key, column) in &required {
            if !record.row.contains_key(*column) {
                problems.push(format!(
                    "{}:{}: no column `{column}` (named by `{key}`)",
                    args.file.display(),
                    record.line
                ));
            }
        }
    }
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("openlayer: {p}");
        }
        return Err(CliError::Failed(format!(
            "{} problem(s) in {}; nothing was sent",
            problems.len(),
            args.file.display()
        )));
    }

    let total = input.records.len();
    let bar = Progress::new("stream", total as u64);
    let mut failed: Vec<&Record> = Vec::new();
    let mut sent = 0usize;
    let mut errors = Vec::new();
    for batch in batches(&input.records, args.batch_size, MAX_REQUEST_BYTES) {
        let rows: Vec<Value> = batch.iter().map(|r| Value::Object(r.row.clone())).collect();
        match client.stream_rows(&pipeline, &*config, &rows).await {
            Ok(()) => {
                sent += batch.len();
                bar.add(batch.len() as u64, 0);
            }
            Err(e) => {
                let first = batch.first().map_or(0, |r| r.line);
                errors.push(format!("rows from line {first}: {e}"));
                failed.extend(batch);
                bar.add(batch.len() as u64, batch.len() as u64);
            }
        }
    }
    bar.finish();
    crate::print_line(&format!("streamed {sent} row(s) to pipeline {pipeline}"));
    if failed.is_empty() {
        return Ok(());
    }
    for e in errors.iter().take(20) {
        eprintln!("openlayer: {}: {e}", args.file.display());
    }
    let failed_path = input::failed_path(&args.file);
    input::write_failed(&failed_path, input.format, input.header.as_ref(), failed)?;
    Err(CliError::Failed(format!(
        "{} of {total} row(s) failed; they are in {}",
        total - sent,
        failed_path.display()
    )))
}
