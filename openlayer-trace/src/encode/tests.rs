use super::scan::{parsed_entries, split_object};
use super::*;
use crate::record::kind::StepKind;

/// The step's metadata through the general path: every entry set in order, a later
/// key replacing an earlier one in place.
fn merged(rec: &StepRecord) -> String {
    let mut out = String::new();
    write_object(&mut out, &metadata_entries(rec));
    out
}

#[test]
fn metadata_written_directly_matches_the_merged_entries() {
    let json = |s: &str| -> Box<str> { Box::from(s) };
    let mut cases = Vec::new();
    for traced_fn in [false, true] {
        for error in [None, Some("boom \"quoted\"")] {
            for keys in [
                &[][..],
                &["a"][..],
                &["a", "has_guardrails", "b"][..],
                &["Exceptions", "a"][..],
                &["a", "Exceptions", "has_guardrails"][..],
                &["a", "a"][..],
                &["has_guardrails", "Exceptions", "has_guardrails"][..],
            ] {
                let mut rec = StepRecord::new(Cow::Borrowed("s"), StepKind::UserCall, NO_PARENT, 0);
                rec.traced_fn = traced_fn;
                if let Some(e) = error {
                    rec.extra_mut().error = Some(Box::from(e));
                }
                for (i, k) in keys.iter().enumerate() {
                    // Pushed, not set: duplicate keys are part of the cases.
                    let extra = rec.extra_mut();
                    extra
                        .metadata
                        .push((Cow::Borrowed(*k), json(&i.to_string())));
                }
                cases.push(rec);
            }
        }
    }
    for rec in &cases {
        let mut direct = String::new();
        write_metadata(&mut direct, rec);
        assert_eq!(direct, merged(rec), "{rec:?}");
    }
}

#[test]
fn input_keys_are_borrowed_unless_escaped() {
    let entries = borrowed_entries(r#"{"q":"a","k\"ey":[1,2],"n":{"x":null}}"#);
    let keys: Vec<&str> = entries.iter().map(|(k, _)| &**k).collect();
    assert_eq!(keys, ["q", "k\"ey", "n"]);
    assert!(matches!(entries[0].0, Cow::Borrowed(_)));
    assert!(matches!(entries[1].0, Cow::Owned(_)));
    let values: Vec<&str> = entries.iter().map(|(_, v)| *v).collect();
    assert_eq!(values, [r#""a""#, "[1,2]", r#"{"x":null}"#]);
    assert!(borrowed_entries("not json").is_empty());
}

#[test]
fn integers_are_written_as_display_writes_them() {
    for v in [0, 7, -7, 10, 1_000_000, -999_999_999, i64::MAX, i64::MIN] {
        let mut out = String::new();
        push_int(&mut out, v);
        assert_eq!(out, v.to_string());
    }
}

#[test]
fn objects_split_by_hand_as_the_parser_splits_them() {
    let parsed = |j: &str| -> Vec<(String, String)> {
        parsed_entries(j)
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.get().to_string()))
            .collect()
    };
    let split = |j: &str| -> Option<Vec<(String, String)>> {
        split_object(j).map(|e| {
            e.into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_string()))
                .collect()
        })
    };
    for j in [
        "{}",
        " { } ",
        r#"{"question":"What is it?","k":3}"#,
        r#"{"a":"x\"y\\","b":[1,{"c":"]}"},[]],"d":{"e":{"f":null}},"g":-1.5e3}"#,
        r#"{"t":true,"f":false,"n":null,"u":"日本\u00e9"}"#,
        r#"{ "spaced" : [ 1 , 2 ] , "x" : { "y" : "z" } }"#,
        r#"{"dup":1,"dup":2}"#,
        r#"{"s":"{not a brace","t":"[","u":","}"#,
    ] {
        assert_eq!(split(j), Some(parsed(j)), "{j}");
    }
    // An escaped key, and texts that are not one object, go to the parser.
    for j in [
        r#"{"k\"ey":1}"#,
        "[1]",
        r#"{"a":1"#,
        r#"{"a":1}x"#,
        r#"{"a"}"#,
        "",
    ] {
        assert_eq!(split(j), None, "{j}");
    }
}

#[test]
fn fixed_and_named_columns_are_found_by_name() {
    for (i, key) in FIXED.iter().enumerate() {
        assert_eq!(fixed_column(key), Some(i), "{key}");
    }
    for key in ["", "Output", "step", "inferenceIds", "user_id"] {
        assert_eq!(fixed_column(key), None, "{key}");
    }
    // A row with one of the named columns, set after the fixed ones, has its bit only.
    for (bit, (column, _)) in NAMED_COLUMNS.iter().enumerate() {
        assert_eq!(fixed_column(column), None, "{column} is not a fixed column");
        let mut row: Columns<'_> = FIXED
            .iter()
            .map(|k| (*k, Val::Text("0"), KeyText::Ours))
            .collect();
        set_val(&mut row, "other", Val::Text("1"));
        assert_eq!(named_columns(&row), 0);
        set_val(&mut row, column, Val::Text("1"));
        assert_eq!(named_columns(&row), 1 << bit, "{column}");
    }
}

#[test]
fn setting_a_fixed_column_replaces_it_in_place() {
    let mut row: Columns<'_> = FIXED
        .iter()
        .map(|k| (*k, Val::Text("0"), KeyText::Ours))
        .collect();
    set_val(&mut row, "a", Val::Text("1"));
    set_val(&mut row, "latency", Val::Text("2"));
    set_val(&mut row, "a", Val::Text("3"));
    let keys: Vec<&str> = row.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(keys[..FIXED.len()], FIXED);
    assert_eq!(keys[FIXED.len()..], ["a"]);
    assert!(matches!(row[3].1, Val::Text("2")));
    assert!(matches!(row[FIXED.len()].1, Val::Text("3")));
}

#[test]
fn seconds_are_the_same_from_64_and_128_bits() {
    let anchors: [i128; 5] = [
        0,
        1_796_548_288_096_683_700,
        i64::MAX as i128 - 5,
        i64::MAX as i128 + 1_000,
        -1_000_000_007,
    ];
    for anchor in anchors {
        for offset in [0, 1, 999_999_999, -3, i64::MAX, i64::MIN] {
            let wide = (anchor + offset as i128) as f64 / 1e9;
            assert_eq!(
                unix_secs(anchor, offset).to_bits(),
                wide.to_bits(),
                "{anchor} + {offset}"
            );
        }
    }
}
