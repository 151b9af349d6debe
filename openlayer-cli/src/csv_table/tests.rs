use super::*;
use openlayer_trace::RowSchema;

use crate::table::Kind as TableKind;

/// How cells were typed before this module: through a JSON value each.
fn reference_cell(cell: &str) -> Value {
    if cell.is_empty() {
        return Value::Null;
    }
    match cell {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = cell.as_bytes()[0];
    if (first == b'-' || first.is_ascii_digit())
        && let Ok(n) = serde_json::from_str::<serde_json::Number>(cell)
    {
        return Value::Number(n);
    }
    if (first == b'[' || first == b'{')
        && let Ok(v @ (Value::Array(_) | Value::Object(_))) = serde_json::from_str::<Value>(cell)
    {
        return v;
    }
    Value::String(cell.to_string())
}

const CELLS: &[&str] = &[
    "",
    "0",
    "-0",
    "00",
    "007",
    "-007",
    "12",
    "-12",
    "12 ",
    "+12",
    "1.",
    ".5",
    "-",
    "--1",
    "123456789012345678",
    "-123456789012345678",
    "1234567890123456789",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "99999999999999999999",
    "1.5",
    "-1.5e3",
    "1e3",
    "0.1",
    "2.50",
    "1E400",
    "true",
    "True",
    "TRUE",
    "tRue",
    "false",
    "FALSE",
    "yes",
    "[1, \"a\"]",
    "{\"k\": 1}",
    "[not json",
    "{",
    "[]",
    "a, b",
    "0x10",
    "١٢",
    "0.0",
    "-0.0",
    "00.5",
    "0.",
    "-.5",
    "1.2.3",
    "1.5 ",
    "3.14159265358979",
    "3.141592653589793",
    "123456789.123456",
    "0.000000000000001",
    "9007199254740993.5",
    "-999999999999.999",
    "0.1000",
    "1.0",
    "1.e5",
    "1.5e-3",
];

#[test]
fn plain_decimals_are_the_floats_json_reads() {
    // A fixed sequence of decimals of up to 15 digits, compared with the JSON reading.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200_000 {
        let whole = 1 + (next() % 14) as usize;
        let fraction = 1 + (next() as usize % (15 - whole));
        let mut cell = String::from(if next() & 1 == 0 { "-" } else { "" });
        let lead = (next() % 10) as u8;
        cell.push(char::from(
            b'0' + if whole > 1 { lead.max(1) } else { lead },
        ));
        for i in 1..whole + fraction {
            if i == whole {
                cell.push('.');
            }
            cell.push(char::from(b'0' + (next() % 10) as u8));
        }
        assert_eq!(
            typed(&cell).into_value(),
            reference_cell(&cell),
            "cell {cell:?}"
        );
    }
}

#[test]
fn cells_are_typed_as_json_values_were() {
    for cell in CELLS {
        assert_eq!(
            typed(cell).into_value(),
            reference_cell(cell),
            "cell {cell:?}"
        );
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_csv(name: &str, text: &str) -> (Dir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ol-cli-csv-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.csv");
    std::fs::write(&path, text).unwrap();
    (Dir(dir), path)
}

/// The batches as the rows read as JSON objects make them.
fn reference_batches(path: &Path, checks: &Checks, rows_per_batch: usize) -> Vec<RecordBatch> {
    let verbatim = checks.id_column.as_ref().or(checks.text_column.as_ref());
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    let header = reader.headers().unwrap().clone();
    let rows: Vec<Map<String, Value>> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .map(|(h, c)| {
                    let v = if Some(h) == verbatim.map(String::as_str) {
                        // A publish's optional id column: a blank cell is no id.
                        if c.is_empty() && checks.id_column.is_none() {
                            Value::Null
                        } else {
                            Value::String(c.to_string())
                        }
                    } else {
                        reference_cell(c)
                    };
                    (h.to_string(), v)
                })
                .collect()
        })
        .collect();
    let mut schema = match verbatim {
        Some(c) => RowSchema::new().text_column(c.clone()),
        None => RowSchema::new(),
    };
    for row in &rows {
        schema.observe(row);
    }
    rows.chunks(rows_per_batch)
        .enumerate()
        .map(|(i, chunk)| schema.to_record_batch(chunk, i * rows_per_batch).unwrap())
        .collect()
}

