//! Panic-safe drops: a traced future, or a `WithTrace` future, whose inner future panics
//! while it is dropped still closes its step as cancelled and restores the thread's
//! position, so that later traces on the thread are their own.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use openlayer_trace::{FutureExt, current_context, current_inference_id, step, testing, trace};

struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("boom while dropping");
        }
    }
}

#[trace]
async fn holds_a_bomb() -> u8 {
    let _bomb = PanicOnDrop;
    std::future::pending::<()>().await;
    1
}

#[trace]
fn later(n: u8) -> u8 {
    n
}

fn poll_once<F: Future>(f: Pin<&mut F>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(f.poll(&mut cx), Poll::Pending));
}

#[test]
fn a_traced_future_that_panics_while_dropped_closes_its_step_as_cancelled() {
    let (_, traces) = testing::capture(|| {
        let mut fut = Box::pin(holds_a_bomb());
        poll_once(fut.as_mut());
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(fut)));
        assert!(dropped.is_err(), "the inner future's drop panicked");
        assert!(current_inference_id().is_none(), "no trace is left current");
        later(2)
    });
    assert_eq!(traces.len(), 2, "{traces:?}");
    let root = traces[0].root();
    assert_eq!(root["name"], "holds_a_bomb");
    assert_eq!(root["metadata"]["cancelled"], true);
    assert_eq!(traces[1].root()["name"], "later");
    assert_eq!(traces[1].steps().len(), 1);
}

#[test]
fn a_with_trace_future_that_panics_while_dropped_restores_the_position() {
    let (_, traces) = testing::capture(|| {
        let outer = step("outer").enter();
        let mut fut = Box::pin(
            async {
                let _bomb = PanicOnDrop;
                std::future::pending::<()>().await;
            }
            .with_trace_context(current_context()),
        );
        drop(outer);
        poll_once(fut.as_mut());
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(fut)));
        assert!(dropped.is_err(), "the inner future's drop panicked");
        assert!(current_inference_id().is_none(), "no trace is left current");
        later(3)
    });
    assert_eq!(traces.len(), 2, "{traces:?}");
    assert_eq!(traces[0].root()["name"], "outer");
    assert_eq!(traces[1].root()["name"], "later");
}
