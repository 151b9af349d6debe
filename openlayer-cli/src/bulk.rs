//! The bulk path of `update` and `publish`: a checked table sent as Arrow uploads of
//! `--rows-per-upload` rows, each registered before the next starts.
//!
//! The table is read on a thread of its own, ahead of the uploads (at most
//! [`READ_AHEAD_BYTES`] of record batches waiting): reading and parsing the file overlap
//! encoding and uploading it.
//!
//! Resumable: after each registered upload, the rows done so far are written to
//! `FILE.sent` (with the file's length and modification time); a rerun of the same
//! command on the same, unchanged file skips them. The file is removed once everything
//! is in; a `publish` then leaves `FILE.published`, and a later `publish` of the file to
//! the same pipeline refuses rather than append its rows again.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use arrow_array::RecordBatch;
use openlayer_trace::{Client, Error, RowUpdateConfig, StreamConfig};
use serde::{Deserialize, Serialize};

use crate::CliError;
use crate::csv_table::{self, CsvSchema};
use crate::progress::Progress;
use crate::table::{self, Checks, Kind, Scan};

/// What a run does with the rows of an earlier run's last upload whose registration's
/// answer was lost (an append that may be in the pipeline, or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncertain {
    /// Stop, and say how to choose.
    Ask,
    /// They are in: go on after them.
    Skip,
    /// They are not: send them again.
    Resend,
}

/// What the rows are for.
pub enum Mode {
    /// Merged into existing rows by inference id.
    Update {
        id_column: String,
        config: Option<RowUpdateConfig>,
    },
    /// Appended as new rows.
    Publish { config: Box<dyn StreamConfig> },
}

impl Mode {
    fn command(&self) -> &'static str {
        match self {
            Mode::Update { .. } => "update",
            Mode::Publish { .. } => "publish",
        }
    }
}

/// One bulk run over a checked table file: where it goes, what was found in it, and how.
pub struct Job<'a> {
    /// The client that sends the uploads and registrations.
    pub client: &'a Client,
    /// The inference pipeline's id.
    pub pipeline: &'a str,
    /// The input file (its progress file is named after it).
    pub file: &'a Path,
    /// What the checking pass found in the file (row count, columns).
    pub scan: &'a Scan,
    /// The checks every row passed (the config's columns and types).
    pub checks: &'a Checks,
    /// Publish (append) or update (merge by inference id).
    pub mode: Mode,
    /// The most rows in one upload.
    pub rows_per_upload: u64,
    /// The batches, already being read (see [`prefetch`]).
    pub prefetched: Option<Prefetched>,
    /// What to do with uploads whose registration's answer was lost.
    pub uncertain: Uncertain,
}

/// A file's batches, read while its rows are checked.
pub struct Prefetched {
    batches: ReadAhead,
    /// For a CSV file, the column types guessed: the batches are used only if the scan
    /// finds the same.
    csv: Option<CsvSchema>,
}

/// The rows a CSV file's types are guessed from, to read it ahead.
const GUESS_ROWS: u64 = 10_000;

/// Starts reading a file for the bulk path while it is scanned: a Parquet or Arrow IPC
/// file (whose batches need nothing from the scan), or a CSV file as typed by its first
/// [`GUESS_ROWS`] rows. `None` for a JSONL file, or when the file cannot be opened (the
/// scan says why).
pub fn prefetch(file: &Path, kind: Kind, checks: &Checks) -> Option<Prefetched> {
    let (batches, csv): (Batches, _) = match kind {
        Kind::Parquet | Kind::Ipc => (table::arrow_batches(file, kind).ok()?, None),
        Kind::Csv => {
            let schema = csv_table::guess(csv_table::Records::open(file, checks).ok()?, GUESS_ROWS);
            let records = csv_table::Records::open(file, checks).ok()?;
            let batches = csv_table::batches(records, schema.clone(), file.to_path_buf());
            (Box::new(batches), Some(schema))
        }
        Kind::Jsonl => return None,
    };
    Some(Prefetched {
        batches: read_ahead(batches, READ_AHEAD_BYTES),
        csv,
    })
}

/// What has been sent of a file, in `FILE.sent`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Sent {
    version: u32,
    command: String,
    pipeline: String,
    file_len: u64,
    modified_ns: u64,
    rows_done: u64,
    /// Rows after `rows_done` whose registration's answer was lost: in, or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertain: Option<u64>,
}

