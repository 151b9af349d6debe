//! JSON rows to Arrow record batches ([`RowSchema`]) and back ([`record_batch_to_rows`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, NullArray, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Number, Value};

use super::configs::json_kind;
use crate::error::Error;

/// The Arrow type of a column of JSON values, widened as values are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only nulls (or missing) so far.
    Null,
    Bool,
    /// Integers that fit an `i64`.
    Int,
    /// Numbers, some of them not integers (or too large for an `i64`).
    Float,
    /// Strings; also arrays and objects (as JSON text) and mixed kinds.
    Text,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) | Value::Array(_) | Value::Object(_) => Kind::Text,
        }
    }

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

/// The Arrow schema of JSON rows, inferred from the rows it has seen, and the conversion
/// of rows to a [`RecordBatch`] of that schema.
///
/// Columns are the union of the rows' keys, in first-seen order. A column's type is the
/// narrowest that holds every value seen: booleans are `Boolean`, integers `Int64`, other
/// numbers `Float64`, strings `Utf8`; arrays and objects are JSON text (`Utf8`), as is a
/// column whose values mix kinds (a number there is written as JSON writes it). A column
/// of nulls only is `Null`. Missing values are nulls.
///
/// Observe every row first, then convert: the batches of one upload share one schema.
///
/// ```
/// use openlayer_trace::RowSchema;
/// use openlayer_trace::arrow_schema::DataType;
/// use serde_json::json;
/// let rows = [
///     json!({"id": "a", "label": 1, "score": 0.5, "tags": ["x"]}),
///     json!({"id": "b", "label": 0, "score": 1, "ok": true}),
/// ];
/// let mut schema = RowSchema::new();
/// for row in &rows {
///     schema.observe(row.as_object().unwrap());
/// }
/// let batch = schema.to_record_batch(rows.iter().filter_map(|r| r.as_object()), 0).unwrap();
/// assert_eq!(batch.num_rows(), 2);
/// let types: Vec<_> = batch.schema().fields().iter().map(|f| f.data_type().clone()).collect();
/// assert_eq!(types, [DataType::Utf8, DataType::Int64, DataType::Float64, DataType::Utf8, DataType::Boolean]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct RowSchema {
    names: Vec<String>,
    kinds: Vec<Kind>,
    index: HashMap<String, usize>,
    text: Vec<String>,
}

impl RowSchema {
    /// An empty schema.
    pub fn new() -> RowSchema {
        RowSchema::default()
    }

    /// Makes `column` a `Utf8` column whatever its values (numbers are written as JSON
    /// writes them): for ids such as `007` or `12`, which are text to the platform.
    pub fn text_column(mut self, column: impl Into<String>) -> RowSchema {
        let column = column.into();
        if let Some(&i) = self.index.get(&column) {
            self.kinds[i] = Kind::Text;
        }
        self.text.push(column);
        self
    }

    /// Widens the schema to hold `row`.
    pub fn observe(&mut self, row: &Map<String, Value>) {
        for (key, value) in row {
            let kind = Kind::of(value);
            match self.index.get(key) {
                Some(&i) => self.kinds[i] = self.kinds[i].widen(kind),
                None => {
                    let kind = if self.text.iter().any(|t| t == key) {
                        Kind::Text
                    } else {
                        kind
                    };
                    self.index.insert(key.clone(), self.names.len());
                    self.names.push(key.clone());
                    self.kinds.push(kind);
                }
            }
        }
    }

