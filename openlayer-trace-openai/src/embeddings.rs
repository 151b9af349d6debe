//! Embeddings: [`EmbeddingsExt`].

use std::future::Future;

use async_openai::Embeddings;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{CreateEmbeddingRequest, CreateEmbeddingResponse};
use openlayer_trace::{StepHandle, StepKind, step};
use serde::Serialize;
use serde_json::json;

use crate::chat::Sealed;
use crate::{Provider, provider_of};

/// A traced version of [`Embeddings::create`].
///
/// ```no_run
/// use async_openai::{Client, types::embeddings::CreateEmbeddingRequestArgs};
/// use openlayer_trace_openai::EmbeddingsExt;
///
/// # async fn run() -> Result<(), async_openai::error::OpenAIError> {
/// let client = Client::new();
/// let request = CreateEmbeddingRequestArgs::default()
///     .model("text-embedding-3-small")
///     .input("What is Openlayer?")
///     .build()?;
/// let response = client.embeddings().create_traced(request).await?;
/// # let _ = response;
/// # Ok(()) }
/// ```
pub trait EmbeddingsExt: Sealed {
    /// [`Embeddings::create`], recorded as an `embedding` step ("OpenAI Embedding" or
    /// "Azure OpenAI Embedding") with inputs `{"input": ..}`, the vectors as output, the
    /// model, token counts, `embeddingCount` and `embeddingDimensions`; returns exactly
    /// what `create` returns.
    fn create_traced(
        &self,
        request: CreateEmbeddingRequest,
    ) -> impl Future<Output = Result<CreateEmbeddingResponse, OpenAIError>> + Send;
}

#[derive(Serialize)]
struct Inputs<'a, T: Serialize> {
    input: &'a T,
}

impl<C: Config> EmbeddingsExt for Embeddings<'_, C> {
    async fn create_traced(
        &self,
        request: CreateEmbeddingRequest,
    ) -> Result<CreateEmbeddingResponse, OpenAIError> {
        let provider = provider_of::<C>();
        let name = match provider {
            Provider::OpenAi => "OpenAI Embedding",
            Provider::Azure => "Azure OpenAI Embedding",
        };
        let mut h = step(name)
        .kind(StepKind::Embedding)
        .inputs(&Inputs {
            input: &request.input,
        })
        .metadata("provider", provider.as_str())
        .metadata("model", &request.model)
        .metadata(
            "modelParameters",
            &json!({"dimensions": request.dimensions, "encoding_format": request.encoding_format}),
        )
        .start();
        let result = self.create(request).await;
        match &result {
            Ok(response) => record(&mut h, response),
            Err(e) => h.error(e),
        }
        h.finish();
        result
    }
}

fn record(h: &mut StepHandle, r: &CreateEmbeddingResponse) {
    if !h.is_recording() {
        return;
    }
    h.metadata("model", &r.model);
    h.metadata("prompt_tokens", &r.usage.prompt_tokens);
    h.metadata("tokens", &r.usage.total_tokens);
    h.metadata("embeddingCount", &r.data.len());
    if let Some(first) = r.data.first() {
        h.metadata("embeddingDimensions", &first.embedding.len());
    }
    // The vectors are the output; the raw output keeps the envelope without repeating them.
    let data: Vec<_> = r
        .data
        .iter()
        .map(|e| json!({"object": e.object, "index": e.index, "dimensions": e.embedding.len()}))
        .collect();
    h.metadata(
        "rawOutput",
        &json!({"object": r.object, "model": r.model, "data": data, "usage": r.usage}),
    );
    let vectors: Vec<&Vec<f32>> = r.data.iter().map(|e| &e.embedding).collect();
    h.output(&vectors);
}
