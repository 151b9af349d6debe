//! CSV tables read straight into typed Arrow arrays: no JSON value per cell.
//!
//! The cells are typed as [`typed_cell`](crate::input::typed_cell) types them, and the
//! columns are typed as the library's `RowSchema` types JSON rows (the narrowest of
//! null, `Boolean`, `Int64`, `Float64` and `Utf8` that holds every cell seen; a column
//! whose cells mix kinds is text, a number there written as JSON writes it), in the order
//! of a JSON object of the row's columns; so a CSV file is uploaded exactly as its rows
//! read as JSON would be. [`scan`] checks the rows and infers the types, [`batches`]
//! reads the file again into batches of those types.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, NullArray, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Number, Value};

use crate::CliError;
use crate::table::{BATCH_ROWS, Checks, Problems};

/// A CSV cell, typed; see [`typed`].
#[derive(Debug, Clone, PartialEq)]
pub enum Typed<'a> {
    Null,
    Bool(bool),
    /// An integer written plainly (no sign but `-`, no leading zero, at most 18 digits).
    Int(i64),
    /// A decimal written plainly (no exponent, at most 15 digits), which JSON reads as
    /// this float exactly.
    Float(f64),
    /// Any other JSON number.
    Number(Number),
    /// A JSON array or object.
    Json(Value),
    Text(&'a str),
}

impl Typed<'_> {
    /// The cell as a JSON value.
    pub fn into_value(self) -> Value {
        match self {
            Typed::Null => Value::Null,
            Typed::Bool(b) => Value::Bool(b),
            Typed::Int(i) => Value::Number(i.into()),
            Typed::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Typed::Number(n) => Value::Number(n),
            Typed::Json(v) => v,
            Typed::Text(s) => Value::String(s.to_string()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Typed::Null => Kind::Null,
            Typed::Bool(_) => Kind::Bool,
            Typed::Int(_) => Kind::Int,
            Typed::Number(n) if n.is_i64() => Kind::Int,
            Typed::Number(_) | Typed::Float(_) => Kind::Float,
            Typed::Json(_) | Typed::Text(_) => Kind::Text,
        }
    }
}

/// Types a CSV cell: empty is null, `true`/`false` (also capitalised or upper case) are
/// booleans, JSON numbers are numbers, JSON arrays and objects are those; everything
/// else is text.
pub fn typed(cell: &str) -> Typed<'_> {
    let bytes = cell.as_bytes();
    let Some(&first) = bytes.first() else {
        return Typed::Null;
    };
    match cell {
        "true" | "True" | "TRUE" => return Typed::Bool(true),
        "false" | "False" | "FALSE" => return Typed::Bool(false),
        _ => {}
    }
    if first == b'-' || first.is_ascii_digit() {
        if let Some(i) = plain_int(bytes) {
            return Typed::Int(i);
        }
        if let Some(f) = plain_decimal(bytes) {
            return Typed::Float(f);
        }
        if let Ok(n) = serde_json::from_str::<Number>(cell) {
            return Typed::Number(n);
        }
    }
    if (first == b'[' || first == b'{')
        && let Ok(v @ (Value::Array(_) | Value::Object(_))) = serde_json::from_str::<Value>(cell)
    {
        return Typed::Json(v);
    }
    Typed::Text(cell)
}

/// An integer as JSON reads it (`-0` excepted, a float there), when it is written
/// plainly and surely fits an `i64`.
fn plain_int(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty()
        || digits.len() > 18
        || (digits[0] == b'0' && (digits.len() > 1 || negative))
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let value = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(if negative { -value } else { value })
}

/// A decimal as JSON reads it, when it is written plainly (`-`, digits without a
/// leading zero, `.`, digits; no exponent) with at most 15 digits: then the digits and
/// the power of ten are exact doubles and one division rounds correctly, as in JSON's
/// own fast path, so the float is the one a JSON parser gives.
fn plain_decimal(bytes: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, rest) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let dot = rest.iter().position(|&b| b == b'.')?;
    let (whole, fraction) = (&rest[..dot], &rest[dot + 1..]);
    if whole.is_empty()
        || fraction.is_empty()
        || whole.len() + fraction.len() > 15
        || (whole[0] == b'0' && whole.len() > 1)
        || !whole.iter().chain(fraction).all(u8::is_ascii_digit)
    {
        return None;
    }
    let digits = whole
        .iter()
        .chain(fraction)
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let value = digits as f64 / POW10[fraction.len()];
    Some(if negative { -value } else { value })
}

/// The type of a column, widened as cells are seen (as the library's `RowSchema` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Text,
}

impl Kind {
    fn widen(self, other: Kind) -> Kind {
        use Kind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Null, k) | (k, Null) => k,
            (Int, Float) | (Float, Int) => Float,
            _ => Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Null => DataType::Null,
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Text => DataType::Utf8,
        }
    }
}

