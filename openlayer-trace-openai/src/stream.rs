//! A chat completion stream that records itself as it is consumed.
//!
//! The per-chunk work is a few appends into buffers owned by the stream (no JSON, no
//! locks, no allocation once the buffers have grown); the step is shaped once, at the end
//! of the stream or when the stream is dropped. The text kept is bounded (see
//! `TextBound`): a long answer's row still fits in a request, and its memory is bounded.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionResponseStream, CompletionUsage, CreateChatCompletionStreamResponse, FinishReason,
};
use futures_core::Stream;
use openlayer_trace::StepHandle;
use serde_json::{Value, json};

use crate::params::{Tokens, tool_call};

/// Wraps async-openai's chat stream; items pass through untouched.
pub(crate) struct ChatStream {
    inner: ChatCompletionResponseStream,
    handle: Option<StepHandle>,
    started: Instant,
    acc: ChatAccumulator,
    expected: Expected,
    /// The time to the first token was recorded.
    first_token: bool,
}

/// What the request asked for, to know when its answer is complete.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// The choices (`n`, 1 by default).
    pub(crate) choices: usize,
}

impl Expected {
    /// What `request` asks for.
    pub(crate) fn of(request: &async_openai::types::chat::CreateChatCompletionRequest) -> Self {
        Expected {
            choices: usize::from(request.n.unwrap_or(1).max(1)),
        }
    }
}

impl ChatStream {
    pub(crate) fn new(
        inner: ChatCompletionResponseStream,
        handle: StepHandle,
        started: Instant,
        expected: Expected,
    ) -> Self {
        ChatStream {
            inner,
            handle: Some(handle),
            started,
            acc: ChatAccumulator::default(),
            expected,
            first_token: false,
        }
    }
}

impl Stream for ChatStream {
    type Item = Result<CreateChatCompletionStreamResponse, OpenAIError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(handle) = this.handle.as_mut() else {
            return this.inner.as_mut().poll_next(cx);
        };
        let poll = {
            let _entered = handle.enter();
            this.inner.as_mut().poll_next(cx)
        };
        match &poll {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(chunk))) => {
                // At the first chunk that carries some of the answer: not Azure's first
                // chunk (its content filter's results, no choice), nor the usual first
                // chunk of a role and no content, which a reasoning model sends long
                // before its first token.
                if !this.first_token && has_token(chunk) {
                    this.first_token = true;
                    let ms = this.started.elapsed().as_secs_f64() * 1000.0;
                    handle.metadata("timeToFirstToken", &ms);
                }
                this.acc.add(chunk);
                // Complete: every choice finished, and the usage arrived. A caller may
                // stop reading there: the step ends now, not when the stream is dropped,
                // later.
                if this.acc.complete(this.expected)
                    && let Some(mut h) = this.handle.take()
                {
                    this.acc.record(&mut h);
                    h.finish();
                }
            }
            // Under `Exceptions`, the step going on: what arrived before the error (a
            // connection lost at 90 % of an answer) stays its output, as a traced
            // stream's does.
            Poll::Ready(Some(Err(e))) => handle.exception(e),
            Poll::Ready(None) => {
                if let Some(mut h) = this.handle.take() {
                    this.acc.record(&mut h);
                    h.finish();
                }
            }
        }
        poll
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        // Dropped before its end: the step closes as cancelled, with what arrived so far;
        // unless every choice had finished (a caller that stops at `finish_reason`, before
        // the usage chunk): then it closes as returned.
        if let Some(mut h) = self.handle.take() {
            self.acc.record(&mut h);
            if self.acc.finished(self.expected) {
                h.finish();
            }
        }
    }
}

#[derive(Default)]
struct ChoiceAcc {
    index: u32,
    content: Bounded,
    refusal: Bounded,
    /// The audio of an audio answer, when one came.
    audio: Option<AudioAcc>,
    finish_reason: Option<FinishReason>,
}

