//! A library instrumented with `openlayer-trace`, built with its default features off:
//! the code below is what a library author writes, and it must compile, and behave as if
//! it were not annotated, when the application does not turn `enable` on.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use openlayer_trace::{TraceStreamExt, step, trace, update_current_step, update_current_trace};

/// A value that is not `Serialize`: `#[trace]`, enabled, would need `skip_output` to
/// return it; compiled out, the function is left as written.
#[derive(Debug, PartialEq, Eq)]
pub struct Opaque(pub u32);

/// A traced synchronous function.
#[trace(kind = "retriever", skip(limit))]
pub fn retrieve(question: &str, limit: usize) -> Vec<String> {
    update_current_trace!(inference_id = format!("q-{question}"), user_id = "u-1");
    update_current_step!(model = "none", "custom key" = limit);
    vec![format!("doc about {question}"); limit]
}

/// A traced function returning a value that is not `Serialize`.
#[trace]
pub fn opaque(n: u32) -> Opaque {
    Opaque(n * 2)
}

/// A traced `async fn` that returns a `Result`.
#[trace(name = "answer", kind = "chat_completion")]
pub async fn answer(question: String) -> Result<String, String> {
    if question.is_empty() {
        return Err("empty question".into());
    }
    let docs = retrieve(&question, 2);
    Ok(format!("{} ({} docs)", question.to_uppercase(), docs.len()))
}

/// A stream of string tokens, by hand (no stream library).
#[derive(Debug)]
pub struct Tokens(pub Vec<&'static str>);

impl Stream for Tokens {
    type Item = &'static str;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<&'static str>> {
        Poll::Ready(if self.0.is_empty() {
            None
        } else {
            Some(self.0.remove(0))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.0.len()))
    }
}

/// A traced function returning `impl Stream`.
#[trace]
pub fn stream_tokens(words: Vec<&'static str>) -> impl Stream<Item = &'static str> {
    Tokens(words)
}

/// A traced function returning a boxed stream (`#[trace(stream)]`).
#[trace(stream, name = "boxed tokens")]
pub fn boxed_tokens(words: Vec<&'static str>) -> Pin<Box<dyn Stream<Item = &'static str> + Send>> {
    Box::pin(Tokens(words).traced("inner"))
}

/// A step made by hand, around a closure.
pub fn by_hand(x: u64) -> u64 {
    step("by hand")
        .inputs(&serde_json::json!({ "x": x }))
        .metadata("unit", "ms")
        .in_scope(|| x + 1)
}
