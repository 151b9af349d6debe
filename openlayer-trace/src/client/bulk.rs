//! Bulk publish and bulk update: a CSV file uploaded through a presigned URL, then
//! registered with the pipeline.

use std::fmt;

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::configs::{self, RowUpdateConfig, StreamConfig, json_kind};
use super::{
    Backend, Client, csv, expect_success, multipart, require_id, segment, send, stream_line,
};
use crate::error::Error;
use crate::export::local_file::{self as localfile, LocalLine};
use crate::transport::{ApiRequest, Transport, chain};

/// The answer of `POST /storage/presigned-url`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PresignedUrl {
    pub url: String,
    pub storage_uri: String,
    #[serde(default)]
    pub fields: OrderedFields,
}

/// The upload form's fields, in the order the platform gave them (S3 wants its policy
/// fields before the file, and serde_json's map would sort them).
#[derive(Debug, Default)]
pub(super) struct OrderedFields(pub Vec<(String, String)>);

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

impl Client {
    /// Publishes many rows at once: the rows are written as a CSV file, uploaded through
    /// a presigned URL (`POST /storage/presigned-url`, then a multipart upload to the
    /// storage), and appended to the pipeline
    /// (`POST /inference-pipelines/{id}/data` with `performDataMerge: false`).
    ///
    /// Rows are checked as in [`stream_rows`](Self::stream_rows). Arrays and objects go
    /// into CSV cells as JSON text. In local mode, the rows are appended to the local
    /// file as data-stream lines instead.
    ///
    /// ```no_run
    /// use openlayer_trace::{Client, TabularClassificationConfig};
    /// # async fn run() -> Result<(), openlayer_trace::Error> {
    /// let client = Client::from_env()?;
    /// let config = TabularClassificationConfig::new(["no", "yes"])
    ///     .feature_names(["age"])
    ///     .predictions_column_name("prediction")
    ///     .inference_id_column_name("id");
    /// let rows: Vec<serde_json::Value> = (0..1000)
    ///     .map(|i| serde_json::json!({"id": format!("r{i}"), "age": 20 + i % 50, "prediction": i % 2}))
    ///     .collect();
    /// client.publish_batch("YOUR_PIPELINE_ID", &config, &rows).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch<C: StreamConfig + ?Sized>(
        &self,
        pipeline_id: &str,
        config: &C,
        rows: &[Value],
    ) -> Result<(), Error> {
        let Some(config) = self.prepare_rows(pipeline_id, config, rows)? else {
            return Ok(());
        };
        match &self.inner.backend {
            Backend::Local(path) => {
                let lines: Vec<LocalLine> = rows
                    .chunks(self.inner.batch_max_rows)
                    .map(|chunk| stream_line(pipeline_id, config.clone(), chunk.iter()))
                    .collect();
                localfile::append(path, &lines, self.inner.trace_file_max_bytes)
            }
            Backend::Remote(t) => self.send_rows(t, pipeline_id, rows, config, None).await,
        }
    }

    /// Updates many rows at once, matched by the inference ids in `inference_id_column`:
    /// the columns of `rows` are merged into the existing rows through the same upload
    /// as [`publish_batch`](Self::publish_batch), registered with
    /// `performDataMerge: true` and a config of `config` plus `inferenceIdColumnName`.
    ///
    /// Every row must be an object with a non-null string or number in
    /// `inference_id_column`, and the columns `config` names. In local mode, each row is
    /// appended to the local file as a row-update line (without the id column).
    ///
    /// ```no_run
    /// use openlayer_trace::{Client, RowUpdateConfig};
    /// # async fn run() -> Result<(), openlayer_trace::Error> {
    /// let client = Client::from_env()?;
    /// let rows = [
    ///     serde_json::json!({"inference_id": "d56d2b2c", "label": 0}),
    ///     serde_json::json!({"inference_id": "3b0b2521", "label": 1}),
    /// ];
    /// let config = RowUpdateConfig::new().ground_truth_column_name("label");
    /// client.update_batch("YOUR_PIPELINE_ID", "inference_id", Some(config), &rows).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_batch(
        &self,
        pipeline_id: &str,
        inference_id_column: &str,
        config: Option<RowUpdateConfig>,
        rows: &[Value],
    ) -> Result<(), Error> {
        self.check_pipeline_id(pipeline_id)?;
        require_id("inference id column", inference_id_column)?;
        let config = config.unwrap_or_default();
        let required = config.row_columns();
        let mut ids = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let map = configs::check_row(i, row, &required)?;
            let id = match map.get(inference_id_column) {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None => {
                    return Err(Error::InvalidInput(format!(
                        "row {i} has no column `{inference_id_column}` (the inference id column)"
                    )));
                }
                Some(other) => {
                    return Err(Error::InvalidInput(format!(
                        "row {i}: the inference id in `{inference_id_column}` must be a non-empty string or a number, got {}",
                        json_kind(other)
                    )));
                }
            };
            ids.push(id);
        }
        if rows.is_empty() {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Local(path) => {
                let mut line_config = config.clone();
                line_config.inference_id_column_name = None;
                let line_config = (!line_config.is_empty()).then(|| line_config.to_json());
                let lines: Vec<LocalLine> = rows
                    .iter()
                    .zip(ids)
                    .filter_map(|(row, id)| {
                        let mut row = row.as_object()?.clone();
                        row.remove(inference_id_column);
                        Some(LocalLine::RowUpdate {
                            pipeline_id: super::non_empty(pipeline_id),
                            inference_id: id,
                            row,
                            config: line_config.clone(),
                        })
                    })
                    .collect();
                localfile::append(path, &lines, self.inner.trace_file_max_bytes)
            }
            Backend::Remote(t) => {
                let mut data_config = config.to_json();
                data_config.insert(
                    "inferenceIdColumnName".into(),
                    Value::String(inference_id_column.to_string()),
                );
                self.send_rows(t, pipeline_id, rows, data_config, Some(inference_id_column))
                    .await
            }
        }
    }
}

