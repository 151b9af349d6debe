//! `openlayer publish`: a table appended to a pipeline in bulk, as Arrow uploads
//! registered with `performDataMerge: false`, after every row was checked against the
//! config. Resumable (see [`crate::bulk`]): a rerun after a failure sends only the rest,
//! so no row is published twice. When the answer to a registration was lost (its rows may
//! be in, or not), the rerun asks which, with `--skip-uncertain` or `--resend-uncertain`.

use std::path::PathBuf;

use serde_json::Value;

use crate::bulk::{self, Job, Mode};
use crate::stream::load_config;
use crate::table::{self, Checks, Kind};
use crate::{CliError, pipeline_id, remote_client};

/// The arguments of `openlayer publish`.
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
    /// The most rows in one upload.
    pub rows_per_upload: u64,
    /// What to do with uploads whose registration's answer was lost.
    pub uncertain: bulk::Uncertain,
}

/// Runs `openlayer publish` with its parsed arguments.
pub async fn run(args: Args) -> Result<(), CliError> {
    let (client, _) = remote_client()?;
    let pipeline = pipeline_id(args.pipeline_id.clone(), &client)?;
    let config = load_config(&args.config, args.task_type.as_deref())?;
    let json = config.to_json();
    // Ids stay text even when they look like numbers.
    let checks = Checks {
        id_column: None,
        text_column: json
            .get("inferenceIdColumnName")
            .and_then(Value::as_str)
            .map(str::to_string),
        required: config
            .required_columns()
            .into_iter()
            .map(|(k, c)| (k.to_string(), c.to_string()))
            .collect(),
    };
    // Read on while the rows are checked (dropped, and so stopped, if any is bad).
    let prefetched = bulk::prefetch(&args.file, Kind::of(&args.file)?, &checks);
    let scan = table::scan(&args.file, &checks)?;
    scan.problems.refuse()?;
    let sent = bulk::run(Job {
        client: &client,
        pipeline: &pipeline,
        file: &args.file,
        scan: &scan,
        checks: &checks,
        mode: Mode::Publish { config },
        rows_per_upload: args.rows_per_upload,
        prefetched,
        uncertain: args.uncertain,
    })
    .await?;
    crate::print_line(&format!("published {sent} row(s) to pipeline {pipeline}"));
    Ok(())
}
