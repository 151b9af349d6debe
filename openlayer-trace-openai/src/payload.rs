//! Base64 payloads (audio, images, files) left out of what a step records.
//!
//! A base64 payload is useless to read in a trace and large: one audio answer or one
//! generated image can make a row larger than a request may carry, and the exporter then
//! cuts its longest values to make it fit. What is recorded holds a marker in its place,
//! `…[base64 audio, 3,842,112 bytes left out]`, giving what kind of payload it was and the
//! length of its base64 text; a data URL keeps its header
//! (`data:image/png;base64,…[base64 image, 1,048,576 bytes left out]`). What is sent to
//! the API and handed back to the caller is never changed.

use serde_json::Value;

/// The marker recorded in place of `len` bytes of base64 text of a `kind` of payload.
pub(crate) fn marker(kind: &str, len: usize) -> String {
    format!("…[base64 {kind}, {} bytes left out]", grouped(len))
}

/// `n` with its digits grouped by thousands: `3,842,112`.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// For a base64 data URL (`data:<media type>[;parameters];base64,<payload>`): the length of
/// its header (through the comma) and the kind of payload its media type names.
fn data_url(text: &str) -> Option<(usize, &'static str)> {
    let rest = text.strip_prefix("data:")?;
    let comma = rest.find(',')?;
    let header = &rest[..comma];
    let base64 = header
        .rsplit_once(';')
        .is_some_and(|(_, last)| last.eq_ignore_ascii_case("base64"));
    if !base64 {
        return None;
    }
    let media = header.split(';').next().unwrap_or("");
    let kind = match media.split('/').next().unwrap_or("") {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        _ => "file",
    };
    Some(("data:".len() + comma + 1, kind))
}

/// Replaces the payload of `text` when it is a base64 data URL, keeping its header.
/// Returns whether it did.
fn leave_out_data_url(text: &mut String) -> bool {
    let Some((header, kind)) = data_url(text) else {
        return false;
    };
    let len = text.len() - header;
    if len == 0 {
        return false;
    }
    text.truncate(header);
    text.push_str(&marker(kind, len));
    true
}

/// Replaces `text`, a base64 payload of `kind` (or a data URL of one), with its marker.
/// Returns whether it did (an empty text is left as it is).
pub(crate) fn leave_out(text: &mut String, kind: &str) -> bool {
    if data_url(text).is_some() {
        return leave_out_data_url(text);
    }
    if text.is_empty() {
        return false;
    }
    *text = marker(kind, text.len());
    true
}

/// Leaves out every base64 payload of a request's prompt or of an API answer (as JSON):
/// every base64 data URL (an `image_url`, an `input_image`, a file's `file_data`), the
/// `data` of an `audio` or `input_audio` object, a `file_data` given as bare base64, and
/// the `result` of an `image_generation_call` item. Returns whether anything was left out.
///
/// Walked without recursion: the JSON may nest deeply.
pub(crate) fn leave_out_base64(root: &mut Value) -> bool {
    let mut changed = false;
    // Each value to look into, with the key it is found under ("" in an array).
    let mut stack: Vec<(&mut Value, &str)> = vec![(root, "")];
    while let Some((value, key)) = stack.pop() {
        match value {
            Value::String(text) => changed |= leave_out_data_url(text),
            Value::Array(items) => stack.extend(items.iter_mut().map(|v| (v, ""))),
            Value::Object(map) => {
                let image_call =
                    map.get("type").and_then(Value::as_str) == Some("image_generation_call");
                for (k, v) in map.iter_mut() {
                    let kind = match k.as_str() {
                        "data" if key == "audio" || key == "input_audio" => Some("audio"),
                        "file_data" => Some("file"),
                        "result" if image_call => Some("image"),
                        _ => None,
                    };
                    match (kind, v) {
                        (Some(kind), Value::String(text)) => changed |= leave_out(text, kind),
                        (_, v) => stack.push((v, k.as_str())),
                    }
                }
            }
            _ => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(3_842_112), "3,842,112");
        assert_eq!(
            marker("audio", 3_842_112),
            "…[base64 audio, 3,842,112 bytes left out]"
        );
    }

    #[test]
    fn payloads_are_left_out_and_the_rest_kept() {
        let png = format!("data:image/png;base64,{}", "A".repeat(1200));
        let mut prompt = json!([
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image? data:,not base64"},
                {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                          "filename": "a.pdf"}},
            ]},
            {"type": "input_image", "image_url": "data:image/jpeg;BASE64,/9j/4AAQ"},
            {"type": "image_generation_call", "id": "ig_1", "status": "completed",
             "result": "iVBORw0KGgo="},
            {"role": "assistant", "audio": {"id": "audio_1"}},
            {"data": "not under audio", "result": "not an image call"},
        ]);
        assert!(leave_out_base64(&mut prompt));
        assert_eq!(
            prompt,
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image? data:,not base64"},
                    {"type": "image_url", "image_url": {
                        "url": "data:image/png;base64,…[base64 image, 1,200 bytes left out]",
                        "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "input_audio", "input_audio": {
                        "data": "…[base64 audio, 8 bytes left out]", "format": "wav"}},
                    {"type": "file", "file": {
                        "file_data": "data:application/pdf;base64,…[base64 file, 8 bytes left out]",
                        "filename": "a.pdf"}},
                ]},
                {"type": "input_image",
                 "image_url": "data:image/jpeg;BASE64,…[base64 image, 8 bytes left out]"},
                {"type": "image_generation_call", "id": "ig_1", "status": "completed",
                 "result": "…[base64 image, 12 bytes left out]"},
                {"role": "assistant", "audio": {"id": "audio_1"}},
                {"data": "not under audio", "result": "not an image call"},
            ])
        );
        let mut plain = json!([{"role": "user", "content": "Hello"}]);
        assert!(!leave_out_base64(&mut plain));
        let mut empty = json!({"audio": {"data": ""}});
        assert!(!leave_out_base64(&mut empty));
    }
}