/// One uploaded column.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    /// Where its cell is in a record (the last column of that name, as in a JSON object).
    cell: usize,
    kind: Kind,
    /// Kept as written (an inference id): text even when empty.
    verbatim: bool,
    /// A blank cell is null rather than "" (the inference id column of a publish or a
    /// stream, which rows may leave out: a row without one gets a generated id).
    blank_is_null: bool,
}

/// The columns of a CSV file and their types, from [`scan`].
#[derive(Debug, Clone, PartialEq)]
pub struct CsvSchema {
    /// Empty until a good row is seen.
    columns: Vec<Column>,
    header: csv::StringRecord,
    verbatim: Option<String>,
    /// The verbatim column is optional: its blank cells are null.
    blank_is_null: bool,
}

impl CsvSchema {
    fn observe(&mut self, record: &csv::StringRecord) {
        if self.columns.is_empty() {
            // The order of a JSON object of the row (which depends on serde_json's
            // features), each name once, with the last cell of that name.
            let names: Map<String, Value> = self
                .header
                .iter()
                .map(|h| (h.to_string(), Value::Null))
                .collect();
            self.columns = names
                .keys()
                .map(|name| Column {
                    name: name.clone(),
                    cell: last_index(&self.header, name).expect("a header name"),
                    kind: Kind::Null,
                    verbatim: self.verbatim.as_deref() == Some(name),
                    blank_is_null: self.blank_is_null && self.verbatim.as_deref() == Some(name),
                })
                .collect();
            for c in &mut self.columns {
                if c.verbatim {
                    c.kind = Kind::Text;
                }
            }
        }
        for c in &mut self.columns {
            if c.verbatim || c.kind == Kind::Text {
                continue;
            }
            c.kind = c.kind.widen(typed(&record[c.cell]).kind());
        }
    }

    fn schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.data_type(), true))
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// Where the last column named `name` is.
fn last_index(header: &csv::StringRecord, name: &str) -> Option<usize> {
    header
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == name)
        .map(|(i, _)| i)
        .last()
}

/// A CSV file's records, each checked.
pub struct Records {
    reader: csv::Reader<File>,
    header: csv::StringRecord,
    record: csv::StringRecord,
    id_column: Option<usize>,
    id_name: String,
    /// The column kept as written: the inference id column, else the text column.
    verbatim: Option<String>,
    /// The verbatim column is the text column (optional), not the id column (required).
    blank_is_null: bool,
}

impl Records {
    pub fn open(path: &Path, checks: &Checks) -> Result<Records, CliError> {
        let file = File::open(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| CliError::Usage(format!("{}: bad CSV header: {e}", path.display())))?
            .clone();
        let id_name = checks.id_column.clone().unwrap_or_default();
        let id_column = checks
            .id_column
            .as_ref()
            .and_then(|id| last_index(&header, id));
        Ok(Records {
            reader,
            header,
            record: csv::StringRecord::new(),
            id_column,
            id_name,
            verbatim: checks
                .id_column
                .clone()
                .or_else(|| checks.text_column.clone()),
            blank_is_null: checks.id_column.is_none() && checks.text_column.is_some(),
        })
    }

    pub fn has_column(&self, column: &str) -> bool {
        self.header.iter().any(|h| h == column)
    }

    /// Reads the next record into `self.record`: `None` at the end, else its line, or
    /// its line and why it is bad.
    fn next(&mut self) -> Option<Result<u64, (u64, String)>> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => return None,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                return Some(Err((line, format!("bad CSV: {e}"))));
            }
            Ok(true) => {}
        }
        let line = self.record.position().map_or(0, |p| p.line());
        if self.record.len() != self.header.len() {
            let why = format!(
                "has {} fields, the header has {}",
                self.record.len(),
                self.header.len()
            );
            return Some(Err((line, why)));
        }
        if let Some(i) = self.id_column
            && self.record[i].trim().is_empty()
        {
            let why = format!("no inference id in `{}`", self.id_name);
            return Some(Err((line, why)));
        }
        Some(Ok(line))
    }
}

/// First pass: counts the rows (bad ones too, in `problems`) and types the columns.
pub fn scan(records: Records, problems: &mut Problems) -> (u64, CsvSchema) {
    scan_some(records, problems, u64::MAX)
}

/// The types of the first `rows` rows: a guess of the file's, to read the file ahead
/// while it is scanned (the batches are used only if the scan finds these types).
pub fn guess(records: Records, rows: u64) -> CsvSchema {
    let mut problems = Problems::new(Path::new(""));
    scan_some(records, &mut problems, rows).1
}

fn scan_some(mut records: Records, problems: &mut Problems, limit: u64) -> (u64, CsvSchema) {
    let mut schema = CsvSchema {
        columns: Vec::new(),
        header: records.header.clone(),
        verbatim: records.verbatim.clone(),
        blank_is_null: records.blank_is_null,
    };
    let mut rows = 0u64;
    while rows < limit
        && let Some(next) = records.next()
    {
        rows += 1;
        match next {
            Ok(_) => schema.observe(&records.record),
            Err((line, why)) => problems.add(line.to_string(), why),
        }
    }
    (rows, schema)
}

