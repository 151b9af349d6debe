//! Parsing spool lines: data-stream rows or a row update, in the local trace file's format.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
pub(super) struct Line<'a> {
    #[serde(rename = "pipelineId", default)]
    pub(super) pipeline_id: Option<String>,
    #[serde(borrow)]
    pub(super) config: &'a RawValue,
    #[serde(borrow)]
    pub(super) rows: Vec<&'a RawValue>,
}

/// A row-update line (see `localfile`).
#[derive(Deserialize)]
pub(super) struct UpdateLine<'a> {
    #[serde(rename = "pipelineId", default)]
    pub(super) pipeline_id: Option<String>,
    #[serde(rename = "inferenceId")]
    pub(super) inference_id: String,
    #[serde(borrow)]
    pub(super) row: &'a RawValue,
    #[serde(borrow, default)]
    pub(super) config: Option<&'a RawValue>,
}
/// A spool line: data-stream rows or a row update.
pub(super) enum Parsed<'a> {
    Stream(Line<'a>),
    Update(UpdateLine<'a>),
}

pub(super) fn parse_line(text: &str) -> Option<Parsed<'_>> {
    if let Ok(line) = serde_json::from_str::<Line<'_>>(text) {
        return Some(Parsed::Stream(line));
    }
    serde_json::from_str::<UpdateLine<'_>>(text)
        .ok()
        .map(Parsed::Update)
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(rename = "inferenceId", default)]
    inference_id: Option<serde_json::Value>,
}

pub(super) fn row_id(row: &RawValue) -> Option<String> {
    match serde_json::from_str::<IdOnly>(row.get())
        .ok()?
        .inference_id?
    {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}
