//! With `enable` off, the annotated library behaves as if it were not annotated, and every
//! call of the tracing API is a no-op that returns what a disabled SDK returns.

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use openlayer_trace::stream::{Accumulator, Collect, Discard};
use openlayer_trace::{
    ChatCompletion, Config, FutureExt, StepHandle, StepKind, TraceContext, TraceIteratorExt,
    TraceStreamExt, UserSession, add_chat_completion_step, current_context, current_inference_id,
    enter_user_session, flush, init, init_from_env, log_context, log_output, log_question, stats,
    step, trace, update_current_step, update_current_trace, update_row, with_user_session,
};
use openlayer_trace_compile_out_tests::{
    Opaque, Tokens, answer, boxed_tokens, by_hand, opaque, retrieve, stream_tokens,
};

/// Polls `f` to completion on this thread (no runtime: none is in the dependency graph).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Every item of `s`.
fn collect<S: Stream>(s: S) -> Vec<S::Item> {
    let mut s = pin!(s);
    let mut out = Vec::new();
    block_on(std::future::poll_fn(|cx| {
        loop {
            match s.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => out.push(item),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }));
    out
}

#[test]
fn traced_functions_return_what_they_compute() {
    assert_eq!(
        retrieve("paris", 2),
        vec!["doc about paris", "doc about paris"]
    );
    assert_eq!(opaque(2), Opaque(4));
    assert_eq!(block_on(answer("hi".into())), Ok("HI (2 docs)".into()));
    assert_eq!(
        block_on(answer(String::new())),
        Err("empty question".into())
    );
    assert_eq!(by_hand(41), 42);
}

#[test]
fn no_trace_is_ever_current() {
    #[trace]
    fn inside() -> (Option<String>, bool) {
        update_current_trace!(inference_id = "req-1");
        (current_inference_id(), TraceContext::current().is_some())
    }
    assert_eq!(inside(), (None, false));
    assert_eq!(current_inference_id(), None);
    assert!(current_context().is_none());
}

#[test]
fn update_macros_never_evaluate_their_values() {
    let evaluated = Cell::new(0);
    let value = || {
        evaluated.set(evaluated.get() + 1);
        "v"
    };
    #[trace]
    fn traced(f: &dyn Fn() -> &'static str) {
        update_current_trace!(user_id = f(), "session id" = f());
        update_current_step!(model = f());
    }
    traced(&value);
    update_current_trace!(user_id = value());
    assert_eq!(evaluated.get(), 0);
}

#[test]
fn traced_streams_are_the_streams_themselves() {
    assert_eq!(collect(stream_tokens(vec!["Hel", "lo"])), ["Hel", "lo"]);
    assert_eq!(collect(boxed_tokens(vec!["a", "b", "c"])), ["a", "b", "c"]);

    let traced = Tokens(vec!["x", "y"]).traced("model stream");
    assert!(!traced.is_recording());
    // A zero-cost wrapper: the size of the inner stream, its size hint kept.
    assert_eq!(size_of_val(&traced), size_of::<Tokens>());
    assert_eq!(traced.size_hint(), (2, Some(2)));
    assert_eq!(collect(traced), ["x", "y"]);
}

#[test]
fn results_pass_through_errors_included() {
    let items = [Ok("ok"), Err("bad".to_string())];
    let traced: Vec<_> = items.clone().into_iter().try_traced("results").collect();
    assert_eq!(traced, items);
}

#[test]
fn traced_iterators_keep_their_items_and_traits() {
    let words = ["a", "b", "c"].into_iter().traced("words");
    assert_eq!(words.len(), 3);
    assert_eq!(words.rev().collect::<Vec<_>>(), ["c", "b", "a"]);

    /// An accumulator that counts what it is given: compiled out, it is never called.
    struct Count<'a>(&'a Cell<u32>);
    impl<T> Accumulator<T> for Count<'_> {
        fn push(&mut self, _: &T, _: &mut StepHandle) {
            self.0.set(self.0.get() + 1);
        }
        fn finish(&mut self, _: &mut StepHandle) {
            self.0.set(self.0.get() + 100);
        }
    }
    let calls = Cell::new(0);
    let builder = step("chat").kind(StepKind::ChatCompletion);
    let sum: u32 = [1, 2, 3]
        .into_iter()
        .traced_with(builder, Count(&calls))
        .sum();
    assert_eq!((sum, calls.get()), (6, 0));

    let n = (0..4).traced_with(step("discard"), Discard).count();
    let m = ["x"]
        .into_iter()
        .traced_with(step("collect"), Collect::new())
        .count();
    assert_eq!((n, m), (4, 1));
}

