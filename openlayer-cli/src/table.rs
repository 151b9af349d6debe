//! Tables read in batches: `.parquet` (the `parquet` crate's Arrow reader), `.arrow` /
//! `.ipc` (Arrow IPC, file or stream format), `.csv` (with a header) and `.jsonl`.
//!
//! A file is read twice and never held whole: [`scan`] checks every row (nothing is sent
//! when any row is bad) and counts them, inferring the column types of a CSV or JSONL
//! file; [`batches`] then reads it again as record batches of bounded size.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::{FileReader, StreamReader};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use openlayer_trace::RowSchema;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use crate::CliError;
use crate::csv_table::{self, CsvSchema};

/// Rows per record batch read.
pub const BATCH_ROWS: usize = 16_384;

/// The most problems printed.
const SHOWN_PROBLEMS: usize = 20;

/// The format of a table, from its file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parquet,
    Ipc,
    Csv,
    Jsonl,
}

impl Kind {
    pub fn of(path: &Path) -> Result<Kind, CliError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("parquet" | "pq") => Ok(Kind::Parquet),
            Some("arrow" | "ipc" | "feather" | "arrows") => Ok(Kind::Ipc),
            Some("csv") => Ok(Kind::Csv),
            Some("jsonl" | "ndjson") => Ok(Kind::Jsonl),
            _ => Err(CliError::Usage(format!(
                "{}: expected a .parquet, .arrow/.ipc, .csv or .jsonl file",
                path.display()
            ))),
        }
    }
}

/// What every row must hold.
#[derive(Debug, Default)]
pub struct Checks {
    /// The inference id column: present in every row, not null, not empty; kept as text.
    pub id_column: Option<String>,
    /// A column kept as text in CSV and JSONL files, though its cells look like numbers
    /// (the inference id column of a publish, which rows may leave out).
    pub text_column: Option<String>,
    /// Columns that must be present, each with the config key naming it.
    pub required: Vec<(String, String)>,
}

/// The result of the first pass.
#[derive(Debug)]
pub struct Scan {
    pub kind: Kind,
    /// The data rows, bad ones included.
    pub rows: u64,
    /// The column types of a JSONL file.
    pub schema: Option<RowSchema>,
    /// The column types of a CSV file.
    pub csv: Option<CsvSchema>,
    /// The bad rows.
    pub problems: Problems,
    /// For a JSONL file whose rows do not all have the same keys, the first that differs
    /// from the first row's: a bulk merge would set the keys a row lacks to null.
    pub uneven_keys: Option<String>,
}

/// Problems found in the rows, the first few kept for the message.
#[derive(Debug)]
pub struct Problems {
    path: std::path::PathBuf,
    pub count: u64,
    shown: Vec<String>,
}

