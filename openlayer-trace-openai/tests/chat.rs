//! Chat completions through async-openai's real client against the loopback mock.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace_openai::ChatExt;
use serde_json::{Value, json};

fn client(mock: &OpenAiMock) -> Client<OpenAIConfig> {
    // async-openai builds its own reqwest client; the workspace's reqwest has no default
    // TLS provider, so the test process installs one (no TLS is spoken: the mock is HTTP).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.url())
            .with_api_key("sk-test"),
    )
}

fn request(model: &str, stream: bool) -> CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model(model).temperature(0.2).messages([
        ChatCompletionRequestSystemMessage::from("You answer briefly.").into(),
        ChatCompletionRequestUserMessage::from("What is the capital of France?").into(),
    ]);
    if stream {
        b.stream(true);
    }
    b.build().unwrap()
}

fn only_step(traces: &[CapturedTrace]) -> Value {
    assert_eq!(traces.len(), 1, "one trace");
    traces[0].root().clone()
}

#[tokio::test]
async fn plain_chat_is_recorded_like_the_official_integration() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (result, traces) =
        testing::capture_async(client.chat().create_traced(request("gpt-4o-mini", false))).await;
    let response = result.unwrap();
    let text = response.choices[0].message.content.clone().unwrap();
    assert_eq!(text, "Mock answer: What is the capital of France?");
    let step = only_step(&traces);
    assert_eq!(step["name"], "OpenAI Chat Completion");
    assert_eq!(step["type"], "chat_completion");
    assert_eq!(step["provider"], "OpenAI");
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(step["output"], text.as_str());
    assert_eq!(
        step["inputs"]["prompt"][1]["content"],
        "What is the capital of France?"
    );
    assert_eq!(step["inputs"]["prompt"][0]["role"], "system");
    let usage = &response.usage.as_ref().unwrap();
    assert_eq!(step["promptTokens"], usage.prompt_tokens);
    assert_eq!(step["completionTokens"], usage.completion_tokens);
    assert_eq!(step["tokens"], usage.total_tokens);
    assert_eq!(step["modelParameters"]["temperature"], json!(0.2));
    assert_eq!(step["modelParameters"]["n"], 1);
    assert_eq!(step["rawOutput"]["id"], "chatcmpl-mock");
    assert!(
        step.get("cost").is_none_or(Value::is_null),
        "no client-side cost"
    );
    assert!(step["latency"].as_f64().unwrap() >= 0.0);
}

async fn drain(
    stream: &mut async_openai::types::chat::ChatCompletionResponseStream,
) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut errors = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                for c in &chunk.choices {
                    text.push_str(c.delta.content.as_deref().unwrap_or(""));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    (text, errors)
}

#[tokio::test]
async fn stream_joins_deltas_and_leaves_tokens_unknown_without_usage() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let ((text, errors), traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini", true))
            .await
            .unwrap();
        drain(&mut stream).await
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(text, "Mock answer: What is the capital of France?");
    // The request went out as the caller made it: no usage chunk was asked for.
    let sent = mock.requests()[0].json.clone().unwrap();
    assert!(sent.get("stream_options").is_none(), "{sent}");
    let step = only_step(&traces);
    assert_eq!(step["name"], "OpenAI Chat Completion");
    assert_eq!(step["output"], text.as_str());
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18");
    assert!(step["promptTokens"].is_null(), "{step}");
    assert!(step["completionTokens"].is_null());
    assert!(step["tokens"].is_null());
    let ttft = step["metadata"]["timeToFirstToken"].as_f64().unwrap();
    assert!(
        ttft >= 0.0 && ttft <= step["latency"].as_f64().unwrap() + 1.0,
        "{step}"
    );
    assert_eq!(step["rawOutput"]["object"], "chat.completion");
    assert_eq!(
        step["rawOutput"]["choices"][0]["message"]["content"],
        text.as_str()
    );
    assert_eq!(step["rawOutput"]["choices"][0]["finish_reason"], "stop");
    assert!(step["metadata"].get("cancelled").is_none());
}