/// A streamed audio answer: its transcript (bounded) and the length of its base64 audio,
/// which is never kept (see the [crate docs](crate#base64-payloads)).
#[derive(Default)]
struct AudioAcc {
    id: String,
    expires_at: Option<u64>,
    data_len: usize,
    transcript: Bounded,
}

struct ToolCallAcc {
    choice: u32,
    index: u32,
    id: String,
    name: String,
    arguments: Bounded,
}

/// Adds a streamed piece of a tool call's id or name. OpenAI sends each once, in the
/// call's first delta; some compatible servers repeat it in every delta (kept once), and
/// a piece that differs continues it.
fn add_piece(acc: &mut String, piece: &str) {
    if acc.as_str() != piece {
        acc.push_str(piece);
    }
}

/// A bound on the text a stream's accumulator keeps, over all its buffers: half of
/// [`output_max_bytes`](openlayer_trace::stream::output_max_bytes), since the first
/// choice's text is recorded twice (the output and `rawOutput`), three times for a root
/// step (its row's output too). Text past it is counted, not kept.
#[derive(Default)]
pub(crate) struct TextBound {
    kept: usize,
    /// Set at the first piece (0 before).
    max: usize,
}

/// A text buffer under a [`TextBound`], with the pieces of it that were cut.
#[derive(Default)]
pub(crate) struct Bounded {
    text: String,
    /// Pieces cut short or left out.
    cut: u64,
}

impl Bounded {
    /// Nothing came: none kept, none cut (a text cut whole still has its marker).
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty() && self.cut == 0
    }

    /// The text, ending with `…[truncated N chunks]` when pieces of it were cut.
    pub(crate) fn marked(&self) -> String {
        let mut text = self.text.clone();
        if self.cut > 0 {
            text.push_str(&format!("…[truncated {} chunks]", self.cut));
        }
        text
    }
}

impl TextBound {
    /// Cuts `text`, one piece (as a final response holds it, whole), to what is left under
    /// the bound, marked `…[truncated 1 chunks]` when cut.
    /// Returns whether it was cut.
    pub(crate) fn cut_in_place(&mut self, text: &mut String) -> bool {
        let mut b = Bounded::default();
        self.push(&mut b, text);
        if b.cut > 0 {
            *text = b.marked();
        }
        b.cut > 0
    }

    /// Appends `piece` to `buf`, or the part of it that fits (cut at a character
    /// boundary); after a cut of `buf`, nothing more of it (its text has no holes).
    pub(crate) fn push(&mut self, buf: &mut Bounded, piece: &str) {
        if piece.is_empty() {
            return;
        }
        if buf.cut > 0 {
            buf.cut += 1;
            return;
        }
        if self.max == 0 {
            self.max = (openlayer_trace::stream::output_max_bytes() / 2).max(64);
        }
        let room = self.max.saturating_sub(self.kept);
        let mut end = piece.len().min(room);
        while !piece.is_char_boundary(end) {
            end -= 1;
        }
        buf.text.push_str(&piece[..end]);
        self.kept += end;
        if end < piece.len() {
            buf.cut += 1;
        }
    }
}

/// What the chunks of one chat stream add up to.
#[derive(Default)]
pub(crate) struct ChatAccumulator {
    chunks: u64,
    bound: TextBound,
    /// Some chunk had a choice (see `ChatStream::poll_next`).
    answered: bool,
    id: String,
    model: String,
    created: u32,
    system_fingerprint: Option<String>,
    choices: Vec<ChoiceAcc>,
    tool_calls: Vec<ToolCallAcc>,
    usage: Option<CompletionUsage>,
}