    /// The number of columns seen.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no column has been seen.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The column names, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The Arrow schema (every field nullable).
    pub fn schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .names
            .iter()
            .zip(&self.kinds)
            .map(|(n, k)| Field::new(n, k.data_type(), true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Converts `rows` to a batch of this schema. `first_row` is the index of the first
    /// of them in the caller's input, for errors.
    ///
    /// Fails with [`Error::InvalidInput`] naming the row and the column when a row has a
    /// column or a value the schema has not seen (a row that was not observed).
    pub fn to_record_batch<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a Map<String, Value>>,
        first_row: usize,
    ) -> Result<RecordBatch, Error> {
        let rows: Vec<&Map<String, Value>> = rows.into_iter().collect();
        let n = rows.len();
        for (i, row) in rows.iter().enumerate() {
            if let Some(key) = row.keys().find(|k| !self.index.contains_key(*k)) {
                return Err(Error::InvalidInput(format!(
                    "row {}: column `{key}` is not in the schema",
                    first_row + i
                )));
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.names.len());
        for (name, kind) in self.names.iter().zip(&self.kinds) {
            let values = rows.iter().map(|r| r.get(name).unwrap_or(&Value::Null));
            let bad = |i: usize, v: &Value| {
                Error::InvalidInput(format!(
                    "row {}: `{name}` holds {}, but the column is {:?}",
                    first_row + i,
                    json_kind(v),
                    kind.data_type()
                ))
            };
            let array: ArrayRef = match kind {
                Kind::Null => {
                    if let Some((i, v)) = values.enumerate().find(|(_, v)| !v.is_null()) {
                        return Err(bad(i, v));
                    }
                    Arc::new(NullArray::new(n))
                }
                Kind::Bool => {
                    let mut b = BooleanBuilder::with_capacity(n);
                    for (i, v) in values.enumerate() {
                        match v {
                            Value::Null => b.append_null(),
                            Value::Bool(x) => b.append_value(*x),
                            other => return Err(bad(i, other)),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Int => {
                    let mut b = Int64Builder::with_capacity(n);
                    for (i, v) in values.enumerate() {
                        match v {
                            Value::Null => b.append_null(),
                            Value::Number(x) if x.is_i64() => b.append_option(x.as_i64()),
                            other => return Err(bad(i, other)),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Float => {
                    let mut b = Float64Builder::with_capacity(n);
                    for (i, v) in values.enumerate() {
                        match v {
                            Value::Null => b.append_null(),
                            Value::Number(x) => b.append_option(x.as_f64()),
                            other => return Err(bad(i, other)),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Text => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for v in values {
                        match v {
                            Value::Null => b.append_null(),
                            Value::String(s) => b.append_value(s),
                            other => b.append_value(other.to_string()),
                        }
                    }
                    Arc::new(b.finish())
                }
            };
            columns.push(array);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        RecordBatch::try_new_with_options(self.schema(), columns, &options)
            .map_err(|e| Error::InvalidInput(format!("cannot build the batch: {e}")))
    }
}

/// The rows of `batch` as JSON objects, one per row; nulls are left out.
///
/// Strings, booleans and numbers map to their JSON kinds (a non-finite float to `null`);
/// timestamps and dates to Unix seconds (an integer for seconds and dates, a float for
/// finer units); lists to arrays; structs and maps with string keys to objects;
/// dictionary-encoded values to their values.
///
/// Fails with [`Error::InvalidInput`] naming the column for a type with no JSON
/// counterpart here (binary, decimals, durations, unions, ...).
///
/// ```
/// use std::sync::Arc;
/// use openlayer_trace::arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
/// use openlayer_trace::record_batch_to_rows;
/// let batch = RecordBatch::try_from_iter([
///     ("id", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
///     ("label", Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef),
/// ])
/// .unwrap();
/// let rows = record_batch_to_rows(&batch).unwrap();
/// assert_eq!(serde_json::Value::Object(rows[1].clone()), serde_json::json!({"id": "b"}));
/// ```
pub fn record_batch_to_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, Error> {
    let schema = batch.schema();
    for field in schema.fields() {
        check_json_type(field.name(), field.data_type())?;
    }
    let mut rows = vec![Map::new(); batch.num_rows()];
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for (i, row) in rows.iter_mut().enumerate() {
            let v = json_value(column.as_ref(), i);
            if !v.is_null() {
                row.insert(field.name().clone(), v);
            }
        }
    }
    Ok(rows)
}

/// Checks that [`json_value`] knows `data_type`.
pub(crate) fn check_json_type(column: &str, data_type: &DataType) -> Result<(), Error> {
    let ok = match data_type {
        DataType::Null
        | DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Timestamp(_, _)
        | DataType::Date32
        | DataType::Date64 => return Ok(()),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => return check_json_type(column, f.data_type()),
        DataType::Struct(fields) => {
            for f in fields {
                check_json_type(column, f.data_type())?;
            }
            return Ok(());
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                matches!(
                    kv[0].data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) && check_json_type(column, kv[1].data_type()).is_ok()
            }
            _ => false,
        },
        DataType::Dictionary(_, values) => return check_json_type(column, values),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "column `{column}` has type {data_type}, which has no JSON form here"
        )))
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Unix seconds of a timestamp `v` in `unit`: an integer for seconds, a float otherwise.
pub(crate) fn unix_seconds(v: i64, unit: TimeUnit) -> Value {
    match unit {
        TimeUnit::Second => Value::from(v),
        TimeUnit::Millisecond => float(v as f64 / 1e3),
        TimeUnit::Microsecond => float(v as f64 / 1e6),
        TimeUnit::Nanosecond => float(v as f64 / 1e9),
    }
}

const SECONDS_PER_DAY: i64 = 86_400;

/// Value `i` of `array` as JSON (`null` when it is null). The type must have passed
/// [`check_json_type`]; any other type gives `null`.
pub(crate) fn json_value(array: &dyn Array, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(i)),
        DataType::Float16 => float(f64::from(array.as_primitive::<Float16Type>().value(i))),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Value::from(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Value::from(array.as_string_view().value(i)),
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(i),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i),
            };
            unix_seconds(v, *unit)
        }
        DataType::Date32 => {
            Value::from(i64::from(array.as_primitive::<Date32Type>().value(i)) * SECONDS_PER_DAY)
        }
        // Floored, as the upload path does: a date before 1970 with a part of a second is
        // the second before, not after.
        DataType::Date64 => {
            Value::from(array.as_primitive::<Date64Type>().value(i).div_euclid(1000))
        }
        DataType::List(_) => list(array.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i).as_ref()),
        DataType::ListView(_) => list(array.as_list_view::<i32>().value(i).as_ref()),
        DataType::LargeListView(_) => list(array.as_list_view::<i64>().value(i).as_ref()),
        DataType::FixedSizeList(_, _) => list(array.as_fixed_size_list().value(i).as_ref()),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = Map::new();
            for (f, column) in fields.iter().zip(s.columns()) {
                let v = json_value(column.as_ref(), i);
                if !v.is_null() {
                    map.insert(f.name().clone(), v);
                }
            }
            Value::Object(map)
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut map = Map::new();
            for j in 0..entries.len() {
                if let Value::String(k) = json_value(keys.as_ref(), j) {
                    map.insert(k, json_value(values.as_ref(), j));
                }
            }
            Value::Object(map)
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            match json_value(dict.keys(), i).as_u64() {
                Some(key) => json_value(dict.values().as_ref(), key as usize),
                None => Value::Null,
            }
        }
        _ => Value::Null,
    }
}

fn list(values: &dyn Array) -> Value {
    Value::Array((0..values.len()).map(|j| json_value(values, j)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn kinds_widen_to_the_narrowest_common_type() {
        let rows = [
            obj(json!({"a": null, "b": 1, "c": 1, "d": true, "e": "x", "f": 1})),
            obj(json!({"a": null, "b": 2, "c": 2.5, "d": null, "e": {"k": [1]}, "f": "y"})),
            obj(json!({"g": u64::MAX})),
        ];
        let mut s = RowSchema::new();
        rows.iter().for_each(|r| s.observe(r));
        let types: Vec<DataType> = s
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        use DataType::*;
        assert_eq!(types, [Null, Int64, Float64, Boolean, Utf8, Utf8, Float64]);
        let batch = s.to_record_batch(rows.iter(), 0).unwrap();
        let back = record_batch_to_rows(&batch).unwrap();
        assert_eq!(
            Value::Object(back[1].clone()),
            json!({"b": 2, "c": 2.5, "e": "{\"k\":[1]}", "f": "y"})
        );
        assert_eq!(back[0]["f"], json!("1"));
        assert_eq!(back[2]["g"], json!(u64::MAX as f64));
    }

    #[test]
    fn text_columns_stay_text_and_unseen_values_are_named() {
        let mut s = RowSchema::new().text_column("id");
        let seen = obj(json!({"id": 7, "n": 1}));
        s.observe(&seen);
        assert_eq!(s.schema().field(0).data_type(), &DataType::Utf8);
        let b = s.to_record_batch([&seen], 0).unwrap();
        assert_eq!(record_batch_to_rows(&b).unwrap()[0]["id"], json!("7"));
        let unseen = obj(json!({"id": "x", "n": "two"}));
        let e = s.to_record_batch([&seen, &unseen], 10).unwrap_err();
        assert!(e.to_string().contains("row 11: `n` holds a string"), "{e}");
        let extra = obj(json!({"zz": 1}));
        let e = s.to_record_batch([&extra], 0).unwrap_err();
        assert!(e.to_string().contains("row 0: column `zz`"), "{e}");
    }

    #[test]
    fn dates_are_floored_to_the_second_before_1970_too() {
        use arrow_array::Date64Array;
        let dates = Date64Array::from(vec![1_500, -1_500, -1_000, 0]);
        let seconds: Vec<Value> = (0..dates.len()).map(|i| json_value(&dates, i)).collect();
        // -1.5 s is in the second that starts at -2 s, as the upload path has it.
        assert_eq!(seconds, [json!(1), json!(-2), json!(-1), json!(0)]);
    }
}