/// `FILE.published`: the pipelines every row of the file was appended to by `publish`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    pipelines: Vec<PublishedTo>,
}

/// One pipeline of [`Published`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishedTo {
    pipeline: String,
    rows: u64,
    file_len: u64,
    modified_ns: u64,
}

/// `FILE.published`.
fn published_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".published");
    PathBuf::from(name)
}

/// `FILE.sent`.
pub fn sidecar(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sent");
    PathBuf::from(name)
}

fn identity(file: &Path) -> Result<(u64, u64), CliError> {
    let meta = std::fs::metadata(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    Ok((meta.len(), modified))
}

/// Writes `bytes` to `path` (0600) through a synced temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = crate::input::create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn save(path: &Path, sent: &Sent) -> Result<(), CliError> {
    let versioned;
    let sent = if sent.uncertain.is_some() {
        versioned = Sent {
            version: 2,
            command: sent.command.clone(),
            pipeline: sent.pipeline.clone(),
            ..*sent
        };
        &versioned
    } else {
        sent
    };
    let fail =
        |e: std::io::Error| CliError::Failed(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("sent.tmp");
    let mut f = crate::input::create_private(&tmp).map_err(fail)?;
    f.write_all(&serde_json::to_vec(sent).expect("plain data"))
        .map_err(fail)?;
    // Synced before the rename, so that a crash cannot leave an empty progress file.
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Sends the table; returns the rows sent by this run.
pub async fn run(job: Job<'_>) -> Result<u64, CliError> {
    let state_path = sidecar(job.file);
    let (file_len, modified_ns) = identity(job.file)?;
    let mut sent = Sent {
        version: 1,
        command: job.mode.command().into(),
        pipeline: job.pipeline.into(),
        file_len,
        modified_ns,
        rows_done: 0,
        uncertain: None,
    };
    let published = published_path(job.file);
    let mut record = Published::default();
    if matches!(job.mode, Mode::Publish { .. }) {
        match std::fs::read(&published) {
            Ok(bytes) => {
                record = serde_json::from_slice(&bytes).map_err(|e| {
                    CliError::Usage(format!(
                        "{} is not a record of publishes ({e}); remove it to publish the file \
                         again",
                        published.display()
                    ))
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "cannot read {}: {e}",
                    published.display()
                )));
            }
        }
        if let Some(before) = record.pipelines.iter().find(|p| p.pipeline == job.pipeline) {
            let changed = (before.file_len, before.modified_ns) != (file_len, modified_ns);
            return Err(CliError::Usage(format!(
                "every row of {} was appended to pipeline {} already ({} row(s){}, recorded in \
                 {}): a rerun would append them again; remove {} to publish the file again",
                job.file.display(),
                before.pipeline,
                before.rows,
                if changed {
                    "; the file has changed since"
                } else {
                    ""
                },
                published.display(),
                published.display()
            )));
        }
    }
    match std::fs::read(&state_path) {
        Ok(bytes) => {
            let before: Sent = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Usage(format!(
                    "{} is not a progress file ({e}); remove it to send from the start",
                    state_path.display()
                ))
            })?;
            // Version 2 records rows whose registration is uncertain (so that an older
            // `openlayer`, which knows version 1 only, refuses the file rather than send
            // them again).
            let same = Sent {
                version: if matches!(before.version, 1 | 2) {
                    before.version
                } else {
                    sent.version
                },
                rows_done: before.rows_done,
                uncertain: before.uncertain,
                ..sent
            };
            if before != same {
                return Err(CliError::Usage(format!(
                    "{} records another run (another command, pipeline or version of the file); \
                     remove it to send from the start",
                    state_path.display()
                )));
            }
            sent = same;
            if let Some(n) = sent.uncertain.take() {
                let (from, to) = (sent.rows_done + 1, sent.rows_done + n);
                match job.uncertain {
                    Uncertain::Ask => {
                        return Err(CliError::Usage(format!(
                            "rows {from} to {to} of {} may be in the pipeline already (the \
                             answer to their registration was lost); check the pipeline, then \
                             rerun with --skip-uncertain if they are in, or --resend-uncertain \
                             if they are not",
                            job.file.display()
                        )));
                    }
                    Uncertain::Skip => {
                        sent.rows_done += n;
                        eprintln!("openlayer: rows {from} to {to} are in, as told: skipped");
                    }
                    Uncertain::Resend => {
                        eprintln!("openlayer: rows {from} to {to} are not in, as told: sent again");
                    }
                }
                save(&state_path, &sent)?;
            }
            eprintln!(
                "openlayer: resuming after {} row(s) already sent ({})",
                sent.rows_done,
                state_path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read {}: {e}",
                state_path.display()
            )));
        }
    }

    let bar = Progress::new(job.mode.command(), job.scan.rows);
    bar.add(sent.rows_done, 0);
    let mut feed = Feed {
        inner: source(job.prefetched, job.scan.csv.as_ref(), || {
            table::batches(job.file, job.scan, job.checks)
        })?,
        pending: None,
        skip: sent.rows_done,
        error: None,
    };
    let mut this_run = 0u64;
    while feed.has_more() {
        let take = Take {
            feed: &mut feed,
            left: job.rows_per_upload,
            bar: &bar,
        };
        let result = match &job.mode {
            Mode::Update { id_column, config } => {
                job.client
                    .update_record_batches(job.pipeline, id_column, config.clone(), take)
                    .await
            }
            Mode::Publish { config } => {
                job.client
                    .publish_record_batches(job.pipeline, config.as_ref(), take)
                    .await
            }
        };
        let (rows, error) = match result {
            Ok(summary) => (summary.rows, None),
            Err(Error::BulkPartial {
                rows_sent, source, ..
            }) => (rows_sent, Some(*source)),
            Err(e) => (0, Some(e)),
        };
        sent.rows_done += rows;
        this_run += rows;
        if let Some(e) = error {
            bar.finish();
            // An append whose registration's answer was lost: its rows may be in. A rerun
            // must not send them again unasked (they would be in twice).
            if let Error::AppendUncertain { rows, .. } = &e {
                sent.uncertain = Some(*rows);
            }
            if sent.rows_done > 0 || sent.uncertain.is_some() {
                save(&state_path, &sent)?;
            }
            if let Some(n) = sent.uncertain {
                let (from, to) = (sent.rows_done + 1, sent.rows_done + n);
                return Err(CliError::Failed(format!(
                    "{e}\n{} of {} row(s) are in, and rows {from} to {to} may be too (the \
                     answer to their registration was lost); check the pipeline, then rerun \
                     the same command with --skip-uncertain if they are in, or \
                     --resend-uncertain if they are not (progress is in {})",
                    sent.rows_done,
                    job.scan.rows,
                    state_path.display()
                )));
            }
            let why = feed.error.take().map_or(e.to_string(), |e| match e {
                CliError::Failed(m) | CliError::Usage(m) => m,
            });
            let resume = if sent.rows_done > 0 {
                format!(
                    "; rerun the same command to send the rest (progress is in {})",
                    state_path.display()
                )
            } else {
                String::new()
            };
            return Err(CliError::Failed(format!(
                "{why}\n{} of {} row(s) are in{resume}",
                sent.rows_done, job.scan.rows
            )));
        }
        save(&state_path, &sent)?;
    }
    bar.finish();
    if matches!(job.mode, Mode::Publish { .. }) && sent.rows_done > 0 {
        // Appended: recorded, so that a rerun does not append the rows again (a merge done
        // again changes nothing). Every row is in even when the record cannot be written.
        record.pipelines.push(PublishedTo {
            pipeline: sent.pipeline.clone(),
            rows: sent.rows_done,
            file_len: sent.file_len,
            modified_ns: sent.modified_ns,
        });
        if let Err(e) = write_private(
            &published,
            &serde_json::to_vec(&record).expect("plain data"),
        ) {
            eprintln!(
                "openlayer: every row is in, but {} could not be written ({e}): a rerun would \
                 append them again",
                published.display()
            );
        }
    }
    let _ = std::fs::remove_file(&state_path);
    Ok(this_run)
}

