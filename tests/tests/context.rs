//! The current trace and its step stack belong to the task (or thread): nesting holds
//! across `.await`, under `join!`, across worker threads, and into spawned work.

use std::time::Duration;

use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace::{
    FutureExt, current_context, trace, update_current_step, update_current_trace,
};
use serde_json::Value;

/// The tree as `name(child, child)` text, for compact assertions.
fn shape(step: &Value) -> String {
    let children: Vec<String> = step["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(shape)
        .collect();
    let name = step["name"].as_str().unwrap();
    if children.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", children.join(", "))
    }
}

fn tree(t: &CapturedTrace) -> String {
    shape(t.root())
}

#[trace]
fn leaf(n: u32) -> u32 {
    n + 1
}

#[trace]
fn middle(n: u32) -> u32 {
    leaf(n) + leaf(n + 10)
}

#[trace]
fn top(n: u32) -> u32 {
    middle(n) * 2
}

#[test]
fn nested_sync_calls() {
    let (out, traces) = testing::capture(|| top(1));
    assert_eq!(out, 28);
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "top(middle(leaf, leaf))");
    let t = &traces[0];
    assert_eq!(t.step("middle").unwrap()["inputs"]["n"], 1);
    assert_eq!(t.step("middle").unwrap()["output"], 14);
    // A child's times lie within its parent's.
    let (root, mid) = (t.root(), t.step("middle").unwrap());
    let time = |step: &serde_json::Value, key: &str| step[key].as_f64().unwrap();
    assert!(time(mid, "startTime") >= time(root, "startTime"));
    assert!(time(mid, "endTime") <= time(root, "endTime"));
}

#[test]
fn a_step_opened_in_a_completed_trace_is_not_recorded() {
    let (_, traces) = testing::capture(|| {
        // Another trace, kept open by a handle.
        let other = {
            let _g = openlayer_trace::step("other").enter();
            current_context().expect("inside a trace")
        };
        let root = openlayer_trace::step("root").enter();
        let attached = other.attach();
        // The root completes while the other trace is attached; detaching then restores
        // the position to the completed trace.
        drop(root);
        drop(attached);
        drop(openlayer_trace::step("late").enter());
        drop(other);
    });
    let roots: Vec<&str> = traces
        .iter()
        .map(|t| t.root()["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(roots.len(), 2, "{roots:?}");
    assert!(
        roots.contains(&"root") && roots.contains(&"other"),
        "{roots:?}"
    );
    assert!(traces.iter().all(|t| t.step("late").is_none()));
}

#[test]
fn sequential_roots_are_separate_traces() {
    let (_, traces) = testing::capture(|| {
        top(1);
        top(2);
        leaf(3)
    });
    assert_eq!(traces.len(), 3);
    assert_eq!(tree(&traces[0]), "top(middle(leaf, leaf))");
    assert_eq!(tree(&traces[2]), "leaf");
    assert_ne!(traces[0].inference_id(), traces[1].inference_id());
}

#[test]
fn sync_code_with_no_runtime_at_all() {
    let (_, traces) = std::thread::spawn(|| testing::capture(|| top(5)))
        .join()
        .unwrap();
    assert_eq!(tree(&traces[0]), "top(middle(leaf, leaf))");
}

#[trace]
async fn fetch(id: u32, delay_ms: u64) -> u32 {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    leaf(id)
}

#[trace]
async fn pipeline(id: u32) -> u32 {
    let a = fetch(id, 5).await;
    tokio::task::yield_now().await;
    let b = fetch(id + 1, 1).await;
    a + b
}

#[tokio::test]
async fn nested_async_calls_across_await() {
    let (out, traces) = testing::capture_async(pipeline(1)).await;
    assert_eq!(out, 5);
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "pipeline(fetch(leaf), fetch(leaf))");
    let f = traces[0].step("fetch").unwrap();
    assert!(
        f["latency"].as_f64().unwrap() >= 5.0,
        "latency is in ms: {}",
        f["latency"]
    );
}

#[trace]
async fn fan_out() -> u32 {
    // Started in order a, b, c; they finish in reverse order.
    let (a, b, c) = tokio::join!(named("a", 30), named("b", 15), named("c", 1));
    a + b + c
}

#[trace(name = "child")]
async fn named(label: &str, delay_ms: u64) -> u32 {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    label.len() as u32
}

#[tokio::test]
async fn join_of_traced_futures_keeps_start_order() {
    let (_, traces) = testing::capture_async(fan_out()).await;
    assert_eq!(traces.len(), 1);
    let children = traces[0].root()["steps"].as_array().unwrap().clone();
    let labels: Vec<&str> = children
        .iter()
        .map(|c| c["inputs"]["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["a", "b", "c"]);
}

#[trace]
async fn request(id: u32) -> u32 {
    update_current_trace!(inference_id = format!("req-{id}"), request = id);
    let mut total = 0;
    for i in 0..5 {
        // Each yield lets the scheduler move this task to another worker.
        tokio::task::yield_now().await;
        total += step_of(id, i).await;
    }
    total
}

#[trace]
async fn step_of(id: u32, i: u32) -> u32 {
    tokio::task::yield_now().await;
    std::thread::sleep(Duration::from_micros(50));
    update_current_step!(thread = format!("{:?}", std::thread::current().id()));
    id * 100 + i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_roots_on_a_multi_thread_runtime_do_not_mix() {
    let mut handles = Vec::new();
    for id in 0..200u32 {
        // Each root runs in its own task, captured separately.
        handles.push(tokio::spawn(testing::capture_async(request(id))));
    }
    let mut traces = Vec::new();
    for h in handles {
        traces.extend(h.await.unwrap().1);
    }
    assert_eq!(traces.len(), 200);
    let mut ids = std::collections::HashSet::new();
    let mut moved = 0;
    for t in &traces {
        let id = t.row()["request"].as_u64().unwrap() as u32;
        assert_eq!(t.inference_id(), format!("req-{id}"));
        assert_eq!(
            tree(t),
            "request(step_of, step_of, step_of, step_of, step_of)"
        );
        for (i, child) in t.root()["steps"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                child["inputs"]["id"], id,
                "a step of another trace leaked in"
            );
            assert_eq!(child["output"], id * 100 + i as u32);
        }
        ids.insert(t.inference_id().to_string());
        let threads: std::collections::HashSet<&str> = t.root()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["metadata"]["thread"].as_str().unwrap())
            .collect();
        moved += usize::from(threads.len() > 1);
    }
    assert_eq!(ids.len(), 200);
    assert!(
        moved > 0,
        "no task moved between worker threads; the test did not exercise migration"
    );
}

#[trace]
async fn parent_spawning() -> u32 {
    let a = openlayer_trace::spawn(fetch(1, 2)).await.unwrap();
    let b = tokio::spawn(fetch(2, 1).in_current_trace()).await.unwrap();
    a + b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_land_under_the_step_that_spawned_them() {
    let (_, traces) = testing::capture_async(parent_spawning()).await;
    assert_eq!(traces.len(), 1);
    assert_eq!(
        tree(&traces[0]),
        "parent_spawning(fetch(leaf), fetch(leaf))"
    );
}

/// The detached child's handle, taken by the test to wait for the child's end.
static DETACHED: std::sync::Mutex<Option<tokio::task::JoinHandle<u32>>> =
    std::sync::Mutex::new(None);

#[trace]
async fn parent_detaching() -> u32 {
    // The child outlives the parent's step: the trace waits for it. The parent keeps no
    // handle to it.
    let child = openlayer_trace::spawn(async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        leaf(7)
    });
    *DETACHED.lock().unwrap() = Some(child);
    1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_completes_when_spawned_work_finishes() {
    let (_, traces) = testing::capture_async(async {
        parent_detaching().await;
        let child = DETACHED.lock().unwrap().take().unwrap();
        // tokio drops a finished task's future (and with it the child's hold on the trace)
        // before it wakes the task's handle: an event, not a sleep.
        child.await.unwrap();
    })
    .await;
    assert_eq!(
        traces.len(),
        1,
        "one trace, shipped once the spawned child ended"
    );
    assert_eq!(tree(&traces[0]), "parent_detaching(leaf)");
}

#[trace]
async fn parent_with_detached_child() -> u32 {
    // Polled right here, inside the parent's step, yet in no trace: its own.
    fetch(3, 1).with_trace_context(None).await
}

#[tokio::test]
async fn a_future_with_no_context_runs_outside_any_trace() {
    let (_, mut traces) = testing::capture_async(parent_with_detached_child()).await;
    assert_eq!(traces.len(), 2, "the child is a trace of its own");
    traces.sort_by_key(tree);
    assert_eq!(tree(&traces[0]), "fetch(leaf)");
    assert_eq!(tree(&traces[1]), "parent_with_detached_child");
}

/// A sync step blocking on a current-thread runtime is current while the runtime polls
/// every task; tasks spawned with the helper outside any trace keep out of it.
#[test]
fn work_spawned_outside_a_trace_stays_out_of_a_blocking_step() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    #[trace(skip(rt))]
    fn blocking_handler(rt: &tokio::runtime::Runtime) -> u32 {
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            7
        })
    }
    let (_, mut traces) = testing::capture(|| {
        let background = {
            let _runtime = rt.enter();
            openlayer_trace::spawn(fetch(4, 10))
        };
        blocking_handler(&rt);
        rt.block_on(background).unwrap()
    });
    assert_eq!(traces.len(), 2, "the background task is a trace of its own");
    traces.sort_by_key(tree);
    assert_eq!(tree(&traces[0]), "blocking_handler");
    assert_eq!(tree(&traces[1]), "fetch(leaf)");
}

