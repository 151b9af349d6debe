//! `openlayer`: show and push local trace files; update, stream and publish rows.
//!
//! Configuration comes from the environment, as for the library: `OPENLAYER_API_KEY`,
//! `OPENLAYER_BASE_URL`, and `OPENLAYER_INFERENCE_PIPELINE_ID` as the default pipeline.
//! Exit codes: 0 when everything went through, 1 when anything failed (bad rows, a
//! refused request; the message says what, if anything, was sent), 2 for usage errors.

mod bulk;
mod csv_table;
mod input;
mod progress;
mod publish;
mod push;
mod show;
mod stream;
mod table;
mod update;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openlayer_trace::{Client, Config};

/// Work with Openlayer data from the command line.
#[derive(Debug, Parser)]
#[command(name = "openlayer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the traces of a local trace file (or of each trace file, *.jsonl or a rotated
    /// *.jsonl.N, of a directory such as a spool) as trees, and summarise its row updates.
    Show {
        /// The trace file, or a directory of them (a spool).
        file: PathBuf,
    },
    /// Send every line of a local trace file to the platform. Resumable: progress is
    /// kept in FILE.pushed, and a rerun sends only what was not sent yet.
    Push {
        /// The trace file.
        file: PathBuf,
        /// The pipeline for lines written without one (default:
        /// OPENLAYER_INFERENCE_PIPELINE_ID).
        #[arg(long)]
        pipeline_id: Option<String>,
    },
    /// Update rows by inference id. From 1,000 rows on, the file is checked, then merged
    /// in bulk (Arrow uploads; resumable: progress is kept in FILE.sent). Below that, one
    /// request per row; rows that fail are written to a file that can be fed back in.
    Update {
        /// The rows: .parquet, .arrow/.ipc, .csv (with a header) or .jsonl.
        #[arg(long)]
        file: PathBuf,
        /// The column holding each row's inference id.
        #[arg(long)]
        inference_id_column: String,
        /// The column holding the ground truth.
        #[arg(long)]
        ground_truth_column: Option<String>,
        /// The column holding human feedback.
        #[arg(long)]
        human_feedback_column: Option<String>,
        /// The pipeline (default: OPENLAYER_INFERENCE_PIPELINE_ID).
        #[arg(long)]
        pipeline_id: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Where failed rows go, per row (default: the input's name with `.failed`
        /// before its extension).
        #[arg(long)]
        failed_file: Option<PathBuf>,
        /// One request per row, whatever the number of rows.
        #[arg(long, conflicts_with = "bulk")]
        per_row: bool,
        /// A bulk merge, whatever the number of rows.
        #[arg(long)]
        bulk: bool,
        /// Rows per bulk upload (each registered, and recorded for a resume, in turn).
        #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
        rows_per_upload: u64,
    },
    /// Publish (append) the rows of a table in bulk: every row is checked against the
    /// config, then the table goes in Arrow uploads. Resumable: progress is kept in
    /// FILE.sent, and a rerun sends only the rows not sent yet; once every row is in,
    /// FILE.published records it and a rerun to the same pipeline refuses (remove it to
    /// publish again).
    Publish {
        /// The rows: .parquet, .arrow/.ipc, .csv (with a header) or .jsonl.
        #[arg(long)]
        file: PathBuf,
        /// The stream config, a JSON file (as for `stream`).
        #[arg(long)]
        config: PathBuf,
        /// The task type: llm-base, tabular-classification, tabular-regression or
        /// text-classification.
        #[arg(long)]
        task_type: Option<String>,
        /// The pipeline (default: OPENLAYER_INFERENCE_PIPELINE_ID).
        #[arg(long)]
        pipeline_id: Option<String>,
        /// Rows per upload (each registered, and recorded for a resume, in turn).
        #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
        rows_per_upload: u64,
        /// After a run whose last registration's answer was lost: those rows are in the
        /// pipeline (checked there); go on after them.
        #[arg(long, conflicts_with = "resend_uncertain")]
        skip_uncertain: bool,
        /// After a run whose last registration's answer was lost: those rows are not in
        /// the pipeline (checked there); send them again.
        #[arg(long)]
        resend_uncertain: bool,
    },
    /// Stream rows to a pipeline in batches.
    Stream {
        /// The rows: a .csv file with a header, or a .jsonl file of JSON objects.
        #[arg(long)]
        file: PathBuf,
        /// The stream config, a JSON file (LLM, tabular or text classification, tabular
        /// regression; the task is inferred from its keys unless --task-type is given).
        #[arg(long)]
        config: PathBuf,
        /// The task type: llm-base, tabular-classification, tabular-regression or
        /// text-classification.
        #[arg(long)]
        task_type: Option<String>,
        /// The pipeline (default: OPENLAYER_INFERENCE_PIPELINE_ID).
        #[arg(long)]
        pipeline_id: Option<String>,
        /// Rows per request.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
    },
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum CliError {
    /// The command was used wrongly (exit code 2).
    Usage(String),
    /// Something failed along the way (exit code 1).
    Failed(String),
}

/// A client that talks to the platform: these commands have no local mode.
pub fn remote_client() -> Result<(Client, Config), CliError> {
    let config = Config::from_env().map_err(|e| CliError::Usage(e.to_string()))?;
    if config.api_key().is_none() {
        return Err(CliError::Usage(
            "this command sends data to Openlayer and requires OPENLAYER_API_KEY".into(),
        ));
    }
    let client = Client::new(&config).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok((client, config))
}

/// The pipeline from the flag, else from the environment; required.
pub fn pipeline_id(flag: Option<String>, client: &Client) -> Result<String, CliError> {
    flag.or_else(|| client.inference_pipeline_id().map(str::to_string))
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            CliError::Usage(
                "no inference pipeline: pass --pipeline-id or set OPENLAYER_INFERENCE_PIPELINE_ID"
                    .into(),
            )
        })
}