#[tokio::test]
async fn final_usage_chunk_gives_the_token_counts() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let mut req = request("gpt-4o-mini", true);
    req.stream_options = Some(async_openai::types::chat::ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let (_, traces) = testing::capture_async(async {
        let mut stream = client.chat().create_stream_traced(req).await.unwrap();
        drain(&mut stream).await
    })
    .await;
    let step = only_step(&traces);
    // 2 messages: (3 + 3) + (3 + 6) words; 8 pieces of answer.
    assert_eq!(step["promptTokens"], 15, "{step}");
    assert_eq!(step["completionTokens"], 8);
    assert_eq!(step["tokens"], 23);
    assert_eq!(step["rawOutput"]["usage"]["total_tokens"], 23);
}

/// Streams a chat completion of `model` from a fresh mock, read to its end: the text and
/// errors read, and the one step recorded.
async fn streamed(model: &str) -> ((String, Vec<String>), Value) {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (read, traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request(model, true))
            .await
            .unwrap();
        drain(&mut stream).await
    })
    .await;
    (read, only_step(&traces))
}

/// The mock's two parallel tool calls, as a step's output.
fn weather_calls() -> Value {
    json!([
        {"id": "call_paris", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "call_tokyo", "name": "get_weather", "arguments": {"city": "Tokyo"}}
    ])
}

#[tokio::test]
async fn parallel_tool_calls_streamed_interleaved_stay_separate() {
    let (_, step) = streamed("gpt-4o-mini-tools").await;
    assert_eq!(step["output"], weather_calls(), "{step}");
    let calls = &step["rawOutput"]["choices"][0]["message"]["tool_calls"];
    assert_eq!(calls[1]["function"]["arguments"], "{\"city\": \"Tokyo\"}");
    assert_eq!(
        step["rawOutput"]["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn tool_call_ids_and_names_repeated_in_every_delta_are_kept_once() {
    let (_, step) = streamed("gpt-4o-mini-tools-repeat").await;
    assert_eq!(step["output"], weather_calls(), "{step}");
}

/// Parallel calls that all come at index 0, each whole in one delta (Ollama, some vLLM
/// servers): two calls, not one with both ids, names and arguments run together.
#[tokio::test]
async fn parallel_tool_calls_sharing_index_0_stay_separate() {
    let (_, step) = streamed("gpt-4o-mini-tools-index0").await;
    assert_eq!(step["output"], weather_calls(), "{step}");
}

#[tokio::test]
async fn azure_content_filter_chunk_first_leaves_the_model_and_ids_of_the_answer() {
    let ((text, errors), step) = streamed("gpt-4o-mini-azure-filter").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(text, "Mock answer: What is the capital of France?");
    // The model the answer's chunks name (Azure's snapshot), not the requested name.
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18", "{step}");
    assert_eq!(
        step["rawOutput"]["model"], "gpt-4o-mini-2024-07-18",
        "{step}"
    );
    assert_eq!(step["output"], text.as_str());
    assert_eq!(step["rawOutput"]["id"], "chatcmpl-mock", "{step}");
    assert_eq!(
        step["rawOutput"]["created"],
        openlayer_testserver::openai::CREATED
    );
    assert!(
        step["metadata"]["timeToFirstToken"].as_f64().is_some(),
        "{step}"
    );
}

#[tokio::test]
async fn plain_tool_calls_are_all_recorded() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (result, traces) = testing::capture_async(
        client
            .chat()
            .create_traced(request("gpt-4o-mini-tools", false)),
    )
    .await;
    assert_eq!(
        result.unwrap().choices[0]
            .message
            .tool_calls
            .as_ref()
            .unwrap()
            .len(),
        2
    );
    let step = only_step(&traces);
    assert_eq!(step["output"][0]["arguments"], json!({"city": "Paris"}));
    assert_eq!(step["output"][1]["id"], "call_tokyo");
}

#[tokio::test]
async fn dropped_stream_keeps_partial_output_and_is_cancelled() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (first, traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini", true))
            .await
            .unwrap();
        let mut text = String::new();
        for _ in 0..3 {
            let chunk = stream.next().await.unwrap().unwrap();
            text.push_str(chunk.choices[0].delta.content.as_deref().unwrap_or(""));
        }
        text
    })
    .await;
    assert_eq!(first, "Mock answer: ");
    let step = only_step(&traces);
    assert_eq!(step["metadata"]["cancelled"], true, "{step}");
    assert_eq!(step["output"], "Mock answer: ");
    assert!(step["metadata"]["timeToFirstToken"].is_number());
}

