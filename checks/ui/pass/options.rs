//! Every option, alone and together, on sync and async functions.
#![deny(warnings)]

use openlayer_trace::{testing, trace};

#[trace(name = "custom")]
fn named() {}

#[trace(kind = "user_call")]
fn user_call() {}
#[trace(kind = "chat_completion")]
fn chat_completion() {}
#[trace(kind = "embedding")]
fn embedding() {}
#[trace(kind = "retriever")]
fn retriever() {}
#[trace(kind = "tool")]
fn tool() {}
#[trace(kind = "agent")]
fn agent() {}
#[trace(kind = "handoff")]
fn handoff() {}
#[trace(kind = "guardrail")]
fn guardrail() {}

struct NotSerialize;

#[trace(skip(client))]
fn skip_one(client: &NotSerialize, prompt: &str) -> usize {
    let _ = client;
    prompt.len()
}

#[trace(skip_all)]
fn skip_all(client: NotSerialize, other: &NotSerialize) -> u8 {
    let _ = (client, other);
    1
}

#[trace(skip_output)]
fn skip_output() -> NotSerialize {
    NotSerialize
}

#[trace(skip_output)]
fn skip_output_result() -> Result<NotSerialize, String> {
    Ok(NotSerialize)
}

#[trace(
    name = "everything",
    kind = "tool",
    skip(client),
    skip_output,
    inference_pipeline_id = "00000000-0000-0000-0000-000000000001",
)]
async fn everything(client: NotSerialize, query: String) -> NotSerialize {
    let _ = query;
    client
}

fn main() {
    let ((), traces) = testing::capture(|| {
        named();
        user_call();
        chat_completion();
        embedding();
        retriever();
        tool();
        agent();
        handoff();
        guardrail();
        let _ = skip_one(&NotSerialize, "p");
        let _ = skip_all(NotSerialize, &NotSerialize);
        let _ = skip_output();
        let _ = skip_output_result();
    });
    assert_eq!(traces.len(), 13);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (_, traces) = rt.block_on(testing::capture_async(everything(NotSerialize, String::new())));
    assert_eq!(traces.len(), 1);
}