/// How [`Client::publish_batch`] and [`Client::update_batch`] upload JSON rows.
///
/// Set with [`ClientBuilder::bulk_format`](super::ClientBuilder::bulk_format). Record
/// batches ([`Client::publish_record_batches`](super::Client::publish_record_batches)) are
/// always uploaded as Arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkFormat {
    /// An Arrow IPC stream with typed columns, as the official SDK uploads (the default;
    /// needs the `arrow` feature).
    #[cfg(feature = "arrow")]
    Arrow,
    /// A CSV file: every value becomes text, nested values JSON text. The default only
    /// without the `arrow` feature.
    Csv,
}

impl Default for BulkFormat {
    fn default() -> Self {
        #[cfg(feature = "arrow")]
        return BulkFormat::Arrow;
        #[cfg(not(feature = "arrow"))]
        return BulkFormat::Csv;
    }
}

impl Client {
    /// Uploads checked JSON rows in the client's bulk format and registers them.
    async fn send_rows(
        &self,
        t: &Transport,
        pipeline_id: &str,
        rows: &[Value],
        config: Map<String, Value>,
        id_column: Option<&str>,
    ) -> Result<(), Error> {
        let merge = id_column.is_some();
        match self.inner.bulk_format {
            #[cfg(feature = "arrow")]
            BulkFormat::Arrow => {
                let target = self.bulk_target(t, pipeline_id, config, merge);
                super::arrow_upload::send_json_rows(&target, rows, id_column)
                    .await
                    .map(drop)
            }
            BulkFormat::Csv => {
                let objects = rows.iter().filter_map(Value::as_object);
                upload_csv(
                    t,
                    self.inner.max_retries,
                    pipeline_id,
                    objects,
                    config,
                    merge,
                )
                .await
            }
        }
    }
}

/// A fresh object name for an upload, as the official SDK names them:
/// `batch_data_<unix seconds, to the microsecond>_<pipeline id>.<extension>`.
pub(super) fn object_name(pipeline_id: &str, extension: &str) -> String {
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
pub(super) async fn presign(t: &Transport, object_name: &str) -> Result<PresignedUrl, Error> {
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
pub(super) async fn register(
    t: &Transport,
    pipeline_id: &str,
    storage_uri: &str,
    merge: bool,
    config: &Map<String, Value>,
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
    expect_success(t, &req).await
}

/// The CSV upload of JSON rows (the explicit [`BulkFormat::Csv`](super::BulkFormat::Csv)).
pub(super) async fn upload_csv<'a>(
    t: &Transport,
    max_retries: u32,
    pipeline_id: &str,
    rows: impl Iterator<Item = &'a Map<String, Value>> + Clone,
    config: Map<String, Value>,
    merge: bool,
) -> Result<(), Error> {
    let table = csv::write(rows);
    let name = object_name(pipeline_id, "csv");
    tracing::debug!(
        target: "openlayer_trace",
        rows = table.rows,
        columns = table.columns.len(),
        bytes = table.data.len(),
        object = %name,
        merge,
        "bulk upload (CSV)"
    );
    let presigned = presign(t, &name).await?;
    let form = multipart::build(&presigned.fields.0, &name, "text/csv", &table.data);
    drop(table);
    let content_type = form.content_type();
    upload(t, max_retries, &presigned, &content_type, form.body.into()).await?;
    register(t, pipeline_id, &presigned.storage_uri, merge, &config).await
}

/// The presigned URL without its query (which holds the signature), for error messages.
fn redacted(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// Uploads the file to the storage, retrying connection errors, timeouts, 408, 429 and
/// 5xx like API requests (same backoff, same number of retries).
pub(super) async fn upload(
    t: &Transport,
    max_retries: u32,
    presigned: &PresignedUrl,
    content_type: &str,
    body: bytes::Bytes,
) -> Result<(), Error> {
    let request = format!("POST {}", redacted(&presigned.url));
    let mut retry = 0;
    loop {
        let (error, retryable) = match t
            .http()
            .post(&presigned.url)
            .header(CONTENT_TYPE, content_type)
            .body(body.clone())
            .send()
            .await
        {
            Err(e) => (
                Error::Transport {
                    timeout: e.is_timeout(),
                    message: format!("upload to storage failed: {}", chain(&e.without_url())),
                    request: request.clone(),
                },
                true,
            ),
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
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
                };
                (error, matches!(code, 408 | 429) || status.is_server_error())
            }
        };
        if !retryable || retry >= max_retries {
            return Err(error);
        }
        let wait = t.backoff(retry, None);
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