/// Reads a stream until a chunk `stop` picks, then works a while before it drops the
/// stream (as a caller that stops there does).
async fn read_until_then_work(
    client: &Client<OpenAIConfig>,
    req: CreateChatCompletionRequest,
    stop: fn(&async_openai::types::chat::CreateChatCompletionStreamResponse) -> bool,
) -> String {
    let mut stream = client.chat().create_stream_traced(req).await.unwrap();
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        let chunk = item.unwrap();
        text.push_str(
            chunk
                .choices
                .first()
                .and_then(|c| c.delta.content.as_deref())
                .unwrap_or(""),
        );
        if stop(&chunk) {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    text
}

/// A caller that stops reading at `finish_reason` has the whole answer: its step ends as
/// returned, not cancelled (when the stream is dropped). With the usage asked for, the
/// step ends at the chunk that brings it, so a caller that stops there and works on has
/// the latency of the answer alone, and its tokens.
#[tokio::test]
async fn a_caller_that_stops_at_finish_reason_has_a_complete_step() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let finished = |c: &async_openai::types::chat::CreateChatCompletionStreamResponse| {
        c.choices.iter().any(|c| c.finish_reason.is_some())
    };
    let (text, traces) = testing::capture_async(read_until_then_work(
        &client,
        request("gpt-4o-mini", true),
        finished,
    ))
    .await;
    assert_eq!(text, "Mock answer: What is the capital of France?");
    let step = only_step(&traces);
    assert!(step["metadata"].get("cancelled").is_none(), "{step}");
    assert_eq!(step["output"], text.as_str());

    let mut req = request("gpt-4o-mini", true);
    req.stream_options = Some(async_openai::types::chat::ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let (_, traces) =
        testing::capture_async(read_until_then_work(&client, req, |c| c.usage.is_some())).await;
    let step = only_step(&traces);
    assert!(step["metadata"].get("cancelled").is_none(), "{step}");
    assert_eq!(step["output"], text.as_str());
    assert_eq!(step["tokens"], 23, "{step}");
    assert!(step["latency"].as_f64().unwrap() < 250.0, "{step}");
}

#[tokio::test]
async fn stream_cut_off_mid_body_ends_with_the_error_passed_on() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let ((text, errors), traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini-stream-cut", true))
            .await
            .unwrap();
        drain(&mut stream).await
    })
    .await;
    assert_eq!(text, "Mock answer: ");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("stream failed"), "{errors:?}");
    let step = only_step(&traces);
    assert_eq!(step["metadata"]["Exceptions"], errors[0].as_str(), "{step}");
    // What arrived before the connection was lost stays the output.
    assert_eq!(step["output"], "Mock answer: ", "{step}");
}

#[tokio::test]
async fn error_event_inside_a_stream_is_recorded_and_passed_on() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let ((_, errors), traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini-stream-error", true))
            .await
            .unwrap();
        drain(&mut stream).await
    })
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("The server had an error"), "{errors:?}");
    let step = only_step(&traces);
    assert_eq!(step["metadata"]["Exceptions"], errors[0].as_str());
    assert!(step["metadata"].get("cancelled").is_none());
    assert_eq!(step["output"], "Mock answer: ", "{step}");
}

#[tokio::test]
async fn a_429_retried_by_async_openai_is_one_successful_step() {
    let mock = OpenAiMock::start();
    mock.fail_next([429]);
    let client = client(&mock);
    let (result, traces) =
        testing::capture_async(client.chat().create_traced(request("gpt-4o-mini", false))).await;
    assert!(result.is_ok());
    assert_eq!(mock.requests().len(), 2, "async-openai retried once");
    let step = only_step(&traces);
    assert!(step["metadata"].get("Exceptions").is_none());
    assert_eq!(
        step["output"],
        "Mock answer: What is the capital of France?"
    );
}

