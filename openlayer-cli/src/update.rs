//! `openlayer update`: rows merged by inference id.
//!
//! From [`BULK_THRESHOLD`] rows on (or with `--bulk`), the file goes in Arrow uploads
//! merged by the platform (`performDataMerge: true`), after every row was checked; see
//! [`crate::bulk`]. Below it (or with `--per-row`), one row update per input row, with
//! bounded concurrency; rows that fail are written, in the input's format and order
//! (JSONL for Parquet and Arrow input), to a file that can be fed back in.

use std::path::PathBuf;
use std::sync::Arc;

use openlayer_trace::RowUpdateConfig;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::bulk::{self, Job, Mode};
use crate::input::{self, Format, Input, Raw, Record};
use crate::progress::Progress;
use crate::table::{self, Checks, Kind};
use crate::{CliError, pipeline_id, remote_client};

/// From this many rows on, `update` merges the file in bulk.
pub const BULK_THRESHOLD: u64 = 1_000;

/// The arguments of `openlayer update`.
#[derive(Debug)]
pub struct Args {
    /// The CSV or JSONL input.
    pub file: PathBuf,
    /// The column holding each row's inference id.
    pub inference_id_column: String,
    /// The column sent as `groundTruthColumnName`.
    pub ground_truth_column: Option<String>,
    /// The column sent as `humanFeedbackColumnName`.
    pub human_feedback_column: Option<String>,
    /// The pipeline (else `OPENLAYER_INFERENCE_PIPELINE_ID`).
    pub pipeline_id: Option<String>,
    /// Row updates in flight at once.
    pub concurrency: usize,
    /// Where rows that failed are written (else next to the input).
    pub failed_file: Option<PathBuf>,
    /// `Some(true)`: `--bulk`; `Some(false)`: `--per-row`; `None`: by the row count.
    pub bulk: Option<bool>,
    /// The most rows in one upload (bulk).
    pub rows_per_upload: u64,
}

/// Runs `openlayer update` with its parsed arguments.
pub async fn run(args: Args) -> Result<(), CliError> {
    let (client, _) = remote_client()?;
    let pipeline = pipeline_id(args.pipeline_id.clone(), &client)?;
    let mut config = RowUpdateConfig::new();
    if let Some(c) = &args.ground_truth_column {
        config = config.ground_truth_column_name(c.clone());
    }
    if let Some(c) = &args.human_feedback_column {
        config = config.human_feedback_column_name(c.clone());
    }
    let config = (!config.is_empty()).then_some(config);
    let checks = Checks {
        id_column: Some(args.inference_id_column.clone()),
        text_column: None,
        required: [
            ("groundTruthColumnName", &args.ground_truth_column),
            ("humanFeedbackColumnName", &args.human_feedback_column),
        ]
        .into_iter()
        .filter_map(|(k, c)| Some((k.to_string(), c.clone()?)))
        .collect(),
    };
    let kind = Kind::of(&args.file)?;
    // A bulk merge of a typed file reads on while the rows are checked (this is dropped,
    // and the reading stopped, if the rows go one by one or any is bad).
    let prefetched = match args.bulk {
        Some(false) => None,
        _ => bulk::prefetch(&args.file, kind, &checks),
    };
    let scan = table::scan(&args.file, &checks)?;
    let mut bulk = args.bulk.unwrap_or(scan.rows >= BULK_THRESHOLD);
    // A bulk merge sets every column of its upload, a key a row lacks as null: rows with
    // different keys would erase what the platform holds in the columns they lack. They
    // go one by one instead (each setting its own keys), or, with --bulk, are refused.
    if bulk && let Some(uneven) = &scan.uneven_keys {
        if args.bulk == Some(true) {
            return Err(CliError::Usage(format!(
                "{}: the rows do not all have the same keys ({uneven}); a bulk merge would \
                 set the keys a row lacks to null: give every row the same keys, or send \
                 them with --per-row",
                args.file.display()
            )));
        }
        eprintln!(
            "openlayer: the rows do not all have the same keys ({uneven}); they are sent one \
             by one, each setting only its own keys"
        );
        bulk = false;
    }
    if !bulk {
        drop(prefetched);
        let input = match kind {
            Kind::Csv | Kind::Jsonl => input::read(&args.file, &[&args.inference_id_column])?,
            Kind::Parquet | Kind::Ipc => arrow_input(&args.file, &scan, &checks)?,
        };
        return per_row(args, client, pipeline, config, input).await;
    }
    scan.problems.refuse()?;
    let sent = bulk::run(Job {
        client: &client,
        pipeline: &pipeline,
        file: &args.file,
        scan: &scan,
        checks: &checks,
        mode: Mode::Update {
            id_column: args.inference_id_column.clone(),
            config,
        },
        rows_per_upload: args.rows_per_upload,
        prefetched,
        // A merge is registered again until it is in: never uncertain.
        uncertain: bulk::Uncertain::Ask,
    })
    .await?;
    crate::print_line(&format!(
        "merged {sent} row(s) into pipeline {pipeline} in bulk"
    ));
    Ok(())
}