/// A column being built.
enum Builder {
    Null(usize),
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
}

/// Second pass: the rows as record batches of at most [`BATCH_ROWS`] rows, typed as
/// the scan found.
pub fn batches(
    mut records: Records,
    schema: CsvSchema,
    path: PathBuf,
) -> impl Iterator<Item = Result<RecordBatch, CliError>> + Send {
    let arrow_schema = schema.schema();
    let mut seen = 0u64;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut builders: Vec<Builder> = schema
            .columns
            .iter()
            .map(|c| match c.kind {
                Kind::Null => Builder::Null(0),
                Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(BATCH_ROWS)),
                Kind::Int => Builder::Int(Int64Builder::with_capacity(BATCH_ROWS)),
                Kind::Float => Builder::Float(Float64Builder::with_capacity(BATCH_ROWS)),
                Kind::Text => Builder::Text(StringBuilder::with_capacity(BATCH_ROWS, 1 << 16)),
            })
            .collect();
        let changed = |line: u64, why: &str| {
            Some(Err(CliError::Failed(format!(
                "{}:{line}: {why} (the file changed while it was read)",
                path.display()
            ))))
        };
        let mut n = 0usize;
        while n < BATCH_ROWS {
            let line = match records.next() {
                None => {
                    done = true;
                    break;
                }
                Some(Ok(line)) => line,
                Some(Err((line, why))) => {
                    done = true;
                    return changed(line, &why);
                }
            };
            if schema.columns.is_empty() {
                return changed(line, "a row the first reading did not see");
            }
            for (c, b) in schema.columns.iter().zip(&mut builders) {
                let cell = &records.record[c.cell];
                if let Err(why) = append(b, c, cell) {
                    done = true;
                    return changed(line, &why);
                }
            }
            n += 1;
        }
        if n == 0 {
            return None;
        }
        seen += n as u64;
        let columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Null(len) => Arc::new(NullArray::new(len)),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                    Builder::Int(mut b) => Arc::new(b.finish()),
                    Builder::Float(mut b) => Arc::new(b.finish()),
                    Builder::Text(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Some(
            RecordBatch::try_new_with_options(arrow_schema.clone(), columns, &options).map_err(
                |e| {
                    CliError::Failed(format!(
                        "{}: cannot build the batch of rows {}..: {e}",
                        path.display(),
                        seen - n as u64 + 1
                    ))
                },
            ),
        )
    })
}

/// Appends a cell to its column; why not, for a cell the scan did not see.
fn append(b: &mut Builder, c: &Column, cell: &str) -> Result<(), String> {
    let unexpected = |t: &Typed| {
        format!(
            "`{}` holds {}, but the column is {:?}",
            c.name,
            json_kind(t),
            c.kind.data_type()
        )
    };
    match b {
        Builder::Text(b) if c.verbatim => {
            if c.blank_is_null && cell.is_empty() {
                b.append_null();
            } else {
                b.append_value(cell);
            }
        }
        Builder::Text(b) => match typed(cell) {
            Typed::Null => b.append_null(),
            Typed::Text(s) => b.append_value(s),
            Typed::Int(i) => {
                let _ = write!(b, "{i}");
                b.append_value("");
            }
            Typed::Bool(x) => b.append_value(if x { "true" } else { "false" }),
            Typed::Number(n) => {
                let _ = write!(b, "{n}");
                b.append_value("");
            }
            Typed::Float(f) => match Number::from_f64(f) {
                Some(n) => {
                    let _ = write!(b, "{n}");
                    b.append_value("");
                }
                None => b.append_null(),
            },
            Typed::Json(v) => {
                let _ = write!(b, "{v}");
                b.append_value("");
            }
        },
        Builder::Int(b) => match typed(cell) {
            Typed::Null => b.append_null(),
            Typed::Int(i) => b.append_value(i),
            Typed::Number(n) if n.is_i64() => b.append_option(n.as_i64()),
            t => return Err(unexpected(&t)),
        },
        Builder::Float(b) => match typed(cell) {
            Typed::Null => b.append_null(),
            Typed::Int(i) => b.append_value(i as f64),
            Typed::Float(f) => b.append_value(f),
            Typed::Number(n) => b.append_option(n.as_f64()),
            t => return Err(unexpected(&t)),
        },
        Builder::Bool(b) => match typed(cell) {
            Typed::Null => b.append_null(),
            Typed::Bool(x) => b.append_value(x),
            t => return Err(unexpected(&t)),
        },
        Builder::Null(len) => match typed(cell) {
            Typed::Null => *len += 1,
            t => return Err(unexpected(&t)),
        },
    }
    Ok(())
}

fn json_kind(t: &Typed) -> &'static str {
    match t {
        Typed::Null => "null",
        Typed::Bool(_) => "a boolean",
        Typed::Int(_) | Typed::Float(_) | Typed::Number(_) => "a number",
        Typed::Json(Value::Array(_)) => "an array",
        Typed::Json(_) => "an object",
        Typed::Text(_) => "a string",
    }
}

#[cfg(test)]
mod tests;