#[tokio::test]
async fn persistent_500s_fail_the_step_with_async_openais_error() {
    let mock = OpenAiMock::start();
    mock.fail_next([500, 500, 500, 500]);
    let client = client(&mock);
    let (result, traces) = testing::capture_async(
        client
            .chat()
            .create_stream_traced(request("gpt-4o-mini", true)),
    )
    .await;
    let Err(error) = result else {
        panic!("the 500s reach the caller")
    };
    assert!(
        matches!(&error, async_openai::error::OpenAIError::ApiError(e) if e.status_code.as_u16() == 500),
        "{error:?}"
    );
    assert_eq!(mock.requests().len(), 4, "async-openai's own 3 retries");
    let step = only_step(&traces);
    assert_eq!(step["metadata"]["Exceptions"], error.to_string());
    assert!(step["output"].is_null());
}

#[tokio::test]
async fn steps_nest_under_the_current_step_and_per_request_options_stay() {
    use async_openai::traits::RequestOptionsBuilder;
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (_, traces) = testing::capture_async(openlayer_trace::step("answer").run(async {
        let chat = client.chat().header("x-request-tag", "rag-7").unwrap();
        let mut stream = chat
            .create_stream_traced(request("gpt-4o-mini", true))
            .await
            .unwrap();
        drain(&mut stream).await.0
    }))
    .await;
    assert_eq!(mock.requests()[0].header("x-request-tag"), Some("rag-7"));
    assert_eq!(traces.len(), 1);
    let root = traces[0].root();
    assert_eq!(root["name"], "answer");
    assert_eq!(root["steps"][0]["name"], "OpenAI Chat Completion");
    assert_eq!(root["output"], root["steps"][0]["output"]);
}

/// A streamed answer longer than the stream output bound: the client gets all of it, the
/// step keeps at most half the bound (the text is recorded twice), marked as cut.
#[tokio::test]
async fn a_long_streamed_answer_is_recorded_up_to_the_bound() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let max = openlayer_trace::stream::output_max_bytes();
    // Words of a kilobyte, so that the answer comes in a few hundred chunks.
    let word = "x".repeat(1023);
    let words = max / 2 / 1024 + 40;
    let question = vec![word.as_str(); words].join(" ");
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model("gpt-4o-mini")
        .stream(true)
        .messages([ChatCompletionRequestUserMessage::from(question.as_str()).into()]);
    let ((text, errors), traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(b.build().unwrap())
            .await
            .unwrap();
        drain(&mut stream).await
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(text, format!("Mock answer: {question}"), "passed on whole");
    let step = only_step(&traces);
    let output = step["output"].as_str().unwrap();
    let (kept, marker) = output.split_once('…').expect("a truncation marker");
    assert!(kept.len() <= max / 2, "{} > {}", kept.len(), max / 2);
    assert!(text.starts_with(kept));
    assert!(
        kept.len() >= max / 2 - 1024,
        "kept up to the bound: {}",
        kept.len()
    );
    let cut: u64 = marker
        .strip_prefix("[truncated ")
        .and_then(|m| m.strip_suffix(" chunks]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("marker {marker:?}"));
    assert!(cut >= 39, "{cut} chunks cut");
    let raw = step["rawOutput"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(raw, output, "rawOutput keeps the same text, marked");
}

/// A long answer that was not streamed is bounded as a streamed one is: its output and
/// `rawOutput` text end with a marker, so that the row still fits in a request (an
/// unbounded one made the whole trace too large, and it was refused).
#[tokio::test]
async fn a_long_answer_not_streamed_is_bounded() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let long = "word ".repeat(120_000);
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessage::from(long.as_str()).into()]);
    let (result, traces) =
        testing::capture_async(client.chat().create_traced(b.build().unwrap())).await;
    let answer = result.unwrap().choices[0].message.content.clone().unwrap();
    assert!(answer.len() > 600_000, "the caller gets the whole answer");
    let step = only_step(&traces);
    let max = openlayer_trace::stream::output_max_bytes() / 2;
    let output = step["output"].as_str().unwrap();
    assert!(output.len() < max + 64, "{}", output.len());
    assert!(
        output.ends_with("…[truncated 1 chunks]"),
        "{}",
        &output[output.len() - 40..]
    );
    let raw = step["rawOutput"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(raw, output);
}

/// An audio answer (no text): the caller gets the whole base64 audio; the step records
/// a marker in its place, and the transcript as the output.
#[tokio::test]
async fn an_audio_answer_records_its_transcript_and_leaves_out_its_audio() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (result, traces) = testing::capture_async(
        client
            .chat()
            .create_traced(request("gpt-4o-audio-preview", false)),
    )
    .await;
    let response = result.unwrap();
    let audio = response.choices[0].message.audio.as_ref().unwrap();
    let len = openlayer_testserver::openai::PAYLOAD_BASE64_LEN;
    assert_eq!(audio.data.len(), len, "the caller gets the whole audio");
    assert_eq!(
        audio.transcript,
        "Mock answer: What is the capital of France?"
    );
    let step = only_step(&traces);
    assert_eq!(step["output"], audio.transcript.as_str(), "{step}");
    let recorded = &step["rawOutput"]["choices"][0]["message"]["audio"];
    assert_eq!(
        recorded["data"],
        "…[base64 audio, 3,145,728 bytes left out]"
    );
    assert_eq!(recorded["transcript"], audio.transcript.as_str());
    assert_eq!(recorded["id"], "audio_mock");
    let row = serde_json::to_string(traces[0].row()).unwrap();
    assert!(row.len() < 64 * 1024, "{} bytes", row.len());
}