#[test]
fn init_and_flush_succeed_and_deliver_nothing() {
    let config = Config::builder()
        .api_key("sk-test")
        .inference_pipeline_id("pipeline-1")
        .build()
        .unwrap();
    let guard = init(config).unwrap();
    retrieve("q", 1);
    let report = guard.flush(Duration::from_secs(1)).unwrap();
    assert!(report.complete);
    assert_eq!(report.stats, Default::default());
    assert_eq!(guard.stats(), Default::default());
    assert!(flush(Duration::ZERO).unwrap().complete);
    assert_eq!(stats(), Default::default());
    assert!(
        block_on(guard.shutdown_async(Duration::ZERO))
            .unwrap()
            .complete
    );
    let guard = init_from_env().unwrap();
    assert!(guard.shutdown(Duration::ZERO).unwrap().complete);
}

#[test]
fn manual_steps_record_nothing() {
    let mut handle = step("manual").inputs(&[1, 2]).start();
    assert!(!handle.is_recording());
    assert!(handle.context().is_none());
    assert_eq!(handle.in_scope(|| 7), 7);
    {
        let _entered = handle.enter();
        log_output(&"out");
    }
    handle.output(&"done");
    handle.exception(&"a retried error");
    handle.error(&"failed");
    handle.metadata("k", &1);
    assert_eq!(handle.with_inference_id(str::len), None);
    assert_eq!(handle.inference_id(), None);
    handle.finish();
    assert!(!StepHandle::disabled().is_recording());

    let mut guard = step("guard").enter();
    assert!(!guard.is_recording());
    guard.output(&1);
    guard.metadata("k", &"v");
    drop(guard);

    // Futures are Debug whatever they wrap, as with tracing compiled in.
    let fut = step("fut").instrumented(async { 5 });
    assert!(format!("{fut:?}").starts_with("Instrumented"));
    let (out, finisher) = block_on(fut);
    assert_eq!(out, 5);
    assert!(!finisher.is_recording());
    assert_eq!(block_on(step("run").run(async { 6 })), 6);
    assert_eq!(block_on(step("instrument").instrument(async { 7 })), 7);
    assert_eq!(block_on(step("root").root().run(async { 8 })), 8);
}

#[test]
fn annotations_and_propagation_pass_through() {
    log_context(&["doc"]);
    log_question(&"q");
    update_current_trace(serde_json::Map::new());
    update_current_step(serde_json::Map::new());
    update_row("req-1", serde_json::json!({"converted": true}), None);
    add_chat_completion_step(ChatCompletion::new("OpenAI", "gpt-4o"));
    assert_eq!(current_inference_id(), None);

    assert_eq!(block_on(async { 1 }.in_current_trace()), 1);
    let fut = async { 2 }.with_trace_context(None);
    assert!(format!("{fut:?}").starts_with("WithTrace"));
    assert_eq!(block_on(fut), 2);
    assert_eq!(openlayer_trace::thread::spawn(|| 3).join().unwrap(), 3);
    let session = UserSession::new().user_id("u").session_id("s");
    assert_eq!(block_on(session.scope(async { 4 })), 4);
    let fut = with_user_session("u", "s", async { 5 });
    assert!(format!("{fut:?}").starts_with("WithUserSession"));
    assert_eq!(block_on(fut), 5);
    let _scope = enter_user_session("u", "s");
    let _entered = session.enter();
    assert_eq!(current_inference_id(), None);
}

/// The annotated function is the function as written: a pointer to it is an ordinary
/// `fn` item of the declared signature, with nothing wrapped around its body.
#[test]
fn the_attribute_leaves_the_signature_as_written() {
    let f: fn(u32) -> Opaque = opaque;
    assert_eq!(f(1), Opaque(2));
    let s: Pin<Box<dyn Stream<Item = &'static str> + Send>> = boxed_tokens(vec![]);
    assert_eq!(collect(s), Vec::<&str>::new());
}
