//! What leaves the process: the masking hook and the field budget apply to every row,
//! whether it is sent, spooled or written to the local file; sampling keeps the same
//! inference ids everywhere. Runs in a child process (the configuration is global).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use openlayer_trace::{Config, ConfigBuilder, trace, update_current_trace};
use openlayer_trace_tests::TestServer;
use openlayer_trace_tests::child::{self, report, results, spool_files, temp_dir, wait_until};
use serde_json::{Value, json};

const KEY: &str = "sk-test-shaping-99aa88bb77cc";
const N: usize = 200;
const LONG: usize = 500;
const BUDGET: usize = 64;

#[trace]
fn shaped(id: String, email: String, long: String) -> usize {
    update_current_trace!(inference_id = id.clone(), secret = "hunter2");
    email.len() + long.len()
}

fn produce() -> Vec<String> {
    (0..N)
        .map(|i| {
            let id = format!("s-{i}");
            shaped(id.clone(), format!("user{i}@example.com"), "x".repeat(LONG));
            id
        })
        .collect()
}

fn shaping(b: ConfigBuilder) -> Config {
    b.mask(|row| {
        row.remove("secret");
        if let Some(v) = row.get_mut("email") {
            *v = json!("***");
        }
        // An input column removed, a named column added: the config follows.
        row.remove("id");
        row.remove("cost");
        row.insert("groundTruth".into(), json!("label"));
    })
    .field_budget(BUDGET)
    .sample_rate(0.5)
    .build()
    .unwrap()
}

/// Checks one row as it left the process.
fn check_row(row: &Value) {
    let text = row.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(row.get("secret").is_none());
    assert_eq!(row["email"], "***");
    let marker = format!("…[truncated {} bytes]", LONG - BUDGET);
    assert_eq!(row["long"], format!("{}{marker}", "x".repeat(BUDGET)));
    assert_eq!(
        row["steps"][0]["inputs"]["long"],
        format!("{}{marker}", "x".repeat(BUDGET))
    );
    // The step's own email input is not a column: the mask saw only columns.
    assert!(row["steps"][0]["inputs"]["email"].is_string());
    assert!(row.get("id").is_none());
}

/// Checks the config sent with the rows: it names only the columns the masked row has.
fn check_config(config: &Value) {
    assert_eq!(
        config["inputVariableNames"],
        json!(["email", "long"]),
        "{config}"
    );
    assert_eq!(config["groundTruthColumnName"], "groundTruth", "{config}");
    assert!(config.get("costColumnName").is_none(), "{config}");
    assert_eq!(config["latencyColumnName"], "latency", "{config}");
}

/// Rows of JSONL files in the trace file / spool line format.
fn file_rows(files: &[impl AsRef<Path>]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .flat_map(|line| line["rows"].as_array().unwrap().clone())
        .collect()
}

fn ids_of(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r["inferenceId"].as_str().unwrap().to_string())
        .collect()
}

fn scenario() {
    let server = TestServer::start();
    server.go_down();
    let dir = temp_dir("shaping");
    let base = |b: ConfigBuilder| {
        b.api_key(KEY)
            .base_url(server.url())
            .inference_pipeline_id("pipe-1")
            .retry_base_backoff(Duration::from_millis(10))
            .max_retries(0)
            .linger(Duration::from_millis(5))
    };

    // 1. The server is down: kept rows are spooled, masked and cut to the budget.
    let guard = openlayer_trace::init(shaping(base(Config::builder()).spool_dir(&dir))).unwrap();
    let produced = produce();
    let r = guard.flush(Duration::from_secs(5)).unwrap();
    assert!(r.complete);
    let s = &r.stats;
    assert_eq!(s.sampled_out + s.spooled, N as u64, "{s:?}");
    assert!((60..140).contains(&s.sampled_out), "{s:?}");
    let spooled = file_rows(&spool_files(&dir));
    assert_eq!(spooled.len() as u64, s.spooled);
    spooled.iter().for_each(check_row);
    let kept = ids_of(&spooled);

    // 2. It comes back: the replayed rows are the shaped ones.
    server.come_up();
    assert!(wait_until(Duration::from_secs(10), || server
        .inference_ids()
        == kept));
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.replayed, kept.len() as u64);
    let sent: Vec<Value> = server
        .requests()
        .iter()
        .filter(|q| q.outcome.is_success())
        .flat_map(|q| {
            let body = q.json.as_ref().unwrap();
            check_config(&body["config"]);
            body["rows"].as_array().unwrap().clone()
        })
        .collect();
    sent.iter().for_each(check_row);

    // 3. Sent directly, the same ids are kept.
    server.clear_requests();
    let guard = openlayer_trace::init(shaping(base(Config::builder()))).unwrap();
    produce();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.sent, kept.len() as u64);
    assert_eq!(server.inference_ids(), kept);

    // 4. The local file of the embedded default gets the same rows.
    let file = dir.join("traces.jsonl");
    let guard = openlayer_trace::init(shaping(Config::builder().trace_file(&file))).unwrap();
    produce();
    let r = guard.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(r.stats.written, kept.len() as u64);
    let written = file_rows(&[&file]);
    written.iter().for_each(check_row);
    assert_eq!(ids_of(&written), kept);

    report(&[
        ("produced", produced.len().to_string()),
        ("kept", kept.len().to_string()),
        ("sampled_out", (N - kept.len()).to_string()),
    ]);
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    match child::scenario().as_str() {
        "shaping" => scenario(),
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn masking_budget_and_sampling_apply_to_every_way_out() {
    let out = child::run("shaping", &[]);
    eprintln!("shaping: {:?}", results(&out));
}