/// Images and audio sent in the prompt as base64 reach the API whole; the step's inputs
/// hold a marker in their place (a data URL keeps its header), and the rest as it was.
#[tokio::test]
async fn base64_images_and_audio_in_the_prompt_are_left_out_of_the_inputs() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let png = format!("data:image/png;base64,iVBORw0KGgo{}", "A".repeat(2 << 20));
    let wav = format!("UklGR{}", "A".repeat(100_000));
    let req: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You describe images."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}
            ]}
        ]
    }))
    .unwrap();
    let (result, traces) = testing::capture_async(client.chat().create_traced(req)).await;
    assert_eq!(
        result.unwrap().choices[0].message.content.as_deref(),
        Some("Mock answer: What is in this image?")
    );
    let sent = mock.requests()[0].json.clone().unwrap();
    let parts = &sent["messages"][1]["content"];
    assert_eq!(parts[1]["image_url"]["url"], png.as_str(), "sent whole");
    assert_eq!(parts[3]["input_audio"]["data"], wav.as_str(), "sent whole");
    let step = only_step(&traces);
    let parts = &step["inputs"]["prompt"][1]["content"];
    assert_eq!(
        parts[1]["image_url"],
        json!({"url": "data:image/png;base64,…[base64 image, 2,097,163 bytes left out]",
               "detail": "low"}),
        "{step}"
    );
    assert_eq!(parts[0]["text"], "What is in this image?");
    assert_eq!(parts[2]["image_url"]["url"], "https://example.com/cat.png");
    assert_eq!(
        parts[3]["input_audio"],
        json!({"data": "…[base64 audio, 100,005 bytes left out]", "format": "wav"})
    );
    assert_eq!(
        step["inputs"]["prompt"][0]["content"],
        "You describe images."
    );
}

/// Two choices streamed with their chunks interleaved: each choice's deltas are joined on
/// their own, the output is choice 0's text, and `rawOutput` has both. Answered whole,
/// the same.
#[tokio::test]
async fn two_choices_streamed_interleaved_are_joined_per_choice() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let first = "Mock answer: What is the capital of France?";
    let second = "Mock answer 2: What is the capital of France?";
    let mut req = request("gpt-4o-mini", true);
    req.n = Some(2);
    let ((texts, indices), traces) = testing::capture_async(async {
        let mut stream = client.chat().create_stream_traced(req).await.unwrap();
        let mut texts = [String::new(), String::new()];
        let mut indices = Vec::new();
        while let Some(chunk) = stream.next().await {
            for c in chunk.unwrap().choices {
                indices.push(c.index);
                texts[c.index as usize].push_str(c.delta.content.as_deref().unwrap_or(""));
            }
        }
        (texts, indices)
    })
    .await;
    assert_eq!(texts, [first, second]);
    assert!(
        indices.windows(2).any(|w| w[0] == 1 && w[1] == 0),
        "the choices' chunks interleave: {indices:?}"
    );
    let step = only_step(&traces);
    assert_eq!(step["output"], first, "{step}");
    let choices = &step["rawOutput"]["choices"];
    assert_eq!(choices.as_array().unwrap().len(), 2, "{step}");
    for (i, text) in [first, second].into_iter().enumerate() {
        assert_eq!(choices[i]["index"], i);
        assert_eq!(choices[i]["message"]["content"], text, "{step}");
        assert_eq!(choices[i]["finish_reason"], "stop");
    }
    assert_eq!(step["modelParameters"]["n"], 2);
    assert!(step["metadata"].get("cancelled").is_none(), "{step}");

    let mut req = request("gpt-4o-mini", false);
    req.n = Some(2);
    let (result, traces) = testing::capture_async(client.chat().create_traced(req)).await;
    assert_eq!(result.unwrap().choices.len(), 2);
    let step = only_step(&traces);
    assert_eq!(step["output"], first, "{step}");
    assert_eq!(
        step["rawOutput"]["choices"][1]["message"]["content"],
        second
    );
}