#[trace]
fn parent_with_threads() -> u32 {
    let a = openlayer_trace::thread::spawn(|| leaf(1));
    let ctx = current_context().unwrap();
    let b = std::thread::spawn(move || {
        let _attached = ctx.attach();
        middle(2)
    });
    a.join().unwrap() + b.join().unwrap()
}

#[test]
fn std_threads_carry_the_trace_with_a_helper_or_a_handle() {
    let (_, traces) = testing::capture(parent_with_threads);
    assert_eq!(traces.len(), 1);
    let t = tree(&traces[0]);
    assert!(
        t == "parent_with_threads(leaf, middle(leaf, leaf))"
            || t == "parent_with_threads(middle(leaf, leaf), leaf)",
        "{t}"
    );
}

#[test]
fn a_plain_thread_without_a_helper_starts_its_own_trace() {
    let (_, traces) = testing::capture(|| {
        #[trace]
        fn outer() -> u32 {
            std::thread::spawn(|| leaf(1)).join().unwrap()
        }
        outer()
    });
    // The plain thread has no capture and no trace: only `outer` is captured here.
    assert_eq!(traces.len(), 1);
    assert_eq!(tree(&traces[0]), "outer");
}

#[tokio::test(flavor = "current_thread")]
async fn interleaved_roots_on_one_thread_do_not_mix() {
    let (_, traces) = testing::capture_async(async {
        let a = request(1);
        let b = request(2);
        tokio::join!(a, b)
    })
    .await;
    assert_eq!(traces.len(), 2);
    for t in &traces {
        let id = t.row()["request"].as_u64().unwrap();
        for child in t.root()["steps"].as_array().unwrap() {
            assert_eq!(child["inputs"]["id"], id);
        }
    }
}