/// Whether a chunk carries some of the answer: text, a refusal, a tool call, or audio (its
/// data or transcript).
fn has_token(chunk: &CreateChatCompletionStreamResponse) -> bool {
    let some = |t: &Option<String>| t.as_deref().is_some_and(|t| !t.is_empty());
    chunk.choices.iter().any(|c| {
        some(&c.delta.content)
            || some(&c.delta.refusal)
            || c.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
            || c.delta
                .audio
                .as_ref()
                .is_some_and(|a| some(&a.data) || some(&a.transcript))
    })
}

impl ChatAccumulator {
    /// Whether the answer is complete: as many choices as asked for, each finished, and
    /// the usage arrived. Without it (not asked for), the step waits for the stream's end
    /// or drop: a compatible server may send a usage chunk unasked, after the finish.
    fn complete(&self, expected: Expected) -> bool {
        self.finished(expected) && self.usage.is_some()
    }

    /// Whether every choice asked for has finished.
    fn finished(&self, expected: Expected) -> bool {
        self.choices.len() >= expected.choices
            && self.choices.iter().all(|c| c.finish_reason.is_some())
    }

    #[allow(deprecated)]
    pub(crate) fn add(&mut self, chunk: &CreateChatCompletionStreamResponse) {
        // From the first chunk that has them: Azure's first chunk (its content filter's
        // results) has an empty id and model, and `created` 0.
        if self.id.is_empty() {
            self.id.push_str(&chunk.id);
        }
        if self.model.is_empty() {
            self.model.push_str(&chunk.model);
        }
        if self.created == 0 {
            self.created = chunk.created;
        }
        if self.system_fingerprint.is_none() {
            self.system_fingerprint
                .clone_from(&chunk.system_fingerprint);
        }
        self.answered |= !chunk.choices.is_empty();
        self.chunks += 1;
        let bound = &mut self.bound;
        for c in &chunk.choices {
            let choice = match self.choices.iter().position(|a| a.index == c.index) {
                Some(i) => &mut self.choices[i],
                None => {
                    self.choices.push(ChoiceAcc {
                        index: c.index,
                        ..ChoiceAcc::default()
                    });
                    self.choices.last_mut().expect("just pushed")
                }
            };
            if let Some(text) = &c.delta.content {
                bound.push(&mut choice.content, text);
            }
            if let Some(text) = &c.delta.refusal {
                bound.push(&mut choice.refusal, text);
            }
            if let Some(audio) = &c.delta.audio {
                let acc = choice.audio.get_or_insert_with(AudioAcc::default);
                if let Some(id) = &audio.id {
                    add_piece(&mut acc.id, id);
                }
                if audio.expires_at.is_some() {
                    acc.expires_at = audio.expires_at;
                }
                if let Some(data) = &audio.data {
                    acc.data_len += data.len();
                }
                if let Some(text) = &audio.transcript {
                    bound.push(&mut acc.transcript, text);
                }
            }
            if c.finish_reason.is_some() {
                choice.finish_reason = c.finish_reason;
            }
            for t in c.delta.tool_calls.iter().flatten() {
                // The call at this index so far; a delta that starts another call (another
                // id, with a name) is a new one at the same index, as servers that give
                // every parallel call index 0 send them (Ollama, some vLLM servers).
                let pos = self
                    .tool_calls
                    .iter()
                    .rposition(|a| a.choice == c.index && a.index == t.index)
                    .filter(|&i| {
                        let acc = &self.tool_calls[i];
                        let starts_another =
                            t.id.as_deref().is_some_and(|id| {
                                !id.is_empty() && !acc.id.is_empty() && acc.id != id
                            }) && t.function.as_ref().is_some_and(|f| f.name.is_some());
                        !starts_another
                    });
                let acc = match pos {
                    Some(i) => &mut self.tool_calls[i],
                    None => {
                        self.tool_calls.push(ToolCallAcc {
                            choice: c.index,
                            index: t.index,
                            id: String::new(),
                            name: String::new(),
                            arguments: Bounded::default(),
                        });
                        self.tool_calls.last_mut().expect("just pushed")
                    }
                };
                if let Some(id) = &t.id {
                    add_piece(&mut acc.id, id);
                }
                if let Some(f) = &t.function {
                    if let Some(name) = &f.name {
                        add_piece(&mut acc.name, name);
                    }
                    if let Some(args) = &f.arguments {
                        bound.push(&mut acc.arguments, args);
                    }
                }
            }
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
        }
    }