/// A refusal (no content) is the output, answered whole or streamed as refusal deltas;
/// `rawOutput` holds it under `refusal` with a null `content`, as OpenAI's answer does.
#[tokio::test]
async fn a_chat_refusal_is_the_output_whole_and_streamed() {
    use openlayer_testserver::openai::REFUSAL;
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (result, traces) = testing::capture_async(
        client
            .chat()
            .create_traced(request("gpt-4o-mini-refusal", false)),
    )
    .await;
    let message = result.unwrap().choices[0].message.clone();
    assert_eq!(message.refusal.as_deref(), Some(REFUSAL));
    assert_eq!(message.content, None);
    let step = only_step(&traces);
    assert_eq!(step["output"], REFUSAL, "{step}");
    let recorded = &step["rawOutput"]["choices"][0]["message"];
    assert_eq!(recorded["refusal"], REFUSAL);
    assert!(recorded["content"].is_null(), "{step}");

    let (refused, traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini-refusal", true))
            .await
            .unwrap();
        let mut refused = String::new();
        while let Some(chunk) = stream.next().await {
            for c in chunk.unwrap().choices {
                refused.push_str(c.delta.refusal.as_deref().unwrap_or(""));
            }
        }
        refused
    })
    .await;
    assert_eq!(refused, REFUSAL);
    let step = only_step(&traces);
    assert_eq!(step["output"], REFUSAL, "{step}");
    let recorded = &step["rawOutput"]["choices"][0]["message"];
    assert_eq!(recorded["refusal"], REFUSAL, "{step}");
    assert!(recorded["content"].is_null(), "{step}");
    assert!(step["metadata"]["timeToFirstToken"].is_number(), "{step}");
}

/// A streamed audio answer: the caller gets every piece of the audio; the step records
/// the joined transcript as the output, and in `rawOutput` the audio's size in place of
/// its data, as for a whole answer.
#[tokio::test]
async fn a_streamed_audio_answer_records_its_transcript_and_leaves_out_its_audio() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let ((data, transcript), traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-audio-preview", true))
            .await
            .unwrap();
        let (mut data, mut transcript) = (0, String::new());
        while let Some(chunk) = stream.next().await {
            for c in chunk.unwrap().choices {
                if let Some(audio) = c.delta.audio {
                    data += audio.data.map_or(0, |d| d.len());
                    transcript.push_str(audio.transcript.as_deref().unwrap_or(""));
                }
            }
        }
        (data, transcript)
    })
    .await;
    assert_eq!(data, openlayer_testserver::openai::PAYLOAD_BASE64_LEN);
    assert_eq!(transcript, "Mock answer: What is the capital of France?");
    let step = only_step(&traces);
    assert_eq!(step["output"], transcript.as_str(), "{step}");
    let message = &step["rawOutput"]["choices"][0]["message"];
    assert!(message["content"].is_null(), "{step}");
    assert_eq!(
        message["audio"],
        json!({"id": "audio_mock", "expires_at": openlayer_testserver::openai::CREATED + 3600,
               "data": "…[base64 audio, 3,145,728 bytes left out]",
               "transcript": transcript})
    );
    assert!(step["metadata"]["timeToFirstToken"].is_number(), "{step}");
}
