//! Embeddings: [`EmbeddingsExt`].

use std::future::Future;

use async_openai::Embeddings;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{CreateEmbeddingRequest, CreateEmbeddingResponse};
use openlayer_trace::{StepHandle, StepKind, step};
use serde_json::json;
use serde_json::value::RawValue;

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

impl<C: Config> EmbeddingsExt for Embeddings<'_, C> {
    async fn create_traced(
        &self,
        request: CreateEmbeddingRequest,
    ) -> Result<CreateEmbeddingResponse, OpenAIError> {
        let mut h = start_step(provider_of::<C>(), &request);
        let result = self.create(request).await;
        match &result {
            Ok(response) => record(&mut h, response),
            Err(e) => h.error(e),
        }
        h.finish();
        result
    }
}

/// Opens the step. The input and parameters are written only when the step is recorded
/// (nothing of the input is serialized when tracing is off).
pub(crate) fn start_step(provider: Provider, request: &CreateEmbeddingRequest) -> StepHandle {
    let name = match provider {
        Provider::OpenAi => "OpenAI Embedding",
        Provider::Azure => "Azure OpenAI Embedding",
    };
    let mut h = step(name)
        .kind(StepKind::Embedding)
        .start_with_inputs(|w| w.field("input", &request.input));
    if h.is_recording() {
        h.metadata("provider", provider.as_str());
        h.metadata("model", &request.model);
        h.metadata(
            "modelParameters",
            &json!({"dimensions": request.dimensions, "encoding_format": request.encoding_format}),
        );
    }
    h
}

fn record(h: &mut StepHandle, r: &CreateEmbeddingResponse) {
    if !h.is_recording() {
        return;
    }
    // A compatible server may answer with an empty model: the request's stays (the
    // platform prices by it), as for a chat completion.
    if !r.model.is_empty() {
        h.metadata("model", &r.model);
    }
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
    h.output(&bounded_vectors(
        r.data.iter().map(|e| e.embedding.as_slice()),
        openlayer_trace::stream::output_max_bytes() / 2,
    ));
}

/// The vectors as the output, whole ones while their JSON fits in `max` bytes (half of
/// `stream::output_max_bytes()`, as a stream's text: a root step's output is in its row
/// twice), then a marker `"…[truncated N embeddings]"`. A batch of a few hundred vectors
/// of 1,536 dimensions is several MiB of JSON: whole, its row would be larger than any
/// request may carry, and the trace around it would be lost.
fn bounded_vectors<'a>(
    vectors: impl ExactSizeIterator<Item = &'a [f32]>,
    max: usize,
) -> Vec<Box<RawValue>> {
    let total = vectors.len();
    let mut kept = Vec::new();
    let mut size = 2;
    for v in vectors {
        let Ok(json) = serde_json::to_string(v) else {
            break;
        };
        if size + json.len() + 1 > max {
            break;
        }
        size += json.len() + 1;
        match RawValue::from_string(json) {
            Ok(raw) => kept.push(raw),
            Err(_) => break,
        }
    }
    let cut = total - kept.len();
    if cut > 0 {
        let marker = format!("\"…[truncated {cut} embeddings]\"");
        if let Ok(raw) = RawValue::from_string(marker) {
            kept.push(raw);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::bounded_vectors;

    #[test]
    fn vectors_are_kept_whole_within_the_bound_then_counted() {
        let vectors = [vec![0.5f32; 4], vec![0.25; 4], vec![0.125; 4]];
        let all = serde_json::to_string(&bounded_vectors(
            vectors.iter().map(Vec::as_slice),
            usize::MAX,
        ))
        .unwrap();
        assert_eq!(all, serde_json::to_string(&vectors).unwrap());
        // Room for two vectors of 4 (each 21 or 25 bytes of JSON), not three.
        let cut =
            serde_json::to_string(&bounded_vectors(vectors.iter().map(Vec::as_slice), 60)).unwrap();
        assert_eq!(
            cut,
            r#"[[0.5,0.5,0.5,0.5],[0.25,0.25,0.25,0.25],"…[truncated 1 embeddings]"]"#
        );
        let none =
            serde_json::to_string(&bounded_vectors(vectors.iter().map(Vec::as_slice), 10)).unwrap();
        assert_eq!(none, r#"["…[truncated 3 embeddings]"]"#);
    }
}
