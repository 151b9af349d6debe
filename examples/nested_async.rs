//! Steps nest across `.await`, under `join!`, and into spawned tasks.
//!
//! ```sh
//! cargo run --example nested_async
//! ```

use std::time::Duration;

use openlayer_trace::{Config, FutureExt, current_inference_id, trace};

#[trace(kind = "tool")]
async fn fetch_weather(city: &str) -> String {
    tokio::time::sleep(Duration::from_millis(15)).await;
    format!("sunny in {city}")
}

#[trace(kind = "tool")]
async fn fetch_news(topic: &str) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    vec![format!("{topic}: all quiet")]
}

#[trace]
async fn summarize(weather: &str, news: &[String]) -> String {
    tokio::task::yield_now().await;
    format!("{weather}; {}", news.join("; "))
}

#[trace(kind = "agent")]
async fn briefing(city: &str) -> (String, String) {
    // Both tools run concurrently; their steps are children in start order.
    let (weather, news) = tokio::join!(fetch_weather(city), fetch_news(city));
    // A spawned task (possibly on another worker thread) still lands under this step.
    let audit = tokio::spawn(
        async move {
            #[trace]
            async fn audit(entries: usize) -> usize {
                entries
            }
            audit(news.len()).await;
            news
        }
        .in_current_trace(),
    )
    .await
    .expect("audit task");
    let summary = summarize(&weather, &audit).await;
    (summary, current_inference_id().unwrap_or_default())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;
    let (summary, id) = briefing("Paris").await;
    println!("briefing: {summary}");
    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    openlayer_trace_examples::show_outcome(&config, &id, &report);
    Ok(())
}
