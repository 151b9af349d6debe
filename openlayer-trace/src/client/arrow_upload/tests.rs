use super::*;
use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Int32Array, TimestampMillisecondArray, TimestampSecondArray};

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

#[test]
fn timestamps_become_unix_seconds_and_nested_values_json() {
    let mut list = ListBuilder::new(arrow_array::builder::Int64Builder::new());
    list.values().append_value(1);
    list.values().append_value(2);
    list.append(true);
    list.append(false);
    let mut dict = StringDictionaryBuilder::<Int32Type>::new();
    dict.append_value("yes");
    dict.append_null();
    let b = batch(vec![
        (
            "s",
            Arc::new(TimestampSecondArray::from(vec![Some(1_700_000_000), None])) as ArrayRef,
        ),
        (
            "ms",
            Arc::new(TimestampMillisecondArray::from(vec![1_700_000_000_500, 0])),
        ),
        ("d", Arc::new(arrow_array::Date32Array::from(vec![1, -1]))),
        ("l", Arc::new(list.finish())),
        ("c", Arc::new(dict.finish())),
    ]);
    let check = Check {
        id_column: None,
        required: vec![],
    };
    let out = prepare(&b, &check, 0).unwrap();
    let s = out.column(0).as_primitive::<Int64Type>();
    assert_eq!((s.value(0), s.is_null(1)), (1_700_000_000, true));
    let ms = out
        .column(1)
        .as_primitive::<arrow_array::types::Float64Type>();
    assert_eq!(ms.value(0), 1_700_000_000.5);
    let d = out.column(2).as_primitive::<Int64Type>();
    assert_eq!((d.value(0), d.value(1)), (86_400, -86_400));
    let l = out.column(3).as_string::<i32>();
    assert_eq!((l.value(0), l.is_null(1)), ("[1,2]", true));
    let c = out.column(4).as_string::<i32>();
    assert_eq!((c.value(0), c.is_null(1)), ("yes", true));
}

#[test]
fn ids_are_text_and_bad_ids_name_their_row() {
    let check = Check {
        id_column: Some("id"),
        required: vec![("groundTruthColumnName", "label")],
    };
    let b = batch(vec![
        ("id", Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef),
        ("label", Arc::new(Int32Array::from(vec![1, 0]))),
    ]);
    let out = prepare(&b, &check, 0).unwrap();
    assert_eq!(out.column(0).as_string::<i32>().value(0), "7");
    let b = batch(vec![
        (
            "id",
            Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
        ),
        ("label", Arc::new(Int32Array::from(vec![1, 0]))),
    ]);
    let e = prepare(&b, &check, 100).unwrap_err().to_string();
    assert!(e.contains("row 101: no inference id (null) in `id`"), "{e}");
    let b = batch(vec![(
        "id",
        Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
    )]);
    let e = prepare(&b, &check, 0).unwrap_err().to_string();
    assert!(
        e.contains("no column `label` (named by `groundTruthColumnName`)"),
        "{e}"
    );
}

#[test]
fn non_finite_floats_are_uploaded_as_null() {
    let check = Check {
        id_column: None,
        required: vec![],
    };
    let b = batch(vec![
        (
            "latency",
            Arc::new(Float64Array::from(vec![
                Some(1.5),
                Some(f64::NAN),
                None,
                Some(f64::INFINITY),
            ])) as ArrayRef,
        ),
        (
            "score",
            Arc::new(arrow_array::Float32Array::from(vec![
                f32::NEG_INFINITY,
                0.25,
                1.0,
                2.0,
            ])),
        ),
        (
            "clean",
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
        ),
    ]);
    let out = prepare(&b, &check, 0).unwrap();
    let latency = out
        .column(0)
        .as_primitive::<arrow_array::types::Float64Type>();
    assert_eq!(
        latency.iter().collect::<Vec<_>>(),
        [Some(1.5), None, None, None]
    );
    let score = out
        .column(1)
        .as_primitive::<arrow_array::types::Float32Type>();
    assert_eq!(
        score.iter().collect::<Vec<_>>(),
        [None, Some(0.25), Some(1.0), Some(2.0)]
    );
    assert_eq!(out.column(2).null_count(), 0);
}

#[test]
fn a_null_value_behind_a_dictionary_key_is_no_id() {
    let check = Check {
        id_column: Some("id"),
        required: vec![],
    };
    // Keys all valid; the second points at a null value.
    let values = StringArray::from(vec![Some("a"), None]);
    let keys = Int32Array::from(vec![0, 1]);
    let ids = arrow_array::DictionaryArray::<arrow_array::types::Int32Type>::try_new(
        keys,
        Arc::new(values),
    )
    .unwrap();
    let b = batch(vec![("id", Arc::new(ids) as ArrayRef)]);
    let e = prepare(&b, &check, 0).unwrap_err().to_string();
    assert!(e.contains("row 1: no inference id (null)"), "{e}");
}

#[test]
fn batches_with_and_without_nulls_have_one_schema() {
    let with = batch(vec![(
        "n",
        Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef,
    )]);
    let without = batch(vec![(
        "n",
        Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
    )]);
    assert_ne!(
        with.schema().field(0).is_nullable(),
        without.schema().field(0).is_nullable()
    );
    let check = Check {
        id_column: None,
        required: vec![],
    };
    assert_eq!(
        prepare(&with, &check, 0).unwrap().schema(),
        prepare(&without, &check, 2).unwrap().schema()
    );
}