/// A Parquet or Arrow file's rows as JSON records (their failures go to a JSONL file).
fn arrow_input(
    path: &std::path::Path,
    scan: &table::Scan,
    checks: &Checks,
) -> Result<Input, CliError> {
    let mut records = Vec::new();
    for batch in table::batches(path, scan, checks)? {
        let batch = batch?;
        let rows = openlayer_trace::record_batch_to_rows(&batch)
            .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
        let schema = batch.schema();
        for mut row in rows {
            // A null is an explicit `null` (the column set to null), as the bulk merge and
            // a CSV file's empty cell send it, not a missing column.
            for field in schema.fields() {
                row.entry(field.name().clone()).or_insert(Value::Null);
            }
            let line = records.len() as u64 + 1;
            let raw = Raw::Json(Value::Object(row.clone()).to_string());
            records.push(Record { line, row, raw });
        }
    }
    Ok(Input {
        format: Format::Jsonl,
        header: None,
        records,
        bad: Vec::new(),
    })
}

async fn per_row(
    args: Args,
    client: openlayer_trace::Client,
    pipeline: String,
    config: Option<RowUpdateConfig>,
    input: Input,
) -> Result<(), CliError> {
    let id_column = args.inference_id_column.as_str();

    if let Some(header) = &input.header {
        let named = [
            Some(id_column),
            args.ground_truth_column.as_deref(),
            args.human_feedback_column.as_deref(),
        ];
        for column in named.into_iter().flatten() {
            if !header.iter().any(|h| h == column) {
                return Err(CliError::Usage(format!(
                    "{} has no column `{column}`",
                    args.file.display()
                )));
            }
        }
    }

    let total = input.records.len() + input.bad.len();
    let bar = Arc::new(Progress::new("update", total as u64));
    let mut failures: Vec<(Record, String)> = Vec::new();
    for (record, why) in &input.bad {
        failures.push((record.clone(), why.clone()));
        bar.add(1, 1);
    }

    let pipeline: Arc<str> = Arc::from(pipeline);
    let mut tasks: JoinSet<Option<(Record, String)>> = JoinSet::new();
    let mut updated = 0usize;
    let mut lost = 0usize;
    for record in input.records {
        let id = match record.row.get(id_column) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                failures.push((record, format!("no inference id in `{id_column}`")));
                bar.add(1, 1);
                continue;
            }
        };
        let mut row = record.row.clone();
        row.remove(id_column);
        let (client, pipeline, config, bar) = (
            client.clone(),
            pipeline.clone(),
            config.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            let result = client
                .update_row(&pipeline, &id, &Value::Object(row), config)
                .await;
            bar.add(1, u64::from(result.is_err()));
            result.err().map(|e| (record, e.to_string()))
        });
        while tasks.len() >= args.concurrency {
            collect(
                tasks.join_next().await,
                &mut failures,
                &mut updated,
                &mut lost,
            );
        }
    }
    while let Some(done) = tasks.join_next().await {
        collect(Some(done), &mut failures, &mut updated, &mut lost);
    }
    bar.finish();

    crate::print_line(&format!("updated {updated} row(s) of pipeline {pipeline}"));
    if failures.is_empty() {
        return if lost == 0 {
            Ok(())
        } else {
            Err(CliError::Failed(format!("{lost} update task(s) crashed")))
        };
    }
    failures.sort_by_key(|(r, _)| r.line);
    for (record, why) in failures.iter().take(20) {
        eprintln!("openlayer: {}:{}: {why}", args.file.display(), record.line);
    }
    if failures.len() > 20 {
        eprintln!("openlayer: ... and {} more", failures.len() - 20);
    }
    let failed_path = args.failed_file.clone().unwrap_or_else(|| {
        let failed = input::failed_path(&args.file);
        match input.format {
            Format::Jsonl if input::Format::of(&args.file).is_err() => {
                failed.with_extension("jsonl")
            }
            _ => failed,
        }
    });
    input::write_failed(
        &failed_path,
        input.format,
        input.header.as_ref(),
        failures.iter().map(|(r, _)| r),
    )?;
    let mut message = format!(
        "{} of {total} row(s) failed; they are in {} (pass it as --file to retry them)",
        failures.len(),
        failed_path.display()
    );
    if lost > 0 {
        message.push_str(&format!("; {lost} update task(s) crashed"));
    }
    Err(CliError::Failed(message))
}

fn collect(
    joined: Option<Result<Option<(Record, String)>, tokio::task::JoinError>>,
    failures: &mut Vec<(Record, String)>,
    updated: &mut usize,
    lost: &mut usize,
) {
    match joined {
        Some(Ok(None)) => *updated += 1,
        Some(Ok(Some(failure))) => failures.push(failure),
        // A task that panicked lost its record: count it, so the exit code says so.
        Some(Err(e)) => {
            *lost += 1;
            eprintln!("openlayer: an update task crashed: {e}");
        }
        None => {}
    }
}
