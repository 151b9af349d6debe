use super::scan::{parsed_entries, split_object};
use super::steps::{metadata_entries, push_int, write_metadata, write_object};
use super::*;
use crate::record::kind::StepKind;
use crate::record::{NO_PARENT, StepRecord};

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

/// A small deterministic generator (xorshift64), so that a failing case reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// Keys for inputs and metadata that collide with no column of the row.
const PLAIN_KEYS: [&str; 5] = ["q", "method", "k\"ey", "headers", "\u{7}bell"];
const VALUES: [&str; 6] = ["1", "\"s\"", "null", r#"{"a":[1,2]}"#, "2.5", r#""e\"q""#];

/// A random trace: 1 to 6 steps of any kind (each step's parent an earlier step, or none),
/// root inputs as text or as JSON (fields listed in `input_keys`, first set first), some
/// named columns, outputs, metadata and errors.
fn random_trace(r: &mut Rng, input_keys: &mut Vec<String>) -> CompletedTrace {
    use crate::util::text_inputs::{MARK, push_entry};
    let mut st = crate::record::TraceState::default();
    input_keys.clear();
    let n = 1 + r.below(6) as usize;
    for i in 0..n {
        let parent = match i {
            0 => NO_PARENT,
            _ if r.below(8) == 0 => NO_PARENT,
            _ => r.below(i as u64) as u32,
        };
        let kind = StepKind::ALL[r.below(StepKind::ALL.len() as u64) as usize];
        let start = r.below(1_000_000_000) as i64;
        let mut rec = StepRecord::new(Cow::Owned(format!("step \"{i}\"")), kind, parent, start);
        rec.end = start + r.below(5_000_000_000) as i64;
        rec.traced_fn = r.below(2) == 0;
        rec.status = [Status::Ok, Status::Error, Status::Cancelled][r.below(3) as usize];
        if i == 0 {
            let mut keys: Vec<&str> = Vec::new();
            for _ in 0..r.below(4) {
                let k = r.pick(&PLAIN_KEYS);
                if !keys.contains(&k) {
                    keys.push(k);
                    input_keys.push(k.to_string());
                }
            }
            if r.below(2) == 0 {
                let mut text = String::from(MARK);
                for k in &keys {
                    match r.below(3) {
                        0 => push_entry(&mut text, b's', k, Some("v \"é\"\n")),
                        1 => push_entry(&mut text, b'j', k, Some(r.pick(&VALUES))),
                        _ => {
                            push_entry(&mut text, b'o', k, None);
                            push_entry(&mut text, b's', "user-agent", Some("x/1"));
                            text.push('e');
                        }
                    }
                }
                rec.inputs = st.push_text(&text);
            } else {
                let fields: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{}:{}", serde_json::to_string(k).unwrap(), r.pick(&VALUES)))
                    .collect();
                rec.inputs = st.push_text(&format!("{{{}}}", fields.join(",")));
            }
        }
        if r.below(2) == 0 {
            rec.output = st.push_text(r.pick(&VALUES));
        }
        for _ in 0..r.below(3) {
            let k = r.pick(&["m", "has_guardrails", "Exceptions"]);
            rec.set_metadata(Cow::Borrowed(k), Box::from(r.pick(&VALUES)));
        }
        if rec.status == Status::Error {
            rec.extra_mut().error = Some(Box::from("boom \"x\""));
        }
        for field in kind.fields() {
            if r.below(2) == 0 {
                rec.set_field(field, Box::from(r.pick(&["3", "1.5", "\"m\"", "null"])));
            }
        }
        st.steps.push(rec);
    }
    if r.below(2) == 0 {
        st.inference_id = Some(Box::from(r.pick(&["custom-id", "q\"id"])));
    }
    if r.below(2) == 0 {
        let extra = st.extra_mut();
        for _ in 0..r.below(3) {
            let k = r.pick(&["user_id", "session_id", "tenant"]);
            extra.columns.push((Cow::Borrowed(k), Box::from("\"u\"")));
        }
        if r.below(2) == 0 {
            extra.context = Some(Box::from(r#"["doc"]"#));
        }
    }
    let anchor = match r.below(4) {
        // Beyond what 64 bits of nanoseconds hold (year 2262): the 128-bit path.
        0 => i64::MAX as i128 + r.below(1_000_000) as i128,
        _ => 1_700_000_000_000_000_000 + r.below(1_000_000_000_000) as i128,
    };
    CompletedTrace {
        state: st,
        anchor_unix_ns: anchor,
    }
}

/// Every step object of a tree, depth first.
fn tree_steps<'v>(steps: &'v serde_json::Value, out: &mut Vec<&'v serde_json::Value>) {
    for s in steps.as_array().expect("steps is a list") {
        out.push(s);
        tree_steps(&s["steps"], out);
    }
}

#[test]
fn rows_repeat_the_root_and_list_every_step_once() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut input_keys = Vec::new();
    for case in 0..3000 {
        let trace = random_trace(&mut r, &mut input_keys);
        let st = &trace.state;
        let encoded = encode(&trace).expect("a trace with steps is encoded");
        let row: serde_json::Value = serde_json::from_str(&encoded.row).expect("row is JSON");
        let config: serde_json::Value =
            serde_json::from_str(&encoded.config).expect("config is JSON");
        let ctx = format!("case {case}: {}", encoded.row);
        let uuid = |bits: u128| {
            uuid::Builder::from_random_bytes(bits.to_be_bytes())
                .into_uuid()
                .hyphenated()
                .to_string()
        };
        let secs = |ns: i64| (trace.anchor_unix_ns + i128::from(ns)) as f64 / 1e9;

        // Every step once, with its own id and times.
        let mut steps = Vec::new();
        tree_steps(&row["steps"], &mut steps);
        assert_eq!(steps.len(), st.steps.len(), "{ctx}");
        for rec in &st.steps {
            let id = uuid(rec.id);
            let found: Vec<_> = steps.iter().filter(|s| s["id"] == *id).collect();
            assert_eq!(found.len(), 1, "{ctx}");
            let s = found[0];
            let latency = (rec.end - rec.start) as f64 / 1e6;
            for (key, expected) in [
                ("startTime", secs(rec.start)),
                ("endTime", secs(rec.end)),
                ("latency", latency),
            ] {
                // serde_json's parser (without `float_roundtrip`) may be a unit in the
                // last place off; a wrong step's time would be off by far more.
                let got = s[key].as_f64().expect("a number");
                assert!(
                    (got - expected).abs() <= expected.abs() * f64::EPSILON,
                    "{key} {got} != {expected} in {ctx}"
                );
            }
        }

        // The row repeats the root: its time, latency, inputs, and its id unless the
        // trace has its own.
        let root = &row["steps"][0];
        assert_eq!(root["id"], *uuid(st.steps[0].id), "{ctx}");
        assert_eq!(row["inferenceTimestamp"], root["startTime"], "{ctx}");
        assert_eq!(row["latency"], root["latency"], "{ctx}");
        let id = st
            .inference_id
            .as_deref()
            .map_or(uuid(st.steps[0].id), str::to_string);
        assert_eq!(row["inferenceId"], *id, "{ctx}");
        assert_eq!(encoded.inference_id, id, "{ctx}");
        for key in &input_keys {
            assert_eq!(row[key.as_str()], root["inputs"][key.as_str()], "{ctx}");
        }

        // The config names the root's inputs in order, and the named columns the row has.
        let names: Vec<&str> = config["inputVariableNames"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a name"))
            .collect();
        assert_eq!(names, input_keys, "{ctx}");
        for (column, key) in NAMED_COLUMNS {
            let has = row.get(column).is_some();
            assert_eq!(config.get(key).is_some(), has, "{column} in {ctx}");
            if has {
                assert_eq!(config[key], column, "{ctx}");
            }
        }
    }
}