fn read_all(path: &Path, checks: &Checks) -> Vec<RecordBatch> {
    let mut problems = Problems::new(path);
    let (_, schema) = scan(Records::open(path, checks).unwrap(), &mut problems);
    assert_eq!(problems.count, 0);
    batches(
        Records::open(path, checks).unwrap(),
        schema,
        path.to_path_buf(),
    )
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn batches_are_those_of_the_rows_as_json() {
    let mut text = String::from("id,n,x,mixed,flag,none,dup,note,dup\n");
    for (i, cell) in CELLS.iter().enumerate() {
        let quoted = format!("\"{}\"", cell.replace('"', "\"\""));
        text.push_str(&format!(
            "{:03},{},{},{quoted},{},,{i},\"a, b\",{}\n",
            i,
            i as i64 - 5,
            if i % 3 == 0 {
                String::new()
            } else {
                format!("{}.25", i)
            },
            ["true", "False", ""][i % 3],
            i * 2,
        ));
    }
    let (_dir, path) = temp_csv("mixed", &text);
    for checks in [
        Checks {
            id_column: Some("id".into()),
            ..Checks::default()
        },
        Checks {
            text_column: Some("n".into()),
            ..Checks::default()
        },
        Checks::default(),
    ] {
        let got = read_all(&path, &checks);
        let want = reference_batches(&path, &checks, BATCH_ROWS);
        assert_eq!(got, want, "{checks:?}");
    }
    let batch = &read_all(&path, &Checks::default())[0];
    let types: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert!(
        types.contains(&("x".into(), DataType::Float64)),
        "{types:?}"
    );
    assert!(
        types.contains(&("flag".into(), DataType::Boolean)),
        "{types:?}"
    );
    assert!(
        types.contains(&("none".into(), DataType::Null)),
        "{types:?}"
    );
    assert!(
        types.contains(&("mixed".into(), DataType::Utf8)),
        "{types:?}"
    );
    // Ids such as `007` are text to JSON too.
    assert!(types.contains(&("id".into(), DataType::Utf8)), "{types:?}");
    assert!(types.contains(&("n".into(), DataType::Int64)), "{types:?}");
    assert_eq!(types.iter().filter(|(n, _)| n == "dup").count(), 1);
}

#[test]
fn blank_cells_of_a_publish_id_column_are_null() {
    let (_dir, path) = temp_csv("blank-id", "id,v\n007,1\n,2\n008,\n");
    let checks = Checks {
        text_column: Some("id".into()),
        ..Checks::default()
    };
    let got = read_all(&path, &checks);
    assert_eq!(got, reference_batches(&path, &checks, BATCH_ROWS));
    let ids = arrow_array::cast::AsArray::as_string::<i32>(got[0].column_by_name("id").unwrap());
    assert_eq!(ids.value(0), "007");
    assert!(
        arrow_array::Array::is_null(ids, 1),
        "a blank id cell is null, not \"\""
    );
    assert_eq!(ids.value(2), "008");
}

#[test]
fn batches_hold_at_most_batch_rows_rows() {
    let mut text = String::from("id,label\n");
    let n = BATCH_ROWS * 2 + 7;
    for i in 0..n {
        text.push_str(&format!("r{i},{}\n", i % 2));
    }
    let (_dir, path) = temp_csv("sizes", &text);
    let checks = Checks {
        id_column: Some("id".into()),
        ..Checks::default()
    };
    let got = read_all(&path, &checks);
    let sizes: Vec<usize> = got.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, [BATCH_ROWS, BATCH_ROWS, 7]);
    assert_eq!(got, reference_batches(&path, &checks, BATCH_ROWS));
    assert_eq!(TableKind::of(&path).unwrap(), TableKind::Csv);
}

#[test]
fn bad_rows_are_named_in_both_readings() {
    let (_dir, path) = temp_csv("bad", "id,label\na,1\n ,2\nc\nd,4\n");
    let checks = Checks {
        id_column: Some("id".into()),
        ..Checks::default()
    };
    let mut problems = Problems::new(&path);
    let (rows, _) = scan(Records::open(&path, &checks).unwrap(), &mut problems);
    assert_eq!(rows, 4);
    assert_eq!(problems.count, 2);
    // A file that changed between the readings: the second fails, naming the line.
    let (_, schema) = scan(
        Records::open(&path, &Checks::default()).unwrap(),
        &mut Problems::new(&path),
    );
    let err = batches(Records::open(&path, &checks).unwrap(), schema, path.clone())
        .find_map(Result::err)
        .unwrap();
    let CliError::Failed(message) = err else {
        panic!("{err:?}")
    };
    assert!(
        message.ends_with(":3: no inference id in `id` (the file changed while it was read)"),
        "{message}"
    );
    // A cell of another type than the first reading saw.
    let (_dir2, other) = temp_csv("changed", "id,label\na,x\n");
    let err = batches(
        Records::open(&other, &checks).unwrap(),
        schema_of(&path, &checks),
        other.clone(),
    )
    .find_map(Result::err);
    assert!(err.is_some());
}

fn schema_of(path: &Path, checks: &Checks) -> CsvSchema {
    let (_, schema) = scan(
        Records::open(path, checks).unwrap(),
        &mut Problems::new(path),
    );
    schema
}
