//! `testing::capture` shapes traces as delivery does: the installed configuration's mask,
//! field budget and sampling apply, so a test can check its PII mask.

use std::time::Duration;

use openlayer_trace::{Config, ConfigBuilder, testing, trace};
use openlayer_trace_tests::child::{self, temp_dir};
use serde_json::json;

#[trace]
fn sign_up(email: String, bio: String) -> bool {
    !email.is_empty() && !bio.is_empty()
}

fn shaping(b: ConfigBuilder) -> ConfigBuilder {
    b.mask(|row| {
        if let Some(v) = row.get_mut("email") {
            *v = json!("***");
        }
    })
    .field_budget(16)
}

fn check(traces: &[testing::CapturedTrace]) {
    assert_eq!(traces.len(), 1);
    let row = traces[0].row();
    assert_eq!(row["email"], "***", "masked: {row}");
    let bio = row["bio"].as_str().unwrap();
    assert!(bio.contains("truncated"), "cut to the budget: {bio}");
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    child::scenario();
    let file = temp_dir("capture-shaping").join("traces.jsonl");
    let guard = openlayer_trace::init(shaping(Config::builder().trace_file(file)).build().unwrap())
        .unwrap();
    let (_, traces) = testing::capture(|| sign_up("ada@example.com".into(), "x".repeat(100)));
    check(&traces);
    guard.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn capture_applies_the_installed_mask_and_budget() {
    child::run("installed", &[]);
}

#[test]
fn capture_with_applies_a_configs_mask_budget_and_sampling() {
    let config = shaping(Config::builder()).build().unwrap();
    let (_, traces) = testing::capture_with(&config, || {
        sign_up("ada@example.com".into(), "x".repeat(100))
    });
    check(&traces);
    let none = Config::builder().sample_rate(0.0).build().unwrap();
    let (_, traces) =
        testing::capture_with(&none, || sign_up("ada@example.com".into(), "x".repeat(100)));
    assert!(traces.is_empty(), "sampled out");
}

/// A body recorded as it came (a `serde_json` raw value), with a number beyond `f64` and a
/// lone surrogate escape.
#[trace]
fn handle(body: &serde_json::value::RawValue) -> usize {
    body.get().len()
}

/// JSON text recorded as it came holds only what JSON parsers read: a number beyond `f64`
/// is `null` and a lone surrogate `\ufffd`. Either made a trace that a mask shapes fail
/// (dropped whole), and one written unshaped unreadable by `openlayer push`.
#[test]
fn raw_json_with_a_huge_number_or_a_lone_surrogate_is_recorded_readable() {
    let body: Box<serde_json::value::RawValue> =
        serde_json::from_str(r#"{"n":1e400,"s":"a\ud800b","ok":2}"#).unwrap();
    let masked = Config::builder()
        .mask(|row| {
            row.insert("masked".into(), json!(true));
        })
        .build()
        .unwrap();
    for config in [Config::builder().build().unwrap(), masked] {
        let (_, traces) = testing::capture_with(&config, || handle(&body));
        assert_eq!(traces.len(), 1, "the trace is kept");
        let row = traces[0].row();
        assert_eq!(
            row["body"],
            json!({"n": null, "s": "a\u{fffd}b", "ok": 2}),
            "{row}"
        );
    }
}

/// Inputs that name a field twice (JSON text with a repeated key, recorded as it came):
/// the config lists the name once, and the column holds the last value.
#[test]
fn an_input_named_twice_is_listed_once() {
    let raw: Box<serde_json::value::RawValue> =
        serde_json::from_str(r#"{"q":1,"other":true,"q":2}"#).unwrap();
    let (_, traces) = testing::capture(|| {
        openlayer_trace::step("ask").inputs(&*raw).start().finish();
    });
    let t = &traces[0];
    assert_eq!(
        t.config()["inputVariableNames"],
        json!(["q", "other"]),
        "{}",
        t.config_json()
    );
    assert_eq!(t.row()["q"], 2);
}
