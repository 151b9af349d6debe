//! Uploads through the platform's storage: a presigned URL, the multipart upload of one
//! object, and its registration with the pipeline (`POST .../data`). Shared by the CSV and
//! the Arrow bulk flows.

use std::fmt;

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{csv, expect_success, multipart, segment, send};
use crate::error::Error;
use crate::transport::{ApiRequest, Transport, chain};

/// The answer of `POST /storage/presigned-url`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PresignedUrl {
    pub url: String,
    pub storage_uri: String,
    #[serde(default)]
    pub fields: OrderedFields,
}

/// The upload form's fields, in the order the platform gave them (S3 wants its policy
/// fields before the file, and serde_json's map would sort them).
#[derive(Debug, Default)]
pub(crate) struct OrderedFields(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of form fields")
            }
            fn visit_unit<E>(self) -> Result<OrderedFields, E> {
                Ok(OrderedFields::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedFields, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    let v = match v {
                        Value::String(s) => s,
                        Value::Null => continue,
                        other => other.to_string(),
                    };
                    out.push((k, v));
                }
                Ok(OrderedFields(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A fresh object name for an upload, as the official SDK names them:
/// `batch_data_<unix seconds, to the microsecond>_<pipeline id>.<extension>`.
pub(crate) fn object_name(pipeline_id: &str, extension: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "batch_data_{}.{:06}_{pipeline_id}.{extension}",
        now.as_secs(),
        now.subsec_micros()
    )
}

/// `POST /storage/presigned-url?objectName=...`: where to put a file.
pub(crate) async fn presign(t: &Transport, object_name: &str) -> Result<PresignedUrl, Error> {
    let req = ApiRequest {
        method: Method::POST,
        path: "/storage/presigned-url".into(),
        query: vec![("objectName".into(), object_name.to_string())],
        body: None,
    };
    send(t, &req).await?.json()
}

/// `POST /inference-pipelines/{id}/data`: registers an uploaded file with the pipeline,
/// appended (`merge: false`) or merged into the rows by inference id (`merge: true`).
///
/// A merge is retried as any request (merging the same rows twice leaves them as once).
/// An append is sent again only when the platform cannot have acted on it (a refused
/// connection, a 429): after a 5xx or a lost answer it may have appended the `rows` rows
/// of the upload, and a second registration would append them twice. That error is
/// [`Error::AppendUncertain`].
pub(crate) async fn register(
    t: &Transport,
    pipeline_id: &str,
    storage_uri: &str,
    merge: bool,
    config: &Map<String, Value>,
    rows: u64,
) -> Result<(), Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        storage_uri: &'a str,
        perform_data_merge: bool,
        config: &'a Map<String, Value>,
    }
    let body = Body {
        storage_uri,
        perform_data_merge: merge,
        config,
    };
    let req = ApiRequest {
        method: Method::POST,
        path: format!("/inference-pipelines/{}/data", segment(pipeline_id)),
        query: Vec::new(),
        body: Some(serde_json::to_vec(&body)?.into()),
    };
    if merge {
        return expect_success(t, &req).await;
    }
    let sent = t.send_unrepeatable(&req).await;
    match sent.result {
        Ok(answer) => super::check_success(t, &req, answer),
        Err(e) if sent.uncertain => Err(Error::AppendUncertain {
            rows,
            source: Box::new(e),
        }),
        Err(e) => Err(e),
    }
}

/// The CSV upload of JSON rows (the explicit [`BulkFormat::Csv`](super::BulkFormat::Csv)),
/// in files of at most `max_bytes` (plus one row), each uploaded and registered before the
/// next is written. Every file has the columns of all the rows, so that each carries
/// every column the config names. Returns the number of files registered; after a
/// failure, [`Error::BulkPartial`] says what was registered before it.
pub(crate) async fn upload_csv<'a>(
    t: &Transport,
    max_retries: u32,
    pipeline_id: &str,
    rows: impl Iterator<Item = &'a Map<String, Value>> + Clone,
    config: Map<String, Value>,
    merge: bool,
    max_bytes: usize,
) -> Result<u32, Error> {
    let columns = csv::columns(rows.clone());
    let mut data = Vec::new();
    csv::push_header(&mut data, &columns);
    let header = data.len();
    let (mut in_file, mut rows_sent, mut uploads) = (0u64, 0u64, 0u32);
    let mut rows = rows.peekable();
    while let Some(row) = rows.next() {
        csv::push_row(&mut data, &columns, row);
        in_file += 1;
        if data.len() < max_bytes && rows.peek().is_some() {
            continue;
        }
        if let Err(e) =
            upload_csv_file(t, max_retries, pipeline_id, &data, in_file, &config, merge).await
        {
            return Err(if uploads == 0 {
                e
            } else {
                Error::BulkPartial {
                    rows_sent,
                    uploads,
                    source: Box::new(e),
                }
            });
        }
        rows_sent += in_file;
        uploads += 1;
        in_file = 0;
        data.truncate(header);
    }
    Ok(uploads)
}

/// Uploads and registers one CSV file of `rows` rows.
async fn upload_csv_file(
    t: &Transport,
    max_retries: u32,
    pipeline_id: &str,
    data: &[u8],
    rows: u64,
    config: &Map<String, Value>,
    merge: bool,
) -> Result<(), Error> {
    let name = object_name(pipeline_id, "csv");
    tracing::debug!(
        target: "openlayer_trace",
        rows,
        bytes = data.len(),
        object = %name,
        merge,
        "bulk upload (CSV)"
    );
    let presigned = presign(t, &name).await?;
    let form = multipart::build(&presigned.fields.0, &name, "text/csv", data);
    let content_type = form.content_type();
    upload(t, max_retries, &presigned, &content_type, form.body.into()).await?;
    register(t, pipeline_id, &presigned.storage_uri, merge, config, rows).await
}

