//! Deep trees: a trace 10 000 steps deep is encoded, with and without a mask or a field
//! budget, by the worker as by `testing::capture`, and its line reads back.

use std::time::Duration;

use openlayer_trace::{Config, ConfigBuilder, LocalLine, testing, trace};
use openlayer_trace_tests::child::{self, temp_dir};
use serde_json::Value;

const DEPTH: u32 = 10_000;

#[trace]
fn deep(n: u32) -> u32 {
    if n == 0 { 0 } else { deep(n - 1) + 1 }
}

/// Runs `f` on a thread with room for the application's own recursion.
fn on_big_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// How deep the steps of a row go (iteratively).
fn depth(row: &Value) -> usize {
    let mut d = 0;
    let mut steps = row["steps"].as_array();
    while let Some(s) = steps.and_then(|s| s.first()) {
        d += 1;
        steps = s["steps"].as_array();
    }
    d
}

fn shaping(b: ConfigBuilder) -> ConfigBuilder {
    b.mask(|row| {
        row.insert("masked".into(), true.into());
    })
    .field_budget(64)
}

#[test]
fn a_deep_trace_is_captured_plain_masked_and_budgeted() {
    on_big_stack(|| {
        let (_, traces) = testing::capture(|| deep(DEPTH - 1));
        assert_eq!(depth(traces[0].row()), DEPTH as usize);
        let config = shaping(Config::builder()).build().unwrap();
        let (_, traces) = testing::capture_with(&config, || deep(DEPTH - 1));
        assert_eq!(traces.len(), 1, "not dropped");
        assert_eq!(traces[0].row()["masked"], true);
        assert_eq!(depth(traces[0].row()), DEPTH as usize);
        // Dropped iteratively enough not to overflow here either.
        drop(traces);
    });
}

/// A trace whose output is JSON nested `depth` levels deep (as a client's request body
/// recorded raw can be, in a few bytes).
#[trace]
fn nested_output(depth: usize) -> usize {
    let text = "[".repeat(depth) + &"]".repeat(depth);
    let raw = serde_json::value::RawValue::from_string(text).unwrap();
    openlayer_trace::log_output(&raw);
    depth
}

/// Write-ahead with a mask: traces completed on threads with small stacks (2 MiB), whose
/// rows nest deeper than such a stack can parse. Masked on the worker instead (never a
/// stack overflow, which would abort the process); past what the worker can parse,
/// dropped and counted.
fn write_ahead_deep() {
    let server = openlayer_trace_tests::TestServer::start();
    let dir = temp_dir("deep-write-ahead-spool");
    let config = Config::builder()
        .api_key("sk-deep")
        .base_url(server.url())
        .inference_pipeline_id("pipe-deep")
        .spool_dir(&dir)
        .spool_mode(openlayer_trace::SpoolMode::WriteAhead)
        .mask(|row| {
            row.insert("masked".into(), true.into());
        })
        .build()
        .unwrap();
    let guard = openlayer_trace::init(config).unwrap();
    for depth in [10, 8_000, 40_000] {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || nested_output(depth))
            .unwrap()
            .join()
            .unwrap();
    }
    let s = guard.shutdown(Duration::from_secs(30)).unwrap().stats;
    assert_eq!(s.sent, 2, "{s:?}");
    assert_eq!(s.dropped.encoding, 1, "{s:?}");
    // Read as text: serde_json's parser stops at 128 levels.
    let masked: usize = server
        .requests()
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.body)
                .matches("\"masked\":true")
                .count()
        })
        .sum();
    assert_eq!(masked, 2);
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    if scenario == "write_ahead_deep" {
        return write_ahead_deep();
    }
    let file = temp_dir(&format!("deep-{scenario}")).join("traces.jsonl");
    let mut b = Config::builder().trace_file(&file);
    if scenario == "shaped" {
        b = shaping(b);
    }
    let guard = openlayer_trace::init(b.build().unwrap()).unwrap();
    on_big_stack(|| deep(DEPTH - 1));
    let s = guard.shutdown(Duration::from_secs(30)).unwrap().stats;
    assert_eq!(s.written, 1, "{s:?}");
    // The line reads back (as `openlayer push` reads it), on a big stack too.
    let text = std::fs::read_to_string(&file).unwrap();
    on_big_stack(move || {
        let line: LocalLine = text.trim().parse().unwrap();
        let LocalLine::Stream { rows, .. } = line else {
            panic!("a data-stream line")
        };
        assert_eq!(depth(&Value::Object(rows[0].clone())), DEPTH as usize);
    });
}

#[test]
fn deep_rows_are_masked_where_the_stack_holds_them() {
    child::run("write_ahead_deep", &[]);
}

#[test]
fn the_worker_writes_a_deep_trace() {
    child::run("plain", &[]);
}

#[test]
fn the_worker_writes_a_deep_trace_with_a_mask_and_budget() {
    child::run("shaped", &[]);
}

/// Wide trees: steps recorded in one order and started in the other (model calls added
/// back-dated, newest first) come out in start order, equal starts in recording order,
/// also past the point where the encoder sorts the lists instead of walking them.
#[test]
fn back_dated_steps_recorded_newest_first_come_out_in_start_order() {
    use openlayer_trace::{ChatCompletion, add_chat_completion_step};
    use std::time::{Duration, SystemTime};
    for n in [5usize, 2_000] {
        let (_, traces) = testing::capture(|| {
            let _root = openlayer_trace::step("replay").enter();
            let base = SystemTime::now() - Duration::from_secs(3_600);
            for i in (0..n).rev() {
                // Two calls per start time, the second recorded after the first.
                let start = base + Duration::from_millis((i / 2) as u64);
                add_chat_completion_step(ChatCompletion {
                    name: Some(format!("call-{i}")),
                    start_time: Some(start),
                    latency: Some(Duration::from_millis(1)),
                    ..ChatCompletion::new("OpenAI", "gpt-4o")
                });
            }
        });
        let names: Vec<String> = traces[0].root()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        // Within a start time, recording order: the odd index (recorded first) first.
        let expected: Vec<String> = (0..n)
            .map(|k| {
                let pair = k / 2;
                let i = if k % 2 == 0 { 2 * pair + 1 } else { 2 * pair };
                format!("call-{}", i.min(n - 1))
            })
            .collect();
        assert_eq!(names.len(), n);
        assert_eq!(names, expected, "{n} steps");
    }
}