impl Problems {
    pub(crate) fn new(path: &Path) -> Problems {
        Problems {
            path: path.to_path_buf(),
            count: 0,
            shown: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, at: String, why: impl std::fmt::Display) {
        self.count += 1;
        if self.shown.len() < SHOWN_PROBLEMS {
            self.shown
                .push(format!("{}:{at}: {why}", self.path.display()));
        }
    }

    /// Fails, naming the first bad rows, when there is any.
    pub fn refuse(&self) -> Result<(), CliError> {
        if self.count == 0 {
            return Ok(());
        }
        for p in &self.shown {
            eprintln!("openlayer: {p}");
        }
        if self.count > self.shown.len() as u64 {
            eprintln!(
                "openlayer: ... and {} more",
                self.count - self.shown.len() as u64
            );
        }
        Err(CliError::Failed(format!(
            "{} bad row(s) in {}; nothing was sent",
            self.count,
            self.path.display()
        )))
    }
}

fn open(path: &Path) -> Result<File, CliError> {
    File::open(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

fn failed(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{}: {e}", path.display()))
}

/// First pass: checks every row and counts them. Columns missing from a whole file
/// are a usage error; bad rows are counted in [`Scan::problems`].
pub fn scan(path: &Path, checks: &Checks) -> Result<Scan, CliError> {
    let kind = Kind::of(path)?;
    let mut problems = Problems::new(path);
    let mut rows = 0u64;
    let mut uneven_keys = None;
    let mut csv = None;
    let schema = match kind {
        Kind::Parquet | Kind::Ipc => {
            // Only the id column has rows to check: a Parquet scan reads no other.
            let (schema, reader) = arrow_reader(path, kind, Some(checks.id_column.as_deref()))?;
            check_columns(path, checks, |c| schema.index_of(c).is_ok())?;
            if let Some(id) = &checks.id_column {
                let t = schema.field_with_name(id).map(|f| f.data_type().clone());
                if !t.as_ref().is_ok_and(id_type) {
                    return Err(CliError::Usage(format!(
                        "{}: the inference id column `{id}` must hold strings or integers, not {}",
                        path.display(),
                        t.map_or("nothing".into(), |t| t.to_string())
                    )));
                }
            }
            for batch in reader {
                let batch = batch.map_err(|e| failed(path, e))?;
                if let Some(id) = &checks.id_column {
                    let ids = batch
                        .column_by_name(id)
                        .ok_or_else(|| failed(path, format!("no column `{id}` in a batch")))?;
                    check_ids(ids.as_ref(), rows, id, &mut problems);
                }
                rows += batch.num_rows() as u64;
            }
            None
        }
        Kind::Csv => {
            let records = csv_table::Records::open(path, checks)?;
            check_columns(path, checks, |c| records.has_column(c))?;
            let (n, schema) = csv_table::scan(records, &mut problems);
            rows = n;
            csv = Some(schema);
            None
        }
        Kind::Jsonl => {
            let mut schema = match checks.id_column.as_ref().or(checks.text_column.as_ref()) {
                Some(id) => RowSchema::new().text_column(id.clone()),
                None => RowSchema::new(),
            };
            // Each row is checked for the columns named.
            let mut rows_of = TextRows::open(path, checks)?;
            let mut first_keys: Option<Vec<String>> = None;
            while let Some(row) = rows_of.next_row()? {
                match row {
                    Ok((line, row)) => {
                        schema.observe(&row);
                        rows += 1;
                        if uneven_keys.is_none() {
                            let mut keys: Vec<&String> = row.keys().collect();
                            keys.sort_unstable();
                            match &first_keys {
                                None => {
                                    first_keys = Some(keys.into_iter().cloned().collect());
                                }
                                Some(first) if !first.iter().eq(keys.iter().copied()) => {
                                    uneven_keys = Some(format!(
                                        "line {line} has the keys {keys:?}, the first row {first:?}"
                                    ));
                                }
                                Some(_) => {}
                            }
                        }
                    }
                    Err((line, why)) => {
                        problems.add(line.to_string(), why);
                        rows += 1;
                    }
                }
            }
            Some(schema)
        }
    };
    Ok(Scan {
        kind,
        rows,
        schema,
        csv,
        problems,
        uneven_keys,
    })
}

/// For a CSV file, the columns named must be in the header (JSONL rows are checked one
/// by one).
fn check_columns(path: &Path, checks: &Checks, has: impl Fn(&str) -> bool) -> Result<(), CliError> {
    let named = checks
        .id_column
        .iter()
        .map(|c| (c.as_str(), "the inference id column"))
        .chain(
            checks
                .required
                .iter()
                .map(|(k, c)| (c.as_str(), k.as_str())),
        );
    for (column, what) in named {
        if !has(column) {
            return Err(CliError::Usage(format!(
                "{} has no column `{column}` ({what})",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The types an inference id column may have (as the library converts them): strings,
/// integers, and dictionaries of strings (a categorical column).
fn id_type(t: &DataType) -> bool {
    let text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    match t {
        DataType::Dictionary(_, v) => text(v),
        t => text(t) || t.is_integer(),
    }
}

fn check_ids(ids: &dyn Array, first: u64, name: &str, problems: &mut Problems) {
    let row = |i: usize| format!("row {}", first + i as u64 + 1);
    // A dictionary's row holds the value its key points to.
    let (values, keys): (&dyn Array, Option<Vec<usize>>) = match ids.as_any_dictionary_opt() {
        Some(d) => (d.values().as_ref(), Some(d.normalized_keys())),
        None => (ids, None),
    };
    for i in 0..ids.len() {
        let at = keys.as_ref().map_or(i, |k| k[i]);
        if ids.is_null(i) || values.is_null(at) {
            problems.add(row(i), format!("no inference id (null) in `{name}`"));
            continue;
        }
        let empty = match values.data_type() {
            DataType::Utf8 => values.as_string::<i32>().value(at).trim().is_empty(),
            DataType::LargeUtf8 => values.as_string::<i64>().value(at).trim().is_empty(),
            DataType::Utf8View => values.as_string_view().value(at).trim().is_empty(),
            _ => false,
        };
        if empty {
            problems.add(row(i), format!("an empty inference id in `{name}`"));
        }
    }
}

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// A reader of an Arrow IPC or Parquet file, and the file's schema. `only`: a Parquet
/// file is read for that one column (`Some(Some(column))`), or for none, its batches then
/// holding row counts only (`Some(None)`).
fn arrow_reader(
    path: &Path,
    kind: Kind,
    only: Option<Option<&str>>,
) -> Result<(SchemaRef, BatchIter), CliError> {
    let file = open(path)?;
    let bad =
        |e: &dyn std::fmt::Display| failed(path, format!("not a readable {kind:?} file: {e}"));
    if kind == Kind::Parquet {
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
        let schema = builder.schema().clone();
        if let Some(only) = only {
            let roots = only.and_then(|c| schema.index_of(c).ok());
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| bad(&e))?;
        return Ok((schema, Box::new(reader)));
    }
    let mut file = file;
    let mut magic = [0u8; 6];
    let is_file = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    file.seek(SeekFrom::Start(0)).map_err(|e| bad(&e))?;
    if is_file {
        let reader = FileReader::try_new_buffered(file, None).map_err(|e| bad(&e))?;
        Ok((reader.schema(), Box::new(reader)))
    } else {
        let reader = StreamReader::try_new_buffered(file, None).map_err(|e| bad(&e))?;
        Ok((reader.schema(), Box::new(reader)))
    }
}

/// Second pass: the rows as record batches of at most [`BATCH_ROWS`] rows (the batches
/// of an Arrow IPC file as they were written).
pub fn batches(
    path: &Path,
    scan: &Scan,
    checks: &Checks,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, CliError>> + Send>, CliError> {
    match (&scan.schema, scan.kind) {
        (_, Kind::Csv) => {
            let records = csv_table::Records::open(path, checks)?;
            let schema = scan.csv.clone().expect("a CSV scan");
            Ok(Box::new(csv_table::batches(
                records,
                schema,
                path.to_path_buf(),
            )))
        }
        (Some(schema), Kind::Jsonl) => {
            let mut rows_of = TextRows::open(path, checks)?;
            let schema = schema.clone();
            let mut seen = 0usize;
            let path = path.to_path_buf();
            Ok(Box::new(std::iter::from_fn(move || {
                let mut chunk: Vec<Map<String, Value>> = Vec::with_capacity(1024);
                while chunk.len() < BATCH_ROWS {
                    match rows_of.next_row() {
                        Ok(Some(Ok((_, row)))) => chunk.push(row),
                        Ok(Some(Err((line, why)))) => {
                            return Some(Err(CliError::Failed(format!(
                                "{}:{line}: {why} (the file changed while it was read)",
                                path.display()
                            ))));
                        }
                        Ok(None) => break,
                        Err(e) => return Some(Err(e)),
                    }
                }
                if chunk.is_empty() {
                    return None;
                }
                let batch = schema
                    .to_record_batch(chunk.iter(), seen)
                    .map_err(|e| failed(&path, e));
                seen += chunk.len();
                Some(batch)
            })))
        }
        _ => arrow_batches(path, scan.kind),
    }
}

/// The batches of a Parquet or Arrow IPC file, as [`batches`] gives them (which needs no
/// scan for these kinds: they are typed).
pub fn arrow_batches(
    path: &Path,
    kind: Kind,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, CliError>> + Send>, CliError> {
    let (_, reader) = arrow_reader(path, kind, None)?;
    let path = path.to_path_buf();
    Ok(Box::new(
        reader.map(move |b| b.map_err(|e| failed(&path, e))),
    ))
}

/// Rows of a JSONL file as JSON objects, with the line each came from.
struct TextRows {
    lines: std::io::Lines<BufReader<File>>,
    line: u64,
    id_column: Option<String>,
    required: Vec<(String, String)>,
}

type Row = Result<(u64, Map<String, Value>), (u64, String)>;

impl TextRows {
    fn open(path: &Path, checks: &Checks) -> Result<TextRows, CliError> {
        let file = BufReader::with_capacity(1 << 16, open(path)?);
        Ok(TextRows {
            lines: file.lines(),
            line: 0,
            id_column: checks.id_column.clone(),
            required: checks.required.clone(),
        })
    }

    /// The next row, or why it is bad; `Err` only for a file that cannot be read.
    fn next_row(&mut self) -> Result<Option<Row>, CliError> {
        let text = loop {
            match self.lines.next() {
                None => return Ok(None),
                // Not UTF-8: a bad row (the line was read past), not an unreadable file.
                Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.line += 1;
                    return Ok(Some(Err((
                        self.line,
                        "not valid UTF-8 (save the file as UTF-8)".into(),
                    ))));
                }
                Some(Err(e)) => {
                    return Err(CliError::Failed(format!("line {}: {e}", self.line + 1)));
                }
                Some(Ok(mut text)) => {
                    self.line += 1;
                    if self.line == 1 && text.starts_with('\u{feff}') {
                        // A byte order mark is not part of the first row.
                        text.drain(..'\u{feff}'.len_utf8());
                    }
                    if !text.trim().is_empty() {
                        break text;
                    }
                }
            }
        };
        let row = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(row)) => (self.line, row),
            Ok(_) => return Ok(Some(Err((self.line, "not a JSON object".into())))),
            Err(e) => return Ok(Some(Err((self.line, format!("not JSON: {e}"))))),
        };
        Ok(Some(self.check(row)))
    }

    fn check(&self, (line, row): (u64, Map<String, Value>)) -> Row {
        if let Some(id) = &self.id_column {
            let ok = match row.get(id) {
                Some(Value::String(s)) => !s.trim().is_empty(),
                Some(Value::Number(_)) => true,
                _ => false,
            };
            if !ok {
                return Err((line, format!("no inference id in `{id}`")));
            }
        }
        for (key, column) in &self.required {
            if !row.contains_key(column) {
                return Err((line, format!("no column `{column}` (named by `{key}`)")));
            }
        }
        Ok((line, row))
    }
}
