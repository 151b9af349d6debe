//! `openlayer show FILE`: the traces of a local trace file (or of every trace file of a
//! directory, such as a spool) as trees, and a summary of each row update.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use openlayer_trace::{LocalLine, read_local_file};
use serde_json::{Map, Value};

use crate::CliError;

/// Prints `path` to `out`; returns how many lines could not be read (of those read
/// before its reader went away, if it did).
pub fn run(path: &Path, out: &mut impl Write) -> Result<usize, CliError> {
    let files = files_of(path)?;
    let mut bad = 0;
    let mut text = String::new();
    for file in &files {
        if files.len() > 1 {
            let _ = writeln!(text, "== {}", file.display());
        }
        let lines = read_local_file(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
        for entry in lines {
            match entry.line {
                Ok(line) => render_line(&mut text, entry.number, &line),
                // The last line of a file still being written: not shown, not an error.
                Err(ref e) if !entry.complete && !matches!(e, openlayer_trace::Error::Io(_)) => {
                    eprintln!(
                        "{}: line {} is not complete yet (still being written?); not shown",
                        file.display(),
                        entry.number
                    )
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("{}: {e}", file.display());
                }
            }
            if text.len() > 64 * 1024 {
                if !emit(out, &text)? {
                    return Ok(bad);
                }
                text.clear();
            }
        }
    }
    emit(out, &text)?;
    Ok(bad)
}

/// Writes `text` to `out`. `Ok(false)` when its reader has gone away (a closed pipe:
/// `openlayer show FILE | head`): nothing more is to be shown, and that is no failure.
fn emit(out: &mut impl Write, text: &str) -> Result<bool, CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Failed(format!("cannot write the output: {e}"))),
    }
}

/// The file itself, or the trace files of a directory (see [`is_trace_file`]) in name
/// order.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(is_trace_file))
        .collect();
    files.sort();
    if files.is_empty() {
        eprintln!(
            "{}: no trace files (*.jsonl, *.jsonl.N) in this directory",
            path.display()
        );
    }
    Ok(files)
}

/// Whether a file of a directory is a trace file: `*.jsonl` (the local trace file, the
/// spool's files) or one rotated away, `*.jsonl.N` (the SDK's `<file>.1`). Not the
/// files the commands keep beside them (`FILE.pushed`, `FILE.pushed.lock`, `FILE.sent`,
/// and the failed rows of `update` and `stream`, `*.failed.csv`, `*.failed.jsonl`, ...).
fn is_trace_file(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    let rotated = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot + 1 < name.len() && name[dot + 1..].iter().all(u8::is_ascii_digit) => {
            &name[..dot]
        }
        _ => name,
    };
    rotated.ends_with(b".jsonl") && !name.ends_with(b".failed.jsonl")
}

fn render_line(out: &mut String, number: usize, line: &LocalLine) {
    match line {
        LocalLine::Stream {
            pipeline_id,
            config,
            rows,
        } => {
            let id_col = column(config, "inferenceIdColumnName", "inferenceId");
            let latency_col = column(config, "latencyColumnName", "latency");
            for row in rows {
                let steps = row
                    .get("steps")
                    .and_then(Value::as_array)
                    .filter(|s| !s.is_empty());
                let _ = write!(
                    out,
                    "{} {} pipeline {}",
                    if steps.is_some() { "trace" } else { "row" },
                    row.get(id_col).map(plain).unwrap_or_else(|| "-".into()),
                    pipeline_id.as_deref().unwrap_or("-"),
                );
                if let Some(ms) = row.get(latency_col).and_then(Value::as_f64) {
                    let _ = write!(out, " {}", ms_text(ms));
                }
                let _ = writeln!(out, "  (line {number})");
                match steps {
                    Some(steps) => {
                        for step in steps {
                            render_step(out, step, 1);
                        }
                    }
                    None => {
                        let _ = writeln!(out, "  {}", summary(row, &[id_col, latency_col]));
                    }
                }
            }
        }
        LocalLine::RowUpdate {
            pipeline_id,
            inference_id,
            row,
            ..
        } => {
            let _ = writeln!(
                out,
                "update {inference_id} pipeline {}: {}  (line {number})",
                pipeline_id.as_deref().unwrap_or("-"),
                summary(row, &[]),
            );
        }
    }
}

/// The deepest step indented; deeper ones are indented as much, with their depth.
const MAX_INDENT: usize = 40;

