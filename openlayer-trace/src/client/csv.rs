//! A small CSV writer for bulk uploads (RFC 4180 quoting, `\n` line ends).
//!
//! Columns are the union of the rows' keys, in first-seen order. A missing value and
//! `null` are empty cells; strings are written as they are; numbers and booleans as JSON
//! writes them; arrays and objects as JSON text.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// A table encoded as CSV.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Csv {
    /// The header, in order.
    pub columns: Vec<String>,
    /// The number of data rows.
    pub rows: usize,
    /// The whole file, header included.
    pub data: Vec<u8>,
}

/// Encodes `rows` as CSV with a header line.
#[cfg(test)]
pub(crate) fn write<'a>(rows: impl IntoIterator<Item = &'a Map<String, Value>> + Clone) -> Csv {
    let columns = columns(rows.clone());
    let mut data = Vec::new();
    push_header(&mut data, &columns);
    let mut count = 0;
    for row in rows {
        count += 1;
        push_row(&mut data, &columns, row);
    }
    Csv {
        columns,
        rows: count,
        data,
    }
}

/// The columns of a table of `rows`: the union of their keys, in first-seen order.
pub(crate) fn columns<'a>(rows: impl IntoIterator<Item = &'a Map<String, Value>>) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for row in rows {
        for key in row.keys() {
            if seen.insert(key.as_str()) {
                columns.push(key.clone());
            }
        }
    }
    columns
}

/// Appends the header line of `columns`.
pub(crate) fn push_header(data: &mut Vec<u8>, columns: &[String]) {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        push_field(data, c, true);
    }
    data.push(b'\n');
}

/// Appends the line of `row` under `columns`.
pub(crate) fn push_row(data: &mut Vec<u8>, columns: &[String], row: &Map<String, Value>) {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        match row.get(c) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => push_field(data, s, true),
            Some(Value::Bool(b)) => data.extend_from_slice(if *b { b"true" } else { b"false" }),
            Some(Value::Number(n)) => data.extend_from_slice(n.to_string().as_bytes()),
            Some(v @ (Value::Array(_) | Value::Object(_))) => {
                push_field(data, &v.to_string(), false)
            }
        }
    }
    data.push(b'\n');
}

/// Writes one field, quoted when it must be. An empty string is written as `""` (when
/// `quote_empty`), so that it stays distinct from a missing value.
fn push_field(out: &mut Vec<u8>, s: &str, quote_empty: bool) {
    let needs_quotes = (s.is_empty() && quote_empty)
        || s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn columns_are_the_union_and_cells_are_quoted_as_needed() {
        // Keys in sorted order, so that the rows read the same whether serde_json's map
        // sorts its keys or keeps their order (its `preserve_order` feature).
        let rows = [
            obj(json!({"id": "a", "n": 1, "text": "plain"})),
            obj(json!({"flag": true, "id": "b,c", "text": "say \"hi\"\nbye"})),
            obj(
                json!({"id": "", "meta": {"k": "v, w"}, "n": 2.5, "tags": ["x", "y"], "text": null}),
            ),
        ];
        let csv = write(rows.iter());
        // First-seen order: the first row contributes id, n, text; then flag; then meta, tags.
        assert_eq!(csv.columns, ["id", "n", "text", "flag", "meta", "tags"]);
        assert_eq!(csv.rows, 3);
        let text = String::from_utf8(csv.data).unwrap();
        assert_eq!(
            text,
            "id,n,text,flag,meta,tags\n\
             a,1,plain,,,\n\
             \"b,c\",,\"say \"\"hi\"\"\nbye\",true,,\n\
             \"\",2.5,,,\"{\"\"k\"\":\"\"v, w\"\"}\",\"[\"\"x\"\",\"\"y\"\"]\"\n"
        );
    }

    #[test]
    fn no_rows_is_an_empty_header() {
        let csv = write(std::iter::empty::<&Map<String, Value>>());
        assert!(csv.columns.is_empty());
        assert_eq!(csv.data, b"\n");
    }
}
