//! Bounded traces: at most `max_steps_per_trace` steps (the rest counted, the trace
//! marked), open traces' steps counted against `queue_max_bytes`, and a root held open by
//! a spawned loop that never ends shown in `Stats` and warned about.

use std::sync::mpsc;
use std::time::Duration;

use openlayer_trace::{Config, TraceIteratorExt, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results, temp_dir, wait_until};
use openlayer_trace_tests::logs::Capture;

#[trace]
fn leaf(i: u32) -> u32 {
    i
}

#[trace]
fn wide(n: u32) -> u32 {
    (0..n).map(leaf).sum()
}

#[trace]
fn heavy(blob: String) -> usize {
    blob.len()
}

#[trace]
fn many_heavy(n: usize) -> usize {
    (0..n).map(|_| heavy("x".repeat(4096))).sum()
}

/// A step past the limit: what it logs, and the steps it makes, must not land on its
/// parent.
/// Counts how many times it is serialized.
struct Counted;

static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl serde::Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.serialize_unit()
    }
}

#[trace]
fn takes_counted(c: Counted) -> u8 {
    let _ = c;
    1
}

#[trace]
fn refused_child() -> &'static str {
    // Nothing made here is recorded: not said to be, and no input written.
    assert!(!openlayer_trace::is_recording());
    takes_counted(Counted);
    assert_eq!(SERIALIZED.load(std::sync::atomic::Ordering::SeqCst), 0);
    openlayer_trace::log_output(&"the refused step's output");
    openlayer_trace::update_current_step!(refused_key = "refused");
    openlayer_trace::log_context(&["refused document"]);
    leaf(99);
    "refused"
}

#[trace]
async fn refused_async_child() -> u32 {
    openlayer_trace::log_output(&"the refused future's output");
    tokio::task::yield_now().await;
    leaf(98)
}

#[trace]
fn refused_stream_item(i: u32) -> u32 {
    i
}

/// Four children fill a trace of five steps; the fifth (sync, async, a stream) is refused.
#[trace]
async fn parent_of_refused() -> &'static str {
    for i in 0..4 {
        leaf(i);
    }
    refused_child();
    refused_async_child().await;
    let items: Vec<u32> = (0..2)
        .map(refused_stream_item)
        .traced("refused stream")
        .collect();
    assert_eq!(items, [0, 1]);
    "parent"
}

/// A root too large for the memory bound: the steps it makes are not traces of their own.
#[trace]
fn heavy_root(blob: String) -> usize {
    // No row will carry it: no id, and an update made here goes on its own.
    update_current_trace!(inference_id = "refused-root");
    assert_eq!(openlayer_trace::current_inference_id(), None);
    openlayer_trace::update_row("refused-root", serde_json::json!({"label": 1}), None);
    leaf(1);
    openlayer_trace::thread::spawn(|| leaf(2)).join().unwrap();
    blob.len()
}

#[trace]
fn big_output(i: u32) -> String {
    format!("{i}").repeat(4000)
}

/// Ten outputs of 4,000 bytes, then an unrelated trace on a thread of its own, while this
/// one is still open.
#[trace]
fn outputs_root() -> usize {
    let total: usize = (0..10).map(|i| big_output(i).len()).sum();
    std::thread::spawn(|| leaf(7)).join().unwrap();
    total
}

/// Sets an empty inference id, which is ignored with a warning.
#[trace]
fn empty_inference_id() -> u8 {
    update_current_trace!(inference_id = "");
    1
}

/// A root that hands its trace to a thread looping forever: it never completes.
#[trace(skip(stop))]
fn starts_a_worker(stop: mpsc::Receiver<()>) -> u8 {
    openlayer_trace::thread::spawn(move || {
        let _ = stop.recv();
    });
    1
}

/// Ends the loop [`starts_a_worker`] started, and waits for its trace to complete.
fn end_the_loop(stop: mpsc::Sender<()>, guard: &openlayer_trace::Guard) {
    stop.send(()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || guard
        .stats()
        .open_traces
        == 0));
}