/// Writes a line of a command's output (its summary) to stdout. A reader that has gone
/// away (a closed pipe: `openlayer push FILE | true`) is no failure of the command, whose
/// work is done; another error writing it is told on stderr.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("openlayer: cannot write the output: {e}");
        }
        _ => {}
    }
}

/// The stack the commands run on: a trace line may nest thousands of steps deep, and
/// JSON is parsed and written recursively (address space reserved, not memory used).
const STACK: usize = 256 * 1024 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::thread::Builder::new()
        .name("openlayer".into())
        .stack_size(STACK)
        .spawn(move || run_command(cli.command));
    let result = match command {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(CliError::Failed("the command panicked".into()))),
        Err(e) => Err(CliError::Failed(format!("could not start: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Failed(m)) => {
            eprintln!("openlayer: {m}");
            ExitCode::from(1)
        }
        Err(CliError::Usage(m)) => {
            eprintln!("openlayer: {m}");
            ExitCode::from(2)
        }
    }
}

fn run_command(command: Command) -> Result<(), CliError> {
    match command {
        Command::Show { file } => show::run(&file, &mut std::io::stdout().lock()).and_then(|bad| {
            if bad == 0 {
                Ok(())
            } else {
                Err(CliError::Failed(format!("{bad} line(s) could not be read")))
            }
        }),
        command => run_async(command),
    }
}

fn run_async(command: Command) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        match command {
            Command::Show { .. } => unreachable!("show runs without a runtime"),
            Command::Push { file, pipeline_id } => push::run(&file, pipeline_id).await,
            Command::Update {
                file,
                inference_id_column,
                ground_truth_column,
                human_feedback_column,
                pipeline_id,
                concurrency,
                failed_file,
                per_row,
                bulk,
                rows_per_upload,
            } => {
                update::run(update::Args {
                    file,
                    inference_id_column,
                    ground_truth_column,
                    human_feedback_column,
                    pipeline_id,
                    concurrency: usize::from(concurrency),
                    failed_file,
                    bulk: (per_row || bulk).then_some(bulk),
                    rows_per_upload,
                })
                .await
            }
            Command::Publish {
                file,
                config,
                task_type,
                pipeline_id,
                rows_per_upload,
                skip_uncertain,
                resend_uncertain,
            } => {
                publish::run(publish::Args {
                    file,
                    config,
                    task_type,
                    pipeline_id,
                    rows_per_upload,
                    uncertain: if skip_uncertain {
                        bulk::Uncertain::Skip
                    } else if resend_uncertain {
                        bulk::Uncertain::Resend
                    } else {
                        bulk::Uncertain::Ask
                    },
                })
                .await
            }
            Command::Stream {
                file,
                config,
                task_type,
                pipeline_id,
                batch_size,
            } => {
                stream::run(stream::Args {
                    file,
                    config,
                    task_type,
                    pipeline_id,
                    batch_size: batch_size as usize,
                })
                .await
            }
        }
    })
}
