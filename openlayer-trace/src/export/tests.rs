//! The budget's shares and what a queued trace counts in it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;

use crate::export::budget::{Budget, Tier};
use crate::export::protocol::queued_trace_bytes;
use crate::record::CompletedTrace;
use crate::record::kind::StepKind;
use crate::record::{NO_PARENT, StepRecord, TraceState};
use crate::util::heap::heap_bytes;

/// Counts, per thread, the heap bytes live allocations take (`heap_bytes` of each
/// allocation's size), so that a test can compare an estimate with what was allocated.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: usize, sign: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + sign * heap_bytes(bytes) as isize));
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// A trace like the ones traced code hands off: reused buffers of the usual sizes, a
/// root with two arguments and three children, a few metadata keys, kind fields, an
/// error, an owned name, trace columns and an inference id.
fn representative_trace() -> Box<CompletedTrace> {
    let json = |s: &str| -> Box<str> { Box::from(s) };
    let mut state = TraceState {
        steps: Vec::with_capacity(8),
        text: String::with_capacity(512),
        ..TraceState::default()
    };
    let mut root = StepRecord::new(Cow::Borrowed("handle"), StepKind::UserCall, NO_PARENT, 0);
    root.traced_fn = true;
    root.inputs = state.push_text(r#"{"request_id":42,"text":"What is the capital of France?"}"#);
    root.output = state.push_text(r#""score=150""#);
    root.set_metadata(Cow::Borrowed("tenant"), json(r#""acme""#));
    state.steps.push(root);
    for (i, name) in ["tokenize", "score", "render"].into_iter().enumerate() {
        let mut step = StepRecord::new(Cow::Borrowed(name), StepKind::UserCall, 0, 10 * i as i64);
        step.traced_fn = true;
        step.inputs = state.push_text(r#"{"tokens":50,"bias":0}"#);
        step.output = state.push_text("150");
        step.end = 10 * i as i64 + 5;
        state.steps.push(step);
    }
    let mut chat = StepRecord::new(
        Cow::Owned(format!("chat-{}", 7)),
        StepKind::ChatCompletion,
        0,
        40,
    );
    chat.set_field("model", json(r#""gpt-4o-mini""#));
    chat.set_field("promptTokens", json("120"));
    chat.set_field("completionTokens", json("18"));
    chat.set_metadata(Cow::Owned("attempt".to_string()), json("2"));
    chat.extra_mut().error = Some(Box::from("rate limited, retried"));
    state.steps.push(chat);
    state.inference_id = Some(Box::from("chat-user-17-1700000000"));
    state
        .extra_mut()
        .columns
        .push((Cow::Borrowed("user_id"), json(r#""user-17""#)));
    state.extra_mut().context = Some(json(r#"["Paris is the capital of France."]"#));
    Box::new(CompletedTrace {
        state,
        anchor_unix_ns: 0,
    })
}

#[test]
fn a_queued_trace_is_not_counted_below_what_it_holds() {
    let before = live();
    let trace = representative_trace();
    let held = (live() - before) as usize;
    let counted = queued_trace_bytes(&trace);
    // Not below what it holds, and not far above it either.
    assert!(counted >= held, "counted {counted} < held {held}");
    assert!(counted <= held + held / 4, "counted {counted}, held {held}");
    drop(trace);
    assert_eq!(live(), before);
}

#[test]
fn heap_bytes_follow_the_allocator() {
    assert_eq!(heap_bytes(0), 0);
    assert_eq!(heap_bytes(1), 32);
    assert_eq!(heap_bytes(24), 32);
    assert_eq!(heap_bytes(25), 48);
    assert_eq!(heap_bytes(512), 528);
}

/// The worker's freed queue bytes reach the budget a group at a time, when the drain
/// settles, and when dropped; none is lost or counted twice.
#[test]
fn freed_queue_bytes_are_given_back_in_groups_and_at_settle() {
    use crate::export::budget::Freed;
    let budget = std::sync::Arc::new(Budget::new(1 << 20));
    assert!(budget.reserve(200 * 10, Tier::Queue));
    let mut freed = Freed::new(budget.clone());
    for _ in 0..63 {
        freed.add(10);
    }
    // Not yet: fewer than a group.
    assert_eq!(budget.used(), 2000);
    freed.add(10);
    assert_eq!(budget.used(), 2000 - 640);
    freed.add(10);
    freed.settle();
    assert_eq!(budget.used(), 2000 - 650);
    freed.settle();
    assert_eq!(budget.used(), 2000 - 650);
    for _ in 0..5 {
        freed.add(10);
    }
    drop(freed);
    assert_eq!(budget.used(), 2000 - 700);
}

#[test]
fn each_stage_fills_only_its_share_of_the_budget() {
    let budget = Budget::new(8 * 1024);
    let fill = |tier| {
        let mut n = 0;
        while budget.reserve(16, tier) {
            n += 16;
        }
        n
    };
    // The queue takes half (its last sixteenth of the budget for row updates only), the
    // worker's rows three eighths, traced code's overflow half of the spool writer's
    // eighth and the worker's rows to the spool the rest.
    assert_eq!(fill(Tier::Queue), 4 * 1024 - 512);
    assert_eq!(fill(Tier::QueueOver), 512);
    assert_eq!(fill(Tier::Worker), 3 * 1024);
    assert_eq!(fill(Tier::Overflow), 512);
    assert_eq!(fill(Tier::Spool), 512);
    assert_eq!(budget.used(), budget.limit());
    // Room freed in one share is not open to another.
    budget.release(1024, Tier::Worker);
    assert!(!budget.reserve(16, Tier::Queue));
    assert!(!budget.reserve(16, Tier::QueueOver));
    assert!(!budget.reserve(16, Tier::Spool));
    assert!(budget.reserve(1024, Tier::Worker));
    assert!(!budget.reserve(16, Tier::Worker));
    budget.release(512, Tier::Spool);
    assert!(!budget.reserve(16, Tier::Overflow));
    assert!(budget.reserve(512, Tier::Spool));
    // At the shutdown deadline, rows the worker held move to the writer whatever its
    // share holds (the worker gave them back from its own), in the writer's count.
    budget.release(3 * 1024, Tier::Worker);
    assert!(budget.reserve(3 * 1024, Tier::SpoolAtShutdown));
    assert!(!budget.reserve(16, Tier::Spool));
    assert_eq!(budget.used(), budget.limit());
}

#[test]
fn alongside_the_data_stream_otlp_fills_its_own_half_of_the_worker_share() {
    let budget = Budget::with_otlp_alongside(8 * 1024);
    let fill = |tier| {
        let mut n = 0;
        while budget.reserve(16, tier) {
            n += 16;
        }
        n
    };
    // The spans fill their half, and the rows still have theirs.
    assert_eq!(fill(Tier::Otlp), 3 * 512);
    assert_eq!(fill(Tier::Worker), 3 * 512);
    assert_eq!(fill(Tier::Queue), 4 * 1024 - 512);
    assert_eq!(fill(Tier::QueueOver), 512);
    assert_eq!(fill(Tier::Spool), 1024);
    assert_eq!(budget.used(), budget.limit());
    budget.release(3 * 512, Tier::Otlp);
    assert!(!budget.reserve(16, Tier::Worker));
    // Spans only, the whole worker share is theirs.
    let budget = Budget::new(8 * 1024);
    assert!(budget.reserve(3 * 1024, Tier::Otlp));
    assert!(!budget.reserve(1, Tier::Otlp));
}
