//! Traced `async fn`s stay `Send` (so they can be spawned), also as native `async fn`s in
//! traits, and traced functions work in trait impls with generic and `impl Trait` shapes.
use openlayer_trace::trace;

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[trace]
async fn fetch(url: String) -> usize {
    tokio::task::yield_now().await;
    url.len()
}

trait Retriever {
    async fn retrieve(&self, query: &str) -> Vec<String>;
    fn name(&self) -> &str;
}

struct Index {
    docs: Vec<String>,
}

impl Retriever for Index {
    #[trace(kind = "retriever")]
    async fn retrieve(&self, query: &str) -> Vec<String> {
        tokio::task::yield_now().await;
        self.docs.iter().filter(|d| d.contains(query)).cloned().collect()
    }

    #[trace]
    fn name(&self) -> &str {
        "index"
    }
}

#[trace(skip(index))]
async fn answer(index: &Index, question: String) -> Result<String, std::io::Error> {
    let n = fetch(question.clone()).await;
    let docs = index.retrieve(&question).await;
    Ok(format!("{n} {}", docs.len()))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let index: &'static Index = Box::leak(Box::new(Index { docs: vec!["Paris".into()] }));
    let handle = rt.spawn(assert_send(openlayer_trace::testing::capture_async(answer(
        index,
        "Paris".into(),
    ))));
    let (out, traces) = rt.block_on(handle).unwrap();
    assert_eq!(out.unwrap(), "5 1");
    assert_eq!(traces.len(), 1);
    let (name, traces) = openlayer_trace::testing::capture(|| index.name());
    assert_eq!(name, "index");
    assert_eq!(traces.len(), 1);
}