/// The most bytes of record batches read ahead of the uploads.
const READ_AHEAD_BYTES: usize = 48 << 20;

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, CliError>> + Send>;

/// Batches read ahead, waiting for the uploads.
#[derive(Default)]
struct Queue {
    items: VecDeque<(Result<RecordBatch, CliError>, usize)>,
    /// The memory of the batches in `items`.
    bytes: usize,
    /// The reader has stopped.
    done: bool,
    /// Nothing more is wanted.
    closed: bool,
}

/// The reading end of [`read_ahead`]; dropping it stops the reader.
struct ReadAhead {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

/// Reads `batches` on a thread of its own, at most `limit` bytes of batches (or one
/// batch) ahead of the returned iterator.
fn read_ahead(batches: Batches, limit: usize) -> ReadAhead {
    let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    let writer = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("openlayer-read".into())
        .spawn(move || {
            /// Marks the reader stopped however it stops, a panic included.
            struct Done(Arc<(Mutex<Queue>, Condvar)>);
            impl Drop for Done {
                fn drop(&mut self) {
                    let (queue, cv) = &*self.0;
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    if std::thread::panicking() {
                        q.items.push_back((
                            Err(CliError::Failed("reading the file crashed".into())),
                            0,
                        ));
                    }
                    q.done = true;
                    cv.notify_all();
                }
            }
            let done = Done(writer);
            let (queue, cv) = &*done.0;
            for item in batches {
                let size = item.as_ref().map_or(0, RecordBatch::get_array_memory_size);
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                while !q.closed && q.bytes > 0 && q.bytes + size > limit {
                    q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                if q.closed {
                    return;
                }
                let failed = item.is_err();
                q.items.push_back((item, size));
                q.bytes += size;
                cv.notify_all();
                if failed {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        let mut q = shared.0.lock().unwrap_or_else(|e| e.into_inner());
        q.items.push_back((
            Err(CliError::Failed(format!("cannot start the reader: {e}"))),
            0,
        ));
        q.done = true;
    }
    ReadAhead { shared }
}

impl Iterator for ReadAhead {
    type Item = Result<RecordBatch, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (queue, cv) = &*self.shared;
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((item, size)) = q.items.pop_front() {
                q.bytes -= size;
                cv.notify_all();
                return Some(item);
            }
            if q.done {
                return None;
            }
            q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let (queue, cv) = &*self.shared;
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
        cv.notify_all();
    }
}

/// The batches to upload: those read ahead, when they were read with the types the check
/// found, else the file read again by `reread`, after the first reader is stopped
/// (dropping it ends its thread and frees what it read ahead: two readers never hold
/// their bound at once).
fn source(
    prefetched: Option<Prefetched>,
    scanned: Option<&CsvSchema>,
    reread: impl FnOnce() -> Result<Batches, CliError>,
) -> Result<Batches, CliError> {
    match prefetched {
        Some(p) if p.csv.is_none() || p.csv.as_ref() == scanned => Ok(Box::new(p.batches)),
        stale => {
            drop(stale);
            Ok(Box::new(read_ahead(reread()?, READ_AHEAD_BYTES)))
        }
    }
}

/// The table's batches, after the rows sent by an earlier run.
struct Feed {
    inner: Batches,
    pending: Option<RecordBatch>,
    skip: u64,
    /// A read error, kept for the message (the client only hears that the input failed).
    error: Option<CliError>,
}

impl Feed {
    fn next_batch(&mut self) -> Option<Result<RecordBatch, CliError>> {
        loop {
            let batch = match self.pending.take() {
                Some(b) => b,
                None => match self.inner.next()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                },
            };
            let rows = batch.num_rows() as u64;
            if self.skip >= rows {
                self.skip -= rows;
                continue;
            }
            let skip = std::mem::take(&mut self.skip) as usize;
            return Some(Ok(batch.slice(skip, batch.num_rows() - skip)));
        }
    }

    fn has_more(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match self.next_batch() {
            Some(Ok(b)) => {
                self.pending = Some(b);
                true
            }
            // Let the next segment report it.
            Some(Err(e)) => {
                self.error = Some(e);
                true
            }
            None => false,
        }
    }
}

/// At most `left` rows of the feed.
struct Take<'a> {
    feed: &'a mut Feed,
    left: u64,
    bar: &'a Progress,
}

impl Iterator for Take<'_> {
    type Item = Result<RecordBatch, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        if self.feed.error.is_some() {
            self.left = 0;
            return Some(Err(Error::InvalidInput(
                "the input could not be read".into(),
            )));
        }
        let batch = match self.feed.next_batch()? {
            Ok(b) => b,
            Err(e) => {
                self.feed.error = Some(e);
                self.left = 0;
                return Some(Err(Error::InvalidInput(
                    "the input could not be read".into(),
                )));
            }
        };
        let rows = batch.num_rows() as u64;
        let batch = if rows > self.left {
            let n = self.left as usize;
            self.feed.pending = Some(batch.slice(n, batch.num_rows() - n));
            batch.slice(0, n)
        } else {
            batch
        };
        self.left -= batch.num_rows() as u64;
        self.bar.add(batch.num_rows() as u64, 0);
        Some(Ok(batch))
    }
}

#[cfg(test)]
mod tests;