    fn tool_calls_of(&self, choice: u32) -> Vec<&ToolCallAcc> {
        let mut calls: Vec<&ToolCallAcc> = self
            .tool_calls
            .iter()
            .filter(|t| t.choice == choice)
            .collect();
        calls.sort_by_key(|t| t.index);
        calls
    }

    /// The step's output: the first choice's text, or its tool calls, or its refusal, or
    /// its audio's transcript. Text cut by the bound ends with `…[truncated N chunks]` (a
    /// tool call's arguments too, then recorded as that text).
    pub(crate) fn output(&self) -> Value {
        let Some(first) = self.choices.iter().min_by_key(|c| c.index) else {
            return Value::Null;
        };
        let calls = self.tool_calls_of(first.index);
        let transcript = first
            .audio
            .as_ref()
            .map(|a| &a.transcript)
            .filter(|t| !t.is_empty());
        if !first.content.is_empty() {
            Value::String(first.content.marked())
        } else if !calls.is_empty() {
            Value::Array(
                calls
                    .iter()
                    .map(|t| tool_call(&t.id, &t.name, &t.arguments.marked()))
                    .collect(),
            )
        } else if !first.refusal.is_empty() {
            Value::String(first.refusal.marked())
        } else if let Some(transcript) = transcript {
            Value::String(transcript.marked())
        } else {
            Value::String(first.content.marked())
        }
    }

