//! Input rows from a CSV file (with a header) or a JSONL file (one JSON object a line),
//! and a writer of rows back in the same format, for the rows that failed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::CliError;

/// The format of an input file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format, CliError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
            _ => Err(CliError::Usage(format!(
                "{}: expected a .csv or .jsonl file",
                path.display()
            ))),
        }
    }
}

/// The original text of a row, to write it back unchanged.
#[derive(Debug, Clone)]
pub enum Raw {
    Csv(csv::StringRecord),
    Json(String),
    /// A CSV record that is not UTF-8 (a file saved in another encoding).
    CsvBytes(csv::ByteRecord),
    /// A JSONL line that is not UTF-8.
    JsonBytes(Vec<u8>),
}

/// One input row.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it was: the line number (JSONL) or the record's line (CSV), 1-based.
    pub line: u64,
    pub row: Map<String, Value>,
    pub raw: Raw,
}

/// A whole input file.
#[derive(Debug)]
pub struct Input {
    pub format: Format,
    pub header: Option<csv::StringRecord>,
    pub records: Vec<Record>,
    /// Lines that could not be read, with why; also kept raw for the failures file.
    pub bad: Vec<(Record, String)>,
}

/// Reads `path`. CSV cells are typed: empty is null, JSON numbers, `true`/`false`, and
/// JSON arrays or objects become those values; everything else is a string. Columns in
/// `keep_text` are always strings (inference ids such as `007` must not become 7).
pub fn read(path: &Path, keep_text: &[&str]) -> Result<Input, CliError> {
    let format = Format::of(path)?;
    let file = File::open(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    match format {
        Format::Jsonl => read_jsonl(BufReader::new(file), path),
        Format::Csv => read_csv(file, path, keep_text),
    }
}

fn read_jsonl(mut reader: impl BufRead, path: &Path) -> Result<Input, CliError> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut line_no = 0u64;
    loop {
        let mut bytes = Vec::new();
        let n = reader
            .read_until(b'\n', &mut bytes)
            .map_err(|e| CliError::Failed(format!("{}:{}: {e}", path.display(), line_no + 1)))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        // A line that is not UTF-8 is a bad row (kept as it was for the failures file),
        // not the end of the run.
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                bad.push((
                    Record {
                        line: line_no,
                        row: Map::new(),
                        raw: Raw::JsonBytes(e.into_bytes()),
                    },
                    "not valid UTF-8 (save the file as UTF-8)".to_string(),
                ));
                continue;
            }
        };
        if line_no == 1 && text.starts_with('\u{feff}') {
            // A byte order mark is not part of the first row (nor of the failures file).
            text.drain(..'\u{feff}'.len_utf8());
        }
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(row)) => records.push(Record {
                line: line_no,
                row,
                raw: Raw::Json(text),
            }),
            Ok(_) => bad.push((
                Record {
                    line: line_no,
                    row: Map::new(),
                    raw: Raw::Json(text),
                },
                "not a JSON object".to_string(),
            )),
            Err(e) => bad.push((
                Record {
                    line: line_no,
                    row: Map::new(),
                    raw: Raw::Json(text),
                },
                format!("not JSON: {e}"),
            )),
        }
    }
    Ok(Input {
        format: Format::Jsonl,
        header: None,
        records,
        bad,
    })
}

fn read_csv(file: File, path: &Path, keep_text: &[&str]) -> Result<Input, CliError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let header = reader
        .headers()
        .map_err(|e| CliError::Usage(format!("{}: bad CSV header: {e}", path.display())))?
        .clone();
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for result in reader.byte_records() {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                return Err(CliError::Failed(format!(
                    "{}:{line}: bad CSV: {e}",
                    path.display()
                )));
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        // A record that is not UTF-8 is a bad row (kept as it was for the failures
        // file), not the end of the run.
        let record = match csv::StringRecord::from_byte_record(record) {
            Ok(r) => r,
            Err(e) => {
                bad.push((
                    Record {
                        line,
                        row: Map::new(),
                        raw: Raw::CsvBytes(e.into_byte_record()),
                    },
                    "not valid UTF-8 (save the file as UTF-8)".to_string(),
                ));
                continue;
            }
        };
        if record.len() != header.len() {
            let why = format!(
                "has {} fields, the header has {}",
                record.len(),
                header.len()
            );
            bad.push((
                Record {
                    line,
                    row: Map::new(),
                    raw: Raw::Csv(record),
                },
                why,
            ));
            continue;
        }
        let mut row = Map::new();
        for (name, cell) in header.iter().zip(record.iter()) {
            let value = if keep_text.contains(&name) {
                // A blank id cell is no id (null), not the id "": rows without one get a
                // generated id; an update reports it as missing.
                if cell.is_empty() {
                    Value::Null
                } else {
                    Value::String(cell.to_string())
                }
            } else {
                typed_cell(cell)
            };
            row.insert(name.to_string(), value);
        }
        records.push(Record {
            line,
            row,
            raw: Raw::Csv(record),
        });
    }
    Ok(Input {
        format: Format::Csv,
        header: Some(header),
        records,
        bad,
    })
}