fn render_step(out: &mut String, step: &Value, depth: usize) {
    let name = step.get("name").and_then(Value::as_str).unwrap_or("?");
    let kind = step.get("type").and_then(Value::as_str).unwrap_or("?");
    // Indented up to a depth, then numbered: a trace thousands of steps deep would
    // print lines of quadratic total length (and a width past 65,535 is refused).
    if depth <= MAX_INDENT {
        let _ = write!(out, "{:indent$}{name} [{kind}]", "", indent = depth * 2);
    } else {
        let _ = write!(
            out,
            "{:indent$}({depth}) {name} [{kind}]",
            "",
            indent = MAX_INDENT * 2
        );
    }
    if let Some(ms) = step.get("latency").and_then(Value::as_f64) {
        let _ = write!(out, " {}", ms_text(ms));
    }
    if step
        .get("metadata")
        .and_then(|m| m.get("Exceptions"))
        .is_some_and(|e| !e.is_null())
    {
        let _ = write!(out, " (error)");
    }
    out.push('\n');
    if let Some(children) = step.get("steps").and_then(Value::as_array) {
        for child in children {
            render_step(out, child, depth + 1);
        }
    }
}

fn column<'a>(config: &'a Map<String, Value>, key: &str, default: &'a str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or(default)
}

fn ms_text(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A value as text, strings without their quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `key=value` pairs, values shortened.
fn summary(row: &Map<String, Value>, skip: &[&str]) -> String {
    let mut parts = Vec::new();
    for (k, v) in row {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let mut text = v.to_string();
        if text.chars().count() > 40 {
            text = text.chars().take(37).collect::<String>() + "...";
        }
        parts.push(format!("{k}={text}"));
    }
    if parts.is_empty() {
        "(no columns)".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_files_are_told_by_their_names() {
        for name in [
            "openlayer-traces.jsonl",
            "openlayer-traces.jsonl.1",
            "00000000000000000042.jsonl",
            "t.jsonl.12",
        ] {
            assert!(is_trace_file(name.as_ref()), "{name}");
        }
        for name in [
            "t.jsonl.pushed",
            "t.jsonl.pushed.lock",
            "t.jsonl.pushed.tmp",
            "t.jsonl.sent",
            "rows.failed.csv",
            "rows.failed.jsonl",
            "rows.failed.jsonl.bak",
            "t.jsonl.",
            "t.jsonl.1a",
            "t.json",
            "jsonl",
        ] {
            assert!(!is_trace_file(name.as_ref()), "{name}");
        }
    }
    use serde_json::json;

    #[test]
    fn a_trace_renders_as_an_indented_tree() {
        let line: LocalLine = serde_json::from_value(json!({
            "pipelineId": "p1",
            "config": {"inferenceIdColumnName": "inferenceId", "latencyColumnName": "latency"},
            "rows": [{
                "inferenceId": "abc",
                "latency": 12.5,
                "steps": [{
                    "name": "main", "type": "user_call", "latency": 12.5,
                    "steps": [
                        {"name": "retrieve", "type": "retriever", "latency": 3.0, "steps": []},
                        {"name": "llm", "type": "chat_completion", "latency": 250.4,
                         "metadata": {"Exceptions": "boom"}, "steps": []}
                    ]
                }]
            }]
        }))
        .unwrap();
        let mut out = String::new();
        render_line(&mut out, 7, &line);
        assert_eq!(
            out,
            "trace abc pipeline p1 12.50 ms  (line 7)\n\
             \x20 main [user_call] 12.50 ms\n\
             \x20   retrieve [retriever] 3.00 ms\n\
             \x20   llm [chat_completion] 250 ms (error)\n"
        );
    }

    #[test]
    fn an_update_is_one_summary_line() {
        let line: LocalLine = serde_json::from_value(json!({
            "pipelineId": null, "inferenceId": "abc", "row": {"groundTruth": "Paris", "score": 5}
        }))
        .unwrap();
        let mut out = String::new();
        render_line(&mut out, 2, &line);
        assert_eq!(
            out,
            "update abc pipeline -: groundTruth=\"Paris\" score=5  (line 2)\n"
        );
    }

    #[test]
    fn a_plain_row_is_one_summary_line() {
        let line: LocalLine = serde_json::from_value(json!({
            "pipelineId": "p1",
            "config": {"inferenceIdColumnName": "id", "latencyColumnName": "ms"},
            "rows": [{"id": "r1", "ms": 300, "answer": "4", "question": "2+2?"}]
        }))
        .unwrap();
        let mut out = String::new();
        render_line(&mut out, 1, &line);
        assert_eq!(
            out,
            "row r1 pipeline p1 300 ms  (line 1)\n  answer=\"4\" question=\"2+2?\"\n"
        );
    }
}
