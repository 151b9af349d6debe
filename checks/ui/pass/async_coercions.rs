//! The value of a traced `async fn` (and of a returned future's block, and of a stream
//! returned by an `async fn`) coerces to its declared type as without `#[trace]`: boxed
//! trait objects, a borrowed `String` as `&str`, `?` into a boxed error.
use std::fmt::Debug;
use std::pin::Pin;

use futures_core::Stream;
use openlayer_trace::trace;

#[trace]
async fn boxed() -> Box<[u8]> {
    Box::new([1u8, 2, 3])
}

#[trace(skip_output)]
async fn boxed_dyn() -> Box<dyn Debug + Send> {
    Box::new(1u8)
}

#[trace]
async fn borrowed(s: &String) -> &str {
    s
}

#[trace(skip_output)]
async fn early(flag: bool) -> Box<dyn Debug + Send> {
    if flag {
        return Box::new("early");
    }
    Box::new(2u16)
}

#[trace]
async fn fallible(text: &str) -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
    Ok(text.parse::<u8>()?)
}

#[trace(skip_output)]
fn returned(n: u8) -> impl std::future::Future<Output = Box<dyn Debug + Send>> {
    async move { Box::new(n) }
}

#[derive(serde::Serialize)]
enum Kind {
    String,
    Number,
}

/// A `use` in the body does not change what the declared return type names.
#[trace]
async fn label(k: Kind) -> String {
    use Kind::*;
    match k {
        String => "s".into(),
        Number => "n".into(),
    }
}

struct Empty;

impl Stream for Empty {
    type Item = u8;
    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<u8>> {
        std::task::Poll::Ready(None)
    }
}

#[trace(stream)]
async fn stream(q: String) -> Pin<Box<dyn Stream<Item = u8> + Send>> {
    let _ = q;
    Box::pin(Empty)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        assert_eq!(&*boxed().await, &[1, 2, 3]);
        assert_eq!(format!("{:?}", boxed_dyn().await), "1");
        let s = String::from("abc");
        assert_eq!(borrowed(&s).await, "abc");
        assert_eq!(format!("{:?}", early(true).await), "\"early\"");
        assert_eq!(fallible("7").await.unwrap(), 7);
        assert!(fallible("x").await.is_err());
        assert_eq!(format!("{:?}", returned(3).await), "3");
        let _ = stream("q".into()).await;
        assert_eq!(label(Kind::String).await, "s");
        assert_eq!(label(Kind::Number).await, "n");
    });
}
