//! What must compile: streams and iterators, boxed returns, and the row options.

use std::pin::Pin;

use futures_core::Stream;
use openlayer_trace::trace;
use serde::Serialize;

#[trace]
fn words<'a>(text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.split(' ')
}

#[trace]
fn results() -> impl Iterator<Item = Result<String, std::io::Error>> + Send {
    std::iter::once(Ok("a".to_string()))
}

#[trace(stream)]
fn boxed() -> Pin<Box<dyn Stream<Item = u32> + Send>> {
    Box::pin(Empty)
}

#[trace(stream)]
fn local_boxed<'a>(s: &'a str) -> Pin<Box<dyn Stream<Item = &'a str> + 'a>> {
    let _ = s;
    Box::pin(Empty2(std::marker::PhantomData))
}

#[trace(skip_output)]
async fn later<T: Serialize + Send + 'static>(items: Vec<T>) -> impl Iterator<Item = T> + Send {
    items.into_iter()
}

struct Model;

impl Model {
    #[trace(context = docs, question = question, promote(question = "user_query", len))]
    fn answer(&self, question: &str, docs: &[String]) -> Answer {
        Answer { len: docs.len(), text: question.to_string() }
    }

    #[trace(promote(r#type))]
    async fn typed(&self, r#type: &str) -> Result<Answer, std::io::Error> {
        Ok(Answer { len: r#type.len(), text: String::new() })
    }
}

#[derive(Serialize)]
struct Answer {
    len: usize,
    text: String,
}

struct Empty;

impl Stream for Empty {
    type Item = u32;
    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<u32>> {
        std::task::Poll::Ready(None)
    }
}

struct Empty2<'a>(std::marker::PhantomData<&'a str>);

impl<'a> Stream for Empty2<'a> {
    type Item = &'a str;
    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<&'a str>> {
        std::task::Poll::Ready(None)
    }
}

fn main() {
    let _ = words("a b").count();
    let _ = results().count();
    let _ = boxed();
    let _ = local_boxed("x");
    let _ = later(vec![1u8]);
    let _ = Model.answer("q", &[]);
    let _ = Model.typed("t");
}