/// A CSV cell as a JSON value; see [`read`].
pub fn typed_cell(cell: &str) -> Value {
    crate::csv_table::typed(cell).into_value()
}

/// `rows.csv` → `rows.failed.csv`.
pub fn failed_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let name = match input.extension() {
        Some(ext) => format!("{stem}.failed.{}", ext.to_string_lossy()),
        None => format!("{stem}.failed"),
    };
    input.with_file_name(name)
}

/// Creates (or truncates) `path` for writing, readable and writable by its owner only
/// (mode 0600 on Unix): the files the CLI writes hold rows or progress about them.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // The mode above applies to a new file only: one left by an earlier run keeps its own.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Writes `records` to `path` in `format` (with `header` for CSV), replacing the file.
pub fn write_failed<'a>(
    path: &Path,
    format: Format,
    header: Option<&csv::StringRecord>,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<(), CliError> {
    let fail = |e: &dyn std::fmt::Display| {
        CliError::Failed(format!("cannot write {}: {e}", path.display()))
    };
    let file = create_private(path).map_err(|e| fail(&e))?;
    match format {
        Format::Jsonl => {
            let mut out = BufWriter::new(file);
            for r in records {
                match &r.raw {
                    Raw::Json(text) => writeln!(out, "{text}").map_err(|e| fail(&e))?,
                    Raw::JsonBytes(bytes) => {
                        out.write_all(bytes).map_err(|e| fail(&e))?;
                        out.write_all(b"\n").map_err(|e| fail(&e))?;
                    }
                    Raw::Csv(_) | Raw::CsvBytes(_) => {}
                }
            }
            out.flush().map_err(|e| fail(&e))?;
        }
        Format::Csv => {
            let mut out = csv::WriterBuilder::new().flexible(true).from_writer(file);
            if let Some(h) = header {
                out.write_record(h).map_err(|e| fail(&e))?;
            }
            for r in records {
                match &r.raw {
                    Raw::Csv(rec) => out.write_record(rec).map_err(|e| fail(&e))?,
                    Raw::CsvBytes(rec) => out.write_byte_record(rec).map_err(|e| fail(&e))?,
                    Raw::Json(_) | Raw::JsonBytes(_) => {}
                }
            }
            out.flush().map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_are_typed_conservatively() {
        assert_eq!(typed_cell(""), Value::Null);
        assert_eq!(typed_cell("12"), json!(12));
        assert_eq!(typed_cell("-1.5e3"), json!(-1500.0));
        assert_eq!(typed_cell("007"), json!("007"));
        assert_eq!(typed_cell("1,000"), json!("1,000"));
        assert_eq!(typed_cell("True"), json!(true));
        assert_eq!(typed_cell("yes"), json!("yes"));
        assert_eq!(typed_cell("[1,\"a\"]"), json!([1, "a"]));
        assert_eq!(typed_cell("{\"k\":1}"), json!({"k": 1}));
        assert_eq!(typed_cell("[not json"), json!("[not json"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_written_again_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ol-cli-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("left.failed.csv");
        std::fs::write(&path, "from an earlier run").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&path).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0, "truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_files_sit_next_to_the_input() {
        assert_eq!(
            failed_path(Path::new("/d/feedback.csv")),
            Path::new("/d/feedback.failed.csv")
        );
        assert_eq!(
            failed_path(Path::new("rows.jsonl")),
            Path::new("rows.failed.jsonl")
        );
    }

    #[test]
    fn csv_rows_round_trip_through_the_failures_file() {
        let dir = std::env::temp_dir().join(format!("ol-cli-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.csv");
        std::fs::write(
            &path,
            "id,gt,note\n007,1,\"a, b\"\n008,,x\nshort\n,2,no id\n",
        )
        .unwrap();
        let input = read(&path, &["id"]).unwrap();
        assert_eq!(input.records.len(), 3);
        // A blank id cell is no id, not the id "".
        assert_eq!(input.records[2].row["id"], Value::Null);
        assert_eq!(input.bad.len(), 1);
        assert_eq!(input.records[0].line, 2);
        assert_eq!(
            Value::Object(input.records[0].row.clone()),
            json!({"id": "007", "gt": 1, "note": "a, b"})
        );
        assert_eq!(input.records[1].row["gt"], Value::Null);
        let out = dir.join("out.csv");
        write_failed(
            &out,
            Format::Csv,
            input.header.as_ref(),
            &input.records[..1],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "id,gt,note\n007,1,\"a, b\"\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