    /// The `chat.completion` object the chunks add up to.
    pub(crate) fn raw_output(&self) -> Value {
        let mut choices: Vec<&ChoiceAcc> = self.choices.iter().collect();
        choices.sort_by_key(|c| c.index);
        let choices: Vec<Value> = choices
            .iter()
            .map(|c| {
                let calls = self.tool_calls_of(c.index);
                // No text beside tool calls, a refusal or audio: `null`, as in OpenAI's
                // answer.
                let no_content = c.content.is_empty()
                    && (!calls.is_empty() || !c.refusal.is_empty() || c.audio.is_some());
                let mut message = json!({
                    "role": "assistant",
                    "content": if no_content { Value::Null } else { Value::String(c.content.marked()) },
                });
                if !c.refusal.is_empty() {
                    message["refusal"] = Value::String(c.refusal.marked());
                }
                if let Some(audio) = &c.audio {
                    // The audio itself is left out, as a whole answer's is.
                    let data = match audio.data_len {
                        0 => String::new(),
                        n => crate::payload::marker("audio", n),
                    };
                    message["audio"] = json!({
                        "id": audio.id,
                        "expires_at": audio.expires_at,
                        "data": data,
                        "transcript": audio.transcript.marked(),
                    });
                }
                if !calls.is_empty() {
                    message["tool_calls"] = calls
                        .iter()
                        .map(|t| {
                            json!({"id": t.id, "type": "function",
                                   "function": {"name": t.name, "arguments": t.arguments.marked()}})
                        })
                        .collect();
                }
                json!({"index": c.index, "message": message, "finish_reason": c.finish_reason})
            })
            .collect();
        let mut raw = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        });
        if let Some(fp) = &self.system_fingerprint {
            raw["system_fingerprint"] = Value::String(fp.clone());
        }
        raw
    }

    /// Writes what the stream produced into the step.
    pub(crate) fn record(&self, h: &mut StepHandle) {
        if self.chunks == 0 {
            return;
        }
        if !self.model.is_empty() {
            h.metadata("model", &self.model);
        }
        if let Some(usage) = &self.usage {
            Tokens::from_chat(usage).record(h);
        }
        h.metadata("rawOutput", &self.raw_output());
        h.output(&self.output());
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded, CreateChatCompletionStreamResponse, TextBound, has_token};
    use serde_json::{Value, json};

    #[test]
    fn text_is_kept_up_to_the_bound_at_a_char_boundary_and_marked() {
        let mut bound = TextBound {
            max: 10,
            ..TextBound::default()
        };
        let (mut a, mut b) = (Bounded::default(), Bounded::default());
        bound.push(&mut a, "abcdef");
        bound.push(&mut b, "gh");
        bound.push(&mut a, "");
        assert_eq!(
            (a.text.as_str(), a.cut, b.text.as_str(), b.cut),
            ("abcdef", 0, "gh", 0)
        );
        assert_eq!(a.marked(), "abcdef", "nothing cut: no marker");
        // The bound is shared: 8 kept. "é" is two bytes, so "xé" is cut before it.
        bound.push(&mut a, "xé");
        assert_eq!((a.text.as_str(), a.cut), ("abcdefx", 1));
        // After its cut nothing more of `a`, even what would fit.
        bound.push(&mut a, "y");
        assert_eq!((a.text.as_str(), a.cut), ("abcdefx", 2));
        assert_eq!(a.marked(), "abcdefx…[truncated 2 chunks]");
        // `b` was not cut: it takes what room is left, and is marked for its own cuts.
        bound.push(&mut b, "z");
        assert_eq!((b.text.as_str(), b.cut), ("ghz", 0));
        bound.push(&mut b, "w");
        assert_eq!((b.text.as_str(), b.cut), ("ghz", 1));
        assert_eq!(b.marked(), "ghz…[truncated 1 chunks]");
    }

    /// A text cut whole (the bound was used up by other buffers) is not empty: it is
    /// recorded, as its marker.
    #[test]
    fn a_text_cut_whole_keeps_its_marker() {
        let mut bound = TextBound {
            max: 4,
            ..TextBound::default()
        };
        let (mut content, mut refusal) = (Bounded::default(), Bounded::default());
        bound.push(&mut content, "abcd");
        bound.push(&mut refusal, "no");
        assert!(refusal.text.is_empty() && !refusal.is_empty());
        assert_eq!(refusal.marked(), "…[truncated 1 chunks]");
        assert!(Bounded::default().is_empty());
    }

    #[test]
    fn the_bound_is_half_the_stream_output_bound() {
        let mut bound = TextBound::default();
        bound.push(&mut Bounded::default(), "a");
        assert_eq!(bound.max, openlayer_trace::stream::output_max_bytes() / 2);
    }

    /// The time to the first token is taken at the first chunk with some of the answer:
    /// not at the role-only first chunk (a reasoning model sends it long before its first
    /// token), nor at a chunk with no choice.
    #[test]
    fn the_first_token_is_the_first_text_refusal_or_tool_call() {
        let chunk = |delta: Value| -> CreateChatCompletionStreamResponse {
            serde_json::from_value(json!({
                "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
            }))
            .unwrap()
        };
        assert!(!has_token(&chunk(
            json!({"role": "assistant", "content": ""})
        )));
        assert!(!has_token(&chunk(
            json!({"role": "assistant", "content": null})
        )));
        assert!(has_token(&chunk(json!({"content": "Hi"}))));
        assert!(has_token(&chunk(json!({"refusal": "No."}))));
        assert!(has_token(&chunk(
            json!({"audio": {"id": "audio_1", "transcript": "Hi"}})
        )));
        assert!(!has_token(&chunk(json!({"audio": {"expires_at": 1}}))));
        assert!(has_token(&chunk(json!({"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": ""}}
        ]}))));
        let none: CreateChatCompletionStreamResponse = serde_json::from_value(json!({
            "id": "", "object": "", "created": 0, "model": "", "choices": []
        }))
        .unwrap();
        assert!(!has_token(&none));
    }
}