fn config(file: &std::path::Path) -> openlayer_trace::ConfigBuilder {
    Config::builder()
        .trace_file(file)
        .max_steps_per_trace(5)
        .open_trace_warn_after(Duration::from_millis(50))
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    let file = temp_dir(&format!("bounded-{scenario}")).join("traces.jsonl");
    match scenario.as_str() {
        "max_steps" => {
            let guard = openlayer_trace::init(config(&file).build().unwrap()).unwrap();
            wide(20);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            report(&[("steps_dropped", s.steps_dropped.to_string())]);
            assert_eq!(s.steps_dropped, 16, "{s:?}");
            let text = std::fs::read_to_string(&file).unwrap();
            let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            let row = &line["rows"][0];
            assert_eq!(row["stepsDropped"], 16, "{row}");
            assert_eq!(row["steps"][0]["steps"].as_array().unwrap().len(), 4);
        }
        "refused" => {
            let guard = openlayer_trace::init(config(&file).build().unwrap()).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(rt.block_on(parent_of_refused()), "parent");
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            // Refused: the sync child and its two steps, the future and its leaf, the
            // stream and the two steps made while producing its items.
            assert_eq!(s.steps_dropped, 8, "{s:?}");
            let text = std::fs::read_to_string(&file).unwrap();
            let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            let row = &line["rows"][0];
            assert_eq!(row["stepsDropped"], 8, "{row}");
            assert_eq!(row["output"], "parent", "{row}");
            // The row's column is the trace's, kept; the step's metadata is not.
            assert_eq!(
                row["context"],
                serde_json::json!(["refused document"]),
                "{row}"
            );
            let root = &row["steps"][0];
            assert_eq!(root["output"], "parent", "{root}");
            assert!(root["metadata"].get("refused_key").is_none(), "{root}");
            assert!(root["metadata"].get("context").is_none(), "{root}");
            let children = root["steps"].as_array().unwrap();
            let names: Vec<&str> = children
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["leaf"; 4], "{root}");
            for (i, c) in children.iter().enumerate() {
                assert_eq!(c["output"], i, "{c}");
                assert!(c["steps"].as_array().is_none_or(|s| s.is_empty()), "{c}");
            }
            report(&[("steps_dropped", s.steps_dropped.to_string())]);
        }
        "refused_root" => {
            // Open traces may hold 16 KiB: a root with 20 KiB of inputs is refused.
            let config = config(&file).queue_max_bytes(64 * 1024).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            assert_eq!(heavy_root("x".repeat(20 * 1024)), 20 * 1024);
            leaf(3);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.steps_dropped, 3, "{s:?}");
            assert_eq!(s.written, 2, "the trace of leaf(3) and the update: {s:?}");
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            let rows: Vec<&serde_json::Value> =
                lines.iter().filter(|l| l.get("rows").is_some()).collect();
            assert_eq!(rows.len(), 1, "{text}");
            assert_eq!(rows[0]["rows"][0]["output"], 3, "{text}");
            assert!(
                text.contains("refused-root") && text.contains("\"label\":1"),
                "the update made inside the refused root is kept: {text}"
            );
            report(&[("steps_dropped", s.steps_dropped.to_string())]);
        }
        "memory" => {
            // 64 KiB: open traces may hold 16 KiB, 3 steps of 4 KiB.
            let config = config(&file)
                .max_steps_per_trace(10_000)
                .queue_max_bytes(64 * 1024)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            many_heavy(20);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            report(&[("steps_dropped", s.steps_dropped.to_string())]);
            assert!(s.steps_dropped >= 10, "{s:?}");
            assert_eq!(s.written, 1, "the trace is still delivered: {s:?}");
        }
        "open" => {
            let logs = Capture::install();
            let guard = openlayer_trace::init(config(&file).build().unwrap()).unwrap();
            let (stop, rx) = mpsc::channel();
            starts_a_worker(rx);
            assert!(wait_until(Duration::from_secs(10), || {
                let s = guard.stats();
                s.open_traces == 1 && s.oldest_open_trace_age >= Duration::from_millis(60)
            }));
            // Traces keep starting (the oldest open one is looked for every 64th in a
            // thread's shard, and when stats are read): the old one is named in a warning.
            for i in 0..64 {
                leaf(i);
            }
            let text = logs.text();
            assert!(
                text.lines()
                    .any(|l| l.contains("WARN") && l.contains("open for a long time")),
                "{text}"
            );
            let s = guard.flush(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 64, "{s:?}");
            // The loop ends: the trace completes and is written.
            end_the_loop(stop, &guard);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 65, "{s:?}");
            assert_eq!(s.oldest_open_trace_age, Duration::ZERO);
        }
        "outputs" => {
            // 64 KiB: open traces may hold 16 KiB, about three outputs of 4,000 bytes.
            let config = config(&file)
                .max_steps_per_trace(10_000)
                .queue_max_bytes(64 * 1024)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            assert_eq!(outputs_root(), 40_000);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.steps_dropped, 0, "{s:?}");
            assert_eq!(s.written, 2, "{s:?}");
            let text = std::fs::read_to_string(&file).unwrap();
            let rows: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rows"][0].clone())
                .collect();
            // The unrelated trace started while the first held what it may: recorded.
            assert_eq!(rows[0]["output"], 7, "{}", rows[0]);
            let outputs: Vec<&str> = rows[1]["steps"][0]["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["output"].as_str().unwrap())
                .collect();
            assert_eq!(outputs.len(), 10);
            let kept = outputs.iter().filter(|o| o.len() == 4000).count();
            assert!((2..=4).contains(&kept), "{kept} outputs kept");
            for (i, o) in outputs.iter().enumerate() {
                if i < kept {
                    assert_eq!(*o, format!("{i}").repeat(4000));
                } else {
                    assert_eq!(
                        *o,
                        "…[4002 bytes left out: traces still open hold the most memory queue_max_bytes allows them]"
                    );
                }
            }
            report(&[("kept", kept.to_string())]);
        }
        "correlating_logs" => {
            // A subscriber that calls back into the SDK at every event: the SDK's warnings
            // are emitted with no trace's lock held and the trace current, so that the
            // callback sees the trace (and could never take its lock again on this
            // thread). A hang fails the scenario here.
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(30));
                eprintln!("the scenario hung");
                std::process::exit(3);
            });
            let logs = Capture::install_correlating();
            let guard = openlayer_trace::init(config(&file).build().unwrap()).unwrap();
            let (stop, rx) = mpsc::channel();
            starts_a_worker(rx);
            assert!(wait_until(Duration::from_secs(10), || {
                guard.stats().oldest_open_trace_age >= Duration::from_millis(60)
            }));
            // The oldest open trace is looked for while the 64th root in a shard opens.
            for i in 0..64 {
                leaf(i);
            }
            empty_inference_id();
            let text = logs.text();
            assert!(
                text.lines().any(|l| l.contains("open for a long time")),
                "{text}"
            );
            let warning = text
                .lines()
                .find(|l| l.contains("empty inference id"))
                .unwrap_or_else(|| panic!("no warning: {text}"));
            assert!(
                warning.contains("inference_id=") && !warning.contains("inference_id=none"),
                "the warning is emitted in the trace, which the subscriber sees: {warning}"
            );
            end_the_loop(stop, &guard);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 66, "{s:?}");
            report(&[("written", s.written.to_string())]);
        }
        "stream_output" => {
            // Requests of 16 KiB: a stream keeps 2 KiB of output.
            let config = config(&file).batch_max_bytes(16 * 1024).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            // Text: 1,000 items of 100 bytes. 20 fit whole; the 21st is cut at 2,048
            // bytes; it and the 979 after it are counted.
            let pieces = (0..1000).map(|i| format!("{i:0>100}"));
            let joined: usize = pieces.traced("tokens").map(|p| p.len()).sum();
            assert_eq!(joined, 100_000, "every item still reaches the consumer");
            // A list: 2,000 numbers of 6 digits, 7 bytes each with the comma. 292 fit;
            // the 293rd would pass 2,048 bytes and is left out, with the 1,707 after it.
            let numbers = (100_000..102_000u32).traced("numbers");
            assert_eq!(numbers.count(), 2000);
            // Optional pieces: a `None` is skipped while joining, and not counted as cut.
            let optional = (0..100).map(|i| (i % 2 == 0).then(|| format!("{i:0>100}")));
            assert_eq!(optional.traced("optional").count(), 100);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 3, "{s:?}");
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines() {
                assert!(
                    line.len() < 16 * 1024,
                    "each row fits a request: {}",
                    line.len()
                );
            }
            let rows: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rows"][0].clone())
                .collect();
            let tokens = rows[0]["output"].as_str().unwrap();
            let kept: String = (0..21).map(|i| format!("{i:0>100}")).collect();
            assert_eq!(tokens, format!("{}…[truncated 980 items]", &kept[..2048]));
            let list = rows[1]["output"].as_array().unwrap();
            assert_eq!(list.len(), 293, "the kept items and the marker");
            assert_eq!(list[0], 100_000);
            assert_eq!(list[291], 100_291);
            assert_eq!(list[292], "…[truncated 1708 items]");
            // 50 pieces of 100 bytes: 20 whole, the 21st cut, 29 more counted.
            let optional = rows[2]["output"].as_str().unwrap();
            assert!(
                optional.ends_with("…[truncated 30 items]"),
                "{}",
                &optional[2000..]
            );
            report(&[("tokens", tokens.len().to_string())]);
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn run(scenario: &str) {
    let out = child::run(scenario, &[]);
    eprintln!("{scenario}: {:?}", results(&out));
}

#[test]
fn steps_beyond_max_steps_per_trace_are_counted_and_marked() {
    run("max_steps");
}

#[test]
fn what_a_refused_step_logs_and_makes_stays_out_of_its_parent() {
    run("refused");
}

#[test]
fn the_steps_of_a_refused_root_are_not_traces_of_their_own() {
    run("refused_root");
}

#[test]
fn open_traces_steps_count_against_queue_max_bytes() {
    run("memory");
}

#[test]
fn a_root_held_open_by_a_spawned_loop_is_shown_and_warned_about() {
    run("open");
}

#[test]
fn outputs_past_the_open_traces_bound_are_left_out_and_other_traces_still_recorded() {
    run("outputs");
}

#[test]
fn warnings_reach_a_subscriber_that_calls_back_into_the_sdk() {
    run("correlating_logs");
}

#[test]
fn a_streams_output_is_bounded_and_marked() {
    run("stream_output");
}