/// The presigned URL without its query (which holds the signature), for error messages.
fn redacted(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// The slowest upload speed allowed for before an upload times out: 1 Mbit/s.
const SLOWEST_UPLOAD_BYTES_PER_SEC: f64 = 128.0 * 1024.0;

/// The time allowed for uploading `len` bytes: the request timeout, plus the time to send
/// them at [`SLOWEST_UPLOAD_BYTES_PER_SEC`] (a 64 MiB upload gets 512 s more), so that a
/// large body on an ordinary uplink is not cut off and sent again in full.
fn upload_timeout(len: usize, request_timeout: std::time::Duration) -> std::time::Duration {
    // Saturating: `Duration::MAX` ("as long as it takes") stays valid.
    request_timeout.saturating_add(std::time::Duration::from_secs_f64(
        len as f64 / SLOWEST_UPLOAD_BYTES_PER_SEC,
    ))
}

/// Uploads the file to the storage, retrying connection errors, timeouts, 408, 429 and
/// 5xx like API requests (same backoff, same number of retries, honouring `Retry-After`
/// up to a minute). The timeout grows with the body ([`upload_timeout`]).
pub(crate) async fn upload(
    t: &Transport,
    max_retries: u32,
    presigned: &PresignedUrl,
    content_type: &str,
    body: bytes::Bytes,
) -> Result<(), Error> {
    let request = format!("POST {}", redacted(&presigned.url));
    let http = t.storage_http(&presigned.url)?;
    let mut retry = 0;
    loop {
        let (error, retryable, asked) = match http
            .post(&presigned.url)
            .header(CONTENT_TYPE, content_type)
            .timeout(upload_timeout(body.len(), t.request_timeout()))
            .body(body.clone())
            .send()
            .await
        {
            Err(e) => {
                // A request that cannot be built (a malformed presigned URL) fails the
                // same way every time: not retried.
                let retryable = !e.is_builder();
                (
                    Error::Transport {
                        timeout: e.is_timeout(),
                        message: format!("upload to storage failed: {}", chain(&e.without_url())),
                        request: request.clone(),
                    },
                    retryable,
                    None,
                )
            }
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let asked =
                    crate::transport::retry_after(resp.headers(), std::time::SystemTime::now());
                // Bounded: a storage error's message is cut below anyway.
                let text = match crate::transport::read_bounded(
                    resp,
                    crate::transport::MAX_ERROR_BYTES,
                    true,
                )
                .await
                {
                    Ok(crate::transport::Bounded::Whole(b) | crate::transport::Bounded::Cut(b)) => {
                        String::from_utf8_lossy(&b).into_owned()
                    }
                    Err(_) => String::new(),
                };
                let mut message = text.trim().to_string();
                if message.chars().count() > 500 {
                    message = message.chars().take(500).collect::<String>() + "...";
                }
                if message.is_empty() {
                    message = status
                        .canonical_reason()
                        .unwrap_or("upload failed")
                        .to_string();
                }
                let code = status.as_u16();
                let error = Error::Api {
                    status: code,
                    message,
                    request: request.clone(),
                    retry_after: asked,
                };
                (
                    error,
                    matches!(code, 408 | 429) || status.is_server_error(),
                    asked,
                )
            }
        };
        // A wait longer than a request waits is not waited out here (as for API
        // requests): the error says it.
        let too_long = asked.is_some_and(|w| w > crate::transport::MAX_RETRY_AFTER);
        if !retryable || retry >= max_retries || too_long {
            return Err(error);
        }
        let wait = t.backoff(retry, asked);
        tracing::debug!(
            target: "openlayer_trace",
            error = %error,
            retry = retry + 1,
            wait_ms = wait.as_millis() as u64,
            "retrying the upload"
        );
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_timeout_grows_with_the_body() {
        let base = std::time::Duration::from_secs(60);
        assert_eq!(upload_timeout(0, base), base);
        assert_eq!(
            upload_timeout(64 << 20, base),
            base + std::time::Duration::from_secs(512)
        );
        let forever = std::time::Duration::MAX;
        assert_eq!(upload_timeout(64 << 20, forever), forever);
    }

    #[test]
    fn presigned_fields_keep_their_order() {
        let p: PresignedUrl = serde_json::from_str(
            r#"{"url":"http://s/x","storageUri":"s3://b/k","fields":{"z":"1","a":"2","m":3}}"#,
        )
        .unwrap();
        assert_eq!(
            p.fields.0,
            [
                ("z".into(), "1".into()),
                ("a".into(), "2".into()),
                ("m".into(), "3".into())
            ]
        );
        let p: PresignedUrl =
            serde_json::from_str(r#"{"url":"u","storageUri":"s","extra":1}"#).unwrap();
        assert!(p.fields.0.is_empty());
    }

    #[test]
    fn object_names_are_the_official_sdks() {
        let a = object_name("pipe-1", "arrow");
        let rest = a.strip_prefix("batch_data_").unwrap();
        let (time, tail) = rest.split_once('_').unwrap();
        assert_eq!(tail, "pipe-1.arrow");
        let secs: f64 = time.parse().unwrap();
        assert!(secs > 1.7e9, "{a}");
    }

    #[test]
    fn signatures_are_cut_from_urls() {
        assert_eq!(
            redacted("https://bucket.s3/k?X-Amz-Signature=secret"),
            "https://bucket.s3/k"
        );
    }
}
